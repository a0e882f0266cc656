"""database.yaml edited by hand (issue 17 items 3-6): IDs never reused, keys never read twice, edits never lost.

Each test here failed before the store split of issue 18 item 10 (see the
branch's report): the counter handed out IDs in use, PyYAML kept the last of
two keys, a transaction wrote over an edit saved while it ran, aliases
expanded.
"""
from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from uhelpers import make_api, ok

from database import Database, DatabaseError
from store.config import ClusterConfig, ConfigError

CTX = multiprocessing.get_context("fork")
ROOT = Path(__file__).resolve().parents[2]


def _save_as_editor(path: str, text: str) -> None:
    """What most editors do: write a new file beside, rename it over the old one (no lock)."""
    tmp = path + ".editor~"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def _edit(path: str, old: str, new: str, count: int = 1) -> None:
    text = Path(path).read_text()
    assert old in text, old
    _save_as_editor(path, text.replace(old, new, count))


# --- item 3: an ID in use is never handed out again ----------------------------------------------

def test_a_counter_reset_by_hand_never_gives_out_an_id_in_use(tmp_path):
    api, db, _ex = make_api(tmp_path)
    ok(api.create_user("admin", "ana", "ana-pass-1", 6))
    ok(api.create_user("admin", "ben", "ben-pass-1", 6))
    ana = ok(api.create_slice("ana", "lab1"))["slice_id"]
    vm = ok(api.add_vm_to_slice("ana", ana, "web", "cirros", 1))
    assert (ana, vm["vm_id"]) == (1000, 1001)
    _edit(db.path, "next_vm_id: 1002", "next_vm_id: 1000")          # an instructor "resets" the counter
    ben = ok(api.create_slice("ben", "lab1"))["slice_id"]
    ben_vm = ok(api.add_vm_to_slice("ben", ben, "db", "cirros", 0))
    assert ben == 1002 and ben_vm["vm_id"] == 1003
    mine = db.get_slice(ana)
    assert mine["owner"] == "ana" and mine["name"] == "lab1" and [v["vm_id"] for v in mine["vms"]] == [1001]
    assert db.get_user("ana")["slices"] == [ana] and db.get_user("ben")["slices"] == [ben]
    assert db.load()["next_vm_id"] == 1004


def test_a_counter_behind_is_corrected_logged_and_told_to_the_admin(tmp_path, caplog):
    api, db, _ex = make_api(tmp_path)
    sid = ok(api.create_slice("admin", "s"))["slice_id"]
    ok(api.add_vm_to_slice("admin", sid, "vm1", "cirros", 0))
    _edit(db.path, "next_vm_id: 1002", "next_vm_id: 7")
    fresh = Database(db.path)                     # the next process to read it (it may write it)
    with caplog.at_level("WARNING", logger="cloudrepo.store"):
        assert fresh.load()["next_vm_id"] == 1002
    assert yaml.safe_load(Path(db.path).read_text())["next_vm_id"] == 1002      # corrected in the file
    said = "next_vm_id was 7, but ID 1001 is in use: corrected to 1002"
    assert any(said in r.getMessage() for r in caplog.records)
    assert db.get_next_vm_id() == 1002
    # the admin reads it at login (the store's notices go to the next admin who logs in)
    api2, _db2, _ex2 = make_api(tmp_path, db_name=os.path.basename(db.path))
    _edit(db.path, "next_vm_id: 1003", "next_vm_id: 1000")
    api2.db.load()
    info = ok(api2.authenticate("admin", "admin"))
    # ID 1002 is in no slice, but get_next_vm_id handed it out: the counter never goes back below it
    assert any("next_vm_id was 1000, but IDs up to 1002 were handed out already" in n and "corrected to 1003" in n
               for n in info["notices"]), info["notices"]
    ok(api2.create_user("admin", "stu", "stu-pass-1", 6))
    student = ok(api2.authenticate("stu", "stu-pass-1"))
    assert "notices" not in student


def test_the_menu_shows_the_admin_what_the_store_corrected(tmp_path):
    db = tmp_path / "database.yaml"
    Database(str(db)).get_next_vm_id()
    api, _db, _ex = make_api(tmp_path, db_name="database.yaml")
    sid = ok(api.create_slice("admin", "s"))["slice_id"]
    _edit(str(db), f"next_vm_id: {sid + 1}", "next_vm_id: 1")
    cfg = tmp_path / "cluster.yaml"
    cfg.write_text(f"workers: [127.0.0.1]\nlog_file: {tmp_path / 'menu.log'}\n")
    proc = subprocess.run([sys.executable, str(ROOT / "cli.py"), "--config", str(cfg), "--db", str(db)],
                          input="admin\nadmin\n0\n", capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"next_vm_id was 1, but ID {sid} is in use: corrected to {sid + 1}" in proc.stdout
    assert f"corrected to {sid + 1}" in (tmp_path / "menu.log").read_text()


def test_a_stale_copy_that_drops_a_slice_never_gets_its_ids_handed_out_again(tmp_path):
    api, db, _ex = make_api(tmp_path)
    stale = Path(db.path).read_text()            # an editor opens the file ...
    sid = ok(api.create_slice("admin", "s"))["slice_id"]
    ok(api.add_vm_to_slice("admin", sid, "vm1", "cirros", 0))
    _save_as_editor(db.path, stale)              # ... and saves it later: slice 1000 and its VM 1001 are gone
    assert db.get_slice(sid) is None             # the file is the truth ...
    new = ok(api.create_slice("admin", "t"))["slice_id"]
    assert new == sid + 2                        # ... but IDs 1000 and 1001 may still name things on the hosts


# --- item 4: a key given twice, keys that collide once read -------------------------------------

BASE = """\
users:
  admin:
    username: admin
    password_hash: scrypt$16384$8$1$00$00
    quota_vms: 10
    used_vms: 0
    slices: []
    role: student
  ana:
    username: ana
    password_hash: scrypt$16384$8$1$00$00
    quota_vms: 6
    used_vms: 0
    slices: []
    role: student
slices:
  '1000':
    slice_id: 1000
    owner: ana
    vms: []
next_vm_id: 1001
"""

DUPLICATES = {
    # a key twice in one user: PyYAML read the second (a student made admin)
    "role-twice": (BASE.replace("    role: student\n  ana:", "    role: student\n    role: admin\n  ana:"),
                   "users.admin has the key 'role' twice, on lines 8 and 9"),
    # a user block pasted twice: PyYAML kept one silently
    "user-pasted-twice": (BASE.replace("slices:\n  '1000'", "".join(BASE.splitlines(True)[8:15]) + "slices:\n  '1000'"),
                          "users has the key 'ana' twice, on lines 9 and 16"),
    # '1000' and 1000: PyYAML sees two slices, the store one (and its next save dropped the other)
    "slice-key-as-text-and-number": (BASE.replace("next_vm_id", "  1000:\n    slice_id: 1000\n    owner: admin\n"
                                                  "next_vm_id"),
                                     "slices has the key '1000' twice, on lines 17 and 21 (written '1000' (text) "
                                     "and 1000 (int)"),
    "in-flow-style": (BASE.replace("    vms: []\n", "    vms: [{vm_id: 1001, name: a, name: b}]\n"),
                      "slices.1000.vms[0] has the key 'name' twice, on lines 20 and 20"),
}


@pytest.mark.parametrize("case", sorted(DUPLICATES))
def test_a_key_given_twice_is_refused_with_both_lines_and_nothing_written(tmp_path, case):
    text, message = DUPLICATES[case]
    path = tmp_path / "database.yaml"
    path.write_text(text)
    db = Database(str(path))
    for attempt in (db.load, lambda: db.get_user("admin"), db.get_next_vm_id,
                    lambda: db.add_slice({"slice_id": 5, "owner": "ana", "vms": []})):
        with pytest.raises(DatabaseError) as e:
            attempt()
        assert str(e.value).startswith(f"{path} line ") and message in str(e.value), str(e.value)
    assert path.read_text() == text
    assert sorted(os.listdir(tmp_path)) == ["database.yaml", "database.yaml.lock"]   # no cache, no temp file


def test_the_same_file_without_the_duplicate_is_read(tmp_path):
    path = tmp_path / "database.yaml"
    path.write_text(BASE)
    assert Database(str(path)).get_user("admin")["role"] == "student"


def test_a_cluster_config_with_a_key_twice_is_refused_with_both_lines(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text("workers: [10.0.0.1]\nssh:\n  user: ubuntu\n  sudo: true\n  user: root\n")
    with pytest.raises(ConfigError) as e:
        ClusterConfig.load(str(path))
    assert "line 3: ssh has the key 'user' twice, on lines 3 and 5" in str(e.value)
    path.write_text("workers: [10.0.0.1]\nworkers: [10.0.0.9]\n")
    with pytest.raises(ConfigError, match="the file has the key 'workers' twice, on lines 1 and 2"):
        ClusterConfig.load(str(path))


# --- item 6: anchors and aliases ------------------------------------------------------------------

def _bomb(levels: int = 9) -> str:
    lines = ['lol: &l0 "lol"']
    for i in range(1, levels + 1):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_a_yaml_bomb_in_the_database_is_refused_with_its_line(tmp_path):
    path = tmp_path / "database.yaml"
    text = BASE + _bomb()         # 9^9 strings once expanded, 1 KB on disk
    path.write_text(text)
    with pytest.raises(DatabaseError) as e:
        Database(str(path)).load()
    assert f"{path} line 22: YAML anchors and aliases (&name, *name) are not accepted" in str(e.value)
    assert path.read_text() == text


def test_a_single_alias_is_refused_too_and_the_store_never_writes_one(tmp_path):
    path = tmp_path / "database.yaml"
    path.write_text(BASE.replace("    slices: []\n    role: student\n  ana", "    slices: &none []\n"
                                 "    role: student\n  ana").replace("    slices: []\n    role: student\nslices",
                                                                     "    slices: *none\n    role: student\nslices"))
    with pytest.raises(DatabaseError, match="line 7: YAML anchors and aliases"):
        Database(str(path)).load()
    path.write_text(BASE)
    db = Database(str(path))
    shared = {"cores": 1, "ram_gb": 0.5, "disk_gb": 1, "image": "x"}
    with db.transaction() as data:                      # one object at two places: written out in full
        data["slices"]["1000"]["vms"] = [{"vm_id": 1001, "name": "a", "flavor": shared},
                                         {"vm_id": 1002, "name": "b", "flavor": shared}]
    assert "&" not in path.read_text() and "*" not in path.read_text()
    assert Database(str(path), fast=False).get_slice(1000)["vms"][1]["flavor"] == shared


def test_a_cluster_config_with_an_alias_is_refused_with_its_line(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text("workers: &w [10.0.0.1]\nreserved_vlans: [1]\nmanagement_networks: *w\n")
    with pytest.raises(ConfigError, match="line 1: YAML anchors and aliases"):
        ClusterConfig.load(str(path))


TOPOLOGY_WITH_ALIAS = """\
topology_type: custom
vms:
  - {name: r1, flavor: &f cirros, data_interfaces: 1}
  - {name: r2, flavor: *f, data_interfaces: 1}
links:
  - {vm1: r1, if1: eth1, vm2: r2, if2: eth1}
"""


@pytest.mark.parametrize("kind", ["topology", "roster", "topology-bomb", "roster-bomb"])
def test_topology_files_and_rosters_with_anchors_or_aliases_are_refused_with_the_line(kind):
    """What users give the product besides database.yaml and cluster.yaml (options 15/16, script mode)."""
    from topology.files import parse_topology
    from usecases.roster import parse_roster
    if kind == "topology":
        design, problems = parse_topology(TOPOLOGY_WITH_ALIAS)
        assert design is None and [(p.line, p.message) for p in problems] == [
            (3, "YAML anchors and aliases (&name, *name) are not accepted: write each value out in full")]
    elif kind == "roster":
        students, problems = parse_roster("- {username: alice, quota: &q 2}\n- {username: bob, quota: *q}\n",
                                          "yaml")
        assert students == [] and [p.line for p in problems] == [1], problems
        assert "YAML anchors and aliases" in problems[0].message
    else:
        bomb = _bomb()
        found, problems = parse_topology(bomb) if kind == "topology-bomb" else parse_roster(bomb, "yaml")
        assert not found and [p.line for p in problems] == [1], problems
        assert "YAML anchors and aliases" in problems[0].message


# --- item 5: an edit saved while the product changes something is never lost --------------------

def test_an_edit_saved_during_a_transaction_is_kept_with_the_transactions_change(tmp_path, caplog):
    api, db, _ex = make_api(tmp_path)
    with caplog.at_level("INFO", logger="cloudrepo.store"):
        with db.transaction() as data:
            data["users"]["admin"]["used_vms"] = 3                 # the product's change ...
            _edit(db.path, "quota_vms: 6", "quota_vms: 9")         # ... and an instructor's, saved meanwhile
    after = yaml.safe_load(Path(db.path).read_text())
    assert after["users"]["student"]["quota_vms"] == 9 and after["users"]["admin"]["used_vms"] == 3
    assert any("changed outside the product (replaced) during a transaction" in r.getMessage()
               for r in caplog.records)


def test_an_in_place_edit_during_a_transaction_is_seen_by_its_content(tmp_path):
    db = Database(str(tmp_path / "database.yaml"))
    db.get_next_vm_id()
    st = os.stat(db.path)
    with db.transaction() as data:
        data["users"]["admin"]["used_vms"] = 1
        raw = Path(db.path).read_bytes()
        with open(db.path, "r+b") as f:              # same inode, same size, same mtime
            f.seek(raw.index(b"quota_vms: 6"))
            f.write(b"quota_vms: 8")
        os.utime(db.path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = Database(db.path, fast=False).load()
    assert after["users"]["student"]["quota_vms"] == 8 and after["users"]["admin"]["used_vms"] == 1


def test_an_edit_of_the_same_key_refuses_the_transaction_and_stays(tmp_path):
    api, db, _ex = make_api(tmp_path)
    with pytest.raises(DatabaseError) as e:
        with db.transaction() as data:
            data["users"]["student"]["quota_vms"] = 7
            data["users"]["admin"]["used_vms"] = 2
            _edit(db.path, "quota_vms: 6", "quota_vms: 12")
    assert "was changed outside the product (replaced) while this change was being made, and both changed " \
           "users.student.quota_vms: this change was not saved, the file keeps that edit" in str(e.value)
    after = db.load()
    assert after["users"]["student"]["quota_vms"] == 12 and after["users"]["admin"]["used_vms"] == 0


def test_a_damaged_edit_during_a_transaction_refuses_the_transaction_and_stays(tmp_path):
    db = Database(str(tmp_path / "database.yaml"))
    with pytest.raises(DatabaseError, match="line 7: users.admin.quota_vms must be a whole number"):
        with db.transaction() as data:
            data["users"]["admin"]["used_vms"] = 2
            _edit(db.path, "quota_vms: 10", "quota_vms: ten")
    assert "quota_vms: ten" in Path(db.path).read_text()


def test_a_use_case_refused_by_a_conflicting_edit_changes_nothing(tmp_path):
    api, db, _ex = make_api(tmp_path)
    sid = ok(api.create_slice("admin", "s"))["slice_id"]
    real = db._write_file

    def edit_first(data, expected=None, saved=None):   # the instructor saves a quota just before the product's
        if expected is not None and "quota_vms: 10" in Path(db.path).read_text():
            _edit(db.path, "used_vms: 0\n    slices:\n    - 1000", "used_vms: 5\n    slices:\n    - 1000")
        return real(data, expected, saved)

    db._write_file = edit_first
    with pytest.raises(DatabaseError, match="both changed users.admin.used_vms"):
        api.add_vm_to_slice("admin", sid, "vm1", "cirros", 0)
    del db._write_file
    assert db.get_slice(sid)["vms"] == [] and db.get_user("admin")["used_vms"] == 5


def test_an_editor_saving_a_stale_copy_is_taken_and_what_vanished_is_logged(tmp_path, caplog):
    api, db, _ex = make_api(tmp_path)
    stale = Path(db.path).read_text()
    sid = ok(api.create_slice("admin", "lab"))["slice_id"]
    ok(api.add_vm_to_slice("admin", sid, "vm1", "cirros", 0))
    _save_as_editor(db.path, stale.replace("quota_vms: 6", "quota_vms: 8"))   # opened before, saved after
    with caplog.at_level("WARNING", logger="cloudrepo.store"):
        assert db.get_slice(sid) is None                             # the running menu: the file says so
        assert db.get_user("student")["quota_vms"] == 8
        assert Database(db.path).get_slice(sid) is None              # a new one too
    said = [r.getMessage() for r in caplog.records]
    assert any(f"was changed outside the product: slice {sid} (lab, owner admin, design, VMs {sid + 1}) is no "
               "longer in the file" in m for m in said), said
    info = ok(api.authenticate("admin", "admin"))
    assert any(f"slice {sid} (lab" in n for n in info["notices"])


def test_an_empty_file_while_an_editor_writes_it_in_place_is_waited_for_never_a_new_database(tmp_path):
    db = Database(str(tmp_path / "database.yaml"))
    db.get_next_vm_id()
    text = Path(db.path).read_text()
    with open(db.path, "w"):                       # truncated: the editor writes the rest a moment later
        pass
    writer = CTX.Process(target=_write_later, args=(db.path, text.replace("quota_vms: 6", "quota_vms: 7"), 0.3))
    writer.start()
    assert db.get_next_vm_id() == 1001               # waited for the editor, then took its content in
    writer.join(10)
    assert Database(db.path).get_user("student")["quota_vms"] == 7
    with open(db.path, "w"):
        pass
    with pytest.raises(DatabaseError, match="is empty"):
        db.get_next_vm_id()
    assert Path(db.path).read_bytes() == b""


def _write_later(path: str, text: str, delay: float) -> None:
    time.sleep(delay)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


# --- item 5 with real processes: menus saving while an editor saves ----------------------------

def _product(path: str, index: int, rounds: int, queue) -> None:
    """A menu changing its user again and again; a change refused because an edit changed the same key is
    tried again, as its user would (the refusal is the rule: never a silent overwrite)."""
    db = Database(path)
    refused = 0
    for _ in range(rounds):
        while True:
            try:
                with db.transaction() as data:
                    data["users"][f"p{index}"]["used_vms"] += 1
                break
            except DatabaseError as e:
                assert "changed outside the product" in str(e) or "kept changing" in str(e), str(e)
                refused += 1
    queue.put((index, refused))


def _editor(path: str, rounds: int, queue) -> None:
    """An instructor saving the file again and again with a plain editor (read, change, rename; no lock)."""
    for i in range(1, rounds + 1):
        while True:
            text = Path(path).read_text()
            data = yaml.safe_load(text)
            if data:
                break
        quota = data["users"]["editor"]["quota_vms"]
        assert quota == i - 1, f"edit {i - 1} was lost: quota_vms is {quota}"
        _save_as_editor(path, text.replace(f"  editor:\n    username: editor\n    password_hash: x\n"
                                           f"    quota_vms: {quota}\n",
                                           f"  editor:\n    username: editor\n    password_hash: x\n"
                                           f"    quota_vms: {quota + 1}\n"))
        time.sleep(0.002)
    queue.put("editor")


def test_menus_and_an_editor_saving_at_once_never_lose_an_edit(tmp_path):
    path = str(tmp_path / "database.yaml")
    db = Database(path)
    with db.transaction() as data:
        data["users"]["editor"] = {"username": "editor", "password_hash": "x", "quota_vms": 0, "used_vms": 0,
                                   "slices": [], "role": "student"}
        for i in range(4):
            data["users"][f"p{i}"] = {"username": f"p{i}", "password_hash": "x", "quota_vms": 6, "used_vms": 0,
                                      "slices": [], "role": "student"}
    queue = CTX.Queue()
    edits, rounds = 150, 60
    procs = [CTX.Process(target=_editor, args=(path, edits, queue))]
    procs += [CTX.Process(target=_product, args=(path, i, rounds, queue)) for i in range(4)]
    for p in procs:
        p.start()
    done = [queue.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert "editor" in done and sorted(d[0] for d in done if d != "editor") == [0, 1, 2, 3]
    after = Database(path, fast=False).load()
    assert after["users"]["editor"]["quota_vms"] == edits        # every hand edit is in the file
    # the editor's own stale copies may undo a menu's increment (that is the editor's doing, and its
    # read-change-save is not atomic); the product never undid an edit, and every process finished
    assert all(0 < after["users"][f"p{i}"]["used_vms"] <= rounds for i in range(4))
