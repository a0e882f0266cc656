"""The site key (every VM password derives from it): made once, atomically, even by many sessions at once."""
from __future__ import annotations

import os
import stat
import threading

import pytest

from usecases import vm_access
from usecases.vm_access import CredentialsError, load_or_create_key


def test_a_new_key_is_private_and_the_same_at_every_read(tmp_path):
    path = str(tmp_path / "database.yaml.key")
    key = load_or_create_key(path)
    assert len(key) == vm_access.KEY_BYTES and load_or_create_key(path) == key
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert os.listdir(tmp_path) == ["database.yaml.key"]  # no temporary file left


def test_a_session_reading_while_another_writes_the_key_never_sees_half_of_it(tmp_path, monkeypatch):
    """A second session asks for the key at the worst moment: while the first is writing it (the
    first deploys of a class through one service hit this: "the key file ... is damaged (too short)")."""
    path = str(tmp_path / "database.yaml.key")
    real_urandom, seen, busy = os.urandom, [], []

    def urandom_with_a_reader_meanwhile(n):  # the first session is about to write its key
        if not busy:
            busy.append(1)
            seen.append(load_or_create_key(path))   # the other session asks now
        return real_urandom(n)

    monkeypatch.setattr(vm_access.os, "urandom", urandom_with_a_reader_meanwhile)
    first = load_or_create_key(path)
    assert seen == [first]                           # one key for both: the one that was published first
    assert sorted(os.listdir(tmp_path)) == ["database.yaml.key"]


def test_many_sessions_making_the_key_at_once_all_get_the_one_key(tmp_path):
    path = str(tmp_path / "database.yaml.key")
    keys, errors, start = [], [], threading.Barrier(16)

    def session():
        start.wait()
        try:
            keys.append(load_or_create_key(path))
        except CredentialsError as e:
            errors.append(e)

    threads = [threading.Thread(target=session) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(keys) == 16 and len(set(keys)) == 1


def test_a_damaged_key_is_refused_not_replaced(tmp_path):
    path = tmp_path / "database.yaml.key"
    path.write_bytes(b"short")
    path.chmod(0o600)
    with pytest.raises(CredentialsError, match="damaged"):
        load_or_create_key(str(path))
    assert path.read_bytes() == b"short"
