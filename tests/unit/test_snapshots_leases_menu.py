"""Option 19 (snapshots and leases), the login warning, option 11's new choices and the script-mode commands,
as a person and a script use them: the real cli.py in a terminal (embedded and through a service), no host."""
from __future__ import annotations

import time

from test_classes_commands import data, run
from test_classes_commands import site as cmd_site  # noqa: F401 - a fixture
from test_menu_offline import admin_menu, seed_api, site, spawn  # noqa: F401 - fixtures

from usecases.leases import stamp


def seed_running(site, owner="student", max_days=None) -> tuple:  # noqa: F811
    api = seed_api(site)
    if max_days is not None:
        assert api.set_max_lease("admin", owner, max_days)[0]
    ok, s = api.create_slice(owner, "lab1")
    assert ok, s
    vms = [api.add_vm_to_slice(owner, s["slice_id"], f"vm{i}", "cirros", 1, False)[1] for i in (1, 2)]
    ok, msg = api.deploy_slice(owner, s["slice_id"])
    assert ok, msg
    return s["slice_id"], [vm["vm_id"] for vm in vms]


def test_a_lease_ending_within_a_day_is_shown_at_login_and_option_19_lists_the_slice(spawn, site):  # noqa: F811
    sid, ids = seed_running(site, max_days=1)
    m = spawn()
    screen = m.login("student", "student")
    assert f"The lease of slice {sid} (lab1) ends at " in screen and "renew it with option 19." in screen
    screen = m.send("19", "Slice ID: ")
    screen = m.send(str(sid), "Choice (1-4): ")
    assert f"Slice {sid} (lab1) [running], owner student" in screen
    assert "Lease: ends " in screen and "renewable up to 1 days" in screen
    assert "Snapshot disk quota of student: 0.0 MiB of 1024 MiB used (1024.0 MiB left)" in screen
    assert f"VM {ids[0]} vm1 [running]: no snapshots" in screen
    with site.unchanged():
        m.send("1", "VM ID: ")
        m.send(str(ids[0]), "Snapshot name: ")
        screen = m.send("../../etc/passwd")
        assert "Invalid snapshot name" in screen and "no '/'" in screen
        m.send("19", "Slice ID: ")
        m.send(str(sid), "Choice (1-4): ")
        m.send("4", "New lease in days from now (1-1): ")
        assert "beyond your maximum: 1 to 1 days" in m.send("9")
        m.send("19", "Slice ID: ")
        m.send(str(sid), "Choice (1-4): ")
        m.send("2", "VM ID: ")
        m.send(str(ids[0]), "Snapshot name: ")
        m.send("base", "(y/n): ")
        assert f"VM {ids[0]} (vm1) has no snapshot base" in m.send("y")
    m.exit()


def test_an_ended_lease_says_the_slice_is_stopped_and_when_it_goes(spawn, site):  # noqa: F811
    sid, _ids = seed_running(site, max_days=2)
    api = seed_api(site)
    with api.db.transaction() as d:
        d["slices"][str(sid)]["lease_end"] = stamp(time.time() - 60)
    m = spawn()
    screen = m.login("student", "student")
    assert f"The lease of slice {sid} (lab1) ended at " in screen
    assert "the manager stops its VMs and deletes it at" in screen
    m.exit()


def test_another_student_cannot_see_or_touch_a_slice_in_option_19(spawn, site):  # noqa: F811
    sid, ids = seed_running(site, owner="admin")
    m = spawn()
    m.login("student", "student")
    with site.unchanged():
        m.send("19", "Slice ID: ")
        assert "Slice not found or not authorized" in m.send(str(sid))
    m.exit()


def test_the_admin_sets_a_disk_quota_and_a_maximum_lease_in_option_11(spawn, site):  # noqa: F811
    m = admin_menu(spawn)
    screen = m.send("11", "Choice (1-5): ")
    assert "4. Set disk quota for snapshots" in screen and "5. Set maximum lease" in screen
    assert "snapshots 0.0/1024 MiB  max lease: none" in screen
    m.send("4", "Username: ")
    m.send("student", "Disk quota for snapshots (MiB): ")
    assert "Disk quota for snapshots of student set to 300 MiB" in m.send("300")
    m.send("11", "Choice (1-5): ")
    m.send("5", "Username: ")
    m.send("student", "Maximum lease in days (1-365, or none): ")
    assert "Maximum lease of student set to 14 days" in m.send("14")
    m.send("11", "Choice (1-5): ")
    m.send("5", "Username: ")
    m.send("student", "Maximum lease in days (1-365, or none): ")
    assert "from 1 to 365, or none" in m.send("400")
    user = site.data()["users"]["student"]
    assert user["disk_quota_mib"] == 300 and user["max_lease_days"] == 14
    m.exit()


# --- script mode ---------------------------------------------------------------------------------

def test_script_mode_snapshot_and_lease_commands(cmd_site):  # noqa: F811
    proc = run(cmd_site, "slice", "template", "linear", "2", "--owner", "student", "--name", "pair", fake=True)
    assert proc.returncode == 0, proc.stderr
    proc = run(cmd_site, "snapshot", "list", "1000", user="student")
    assert proc.returncode == 0 and "VM 1001 vm1 [design]: no snapshots" in proc.stdout
    proc = run(cmd_site, "snapshot", "save", "1000", "1001", "a/b", user="student")
    assert proc.returncode == 1 and proc.stderr.startswith("error: Invalid snapshot name")
    proc = run(cmd_site, "snapshot", "save", "1000", "1001", "base", user="student")
    assert proc.returncode == 1 and "snapshots are of the VMs of a deployed slice" in proc.stderr
    proc = run(cmd_site, "lease", "set", "1000", "3", user="student")
    assert proc.returncode == 0 and proc.stdout.startswith("Lease of slice 1000 (pair): ends ")
    proc = run(cmd_site, "lease", "show", user="student")
    assert proc.returncode == 0 and "Slice 1000 (pair, student) [design]: ends " in proc.stdout
    proc = run(cmd_site, "overview", "--csv")
    header, row = proc.stdout.split("\n")[:2]
    assert header.endswith(",lease_end,lease_seconds_left") and row.split(",")[-2] == data(cmd_site)["slices"][
        "1000"]["lease_end"] and 3 * 86400 - 120 < int(row.split(",")[-1]) <= 3 * 86400


def test_lease_reap_is_an_admins_in_the_embedded_mode(cmd_site):  # noqa: F811
    proc = run(cmd_site, "slice", "template", "linear", "2", "--owner", "student", "--name", "pair", fake=True)
    assert proc.returncode == 0, proc.stderr
    assert run(cmd_site, "lease", "set", "1000", "1", user="student").returncode == 0
    proc = run(cmd_site, "lease", "reap", user="student")
    assert proc.returncode == 1 and "Only an admin can do this" in proc.stderr
    proc = run(cmd_site, "lease", "reap", fake=True)
    assert proc.returncode == 0 and proc.stdout.endswith(": nothing to stop or delete.\n")
    proc = run(cmd_site, "lease", "reap", "--at", "tomorrow", fake=True)
    assert proc.returncode == 1 and "--at must be a time like" in proc.stderr
    later = stamp(time.time() + 86400 + 3 * 3600)  # past the end, within the grace period: nothing runs
    proc = run(cmd_site, "lease", "reap", "--at", later, fake=True)
    assert proc.returncode == 0 and proc.stdout == f"{later}: nothing to stop or delete.\n"
    much_later = stamp(time.time() + 3 * 86400)
    proc = run(cmd_site, "lease", "reap", "--at", much_later, fake=True)
    assert proc.returncode == 0 and "slice 1000 (pair, student), lease ended " in proc.stdout and \
        proc.stdout.rstrip().endswith(": deleted"), proc.stdout
    assert data(cmd_site)["slices"] in ({}, None)
