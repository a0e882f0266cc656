"""Group commit in one process (the manager service): transactions that wait while another saves
are saved together by one write, each returns only once its change is on disk, and a change that
fails, or a save that fails, is accounted to exactly the transactions it concerns (issue 18)."""
from __future__ import annotations

import threading

import pytest
import yaml

from database import Database, DatabaseError


def slow_saves(db: Database, delay: float = 0.05) -> list:
    """Every save of ``db`` takes ``delay`` longer (a busy disk's fsync); the list of saves made."""
    real, saves = db._file.replace, []

    def replace(raw, expected=None):
        threading.Event().wait(delay)
        saves.append(raw)
        return real(raw, expected)

    db._file.replace = replace
    return saves


def on_disk(db: Database) -> dict:
    with open(db.path) as f:
        return yaml.safe_load(f)


def run_threads(n: int, fn) -> list:
    out, errors = [None] * n, []
    barrier = threading.Barrier(n)

    def one(i):
        barrier.wait()
        try:
            out[i] = fn(i)
        except Exception as e:  # noqa: BLE001 - collected for the assertions
            errors.append((i, e))
    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out, errors


def test_sixteen_waiting_transactions_take_fewer_saves_and_each_is_on_disk_when_it_returns(tmp_path):
    db = Database(str(tmp_path / "database.yaml"))
    saves = slow_saves(db)

    def take(_i):
        vm_id = db.get_next_vm_id()
        assert on_disk(db)["next_vm_id"] > vm_id      # saved before it returned
        return vm_id

    ids, errors = run_threads(16, take)
    assert not errors
    assert sorted(ids) == list(range(min(ids), min(ids) + 16))     # no update lost, none twice
    assert on_disk(db)["next_vm_id"] == max(ids) + 1
    assert len(saves) < 16, len(saves)                               # grouped: one save for many


def test_alone_a_transaction_saves_at_once(tmp_path):
    db = Database(str(tmp_path / "database.yaml"))
    saves = slow_saves(db, 0)
    for _ in range(3):
        db.get_next_vm_id()
    assert len(saves) == 3


def test_a_failing_block_fails_alone_and_the_others_of_its_group_are_saved(tmp_path):
    db = Database(str(tmp_path / "database.yaml"))
    slow_saves(db)

    def change(i):
        with db.transaction() as data:
            data["users"]["admin"].setdefault("notes", {})
            data.setdefault("marks", {})[f"t{i}"] = i
            if i % 4 == 0:
                raise RuntimeError(f"block {i} failed")
        return i

    _out, errors = run_threads(12, change)
    assert sorted(i for i, _e in errors) == [0, 4, 8]
    assert all(isinstance(e, RuntimeError) for _i, e in errors)
    assert on_disk(db)["marks"] == {f"t{i}": i for i in range(12) if i % 4}


def test_a_change_of_the_wrong_shape_fails_alone(tmp_path):
    db = Database(str(tmp_path / "database.yaml"))
    slow_saves(db)

    def change(i):
        with db.transaction() as data:
            if i == 3:
                data["users"]["admin"]["role"] = {"not": "a role"}
            else:
                data.setdefault("marks", {})[f"t{i}"] = i

    _out, errors = run_threads(8, change)
    assert [i for i, _e in errors] == [3] and isinstance(errors[0][1], DatabaseError)
    assert on_disk(db)["marks"] == {f"t{i}": i for i in range(8) if i != 3}
    assert on_disk(db)["users"]["admin"]["role"] == "admin"


def test_a_save_that_fails_fails_every_transaction_it_held_and_saves_none_of_them(tmp_path):
    db = Database(str(tmp_path / "database.yaml"))
    before = on_disk(db)
    real = db._file.replace

    def full_disk(raw, expected=None):
        threading.Event().wait(0.05)
        raise DatabaseError("cannot write database.yaml: No space left on device")

    db._file.replace = full_disk
    _out, errors = run_threads(8, lambda i: db.get_next_vm_id())
    assert len(errors) == 8 and all("No space left" in str(e) for _i, e in errors)
    assert len({id(e) for _i, e in errors}) == 8                       # each its own exception
    assert on_disk(db) == before
    db._file.replace = real
    assert db.get_next_vm_id() == before["next_vm_id"]                 # nothing of them was kept
    with pytest.raises(KeyError):
        db.load()["marks"]


def test_a_nested_transaction_is_the_outer_one(tmp_path):
    db = Database(str(tmp_path / "database.yaml"))
    saves = slow_saves(db, 0)
    with db.transaction() as outer:
        with db.transaction() as inner:
            assert inner is outer
            inner["marks"] = {"nested": 1}
    assert on_disk(db)["marks"] == {"nested": 1} and len(saves) == 1


def test_the_first_block_of_a_group_failing_leaves_nothing_of_it_to_the_blocks_waiting(tmp_path):
    db = Database(str(tmp_path / "database.yaml"))
    slow_saves(db)
    inside, others_started = threading.Event(), threading.Event()
    errors = []

    def first():
        try:
            with db.transaction() as data:
                data.setdefault("marks", {})["first"] = 1
                inside.set()
                others_started.wait(5)
                threading.Event().wait(0.2)     # the others are waiting for the block lock by now
                raise RuntimeError("first failed")
        except RuntimeError as e:
            errors.append(e)

    def other(i):
        with db.transaction() as data:
            data.setdefault("marks", {})[f"t{i}"] = i

    t = threading.Thread(target=first)
    t.start()
    inside.wait(5)
    threads = [threading.Thread(target=other, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    others_started.set()
    for th in [t, *threads]:
        th.join(30)
    assert len(errors) == 1
    assert on_disk(db)["marks"] == {f"t{i}": i for i in range(4)}
