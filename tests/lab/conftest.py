"""Fixtures for tests that need the local lab (SPEC §6).

`lab` (session): runs lab/up.sh once (idempotent: fast if the lab is already
up) and returns a `Lab`: the parsed lab/cluster.yaml (a dict) plus helpers:

    lab["workers"], lab["ssh"]["key_file"], ...
    lab.exec("worker1", "ovs-vsctl show")     -> CompletedProcess (as root, inside the host)
    lab.ssh("worker1")                        -> connected paramiko.SSHClient (as ubuntu)
    lab.run("worker1", "sudo -n true")        -> (rc, stdout, stderr) over SSH

`lab_exec` (session): the same as lab.exec.

The fixture never tears the lab down: the test marked `lab_last`
(test_zz_down_leaves_nothing) runs lab/down.sh, and this conftest sorts it to
the very end of the whole session.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml as _yaml
from menu_driver import MenuSession

REPO = Path(__file__).resolve().parents[2]
LAB_DIR = REPO / "lab"
UP = LAB_DIR / "up.sh"
DOWN = LAB_DIR / "down.sh"
EXEC = LAB_DIR / "exec.sh"
CLUSTER_YAML = LAB_DIR / "cluster.yaml"
LAB_HOSTS = ("netnode", "worker1", "worker2", "worker3")


def pytest_configure(config):
    config.addinivalue_line("markers", "lab_last: run at the very end of the session (tears the lab down)")


def pytest_collection_modifyitems(session, config, items):
    # Tests marked lab_last (lab/down.sh) must run after every other test of
    # the session, whatever file they are in.
    last = [it for it in items if it.get_closest_marker("lab_last")]
    if last:
        rest = [it for it in items if not it.get_closest_marker("lab_last")]
        items[:] = rest + last


def lab_skip_reason() -> str | None:
    """Why lab tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "the local lab needs root (namespaces, veths, OVS); run the tests as root"
    if not UP.exists():
        return f"{UP} not found"
    return None


def _import_paramiko():
    try:
        import paramiko  # noqa: F401
    except ImportError:  # pragma: no cover - depends on the machine
        pytest.skip("paramiko is not installed (pip install paramiko)")
    return paramiko


def run_lab_exec(
    host: str, cmd, timeout: float = 60, check: bool = False, input: str | None = None
) -> subprocess.CompletedProcess:
    """Run cmd (a shell string or an argv list) as root inside a lab host."""
    argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
    return subprocess.run(
        [str(EXEC), host, *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
        input=input,
    )


class Lab(dict):
    """The parsed lab/cluster.yaml plus helpers to reach the hosts."""

    def __init__(self, config: dict, up_seconds: float, up_output: str):
        super().__init__(config)
        self.root = LAB_DIR
        self.up_seconds = up_seconds
        self.up_output = up_output
        self.hosts: dict[str, str] = dict(config["lab"]["hosts"])
        self._clients: dict[str, object] = {}

    # -- root-side access -------------------------------------------------------
    def exec(self, host: str, cmd, **kw) -> subprocess.CompletedProcess:
        return run_lab_exec(host, cmd, **kw)

    # -- SSH as the product does it ----------------------------------------------
    def connect(self, host: str, known_hosts: str | None = None, timeout: float = 5):
        """A new paramiko client to host (name or IP), host key checking ON."""
        paramiko = _import_paramiko()
        ip = self.hosts.get(host, host)
        client = paramiko.SSHClient()
        client.load_host_keys(known_hosts or self["ssh"]["known_hosts"])
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        sock = socket.create_connection((ip, 22), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            client.connect(
                ip,
                username=self["ssh"]["user"],
                key_filename=self["ssh"]["key_file"],
                sock=sock,
                timeout=timeout,
                banner_timeout=timeout,
                auth_timeout=timeout,
                allow_agent=False,
                look_for_keys=False,
            )
        except Exception:
            sock.close()
            client.close()
            raise
        return client

    def ssh(self, host: str):
        """A cached, connected paramiko client for host."""
        client = self._clients.get(host)
        transport = client.get_transport() if client else None
        if transport is None or not transport.is_active():
            client = self.connect(host)
            self._clients[host] = client
        return client

    def run(self, host: str, cmd: str, timeout: float = 60) -> tuple[int, str, str]:
        """Run cmd over SSH as the lab user; returns (rc, stdout, stderr)."""
        _, out, err = self.ssh(host).exec_command(cmd, timeout=timeout)
        stdout = out.read().decode()
        stderr = err.read().decode()
        return out.channel.recv_exit_status(), stdout, stderr

    def close(self):
        for client in self._clients.values():
            client.close()
        self._clients.clear()


@pytest.fixture(scope="session")
def lab():
    reason = lab_skip_reason()
    if reason:
        pytest.skip(reason)
    yaml = pytest.importorskip("yaml")
    missing = [
        c
        for c in ("ip", "nsenter", "ovs-vsctl", "sshd", "qemu-system-x86_64")
        if not shutil.which(c) and not Path("/usr/sbin", c).exists()
    ]
    if missing:
        pytest.skip(f"lab packages missing (commands {missing}); see lab/packages.txt")
    t0 = time.monotonic()
    proc = subprocess.run([str(UP)], capture_output=True, text=True, timeout=600)
    took = time.monotonic() - t0
    if proc.returncode != 0:
        pytest.fail(f"lab/up.sh failed (rc={proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    config = yaml.safe_load(CLUSTER_YAML.read_text())
    lab = Lab(config, took, proc.stdout + proc.stderr)
    yield lab
    lab.close()


@pytest.fixture(scope="session")
def lab_exec(lab):
    return lab.exec


# --- the menu in a real terminal against the lab ---------------------------------------------

DEPLOY_TIMEOUT = 60
ADD_VM_TIMEOUT = 30


class Menu(MenuSession):
    """The shared menu driver, with the lab's design steps (add a VM, link two)."""

    def add_vm(self, slice_id: int, name: str, flavor: str = "1", interfaces: str = "1",
               internet: str = "n") -> str:
        self.send("3", "Slice ID: ")
        self.send(str(slice_id), "VM name: ")
        self.send(name, "Choose flavor (1-2): ")
        self.send(flavor, "Number of data interfaces (eth1, eth2, ...): ")
        self.send(interfaces, "Enable internet access (eth0 in VLAN 400)? (y/n): ")
        return self.send(internet, timeout=ADD_VM_TIMEOUT)

    def link(self, slice_id: int, vm1: str, if1: str, vm2: str, if2: str) -> tuple:
        """(the listing shown before the questions, the result)"""
        self.send("4", "Slice ID: ")
        listing = self.send(str(slice_id), "First VM ID: ")
        self.send(vm1, "First VM interface (e.g., eth1): ")
        self.send(if1, "Second VM ID: ")
        self.send(vm2, "Second VM interface (e.g., eth1): ")
        return listing, self.send(if2)


@pytest.fixture
def site(lab, tmp_path):
    """A fresh database and the lab's config (log in tmp_path); every slice deleted afterwards."""
    if not (LAB_DIR / "cluster.yaml").exists():  # another test ran lab/down.sh meanwhile
        pytest.fail("lab/cluster.yaml is gone: the lab was torn down under this test; run lab/up.sh")
    db = tmp_path / "database.yaml"
    shutil.copyfile(REPO / "database.yaml", db)
    config = _yaml.safe_load((LAB_DIR / "cluster.yaml").read_text())
    config["log_file"] = str(tmp_path / "menu.log")
    cfg = tmp_path / "cluster.yaml"
    cfg.write_text(_yaml.safe_dump(config))
    menus = []

    def spawn() -> Menu:
        m = Menu(cfg, db, tmp_path / "menu.log")
        menus.append(m)
        return m

    yield {"db": db, "cfg": cfg, "spawn": spawn}
    for m in menus:
        if m.p.isalive():
            m.p.terminate(force=True)
    from labtools import make_api

    api = make_api(lab, db)
    try:
        left = []
        for s in list(api.db.all_slices().values()):
            ok, msg = api.delete_slice(s["owner"], s["slice_id"])
            if not ok:
                left.append((s["slice_id"], msg))
        assert not left, f"could not delete slices after the test: {left}"
        assert api.db.all_slices() == {}
    finally:
        api.executor.close()


@pytest.fixture
def api(lab, tmp_path):
    """The real product on the lab with a fresh database; every slice it holds is deleted afterwards."""
    from labtools import make_api

    api = make_api(lab, tmp_path / "database.yaml")
    yield api
    for s in api.db.all_slices().values():  # never leave a slice behind, whatever the test did
        api.delete_slice(s["owner"], s["slice_id"])
    api.executor.close()
