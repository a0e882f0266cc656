"""The manager service on the lab, used by a second, non-root Unix account (issue 18, SPEC §15).

The service runs as the ``cloudrepo`` system account with its own state
folder (database, site key, a copy of the lab's SSH key, log), as
``lab/service.sh`` and a real install set it up; the menu runs as
``crstudent``, an ordinary account of this machine that is in no group of
the service's.  Everything is typed in a real terminal and checked from
outside: leases on the network node, processes on the workers, files'
readability for that account.
"""
from __future__ import annotations

import hashlib
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import LAB_DIR, REPO, Menu
from labtools import (
    assert_clean,
    console,
    host_of,
    icmp_of,
    make_api,
    pcap_packets,
    sh,
    wait_for_leases,
    wait_guest_configured,
)
from menu_driver import PY
from service_driver import ServiceProcess

import naming
from service.client import RemoteAPI

SERVICE_ACCOUNT = "cloudrepo"
INSTRUCTORS = "cloudrepo-instructors"
STUDENT_ACCOUNT = "crstudent"
DETACH = "\x1d"


def ensure_accounts() -> None:
    subprocess.run([str(LAB_DIR / "service.sh"), "accounts"], check=True, capture_output=True)
    try:
        pwd.getpwnam(STUDENT_ACCOUNT)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", STUDENT_ACCOUNT], check=True)


def as_student(*argv: str, input: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", STUDENT_ACCOUNT, "--", *argv], capture_output=True, text=True,
                          input=input, timeout=timeout, cwd="/tmp")


@dataclass
class Site:
    root: Path
    state: Path
    socket: Path
    config: Path
    db: Path
    process: ServiceProcess | None = None

    def start(self) -> None:
        self.process = ServiceProcess(self.config, self.db, self.socket, user=SERVICE_ACCOUNT,
                                      log=self.root / "service.out")

    def stop(self) -> int:
        return self.process.stop() if self.process else 0

    def log_text(self) -> str:
        return (self.state / "log" / "cloud-repositorio.log").read_text()


def install(path: Path, mode: int, src: Path | None = None, text: str | None = None) -> None:
    if src is not None:
        shutil.copyfile(src, path)
    elif text is not None:
        path.write_text(text)
    else:
        path.mkdir()
    shutil.chown(path, SERVICE_ACCOUNT, INSTRUCTORS)
    os.chmod(path, mode)


@pytest.fixture
def service(lab):
    """A manager service as cloudrepo on a fresh database; every slice deleted afterwards."""
    ensure_accounts()
    if subprocess.run(["runuser", "-u", SERVICE_ACCOUNT, "--", "test", "-r", str(REPO / "cli.py")]).returncode:
        pytest.fail(f"the {SERVICE_ACCOUNT} account cannot read {REPO}: .ci/run runs the tests from a "
                    "checkout every account can read")
    root = Path(tempfile.mkdtemp(prefix="crsvc-", dir="/tmp"))
    root.chmod(0o755)
    state = root / "state"
    install(state, 0o2750)
    install(state / "log", 0o2750)
    install(state / "ssh", 0o700)
    install(state / "ssh" / "id_ed25519", 0o600, src=Path(lab["ssh"]["key_file"]))
    install(state / "ssh" / "known_hosts", 0o644, src=Path(lab["ssh"]["known_hosts"]))
    install(state / "database.yaml", 0o640, src=REPO / "database.yaml")
    config = yaml.safe_load((LAB_DIR / "cluster.yaml").read_text())
    config["ssh"].update(key_file=str(state / "ssh" / "id_ed25519"), known_hosts=str(state / "ssh" / "known_hosts"))
    config["log_file"] = str(state / "log" / "cloud-repositorio.log")
    install(state / "cluster.yaml", 0o640, text=yaml.safe_dump(config))
    run = root / "run"
    run.mkdir()
    shutil.chown(run, SERVICE_ACCOUNT, SERVICE_ACCOUNT)
    site = Site(root, state, run / "manager.sock", state / "cluster.yaml", state / "database.yaml")
    site.start()
    menus: list = []
    site.menus = menus
    yield site
    for m in menus:
        if m.p.isalive():
            m.p.terminate(force=True)
    site.stop()
    api = make_api(lab, site.db)
    try:
        for s in list(api.db.all_slices().values()):
            ok, msg = api.delete_slice(s["owner"], s["slice_id"])
            assert ok, msg
    finally:
        api.executor.close()
        shutil.rmtree(root, ignore_errors=True)


def student_menu(site: Site, timeout: float = 30) -> Menu:
    """The menu in a terminal, run by the crstudent Unix account, as a client of the service."""
    m = Menu(site.config, site.db, site.root / "menu.log", cwd=Path("/tmp"), timeout=timeout, socket=site.socket,
             argv=["runuser", "-u", STUDENT_ACCOUNT, "--", PY])
    site.menus.append(m)
    return m


def test_the_whole_student_story_through_the_service_as_another_unix_account(lab, service):
    m = student_menu(service)
    assert "Welcome, student!" in m.login("student", "student")
    m.send("2", "Slice name: ")
    sid = int(m.send("story").split("Slice created! ID: ")[1].split()[0])
    assert "VM added! ID: 1001, VNC: 5901, Flavor: cirros" in m.add_vm(sid, "web", internet="y")
    assert "VM added! ID: 1002, VNC: 5902, Flavor: cirros" in m.add_vm(sid, "db")
    _listing, linked = m.link(sid, "1001", "eth1", "1002", "eth1")
    assert "Link created! VLAN: 100" in linked
    m.send("6", "Slice ID to deploy: ")
    screen = m.send(str(sid), timeout=90)
    assert "Deploying (Ctrl-C undoes everything this deploy made)..." in screen
    assert " network " in screen and " vms " in screen and "Slice deployed successfully" in screen
    api = make_api(lab, service.db)  # root's view, to check from outside
    try:
        s = api.db.get_slice(sid)
        vms = s["vms"]
        passwords = {vm["vm_id"]: api.services.credentials.password(vm["vm_id"]) for vm in vms}
    finally:
        api.executor.close()
    for vm in vms:
        assert f"user: cirros password: {passwords[vm['vm_id']]}" in screen
    # the VMs run on their workers, and lease on the link
    for vm in vms:
        pid = sh(lab, host_of(lab, vm["worker_ip"]), f"cat {naming.vm_pidfile(vm['vm_id'])}").strip()
        assert pid and sh(lab, host_of(lab, vm["worker_ip"]), f"kill -0 {pid} && echo alive").strip() == "alive"
    got = wait_for_leases(lab, {(100, vm["interfaces"][1]["mac"].lower()) for vm in vms})
    screen = m.send("5", timeout=60)
    for vm in vms:
        assert f"eth1 (Link 1, VLAN 100): {got[(100, vm['interfaces'][1]['mac'].lower())]}" in screen
    assert "eth0 (internet, VLAN 400): 10.60.7.101" in screen
    # the console, relayed by the service: the guest answers
    m.send("12", "Slice ID: ")
    m.send(str(sid), "VM ID: ")
    m.send("1002", "Choice (1-2): ")
    screen = m.send("1", "Ctrl-] returns to the menu.", timeout=30)
    assert f"Log in as user: cirros password: {passwords[1002]}" in screen
    deadline = time.monotonic() + 60
    while True:
        m.p.send("hostname\r")
        try:
            m.p.expect(r"db\r?\n", timeout=5)
            break
        except Exception:  # noqa: BLE001 - pexpect.TIMEOUT: the guest is still booting
            assert time.monotonic() < deadline, m.transcript[-2000:]
    m.p.send(DETACH)
    assert "(console detached)" in m.wait("\nChoice: ")
    # stop and start the whole slice
    m.send("14", "Slice ID: ")
    m.send(str(sid), "Choice (1-5): ")
    assert "stopped" in m.send("4", timeout=60).lower()
    for vm in vms:
        assert sh(lab, host_of(lab, vm["worker_ip"]), f"test -e {naming.vm_pidfile(vm['vm_id'])} && echo there "
                  "|| echo gone").strip() == "gone"
    m.send("14", "Slice ID: ")
    m.send(str(sid), "Choice (1-5): ")
    assert "started" in m.send("5", timeout=60).lower()
    # delete: nothing left on any host
    m.send("7", "Slice ID: ")
    m.send(str(sid), "(y/n): ")
    assert "Slice deleted" in m.send("y", timeout=60)
    m.exit()
    assert_clean(lab)
    log = service.log_text()
    uid = pwd.getpwnam(STUDENT_ACCOUNT).pw_uid
    assert f"user=student uid={uid}" in log and "calls deploy_slice" in log


def test_the_student_account_cannot_read_the_keys_the_log_or_any_hash_nor_reach_the_hosts(lab, service):
    m = student_menu(service)
    m.login("student", "student")
    m.exit()                                               # the service is in use, and has made its files
    secrets = [service.state / "ssh" / "id_ed25519", service.state / "database.yaml",
               service.state / "log" / "cloud-repositorio.log", service.state / "cluster.yaml",
               Path(lab["ssh"]["key_file"]), service.state / "database.yaml.key"]
    # what the service's store derives from database.yaml (its cache, its lock) is never more readable than
    # that file, and the shipped unsalted hashes left every one of them at the service's first read
    db_st = service.db.stat()
    for derived in (service.state / "database.yaml.cache", service.state / "database.yaml.lock"):
        st = derived.stat()
        assert pwd.getpwuid(st.st_uid).pw_name == SERVICE_ACCOUNT, derived
        assert st.st_mode & 0o777 & ~db_st.st_mode == 0 and st.st_gid == db_st.st_gid, (derived, oct(st.st_mode))
        secrets.append(derived)
    users = yaml.safe_load(service.db.read_text())["users"]
    assert users["admin"]["password_hash"].startswith("sha256-scrypt$"), users["admin"]["password_hash"]
    for path in (service.db, service.state / "database.yaml.cache"):
        assert hashlib.sha256(b"admin").hexdigest() not in path.read_text(), path
    api = make_api(lab, service.db)
    try:
        api.services.credentials.password(1001)            # the site key exists from here on
    finally:
        api.executor.close()
    shutil.chown(service.state / "database.yaml.key", SERVICE_ACCOUNT, INSTRUCTORS)
    for path in secrets:
        assert path.exists(), path
        proc = as_student("cat", str(path))
        assert proc.returncode != 0 and "Permission denied" in proc.stderr, (path, proc)
    assert as_student("ls", str(service.state)).returncode != 0
    # the student's own hash (salted scrypt since that login): nowhere that account can read
    fresh = yaml.safe_load(service.db.read_text())["users"]["student"]["password_hash"]
    assert fresh.startswith("scrypt$"), fresh
    found = as_student("grep", "-rsl", fresh.split("$")[-1][-24:], "/tmp", str(REPO), "/run/cloud-repositorio")
    assert found.stdout == "", found.stdout
    # no way in to the hosts: no key, and the hosts take no password
    for host in ("netnode", "worker1"):
        proc = as_student("ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                          "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=5",
                          f"ubuntu@{lab.hosts[host]}", "true", timeout=30)
        assert proc.returncode != 0 and "Permission denied" in proc.stderr, proc
    # a forged request from that account, before and after logging in as someone else's name
    forged = ("import json, socket, sys\n"
              "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); f = s.makefile('rwb')\n"
              "def ask(m):\n    f.write(json.dumps(m).encode() + b'\\n'); f.flush(); return json.loads(f.readline())\n"
              "print(ask({'id': 1, 'op': 'call', 'method': 'list_users'})['error'])\n"
              "print(ask({'id': 2, 'op': 'call', 'method': 'list_users', 'username': 'admin'})['ok'])\n"
              "print(ask({'id': 3, 'op': 'login', 'username': 'student', 'password': 'student'})['ok'])\n"
              "print(ask({'id': 4, 'op': 'call', 'method': 'list_users'})['result'])\n")
    proc = as_student(PY, "-c", forged, str(service.socket))
    assert proc.stdout.splitlines() == ["log in first", "False", "True", "[False, 'Only an admin can do this']"], \
        proc.stdout + proc.stderr


def test_a_service_restarted_while_menus_are_connected_loses_nothing(lab, service):
    m = student_menu(service)
    m.login("student", "student")
    m.send("2", "Slice name: ")
    assert "Slice created! ID: 1000" in m.send("kept")
    code = service.stop()
    assert code == 0
    service.start()
    screen = m.send("1", "Username: ")
    assert "the manager service stopped or restarted" in screen and "log in again" in screen
    m.type_credentials("student", "student")
    screen = m.send("1")
    assert "Slices: 1\n" in screen and "kept" in m.send("5")
    m.exit()


def test_ctrl_c_in_the_menu_rolls_the_deploy_back_on_the_service(lab, service):
    m = student_menu(service)
    m.login("student", "student")
    m.send("2", "Slice name: ")
    sid = int(m.send("cc").split("Slice created! ID: ")[1].split()[0])
    m.add_vm(sid, "a", internet="y")
    m.add_vm(sid, "b")
    m.link(sid, "1001", "eth1", "1002", "eth1")
    m.send("6", "Slice ID to deploy: ")
    m.send(str(sid), " network ", timeout=60)             # the network phase has begun
    m.p.sendintr()
    screen = m.wait("\nChoice: ", timeout=90)
    assert "interrupted" in screen, screen
    m.exit()
    api = make_api(lab, service.db)
    try:
        s = api.db.get_slice(sid)
        assert s["status"] == "design"
    finally:
        api.executor.close()
    assert_clean(lab, keep_overlays={vm["qcow_image"].rsplit("/", 1)[1] for vm in s["vms"]})  # still designed


def test_a_service_killed_mid_deploy_rolls_it_back_when_it_starts_again(lab, service):
    """SIGKILL of the service while a student's deploy starts its VMs: the restarted service undoes it
    at its start (``recover_interrupted``), before anyone reads the slice; a new deploy then works."""
    m = student_menu(service)
    m.login("student", "student")
    m.send("2", "Slice name: ")
    sid = int(m.send("sk").split("Slice created! ID: ")[1].split()[0])
    m.add_vm(sid, "a", internet="y")
    m.add_vm(sid, "b")
    m.link(sid, "1001", "eth1", "1002", "eth1")
    m.send("6", "Slice ID to deploy: ")
    m.send(str(sid), " vms ", timeout=90)                 # a VM of it is started
    service.process.kill()
    m.p.terminate(force=True)
    api = make_api(lab, service.db)
    try:
        s = api.db.get_slice(sid)
        assert s["status"] == "deploying", s["status"]      # the dead service's mark, as the file says
        disks = {vm["qcow_image"].rsplit("/", 1)[1] for vm in s["vms"]}
        qemus = "".join(sh(lab, host_of(lab, vm["worker_ip"]), "pgrep -af '^qemu-system' || true") for vm in s["vms"])
        running = [vm for vm in s["vms"] if f"cr-vm{vm['vm_id']}," in qemus]
        assert running, "no VM ran when the service was killed"
        before = service.log_text().count("recovery at start")
        service.start()
        deadline = time.monotonic() + 120
        while service.log_text().count("recovery at start") == before:
            assert time.monotonic() < deadline, service.log_text()[-3000:]
            time.sleep(0.5)
        assert "recovery at start: [" in service.log_text() and "was rolled back" in service.log_text()
        s = api.db.get_slice(sid)           # read from the file: no reader of the slice came first
        assert s["status"] == "design" and "busy" not in s, s
    finally:
        api.executor.close()
    time.sleep(1)  # a VM start still on its way when the service died would show by now
    assert_clean(lab, keep_overlays=disks)
    m = student_menu(service)
    m.login("student", "student")
    m.send("6", "Slice ID to deploy: ")
    assert "Slice deployed successfully" in m.send(str(sid), timeout=120)
    m.send("7", "Slice ID: ")
    m.send(str(sid), "(y/n): ")
    assert "Slice deleted" in m.send("y", timeout=60)
    m.exit()
    assert_clean(lab)


def test_the_service_never_follows_a_path_a_student_names(lab, service, tmp_path):
    """An export or a roster's passwords are written by the menu, as the student: never by the service."""
    m = student_menu(service)
    m.login("admin", "admin")
    m.send("2", "Slice name: ")
    m.send("exp")
    m.exit()
    target = Path("/tmp") / f"crsvc-export-{os.getpid()}.yaml"
    target.unlink(missing_ok=True)
    proc = as_student(PY, str(REPO / "cli.py"), "--socket", str(service.socket), "--user", "admin",
                      "slice", "export", "1000", "--output", str(target), input="admin\n")
    assert proc.returncode == 0, proc.stderr
    try:
        st = target.stat()
        assert pwd.getpwuid(st.st_uid).pw_name == STUDENT_ACCOUNT     # written by the menu's own process
    finally:
        target.unlink(missing_ok=True)
    denied = as_student(PY, str(REPO / "cli.py"), "--socket", str(service.socket), "--user", "admin",
                        "slice", "export", "1000", "--output", str(service.state / "x.yaml"), input="admin\n")
    assert denied.returncode == 1 and "Permission denied" in denied.stderr
    assert not (service.state / "x.yaml").exists()


def _read_stream(stream, until: bytes = b"", count: int = 0, timeout: float = 60) -> tuple:
    """(stdout, stderr) of a relayed stream until ``until`` was seen ``count`` times, or it ended."""
    out, err, deadline = b"", b"", time.monotonic() + timeout
    while time.monotonic() < deadline and not (count and out.count(until) >= count):
        while stream.recv_stderr_ready():
            err += stream.recv_stderr(65536)
        if stream.recv_ready():
            out += stream.recv(65536)
        elif stream.eof_received:
            break
        else:
            time.sleep(0.05)
    return out, err


def test_captures_and_impairments_through_the_service_pcap_written_by_the_students_menu(lab, service):
    """SPEC §17 through the service: the capture's stream relayed (stopped by the menu's EOF), a pcap saved
    by crstudent's own process, a delay set and cleared; the worker keeps no capture afterwards."""
    api = RemoteAPI(str(service.socket))
    try:
        assert api.authenticate("student", "student")[0]
        sid = api.create_slice("-", "tools")[1]["slice_id"]
        ids = [api.add_vm_to_slice("-", sid, f"t{i}", "cirros", 1)[1]["vm_id"] for i in range(2)]
        link = api.create_link("-", sid, ids[0], "eth1", ids[1], "eth1")[1]
        ok, msg = api.deploy_slice("-", sid)
        assert ok, msg
        vms = api.get_slice("-", sid)[1]["vms"]
        vlan = link["vlan_id"]
        got = wait_for_leases(lab, {(vlan, vm["interfaces"][1]["mac"].lower()) for vm in vms}, timeout=180)
        a, b = (got[(vlan, vm["interfaces"][1]["mac"].lower())] for vm in vms)
        wait_guest_configured(lab, [(vm, "eth1") for vm in vms], timeout=180)

        def ping(n: int) -> str:
            rc, out = console(lab, vms[0], f"ping -c {n} -i 0.2 -W 2 {b}", timeout=60)
            assert rc == 0, out
            return out

        # live, stopped by the menu (Ctrl-] sends EOF): the last lines and tcpdump's summary still arrive
        ok, session = api.open_capture("-", sid, "link 1", "icmp", 100, 120, "text")
        assert ok, session
        host = host_of(lab, session.worker)
        ping(2)
        out, _err = _read_stream(session.channel, b"ICMP echo reply", 2, timeout=30)
        session.channel.shutdown_write()
        rest, err = _read_stream(session.channel, timeout=30)
        session.channel.close()
        lines = (session.early + out + rest).decode()
        assert lines.count(f"IP {a} > {b}: ICMP echo request") == 2, lines
        assert lines.count(f"IP {b} > {a}: ICMP echo reply") == 2, lines
        assert b"packets captured" in err, err
        assert sh(lab, host, "pgrep -af '[t]cpdump -i tap' || true").strip() == ""
        # a pcap, saved by the student's own menu process (script mode as crstudent)
        target = Path("/tmp") / f"crsvc-capture-{os.getpid()}.pcap"
        target.unlink(missing_ok=True)
        argv = ["runuser", "-u", STUDENT_ACCOUNT, "--", PY, str(REPO / "cli.py"), "--socket", str(service.socket),
                "--user", "student", "capture", str(sid), f"{ids[1]}", "eth1", "--filter", "icmp", "--count", "4",
                "--seconds", "120", "--pcap", str(target)]
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, cwd="/tmp")
        proc.stdin.write("student\n")
        proc.stdin.close()
        deadline = time.monotonic() + 30
        while "tcpdump -i" not in sh(lab, host_of(lab, vms[1]["worker_ip"]), "pgrep -af '[t]cpdump -i tap' || true"):
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() else ""
            time.sleep(0.2)
        ping(2)
        assert proc.wait(60) == 0, proc.stderr.read()
        try:
            st = target.stat()
            assert pwd.getpwuid(st.st_uid).pw_name == STUDENT_ACCOUNT and st.st_mode & 0o777 == 0o600
            icmp = [icmp_of(f) for f in pcap_packets(target.read_bytes())]
        finally:
            target.unlink(missing_ok=True)
        assert sorted(icmp) == sorted([(8, a, b), (0, b, a)] * 2), icmp
        # a delay of 100 ms each way, then cleared
        ok, res = api.set_impairment("-", sid, 1, "100ms")
        assert ok, res
        rtt = [float(x) for x in re.findall(r"time=([\d.]+) ms", ping(3))]
        assert len(rtt) == 3 and min(rtt) >= 199, rtt
        report = api.slice_status("-", sid)[1]
        assert [c.found for c in report.checks if c.key.kind == "impair"] == ["delay 100ms"] * 2
        ok, res = api.clear_impairment("-", sid, 1)
        assert ok, res
        rtt = [float(x) for x in re.findall(r"time=([\d.]+) ms", ping(3))]
        assert len(rtt) == 3 and max(rtt) < 100, rtt
        assert "calls open_capture" in service.log_text()
    finally:
        api.close()


def test_the_default_socket_is_what_run_sh_uses(lab):
    """``lab/service.sh`` makes the real thing: cloudrepo's process on /run/cloud-repositorio/manager.sock."""
    proc = subprocess.run([str(LAB_DIR / "service.sh"), "start"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    try:
        sock = Path("/run/cloud-repositorio/manager.sock")
        assert sock.is_socket() and oct(sock.stat().st_mode & 0o777) == "0o666"
        pid = int((LAB_DIR / "state" / "service" / "service.pid").read_text())
        children = subprocess.run(["pgrep", "-u", SERVICE_ACCOUNT, "-f", "python.* -m service"],
                                  capture_output=True, text=True).stdout.split()
        assert children, f"no process of {SERVICE_ACCOUNT} (launcher pid {pid})"
        proc = as_student(PY, str(REPO / "cli.py"), input="student\nstudent\n1\n0\n")
        assert "Quota: " in proc.stdout and proc.returncode == 0, proc.stdout + proc.stderr
    finally:
        subprocess.run([str(LAB_DIR / "service.sh"), "stop"], capture_output=True, timeout=180)
    assert not Path("/run/cloud-repositorio/manager.sock").exists()
