"""passwords.py and login (SPEC §4.11): legacy SHA-256 accepted once, upgraded to salted scrypt."""
from __future__ import annotations

import hashlib

from uhelpers import make_api, ok

from usecases import passwords


def test_hash_is_salted_scrypt():
    a = passwords.hash_password("secret1")
    b = passwords.hash_password("secret1")
    assert a.startswith("scrypt$") and b.startswith("scrypt$")
    assert a != b
    assert a.split("$")[4] != b.split("$")[4]  # different salts
    assert passwords.verify_password("secret1", a)
    assert passwords.verify_password("secret1", b)
    assert not passwords.is_legacy(a)


def test_verify_wrong_or_empty():
    h = passwords.hash_password("secret1")
    assert passwords.verify_password("secret2", h) is False
    assert passwords.verify_password("", h) is False
    assert passwords.verify_password("secret1", "") is False
    assert passwords.verify_password("secret1", "scrypt$garbage") is False
    assert passwords.verify_password("secret1", "md5$1$2$3$aa$bb") is False


def test_legacy_sha256_verified():
    legacy = hashlib.sha256(b"admin").hexdigest()
    assert passwords.is_legacy(legacy)
    assert passwords.verify_password("admin", legacy) is True
    assert passwords.verify_password("Admin", legacy) is False


def test_login_with_legacy_hash_upgrades_to_scrypt(tmp_path):
    api, db, ex = make_api(tmp_path)
    legacy = db.get_user("admin")["password_hash"]
    # a new database holds the documented SHA-256 wrapped in scrypt (never the bare hex): still a legacy form
    assert legacy.startswith("sha256-scrypt$") and passwords.is_legacy(legacy)
    assert hashlib.sha256(b"admin").hexdigest() not in open(db.path).read()
    info = ok(api.authenticate("admin", "admin"))
    assert info["username"] == "admin"
    assert info["password_hash"] == "<hidden>"
    assert info["default_password"] is True
    stored = db.get_user("admin")["password_hash"]
    assert stored.startswith("scrypt$")
    assert passwords.verify_password("admin", stored)
    # the upgraded hash still logs in, and is not re-hashed
    ok(api.authenticate("admin", "admin"))
    assert db.get_user("admin")["password_hash"] == stored
    assert ex.calls == []


def test_wrong_password_refused_and_hash_untouched(tmp_path):
    api, db, _ex = make_api(tmp_path)
    before = db.get_user("student")["password_hash"]
    assert api.authenticate("student", "wrong") == (False, "Invalid credentials!")
    assert api.authenticate("nobody", "student") == (False, "Invalid credentials!")
    assert api.authenticate("", "") == (False, "Invalid credentials!")
    assert db.get_user("student")["password_hash"] == before


def test_change_password_uses_scrypt(tmp_path):
    api, db, _ex = make_api(tmp_path)
    assert api.change_password("student", "wrong", "newpass1") == (False, "Current password is wrong")
    ok(api.change_password("student", "student", "newpass1"))
    h = db.get_user("student")["password_hash"]
    assert h.startswith("scrypt$")
    assert api.authenticate("student", "student")[0] is False
    info = ok(api.authenticate("student", "newpass1"))
    assert info["default_password"] is False
