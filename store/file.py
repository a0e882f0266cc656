"""The locked file under ``database.yaml``: the lock, what a read saw, atomic saves, derived files.

* ``LockedFile.acquire()`` / ``release()``: an exclusive ``flock`` on
  ``<path>.lock`` (several menus, scripts and the service share one file);
  how long the last hold lasted is kept for bench/store.py.
* ``LockedFile.read()``: a ``Snapshot``: the bytes, their SHA-256 and the
  file's identity (device, inode, size, mtime).  A transaction keeps the one
  it started from, and ``changed_since(snapshot)`` compares the file with it
  under the lock right before the save: a change the product did not make
  (a hand edit saved meanwhile) is never written over (see database.py).
* ``LockedFile.replace(raw, expected)``: temporary file in the same folder,
  fsync, rename, fsync of the folder: a process killed at any instant leaves
  the old or the new file, never a torn one.  The new file keeps the old
  one's mode and group.  With ``expected`` the file must still hold what the
  transaction read, checked right before the rename, which swaps the files
  (``RENAME_EXCHANGE``) so that an editor's save landing in between is put
  back, never lost.
* Derived files (the cache, the lock file, temporary files) are never more
  readable than ``database.yaml`` itself: at most its read bits, its group
  (or no group bits when that group cannot be given): ``derived_perms`` and
  ``apply_perms``.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import os
import tempfile
import time
from typing import Optional

NEW_FILE_MODE = 0o644
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
try:
    _libc = ctypes.CDLL(None, use_errno=True)
    _renameat2 = getattr(_libc, "renameat2", None)
except OSError:  # pragma: no cover - no C library to ask
    _renameat2 = None


def _exchange(a: str, b: str) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where that is not available."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EXDEV):
        return False
    raise OSError(err, os.strerror(err), b)


def _read_bytes(path: str) -> Optional[bytes]:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


class DatabaseError(Exception):
    """The database file cannot be read or written."""


def sha256(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


class Snapshot:
    """What one read of the file saw: its bytes (None: no file), their SHA-256 (made when asked), its identity."""

    __slots__ = ("raw", "identity", "_digest")

    def __init__(self, raw: Optional[bytes], identity: Optional[tuple], digest: Optional[str] = None):
        self.raw, self.identity, self._digest = raw, identity, digest

    @property
    def digest(self) -> Optional[str]:
        if self._digest is None and self.raw is not None:
            self._digest = sha256(self.raw)
        return self._digest

    def same_content(self, other: Snapshot) -> bool:
        """The same bytes (a file replaced by identical bytes, a ``touch``, is no change).

        Compared byte for byte (both reads are in memory: cheaper than hashing either); the
        SHA-256 stays what names a version for the caches."""
        if self.raw is None or other.raw is None:
            return self.raw is other.raw
        return self.raw == other.raw


def derived_perms(path: str) -> tuple:
    """(mode, gid) for a file derived from ``path``: at most its read bits (and the owner's write), its group."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return NEW_FILE_MODE & ~_umask(), None
    return st.st_mode & 0o644, st.st_gid


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def apply_perms(fd: int, mode: int, gid: Optional[int]) -> None:
    """Give an open file ``mode`` and group ``gid``; without that group, no group bits at all."""
    if gid is not None and os.fstat(fd).st_gid != gid:
        try:
            os.fchown(fd, -1, gid)
        except OSError:
            mode &= ~0o070
    os.fchmod(fd, mode)


class LockedFile:
    """One YAML file with its lock file beside it."""

    def __init__(self, path: str, name: str):
        self.path = path
        self.name = name
        self.lock_path = path + ".lock"
        self.folder = os.path.dirname(path)
        self.last_lock_held_s = 0.0   # how long the last outermost hold lasted (wall clock)
        self.last_lock_cpu_s = 0.0    # and the CPU time this process used meanwhile (bench/store.py)

    # --- reading -----------------------------------------------------------------------

    def read(self) -> Snapshot:
        try:
            with open(self.path, "rb") as f:
                st = os.fstat(f.fileno())
                raw = f.read()
        except FileNotFoundError:
            return Snapshot(None, None)
        except OSError as e:
            raise DatabaseError(f"cannot read {self.name}: {e}") from e
        return Snapshot(raw, (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))

    def changed_since(self, snapshot: Snapshot) -> Optional[Snapshot]:
        """The file as it is now when its content is not the snapshot's, else None (call under the lock)."""
        now = self.read()
        return None if now.same_content(snapshot) else now

    def may_write(self) -> bool:
        """Whether this process may save the file (write it and rename in its folder)."""
        return os.access(self.path, os.W_OK) and os.access(self.folder, os.W_OK | os.X_OK)

    # --- the lock ----------------------------------------------------------------------

    def acquire(self) -> tuple:
        """Take the exclusive ``flock`` (other processes wait); a hold that any thread may ``release``.

        Not re-entrant and not tied to a thread: the store's group commit takes it in the thread
        that opens a group and gives it back in the one that saves it (database.py).
        """
        fd = self._open_lock_file()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        return fd, time.perf_counter(), time.process_time()

    def release(self, hold: tuple) -> None:
        """Give back a hold from ``acquire``; keeps how long it lasted (bench/store.py)."""
        fd, locked_at, cpu_at = hold
        self.last_lock_held_s = time.perf_counter() - locked_at
        self.last_lock_cpu_s = time.process_time() - cpu_at
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _open_lock_file(self) -> int:
        """The lock file, made with the database's read bits and group (flock needs no write access)."""
        mode, gid = derived_perms(self.path)
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, mode)
        except FileExistsError:
            fd = None
        except OSError as e:
            raise DatabaseError(f"cannot open lock file {self.lock_path}: {e}") from e
        if fd is not None:
            with contextlib.suppress(OSError):
                apply_perms(fd, mode, gid)
            return fd
        for flags in (os.O_RDWR, os.O_RDONLY):
            try:
                return os.open(self.lock_path, flags)
            except PermissionError:
                continue
            except OSError as e:
                raise DatabaseError(f"cannot open lock file {self.lock_path}: {e}") from e
        raise DatabaseError(f"cannot open lock file {self.lock_path}: permission denied")

    # --- writing -----------------------------------------------------------------------

    def replace(self, raw: bytes, expected: Optional[Snapshot] = None) -> Optional[Snapshot]:
        """Atomic save: a temporary file in the same folder, fsync, rename, fsync of the folder.

        With ``expected`` (what the transaction read), the file must still
        hold that content: checked after the fsync, right before the rename,
        and the rename swaps the two files (``renameat2(RENAME_EXCHANGE)``), so
        an editor's save landing even between that check and the rename is
        seen, and put back.  Returns None when saved, else the file as it is
        now (nothing of ``raw`` kept)."""
        try:
            st = os.stat(self.path)
            mode, gid = st.st_mode & 0o777, st.st_gid
        except FileNotFoundError:
            mode, gid = NEW_FILE_MODE, None
        except OSError as e:
            raise DatabaseError(f"cannot write {self.name}: {e}") from e
        try:
            fd, tmp = tempfile.mkstemp(prefix=os.path.basename(self.path) + ".tmp.", dir=self.folder)
        except OSError as e:
            raise DatabaseError(f"cannot write {self.name}: {e}") from e
        try:
            with os.fdopen(fd, "wb") as f:
                apply_perms(f.fileno(), mode, gid)
                f.write(raw)
                f.flush()
                os.fsync(f.fileno())
            found = self._swap_in(tmp, raw, expected)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        if found is None:
            self._sync_folder()
        return found

    def _swap_in(self, tmp: str, raw: bytes, expected: Optional[Snapshot]) -> Optional[Snapshot]:
        if expected is None or expected.raw is None:
            os.replace(tmp, self.path)
            return None
        now = self.changed_since(expected)
        if now is not None:
            os.unlink(tmp)
            return now
        if not _exchange(tmp, self.path):
            os.replace(tmp, self.path)       # no RENAME_EXCHANGE here: the check above is the last word
            return None
        was = _read_bytes(tmp)              # what the file held the instant it was swapped out
        if was is not None and Snapshot(was, None).same_content(expected):
            os.unlink(tmp)
            return None
        _exchange(tmp, self.path)           # an edit saved in that instant: back in its place
        if _read_bytes(tmp) != raw:         # and a newer one meanwhile: that one goes back instead
            _exchange(tmp, self.path)
        os.unlink(tmp)
        return self.read()

    def _sync_folder(self) -> None:
        dfd = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def write_derived(self, path: str, data: bytes) -> bool:
        """Best effort: replace ``path`` (beside the file) atomically, never more readable than the file."""
        mode, gid = derived_perms(self.path)
        tmp = None
        try:
            fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".tmp.", dir=os.path.dirname(path))
            with os.fdopen(fd, "wb") as f:
                apply_perms(f.fileno(), mode, gid)
                f.write(data)
            os.replace(tmp, path)
            return True
        except OSError:
            if tmp:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            return False
