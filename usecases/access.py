"""Who may do what: users, admins, owners; numbers typed by people.

Every check returns ``(True, value)`` or ``(False, message)``, the shape of
the API's answers, so use cases can pass a refusal straight through.
"""
from __future__ import annotations

from typing import Optional

from usecases import sessions

MAX_QUOTA = 1000


def as_int(value, what: str) -> tuple:
    """(True, n) for a whole number written with ASCII digits (and an optional sign), else (False, message)."""
    if isinstance(value, bool):
        return False, f"{what} must be a number"
    if isinstance(value, int):
        return True, value
    text = str(value).strip() if value is not None else ""
    digits = text[1:] if text[:1] in "+-" else text
    if not digits or not (digits.isascii() and digits.isdigit()):
        return False, f"{what} must be a number"
    return True, int(text)


def quota_value(value) -> tuple:
    """(True, quota) for a whole number from 0 to MAX_QUOTA, else (False, message)."""
    ok, quota = as_int(value, "Quota")
    if ok and not 0 <= quota <= MAX_QUOTA:
        return False, f"Quota must be between 0 and {MAX_QUOTA}"
    return ok, quota


def require_admin(data: dict, username: str) -> Optional[str]:
    """None when ``username`` is an admin, else the refusal."""
    user = data["users"].get(username)
    if not user or user.get("role") != "admin":
        return "Only an admin can do this"
    return None


def admin_target(data: dict, admin: str, username: str) -> tuple:
    """(True, user dict) when ``admin`` is an admin and ``username`` exists."""
    err = require_admin(data, admin)
    if err:
        return False, err
    user = data["users"].get(username)
    return (True, user) if user else (False, "User not found")


def authorized_slice(data: dict, username: str, slice_id) -> tuple:
    """The slice, if the user owns it or is an admin."""
    ok, sid = as_int(slice_id, "Slice ID")
    if not ok:
        return False, sid
    user = data["users"].get(username)
    if not user:
        return False, "User not found"
    s = data["slices"].get(str(sid))
    if s is None or (s.get("owner") != username and user.get("role") != "admin"):
        return False, "Slice not found or not authorized"
    return True, s


def not_editable_reason(s: dict) -> Optional[str]:
    """Why a slice (stale marks already resolved) cannot be changed now, or None."""
    if sessions.needs_recovery(s):
        return sessions.recovery_pending_text(s)
    status = s.get("status")
    if status == "design":
        return None
    if status == "running":
        return "Slice is running: a running slice cannot be changed (delete it and design a new one)"
    return f"Slice is {status}: it cannot be changed now"


def owned_editable_slice(data: dict, username: str, slice_id) -> tuple:
    """The user's own slice, if it may be changed now (stale marks must be resolved first)."""
    ok, s = authorized_slice(data, username, slice_id)
    if not ok:
        return False, s
    if s.get("owner") != username:
        return False, "Not authorized: only the owner can change a slice"
    err = not_editable_reason(s)
    return (False, err) if err else (True, s)
