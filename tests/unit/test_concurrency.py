"""Several menus at once: 8 processes adding VMs to one database lose no update and break no quota."""
from __future__ import annotations

import multiprocessing

from fakes import FakeExecutor

from database import Database
from deployment_api import DeploymentAPI
from orchestrator_api import OrchestratorAPI

CTX = multiprocessing.get_context("fork")


def _menu(path: str, user: str, slice_id: int, tag: str, count: int, barrier, queue) -> None:
    api = OrchestratorAPI(Database(path), DeploymentAPI(FakeExecutor()))  # one menu process
    barrier.wait()
    for i in range(count):
        queue.put(api.add_vm_to_slice(user, slice_id, f"{tag}{i}", "cirros", 1))


def _run(tmp_path, user: str, per_process: int) -> tuple:
    path = str(tmp_path / "database.yaml")
    api = OrchestratorAPI(Database(path), DeploymentAPI(FakeExecutor()))
    ok, s = api.create_slice(user, "shared")
    assert ok, s
    barrier, queue = CTX.Barrier(8), CTX.Queue()
    procs = [CTX.Process(target=_menu, args=(path, user, s["slice_id"], f"p{n}x", per_process, barrier, queue))
             for n in range(8)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=60) for _ in range(8 * per_process)]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return Database(path), s["slice_id"], results


def test_student_quota_holds_with_8_menus_adding_at_once(tmp_path):
    db, sid, results = _run(tmp_path, "student", 1)
    added = [r[1] for r in results if r[0]]
    refused = [r[1] for r in results if not r[0]]
    assert len(added) == 6 and refused == ["Quota exceeded", "Quota exceeded"]
    vms = db.get_slice(sid)["vms"]
    assert sorted(v["vm_id"] for v in vms) == sorted(v["vm_id"] for v in added)
    assert len({v["vm_id"] for v in vms}) == 6
    assert len({v["vnc_port"] for v in vms}) == 6
    assert all(v["status"] == "design" for v in vms)
    assert db.get_user("student")["used_vms"] == 6


def test_no_update_lost_with_8_menus_adding_two_vms_each(tmp_path):
    db, sid, results = _run(tmp_path, "admin", 2)
    assert sum(1 for r in results if r[0]) == 10          # admin quota 10 of 16 tries
    vms = db.get_slice(sid)["vms"]
    assert len(vms) == 10
    assert sorted(v["vnc_port"] for v in vms) == list(range(5901, 5911))
    assert len({v["vm_id"] for v in vms}) == 10
    assert db.get_user("admin")["used_vms"] == 10
    assert db.load()["next_vm_id"] == 1011            # refused adds take no ID
