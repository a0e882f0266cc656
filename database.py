"""The YAML store (``database.yaml``): locking, atomic writes, ID counters.

Every read-modify-write runs inside ``Database.transaction()``: an exclusive
``flock`` on ``<path>.lock`` (so several menus and scripts can share one
file), a fresh read of the file, the change, then an atomic save (temporary
file in the same folder, fsync, rename, fsync of the folder).  A process
killed at any instant leaves either the old or the new file, never a torn
one.  Reads outside a transaction see the last complete save.

The file stays plain YAML for instructors: users, then slices keyed by their
ID, then the ID counter.
"""
from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import os
import tempfile
import threading
from typing import Iterator, Optional

import yaml

try:  # libyaml is much faster on a big class's database
    from yaml import CSafeDumper as _Dumper
    from yaml import CSafeLoader as _Loader
except ImportError:  # pragma: no cover - depends on how PyYAML was built
    from yaml import SafeDumper as _Dumper  # type: ignore
    from yaml import SafeLoader as _Loader  # type: ignore

import naming
from config import yaml_error_where

HEADER = ("# Cloud Repositorio database. Written by the program (atomic saves under a lock):\n"
          "# read it freely; edit it by hand only while no menu is running.\n")


def _legacy_hash(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


def default_data() -> dict:
    """A new database: the two documented accounts and the ID counter."""
    return {
        "users": {
            "admin": {"username": "admin", "password_hash": _legacy_hash("admin"),
                      "quota_vms": 10, "used_vms": 0, "slices": [], "role": "admin"},
            "student": {"username": "student", "password_hash": _legacy_hash("student"),
                        "quota_vms": 6, "used_vms": 0, "slices": [], "role": "student"},
        },
        "slices": {},
        "next_vm_id": naming.FIRST_ID,
    }


class DatabaseError(Exception):
    """The database file cannot be read or written."""


class Database:
    """``database.yaml`` with a cross-process lock and atomic saves."""

    def __init__(self, path: str = "database.yaml"):
        self.path = os.path.abspath(path)
        self.lock_path = self.path + ".lock"
        self._thread_lock = threading.RLock()
        self._local = threading.local()
        if not os.path.exists(self.path):
            with self.transaction():
                pass

    # --- low level ---------------------------------------------------------

    def _read_file(self) -> dict:
        try:
            with open(self.path, encoding="utf-8") as f:
                data = yaml.load(f, Loader=_Loader)
        except FileNotFoundError:
            return default_data()
        except OSError as e:
            raise DatabaseError(f"cannot read {self.path}: {e}") from e
        except yaml.YAMLError as e:
            raise DatabaseError(f"{self.path} is not valid YAML{yaml_error_where(e)}") from e
        if data is None:
            return default_data()
        if not isinstance(data, dict):
            raise DatabaseError(f"{self.path} is not a mapping")
        data.setdefault("users", {})
        data.setdefault("slices", {})
        data.setdefault("next_vm_id", naming.FIRST_ID)
        data["slices"] = {str(k): v for k, v in (data["slices"] or {}).items()}
        data["users"] = data["users"] or {}
        return data

    def _write_file(self, data: dict) -> None:
        folder = os.path.dirname(self.path)
        text = HEADER + yaml.dump(data, Dumper=_Dumper, default_flow_style=False,
                                  sort_keys=False, allow_unicode=True)
        fd, tmp = tempfile.mkstemp(prefix=os.path.basename(self.path) + ".tmp.", dir=folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.chmod(tmp, os.stat(self.path).st_mode & 0o777)
            except FileNotFoundError:
                os.chmod(tmp, 0o644)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._thread_lock:
            depth = getattr(self._local, "depth", 0)
            if depth:
                self._local.depth = depth + 1
                try:
                    yield
                finally:
                    self._local.depth -= 1
                return
            try:
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise DatabaseError(f"cannot open lock file {self.lock_path}: {e}") from e
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._local.depth = 1
                try:
                    yield
                finally:
                    self._local.depth = 0
                    fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[dict]:
        """Lock, read, yield the data to change, save atomically on success.

        An exception inside the block discards the change.  Nested
        transactions in one thread share the outer one.
        """
        with self._locked():
            outer = getattr(self._local, "data", None)
            if outer is not None:
                yield outer
                return
            data = self._read_file()
            self._local.data = data
            try:
                yield data
                self._write_file(data)
            finally:
                self._local.data = None

    def load(self) -> dict:
        """A snapshot of the whole database (a deep copy inside a transaction)."""
        current = getattr(self._local, "data", None)
        if current is not None:
            return copy.deepcopy(current)
        return self._read_file()

    # --- documented API ----------------------------------------------------

    def get_next_vm_id(self) -> int:
        """Take the next ID of the one counter shared by slices and VMs."""
        with self.transaction() as data:
            vm_id = int(data.get("next_vm_id", naming.FIRST_ID))
            data["next_vm_id"] = vm_id + 1
            return vm_id

    def get_user(self, username: str) -> Optional[dict]:
        return self.load()["users"].get(username)

    def all_users(self) -> dict:
        return self.load()["users"]

    def add_user(self, user: dict) -> None:
        with self.transaction() as data:
            data["users"][user["username"]] = copy.deepcopy(user)

    def update_user(self, username: str, user: dict) -> None:
        with self.transaction() as data:
            data["users"][username] = copy.deepcopy(user)

    def get_slice(self, slice_id) -> Optional[dict]:
        return self.load()["slices"].get(str(slice_id))

    def all_slices(self) -> dict:
        return self.load()["slices"]

    def get_all_slices_for_user(self, username: str) -> list[dict]:
        return [s for s in self.all_slices().values() if s.get("owner") == username]

    def add_slice(self, slice_dict: dict) -> None:
        with self.transaction() as data:
            data["slices"][str(slice_dict["slice_id"])] = copy.deepcopy(slice_dict)

    def update_slice(self, slice_id, slice_dict: dict) -> None:
        with self.transaction() as data:
            data["slices"][str(slice_id)] = copy.deepcopy(slice_dict)

    def delete_slice(self, slice_id) -> None:
        with self.transaction() as data:
            data["slices"].pop(str(slice_id), None)
