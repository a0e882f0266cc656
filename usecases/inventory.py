"""Reading slices as they really are: stale marks resolved, dead half-made VMs rolled back.

Every reader (View, the menu's checks, deploy, delete, status, the orphan
scan) first has what a dead session's deploy, start or stop left on the
hosts undone (``usecases.recovery``, through ``Services.recover``), then
sees a slice whose busy mark belongs to a dead session as what it was before
the mark.  ``settle`` also writes that back (under the lock), so the file
shows the real status, and rolls back VMs left ``pending`` by a session that
died in the middle of Add VM: removed from the slice, quota returned, disk
removed (best effort: a disk that cannot be removed now is an orphan that
option 8 finds).
"""
from __future__ import annotations

import copy
import logging
from typing import Optional

from usecases import sessions
from usecases.access import authorized_slice
from usecases.services import Services

log = logging.getLogger("cloudrepo.inventory")


def needs_settling(s: dict, reap: bool = True) -> bool:
    """A stale mark to resolve in the file (one needing a recovery excepted), or dead pending VMs."""
    stale = (s.get("status") in sessions.BUSY_STATUSES and not sessions.alive(s.get("busy"))
             and not sessions.needs_recovery(s))
    return stale or (reap and bool(sessions.dead_pending_vms(s)))


def back_to_design(s: dict) -> None:
    """In a transaction's data: the slice holds nothing on the hosts any more (its disks excepted)."""
    s["status"] = "design"
    s.pop("busy", None)
    s.pop("deployed_at", None)
    for vm in s.get("vms", []):
        if vm.get("status") in ("running", "stopped"):
            vm["status"], vm["pid"] = "design", None
    for n in s.get("networks", []):
        n["status"] = "pending"


def settle_in(data: dict, slice_ids=None, reap: bool = True) -> list:
    """In a transaction's data: resolve stale marks and (``reap``) drop dead pending VMs; returns those VMs."""
    dropped = []
    for sid, s in data["slices"].items():
        if slice_ids is not None and sid not in slice_ids:
            continue
        sessions.normalise(s)
        dead = sessions.dead_pending_vms(s) if reap else []
        if not dead:
            continue
        dead_ids = {vm["vm_id"] for vm in dead}
        s["vms"] = [vm for vm in s["vms"] if vm["vm_id"] not in dead_ids]
        owner = data["users"].get(s.get("owner"))
        if owner:
            owner["used_vms"] = max(0, int(owner.get("used_vms", 0)) - len(dead))
        dropped += dead
        log.warning("slice %s: rolled back %d VM(s) left pending by a dead session: %s",
                    sid, len(dead), sorted(dead_ids))
    return dropped


def guard_refusal(data: dict, slice_id, guard) -> Optional[str]:
    """Why ``guard(slice)`` refuses the slice as ``data`` holds it now, or None (no guard, no slice)."""
    found = data["slices"].get(str(slice_id)) if guard is not None else None
    return guard(found) if found is not None else None


def mark_in(data: dict, username: str, slice_id, status: str, allowed: Optional[tuple] = None) -> tuple:
    """In a transaction's data: mark the user's (or an admin's) slice ``status`` for this session.

    Refused when another live session works on it, when what a dead session left on the hosts is
    still to be undone, or (``allowed``) when it is in another state.
    Returns (True, a copy of the marked slice) or (False, why).
    """
    ok, s = authorized_slice(data, username, slice_id)
    if not ok:
        return False, s
    if sessions.needs_recovery(s):
        return False, sessions.recovery_pending_text(s)
    if sessions.is_busy(s):
        return False, f"Slice is {s['status']} in another session"
    if allowed is not None and s.get("status") not in allowed:
        return False, f"Slice {s['slice_id']} is {s.get('status')}: deploy it first"
    s["busy"] = sessions.marker(s["status"])  # the status to go back to if this session dies
    s["status"] = status
    return True, copy.deepcopy(s)


def unmark_in(data: dict, slice_id: int, status: str) -> Optional[dict]:
    """In a transaction's data: leave the slice in ``status``, its session's mark dropped.

    Returns the slice (to change more of it in the same transaction), or None if it is gone.
    """
    s = data["slices"].get(str(slice_id))
    if s is None:
        return None
    s["status"] = status
    s.pop("busy", None)
    return s


class Inventory:
    """Reading slices; each method returns ``(ok, payload_or_message)``."""

    def __init__(self, services: Services):
        self.s = services

    def settle(self, slice_ids=None, reap: bool = True, data: Optional[dict] = None) -> list:
        """Undo what dead sessions left on the hosts, write back what stale marks mean, and roll back
        dead pending VMs (of some slices, or all).  Returns the VMs rolled back."""
        if self.s.recover(slice_ids, data) or data is None:
            data = self.s.db.load()
        keys = None if slice_ids is None else {str(x) for x in slice_ids}
        if not any(needs_settling(s, reap) for sid, s in data["slices"].items() if keys is None or sid in keys):
            return []
        with self.s.db.transaction() as data:
            dropped = settle_in(data, keys, reap)
        self.remove_disks(dropped)
        return dropped

    def remove_disks(self, vms: list) -> None:
        """Delete the overlays of VMs that were rolled back (failures only logged).

        The add of such a VM may have made its disk at its documented path or at its fallback one
        (a file was in the way): both are tried, and each is removed only if its marker names this VM.
        """
        cmds = [self.s.deployment.delete_pending_vm_command(vm) for vm in vms if vm.get("qcow_image")]
        for res in self.s.runner.run(cmds, phase="rollback", stop_on_failure=False).failures:
            log.warning("could not remove a rolled-back disk on %s: %s", res.host, res.message())

    def _visible(self, data: dict, username: str) -> Optional[list]:
        user = data["users"].get(username)
        if not user:
            return None
        slices = list(data["slices"].values())
        if user.get("role") != "admin":
            slices = [s for s in slices if s.get("owner") == username]
        return slices

    def list_slices(self, username: str) -> tuple:
        """The user's slices (an admin sees every slice), by ID."""
        data = self.s.db.load()
        slices = self._visible(data, username)
        if slices is None:
            return False, "User not found"
        if any(needs_settling(s) or sessions.needs_recovery(s) for s in slices):
            self.settle([s["slice_id"] for s in slices], data=data)
            slices = self._visible(self.s.db.load(), username) or []
        return True, sorted(slices, key=lambda s: int(s["slice_id"]))

    def get_slice(self, username: str, slice_id) -> tuple:
        """One slice the user may see."""
        data = self.s.db.load()
        ok, s = authorized_slice(data, username, slice_id)
        if ok and (needs_settling(s) or sessions.needs_recovery(s)):
            self.settle([s["slice_id"]], data=data)
            data = self.s.db.load()
            ok, s = authorized_slice(data, username, slice_id)
        return ok, s
