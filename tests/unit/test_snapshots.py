"""Disk snapshots with a FakeExecutor: validation, ownership, the disk quota, the steps of save/restore/delete,
the ``snapshot`` kind (status, orphans), and the host scripts themselves run in a real shell on files."""
from __future__ import annotations

import atexit
import os
import pathlib
import shutil
import subprocess
import tempfile

import pytest
from uhelpers import WORKERS, build_slice, make_api, ok

import naming
from hosts import snapshots as builders
from hosts.resources import ClusterView, HostContext, Key
from usecases import reconcile, sessions

MIB = 1024 * 1024
FAKE_BIN = pathlib.Path(tempfile.mkdtemp(prefix="snap-fake-bin-"))
atexit.register(shutil.rmtree, FAKE_BIN, True)
SHELLS = [s for s in ("dash", "bash") if shutil.which(s)]


def deployed(tmp_path, owner="admin", config=None):
    api, db, ex = make_api(tmp_path, config=config)
    sid, ids = build_slice(api, user=owner, vms=(("vm1", 1, False), ("vm2", 1, False)),
                           links=((0, "eth1", 1, "eth1"),))
    ok(api.deploy_slice(owner, sid))
    return api, db, ex, sid, ids


def host_actions(ex) -> list:
    return [(c.action, c.target) for c in ex.commands if c.action not in ("connect", "scan", "leases")]


def save(api, ex, sid, vm_id, name, size=3 * MIB, user="admin"):
    ex.answer("snapshot_save", target=(vm_id, name), out=f"paused\nsize {size}\n", times=1)
    return api.save_snapshot(user, sid, vm_id, name)


# --- validation and ownership ----------------------------------------------------------------

@pytest.mark.parametrize("name", ["a/b", "../etc", "with space", "", "x" * 33, "1starts-with-digit", "a;rm -rf /",
                                  "esc\x1b[31m", "dot.name", None])
def test_a_bad_snapshot_name_is_refused_and_nothing_is_done(tmp_path, name):
    api, db, ex, sid, ids = deployed(tmp_path)
    ex.commands.clear()
    before = db.load()
    for fn in (api.save_snapshot, api.restore_snapshot, api.delete_snapshot):
        good, msg = fn("admin", sid, ids[0], name)
        assert not good and msg.startswith("Invalid snapshot name") and "no '/'" in msg
    assert ex.commands == [] and db.load() == before


def test_another_student_is_refused_on_every_path(tmp_path):
    api, db, ex, sid, ids = deployed(tmp_path)
    ok(save(api, ex, sid, ids[0], "base"))
    ex.commands.clear()
    before = db.load()
    refused = (False, "Slice not found or not authorized")
    assert api.list_snapshots("student", sid) == refused
    for fn in (api.save_snapshot, api.restore_snapshot, api.delete_snapshot):
        assert fn("student", sid, ids[0], "base") == refused
        assert fn("student", sid, ids[0], "other") == refused
    assert api.set_lease("student", sid, 1) == refused
    assert api.list_leases("student", sid) == refused
    assert api.set_disk_quota("student", "student", 10**6) == (False, "Only an admin can do this")
    assert api.set_max_lease("student", "student", None) == (False, "Only an admin can do this")
    assert ex.commands == [] and db.load() == before


def test_snapshots_need_a_deployed_slice_and_a_vm_of_it(tmp_path):
    api, _db, ex, _sid, _ids = deployed(tmp_path)
    design, dids = build_slice(api, name="d1")
    ex.commands.clear()
    good, msg = api.save_snapshot("admin", design, dids[0], "base")
    assert not good and "snapshots are of the VMs of a deployed slice" in msg
    good, msg = api.save_snapshot("admin", _sid, 424242, "base")
    assert (good, msg) == (False, f"VM 424242 is not in slice {_sid}")
    assert api.save_snapshot("admin", _sid, "x1", "base") == (False, "VM ID must be a number")
    assert host_actions(ex) == []


# --- save -----------------------------------------------------------------------------------

def test_save_pauses_a_running_vm_copies_its_disk_and_records_the_size(tmp_path):
    api, db, ex, sid, ids = deployed(tmp_path)
    ex.commands.clear()
    good, msg = save(api, ex, sid, ids[0], "base", size=5 * MIB)
    assert good and msg == f"Snapshot base of VM {ids[0]} (vm1) saved: 5.0 MiB; the VM was paused for the copy " \
                           "and runs on"
    assert host_actions(ex) == [("snapshot_save", (ids[0], "base"))]  # no stop, no start: the guest runs on
    s = db.get_slice(sid)
    assert s["status"] == "running" and "busy" not in s
    snap = s["vms"][0]["snapshots"]
    assert [(x["name"], x["size_bytes"]) for x in snap] == [("base", 5 * MIB)]
    assert len(snap[0]["created_at"]) == 19
    listing = ok(api.list_snapshots("admin", sid))
    assert listing.used_bytes == 5 * MIB and listing.quota_mib == 1024
    assert [v.snapshots[0].name for v in listing.vms if v.snapshots] == ["base"]


def test_the_save_script_gets_what_the_owners_quota_leaves_and_the_admin_pays_nothing(tmp_path):
    api, db, ex, sid, ids = deployed(tmp_path, owner="student")
    ok(api.set_disk_quota("admin", "student", 10))
    ok(save(api, ex, sid, ids[0], "one", size=4 * MIB, user="student"))
    ex.commands.clear()
    ok(save(api, ex, sid, ids[1], "two", size=1 * MIB, user="admin"))  # an admin saves a student's VM
    cmd = next(c for c in ex.commands if c.action == "snapshot_save")
    assert f'if [ "$size" -gt {6 * MIB} ]; then echo "need $size"; exit {builders.NO_ROOM}; fi' in cmd.script
    assert ok(api.get_quota("student"))["disk_used_bytes"] == 5 * MIB
    assert ok(api.get_quota("admin"))["disk_used_bytes"] == 0


def test_a_full_quota_is_refused_before_any_host_command_and_a_copy_too_big_after_measuring(tmp_path):
    api, db, ex, sid, ids = deployed(tmp_path, owner="student")
    ok(api.set_disk_quota("admin", "student", 4))
    ok(save(api, ex, sid, ids[0], "one", size=4 * MIB, user="student"))
    ex.commands.clear()
    before = db.load()
    good, msg = api.save_snapshot("student", sid, ids[1], "two")
    assert not good and msg == ("Not saved: the disk quota for snapshots of student is full (4.0 MiB of 4 MiB used): "
                                "delete snapshots that are no longer needed")
    assert ex.commands == [] and db.load() == before
    ok(api.set_disk_quota("admin", "student", 5))
    ex.fail("snapshot_save", status=builders.NO_ROOM, err="")
    ex.answer("snapshot_save", status=builders.NO_ROOM, out=f"need {3 * MIB}\n")
    good, msg = api.save_snapshot("student", sid, ids[1], "two")
    assert not good and msg == ("Not saved: the snapshot needs 3.0 MiB and the disk quota for snapshots of student "
                                "leaves 1.0 MiB: delete snapshots that are no longer needed")
    s = db.get_slice(sid)
    assert [x["name"] for x in s["vms"][1]["snapshots"]] == [] and s["status"] == "running" and "busy" not in s


def test_the_disk_quota_cannot_go_below_what_snapshots_hold_and_takes_whole_mib(tmp_path):
    api, _db, ex, sid, ids = deployed(tmp_path, owner="student")
    ok(save(api, ex, sid, ids[0], "one", size=7 * MIB, user="student"))
    good, msg = api.set_disk_quota("admin", "student", 6)
    assert not good and "already hold 7.0 MiB" in msg
    for bad in (-1, "10MB", "1.5", 2**40):
        good, msg = api.set_disk_quota("admin", "student", bad)
        assert not good and msg.startswith("The disk quota must be a whole number of MiB"), bad
    assert api.set_disk_quota("admin", "nobody", 5) == (False, "User not found")
    assert ok(api.set_disk_quota("admin", "student", 7)) == "Disk quota for snapshots of student set to 7 MiB"


def test_a_taken_name_and_too_many_snapshots_are_refused(tmp_path):
    api, _db, ex, sid, ids = deployed(tmp_path, config=dict(__import__("fakes").LAB_LIKE,
                                                           snapshots={"max_per_vm": 2}))
    ok(save(api, ex, sid, ids[0], "a"))
    good, msg = api.save_snapshot("admin", sid, ids[0], "a")
    assert not good and "already has a snapshot a" in msg
    ok(save(api, ex, sid, ids[0], "b"))
    good, msg = api.save_snapshot("admin", sid, ids[0], "c")
    assert not good and "already has 2 snapshots (at most 2)" in msg


def test_a_failed_save_records_nothing_and_says_the_vm_is_as_it_was(tmp_path):
    api, db, ex, sid, ids = deployed(tmp_path)
    ex.fail("snapshot_save", err="cp: No space left on device")
    good, msg = api.save_snapshot("admin", sid, ids[0], "base")
    assert not good and "No space left on device" in msg and "Nothing was made" in msg
    s = db.get_slice(sid)
    assert s["vms"][0]["snapshots"] == [] and s["status"] == "running" and "busy" not in s


def test_an_unreachable_worker_changes_nothing(tmp_path):
    api, db, ex, sid, ids = deployed(tmp_path)
    ok(save(api, ex, sid, ids[0], "base"))
    ex.down_hosts.add(WORKERS[0])
    vm_before = db.get_slice(sid)["vms"][0]
    for fn in (api.save_snapshot, api.restore_snapshot, api.delete_snapshot):
        good, msg = fn("admin", sid, ids[0], "base" if fn != api.save_snapshot else "other")
        assert not good and "No route to host" in msg
    s = db.get_slice(sid)
    assert s["vms"][0] == vm_before and s["status"] == "running"


# --- restore and delete -------------------------------------------------------------------------

def test_restore_stops_the_vm_replaces_its_disk_and_starts_it_again(tmp_path):
    api, db, ex, sid, ids = deployed(tmp_path)
    ok(save(api, ex, sid, ids[0], "base"))
    ex.commands.clear()
    good, msg = api.restore_snapshot("admin", sid, ids[0], "base")
    assert good and msg == f"VM {ids[0]} (vm1) restored from snapshot base; it is running again"
    assert host_actions(ex) == [("stop_vm", ids[0]), ("snapshot_restore", (ids[0], "base")), ("start_vm", ids[0])]
    stop = next(c for c in ex.commands if c.action == "stop_vm")
    assert '"execute":"quit"' in stop.script  # through QMP, as option 14 does: the guest's writes reach the disk
    s = db.get_slice(sid)
    assert s["status"] == "running" and s["vms"][0]["status"] == "running" and s["vms"][0]["pid"] == "4242"
    assert [x["name"] for x in s["vms"][0]["snapshots"]] == ["base"]  # a restore keeps the snapshot


def test_a_stopped_vm_stays_stopped_and_a_failed_restore_still_starts_a_running_vm_again(tmp_path):
    api, db, ex, sid, ids = deployed(tmp_path)
    ok(save(api, ex, sid, ids[0], "base"))
    ok(api.stop_vm("admin", sid, ids[0]))
    ex.commands.clear()
    good, msg = api.restore_snapshot("admin", sid, ids[0], "base")
    assert good and msg.endswith("; it stays stopped")
    assert ("start_vm", ids[0]) not in host_actions(ex)
    assert db.get_slice(sid)["vms"][0]["status"] == "stopped" and db.get_slice(sid)["status"] == "running"
    ok(api.start_vm("admin", sid, ids[0]))
    ex.commands.clear()
    ex.fail("snapshot_restore", status=builders.NO_SNAPSHOT, err="snapshot base of VM 1001 is missing on its worker")
    good, msg = api.restore_snapshot("admin", sid, ids[0], "base")
    assert not good and "missing on its worker" in msg and "is as it was; it is running again" in msg
    assert host_actions(ex)[-1] == ("start_vm", ids[0])
    assert db.get_slice(sid)["vms"][0]["status"] == "running"


class Killed(BaseException):
    """What SIGKILL does to a use case: it stops there, nothing after it runs."""


def kill_restore_at(api, db, sid, vm_id, step: int) -> None:
    """A restore whose session is killed as it hands out host command ``step`` (0: the stop, 2: the start)."""
    real, calls = api.snapshots._run, []

    def run(cmd, progress, t0=None):
        calls.append(cmd.action)
        if len(calls) > step:
            raise Killed
        return real(cmd, progress, t0)
    api.snapshots._run = run
    with pytest.raises(Killed):
        api.restore_snapshot("admin", sid, vm_id, "base")
    del api.snapshots._run
    s = db.get_slice(sid)
    assert s["status"] == "restoring" and s["busy"]["vms"] == [vm_id] and s["busy"]["previous"] == "running"
    with db.transaction() as data:  # the marking session is gone: its pid names no process
        data["slices"][str(sid)]["busy"].update({"pid": 999999, "host": os.uname().nodename, "start": "1"})


@pytest.mark.parametrize("step", [0, 2])
def test_a_killed_restore_ends_as_a_stop_its_vm_stopped_for_the_owner_to_start(tmp_path, step):
    api, db, ex, sid, ids = deployed(tmp_path)
    ok(save(api, ex, sid, ids[0], "base"))
    kill_restore_at(api, db, sid, ids[0], step)
    assert (("vm", WORKERS[0], ids[0]) in ex.world) == (step == 0)  # killed before the stop: it still runs
    ex.commands.clear()
    ok(api.list_snapshots("admin", sid))  # the next reader of the slice ends the dead restore
    s = db.get_slice(sid)
    assert s["status"] == "running" and "busy" not in s
    assert [vm["status"] for vm in s["vms"]] == ["stopped", "running"] and s["vms"][0]["pid"] is None
    assert [c.target for c in ex.commands if c.action == "stop_vm"] == [ids[0]]  # that VM only, through QMP
    assert ("vm", WORKERS[0], ids[0]) not in ex.world and ("vm", WORKERS[1], ids[1]) in ex.world
    assert [x["name"] for x in s["vms"][0]["snapshots"]] == ["base"]
    ok(api.start_vm("admin", sid, ids[0]))
    assert db.get_slice(sid)["vms"][0]["status"] == "running"


def test_restore_of_an_unknown_snapshot_and_delete(tmp_path):
    api, db, ex, sid, ids = deployed(tmp_path)
    assert api.restore_snapshot("admin", sid, ids[0], "nope") == (False, f"VM {ids[0]} (vm1) has no snapshot nope")
    ok(save(api, ex, sid, ids[0], "base"))
    ex.commands.clear()
    assert ok(api.delete_snapshot("admin", sid, ids[0], "base")) == f"Snapshot base of VM {ids[0]} (vm1) deleted"
    assert host_actions(ex) == [("snapshot_delete", (ids[0], "base"))]
    assert db.get_slice(sid)["vms"][0]["snapshots"] == []
    assert api.delete_snapshot("admin", sid, ids[0], "base") == (False, f"VM {ids[0]} (vm1) has no snapshot base")


def test_a_slice_busy_in_another_session_is_refused(tmp_path):
    api, db, ex, sid, ids = deployed(tmp_path)
    with db.transaction() as data:
        s = data["slices"][str(sid)]
        s["busy"], s["status"] = sessions.marker("running"), "stopping"  # this live process marked it
    good, msg = api.save_snapshot("admin", sid, ids[0], "base")
    assert (good, msg) == (False, "Slice is stopping in another session")


def test_deleting_the_slice_deletes_its_snapshots(tmp_path):
    api, db, ex, sid, ids = deployed(tmp_path)
    ok(save(api, ex, sid, ids[0], "base"))
    ex.commands.clear()
    ok(api.delete_slice("admin", sid))
    purges = [c for c in ex.commands if c.action == "snapshot_purge"]
    assert [(c.host, c.target) for c in purges] == [(WORKERS[0], (ids[0],))]  # the VM that had snapshots
    assert purges[0].sudo is False and '"$HOME"/vm_images/vm' in purges[0].script


# --- the kind: status and orphans ------------------------------------------------------------------

def test_the_kind_parses_its_scan_and_says_what_is_owned_expected_and_orphaned(tmp_path):
    api, db, ex, sid, ids = deployed(tmp_path)
    ok(save(api, ex, sid, ids[0], "base", size=1234))
    kind = builders.Snapshot()
    found = [kind.parse(WORKERS[0], line.split()[1:]) for line in (
        f"snapshot vm{ids[0]}.base.snap.qcow2 1234", f"snapshot vm{ids[0]}.old.snap.qcow2 99",
        f"snapshot vm{ids[0]}.old.snap.qcow2.part -", "snapshot vm1.x;y.snap.qcow2 5", "snapshot thesis.qcow2 5")]
    assert found[3] is None and found[4] is None
    keys = [f.key for f in found[:3]]
    assert [k.name for k in keys] == ["base", "old", "old.part"] and found[0].detail == "1234"
    view = reconcile.cluster_view(api.config, db.load())
    assert set(kind.owned(view)) == {keys[0]}
    assert kind.expected(view) == {keys[0]: "1234"}
    assert [o.name for o in reconcile.orphans_of(found[:3], reconcile.owned_keys(view))] == \
        [f"snapshot old of VM {ids[0]}", f"unfinished snapshot old of VM {ids[0]}"]
    ctx = HostContext(api.config, {WORKERS[0]: "/home/ubuntu"})
    assert kind.remove(ctx, WORKERS[0], keys[1:]) == [
        f"rm -f /home/ubuntu/vm_images/vm{ids[0]}.old.snap.qcow2 /home/ubuntu/vm_images/vm{ids[0]}.old.snap.qcow2.part"
        f" /home/ubuntu/vm_images/vm{ids[0]}.old.snap.qcow2.owner",
        f"rm -f /home/ubuntu/vm_images/vm{ids[0]}.old.snap.qcow2.part; [ -e /home/ubuntu/vm_images/vm{ids[0]}.old"
        f".snap.qcow2 ] || rm -f /home/ubuntu/vm_images/vm{ids[0]}.old.snap.qcow2.owner"]


def test_a_save_under_way_in_a_live_session_is_owned(tmp_path):
    api, db, ex, sid, ids = deployed(tmp_path)
    seen = {}

    def look(_cmd):
        view = reconcile.cluster_view(api.config, db.load())
        seen["owned"] = {k.name for k in builders.Snapshot().owned(view)}
    ex.hooks["snapshot_save"] = look
    ok(save(api, ex, sid, ids[0], "wip"))
    assert seen["owned"] == {"wip", "wip.part"}  # the orphan cleanup leaves the copy being made alone


def test_status_shows_a_missing_snapshot_and_repair_says_it_cannot_make_it_again(tmp_path):
    from test_operations import deployed as deployed_healthy
    from test_operations import healthy_scans

    api, db, ex, sid, ids = deployed_healthy(tmp_path)
    ok(save(api, ex, sid, ids[0], "base", size=77))
    healthy_scans(ex, ids)  # everything else is in place; the snapshot's file is not on the worker
    report = ok(api.slice_status("admin", sid))
    assert [(c.label, c.expected, c.found) for c in report.problems] == [(f"snapshot base of VM {ids[0]}", "77", None)]
    ex.commands.clear()
    good, outcome = api.repair_slice("admin", sid)
    assert not good and outcome.message == (f"Repair cannot make lost snapshots again (snapshot base of VM {ids[0]}): "
                                            "delete them (option 19)")
    assert host_actions(ex) == []
    ok(api.delete_snapshot("admin", sid, ids[0], "base"))
    assert ok(api.slice_status("admin", sid)).problems == []


def test_the_scan_is_part_of_every_workers_scan_and_never_of_the_nodes():
    from fakes import FakeExecutor

    config = FakeExecutor().config
    ctx = HostContext(config, {h: "/home/ubuntu" for h in config.hosts})
    assert "snap.qcow2.owner" in reconcile.scan_command(ctx, config.workers[0]).script
    assert "snap.qcow2.owner" not in reconcile.scan_command(ctx, config.network_node).script
    assert ClusterView(config, []).slices == []


# --- the scripts, run in a real shell on real files ------------------------------------------------

def vm_in(folder) -> dict:
    return {"vm_id": 1001, "name": "vm1", "worker_ip": "w", "qcow_image": f"{folder}/vm1_img.qcow2"}


def sh(cmd, shell="sh", qemu_runs: bool = False) -> subprocess.CompletedProcess:
    """Run the script with a ``pgrep`` that says whether the VM's QEMU runs: never this machine's own
    processes (a lab on it may run a VM with the same ID)."""
    bindir = FAKE_BIN / ("running" if qemu_runs else "none")
    if not bindir.is_dir():
        bindir.mkdir(parents=True)
        (bindir / "pgrep").write_text(f"#!/bin/sh\nexit {0 if qemu_runs else 1}\n")
        (bindir / "pgrep").chmod(0o755)
    env = dict(os.environ, PATH=f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}")
    return subprocess.run([shell, "-c", cmd.script], capture_output=True, text=True, timeout=30, env=env)


@pytest.mark.parametrize("shell", SHELLS)
def test_the_scripts_work_on_files(tmp_path, shell):
    folder = tmp_path / "vm_images"
    folder.mkdir()
    disk = folder / "vm1_img.qcow2"
    disk.write_bytes(b"Q" * 5000)
    vm = vm_in(folder)
    res = sh(builders.save_command(vm, "/nohome", "base", 4999), shell)
    assert res.returncode == builders.NO_ROOM and res.stdout.split() == ["need", "5000"]
    assert sorted(os.listdir(folder)) == ["vm1_img.qcow2"]  # a refusal makes nothing
    res = sh(builders.save_command(vm, "/nohome", "base", 5000), shell)
    assert res.returncode == 0 and res.stdout.split() == ["size", "5000"], res.stderr
    snap = folder / "vm1001.base.snap.qcow2"
    assert snap.read_bytes() == disk.read_bytes()
    for made in (snap, folder / "vm1001.base.snap.qcow2.owner"):  # a student's data: like the disk, 0600
        assert os.stat(made).st_mode & 0o777 == 0o600, made
    assert (folder / "vm1001.base.snap.qcow2.owner").read_text() == "cloud-repositorio vm 1001 snapshot base\n"
    res = sh(builders.save_command(vm, "/nohome", "base", 10**9), shell)
    assert res.returncode == builders.SNAPSHOT_EXISTS and "already has a snapshot base" in res.stderr
    disk.write_bytes(b"changed")
    res = sh(builders.restore_command(vm, "/nohome", "base"), shell)
    assert res.returncode == 0, res.stderr
    assert disk.read_bytes() == b"Q" * 5000 and not (folder / "vm1001.base.snap.qcow2.part").exists()
    assert os.stat(disk).st_mode & 0o777 == 0o600
    res = sh(builders.restore_command(vm, "/nohome", "gone"), shell)
    assert res.returncode == builders.NO_SNAPSHOT
    disk.write_bytes(b"changed")
    res = sh(builders.restore_command(vm, "/nohome", "base"), shell, qemu_runs=True)  # never under a live QEMU
    assert res.returncode == builders.VM_RUNNING and "still running" in res.stderr
    assert disk.read_bytes() == b"changed" and not (folder / "vm1001.base.snap.qcow2.part").exists()
    for _ in range(2):
        assert sh(builders.delete_command(vm, "/nohome", "base"), shell).returncode == 0
    assert sorted(os.listdir(folder)) == ["vm1_img.qcow2"]
    assert sh(builders.save_command(vm, "/nohome", "two", 10**9), shell).returncode == 0
    (folder / "vm10010.x.snap.qcow2.owner").write_text("another VM's")
    for _ in range(2):
        assert sh(builders.purge_command("w", str(folder), [1001]), shell).returncode == 0
    assert sorted(os.listdir(folder)) == ["vm10010.x.snap.qcow2.owner", "vm1_img.qcow2"]


@pytest.mark.parametrize("shell", SHELLS)
def test_a_failed_copy_leaves_no_part_file_and_no_marker(tmp_path, shell):
    folder = tmp_path / "vm_images"
    folder.mkdir()
    vm = vm_in(folder)
    res = sh(builders.save_command(vm, "/nohome", "base", 10**9), shell)
    assert res.returncode == builders.DISK_MISSING and os.listdir(folder) == []
    (folder / "vm1_img.qcow2").write_bytes(b"x")
    os.chmod(folder / "vm1_img.qcow2", 0)
    if os.geteuid() != 0:  # root reads it anyway
        res = sh(builders.save_command(vm, "/nohome", "base", 10**9), shell)
        assert res.returncode != 0 and sorted(os.listdir(folder)) == ["vm1_img.qcow2"]


@pytest.mark.parametrize("shell", SHELLS)
def test_every_snapshot_script_and_the_scan_are_valid_shell(shell):
    vm = vm_in("/home/ubuntu/vm_images")
    cmds = [builders.save_command(vm, "/home/ubuntu", "b", 1), builders.restore_command(vm, "/home/ubuntu", "b"),
            builders.delete_command(vm, "/home/ubuntu", "b"), builders.purge_command("w", "~/vm_images", [1, 2])]
    ctx = HostContext(__import__("fakes").FakeExecutor().config, {})
    scripts = [c.script for c in cmds] + [builders.Snapshot().scan(ctx, "w")] + \
        builders.Snapshot().remove(ctx, "w", [Key("snapshot", "w", vm_id=1, name="b"),
                                              Key("snapshot", "w", vm_id=1, name="b.part")])
    for script in scripts:
        res = subprocess.run([shell, "-n", "-c", script], capture_output=True, text=True)
        assert res.returncode == 0, (script, res.stderr)


def test_snapshot_names_follow_the_name_rule():
    assert naming.snapshot_file(1001, "base", "~/vm_images") == "~/vm_images/vm1001.base.snap.qcow2"
    for bad in ("a/b", "a.b", "", "x" * 33):
        with pytest.raises(ValueError):
            naming.snapshot_file(1001, bad)
    assert naming.SNAPSHOT_RE.fullmatch("vm1001.base.snap.qcow2").groups() == ("1001", "base")
