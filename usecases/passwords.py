"""Password hashing: salted scrypt for new hashes; the documented SHA-256 hex still accepted.

Stored forms:
* ``scrypt$<n>$<r>$<p>$<salt hex>$<hash hex>`` (new passwords, upgrades)
* ``sha256-scrypt$<n>$<r>$<p>$<salt hex>$<hash hex>``: a legacy hash wrapped
  where it lies, scrypt of the 64 hex digits below (verified as
  scrypt(sha256(password))).  The store wraps every bare legacy hash the first
  time a process that may write ``database.yaml`` reads it, so no unsalted
  hash stays in the file (or in anything derived from it) until a login;
* 64 hex digits: the original's unsalted ``sha256(password).hexdigest()``,
  still accepted (a read-only reader, a hash pasted by hand).
Both legacy forms are replaced by plain scrypt at the next login.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import re

_N, _R, _P = 2 ** 14, 8, 1
_LEGACY = re.compile(r"^[0-9a-f]{64}$")
WRAPPED = "sha256-scrypt"
_wrapped_memo: dict = {}   # legacy hex -> its wrapped form, made once per process (scrypt costs ~50 ms)


def hash_password(password: str) -> str:
    """A new salted scrypt hash."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    return f"scrypt${_N}${_R}${_P}${salt.hex()}${digest.hex()}"


def is_bare_legacy(stored: str) -> bool:
    """True for the original's unsalted SHA-256 hex, as the original stored it."""
    return bool(_LEGACY.match(stored or ""))


def is_legacy(stored: str) -> bool:
    """True for a legacy hash, bare or wrapped: replaced by plain scrypt at the next login."""
    return is_bare_legacy(stored) or (stored or "").startswith(WRAPPED + "$")


def wrap_legacy(legacy_hex: str) -> str:
    """The salted, slow stored form of a bare legacy hash: scrypt of its hex digits."""
    wrapped = _wrapped_memo.get(legacy_hex)
    if wrapped is None:
        salt = os.urandom(16)
        digest = hashlib.scrypt(legacy_hex.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
        wrapped = _wrapped_memo[legacy_hex] = f"{WRAPPED}${_N}${_R}${_P}${salt.hex()}${digest.hex()}"
    return wrapped


def verify_password(password: str, stored: str) -> bool:
    """Check a password against either stored form (constant-time compare)."""
    if not stored:
        return False
    if is_bare_legacy(stored):
        return hmac.compare_digest(hashlib.sha256(password.encode()).hexdigest(), stored)
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme == WRAPPED:
            secret = hashlib.sha256(password.encode()).hexdigest().encode()
        elif scheme == "scrypt":
            secret = password.encode()
        else:
            return False
        got = hashlib.scrypt(secret, salt=bytes.fromhex(salt), n=int(n), r=int(r),
                             p=int(p), dklen=len(digest) // 2)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got.hex(), digest)
