"""database.py at class size: damaged files refused with the line, the parse cache, many writers (SPEC §4.8, §12)."""
from __future__ import annotations

import datetime
import hashlib
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from classdb import class_database

from database import CACHE_SUFFIX, HEADER, Database, DatabaseError

CTX = multiprocessing.get_context("fork")
ROOT = Path(__file__).resolve().parents[2]

# A small valid file; the cases below change one part of it (line numbers are this file's).
VALID = """\
# a hand-written database
users:
  admin:
    username: admin
    password_hash: 8c6976e5b5410415bde908bd4dee15dfb167a9c873fc4bb8a81f6f2ab448a918
    quota_vms: 10
    used_vms: 1
    slices: [1000]
    role: admin
slices:
  '1000':
    slice_id: 1000
    owner: admin
    vms:
    - vm_id: 1001
      name: vm1
      interfaces:
      - name: eth0
        vlan_id: null
    links: []
next_vm_id: 1002
"""


def _lines(text: str) -> list:
    return text.splitlines(keepends=True)


def _replace(line_no: int, new: str, text: str = VALID) -> str:
    """VALID with line ``line_no`` (1-based) replaced by ``new`` (several lines, or none)."""
    lines = _lines(text)
    lines[line_no - 1] = new
    return "".join(lines)


DAMAGED = {
    "slices-list": ("".join(_lines(VALID)[:9]) + "slices:\n- 1000\nnext_vm_id: 1002\n",
                    "line 10: slices must be a mapping of slice ID to slice, not a list"),
    "users-text": ("users: everyone\nslices: {}\nnext_vm_id: 1000\n",
                   "line 1: users must be a mapping of user name to user, not the text 'everyone'"),
    "user-a-list": (_replace(3, "  admin: [a, b]\n").replace("".join(_lines(VALID)[3:9]), ""),
                    "line 3: users.admin must be a user (username, password_hash, quota_vms, used_vms, slices, "
                    "role), not a list"),
    "quota-text": (_replace(6, "    quota_vms: ten\n"),
                   "line 6: users.admin.quota_vms must be a whole number, 0 or more, not the text 'ten'"),
    "quota-negative": (_replace(6, "    quota_vms: -1\n"), "line 6: users.admin.quota_vms must be a whole number"),
    "used-bool": (_replace(7, "    used_vms: yes\n"),
                  "line 7: users.admin.used_vms must be a whole number, 0 or more, not true"),
    "user-slices-text": (_replace(8, "    slices: ['1000']\n"),
                         "line 8: users.admin.slices[0] must be a slice ID, not the text '1000'"),
    "username-mismatch": (_replace(4, "    username: bob\n"),
                          "line 4: users.admin.username must be admin (its key), not the text 'bob'"),
    "slice-id-mismatch": (_replace(12, "    slice_id: 1001\n"),
                          "line 12: slices.1000.slice_id must be 1000 (its key), not the number 1001"),
    "slice-without-id": (_replace(12, ""), "line 11: slices.1000 has no slice_id"),
    "vms-a-mapping": (_replace(14, "    vms: {vm1: 1001}\n").replace("".join(_lines(VALID)[14:19]), ""),
                      "line 14: slices.1000.vms must be a list of VMs, not a mapping"),
    "vm-without-name": (_replace(16, ""), "line 15: slices.1000.vms[0] has no name"),
    "vlan-text": (_replace(19, "        vlan_id: abc\n"),
                  "line 19: slices.1000.vms[0].interfaces[0].vlan_id must be a VLAN (1-4094) or null, "
                  "not the text 'abc'"),
    "vlan-out-of-range": (_replace(19, "        vlan_id: 5000\n"),
                          "line 19: slices.1000.vms[0].interfaces[0].vlan_id must be a VLAN (1-4094) or null, "
                          "not the number 5000"),
    "interface-name": (_replace(18, "      - name: wan0\n"),
                       "line 18: slices.1000.vms[0].interfaces[0].name must be an interface name (eth0, eth1...)"),
    "link-incomplete": (_replace(20, "    links:\n    - {link_id: 1, vlan_id: 100}\n"),
                        "line 21: slices.1000.links[0] has no vm1_id"),
    "next-id-text": (_replace(21, "next_vm_id: soon\n"),
                     "line 21: next_vm_id must be the next free ID (a whole number), not the text 'soon'"),
    "next-id-missing": (_replace(21, ""), "database.yaml: the file has no next_vm_id"),
    "top-level-list": ("- users\n- slices\n",
                       "database.yaml: the file must be a mapping of users, slices and next_vm_id, not a list"),
    "not-yaml": (_replace(8, "    slices: [1000\n"), "database.yaml is not valid YAML (line 9"),
}


@pytest.mark.parametrize("case", sorted(DAMAGED))
def test_damaged_file_is_refused_with_the_key_path_and_line_and_never_written(tmp_path, monkeypatch, case):
    text, message = DAMAGED[case]
    path = tmp_path / "database.yaml"
    path.write_text(text)
    before = path.read_bytes()
    monkeypatch.chdir(tmp_path)
    db = Database("database.yaml")
    with pytest.raises(DatabaseError) as e:
        db.load()
    assert message in str(e.value)
    assert str(e.value).startswith("database.yaml")
    with pytest.raises(DatabaseError):
        with db.transaction() as data:
            data["touched"] = True
    for attempt in (db.get_next_vm_id, lambda: db.get_user("admin"), lambda: db.add_slice({"slice_id": 1})):
        with pytest.raises(DatabaseError):
            attempt()
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["database.yaml", "database.yaml.lock"]  # no cache, no temp file


def test_the_valid_base_of_those_cases_is_accepted(tmp_path):
    path = tmp_path / "database.yaml"
    path.write_text(VALID)
    db = Database(str(path))
    assert db.get_slice(1000)["vms"][0]["name"] == "vm1"
    assert db.get_next_vm_id() == 1002


def test_the_menu_reports_a_damaged_database_in_one_line_and_leaves_it(tmp_path):
    path = tmp_path / "database.yaml"
    path.write_text(DAMAGED["slices-list"][0])
    before = path.read_bytes()
    cfg = tmp_path / "cluster.yaml"
    cfg.write_text(f"workers: [127.0.0.1]\nlog_file: {tmp_path / 'menu.log'}\n")
    proc = subprocess.run([sys.executable, str(ROOT / "cli.py"), "--config", str(cfg), "--db", str(path)],
                          input="admin\nadmin\n0\n", capture_output=True, text=True, timeout=60)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "Traceback" not in out
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1 and "line 10: slices must be a mapping of slice ID to slice, not a list" in lines[0], out
    assert path.read_bytes() == before


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n"])
def test_an_empty_file_means_the_default_data(tmp_path, text):
    path = tmp_path / "database.yaml"
    path.write_text(text)
    db = Database(str(path))
    assert sorted(db.all_users()) == ["admin", "student"]
    assert db.get_next_vm_id() == 1000
    assert yaml.safe_load(path.read_text())["next_vm_id"] == 1001


def test_hand_written_variants_that_mean_the_same_are_read(tmp_path):
    path = tmp_path / "database.yaml"
    path.write_text(VALID.replace("  '1000':", "  1000:"))   # an unquoted key is an integer in YAML
    db = Database(str(path))
    assert db.get_slice(1000)["owner"] == "admin" and list(db.all_slices()) == ["1000"]
    path.write_text("".join(_lines(VALID)[:9]) + "slices:\nnext_vm_id: 1002\n")   # "slices:" with nothing
    assert db.all_slices() == {}


def test_a_reordered_file_is_written_back_in_the_documented_order(tmp_path):
    path = tmp_path / "database.yaml"
    lines = _lines(VALID)
    path.write_text(lines[20] + "extra: 1\n" + "".join(lines[9:20]) + "".join(lines[1:9]))
    Database(str(path)).get_next_vm_id()
    assert list(yaml.safe_load(path.read_text())) == ["users", "slices", "next_vm_id", "extra"]


def test_unknown_keys_are_kept_at_every_level(tmp_path):
    path = tmp_path / "database.yaml"
    text = (VALID.replace("    role: admin\n", "    role: admin\n    email: a@example.org\n")
            .replace("    owner: admin\n", "    owner: admin\n    course: redes-2025\n")
            .replace("      name: vm1\n", "      name: vm1\n      notes: [a, b]\n")
            .replace("        vlan_id: null\n", "        vlan_id: null\n        mtu: 1400\n")
            + "instructor: {name: Ana}\n")
    path.write_text(text)
    db = Database(str(path))
    db.get_next_vm_id()
    data = yaml.safe_load(path.read_text())
    assert data["users"]["admin"]["email"] == "a@example.org"
    assert data["slices"]["1000"]["course"] == "redes-2025"
    assert data["slices"]["1000"]["vms"][0]["notes"] == ["a", "b"]
    assert data["slices"]["1000"]["vms"][0]["interfaces"][0]["mtu"] == 1400
    assert data["instructor"] == {"name": "Ana"} and list(data)[:3] == ["users", "slices", "next_vm_id"]


@pytest.mark.parametrize("change, message", [
    (lambda d: d["users"]["admin"].update(quota_vms="x"), "users.admin.quota_vms must be a whole number"),
    (lambda d: d.update(slices=[]), "slices must be a mapping of slice ID to slice, not a list"),
    (lambda d: d["slices"].update({"1": {"slice_id": 2}}), "slices.1.slice_id must be 1 (its key)"),
    (lambda d: d.pop("next_vm_id"), "the file has no next_vm_id"),
])
def test_a_change_that_breaks_the_shape_is_refused_and_changes_nothing(tmp_path, change, message):
    db = Database(str(tmp_path / "database.yaml"))
    before = Path(db.path).read_bytes()
    with pytest.raises(DatabaseError, match="refusing to save") as e:
        with db.transaction() as data:
            change(data)
    assert message in str(e.value)
    assert Path(db.path).read_bytes() == before
    assert db.load()["users"]["admin"]["quota_vms"] == 10 and db.get_next_vm_id() == 1000


# --- the parse cache: trusted only while the YAML's bytes are the same ---------------------------

def _edit_in_place(path: Path, old: bytes, new: bytes) -> None:
    """Overwrite bytes inside the file (same inode, same size) and put its mtime back, to the nanosecond."""
    assert len(old) == len(new)
    st = os.stat(path)
    data = path.read_bytes()
    offset = data.index(old)
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(new)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (st.st_ino, st.st_size, st.st_mtime_ns)


def test_an_in_place_edit_with_the_same_size_and_mtime_is_what_the_next_read_sees(tmp_path):
    path = tmp_path / "database.yaml"
    db = Database(str(path))
    db.get_next_vm_id()                         # a save: the cache file and the memory hold this version
    assert db.get_user("student")["quota_vms"] == 6
    assert (tmp_path / ("database.yaml" + CACHE_SUFFIX)).exists()
    _edit_in_place(path, b"quota_vms: 6\n", b"quota_vms: 8\n")
    assert db.get_user("student")["quota_vms"] == 8                # the same object (memory cache)
    assert Database(str(path)).get_user("student")["quota_vms"] == 8  # a new menu (cache file)
    with db.transaction() as data:
        assert data["users"]["student"]["quota_vms"] == 8
        data["next_vm_id"] += 1
    assert yaml.safe_load(path.read_text())["users"]["student"]["quota_vms"] == 8


def test_an_edit_that_replaces_the_file_is_seen(tmp_path):
    path = tmp_path / "database.yaml"
    db = Database(str(path))
    db.get_next_vm_id()
    text = path.read_text().replace("quota_vms: 6", "quota_vms: 7")
    tmp = tmp_path / "new.yaml"
    tmp.write_text(text)
    os.replace(tmp, path)   # what editors that save by rename do
    assert db.load()["users"]["student"]["quota_vms"] == 7
    assert Database(str(path)).load()["users"]["student"]["quota_vms"] == 7


def test_a_cache_file_that_does_not_match_is_never_trusted(tmp_path):
    path = tmp_path / "database.yaml"
    cache = tmp_path / ("database.yaml" + CACHE_SUFFIX)
    Database(str(path)).get_next_vm_id()
    good = cache.read_bytes()
    assert b'"quota_vms":6' in good
    cache.write_bytes(good.replace(b'"quota_vms":6', b'"quota_vms":9'))       # body changed, hashes kept
    assert Database(str(path)).get_user("student")["quota_vms"] == 6
    header, hashes, body = good.split(b"\n", 2)
    other_yaml = b"0" * 64
    cache.write_bytes(header + b"\n" + other_yaml + b" " + hashes.split()[1] + b"\n" + body)
    assert Database(str(path)).get_user("student")["quota_vms"] == 6
    cache.write_bytes(b"garbage")
    assert Database(str(path)).get_user("student")["quota_vms"] == 6
    cache.unlink()
    assert Database(str(path)).get_user("student")["quota_vms"] == 6
    assert cache.read_bytes() == good           # rebuilt from the YAML, the same as the saved one


def test_the_cache_file_is_readable_by_whoever_reads_the_yaml_and_writable_by_its_owner_only(tmp_path):
    path = tmp_path / "database.yaml"
    cache = tmp_path / ("database.yaml" + CACHE_SUFFIX)
    db = Database(str(path))
    for mode, cache_mode in ((0o600, 0o600), (0o640, 0o640), (0o644, 0o644), (0o666, 0o644)):
        os.chmod(path, mode)
        db.get_next_vm_id()
        assert os.stat(path).st_mode & 0o777 == mode
        assert os.stat(cache).st_mode & 0o777 == cache_mode


def test_a_cache_file_others_could_have_written_is_not_trusted(tmp_path):
    path = tmp_path / "database.yaml"
    cache = tmp_path / ("database.yaml" + CACHE_SUFFIX)
    Database(str(path)).get_next_vm_id()
    header, hashes, body = cache.read_bytes().split(b"\n", 2)
    forged = body.replace(b'"quota_vms":6', b'"quota_vms":60')
    forged_file = (header + b"\n" + hashes.split()[0] + b" " + hashlib.sha256(forged).hexdigest().encode()
                   + b"\n" + forged)
    cache.write_bytes(forged_file)
    os.chmod(cache, 0o646)                  # anyone may write it: ignored (and replaced from the YAML)
    assert Database(str(path)).get_user("student")["quota_vms"] == 6
    cache.write_bytes(forged_file)
    os.chmod(cache, 0o644)                  # the same bytes as the owner's own file: trusted, as it must be
    assert Database(str(path)).get_user("student")["quota_vms"] == 60


def test_data_json_would_change_is_read_back_from_the_yaml(tmp_path):
    path = tmp_path / "database.yaml"
    db = Database(str(path))
    with db.transaction() as data:
        data["term"] = {"start": datetime.date(2025, 3, 1), 7: "int key"}
    for reader in (db, Database(str(path))):
        term = reader.load()["term"]
        assert term == {"start": datetime.date(2025, 3, 1), 7: "int key"}


def test_the_fast_and_the_old_way_write_the_same_file(tmp_path):
    data = class_database(slices=12)
    files = []
    for fast in (True, False):
        db = Database(str(tmp_path / f"db{int(fast)}.yaml"), fast=fast)
        with db.transaction() as d:
            d.clear()
            d.update(data)
        files.append((tmp_path / f"db{int(fast)}.yaml").read_bytes())
    assert files[0] == files[1]
    assert files[0].startswith(HEADER.encode())
    assert yaml.safe_load(files[0]) == data


def test_load_gives_a_private_copy_every_time(tmp_path):
    db = Database(str(tmp_path / "database.yaml"))
    db.get_next_vm_id()
    first = db.load()
    first["users"]["admin"]["quota_vms"] = 99
    first["slices"]["x"] = 1
    user = db.get_user("admin")
    user["slices"].append(5)
    assert db.load()["users"]["admin"] == db.get_user("admin")
    assert db.get_user("admin")["quota_vms"] == 10 and db.get_user("admin")["slices"] == []
    assert db.all_slices() == {}


# --- many writers at once ------------------------------------------------------------------------

def _change_once(path, index, fast, barrier, queue):
    db = Database(path, fast=fast)
    db.load()                          # every menu has read the file before it changes it
    barrier.wait()
    with db.transaction() as data:
        data["users"][f"s{index:03d}"]["quota_vms"] += 1
        vm_id = data["next_vm_id"]
        data["next_vm_id"] = vm_id + 1
    queue.put(vm_id)


def test_forty_processes_changing_at_once_lose_nothing(tmp_path):
    path = str(tmp_path / "database.yaml")
    with Database(path).transaction() as data:
        data.clear()
        data.update(class_database(slices=40))
    before = Database(path).load()
    n = 40
    barrier, queue = CTX.Barrier(n), CTX.Queue()
    # half of them the old way (no cache): the others must notice each of their saves
    procs = [CTX.Process(target=_change_once, args=(path, i, i % 2 == 0, barrier, queue)) for i in range(n)]
    for p in procs:
        p.start()
    ids = sorted(queue.get(timeout=300) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert ids == list(range(before["next_vm_id"], before["next_vm_id"] + n))
    for reader in (Database(path), Database(path, fast=False)):
        after = reader.load()
        assert after["next_vm_id"] == before["next_vm_id"] + n
        for i in range(n):
            name = f"s{i:03d}"
            assert after["users"][name]["quota_vms"] == before["users"][name]["quota_vms"] + 1, name
        after["next_vm_id"] = before["next_vm_id"]
        for i in range(n):
            after["users"][f"s{i:03d}"]["quota_vms"] -= 1
        assert after == before          # nothing else changed


def _save_forever(path):
    db = Database(path)
    i = 0
    while True:
        i += 1
        with db.transaction() as data:
            data["users"]["s001"]["quota_vms"] = i
            data["slices"][next(iter(data["slices"]))]["status"] = f"v{i}"


def test_sigkill_while_saving_a_big_file_leaves_the_yaml_and_the_cache_agreeing(tmp_path):
    path = str(tmp_path / "database.yaml")
    with Database(path).transaction() as data:
        data.clear()
        data.update(class_database(slices=30))
    seen = set()
    for round_ in range(5):
        p = CTX.Process(target=_save_forever, args=(path,))
        p.start()
        time.sleep(0.3 + 0.13 * round_)
        os.kill(p.pid, signal.SIGKILL)
        p.join(timeout=10)
        truth = Database(path, fast=False).load()        # the YAML alone
        assert Database(path).load() == truth            # whatever the cache file holds
        v = truth["users"]["s001"]["quota_vms"]
        assert truth["slices"][next(iter(truth["slices"]))]["status"] in (f"v{v}", "running", "design")
        seen.add(v)
    assert len(seen) > 1   # the writer really was saving when killed
