"""What the store corrects in a database it reads, before anyone uses it.

* A counter behind the IDs in use (store/ids.py) is moved past them: an ID
  in use is never handed out again.
* A bare legacy password hash (the original's unsalted SHA-256 hex, as the
  shipped accounts have until their first login) is wrapped where it lies:
  ``sha256-scrypt$...``, scrypt of the hex digits (usecases/passwords.py), so
  the file and everything derived from it hold only salted, slow hashes.  The
  password is unchanged; the next login rehashes it to plain scrypt.

``repair(data)`` does both in place and returns what it did, one sentence
each, for the log and the admin.  Every transaction runs it (so every save
writes corrected data), and a process that may write the file runs an empty
transaction as soon as it reads a version that needs it: the file is
upgraded when it is first read by a process that may write it.  A process
that may only read it corrects the counter in memory and verifies bare
hashes as before.
"""
from __future__ import annotations

from store.ids import correct_counter, counter_behind
from usecases import passwords


def _bare_legacy_users(data: dict) -> list:
    return [name for name, user in (data.get("users") or {}).items()
            if type(user) is dict and type(user.get("password_hash")) is str
            and passwords.is_bare_legacy(user["password_hash"])]


def needs_repair(data: dict, floor: int = 0) -> bool:
    """True when ``repair`` would change something."""
    return counter_behind(data, floor) is not None or bool(_bare_legacy_users(data))


def repair(data: dict, floor: int = 0, hashes: bool = True) -> list:
    """Correct the counter (at least ``floor``, store/ids.py) and (``hashes``) wrap bare legacy hashes,
    in place: what was done."""
    done = []
    counter = correct_counter(data, floor)
    if counter:
        done.append(counter)
    names = _bare_legacy_users(data) if hashes else []
    for name in names:
        user = data["users"][name]
        user["password_hash"] = passwords.wrap_legacy(user["password_hash"])
    if names:
        who = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        done.append(f"the unsalted SHA-256 password hash of {who} is now stored salted "
                    "(scrypt of it; the password is unchanged, the next login rehashes it)")
    return done
