"""roster.py and instructor.py: class lists read with line numbers, accounts and slices for a class, overview."""
from __future__ import annotations

import os
import signal
import stat
import textwrap

import pytest
from uhelpers import make_api, ok

from menu.classes import render_overview, render_roster_report
from topology import files as tf
from topology import model as t
from topology.model import Design
from usecases import roster
from usecases.instructor import age_of, open_secret_file, overview_rows
from usecases.roster import Student

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def topology_text(name: str = "ring4") -> str:
    with open(os.path.join(ROOT, "topologies", f"{name}.yaml")) as f:
        return f.read()


def class_csv(n: int, quota: int = 6) -> str:
    return "username,quota,password\n" + "".join(f"s{i:02d},{quota},generate\n" for i in range(1, n + 1))


def problems(text: str, fmt: str) -> list[str]:
    students, found = roster.parse_roster(textwrap.dedent(text), fmt)
    assert students == []
    return [str(p) for p in found]


# --- reading rosters ---------------------------------------------------------------------------

def test_csv_roster_with_defaults_comments_and_any_column_order():
    students, found = roster.parse_roster(textwrap.dedent("""\
        # class of 2024
        password, username ,quota

        generate,alice,6
        alice-pw-1,bob,
        ,carol,0
        """), "csv")
    assert found == []
    assert students == [Student("alice", 6, None, 4), Student("bob", 6, "alice-pw-1", 5), Student("carol", 0, None, 6)]


def test_csv_roster_with_only_usernames():
    students, _ = roster.parse_roster("username\ndave\neve\n", "csv")
    assert students == [Student("dave", 6, None, 2), Student("eve", 6, None, 3)]


@pytest.mark.parametrize("text", [
    "students:\n  - {username: alice, quota: 4, password: generate}\n  - {username: bob, password: 'bob-secret'}\n",
    "- {username: alice, quota: 4}\n- username: bob\n  password: bob-secret\n",
])
def test_yaml_roster_as_a_list_or_under_students(text):
    students, found = roster.parse_roster(text, "yaml")
    assert found == []
    assert [(s.username, s.quota, s.password) for s in students] == [("alice", 4, None), ("bob", 6, "bob-secret")]


@pytest.mark.parametrize("text,expected", [
    ("username,quota,password\nalice,6,generate\nBob,6,generate\n",
     ["line 3: invalid username 'Bob': 2-32 characters: a lowercase letter first, then lowercase letters, digits, "
      "'-' or '_'"]),
    ("username,quota\nalice,6\nbob,7\nalice,2\n", ["line 4: alice is listed twice (first on line 2)"]),
    ("username,quota\nalice,lots\nbob,-1\ncarl,1001\n",
     ["line 2: alice: quota must be a whole number from 0 to 1000, not 'lots'",
      "line 3: bob: quota must be a whole number from 0 to 1000, not '-1'",
      "line 4: carl: quota must be a whole number from 0 to 1000, not 1001"]),
    ("username,password\nalice,short\n",
     ["line 2: alice: password must have at least 6 characters (or write generate)"]),
    ("username,quota,email\nalice,6,a@b\n", ["line 1: the header row must name the columns (username, quota, "
                                              "password, disk_quota_mib, max_lease_days): unknown column 'email'"]),
    ("quota,password\n6,generate\n", ["line 1: the header row must have a username column"]),
    ("username,username\na,b\n", ["line 1: the header row names username twice"]),
    ("username,quota\nalice,6,extra\n,4\n", ["line 2: expected 2 values (username, quota), found 3",
                                              "line 3: username is missing"]),
    ("# nothing\n\n", ["line 1: the roster is empty: expected a header row like "
                     "username,quota,password,disk_quota_mib,max_lease_days"]),
    ("username,quota\n", ["line 1: the roster lists no student"]),
    ('username,password\nalice,"never closed\n', ["line 2: not valid CSV: unexpected end of data"]),
])
def test_bad_csv_rows_name_their_line(text, expected):
    assert problems(text, "csv") == expected


@pytest.mark.parametrize("text,expected", [
    ("students:\n  - {username: alice, quota: six}\n",
     ["line 2: alice: quota must be a whole number from 0 to 1000, not 'six'"]),
    ("- {username: alice, quota: 2.5}\n", ["line 1: alice: quota must be a whole number from 0 to 1000, not 2.5"]),
    ("- {username: alice, password: 123456}\n", ["line 1: alice: password must be text (quote it) or generate"]),
    ("- {username: alice, role: admin}\n", ["line 1: unknown key 'role' (allowed: username, quota, password, "
                                              "disk_quota_mib, max_lease_days)"]),
    ("- {username: alice}\n- {username: alice, username: bob}\n",
     ["line 2: username is given twice (first on line 2)"]),
    ("- {username: [a, b]}\n", ["line 1: username must be a single value"]),
    ("- alice\n- {username: bob}\n", ["line 1: a student must be a mapping like {username: alice, quota: 6, "
                                       "password: generate}"]),
    ("- {username: 12}\n", ["line 1: invalid username '12': 2-32 characters: a lowercase letter first, then "
                            "lowercase letters, digits, '-' or '_'"]),
    ("class: [a]\n", ["line 1: the roster must be a list of students, or students: [{username: alice, quota: 6, "
                      "password: generate}]"]),
    ("students: alice\n", ["line 1: the students must be a list, e.g. [{username: alice, quota: 6, "
                           "password: generate}]"]),
    ("- {username: alice\n", ["line 2: not valid YAML: expected ',' or '}', but got '<stream end>'"]),
    ("", ["line 1: the roster is empty: expected students: [{username: alice, quota: 6, password: generate}]"]),
    ("students: []\n", ["line 1: the roster lists no student"]),
])
def test_bad_yaml_rows_name_their_line(text, expected):
    assert problems(text, "yaml") == expected


def test_roster_format_and_size():
    assert roster.format_of("class.CSV") == "csv" and roster.format_of("c.yml") == "yaml"
    assert roster.format_of("c.txt") is None
    assert problems("x", "xls") == ["unknown roster format 'xls' (yaml or csv)"]
    assert problems("#" * (roster.MAX_TEXT + 1), "csv")[0].startswith("the roster is too large")
    assert problems(class_csv(1001), "csv") == ["line 1002: 1001 students: a roster has at most 1000"]


def test_generated_passwords_are_random_and_unambiguous():
    made = {roster.generate_password() for _ in range(200)}
    assert len(made) == 200
    assert all(len(p) == 12 and not set(p) & set("0O1lI") for p in made)


# --- importing a class -------------------------------------------------------------------------

def pair_topology() -> str:
    """Two VMs and a link: the smallest class topology (keeps the 30-student test quick)."""
    return tf.design_to_yaml(Design(t.linear(2).vms, t.linear(2).links, "linear", "pair"))


def test_a_class_of_30_with_a_topology_then_the_same_roster_again_changes_nothing(tmp_path):
    api, db, ex = make_api(tmp_path)
    pw = tmp_path / "pw.txt"
    lines = []
    good, report = api.import_roster("admin", class_csv(30), "csv", pair_topology(), None, str(pw),
                                     progress=lines.append)
    assert good, render_roster_report(report)
    data = db.load()
    students = [f"s{i:02d}" for i in range(1, 31)]
    assert all(data["users"][u]["role"] == "student" and data["users"][u]["quota_vms"] == 6 for u in students)
    slices = [s for s in data["slices"].values() if s["owner"] in students]
    assert len(slices) == 30 and {s["owner"] for s in slices} == set(students)
    assert all(s["name"] == "pair" and s["topology_type"] == "linear" and len(s["vms"]) == 2 and len(s["links"]) == 1
               for s in slices)
    assert all(data["users"][u]["used_vms"] == 2 for u in students)
    assert len(ex.made("overlay")) == 60
    vlans = [x["vlan_id"] for s in slices for x in s["links"]]
    assert len(vlans) == len(set(vlans)) == 30  # every student's link on a VLAN of their own
    # the password file: only its owner can read it; each password logs its student in
    assert stat.S_IMODE(os.stat(pw).st_mode) == 0o600
    rows = [line.split() for line in pw.read_text().splitlines() if not line.startswith("#")]
    assert [r[0] for r in rows] == students
    assert {o.username: o.password for o in report.students} == dict(rows)
    for user, password in rows[:3]:
        assert ok(api.authenticate(user, password))["username"] == user
    assert report.password_file == str(pw)
    last = max(slices, key=lambda s: s["slice_id"])
    assert "s01: account created" in lines and f"s30: slice pair ({last['slice_id']}) made" in lines

    before, calls = open(db.path, "rb").read(), len(ex.commands)
    good, again = api.import_roster("admin", class_csv(30), "csv", pair_topology(), None, str(tmp_path / "pw2.txt"))
    assert good
    assert open(db.path, "rb").read() == before and len(ex.commands) == calls  # nothing changed, nothing ran
    assert [(o.account, o.slice, o.password) for o in again.students] == [("exists", "exists", None)] * 30
    assert not (tmp_path / "pw2.txt").exists() and again.password_file is None
    assert render_roster_report(again)[-1] == "0 account(s) created, 30 already existed; slices pair: 0 made, " \
                                              "30 already there, 0 failed"


def test_existing_accounts_are_reported_not_changed_and_still_get_their_slice(tmp_path):
    api, db, _ = make_api(tmp_path)
    before = db.get_user("student")
    good, report = api.import_roster("admin", "username,quota,password\nstudent,2,new-password\nnewbie,5,pw-newbie\n",
                                     "csv", topology_text("two-routers"), "lab2", str(tmp_path / "pw.txt"))
    assert good
    assert [(o.username, o.account, o.quota, o.slice) for o in report.students] == [
        ("student", "exists", 6, "made"), ("newbie", "created", 5, "made")]
    after = db.get_user("student")
    assert (after["password_hash"], after["quota_vms"]) == (before["password_hash"], before["quota_vms"])
    assert not (tmp_path / "pw.txt").exists()  # no password was generated
    assert ok(api.authenticate("newbie", "pw-newbie"))
    assert {s["name"] for s in db.all_slices().values()} == {"lab2"}
    text = "\n".join(render_roster_report(report))
    assert "student          account exists (not changed, quota 6); slice lab2" in text
    assert "pw-newbie" not in text


@pytest.mark.parametrize("roster_text,topo,expected", [
    ("username\nalice\nBad Name\n", None, "line 3: invalid username 'Bad Name'"),
    ("username,quota\nalice,6\nbob,3\n", "ring4",
     "line 3: bob: a quota of 3 VMs cannot hold the 4 VMs of the topology"),
])
def test_a_bad_row_refuses_the_whole_roster(tmp_path, roster_text, topo, expected):
    api, db, ex = make_api(tmp_path)
    ok(api.get_quota("admin"))
    before = open(db.path, "rb").read()
    good, msg = api.import_roster("admin", roster_text, "csv", topology_text(topo) if topo else None, None,
                                  str(tmp_path / "pw.txt"))
    assert not good and msg.startswith("The roster has 1 problem; nothing was made:") and f"\n  {expected}" in msg
    assert open(db.path, "rb").read() == before and ex.commands == [] and not (tmp_path / "pw.txt").exists()


def test_a_bad_topology_refuses_the_whole_roster(tmp_path):
    api, db, ex = make_api(tmp_path)
    ok(api.get_quota("admin"))
    before = open(db.path, "rb").read()
    good, msg = api.import_roster("admin", "username\nalice\n", "csv", topology_text().replace("vm2, if2", "vm9, if2"))
    assert not good and msg.startswith("The topology file has 1 problem") and "line 19: link 1: VM 'vm9' does not" \
                                                                                 " exist" in msg
    good, msg = api.import_roster("admin", "username\nalice\n", "csv", topology_text().replace("name: ring4\n", ""))
    assert not good and msg == "The topology file names no slice (name:): give the slice a name"
    assert open(db.path, "rb").read() == before and ex.commands == []


def test_only_an_admin_imports_a_roster(tmp_path):
    api, _, _ = make_api(tmp_path)
    assert api.import_roster("student", "username\nalice\n", "csv") == (False, "Only an admin can do this")


def test_an_existing_password_file_is_never_reused(tmp_path):
    api, db, _ = make_api(tmp_path)
    pw = tmp_path / "pw.txt"
    pw.write_text("someone else's\n")
    good, msg = api.import_roster("admin", "username\nalice\n", "csv", None, None, str(pw))
    assert not good and msg == f"Cannot create the password file {pw}: File exists (nothing was changed)"
    assert pw.read_text() == "someone else's\n" and db.get_user("alice") is None
    os.symlink(tmp_path / "elsewhere", tmp_path / "link.txt")
    good, msg = api.import_roster("admin", "username\nalice\n", "csv", None, None, str(tmp_path / "link.txt"))
    assert not good and not (tmp_path / "elsewhere").exists() and db.get_user("alice") is None


def test_the_password_file_is_private_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        fd = open_secret_file(str(tmp_path / "secret"))
    finally:
        os.umask(old)
    os.close(fd)
    assert stat.S_IMODE(os.stat(tmp_path / "secret").st_mode) == 0o600


def test_a_student_whose_slice_fails_is_reported_the_others_go_on_and_a_rerun_completes(tmp_path):
    api, db, ex = make_api(tmp_path)
    ex.fail("create_overlay", times=1)  # the first student's first VM
    good, report = api.import_roster("admin", class_csv(3), "csv", topology_text(), None, str(tmp_path / "p1"))
    assert not good
    assert [o.slice for o in report.students] == ["failed", "made", "made"]
    assert report.students[0].message.startswith("VM vm1 could not be added")
    assert db.get_user("s01")["slices"] == [] and db.get_user("s01")["used_vms"] == 0
    assert "Fix what failed and run the same roster again" in render_roster_report(report)[-1]
    good, report = api.import_roster("admin", class_csv(3), "csv", topology_text(), None, str(tmp_path / "p2"))
    assert good and [o.slice for o in report.students] == ["made", "exists", "exists"]
    assert len(ex.made("overlay")) == 12


def test_yaml_roster_end_to_end(tmp_path):
    api, db, _ = make_api(tmp_path)
    good, report = api.import_roster("admin", "students:\n  - {username: ana, quota: 3, password: generate}\n",
                                     "yaml", None, None, str(tmp_path / "pw"))
    assert good and report.slice_name is None and report.students[0].slice is None
    assert db.get_user("ana")["quota_vms"] == 3
    assert ok(api.authenticate("ana", report.students[0].password))


# --- overview ----------------------------------------------------------------------------------

def test_overview_of_every_slice(tmp_path):
    api, db, _ = make_api(tmp_path)
    a = ok(api.create_from_template("student", "ring", 3, "cirros", "none", "ring3"))
    b = ok(api.create_from_template("admin", "linear", 2, "cirros", "first", "pair"))
    ok(api.deploy_slice("admin", b["slice_id"]))
    rows = ok(api.overview("admin"))
    assert [(r.owner, r.name, r.status, r.topology_type, r.vms, r.links) for r in rows] == [
        ("admin", "pair", "running", "linear", 2, 1), ("student", "ring3", "design", "ring", 3, 3)]
    assert rows[0].deployed_at == db.get_slice(b["slice_id"])["deployed_at"] and rows[1].deployed_at is None
    assert 0 <= rows[0].running_for < 60 and rows[1].running_for is None
    assert rows[1].workers == sorted({vm["worker_ip"] for vm in a["vms"]})
    assert api.overview("student") == (False, "Only an admin can do this")
    lines = render_overview(rows, ["10.9.0.11", "10.9.0.12", "10.9.0.13"])
    assert lines[0].split() == ["ID", "Owner", "Slice", "Status", "Type", "VMs", "Links", "Workers", "Deployed",
                                "since"]
    assert lines[2].split()[:8] == [str(b["slice_id"]), "admin", "pair", "running", "linear", "2", "1", "1,2"]
    assert lines[3].split() == [str(a["slice_id"]), "student", "ring3", "design", "ring", "3", "3", "1,2,3", "-"]
    assert lines[-2:] == ["2 slices (1 running), 5 VMs, 2 owners",
                          "Workers: 1 = 10.9.0.11, 2 = 10.9.0.12, 3 = 10.9.0.13"]
    assert all(len(line) <= 80 for line in lines)


def test_overview_ages_and_odd_stamps():
    assert age_of(None) is None and age_of("yesterday") is None
    rows = overview_rows([{"slice_id": 5, "owner": "x", "status": "running", "deployed_at": "2024-01-01 10:00:00",
                           "vms": [], "links": []}], now=age_of_base())
    assert rows[0].running_for == 3 * 3600 + 5 * 60
    assert render_overview(rows, [])[2].endswith("01-01 10:00 (3h 05m)")
    assert render_overview([], []) == ["No slices."]


def age_of_base() -> float:
    import time
    return time.mktime(time.strptime("2024-01-01 13:05:00", "%Y-%m-%d %H:%M:%S"))


def test_ctrl_c_during_a_roster_undoes_that_slice_and_stops(tmp_path):
    api, db, ex = make_api(tmp_path)
    overlays = []

    def press_ctrl_c(cmd):
        overlays.append(cmd.target)
        if len(overlays) == 6:  # the second student's second VM
            os.kill(os.getpid(), signal.SIGINT)

    ex.hooks["create_overlay"] = press_ctrl_c
    good, report = api.import_roster("admin", class_csv(3), "csv", topology_text(), None, str(tmp_path / "pw"))
    assert not good
    assert [(o.account, o.slice) for o in report.students] == [("created", "made"), ("created", "failed"),
                                                                ("created", "failed")]
    assert report.students[1].message.startswith("Interrupted (Ctrl-C). Nothing was made")
    assert report.students[2].message == "not made: the import was interrupted (Ctrl-C)"
    assert len(overlays) == 6 and len(ex.made("overlay")) == 4  # only the first student's slice is left
    assert [s["owner"] for s in db.all_slices().values()] == ["s01"]
    good, report = api.import_roster("admin", class_csv(3), "csv", topology_text(), None, str(tmp_path / "pw2"))
    assert good and [o.slice for o in report.students] == ["exists", "made", "made"]
