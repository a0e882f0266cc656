"""The store's caches: parsing a 1 MB YAML costs about half a second, so a given content is parsed once.

* The content, not the inode or mtime, identifies a version: every read
  hashes the file's bytes (SHA-256, about 1 ms per MB), so any hand edit
  (same size, same second, written in place) is seen by the next read.
* ``Version``: the last version parsed, kept in memory as a pickle (each
  read gets a private copy quickly).
* ``CacheFile``: ``<path>.cache`` beside the YAML holds a version as JSON
  with the YAML's SHA-256 (and its own): other processes load it in
  milliseconds, and trust it only while both hashes match.  It is never more
  readable than the YAML (its read bits at most, its group: it holds the
  same password hashes), and a cache file not owned by the YAML's owner, or
  writable by others, is ignored: whoever could plant one could make every
  menu believe anything.  Deleting it is always safe.  Its third line is
  the version's summary (store/edits.py), read alone when a hand edit is
  compared with the last version the product knew.
"""
from __future__ import annotations

import contextlib
import json
import os
import pickle
from typing import Optional

from store.edits import summary as summary_of
from store.file import LockedFile, sha256
from store.format import gc_paused

CACHE_SUFFIX = ".cache"
CACHE_HEADER = ("# Cloud Repositorio: a copy of database.yaml for fast reads, trusted only while the hashes "
                "below match; safe to delete\n")


class Version:
    """One parsed content of the file: its SHA-256, a pickle of the data, the data (never handed out)."""

    def __init__(self, digest: str, data: dict, keep: bool):
        """``keep``: ``data`` is private to the store and may be shared by readers as it is."""
        self.digest = digest
        self.blob = pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL)
        self._data: Optional[dict] = data if keep else None

    def copy(self) -> dict:
        with gc_paused():
            return pickle.loads(self.blob)

    @property
    def data(self) -> dict:
        if self._data is None:
            self._data = self.copy()
        return self._data


class CacheFile:
    """``<yaml>.cache``: one version of the YAML as JSON, with both hashes and a summary."""

    def __init__(self, source: LockedFile):
        self.source = source
        self.path = source.path + CACHE_SUFFIX

    def _trusted(self, st: os.stat_result) -> bool:
        try:
            owner = os.stat(self.source.path).st_uid
        except OSError:
            return False
        return st.st_uid == owner and not st.st_mode & 0o022

    def read(self, digest: str) -> Optional[dict]:
        """The cache file's data when it was made from exactly these YAML bytes (else None)."""
        try:
            with open(self.path, "rb") as f:
                if not self._trusted(os.fstat(f.fileno())):
                    return None
                text = f.read()
            _header, hashes, rest = text.split(b"\n", 2)
            yaml_digest, json_digest = hashes.decode().split()
            if yaml_digest != digest or json_digest != sha256(rest):
                return None
            body = rest.split(b"\n", 1)[1]
            with gc_paused():
                data = json.loads(body)
        except (OSError, ValueError, IndexError, UnicodeDecodeError):
            return None
        return data if type(data) is dict else None

    def summary(self) -> Optional[dict]:
        """The summary of whatever version the cache file holds (unverified: it only words log lines)."""
        try:
            with open(self.path, "rb") as f:
                if not self._trusted(os.fstat(f.fileno())):
                    return None
                f.readline()
                f.readline()
                found = json.loads(f.readline())
        except (OSError, ValueError, UnicodeDecodeError):
            return None
        return found if type(found) is dict else None

    def write(self, digest: str, data: dict) -> None:
        """Best effort: a cache file for these YAML bytes (the data must be plain: see shape.check_shape)."""
        try:
            index = json.dumps(summary_of(data), ensure_ascii=False, separators=(",", ":")).encode()
            body = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
        except (ValueError, TypeError, UnicodeError):
            return
        rest = index + b"\n" + body
        if not self.source.write_derived(self.path, CACHE_HEADER.encode() + f"{digest} {sha256(rest)}\n".encode()
                                         + rest):
            self.remove()       # a stale cache file would make a later hand edit look like losses

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.path)
