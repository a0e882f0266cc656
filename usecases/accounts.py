"""Accounts: logging in, passwords, and the admin's user management."""
from __future__ import annotations

import logging
from typing import Optional

import naming
from models import User
from usecases import passwords
from usecases.access import admin_target, as_int, quota_value, require_admin
from usecases.leases import MAX_LEASE_DAYS
from usecases.services import Services

log = logging.getLogger("cloudrepo.accounts")

DEFAULT_ACCOUNTS = ("admin", "student")
MIB = 1024 * 1024
MAX_DISK_QUOTA_MIB = 1024 * 1024   # 1 TiB
NO_MAXIMUM = ("none", "no", "", "0")


def snapshot_bytes(data: dict, username: str) -> int:
    """What the snapshots of the VMs of every slice ``username`` owns hold (their recorded sizes)."""
    return sum(int(x.get("size_bytes") or 0) for s in data["slices"].values() if s.get("owner") == username
               for vm in s.get("vms", []) for x in vm.get("snapshots") or [])


def disk_quota_of(user: Optional[dict], config) -> int:
    """A user's snapshot disk quota in MiB: their own, or the config's ``snapshots.quota_mib``."""
    value = (user or {}).get("disk_quota_mib")
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return int(config.setting("snapshots.quota_mib"))
ROLES = ("student", "admin")


def check_new_password(password: str) -> Optional[str]:
    """Why a new password is refused, or None."""
    if not isinstance(password, str) or len(password) < 6:
        return "Password must have at least 6 characters"
    if len(password) > 128:
        return "Password is too long"
    if any(ord(c) < 32 or ord(c) == 127 for c in password):
        return "Password must not contain control characters"
    return None


class Accounts:
    """Use cases of accounts; each returns ``(ok, payload_or_message)``."""

    def __init__(self, services: Services):
        self.s = services

    def authenticate(self, username: str, password: str) -> tuple:
        """Check a login; upgrades a legacy SHA-256 hash to scrypt on success."""
        username = (username or "").strip()
        user = self.s.db.get_user(username)
        if not user or not passwords.verify_password(password, user.get("password_hash", "")):
            return False, "Invalid credentials!"
        default_password = password == username and username in DEFAULT_ACCOUNTS
        if passwords.is_legacy(user["password_hash"]):
            new_hash = passwords.hash_password(password)
            with self.s.db.transaction() as data:
                stored = data["users"].get(username)
                if stored and stored.get("password_hash") == user["password_hash"]:
                    stored["password_hash"] = new_hash
            log.info("upgraded the password hash of %s to scrypt", username)
        info = dict(user, password_hash="<hidden>")
        info["default_password"] = default_password
        if user.get("role") == "admin":
            info["notices"] = self.s.db.take_notices()   # what the store corrected or saw edited by hand
        return True, info

    def change_password(self, username: str, old_password: str, new_password: str) -> tuple:
        """A user changes their own password."""
        err = check_new_password(new_password)
        if err:
            return False, err
        with self.s.db.transaction() as data:
            user = data["users"].get(username)
            if not user or not passwords.verify_password(old_password, user.get("password_hash", "")):
                return False, "Current password is wrong"
            if old_password == new_password:
                return False, "The new password is the same as the old one"
            user["password_hash"] = passwords.hash_password(new_password)
        return True, "Password changed"

    def create_user(self, admin: str, username: str, password: str, quota_vms=6, role: str = "student") -> tuple:
        """Admin: create an account."""
        username = (username or "").strip()
        if not naming.USERNAME_RE.fullmatch(username):
            return False, f"Invalid username: {naming.USERNAME_RULE}"
        if role not in ROLES:
            return False, "Role must be student or admin"
        ok, quota = quota_value(quota_vms)
        if not ok:
            return False, quota
        err = check_new_password(password)
        if err:
            return False, err
        password_hash = passwords.hash_password(password)
        with self.s.db.transaction() as data:
            err = require_admin(data, admin)
            if err:
                return False, err
            if username in data["users"]:
                return False, f"User {username} already exists"
            data["users"][username] = User(username, password_hash, quota, role).to_dict()
        return True, f"User {username} created (quota {quota}, role {role})"

    def set_quota(self, admin: str, username: str, quota_vms) -> tuple:
        """Admin: change a user's VM quota (not below the VMs they hold)."""
        ok, quota = quota_value(quota_vms)
        if not ok:
            return False, quota
        with self.s.db.transaction() as data:
            ok, user = admin_target(data, admin, username)
            if not ok:
                return False, user
            if quota < int(user.get("used_vms", 0)):
                return False, f"{username} already uses {user['used_vms']} VMs: the quota cannot go below that"
            user["quota_vms"] = quota
        return True, f"Quota of {username} set to {quota}"

    def set_disk_quota(self, admin: str, username: str, disk_quota_mib) -> tuple:
        """Admin: the MiB a user's snapshots may hold in all (0: no snapshots; not below what they hold)."""
        ok, quota = as_int(disk_quota_mib, "The disk quota")
        if not ok or not 0 <= quota <= MAX_DISK_QUOTA_MIB:
            return False, f"The disk quota must be a whole number of MiB from 0 to {MAX_DISK_QUOTA_MIB}"
        with self.s.db.transaction() as data:
            ok, user = admin_target(data, admin, username)
            if not ok:
                return False, user
            held = snapshot_bytes(data, username)
            if held > quota * MIB:
                return False, (f"{username}'s snapshots already hold {held / MIB:.1f} MiB: the disk quota cannot "
                               "go below that (delete snapshots first)")
            user["disk_quota_mib"] = quota
        return True, f"Disk quota for snapshots of {username} set to {quota} MiB"

    def set_max_lease(self, admin: str, username: str, max_lease_days) -> tuple:
        """Admin: the longest lease (days) the user may give a slice; None, 0 or "none": no maximum.

        Leases already set are kept; the new maximum applies from their next renewal.
        """
        text = str(max_lease_days).strip().lower() if max_lease_days is not None else "none"
        days = None
        if text not in NO_MAXIMUM:
            ok, days = as_int(max_lease_days, "The maximum lease")
            if not ok or not 1 <= days <= MAX_LEASE_DAYS:
                return False, f"The maximum lease must be a whole number of days from 1 to {MAX_LEASE_DAYS}, or none"
        with self.s.db.transaction() as data:
            ok, user = admin_target(data, admin, username)
            if not ok:
                return False, user
            user["max_lease_days"] = days
        if days is None:
            return True, f"{username} has no maximum lease: their new slices get no lease"
        return True, (f"Maximum lease of {username} set to {days} days: their new slices get a {days}-day lease, "
                      "renewable up to that from the day of renewal")

    def reset_password(self, admin: str, username: str, new_password: str) -> tuple:
        """Admin: set another user's password."""
        err = check_new_password(new_password)
        if err:
            return False, err
        password_hash = passwords.hash_password(new_password)
        with self.s.db.transaction() as data:
            ok, user = admin_target(data, admin, username)
            if not ok:
                return False, user
            user["password_hash"] = password_hash
        return True, f"Password of {username} reset"

    def list_users(self, admin: str) -> tuple:
        """Admin: every account without its hash."""
        data = self.s.db.load()
        err = require_admin(data, admin)
        if err:
            return False, err
        return True, [dict({k: v for k, v in u.items() if k != "password_hash"},
                           disk_used_bytes=snapshot_bytes(data, name), disk_quota_mib=disk_quota_of(u, self.s.config))
                      for name, u in sorted(data["users"].items())]

    def get_quota(self, username: str) -> tuple:
        """``{"used_vms", "quota_vms", "slices"}`` of a user."""
        user = self.s.db.get_user(username)
        if not user:
            return False, "User not found"
        data = self.s.db.load()
        return True, {"used_vms": int(user.get("used_vms", 0)),
                      "quota_vms": int(user.get("quota_vms", 10)),
                      "slices": len(user.get("slices", [])),
                      "disk_used_bytes": snapshot_bytes(data, username),
                      "disk_quota_mib": disk_quota_of(user, self.s.config),
                      "max_lease_days": user.get("max_lease_days")}
