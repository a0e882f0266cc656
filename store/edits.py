"""Changes the product did not make: taken in, or refused with a message, never silently overwritten.

Two cases (the rule is in the README, "Editing database.yaml"):

* **An edit saved while a transaction runs** (between its read and its
  save).  The save finds the file changed (store/file.py) and ``merge``
  re-applies the transaction's own changes on the new content, key by key:
  when the edit and the transaction changed different keys (the instructor
  raised a quota while a menu added a VM), both are kept; when they changed
  the same key differently, ``Conflict`` names it and the transaction is
  refused (the edit stays, nothing of the transaction is saved).
* **An edit that removes what the product made** (an editor saving a copy
  opened before a menu made a slice): the product cannot tell it from a
  deliberate deletion, so it works with what the file says, and
  ``vanished`` describes what went away (slices, their VMs, users) for the
  log and the admin.  Nothing is lost by the product without a word.

Keys are compared as paths of nested mappings (``users.ana.quota_vms``);
lists and scalars are compared whole (a slice's ``vms`` list is one key).
"""
from __future__ import annotations

import copy
from typing import Any, Optional

from store.shape import dotted

_GONE = object()   # the key was removed


class Conflict(Exception):
    """A transaction and a hand edit changed the same keys differently."""

    def __init__(self, paths: list):
        super().__init__(", ".join(dotted(p) for p in paths))
        self.paths = paths


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def changes(base: Any, new: Any, path: tuple = ()) -> dict:
    """{key path: new value (or _GONE)} of every key that differs between two versions."""
    if type(base) is not dict or type(new) is not dict:
        return {} if _same(base, new) else {path: new}
    out: dict = {}
    for key, old in base.items():
        if key not in new:
            out[path + (key,)] = _GONE
        elif not _same(old, new[key]):
            out.update(changes(old, new[key], path + (key,)))
    for key in new.keys() - base.keys():
        out[path + (key,)] = new[key]
    return out


def _conflicts(mine: dict, theirs: dict) -> list:
    prefixes = {p[:i] for p in theirs for i in range(1, len(p) + 1)}
    found = []
    for path, value in mine.items():
        if path in theirs:
            if not (value is theirs[path] or _same(value, theirs[path])):
                found.append(path)
        elif path in prefixes or any(path[:i] in theirs for i in range(1, len(path))):
            found.append(path)
    return found


def _apply(target: dict, path: tuple, value: Any) -> None:
    node = target
    for key in path[:-1]:
        node = node[key]
    if value is _GONE:
        node.pop(path[-1], None)
    else:
        node[path[-1]] = copy.deepcopy(value)


def merge(base: dict, ours: dict, theirs: dict) -> dict:
    """``theirs`` (the file now) with the changes ``ours`` made to ``base``; Conflict when both changed a key."""
    mine = changes(base, ours)
    edit = changes(base, theirs)
    clash = _conflicts(mine, edit)
    if clash:
        raise Conflict(sorted(clash, key=str))
    for path, value in mine.items():
        _apply(theirs, path, value)
    return theirs


# --- what a hand edit removed ----------------------------------------------------------------

def summary(data: dict) -> dict:
    """What ``vanished`` compares: each slice (owner, name, status, VM IDs), the user names, the counter."""
    return {
        "slices": {str(k): [s.get("owner"), s.get("name"), s.get("status"),
                            [vm.get("vm_id") for vm in s.get("vms") or ()]]
                   for k, s in (data.get("slices") or {}).items() if type(s) is dict},
        "users": sorted(str(u) for u in (data.get("users") or {})),
        "next_vm_id": data.get("next_vm_id") if type(data.get("next_vm_id")) is int else 0,
    }


def vanished(before: Optional[dict], after: dict) -> list:
    """Sentences for what ``after`` lacks of ``before`` (both ``summary`` results)."""
    if not before:
        return []
    out = []
    slices_after = after.get("slices", {})
    for key, (owner, name, status, vms) in before.get("slices", {}).items():
        now = slices_after.get(key)
        if now is None:
            what = f"slice {key} ({name or '-'}, owner {owner}, {status}, VMs {_ids(vms)})"
            out.append(f"{what} is no longer in the file" + (
                ": what it holds on the hosts is now an orphan (option 8 lists it)" if status != "design" else ""))
        else:
            gone = [v for v in vms if v not in set(now[3])]
            if gone:
                out.append(f"VM {_ids(gone)} of slice {key} ({name or '-'}, owner {owner}) is no longer in the file")
    users_after = set(after.get("users", ()))
    gone_users = [u for u in before.get("users", ()) if u not in users_after]
    if gone_users:
        many = len(gone_users) > 1
        out.append(f"user{'s' if many else ''} {', '.join(gone_users[:10])}{' ...' if len(gone_users) > 10 else ''} "
                   f"{'are' if many else 'is'} no longer in the file")
    return out


def _ids(ids: list) -> str:
    return ", ".join(str(i) for i in ids[:12]) + (" ..." if len(ids) > 12 else "") if ids else "none"
