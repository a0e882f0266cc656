"""The ID counter (``next_vm_id``): one counter for slices and VMs, from 1000 (SPEC §3).

An ID in use is never handed out again, whatever the counter says: a
counter at or below an ID in use (an instructor "resetting" it by hand, a
stale copy saved by an editor) would give the next slice the ID of another
user's slice and overwrite it.  ``counter_behind(data)`` finds that case,
``correct_counter(data)`` moves the counter past every ID in use (and says
so: the store logs it and tells the admin), ``take_id(data)`` hands out the
next ID.  IDs in use: every slice's key and ``slice_id``, every VM's
``vm_id``, and every slice ID still listed in a user's ``slices``.
"""
from __future__ import annotations

from typing import Optional

import naming


def highest_id_in_use(data: dict) -> Optional[int]:
    """The largest ID the data uses (None when it uses none)."""
    top = -1
    for key, s in (data.get("slices") or {}).items():
        for value in (key, s.get("slice_id")):
            if type(value) is int or (type(value) is str and value.isdigit()):
                top = max(top, int(value))
        for vm in s.get("vms") or ():
            vm_id = vm.get("vm_id")
            if type(vm_id) is int and vm_id > top:
                top = vm_id
    for user in (data.get("users") or {}).values():
        for sid in user.get("slices") or ():
            if type(sid) is int and sid > top:
                top = sid
    return top if top >= 0 else None


def counter_behind(data: dict) -> Optional[tuple]:
    """(counter, highest ID in use) when the counter would hand out an ID in use, else None."""
    counter = data.get("next_vm_id", naming.FIRST_ID)
    if type(counter) is not int:
        return None                    # the shape check reports it
    top = highest_id_in_use(data)
    if top is not None and counter <= top:
        return counter, top
    return None


def correct_counter(data: dict) -> Optional[str]:
    """Move a counter that is behind past every ID in use; the sentence saying so, or None."""
    behind = counter_behind(data)
    if behind is None:
        return None
    counter, top = behind
    data["next_vm_id"] = top + 1
    return (f"next_vm_id was {counter}, but ID {top} is in use: corrected to {top + 1} "
            "(an ID in use is never handed out again)")


def take_id(data: dict) -> int:
    """The next ID of the one counter (never one in use), the counter moved past it."""
    correct_counter(data)
    vm_id = int(data.get("next_vm_id", naming.FIRST_ID))
    data["next_vm_id"] = vm_id + 1
    return vm_id
