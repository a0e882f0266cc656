"""Credentials of VMs: one random password per VM, never stored in plain text.

``database.yaml`` is world-readable (instructors read it), so no password
goes there.  Each VM's password is derived from a site key and the VM's ID
(HMAC-SHA256): the key lives beside the database in ``<database>.key``, mode
0600, made at first use.  Only the account that runs the menu can read it;
the menu shows a VM's password to its owner (and admins) only.

The password is 8 characters from an alphabet without look-alikes: the VNC
protocol uses at most 8, and the same password opens the VM's console and
its VNC screen.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
import stat
import tempfile

log = logging.getLogger("cloudrepo.access")

ALPHABET = "abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"
PASSWORD_LENGTH = 8
KEY_BYTES = 32


class CredentialsError(Exception):
    """The site key cannot be read or made."""


def key_path(db_path: str) -> str:
    return f"{db_path}.key"


def load_or_create_key(path: str) -> bytes:
    """The site key; made (0600, atomically) when missing; refused when others can read it.

    A new key is written and synced in a file of its own, then linked to ``path`` (``link`` never
    replaces a file): a reader at any moment finds no key or the whole key, and of several sessions
    making it at once (a class's first deploys through one service), one wins and all use its key.
    """
    if not os.path.exists(path):
        _publish_new_key(path)
    try:
        st = os.stat(path)
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            os.chmod(path, 0o600)
            log.warning("the key file %s was readable by others: made it 0600", path)
        with open(path, "rb") as f:
            key = f.read()
    except OSError as e:
        raise CredentialsError(f"cannot read the key file {path}: {e}") from e
    if len(key) < 16:
        raise CredentialsError(f"the key file {path} is damaged (too short)")
    return key


def _publish_new_key(path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".key-", dir=folder)  # 0600
    except OSError as e:
        raise CredentialsError(f"cannot create the key file {path}: {e}") from e
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(os.urandom(KEY_BYTES))
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
            log.info("made the site key %s", path)
        except FileExistsError:
            pass  # another session made it first: its key is the key
        except OSError as e:
            raise CredentialsError(f"cannot create the key file {path}: {e}") from e
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def derive_password(key: bytes, vm_id: int) -> str:
    """The password of VM ``vm_id`` under ``key``."""
    n = int.from_bytes(hmac.new(key, f"vm-password:{int(vm_id)}".encode(), hashlib.sha256).digest(), "big")
    chars = []
    for _ in range(PASSWORD_LENGTH):
        n, r = divmod(n, len(ALPHABET))
        chars.append(ALPHABET[r])
    return "".join(chars)


class Credentials:
    """Passwords of the VMs of one database."""

    def __init__(self, db_path: str):
        self.path = key_path(db_path)
        self._key = None

    def password(self, vm_id: int) -> str:
        if self._key is None:
            self._key = load_or_create_key(self.path)
        return derive_password(self._key, vm_id)
