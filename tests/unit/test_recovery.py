"""A session killed in the middle of a deploy, start or stop (issue 17 item 1), with the FakeExecutor.

"Killed" here: the use case stops where it is (no rollback runs, as with SIGKILL) and its mark then
names a process that is gone.  What it made stays in the fake hosts' world; the next reader must
end it the way a failure would have: a deploy rolled back (the slice ``design``, nothing on any
host, its disks kept), a start undone (stopped), a stop finished.
"""
from __future__ import annotations

import os

import pytest
from uhelpers import NODE, WORKERS, build_slice, make_api, ok, restart

from database import Database
from deployment_api import DeploymentAPI
from orchestrator_api import OrchestratorAPI
from usecases import sessions
from usecases.recovery import RecoveryOutcome, recovery_commands

DEAD = {"pid": 999999, "host": os.uname().nodename, "start": "1"}


class Killed(BaseException):
    """What SIGKILL does to a use case: it stops here, nothing after it runs."""


def _die(*_args, **_kwargs):
    raise Killed


def kill_marks(db, sid) -> None:
    """The marking session is gone (its pid names no process)."""
    with db.transaction() as data:
        busy = data["slices"][str(sid)]["busy"]
        busy.update(DEAD)


def linked_slice(api):
    """Three VMs over the three workers, two links, internet on the first."""
    return build_slice(api, vms=(("a", 1, True), ("b", 2, False), ("c", 1, False)),
                       links=((0, "eth1", 1, "eth1"), (1, "eth2", 2, "eth1")))


def killed_deploy(api, db, ex, sid, ids, at: str):
    """Deploy ``sid`` and kill it: after connect, after the network phase, or once the first VM runs."""
    api.lifecycle._undo = _die
    if at == "connect":
        ex.fail("vlan_up")                     # the first network step: nothing was made yet
    elif at == "network":
        ex.fail("start_vm")                    # every VLAN made, no VM
    else:
        ex.fail("start_vm", target=ids[2])     # the others started
    with pytest.raises(Killed):
        api.deploy_slice("admin", sid)
    del api.lifecycle._undo
    ex.rules.clear()
    kill_marks(db, sid)
    assert db.get_slice(sid)["status"] == "deploying"


def assert_rolled_back(db, ex, sid, overlays: int = 3) -> None:
    s = db.get_slice(sid)
    assert s["status"] == "design" and "busy" not in s and "deployed_at" not in s, s
    assert all(vm["status"] == "design" and vm["pid"] is None for vm in s["vms"])
    assert all(n["status"] == "pending" for n in s["networks"])
    assert ex.made("vm") == set() and ex.made("vlan") == set(), ex.world
    assert len(ex.made("overlay")) == overlays  # the design's disks stay


READERS = {
    "list": lambda api, sid: api.list_slices("admin"),
    "get": lambda api, sid: api.get_slice("admin", sid),
    "overview": lambda api, sid: api.overview("admin"),
    "status": lambda api, sid: api.slice_status("admin", sid),
    "repair": lambda api, sid: api.repair_slice("admin", sid),
    "orphans (option 8)": lambda api, sid: api.find_orphans("admin"),
    "check_editable": lambda api, sid: api.check_editable("admin", sid),
    "add VM": lambda api, sid: api.add_vm_to_slice("admin", sid, "late", "cirros", 0),
    "start": lambda api, sid: api.start_vm("admin", sid),
    "service start": lambda api, sid: api.recover_interrupted(),
}


@pytest.mark.parametrize("at", ["connect", "network", "vms"])
@pytest.mark.parametrize("reader", sorted(READERS))
def test_the_next_reader_rolls_back_a_killed_deploy(tmp_path, at, reader):
    api, db, ex = make_api(tmp_path)
    sid, ids = linked_slice(api)
    killed_deploy(api, db, ex, sid, ids, at)
    if at != "connect":
        assert ex.made("vlan"), "the killed deploy should have left VLANs"
    other = OrchestratorAPI(Database(db.path), DeploymentAPI(ex))  # the next program, on the same hosts
    READERS[reader](other, sid)
    assert_rolled_back(db, ex, sid, overlays=4 if reader == "add VM" else 3)


def test_a_redeploy_after_a_killed_deploy_works_and_runs_nothing_twice(tmp_path):
    api, db, ex = make_api(tmp_path)
    sid, ids = linked_slice(api)
    killed_deploy(api, db, ex, sid, ids, "vms")
    ex.commands.clear()
    ok(api.deploy_slice("admin", sid))
    actions = [a for a, _t in ex.actions()]
    first_start = actions.index("start_vm")
    assert actions.index("stop_vm") < actions.index("vlan_down") < actions.index("vlan_up") < first_start
    assert {t for a, t in ex.actions() if a == "stop_vm"} == set(ids)  # rolled back once, VMs first
    assert ex.made("vm") == {("vm", w, i) for w, i in zip(WORKERS, ids)}
    assert db.get_slice(sid)["status"] == "running"


def test_delete_after_a_killed_deploy_leaves_nothing(tmp_path):
    api, db, ex = make_api(tmp_path)
    sid, ids = linked_slice(api)
    killed_deploy(api, db, ex, sid, ids, "vms")
    assert api.delete_slice("admin", sid) == (True, "Slice deleted")
    assert ex.world == set() and db.get_slice(sid) is None
    assert db.get_user("admin")["used_vms"] == 0


def test_a_killed_deploy_never_touches_another_slice(tmp_path):
    api, db, ex = make_api(tmp_path)
    keep, keep_ids = build_slice(api, name="keep", vms=(("k", 1, True),))
    ok(api.deploy_slice("admin", keep))
    sid, ids = linked_slice(api)
    killed_deploy(api, db, ex, sid, ids, "vms")
    ex.commands.clear()
    ok(api.list_slices("admin"))
    assert ("vm", WORKERS[0], keep_ids[0]) in ex.world and db.get_slice(keep)["status"] == "running"
    assert all(c.target != keep_ids[0] for c in ex.commands)
    release = [c for c in ex.commands if c.action == "internet_release"]
    assert len(release) == 1 and f"vm{ids[0]}" in release[0].script and f"vm{keep_ids[0]}" not in release[0].script


def test_a_live_deploy_is_left_alone(tmp_path):
    api, db, ex = make_api(tmp_path)
    sid, ids = linked_slice(api)
    seen = {}

    def other_reader(_cmd):
        if "list" not in seen:  # another menu reads while this deploy starts its VMs
            other, _db, other_ex = restart(tmp_path, db)
            seen["list"] = ok(other.list_slices("admin"))
            seen["commands"] = list(other_ex.commands)

    ex.hooks["start_vm"] = other_reader
    ok(api.deploy_slice("admin", sid))
    assert [s["status"] for s in seen["list"]] == ["deploying"] and seen["commands"] == []
    assert len(ex.made("vm")) == 3


def stopped_slice(api):
    sid, ids = build_slice(api, vms=(("a", 1, False), ("b", 1, False), ("c", 1, False)),
                           links=((0, "eth1", 1, "eth1"),))
    ok(api.deploy_slice("admin", sid))
    ok(api.stop_vm("admin", sid))
    return sid, ids


def test_a_killed_start_ends_stopped_with_nothing_running(tmp_path):
    api, db, ex = make_api(tmp_path)
    sid, ids = stopped_slice(api)
    assert ex.made("vm") == set()
    api.operations._unmark = _die               # killed once the starts are done
    ex.fail("start_vm", target=ids[2], times=1)
    with pytest.raises(Killed):
        api.start_vm("admin", sid)
    del api.operations._unmark
    assert len(ex.made("vm")) == 2 and db.get_slice(sid)["busy"]["vms"] == ids
    kill_marks(db, sid)
    s = ok(api.get_slice("admin", sid))
    assert s["status"] == "stopped" and "busy" not in s
    assert all(vm["status"] == "stopped" and vm["pid"] is None for vm in s["vms"])
    assert ex.made("vm") == set() and len(ex.made("vlan")) == 1  # the slice's VLAN stays: it is stopped
    ok(api.start_vm("admin", sid))  # and it starts again
    assert len(ex.made("vm")) == 3


def test_a_killed_start_of_one_vm_in_a_running_slice_stops_only_that_vm(tmp_path):
    api, db, ex = make_api(tmp_path)
    sid, ids = stopped_slice(api)
    ok(api.start_vm("admin", sid, ids[0]))
    api.operations._unmark = _die
    with pytest.raises(Killed):
        api.start_vm("admin", sid, ids[1])
    del api.operations._unmark
    kill_marks(db, sid)
    ex.commands.clear()
    s = ok(api.get_slice("admin", sid))
    assert s["status"] == "running"
    assert [vm["status"] for vm in s["vms"]] == ["running", "stopped", "stopped"]
    assert ex.made("vm") == {("vm", WORKERS[0], ids[0])}
    assert [c.target for c in ex.commands if c.action == "stop_vm"] == [ids[1]]


def test_a_killed_stop_is_finished(tmp_path):
    api, db, ex = make_api(tmp_path)
    sid, ids = build_slice(api, vms=(("a", 0, False), ("b", 0, False)))
    ok(api.deploy_slice("admin", sid))
    api.operations._unmark = _die
    ex.fail("stop_vm", target=ids[1], times=1)   # the second VM was still running when it died
    with pytest.raises(Killed):
        api.stop_vm("admin", sid)
    del api.operations._unmark
    kill_marks(db, sid)
    assert ("vm", WORKERS[1], ids[1]) in ex.world
    ex.commands.clear()
    s = ok(api.list_slices("admin"))[0]
    assert s["status"] == "stopped" and all(vm["status"] == "stopped" for vm in s["vms"])
    assert ex.made("vm") == set()
    stops = [c for c in ex.commands if c.action == "stop_vm"]
    assert sorted(c.target for c in stops) == ids and all("quit" in c.script for c in stops)  # graceful: disks kept


def test_a_killed_stop_of_one_vm_keeps_the_others_running(tmp_path):
    api, db, ex = make_api(tmp_path)
    sid, ids = build_slice(api, vms=(("a", 0, False), ("b", 0, False)))
    ok(api.deploy_slice("admin", sid))
    api.operations._run = _die                   # killed before it reached the worker
    with pytest.raises(Killed):
        api.stop_vm("admin", sid, str(ids[0]))
    del api.operations._run
    kill_marks(db, sid)
    s = ok(api.get_slice("admin", sid))
    assert s["status"] == "running" and [vm["status"] for vm in s["vms"]] == ["stopped", "running"]
    assert ex.made("vm") == {("vm", WORKERS[1], ids[1])}


def test_an_unreachable_host_keeps_the_slice_blocked_until_it_is_back(tmp_path):
    api, db, ex = make_api(tmp_path)
    sid, ids = linked_slice(api)
    killed_deploy(api, db, ex, sid, ids, "vms")
    ex.down_hosts.add(WORKERS[1])
    s = ok(api.get_slice("admin", sid))
    assert s["status"] == "deploying" and s["busy"]["pid"] == DEAD["pid"]  # the dead mark is put back
    assert ("vm", WORKERS[0], ids[0]) not in ex.world  # what could be removed was
    pending = sessions.recovery_pending_text(s)
    assert "interrupted deploy" in pending and "cannot be reached" in pending
    assert api.deploy_slice("admin", sid) == (False, pending)
    assert api.delete_slice("admin", sid) == (False, pending)
    assert api.add_vm_to_slice("admin", sid, "x", "cirros", 0) == (False, pending)
    assert api.check_editable("admin", sid) == (False, pending)
    attempts = []
    real = ex._transport
    ex._transport = lambda cmd, text, timeout: attempts.append(cmd.action) or real(cmd, text, timeout)
    ok(api.list_slices("admin"))           # within RETRY_S: not tried again (View stays fast)
    assert attempts == []
    ex.down_hosts.clear()
    api.recovery.RETRY_S = 0
    assert ok(api.list_slices("admin"))[0]["status"] == "design"
    assert_rolled_back(db, ex, sid)
    ok(api.deploy_slice("admin", sid))


def test_two_readers_at_once_recover_once(tmp_path):
    api, db, ex = make_api(tmp_path)
    sid, ids = linked_slice(api)
    killed_deploy(api, db, ex, sid, ids, "vms")
    other, _db, other_ex = restart(tmp_path, db)
    seen = {}

    def second_reader(_cmd):
        if "list" not in seen:  # while the first reader removes VMs, another menu reads
            seen["list"] = ok(other.list_slices("admin"))

    ex.hooks["stop_vm"] = second_reader
    ok(api.list_slices("admin"))
    assert [s["status"] for s in seen["list"]] == ["deploying"]  # the first reader's own mark: left alone
    assert [c for c in other_ex.commands if c.action != "host_facts"] == []
    assert sorted(t for a, t in ex.actions() if a == "stop_vm") == sorted(ids)
    assert_rolled_back(db, ex, sid)


def test_a_reader_killed_while_recovering_leaves_it_to_the_next_one(tmp_path):
    api, db, ex = make_api(tmp_path)
    sid, ids = linked_slice(api)
    killed_deploy(api, db, ex, sid, ids, "vms")
    api.recovery._finish = _die
    with pytest.raises(Killed):
        api.list_slices("admin")
    del api.recovery._finish
    s = db.get_slice(sid)
    assert s["status"] == "deploying" and s["busy"]["recovering"]["pid"] == DEAD["pid"]
    kill_marks(db, sid)
    ex.world.add(("vm", WORKERS[2], ids[2]))  # as if a start was still running when it died
    assert ok(api.get_slice("admin", sid))["status"] == "design"
    assert_rolled_back(db, ex, sid)


def test_recover_interrupted_ends_everything_a_killed_service_left(tmp_path):
    api, db, ex = make_api(tmp_path)
    dep, dep_ids = linked_slice(api)
    killed_deploy(api, db, ex, dep, dep_ids, "network")
    st, st_ids = build_slice(api, name="st", vms=(("s", 0, False),))
    ok(api.deploy_slice("admin", st))
    ok(api.stop_vm("admin", st))
    api.operations._unmark = _die
    with pytest.raises(Killed):
        api.start_vm("admin", st)
    del api.operations._unmark
    kill_marks(db, st)
    de, _de_ids = build_slice(api, name="de", vms=(("d", 0, False),))
    ok(api.deploy_slice("admin", de))
    with db.transaction() as data:  # a delete killed before it touched a host; a VM half added
        data["slices"][str(de)].update(status="deleting", busy=dict(DEAD, previous="running"))
        data["slices"][str(dep)]["vms"].append({"vm_id": 5000, "name": "half", "status": "pending",
                                                "worker_ip": WORKERS[0], "busy": dict(DEAD),
                                                "qcow_image": "~/vm_images/half_img.qcow2", "interfaces": []})
    ok_, outcomes = api.recover_interrupted()
    assert ok_ and all(isinstance(o, RecoveryOutcome) for o in outcomes)
    got = sorted((o.slice_id, o.operation, o.ok, o.status) for o in outcomes)
    assert got == sorted([(dep, "deploy", True, "design"), (st, "start", True, "stopped"),
                          (de, "delete", True, "running"), (dep, "add VM", True, "design")]), outcomes
    assert db.get_slice(dep)["status"] == "design" and db.get_slice(st)["status"] == "stopped"
    assert [vm["vm_id"] for vm in db.get_slice(dep)["vms"]] == dep_ids
    assert [vm["vm_id"] for vm in db.get_slice(st)["vms"]] == st_ids
    assert ex.made("vm") == {("vm", vm["worker_ip"], vm["vm_id"]) for vm in db.get_slice(de)["vms"]}
    assert api.recover_interrupted() == (True, [])  # nothing left to do


def test_a_start_mark_records_its_vms_and_they_hold_capacity(tmp_path):
    api, db, ex = make_api(tmp_path)
    sid, ids = stopped_slice(api)
    seen = {}

    def look(_cmd):
        seen.setdefault("busy", db.get_slice(sid)["busy"])

    ex.hooks["start_vm"] = look
    ok(api.start_vm("admin", sid, ids[1]))
    assert seen["busy"]["vms"] == [ids[1]]
    assert "busy" not in db.get_slice(sid)


def test_recovery_commands_are_the_teardown_for_a_deploy(tmp_path):
    api, db, _ex = make_api(tmp_path)
    sid, _ids = linked_slice(api)
    s = db.get_slice(sid)
    s["status"] = "deploying"
    vm_cmds, node_cmds = recovery_commands(s, api.services.host_context(), "br-int")
    stops, node = api.teardown_commands(s)
    assert [c.script for c in vm_cmds] == [c.script for c in stops]
    assert [c.script for c in node_cmds] == [c.script for c in node] and {c.host for c in node} == {NODE}


def test_a_mark_without_its_vms_still_recovers_every_vm_it_may_have_touched(tmp_path):
    api, db, ex = make_api(tmp_path)
    sid, ids = build_slice(api, vms=(("a", 0, False), ("b", 0, False)))
    ok(api.deploy_slice("admin", sid))
    with db.transaction() as data:  # an older version's stop mark: no "vms"
        data["slices"][str(sid)].update(status="stopping", busy=dict(DEAD, previous="running"))
    s = ok(api.get_slice("admin", sid))
    assert s["status"] == "stopped" and ex.made("vm") == set()
