"""database.py: defaults, locking across processes, atomic saves, transactions (SPEC §4.8)."""
from __future__ import annotations

import hashlib
import multiprocessing
import os
import signal
import time

import pytest
import yaml

from database import HEADER, Database
from usecases import passwords

CTX = multiprocessing.get_context("fork")


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_fresh_file_has_documented_accounts(tmp_path):
    path = tmp_path / "database.yaml"
    Database(str(path))
    assert path.exists()
    data = yaml.safe_load(path.read_text())
    admin, student = data["users"]["admin"], data["users"]["student"]
    # the documented passwords, never stored unsalted (issue 17 item 8): scrypt of the documented SHA-256 hex
    for user, password in ((admin, "admin"), (student, "student")):
        assert user["password_hash"].startswith("sha256-scrypt$")
        assert _sha(password) not in path.read_text()
        assert passwords.verify_password(password, user["password_hash"])
        assert not passwords.verify_password(password + "x", user["password_hash"])
    assert admin["role"] == "admin" and student["role"] == "student"
    assert admin["quota_vms"] == 10 and student["quota_vms"] == 6
    assert admin["used_vms"] == 0 and student["used_vms"] == 0
    assert admin["slices"] == [] and student["slices"] == []
    assert data["slices"] == {}
    assert data["next_vm_id"] == 1000


def test_file_is_yaml_with_header_comment(tmp_path):
    db = Database(str(tmp_path / "database.yaml"))
    db.add_slice({"slice_id": 1000, "owner": "admin", "vms": []})
    text = open(db.path, encoding="utf-8").read()
    assert text.startswith("# ")
    assert text.startswith(HEADER)
    data = yaml.safe_load(text)  # the plain safe loader an instructor would use
    assert data["slices"]["1000"]["owner"] == "admin"
    assert list(data) == ["users", "slices", "next_vm_id"]


def test_existing_file_is_not_reset(tmp_path):
    db = Database(str(tmp_path / "database.yaml"))
    assert db.get_next_vm_id() == 1000
    assert Database(db.path).get_next_vm_id() == 1001


def test_get_next_vm_id_sequence(tmp_path):
    db = Database(str(tmp_path / "database.yaml"))
    assert [db.get_next_vm_id() for _ in range(3)] == [1000, 1001, 1002]
    assert db.load()["next_vm_id"] == 1003


def _take_ids(path, n, queue):
    db = Database(path)
    queue.put([db.get_next_vm_id() for _ in range(n)])


def test_get_next_vm_id_unique_across_processes(tmp_path):
    path = str(tmp_path / "database.yaml")
    Database(path)
    queue = CTX.Queue()
    procs = [CTX.Process(target=_take_ids, args=(path, 25, queue)) for _ in range(8)]
    for p in procs:
        p.start()
    got = []
    for _ in procs:
        got += queue.get(timeout=60)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert len(got) == 200
    assert len(set(got)) == 200
    assert sorted(got) == list(range(1000, 1200))
    assert Database(path).load()["next_vm_id"] == 1200


def _writer_loop(path):
    db = Database(path)
    i = 0
    while True:
        i += 1
        with db.transaction() as data:
            data["version"] = i
            data["payload"] = [i] * 3000
            data["text"] = f"v{i}-" + "x" * 20000


def test_sigkill_during_saves_leaves_a_complete_version(tmp_path):
    path = str(tmp_path / "database.yaml")
    Database(path)
    versions = []
    for round_ in range(6):
        p = CTX.Process(target=_writer_loop, args=(path,))
        p.start()
        time.sleep(0.05 + 0.037 * round_)
        os.kill(p.pid, signal.SIGKILL)
        p.join(timeout=10)
        assert p.exitcode == -signal.SIGKILL
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
        assert isinstance(data, dict)
        assert "admin" in data["users"] and data["next_vm_id"] == 1000
        if "version" in data:  # a complete version: all parts agree
            v = data["version"]
            versions.append(v)
            assert data["payload"] == [v] * 3000
            assert data["text"] == f"v{v}-" + "x" * 20000
    assert versions and max(versions) > 1  # the writers really were saving when killed
    # the lock died with the writer: a new transaction goes through at once
    assert Database(path).get_next_vm_id() == 1000


def test_nested_transactions_share_the_outer_one(tmp_path):
    db = Database(str(tmp_path / "database.yaml"))
    other = Database(db.path)
    with db.transaction() as outer:
        outer["marker"] = "outer"
        assert db.get_next_vm_id() == 1000  # nested transaction
        with db.transaction() as inner:
            assert inner is outer
            inner["marker2"] = "inner"
        # nothing saved before the outer transaction ends
        assert other.load()["next_vm_id"] == 1000
        assert "marker" not in other.load()
        assert db.load()["next_vm_id"] == 1001  # the transaction sees its own changes
    data = other.load()
    assert data["next_vm_id"] == 1001
    assert data["marker"] == "outer" and data["marker2"] == "inner"


def test_exception_inside_transaction_discards_change(tmp_path):
    db = Database(str(tmp_path / "database.yaml"))
    with pytest.raises(RuntimeError):
        with db.transaction() as data:
            data["next_vm_id"] = 5
            data["users"].pop("admin")
            raise RuntimeError("boom")
    data = db.load()
    assert data["next_vm_id"] == 1000
    assert "admin" in data["users"]
    # the lock was released and the state reset: the next transaction works
    assert db.get_next_vm_id() == 1000


def test_exception_in_nested_transaction_discards_everything(tmp_path):
    db = Database(str(tmp_path / "database.yaml"))
    with pytest.raises(KeyError):
        with db.transaction() as data:
            data["next_vm_id"] = 2000
            with db.transaction() as inner:
                inner["x"] = 1
                raise KeyError("inner")
    assert db.load()["next_vm_id"] == 1000
    assert "x" not in db.load()


def test_load_is_a_snapshot_inside_transaction(tmp_path):
    db = Database(str(tmp_path / "database.yaml"))
    with db.transaction() as data:
        snap = db.load()
        snap["next_vm_id"] = 99
        assert data["next_vm_id"] == 1000


def test_slice_crud_with_int_or_str_ids(tmp_path):
    db = Database(str(tmp_path / "database.yaml"))
    db.add_slice({"slice_id": 1000, "owner": "admin", "vms": []})
    db.add_slice({"slice_id": 1001, "owner": "student", "vms": []})
    assert db.get_slice(1000)["owner"] == "admin"
    assert db.get_slice("1000")["owner"] == "admin"
    assert [s["slice_id"] for s in db.get_all_slices_for_user("student")] == [1001]
    db.update_slice(1000, {"slice_id": 1000, "owner": "admin", "vms": [], "status": "running"})
    assert Database(db.path).get_slice(1000)["status"] == "running"
    db.delete_slice("1000")
    assert db.get_slice(1000) is None
    assert list(db.all_slices()) == ["1001"]


def test_no_temp_file_left_after_save(tmp_path):
    db = Database(str(tmp_path / "database.yaml"))
    for _ in range(3):
        db.get_next_vm_id()
    names = sorted(os.listdir(tmp_path))
    assert names == ["database.yaml", "database.yaml.cache", "database.yaml.lock"]
