"""Races between sessions, interrupted operations and leftovers on hosts (FakeExecutor)."""
from __future__ import annotations

import os
import signal
import time

import pytest
from uhelpers import WORKERS, lab_config, make_api, ok, restart, script_of

import naming
from database import DatabaseError


def fail_on_second_call(obj, name: str, exc) -> None:
    """Make the second call of ``obj.name`` raise ``exc`` (the first and later ones work)."""
    real, calls = getattr(obj, name), {"n": 0}

    def wrapper(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise exc
        return real(*args, **kw)

    setattr(obj, name, wrapper)


def _slice(api, vms=2, user="admin", name="s"):
    sid = ok(api.create_slice(user, name))["slice_id"]
    ids = [ok(api.add_vm_to_slice(user, sid, f"vm{i}", "cirros", 1))["vm_id"] for i in range(vms)]
    return sid, ids


def test_deploy_refused_while_another_session_deletes_the_design_slice(tmp_path):
    api, db, ex = make_api(tmp_path)
    sid, _ = _slice(api)
    other, _db2, _ex2 = restart(tmp_path, db)
    seen = {}

    def other_session_acts(_cmd):
        if "deploy" not in seen:  # the other session acts while disks are deleted
            seen["deploy"] = other.deploy_slice("admin", sid)
            seen["add"] = other.add_vm_to_slice("admin", sid, "late", "cirros", 0)

    ex.hooks["delete_overlay"] = other_session_acts
    assert api.delete_slice("admin", sid) == (True, "Slice deleted")
    assert seen["deploy"] == (False, "Slice is deleting in another session")
    assert seen["add"][0] is False and "deleting" in seen["add"][1]
    assert db.get_slice(sid) is None


def test_ctrl_c_during_delete_keeps_the_slice_and_its_quota(tmp_path):
    api, db, ex = make_api(tmp_path)
    sid, ids = _slice(api, vms=3)
    def ctrl_c(_cmd):  # the user presses Ctrl-C while disks are deleted (handled in the main thread)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)

    ex.hooks["delete_overlay"] = ctrl_c
    res = api.delete_slice("admin", sid)
    assert res[0] is False and "interrupted (Ctrl-C)" in res[1] and "The slice is kept" in res[1]
    s = db.get_slice(sid)
    assert s is not None and s["status"] == "design" and "busy" not in s
    assert db.get_user("admin")["used_vms"] == 3
    ex.hooks.clear()
    assert api.delete_slice("admin", sid) == (True, "Slice deleted")  # a retry finishes the job


def test_a_leftover_file_at_the_documented_overlay_path_does_not_block_the_add(tmp_path):
    api, db, ex = make_api(tmp_path)
    sid = ok(api.create_slice("admin", "s"))["slice_id"]
    ex.fail("create_overlay", target="vm1_img.qcow2", status=17, err="vm1_img.qcow2 already exists")
    vm = ok(api.add_vm_to_slice("admin", sid, "vm1", "cirros", 0))
    assert vm["qcow_image"] == f"~/vm_images/vm1.{vm['vm_id']}_img.qcow2"
    assert db.get_slice(sid)["vms"][0]["qcow_image"] == vm["qcow_image"]
    assert [t for a, t in ex.actions() if a == "create_overlay"] == ["vm1_img.qcow2", f"vm1.{vm['vm_id']}_img.qcow2"]


def test_ctrl_c_after_the_overlay_was_made_removes_it_and_the_reservation(tmp_path):
    api, db, ex = make_api(tmp_path)
    sid = ok(api.create_slice("admin", "s"))["slice_id"]
    fail_on_second_call(db, "transaction", KeyboardInterrupt)  # the commit after the overlay exists
    with pytest.raises(KeyboardInterrupt):
        api.add_vm_to_slice("admin", sid, "vm1", "cirros", 0)
    del db.transaction
    assert any("rm -f" in t and "vm1_img.qcow2" in t for _h, t in ex.calls)
    assert db.get_slice(sid)["vms"] == [] and db.get_user("admin")["used_vms"] == 0


def test_stale_deploying_slice_of_a_dead_session_can_be_changed_again(tmp_path):
    api, db, _ex = make_api(tmp_path)
    sid, ids = _slice(api, vms=2)
    with db.transaction() as data:
        data["slices"][str(sid)]["status"] = "deploying"
        data["slices"][str(sid)]["busy"] = {"pid": 999999, "host": os.uname().nodename, "start": "1",
                                             "previous": "design"}
    link = ok(api.create_link("admin", sid, ids[0], "eth1", ids[1], "eth1"))
    assert link["vlan_id"] == 100
    s = db.get_slice(sid)
    assert s["status"] == "design" and "busy" not in s


def test_orphan_overlays_only_by_this_systems_naming(tmp_path):
    api, _db, ex = make_api(tmp_path, config=lab_config(flavor_images={"cirros": "/srv/images/base_img.qcow2"}))
    ex.answer("scan", host=WORKERS[0], out="overlay my disk_img.qcow2\noverlay ghost_img.qcow2\n")
    ok_, orphans = api.find_orphans("admin")
    assert ok_, orphans
    names = [o.name for o in orphans if o.kind == "overlay"]
    assert names == ["overlay ghost_img.qcow2"], names
    # the scan itself lists only overlays with this system's marker beside them (a base image has none)
    scan = next(script_of(t) for h, t in ex.calls if h == WORKERS[0] and "overlay" in t and "owner" in t)
    assert '[ -f "$f.owner" ]' in scan


def _make_stale(db, sid):
    with db.transaction() as data:
        data["slices"][str(sid)]["status"] = "deploying"
        data["slices"][str(sid)]["busy"] = {"pid": 999999, "host": os.uname().nodename, "start": "1",
                                             "previous": "design"}


def test_delete_after_a_dead_deploy_tears_everything_down_even_once_edited(tmp_path):
    api, db, ex = make_api(tmp_path)
    sid, ids = _slice(api, vms=2)
    _make_stale(db, sid)
    link = ok(api.create_link("admin", sid, ids[0], "eth1", ids[1], "eth1"))   # back to design
    ex.calls.clear()
    ok(api.delete_slice("admin", sid))
    texts = [t for _h, t in ex.calls]
    for vm_id in ids:
        assert any(f"-name cr-vm{vm_id}," in t and "kill -9" in t for t in texts), vm_id
    assert any(f"ip netns del ns-dhcp-vlan{link['vlan_id']}" in t for t in texts)


def test_failed_delete_of_a_dead_deploy_keeps_it_to_undo_never_running(tmp_path):
    api, db, ex = make_api(tmp_path)
    sid, _ids = _slice(api, vms=1)
    _make_stale(db, sid)
    ex.down_hosts.update(WORKERS)
    ok_, msg = api.delete_slice("admin", sid)
    assert ok_ is False and "interrupted deploy" in msg and "cannot be reached" in msg
    s = db.get_slice(sid)
    assert s["status"] == "deploying" and s["busy"]["pid"] == 999999  # still to be rolled back
    ex.down_hosts.clear()
    api.recovery.RETRY_S = 0
    assert api.delete_slice("admin", sid) == (True, "Slice deleted")


def test_a_failed_commit_of_a_new_vm_leaves_no_pending_vm_and_no_disk(tmp_path):
    api, db, ex = make_api(tmp_path)
    sid = ok(api.create_slice("admin", "s"))["slice_id"]
    fail_on_second_call(db, "_write_file", DatabaseError("disk full"))  # 1: reservation, 2: commit
    with pytest.raises(DatabaseError):
        api.add_vm_to_slice("admin", sid, "vm1", "cirros", 0)
    del db._write_file
    assert db.get_slice(sid)["vms"] == [] and db.get_user("admin")["used_vms"] == 0
    assert any(t.startswith("case ") and "rm -f" in t and "vm1_img.qcow2" in t for _h, t in ex.calls)


def test_ctrl_c_right_after_the_slice_is_marked_running_leaves_a_consistent_design(tmp_path):
    api, db, ex = make_api(tmp_path)
    sid, ids = _slice(api, vms=2)
    real = api.lifecycle._mark_running

    def mark_then_interrupt(*args):
        real(*args)
        raise KeyboardInterrupt  # as if no Ctrl-C handler could be installed

    api.lifecycle._mark_running = mark_then_interrupt
    res = api.deploy_slice("admin", sid)
    assert res[0] is False and "interrupted (Ctrl-C)" in res[1]
    s = db.get_slice(sid)
    assert s["status"] == "design" and all(v["status"] == "design" and v["pid"] is None for v in s["vms"])
    assert ex.made("vm") == set()
    api.lifecycle._mark_running = real
    ok(api.deploy_slice("admin", sid))


def test_overlay_names_with_the_id_fallback_are_recognised_for_the_longest_names():
    assert naming.OVERLAY_RE.fullmatch("a" * 32 + "_1025_img.qcow2")
    assert naming.OVERLAY_RE.fullmatch("a" * 32 + "_img.qcow2")
    assert not naming.OVERLAY_RE.fullmatch("labvm.qcow2")


def test_view_shows_and_stores_the_real_status_after_a_session_died(tmp_path):
    api, db, _ex = make_api(tmp_path)
    sid, _ids = _slice(api, vms=1)
    ok(api.deploy_slice("admin", sid))
    with db.transaction() as data:  # a Delete session died before touching any host
        data["slices"][str(sid)]["status"] = "deleting"
        data["slices"][str(sid)]["busy"] = {"pid": 999999, "host": os.uname().nodename, "start": "1",
                                             "previous": "running"}
    slices = ok(api.list_slices("admin"))
    assert [s["status"] for s in slices] == ["running"] and "busy" not in slices[0]
    assert db.get_slice(sid)["status"] == "running"  # written back under the lock


def test_rollback_and_delete_visit_every_host_even_when_one_fails(tmp_path):
    api, db, ex = make_api(tmp_path, config=lab_config())
    sid, ids = _slice(api, vms=3)
    ex.fail("start_vm", target=ids[2], err="Could not open")
    ex.fail("stop_vm", host=WORKERS[0], err="sudo: timed out")  # the first teardown step fails
    res = api.deploy_slice("admin", sid)
    assert res[0] is False and WORKERS[0] in res[1]
    stopped = {t for a, t in ex.actions() if a == "stop_vm"}
    assert stopped == set(ids)  # every VM's worker was visited, not just up to the first failure
    assert ex.made("vm") == {("vm", WORKERS[0], ids[0])}  # only what the failing host kept
    ex.rules.clear()
    ok(api.delete_slice("admin", sid))
    assert ex.made("vm") == set()
