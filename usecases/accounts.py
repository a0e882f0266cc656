"""Accounts: logging in, passwords, and the admin's user management."""
from __future__ import annotations

import logging
from typing import Optional

import naming
from models import User
from usecases import passwords
from usecases.access import admin_target, quota_value, require_admin
from usecases.services import Services

log = logging.getLogger("cloudrepo.accounts")

DEFAULT_ACCOUNTS = ("admin", "student")
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
        return True, [{k: v for k, v in u.items() if k != "password_hash"}
                      for _, u in sorted(data["users"].items())]

    def get_quota(self, username: str) -> tuple:
        """``{"used_vms", "quota_vms", "slices"}`` of a user."""
        user = self.s.db.get_user(username)
        if not user:
            return False, "User not found"
        return True, {"used_vms": int(user.get("used_vms", 0)),
                      "quota_vms": int(user.get("quota_vms", 10)),
                      "slices": len(user.get("slices", []))}
