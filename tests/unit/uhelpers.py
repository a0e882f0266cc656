"""Shared helpers of the unit tests (FakeExecutor + temporary database)."""
from __future__ import annotations

import copy
import shlex

from fakes import LAB_LIKE, FakeExecutor

from database import Database
from deployment_api import DeploymentAPI
from orchestrator_api import OrchestratorAPI

WORKERS = LAB_LIKE["workers"]
NODE = LAB_LIKE["network_node"]
CIRROS_BASE = "cirros-0.6.2-x86_64-disk.img"


def lab_config(**overrides) -> dict:
    cfg = copy.deepcopy(LAB_LIKE)
    cfg.update(overrides)
    return cfg


def make_api(tmp_path, config: dict = None, base_exists: bool = True, db_name: str = "db.yaml"):
    """(api, db, executor) on a fresh database file in tmp_path."""
    db = Database(str(tmp_path / db_name))
    ex = FakeExecutor(config, base_exists=base_exists)
    api = OrchestratorAPI(db, DeploymentAPI(ex))
    return api, db, ex


def restart(tmp_path, db, config: dict = None, base_exists: bool = True):
    """A new program on the same database file (new executor, APIs, Database object)."""
    db2 = Database(db.path)
    ex = FakeExecutor(config, base_exists=base_exists)
    return OrchestratorAPI(db2, DeploymentAPI(ex)), db2, ex


def script_of(text: str) -> str:
    """The shell script inside ``sudo -n sh -c '<script>'`` (or the text itself)."""
    if text.startswith("sudo -n timeout "):
        words = shlex.split(text)
        assert words[:4] == ["sudo", "-n", "timeout", "-k"] and words[6:8] == ["sh", "-c"] \
            and len(words) == 9, text
        return words[8]
    return text


def scripts(ex, host: str = None) -> list:
    return [script_of(t) for t in ex.texts(host)]


def qemu_argv(script: str) -> list:
    """The QEMU command line of a launch script, as argv."""
    lines = [ln for ln in script.splitlines() if ln.startswith("qemu-system-x86_64 ")]
    assert len(lines) == 1, script
    return shlex.split(lines[0])


def ok(result):
    """Unwrap a (True, payload) result; fail with the message otherwise."""
    assert isinstance(result, tuple) and len(result) == 2, result
    assert result[0] is True, result[1]
    return result[1]


def build_slice(api, user="admin", name="s1", vms=(("vm1", 1, False), ("vm2", 1, False)), links=()):
    """Create a slice with VMs (name, data interfaces, internet) and links ((i, ifname, j, ifname))."""
    sid = ok(api.create_slice(user, name))["slice_id"]
    ids = [ok(api.add_vm_to_slice(user, sid, n, "cirros", k, inet))["vm_id"] for n, k, inet in vms]
    for a, ia, b, ib in links:
        ok(api.create_link(user, sid, ids[a], ia, ids[b], ib))
    return sid, ids
