"""The ID counter (``next_vm_id``): one counter for slices and VMs, from 1000 (SPEC §3).

An ID in use is never handed out again, whatever the counter says: a
counter at or below an ID in use (an instructor "resetting" it by hand, a
stale copy saved by an editor) would give the next slice the ID of another
user's slice and overwrite it.  ``counter_behind(data)`` finds that case,
``correct_counter(data)`` moves the counter past every ID in use (and says
so: the store logs it and tells the admin), ``take_id(data)`` hands out the
next ID.  IDs in use: every slice's key and ``slice_id``, every VM's
``vm_id``, and every slice ID still listed in a user's ``slices``.  The
store also passes a floor, the highest counter it knew before a hand edit
(store/edits.py's summary): an editor's stale copy that drops a slice and
puts the counter back never gets that slice's IDs handed out again while
its VMs may still run on the hosts.
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


def counter_behind(data: dict, floor: int = 0) -> Optional[tuple]:
    """(counter, the lowest counter that hands out no ID in use, why) when the counter is behind, else None.

    ``floor``: a counter the product already had (IDs below it were handed
    out, and may still name things on the hosts even when the file lost them)."""
    counter = data.get("next_vm_id", naming.FIRST_ID)
    if type(counter) is not int:
        return None                    # the shape check reports it
    top = highest_id_in_use(data)
    if top is not None and counter <= top and top + 1 >= floor:
        return counter, top + 1, f"ID {top} is in use"
    if counter < floor:
        return counter, floor, (f"IDs up to {floor - 1} were handed out already (what a slice the file no longer "
                                "has made on the hosts may still hold them)")
    return None


def correct_counter(data: dict, floor: int = 0) -> Optional[str]:
    """Move a counter that is behind past every ID in use (and ``floor``); the sentence saying so, or None."""
    behind = counter_behind(data, floor)
    if behind is None:
        return None
    counter, fixed, why = behind
    data["next_vm_id"] = fixed
    return f"next_vm_id was {counter}, but {why}: corrected to {fixed} (an ID in use is never handed out again)"


def take_id(data: dict, floor: int = 0) -> int:
    """The next ID of the one counter (never one in use), the counter moved past it."""
    correct_counter(data, floor)
    vm_id = int(data.get("next_vm_id", naming.FIRST_ID))
    data["next_vm_id"] = vm_id + 1
    return vm_id
