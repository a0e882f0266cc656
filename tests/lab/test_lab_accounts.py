"""The lab survives a Unix account added on the machine, and its health check logs in (issue 17 item 15).

useradd/userdel replace the machine's /etc/passwd, /etc/group and /etc/shadow by rename.  Each lab
host has its own /etc (lab/host_init.sh), so its accounts stay; and lab/up.sh's health check logs
in to every host over SSH as the product does, so a host that refuses the login is rebuilt instead
of being reported healthy.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

paramiko = pytest.importorskip("paramiko")

UP = Path(__file__).resolve().parents[2] / "lab" / "up.sh"
LAB_HOSTS = ("netnode", "worker1", "worker2", "worker3")
THROWAWAY = f"crlab-tmp{os.getpid() % 100000}"


def login_as_the_product(lab) -> dict:
    """host -> (rc, stdout) of ``sudo -n id -un`` over a new paramiko connection, host keys checked."""
    out = {}
    for host in LAB_HOSTS:
        client = lab.connect(host)
        try:
            _, stdout, _ = client.exec_command("sudo -n id -un; id -un", timeout=20)
            text = stdout.read().decode()
            out[host] = (stdout.channel.recv_exit_status(), text.split())
        finally:
            client.close()
    return out


def test_an_account_added_on_the_machine_leaves_every_host_reachable(lab):
    before = open("/etc/passwd").read()
    assert THROWAWAY not in before
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", THROWAWAY], check=True)
    try:
        assert THROWAWAY in open("/etc/passwd").read()
        for host, (rc, words) in login_as_the_product(lab).items():
            assert rc == 0 and words == ["root", "ubuntu"], (host, rc, words)
    finally:
        subprocess.run(["userdel", THROWAWAY], check=True)
    assert THROWAWAY not in open("/etc/passwd").read()
    for host, (rc, words) in login_as_the_product(lab).items():
        assert rc == 0 and words == ["root", "ubuntu"], (host, rc, words)
    proc = subprocess.run([str(UP)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "already up and healthy" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.parametrize("host", ["worker2"])
def test_a_host_that_refuses_the_login_is_rebuilt(lab, host, tmp_path):
    # the host's own /etc/passwd loses the lab user: sshd, OVS and the TCP port still answer
    lab.exec(host, "sed -i '/^ubuntu:/d' /etc/passwd", check=True)
    with pytest.raises(paramiko.AuthenticationException):
        lab.connect(host).close()
    # lab/up.sh is handed a descriptor, as "flock /tmp/crlab-machine.lock lab/up.sh" hands it the lock
    held = tmp_path / "caller.lock"
    held.write_text("")
    fd = os.open(held, os.O_RDONLY)
    try:
        proc = subprocess.run([str(UP)], capture_output=True, text=True, timeout=300, pass_fds=(fd,))
    finally:
        os.close(fd)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"lab not healthy ({host} refuses the lab's SSH login" in proc.stdout, proc.stdout
    for name, (rc, words) in login_as_the_product(lab).items():
        assert rc == 0 and words == ["root", "ubuntu"], (name, rc, words)
    keepers = [pid for pid in os.listdir("/proc") if pid.isdigit() and holds(pid, str(held))]
    assert keepers == [], f"the rebuilt lab's daemons keep the caller's descriptor: {keepers}"


def holds(pid: str, path: str) -> bool:
    try:
        return any(os.readlink(f"/proc/{pid}/fd/{fd}") == path for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return False
