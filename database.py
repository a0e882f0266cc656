"""The YAML store (``database.yaml``): shape checks, locking, atomic writes, ID counters, a cache.

Every read-modify-write runs inside ``Database.transaction()``: an exclusive
``flock`` on ``<path>.lock`` (so several menus and scripts can share one
file), a fresh read of the file, the change, then an atomic save (temporary
file in the same folder, fsync, rename, fsync of the folder).  A process
killed at any instant leaves either the old or the new file, never a torn
one.  Reads outside a transaction see the last complete save.

The file stays plain YAML for instructors: users, then slices keyed by their
ID, then the ID counter, in block style under a header comment.  Its shape is
checked on every parse and before every save: a damaged file (a hand edit
gone wrong) is refused with the key path and the line, and never written
over.  Keys the program does not know are kept.

Speed at class size (SPEC §12).  Parsing a 1 MB YAML file costs about half a
second, so the store parses a given content once:

* every read hashes the file's bytes (SHA-256, about 1 ms per MB); the
  content, not the inode or mtime, is what identifies a version, so any hand
  edit (same size, same second, written in place) is seen by the next read;
* the last version parsed is kept in memory (as a pickle, so each read gets
  a private copy quickly);
* ``<path>.cache`` beside it holds that version as JSON with the YAML's
  SHA-256 (and its own): other processes load it in milliseconds, and trust
  it only while both hashes match.  It is readable by whoever may read the
  YAML (it holds the same password hashes) and by nobody more; a cache file
  not owned by the YAML's owner, or writable by others, is ignored.
  Deleting it is always safe;
* saves write the YAML with ``yamltext.fast_emit`` (the same text as
  ``yaml.dump``) and refresh both caches while the lock is held;
* a YAML the caches do not know (a hand edit) is read by
  ``yamltext.fast_load`` when it keeps the form the store writes (4x faster
  than PyYAML), else by PyYAML; the cyclic GC is paused while either builds it.

``Database(path, fast=False)`` turns all of this off (parse and ``yaml.dump``
every time, as before); bench/store.py measures both in one run.
"""
from __future__ import annotations

import contextlib
import copy
import fcntl
import gc
import hashlib
import json
import os
import pickle
import re
import tempfile
import threading
import time
from typing import Any, Iterator, Optional

import yaml

import naming
from store.config import yaml_error_where
from store.yamltext import NotSimple, fast_emit, fast_load, line_of, reference_dump

try:  # libyaml is much faster on a big class's database
    from yaml import CSafeLoader as _Loader
except ImportError:  # pragma: no cover - depends on how PyYAML was built
    from yaml import SafeLoader as _Loader  # type: ignore

HEADER = ("# Cloud Repositorio database. Written by the program (atomic saves under a lock):\n"
          "# read it freely; edit it by hand only while no menu is running.\n")
CACHE_HEADER = ("# Cloud Repositorio: a copy of database.yaml for fast reads, trusted only while the hashes "
                "below match; safe to delete\n")
CACHE_SUFFIX = ".cache"


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


# --- the documented shape (seed 001, models.py), one line per key -------------------------

def _describe(value: Any) -> str:
    """How a wrong value reads in a message: ``a list``, ``the text 'ten'``, ``null``..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the text {value[:40] + '...' if len(value) > 40 else value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


Problem = Optional[tuple]   # (path below the checked value, "must be ..., not ...") or None


class _Walk:
    """What one check of a whole database found besides problems."""

    __slots__ = ("plain",)

    def __init__(self):
        self.plain = True   # every unknown key's value survives JSON unchanged


class _Scalar:
    """A scalar of given Python types, optionally null, within bounds or matching a pattern."""

    def __init__(self, types: tuple, expected: str, nullable: bool = False, low: Optional[int] = None,
                 high: Optional[int] = None, pattern: Optional[str] = None):
        self.types, self.expected, self.nullable = types, expected, nullable
        self.low, self.high = low, high
        self.pattern = re.compile(pattern) if pattern else None
        self.bounded = low is not None or high is not None or pattern is not None

    def problem(self, value: Any, walk: _Walk) -> Problem:
        if type(value) in self.types:
            if not self.bounded or self._within(value):
                return None
        elif value is None and self.nullable:
            return None
        return (), f"must be {self.expected}, not {_describe(value)}"

    def _within(self, value: Any) -> bool:
        return ((self.low is None or value >= self.low) and (self.high is None or value <= self.high)
                and (self.pattern is None or bool(self.pattern.fullmatch(value))))


class _Record:
    """A mapping with documented keys (required or not); other keys are allowed and kept."""

    def __init__(self, expected: str, fields: dict, nullable: bool = False):
        self.expected, self.nullable = expected, nullable
        self.fields = tuple((key, required, spec.problem) for key, (required, spec) in fields.items())
        self.known = frozenset(fields)

    def problem(self, value: Any, walk: _Walk) -> Problem:
        if type(value) is not dict:
            if value is None and self.nullable:
                return None
            return (), f"must be {self.expected}, not {_describe(value)}"
        present = 0
        for key, required, check in self.fields:
            if key in value:
                present += 1
                found = check(value[key], walk)
                if found:
                    return (key, *found[0]), found[1]
            elif required:
                return (), f"has no {key} (it must be {self.expected})"
        if present != len(value) and walk.plain:
            try:
                walk.plain = all(type(k) is str and _plain(v) for k, v in value.items() if k not in self.known)
            except RecursionError:      # data that contains itself
                walk.plain = False
        return None


class _ListOf:
    def __init__(self, expected: str, item):
        self.expected, self.item = expected, item.problem

    def problem(self, value: Any, walk: _Walk) -> Problem:
        if type(value) is not list:
            return (), f"must be {self.expected}, not {_describe(value)}"
        check = self.item
        for i, item in enumerate(value):
            found = check(item, walk)
            if found:
                return (i, *found[0]), found[1]
        return None


class _Table:
    """A mapping of name -> record, each record naming its own key in ``id_field``."""

    def __init__(self, expected: str, record: _Record, id_field: str, key_type: tuple):
        self.expected, self.record, self.id_field, self.key_type = expected, record, id_field, key_type

    def problem(self, value: Any, walk: _Walk) -> Problem:
        if type(value) is not dict:
            return (), f"must be {self.expected}, not {_describe(value)}"
        check, id_field = self.record.problem, self.id_field
        for key, item in value.items():
            if type(key) not in self.key_type:
                return (key,), f"is not a valid key: {self.expected}"
            found = check(item, walk)
            if found:
                return (key, *found[0]), found[1]
            if str(item[id_field]) != str(key):
                return (key, id_field), f"must be {key} (its key), not {_describe(item[id_field])}"
        return None


def _one_of(types: tuple, expected: str, **kw) -> tuple:
    """(required?, spec) for an optional key."""
    return False, _Scalar(types, expected, **kw)


def _required(types: tuple, expected: str, **kw) -> tuple:
    return True, _Scalar(types, expected, **kw)


_INT, _STR, _NUM = (int,), (str,), (int, float)
_VLAN = {"low": 1, "high": naming.MAX_VLAN}
_IFNAME = {"pattern": r"eth[0-9]+"}

INTERFACE = _Record("an interface (name, vlan_id, mac, ip_config, link_id)", {
    "name": _required(_STR, "an interface name (eth0, eth1...)", **_IFNAME),
    "vlan_id": _one_of(_INT, "a VLAN (1-4094) or null", nullable=True, **_VLAN),
    "mac": _one_of(_STR, "a MAC address (text) or null", nullable=True),
    "ip_config": (False, _Record("a mapping (ip, cidr, gateway) or null", {
        "ip": _one_of(_STR, "an address (text)"),
        "cidr": _one_of(_STR, "a network (text)"),
        "gateway": _one_of(_STR, "an address (text)"),
    }, nullable=True)),
    "link_id": _one_of(_INT, "a link ID or null", nullable=True, low=0),
})
_STAMP = {"pattern": r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"}
SNAPSHOT = _Record("a snapshot (name, created_at, size_bytes)", {
    "name": _required(_STR, "a snapshot name (1-32 characters: a letter first, then letters, digits, '-' or '_')",
                      pattern=naming.NAME_RE.pattern),
    "created_at": _one_of(_STR, "a time (YYYY-mm-dd HH:MM:SS)", **_STAMP),
    "size_bytes": _one_of(_INT, "a size in bytes (a whole number)", low=0),
})
VM_RECORD = _Record("a VM (vm_id, name, owner, worker_ip, ...)", {
    "vm_id": _required(_INT, "a VM ID (a whole number)", low=0),
    "name": _required(_STR, "a name (text)"),
    "owner": _one_of(_STR, "a user name or null", nullable=True),
    "worker_ip": _one_of(_STR, "an address (text) or null", nullable=True),
    "vnc_port": _one_of(_INT, "a port number or null", nullable=True, low=1, high=65535),
    "status": _one_of(_STR, "a status (text)"),
    "pid": _one_of((str, int), "a process ID or null", nullable=True),
    "qcow_image": _one_of(_STR, "a path (text) or null", nullable=True),
    "flavor": (False, _Record("a flavor (cores, ram_gb, disk_gb, image) or null", {
        "cores": _one_of(_INT, "a number of cores", low=1),
        "ram_gb": _one_of(_NUM, "a size in GB", low=0),
        "disk_gb": _one_of(_NUM, "a size in GB", low=0),
        "image": _one_of(_STR, "a path (text)"),
    }, nullable=True)),
    "interfaces": (False, _ListOf("a list of interfaces", INTERFACE)),
    "snapshots": (False, _ListOf("a list of snapshots", SNAPSHOT)),
})
LINK = _Record("a link (link_id, vlan_id, vm1_id, vm1_interface, vm2_id, vm2_interface)", {
    "link_id": _required(_INT, "a link ID (a whole number)", low=0),
    "vlan_id": _required(_INT, "a VLAN (1-4094)", **_VLAN),
    "vm1_id": _required(_INT, "a VM ID", low=0),
    "vm1_interface": _required(_STR, "an interface name (eth1...)", **_IFNAME),
    "vm2_id": _required(_INT, "a VM ID", low=0),
    "vm2_interface": _required(_STR, "an interface name (eth1...)", **_IFNAME),
})
NETWORK = _Record("a network (vlan_id, cidr, gateway_ip, ...)", {
    "vlan_id": _required(_INT, "a VLAN (1-4094)", **_VLAN),
    "cidr": _required(_STR, "a network (text)"),
    "gateway_ip": _required(_STR, "an address (text)"),
    "dhcp_enabled": _one_of((bool,), "true or false"),
    "dhcp_range": _one_of(_STR, "a range (text) or null", nullable=True),
    "status": _one_of(_STR, "a status (text)"),
})
SLICE = _Record("a slice (slice_id, owner, vms, links, ...)", {
    "slice_id": _required(_INT, "a slice ID (a whole number)", low=0),
    "owner": _one_of(_STR, "a user name (text)"),
    "topology_type": _one_of(_STR, "a topology type (text)"),
    "vlan_pool_start": _one_of(_INT, "a VLAN (1-4094)", **_VLAN),
    "vlan_pool_end": _one_of(_INT, "a VLAN (1-4094)", **_VLAN),
    "vlan_pool_used": (False, _ListOf("a list of VLANs", _Scalar(_INT, "a VLAN (1-4094)", **_VLAN))),
    "status": _one_of(_STR, "a status (text)"),
    "vms": (False, _ListOf("a list of VMs", VM_RECORD)),
    "links": (False, _ListOf("a list of links", LINK)),
    "networks": (False, _ListOf("a list of networks", NETWORK)),
    "name": _one_of(_STR, "a name (text) or null", nullable=True),
    "lease_end": _one_of(_STR, "a time (YYYY-mm-dd HH:MM:SS) or null", nullable=True, **_STAMP),
})
USER = _Record("a user (username, password_hash, quota_vms, used_vms, slices, role)", {
    "username": _required(_STR, "a user name (text)"),
    "password_hash": _one_of(_STR, "a password hash (text)"),
    "quota_vms": _one_of(_INT, "a whole number, 0 or more", low=0),
    "used_vms": _one_of(_INT, "a whole number, 0 or more", low=0),
    "slices": (False, _ListOf("a list of slice IDs", _Scalar(_INT, "a slice ID", low=0))),
    "role": _one_of(_STR, "a role (text)"),
    "disk_quota_mib": _one_of(_INT, "a whole number of MiB, 0 or more, or null", nullable=True, low=0),
    "max_lease_days": _one_of(_INT, "a whole number of days (1-365) or null", nullable=True, low=1, high=365),
})
DATABASE = _Record("a mapping of users, slices and next_vm_id", {
    "users": (True, _Table("a mapping of user name to user", USER, "username", _STR)),
    "slices": (False, _Table("a mapping of slice ID to slice", SLICE, "slice_id", (str, int))),
    "next_vm_id": _required(_INT, "the next free ID (a whole number)", low=0),
})


def _dotted(path: tuple) -> str:
    """``slices.1000.vms[2].name``."""
    out = ""
    for step in path:
        out += f"[{step}]" if isinstance(step, int) and not isinstance(step, bool) and out else f".{step}"
    return out.lstrip(".")


def check_shape(data: Any) -> tuple:
    """(problem, plain): ``problem`` is (key path, sentence) of the first way ``data`` differs
    from the documented shape, or None; ``plain`` says whether JSON keeps ``data`` exactly."""
    if type(data) is dict and data.get("slices") is None and "slices" in data:
        data = dict(data, slices={})
    walk = _Walk()
    found = DATABASE.problem(data, walk)
    if not found:
        return None, walk.plain
    path, text = found
    return (path, f"{_dotted(path) or 'the file'} {text}"), False


def shape_problem(data: Any) -> Optional[tuple]:
    """(key path, sentence) of the first way ``data`` differs from the documented shape, or None."""
    return check_shape(data)[0]


_ORDER = ("users", "slices", "next_vm_id")


def _normalised(data: dict) -> dict:
    """The documented spelling of a valid database (checked first): slice keys are text, no slices
    is ``{}``, users then slices then next_vm_id come first (other keys follow, kept)."""
    slices = data.get("slices")
    if slices is None:
        slices = {}
    elif any(type(k) is not str for k in slices):
        slices = {str(k): v for k, v in slices.items()}
    data["slices"] = slices
    if tuple(data)[:3] != _ORDER:
        rest = {k: v for k, v in data.items() if k not in _ORDER}
        ordered = {k: data[k] for k in _ORDER}
        data.clear()
        data.update(ordered)
        data.update(rest)
    return data


def _plain(value: Any) -> bool:
    """True when JSON keeps ``value`` exactly (what a YAML parse of its dump gives back)."""
    kind = type(value)
    if kind is dict:
        return all(type(k) is str and _plain(v) for k, v in value.items())
    if kind is list:
        return all(_plain(v) for v in value)
    return kind in (str, int, float, bool) or value is None


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic GC while a big tree of new containers is built (it makes big parses superlinear)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class _Version:
    """One parsed content of the file: its SHA-256, a pickle of the data, the data (never handed out)."""

    def __init__(self, digest: str, blob: bytes):
        self.digest = digest
        self.blob = blob
        self._data: Optional[dict] = None

    def copy(self) -> dict:
        with _gc_paused():
            return pickle.loads(self.blob)

    @property
    def data(self) -> dict:
        if self._data is None:
            self._data = self.copy()
        return self._data


def _sha256(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


class Database:
    """``database.yaml`` with a cross-process lock, atomic saves and a parse cache."""

    def __init__(self, path: str = "database.yaml", *, fast: bool = True):
        self.name = path
        self.path = os.path.abspath(path)
        self.lock_path = self.path + ".lock"
        self.cache_path = self.path + CACHE_SUFFIX
        self.fast = fast
        self.last_lock_held_s = 0.0   # how long the last outermost transaction held the lock (wall clock)
        self.last_lock_cpu_s = 0.0    # and the CPU time this process used meanwhile (bench/store.py)
        self._version: Optional[_Version] = None
        self._thread_lock = threading.RLock()
        self._local = threading.local()
        if not os.path.exists(self.path):
            with self.transaction():
                pass

    # --- reading ---------------------------------------------------------------------

    def _read_bytes(self) -> Optional[bytes]:
        try:
            with open(self.path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise DatabaseError(f"cannot read {self.name}: {e}") from e

    def _load_yaml(self, raw: bytes) -> Any:
        """The YAML's data: read directly when it has the form the store writes, else by PyYAML."""
        with _gc_paused():
            if self.fast:
                try:
                    return fast_load(raw.decode("utf-8"))
                except (NotSimple, UnicodeDecodeError):
                    pass
            return yaml.load(raw, Loader=_Loader)

    def _parse(self, raw: bytes) -> tuple:
        """(data, plain) of the file's bytes, checked; DatabaseError names the key path and line."""
        try:
            data = self._load_yaml(raw)
        except yaml.YAMLError as e:
            raise DatabaseError(f"{self.name} is not valid YAML{yaml_error_where(e)}") from e
        if data is None:
            return default_data(), True
        found, plain = check_shape(data)
        if found:
            path, text = found
            line = line_of(raw, path) if path else None
            where = f"{self.name} line {line}" if line else self.name
            raise DatabaseError(f"{where}: {text}")
        return _normalised(data), plain

    def _read_file(self, remember: bool = True) -> dict:
        """A private copy of the file's data (the defaults when it is missing or empty).

        ``remember=False`` (a transaction, whose save remembers the new
        version) skips keeping this one in memory."""
        raw = self._read_bytes()
        if raw is None:
            return default_data()
        if not self.fast:
            return self._parse(raw)[0]
        digest = _sha256(raw)
        version = self._version
        if version is not None and version.digest == digest:
            return version.copy()
        if not remember:
            return self._load_version(raw, digest)
        return self._current(raw, digest).copy()

    def _load_version(self, raw: bytes, digest: str) -> dict:
        """New data for these bytes: from the cache file, or parsed (and then cached)."""
        data = self._read_cache(digest)
        if data is None:
            data, plain = self._parse(raw)
            if plain:
                self._write_cache(digest, data)
        return data

    def _current(self, raw: bytes, digest: Optional[str] = None) -> _Version:
        """The version of these bytes in memory: kept from before, or loaded now."""
        digest = digest or _sha256(raw)
        version = self._version
        if version is None or version.digest != digest:
            data = self._load_version(raw, digest)
            version = _Version(digest, pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL))
            version._data = data
            self._version = version
        return version

    def _shared(self) -> dict:
        """The current data, not to be changed: the transaction's own, or the cached version's."""
        current = getattr(self._local, "data", None)
        if current is not None:
            return current
        raw = self._read_bytes()
        if raw is None:
            return default_data()
        if not self.fast:
            return self._parse(raw)[0]
        return self._current(raw).data

    # --- the cache file ----------------------------------------------------------------

    def _read_cache(self, digest: str) -> Optional[dict]:
        """The cache file's data when it was made from exactly these YAML bytes (else None)."""
        try:
            with open(self.cache_path, "rb") as f:
                if not self._cache_file_trusted(os.fstat(f.fileno())):
                    return None
                text = f.read()
            header, hashes, body = text.split(b"\n", 2)
            yaml_digest, json_digest = hashes.decode().split()
            if yaml_digest != digest or json_digest != _sha256(body):
                return None
            with _gc_paused():
                data = json.loads(body)
        except (OSError, ValueError, UnicodeDecodeError):
            return None
        return data if type(data) is dict else None

    def _cache_file_trusted(self, st: os.stat_result) -> bool:
        """Only a cache file of the YAML's owner that nobody else may write: whoever could plant
        one could make every menu believe anything (its hashes are easy to make)."""
        try:
            owner = os.stat(self.path).st_uid
        except OSError:
            return False
        return st.st_uid == owner and not st.st_mode & 0o022

    def _write_cache(self, digest: str, data: dict) -> None:
        """Best effort: a cache file for these YAML bytes (the data must be plain: see check_shape)."""
        try:
            body = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
        except (ValueError, UnicodeError):
            return
        text = CACHE_HEADER.encode() + f"{digest} {_sha256(body)}\n".encode() + body
        folder = os.path.dirname(self.cache_path)
        tmp = None
        try:
            fd, tmp = tempfile.mkstemp(prefix=os.path.basename(self.cache_path) + ".tmp.", dir=folder)
            with os.fdopen(fd, "wb") as f:
                f.write(text)
            os.chmod(tmp, os.stat(self.path).st_mode & 0o644)
            os.replace(tmp, self.cache_path)
        except OSError:
            if tmp:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)

    # --- writing ---------------------------------------------------------------------

    def _bytes_of(self, data: dict) -> tuple:
        """(file bytes, plain) for data about to be saved; DatabaseError if it is not the documented shape."""
        if type(data) is not dict:
            raise DatabaseError(f"refusing to save {self.name}: the data must be a mapping")
        found, plain = check_shape(data)
        if found:
            raise DatabaseError(f"refusing to save {self.name}: {found[1]}")
        _normalised(data)
        try:
            text = HEADER + (fast_emit(data) if self.fast else reference_dump(data))
            return text.encode("utf-8"), plain
        except (yaml.YAMLError, UnicodeError) as e:
            raise DatabaseError(f"refusing to save {self.name}: {e}") from e

    def _write_file(self, data: dict) -> None:
        raw, plain = self._bytes_of(data)
        self._replace_file(raw)
        if self.fast:
            self._remember(_sha256(raw), data, plain)

    def _remember(self, digest: str, data: dict, plain: bool) -> None:
        """After a save: the new version in memory and in the cache file.

        Data that JSON would change (non-text keys, dates, sets...) is not
        remembered: the next read parses the YAML, so every reader sees what
        the file says."""
        self._version = None
        if plain:
            self._version = _Version(digest, pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL))
            self._write_cache(digest, data)

    def _replace_file(self, raw: bytes) -> None:
        """Atomic save: a temporary file in the same folder, fsync, rename, fsync of the folder."""
        folder = os.path.dirname(self.path)
        try:
            fd, tmp = tempfile.mkstemp(prefix=os.path.basename(self.path) + ".tmp.", dir=folder)
        except OSError as e:
            raise DatabaseError(f"cannot write {self.name}: {e}") from e
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(raw)
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
                locked_at, cpu_at = time.perf_counter(), time.process_time()
                self._local.depth = 1
                try:
                    yield
                finally:
                    self._local.depth = 0
                    self.last_lock_held_s = time.perf_counter() - locked_at
                    self.last_lock_cpu_s = time.process_time() - cpu_at
                    fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[dict]:
        """Lock, read, yield the data to change, save atomically on success.

        An exception inside the block discards the change.  Nested
        transactions in one thread share the outer one.  A damaged file
        raises DatabaseError before anything is written.
        """
        with self._locked():
            outer = getattr(self._local, "data", None)
            if outer is not None:
                yield outer
                return
            data = self._read_file(remember=False)
            self._local.data = data
            try:
                yield data
                self._write_file(data)
            finally:
                self._local.data = None

    def load(self) -> dict:
        """A snapshot of the whole database, the caller's to change (a copy inside a transaction too)."""
        current = getattr(self._local, "data", None)
        if current is None:
            return self._read_file()
        try:
            return pickle.loads(pickle.dumps(current, protocol=pickle.HIGHEST_PROTOCOL))
        except (pickle.PicklingError, TypeError, AttributeError):
            return copy.deepcopy(current)

    # --- documented API ----------------------------------------------------

    def get_next_vm_id(self) -> int:
        """Take the next ID of the one counter shared by slices and VMs."""
        with self.transaction() as data:
            vm_id = int(data.get("next_vm_id", naming.FIRST_ID))
            data["next_vm_id"] = vm_id + 1
            return vm_id

    def get_user(self, username: str) -> Optional[dict]:
        return copy.deepcopy(self._shared()["users"].get(username))

    def all_users(self) -> dict:
        return copy.deepcopy(self._shared()["users"])

    def add_user(self, user: dict) -> None:
        with self.transaction() as data:
            data["users"][user["username"]] = copy.deepcopy(user)

    def update_user(self, username: str, user: dict) -> None:
        with self.transaction() as data:
            data["users"][username] = copy.deepcopy(user)

    def get_slice(self, slice_id) -> Optional[dict]:
        return copy.deepcopy(self._shared()["slices"].get(str(slice_id)))

    def all_slices(self) -> dict:
        return self.load()["slices"]

    def get_all_slices_for_user(self, username: str) -> list[dict]:
        return copy.deepcopy([s for s in self._shared()["slices"].values() if s.get("owner") == username])

    def add_slice(self, slice_dict: dict) -> None:
        with self.transaction() as data:
            data["slices"][str(slice_dict["slice_id"])] = copy.deepcopy(slice_dict)

    def update_slice(self, slice_id, slice_dict: dict) -> None:
        with self.transaction() as data:
            data["slices"][str(slice_id)] = copy.deepcopy(slice_dict)

    def delete_slice(self, slice_id) -> None:
        with self.transaction() as data:
            data["slices"].pop(str(slice_id), None)
