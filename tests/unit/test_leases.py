"""Slice leases with a FakeExecutor: the default lease, renewals within the maximum, after expiry, warnings, the
refusals of deploy and start, and the reaper (stop, then delete after the grace period, all or nothing)."""
from __future__ import annotations

import time

import pytest
import yaml
from fakes import LAB_LIKE
from uhelpers import WORKERS, build_slice, make_api, ok

from database import Database, DatabaseError
from usecases import leases, sessions
from usecases.leases import DAY, parse_stamp, stamp


def near(text, t, slack=5.0) -> bool:
    return abs(parse_stamp(text) - t) <= slack


def end_lease(db, sid, ago: float = 3600) -> None:
    """The clock moved on: the slice's lease ended ``ago`` seconds ago."""
    with db.transaction() as data:
        data["slices"][str(sid)]["lease_end"] = stamp(time.time() - ago)


def running(api, user="student", name="s1"):
    sid, ids = build_slice(api, user=user, name=name, vms=(("vm1", 1, False), ("vm2", 1, False)),
                           links=((0, "eth1", 1, "eth1"),))
    ok(api.deploy_slice(user, sid))
    return sid, ids


# --- the lease a slice gets, and renewals ----------------------------------------------------------

def test_a_user_without_a_maximum_gets_no_lease_and_one_with_a_maximum_gets_it(tmp_path):
    api, db, _ex = make_api(tmp_path)
    sid = ok(api.create_slice("student", "free"))["slice_id"]
    assert "lease_end" not in db.get_slice(sid)  # the documented slice shape, unchanged
    assert ok(api.set_max_lease("admin", "student", 7)).startswith("Maximum lease of student set to 7 days")
    sid = ok(api.create_slice("student", "leased"))["slice_id"]
    assert near(db.get_slice(sid)["lease_end"], time.time() + 7 * DAY)
    made = ok(api.create_from_template("admin", "linear", 2, "cirros", "none", "tpl", owner="student"))
    assert near(made["lease_end"] if "lease_end" in made else db.get_slice(made["slice_id"])["lease_end"],
                time.time() + 7 * DAY)


def test_the_owner_renews_within_the_maximum_from_the_time_of_renewal(tmp_path):
    api, db, ex = make_api(tmp_path)
    ok(api.set_max_lease("admin", "student", 5))
    sid = ok(api.create_slice("student", "s"))["slice_id"]
    now = time.time() + 2 * DAY  # two days later
    msg = ok(api.leases.set_lease("student", sid, 5, now=now))
    assert near(db.get_slice(sid)["lease_end"], now + 5 * DAY) and "ends " in msg and "(in 5d 0h)" in msg
    before = db.load()
    for days, why in ((6, "A lease of 6 days is beyond your maximum: 1 to 5 days from now"),
                      (0, "Your slices need a lease (at most 5 days): it cannot be removed"),
                      ("none", "Your slices need a lease (at most 5 days): it cannot be removed"),
                      (-1, "A lease is 1 to 5 days from now"),
                      ("2.5", "The lease must be a whole number of days (or none)"),
                      ("three", "The lease must be a whole number of days (or none)")):
        assert api.set_lease("student", sid, days) == (False, why), days
    assert db.load() == before and ex.commands == []


def test_a_renewal_after_expiry_is_refused_for_the_owner_and_allowed_for_an_admin(tmp_path):
    api, db, _ex = make_api(tmp_path)
    ok(api.set_max_lease("admin", "student", 3))
    sid = ok(api.create_slice("student", "s"))["slice_id"]
    end_lease(db, sid)
    ended_at = db.get_slice(sid)["lease_end"]
    good, msg = api.set_lease("student", sid, 1)
    assert not good and msg == (f"The lease of slice {sid} ended at {ended_at}: it cannot be renewed any more; "
                                "ask an admin to extend it")
    assert db.get_slice(sid)["lease_end"] == ended_at
    ok(api.set_lease("admin", sid, 30))  # beyond the owner's maximum: an admin's decision
    assert near(db.get_slice(sid)["lease_end"], time.time() + 30 * DAY)
    assert ok(api.set_lease("admin", sid, "none")).endswith("none (the slice does not expire)")
    assert "lease_end" not in db.get_slice(sid)
    assert api.set_lease("admin", sid, 366) == (False, "A lease is 1 to 365 days (or none)")


def test_without_a_maximum_the_owner_may_set_or_clear_a_lease(tmp_path):
    api, db, _ex = make_api(tmp_path)
    sid = ok(api.create_slice("student", "s"))["slice_id"]
    ok(api.set_lease("student", sid, 10))
    assert near(db.get_slice(sid)["lease_end"], time.time() + 10 * DAY)
    ok(api.set_lease("student", sid, None))
    assert "lease_end" not in db.get_slice(sid)
    assert api.set_lease("student", sid, 400) == (False, "A lease of 400 days is beyond your maximum: 1 to 365 days "
                                                          "from now")


def test_the_maximum_is_checked_and_kept_out_of_reach_of_students(tmp_path):
    api, db, _ex = make_api(tmp_path)
    for bad in (0.5, "7d", -3, 366, True):
        good, msg = api.set_max_lease("admin", "student", bad)
        assert not good and "from 1 to 365" in msg, bad
    assert "no maximum" in ok(api.set_max_lease("admin", "student", "none"))
    assert db.get_user("student")["max_lease_days"] is None
    assert api.set_max_lease("student", "student", 365) == (False, "Only an admin can do this")


def test_warnings_at_login_name_the_users_own_leases_that_end_within_a_day_or_ended(tmp_path):
    api, db, _ex = make_api(tmp_path)
    soon = ok(api.create_slice("student", "soon"))["slice_id"]
    later = ok(api.create_slice("student", "later"))["slice_id"]
    gone = ok(api.create_slice("student", "gone"))["slice_id"]
    other = ok(api.create_slice("admin", "admins"))["slice_id"]
    with db.transaction() as data:
        for sid, t in ((soon, time.time() + 5 * 3600), (later, time.time() + 3 * DAY), (gone, time.time() - 60),
                       (other, time.time() + 60)):
            data["slices"][str(sid)]["lease_end"] = stamp(t)
    rows = ok(api.lease_warnings("student"))
    assert [(r.slice_id, r.ended) for r in rows] == [(soon, False), (gone, True)]
    assert rows[1].delete_at == stamp(parse_stamp(rows[1].lease_end) + 24 * 3600)
    assert [r.slice_id for r in ok(api.lease_warnings("admin"))] == [other]
    assert [r.slice_id for r in ok(api.list_leases("admin"))] == [soon, later, gone, other]
    assert [r.slice_id for r in ok(api.list_leases("student"))] == [soon, later, gone]


# --- an ended lease: no deploy, no start -------------------------------------------------------

def test_a_slice_whose_lease_ended_cannot_be_deployed_or_started(tmp_path):
    api, db, ex = make_api(tmp_path)
    design, _ = build_slice(api, user="student", name="d")
    end_lease(db, design)
    good, msg = api.deploy_slice("student", design)
    assert not good and "ended at" in msg and "it cannot be deployed" in msg
    assert db.get_slice(design)["status"] == "design"
    sid, _ids = running(api, name="r")
    ok(api.stop_vm("student", sid))
    end_lease(db, sid)
    ex.commands.clear()
    good, msg = api.start_vm("admin", sid)
    assert not good and "it cannot be started" in msg and "An admin can extend it" in msg
    assert [c.action for c in ex.commands] == [] and db.get_slice(sid)["status"] == "stopped"


# --- the reaper ----------------------------------------------------------------------------------------

def test_reap_stops_an_expired_slice_then_deletes_it_after_the_grace_period(tmp_path):
    api, db, ex = make_api(tmp_path)
    sid, ids = running(api)
    keep, _ = running(api, name="keep")
    ok(api.set_lease("student", keep, 2))
    end_lease(db, sid)
    ex.commands.clear()
    report = ok(api.reap_leases())
    assert [(o.slice_id, o.action) for o in report] == [(sid, "stopped")]
    assert {(c.action, c.target) for c in ex.commands if c.action == "stop_vm"} == {("stop_vm", i) for i in ids}
    assert all('"execute":"quit"' in c.script for c in ex.commands if c.action == "stop_vm")  # disks kept
    assert db.get_slice(sid)["status"] == "stopped" and db.get_slice(keep)["status"] == "running"
    ex.commands.clear()
    assert ok(api.reap_leases()) == []  # stopped already, within the grace period
    assert ex.commands == []
    report = ok(api.reap_leases(now=time.time() + 24 * 3600))
    assert [(o.slice_id, o.action) for o in report] == [(sid, "deleted")]
    assert db.get_slice(sid) is None and db.get_slice(keep) is not None
    assert db.get_user("student")["slices"] == [keep] and db.get_user("student")["used_vms"] == 2
    assert not [w for w in ex.made() if w[0] == "vm" and w[2] in ids]
    assert ("delete_overlay", "vm1_img.qcow2") in ex.actions()


def test_a_design_slice_past_its_grace_period_is_deleted_and_one_within_it_waits(tmp_path):
    api, db, ex = make_api(tmp_path)
    old, _ = build_slice(api, user="student", name="old")
    new, _ = build_slice(api, user="student", name="new")
    end_lease(db, old, ago=25 * 3600)
    end_lease(db, new, ago=3600)
    report = ok(api.reap_leases())
    assert [(o.slice_id, o.action) for o in report] == [(old, "deleted")]
    assert db.get_slice(old) is None and db.get_slice(new)["status"] == "design"


def test_the_grace_period_is_the_configs(tmp_path):
    api, db, _ex = make_api(tmp_path, config=dict(LAB_LIKE, leases={"grace_hours": 0.5}))
    sid, _ = running(api)
    end_lease(db, sid, ago=45 * 60)
    assert [o.action for o in ok(api.reap_leases())] == ["deleted"]


def test_a_delete_that_fails_keeps_the_slice_for_the_next_run(tmp_path):
    api, db, ex = make_api(tmp_path)
    sid, ids = running(api)
    end_lease(db, sid, ago=30 * 3600)
    ex.down_hosts.add(WORKERS[0])
    report = ok(api.reap_leases())
    assert [o.action for o in report] == ["failed"] and "Delete incomplete" in report[0].message
    assert db.get_slice(sid) is not None
    ex.down_hosts.clear()
    assert [o.action for o in ok(api.reap_leases())] == ["deleted"]
    assert db.get_slice(sid) is None


def test_a_slice_busy_in_a_live_session_is_left_for_the_next_run(tmp_path):
    api, db, _ex = make_api(tmp_path)
    sid, _ = running(api)
    end_lease(db, sid)
    with db.transaction() as data:
        s = data["slices"][str(sid)]
        s["busy"], s["status"] = sessions.marker("running"), "snapshotting"
    assert [o.action for o in ok(api.reap_leases())] == ["busy"]
    assert db.get_slice(sid)["status"] == "snapshotting"


@pytest.mark.parametrize("ago", [3600, 30 * 3600])  # to be stopped; to be deleted
def test_a_lease_extended_while_the_reaper_runs_is_not_reaped(tmp_path, ago):
    api, db, ex = make_api(tmp_path)
    sid, ids = running(api)
    end_lease(db, sid, ago=ago)
    ex.commands.clear()

    def extended_first(real):
        def act(actor, slice_id, progress, guard):
            ok(api.set_lease("admin", slice_id, 10))  # an admin extends it at this very moment
            return real(actor, slice_id, progress, guard)
        return act
    report = ok(api.leases.reap(
        extended_first(lambda a, i, p, g: api.operations.stop(a, i, None, p, guard=g)),
        extended_first(lambda a, i, p, g: api.lifecycle.delete(a, i, p, guard=g).pair())))
    assert [o.action for o in report] == ["kept"], report
    assert report[0].message.startswith(f"Kept: the lease of slice {sid} was changed meanwhile")
    assert db.get_slice(sid)["status"] == "running"
    assert not [c for c in ex.commands if c.action in ("stop_vm", "delete_overlay")]


def test_the_reaper_is_not_a_verb_a_menu_may_call():
    from service import methods

    assert "reap_leases" not in methods.METHODS
    assert {"set_lease", "list_leases", "lease_warnings", "save_snapshot", "restore_snapshot", "delete_snapshot",
            "list_snapshots", "set_disk_quota", "set_max_lease"} <= set(methods.METHODS)


# --- the stored shapes -----------------------------------------------------------------------------------

@pytest.mark.parametrize("where,value,says", [
    ("slice", {"lease_end": "tomorrow"}, "slices.1000.lease_end must be a time (YYYY-mm-dd HH:MM:SS) or null"),
    ("user", {"max_lease_days": 0}, "users.student.max_lease_days must be a whole number of days (1-365) or null"),
    ("user", {"disk_quota_mib": "lots"}, "users.student.disk_quota_mib must be a whole number of MiB"),
    ("vm", {"snapshots": [{"name": "a/b"}]}, "slices.1000.vms[0].snapshots[0].name must be a snapshot name"),
    ("vm", {"snapshots": [{"name": "ok", "size_bytes": -1}]}, "slices.1000.vms[0].snapshots[0].size_bytes must be"),
])
def test_a_hand_edit_with_a_bad_new_field_is_refused_with_its_key(tmp_path, where, value, says):
    api, db, _ex = make_api(tmp_path)
    build_slice(api, user="student", name="s", vms=(("vm1", 0, False),))
    raw = yaml.safe_load(open(db.path).read())
    s = raw["slices"]["1000"]
    {"slice": s, "user": raw["users"]["student"], "vm": s["vms"][0]}[where].update(value)
    with open(db.path, "w") as f:
        yaml.safe_dump(raw, f)
    with pytest.raises(DatabaseError) as e:
        Database(db.path).load()
    assert says in str(e.value)


def test_the_stamps_round_trip_and_odd_ones_are_no_lease():
    t = time.mktime(time.strptime("2025-03-09 10:00:00", "%Y-%m-%d %H:%M:%S"))
    assert stamp(t) == "2025-03-09 10:00:00" and parse_stamp(stamp(t)) == t
    assert parse_stamp(None) is None and parse_stamp("soon") is None
    assert leases.left_text(3 * DAY + 4 * 3600 + 59) == "3d 4h" and leases.left_text(-(5 * 3600 + 7 * 60)) == "5h 07m"


# --- rosters and the overview ----------------------------------------------------------------------

RING = """\
name: ring3
vms:
  - {name: vm1, flavor: cirros, data_interfaces: 1}
  - {name: vm2, flavor: cirros, data_interfaces: 1}
links:
  - {vm1: vm1, if1: eth1, vm2: vm2, if2: eth1}
"""


def test_a_rosters_columns_give_the_new_accounts_and_their_slices_a_quota_and_a_lease(tmp_path):
    from menu.classes import render_overview

    api, db, _ex = make_api(tmp_path)
    text = "username,disk_quota_mib,max_lease_days\nana,300,14\nbob,,\n"
    report = ok(api.import_roster("admin", text, "csv", RING, None, str(tmp_path / "pw")))
    assert [o.slice for o in report.students] == ["made", "made"]
    ana, bob = db.get_user("ana"), db.get_user("bob")
    assert ana["disk_quota_mib"] == 300 and ana["max_lease_days"] == 14
    assert "disk_quota_mib" not in bob and "max_lease_days" not in bob  # the config's quota, no maximum
    sa, sb = (db.get_slice(u["slices"][0]) for u in (ana, bob))
    assert near(sa["lease_end"], time.time() + 14 * DAY) and "lease_end" not in sb
    rows = ok(api.overview("admin"))
    lines = render_overview(rows, WORKERS)
    assert lines[0].split()[-1] == "Lease"
    by_owner = {line.split()[1]: line for line in lines[2:4]}
    assert by_owner["ana"].endswith(("  13d 23h", "  14d 0h")) and by_owner["bob"].endswith("  -"), lines
    end_lease(db, sa["slice_id"])
    lines = render_overview(ok(api.overview("admin")), WORKERS)
    assert {line.split()[1]: line.split()[-1] for line in lines[2:4]}["ana"] == "ENDED"


def test_the_overview_has_no_lease_column_while_no_slice_has_a_lease(tmp_path):
    from menu.classes import render_overview

    api, _db, _ex = make_api(tmp_path)
    build_slice(api, user="student", name="s1", vms=(("vm1", 1, False),))
    lines = render_overview(ok(api.overview("admin")), WORKERS)
    assert "Lease" not in lines[0]
