"""The text of ``database.yaml``: from bytes to checked data and back.

``parse(raw, name, fast)`` reads the bytes with ``yamltext.fast_load`` when
they keep the form the store writes (4x faster than PyYAML), else with the
strict loader (store/yamlcheck.py: no anchors or aliases, no key twice, with
the lines); then checks the documented shape (store/shape.py), with the
control-character check of names whenever PyYAML read it (the fast reader
reads no text holding one).  A damaged file raises DatabaseError naming the
line.  ``emit(data, name, fast)`` is the reverse, refusing data that is not
the documented shape (names with control characters included: the file is
never written with what it could not be read back as).
"""
from __future__ import annotations

import contextlib
import gc
import hashlib
from typing import Any, Iterator

import yaml

import naming
from store.config import yaml_error_where
from store.file import DatabaseError
from store.shape import check_shape, normalised
from store.yamlcheck import YamlRefused, anchor_problem
from store.yamlcheck import load as strict_load
from store.yamltext import NotSimple, fast_emit_checked, fast_load, line_of, reference_dump

try:  # libyaml is much faster on a big class's database
    from yaml import CSafeLoader as _Loader
except ImportError:  # pragma: no cover - depends on how PyYAML was built
    from yaml import SafeLoader as _Loader  # type: ignore

HEADER = ("# Cloud Repositorio database. Written by the program (atomic saves under a lock).\n"
          "# Read it freely. Hand edits are taken in, never overwritten (README: \"Editing database.yaml\").\n")


def _legacy_hash(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


def default_data() -> dict:
    """A new database: the two documented accounts and the ID counter."""
    return {
        "users": {
            "admin": {"username": "admin", "password_hash": _legacy_hash("admin"),
                      "quota_vms": 10, "used_vms": 0, "slices": [], "role": "admin"},
            "student": {"username": "student", "password_hash": _legacy_hash("student"),
                        "quota_vms": 6, "used_vms": 0, "slices": [], "role": "student"},
        },
        "slices": {},
        "next_vm_id": naming.FIRST_ID,
    }


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic GC while a big tree of new containers is built (it makes big parses superlinear)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _load_yaml(raw: bytes, name: str, fast: bool) -> tuple:
    """(data, read by the fast reader?)."""
    with gc_paused():
        if fast:
            try:
                return fast_load(raw.decode("utf-8")), True
            except (NotSimple, UnicodeDecodeError):
                pass
        try:
            return strict_load(raw, _Loader), False
        except YamlRefused as e:
            raise DatabaseError(f"{name} line {e.line}: {e.message}") from None
        except yaml.YAMLError as e:
            raise DatabaseError(f"{name} is not valid YAML{yaml_error_where(e)}") from None


def parse(raw: bytes, name: str, fast: bool = True) -> tuple:
    """(data, plain) of the file's bytes, checked; DatabaseError names the key path and line."""
    data, simple = _load_yaml(raw, name, fast)
    if data is None:
        return default_data(), True
    found, plain = check_shape(data, names=not simple)
    if found:
        path, text = found
        line = line_of(raw, path) if path else None
        where = f"{name} line {line}" if line else name
        raise DatabaseError(f"{where}: {text}")
    return normalised(data), plain


def emit(data: Any, name: str, fast: bool = True) -> tuple:
    """(file bytes, plain) for data about to be saved; DatabaseError if it is not the documented shape."""
    if type(data) is not dict:
        raise DatabaseError(f"refusing to save {name}: the data must be a mapping")
    found, plain = check_shape(data, names=not fast)
    if found:
        raise DatabaseError(f"refusing to save {name}: {found[1]}")
    normalised(data)
    try:
        body, control = fast_emit_checked(data) if fast else (reference_dump(data, aliases=False), False)
    except (yaml.YAMLError, UnicodeError) as e:
        raise DatabaseError(f"refusing to save {name}: {e}") from e
    except RecursionError:
        raise DatabaseError(f"refusing to save {name}: the data contains itself") from None
    if "&" in body and anchor_problem(body):        # PyYAML wrote an alias: the file could not be read back
        raise DatabaseError(f"refusing to save {name}: the data contains itself")
    if control:                     # a string PyYAML wrote holds a control character: is it in a name?
        found = check_shape(data, names=True)[0]
        if found:
            raise DatabaseError(f"refusing to save {name}: {found[1]}")
    return (HEADER + body).encode("utf-8"), plain
