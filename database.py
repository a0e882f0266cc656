"""The YAML store (``database.yaml``): the design card's ``Database``, over the ``store`` package.

Every read-modify-write runs inside ``Database.transaction()``: an exclusive
``flock`` on ``<path>.lock`` (so several menus, scripts and the manager
service can share one file), a fresh read of the file, the change, then an
atomic save (temporary file in the same folder, fsync, rename, fsync of the
folder; store/file.py).  A process killed at any instant leaves either the
old or the new file, never a torn one.  Reads outside a transaction see the
last complete save.  **Group commit** (the manager service, where many
sessions change the file at once): transactions of one process run one at a
time; those that queue up while one runs are saved together by one save
(``GROUP_MAX`` at most), and each returns only once its change is on disk
(a class of 20 deploying under the guests' disk load waited seconds for 40
fsyncs in turn).

The file stays plain YAML for instructors: users, then slices keyed by their
ID, then the ID counter, in block style under a header comment.  Its shape is
checked on every parse and before every save (store/shape.py, store/format.py):
a damaged file (a hand edit gone wrong: a wrong value, a key given twice,
an anchor or alias, a control character in a name) is refused with the key
path and the line, and never written over.  Keys the program does not know
are kept.

**Changes the product did not make** are taken in or refused with a
message, never silently overwritten.  Right before a save, under the lock,
the file's identity and SHA-256 are compared with what the transaction
read: an edit saved in between aborts that save, and the transaction's own
changes are re-applied on the new content (both kept when they touched
different keys; refused, the edit kept, when both changed the same key),
re-checked up to ``SAVE_ATTEMPTS`` times (store/edits.py).  An edit that
removes what the product made (an editor saving a stale copy) is what the
file says from then on: the product works with it, and logs and tells the
admin what disappeared.

**IDs**: one counter for slices and VMs (``get_next_vm_id``); an ID in use is
never handed out again, whatever ``next_vm_id`` says: a counter behind the
IDs in use is corrected, logged and reported to the admin (store/ids.py).
Bare legacy password hashes are wrapped in scrypt the first time a process
that may write the file reads it (store/repairs.py).

Speed at class size (SPEC §12): every read hashes the file's bytes; the last
version parsed is kept in memory, and ``<path>.cache`` beside it lets other
processes skip the parse (store/cache.py).  ``Database(path, fast=False)``
turns the caches and the fast reader and writer off (parse and
``yaml.dump`` every time, as before); bench/store.py measures both in one run.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import os
import pickle
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator, Optional

from store import edits, repairs
from store.cache import CACHE_HEADER, CACHE_SUFFIX, CacheFile, Version
from store.file import DatabaseError, LockedFile, Snapshot, sha256
from store.format import HEADER, default_data, emit, parse
from store.ids import take_id
from store.shape import check_shape, shape_problem

__all__ = ["CACHE_HEADER", "CACHE_SUFFIX", "HEADER", "Database", "DatabaseError", "check_shape", "default_data",
           "shape_problem"]

log = logging.getLogger("cloudrepo.store")

GROUP_MAX = 64         # changes of waiting transactions one save writes at most (group commit)
SAVE_ATTEMPTS = 3      # a save that keeps finding the file changed by hand gives up after this many
EMPTY_WAITS, EMPTY_WAIT_S = 20, 0.05   # an empty file that had content: how long to wait for its editor
MAX_NOTICES = 20


class _Ticket:
    """A transaction waiting for the save of its group."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self._error: Optional[str] = None

    def finish(self, error: Optional[BaseException]) -> None:
        self._error = None if error is None else str(error)
        self._done.set()

    def result(self) -> None:
        """Return once saved; DatabaseError (each its own) when the save failed."""
        self._done.wait()
        if self._error is not None:
            raise DatabaseError(self._error)


@dataclass
class _Group:
    """Transactions whose changes one save writes: the file's lock, what it held, the data since."""

    hold: tuple
    snap: Snapshot
    data: dict
    saved: Optional[tuple] = None           # (bytes, plain) of ``data``
    members: list = field(default_factory=list)


class Database:
    """``database.yaml`` with a cross-process lock, atomic saves, ID counters and a parse cache."""

    def __init__(self, path: str = "database.yaml", *, fast: bool = True):
        self.name = path
        self.path = os.path.abspath(path)
        self.fast = fast
        self._file = LockedFile(self.path, path)
        self._cache = CacheFile(self._file)
        self.lock_path = self._file.lock_path
        self.cache_path = self._cache.path
        self._version: Optional[Version] = None
        self._local = threading.local()
        self._notices: list = []
        self._id_floor = 0         # the highest counter the product knew: a hand edit never puts it back
        self._had_content = False  # this process saw the file hold a database (an empty file is then no reset)
        self._notices_lock = threading.Lock()
        self._block_lock = threading.Lock()     # one transaction block at a time in this process
        self._waiting_lock = threading.Lock()
        self._waiting = 0                       # transactions waiting for the block lock
        self._group: Optional[_Group] = None    # changes made, not saved yet (the file stays locked)
        if not os.path.exists(self.path):
            with self.transaction():
                pass

    @property
    def last_lock_held_s(self) -> float:
        """How long the last outermost transaction held the lock (wall clock; bench/store.py)."""
        return self._file.last_lock_held_s

    @property
    def last_lock_cpu_s(self) -> float:
        """The CPU time this process used while it held the lock the last time."""
        return self._file.last_lock_cpu_s

    # --- what the admin should know ---------------------------------------------------

    def _notice(self, text: str) -> None:
        log.warning("%s", text)
        with self._notices_lock:
            self._notices = (self._notices + [text])[-MAX_NOTICES:]

    def take_notices(self) -> list:
        """What the store corrected or saw changed by hand since the last call (for the admin), oldest first."""
        with self._notices_lock:
            taken, self._notices = self._notices, []
        return taken

    # --- reading ---------------------------------------------------------------------

    def _read(self, had_content: bool = False) -> Snapshot:
        """The file now.  An empty file where the product knew content is an editor writing it in place
        (truncate, then write): waited for a moment, then refused, never taken as a new database."""
        snap = self._file.read()
        known = had_content or self._had_content or os.path.exists(self.cache_path)
        if snap.raw is None or snap.raw.strip() or not known:
            return snap
        for _ in range(EMPTY_WAITS):
            time.sleep(EMPTY_WAIT_S)
            snap = self._file.read()
            if snap.raw is None or snap.raw.strip():
                return snap
        raise DatabaseError(f"{self.name} is empty (an editor saving it?): nothing was changed; to start a new "
                            f"database, delete {self.name} and {os.path.basename(self.cache_path)}")

    def _parse(self, raw: bytes) -> tuple:
        return parse(raw, self.name, self.fast)

    def _data_of(self, snap: Snapshot, remember: bool) -> dict:
        """A private copy of a read's data (the defaults when there is no file).

        ``remember=False`` (a transaction, whose save remembers the new
        version) keeps nothing in memory and repairs nothing by itself."""
        if snap.raw is None:
            return default_data()
        if not self.fast:
            data = self._parse(snap.raw)[0]
            if remember and self._repaired_now(data):
                return self._parse(self._file.read().raw or b"")[0]
            return data
        version = self._version
        if version is not None and version.digest == snap.digest:
            return version.copy()
        if not remember:
            return self._load_version(snap)
        return self._current(snap).copy()

    def _load_version(self, snap: Snapshot) -> dict:
        """New data for these bytes: from the cache file, or parsed (and then cached)."""
        if not snap.raw.strip():
            return default_data()           # a new database: nothing to cache, nothing it lacks
        self._had_content = True
        data = self._cache.read(snap.digest)
        if data is None:
            data, plain = self._parse(snap.raw)
            self._note_vanished(data)
            if plain:
                self._cache.write(snap.digest, data)
        return data

    def _note_vanished(self, data: dict) -> None:
        """A version the product did not write: say what it lacks of the last version the product knew."""
        before = self._cache.summary()          # the last version any product process wrote or read
        if before is None and self._version is not None:
            before = edits.summary(self._version.data)
        if before and type(before.get("next_vm_id")) is int:
            self._id_floor = max(self._id_floor, before["next_vm_id"])
        for line in edits.vanished(before, edits.summary(data)):
            self._notice(f"{self.name} was changed outside the product: {line}")

    def _current(self, snap: Snapshot) -> Version:
        """The version of these bytes in memory: kept from before, or loaded now (and repaired if it must be)."""
        version = self._version
        if version is None or version.digest != snap.digest:
            data = self._load_version(snap)
            version = self._version = Version(snap.digest, data, keep=True)
            if self._repaired_now(data) and self._version is not None:
                version = self._version
        return version

    def _repaired_now(self, data: dict) -> bool:
        """A version that needs repair, read by a process that may write the file: repair and save it now."""
        if not repairs.needs_repair(data, self._id_floor) or not self._file.may_write():
            return False
        try:
            with self.transaction():
                pass
        except DatabaseError as e:
            log.warning("could not save the corrections of %s: %s", self.name, e)
            return False
        return True

    def _shared(self) -> dict:
        """The current data, not to be changed: the transaction's own, or the cached version's."""
        current = getattr(self._local, "data", None)
        if current is not None:
            return current
        snap = self._read()
        if snap.raw is None:
            return default_data()
        if not self.fast:
            return self._data_of(snap, remember=True)
        return self._current(snap).data

    # --- writing ---------------------------------------------------------------------

    def _bytes_of(self, data: dict) -> tuple:
        """(file bytes, plain) for data about to be saved; DatabaseError if it is not the documented shape."""
        return emit(data, self.name, self.fast)

    def _write_file(self, data: dict, expected: Optional[Snapshot] = None,
                    saved: Optional[tuple] = None) -> Optional[Snapshot]:
        """Save ``data``; with ``expected``, only over that content: else nothing saved, the file as it is now."""
        raw, plain = saved or self._bytes_of(data)
        found = self._file.replace(raw, expected)
        if found is None:
            self._had_content = True
            if self.fast:
                self._remember(sha256(raw), data, plain)
            else:
                self._cache.remove()        # stale now: a later hand edit must not be compared with it
        return found

    def _remember(self, digest: str, data: dict, plain: bool) -> None:
        """After a save: the new version in memory and in the cache file.

        Data that JSON would change (non-text keys, dates, sets...) is not
        remembered (and the cache file, now stale, goes): the next read parses
        the YAML, so every reader sees what the file says."""
        self._version = None
        self._had_content = True
        if type(data.get("next_vm_id")) is int:
            self._id_floor = max(self._id_floor, data["next_vm_id"])
        if plain:
            self._version = Version(digest, data, keep=False)
            self._cache.write(digest, data)
        else:
            self._cache.remove()

    def _repair(self, data: dict, quiet: bool = False) -> None:
        for done in repairs.repair(data, self._id_floor):
            if not quiet:
                self._notice(f"{self.name}: {done}")

    def _commit(self, snap: Snapshot, data: dict, saved: Optional[tuple] = None) -> None:
        """Save ``data`` (``saved``: its bytes, already made) unless the file changed since ``snap``;
        then take the change in, or refuse."""
        for _attempt in range(SAVE_ATTEMPTS):
            now = self._write_file(data, snap, saved)
            if now is None:
                return
            saved = None
            data, snap = self._merged(snap, data, now)
        raise DatabaseError(f"{self.name} kept changing while this change was being saved (a hand edit?): "
                            "nothing of this change was saved; try again")

    def _merged(self, snap: Snapshot, ours: dict, now: Snapshot) -> tuple:
        """(this transaction's changes re-applied on the file as it is now, that file), or DatabaseError."""
        if now.raw is not None and not now.raw.strip():
            now = self._read(had_content=bool(snap.raw and snap.raw.strip()))
        if now.raw is None:
            raise DatabaseError(f"{self.name} was deleted while this change was being made: nothing was saved")
        how = "replaced" if snap.identity is None or now.identity[:2] != snap.identity[:2] else "edited in place"
        base = self._data_of(snap, remember=False)
        theirs = self._data_of(now, remember=False)   # a damaged edit is refused here, with its line
        try:
            merged = edits.merge(base, ours, theirs)
        except edits.Conflict as e:
            raise DatabaseError(
                f"{self.name} was changed outside the product ({how}) while this change was being made, and "
                f"both changed {e}: this change was not saved, the file keeps that edit; try again") from None
        log.info("%s was changed outside the product (%s) during a transaction: its changes were applied on "
                 "the new content", self.name, how)
        self._repair(merged)
        return merged, now

    @contextlib.contextmanager
    def transaction(self) -> Iterator[dict]:
        """Lock, read, yield the data to change, save atomically on success.

        An exception inside the block discards the change.  Nested
        transactions in one thread share the outer one.  A damaged file
        raises DatabaseError before anything is written; so does a hand edit
        of the same keys saved while the block ran (the edit is kept).

        Group commit: the blocks of one process run one at a time; when others wait to run
        theirs, a block's change is not saved at once but with theirs, by one save (one
        fsync) after the last of them (at most ``GROUP_MAX``).  Each returns only once the
        save holding its change is done (or raises what stopped that save); a change that
        cannot be saved at all (the wrong shape) fails alone.  Alone, a block saves at once.
        """
        outer = getattr(self._local, "data", None)
        if outer is not None:
            yield outer
            return
        ticket = None
        self._enter_block()
        try:
            group = self._group or self._open_group()
            data = group.data if not group.members else self._private_copy(group.data)
            self._local.data = data
            try:
                yield data
                group.saved = self._bytes_of(data)      # a change that cannot be saved fails here, alone
            except BaseException:
                if data is group.data:      # the group's own data, half changed: nobody may build on it
                    self._discard_group(group)
                raise
            finally:
                self._local.data = None
            group.data = data
            ticket = _Ticket()
            group.members.append(ticket)
        finally:
            self._leave_block()
        ticket.result()

    def _enter_block(self) -> None:
        with self._waiting_lock:
            self._waiting += 1
        try:
            self._block_lock.acquire()
        finally:
            with self._waiting_lock:
                self._waiting -= 1

    def _leave_block(self) -> None:
        """Save the open group unless other blocks wait to join it; then let the next block run."""
        try:
            group = self._group
            with self._waiting_lock:
                others = self._waiting
            if group is not None and (not others or len(group.members) >= GROUP_MAX):
                self._save_group(group)
        finally:
            self._block_lock.release()

    def _open_group(self) -> _Group:
        """Lock the file (until the group is saved), read it, repair what must be: the new open group."""
        hold = self._file.acquire()
        try:
            snap = self._read()
            data = self._data_of(snap, remember=False)
            self._repair(data, quiet=snap.raw is None)     # a new file's accounts: nothing to report
        except BaseException:
            self._file.release(hold)
            raise
        self._group = _Group(hold, snap, data)
        return self._group

    def _discard_group(self, group: _Group) -> None:
        """Close a group that holds no member's change, saving nothing."""
        self._group = None
        self._file.release(group.hold)

    def _save_group(self, group: _Group) -> None:
        """One save of every member's change (none: nothing to save); each member learns how it went."""
        self._group = None
        error: Optional[BaseException] = None
        try:
            if group.members:
                self._commit(group.snap, group.data, group.saved)
        except BaseException as e:
            error = e
            raise        # this thread sees it as it was (Ctrl-C, a bug); the other members a DatabaseError
        finally:
            self._file.release(group.hold)
            if error is not None and not isinstance(error, DatabaseError):
                error = DatabaseError(f"{self.name} was not saved: {error!r}")
            for ticket in group.members:
                ticket.finish(error)

    @staticmethod
    def _private_copy(data: dict) -> dict:
        try:
            return pickle.loads(pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL))
        except (pickle.PicklingError, TypeError, AttributeError):
            return copy.deepcopy(data)

    def load(self) -> dict:
        """A snapshot of the whole database, the caller's to change (a copy inside a transaction too)."""
        current = getattr(self._local, "data", None)
        if current is None:
            return self._data_of(self._read(), remember=True)
        return self._private_copy(current)

    # --- documented API ----------------------------------------------------

    def get_next_vm_id(self) -> int:
        """Take the next ID of the one counter shared by slices and VMs (never an ID in use)."""
        with self.transaction() as data:
            return take_id(data, self._id_floor)

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
