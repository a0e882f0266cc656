"""Password hashing: salted scrypt for new hashes; the documented SHA-256 hex still accepted.

Stored forms:
* ``scrypt$<n>$<r>$<p>$<salt hex>$<hash hex>`` (new passwords, upgrades)
* 64 hex digits: the original's unsalted ``sha256(password).hexdigest()``,
  accepted once and replaced by scrypt at that login.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import re

_N, _R, _P = 2 ** 14, 8, 1
_LEGACY = re.compile(r"^[0-9a-f]{64}$")


def hash_password(password: str) -> str:
    """A new salted scrypt hash."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    return f"scrypt${_N}${_R}${_P}${salt.hex()}${digest.hex()}"


def is_legacy(stored: str) -> bool:
    """True for the original's unsalted SHA-256 hex."""
    return bool(_LEGACY.match(stored or ""))


def verify_password(password: str, stored: str) -> bool:
    """Check a password against either stored form (constant-time compare)."""
    if not stored:
        return False
    if is_legacy(stored):
        return hmac.compare_digest(hashlib.sha256(password.encode()).hexdigest(), stored)
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        got = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r),
                             p=int(p), dklen=len(digest) // 2)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got.hex(), digest)
