"""Who is working on what: the busy marks of slices and of VMs being added.

A slice being deployed or deleted carries ``busy`` (pid, host, process start
time, the status to go back to); a VM being added is ``pending`` with the
same kind of mark.  Other sessions leave marked things alone while the
marking session lives.  A mark whose session died is *stale*:

* a slice left ``deploying``, ``starting`` or ``stopping`` holds what that
  session made on the hosts: ``usecases.recovery`` undoes it (a deploy, a
  start) or finishes it (a stop) before anyone uses the slice again
  (``needs_recovery``);
* otherwise (a delete that died) the slice is what it was before the mark,
  for every reader, the orphan cleanup included;
* a pending VM of a dead session is rolled back (removed from the slice, its
  quota returned, its disk removed by the caller).

A start or a stop records in its mark the VMs it works on (``vms``): a
starting VM holds its worker's capacity from its admission on, and a
recovery knows which VMs to stop.
"""
from __future__ import annotations

import os
import socket
import time
from typing import Optional

BUSY_STATUSES = ("deploying", "deleting", "stopping", "starting", "repairing", "impairing", "snapshotting",
                 "restoring")
# What a slice marked so was doing on the hosts when its session died, for people and for recovery
# (a restore ends as a stop: its VM, in busy.vms, stopped).
RECOVERED = {"deploying": "deploy", "starting": "start", "stopping": "stop", "restoring": "restore"}


def _proc_start(pid: int) -> Optional[str]:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def marker(previous: Optional[str] = None, **extra) -> dict:
    """A mark for this process (and the status to go back to if it dies, and ``extra`` plain fields)."""
    pid = os.getpid()
    out = {"pid": pid, "host": socket.gethostname(), "start": _proc_start(pid),
           "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    if previous is not None:
        out["previous"] = previous
    out.update(extra)
    return out


def alive(mark: Optional[dict]) -> bool:
    """Is the session that made ``mark`` still running?"""
    if not isinstance(mark, dict):
        return False
    if mark.get("host") != socket.gethostname():
        return True  # another manager host: trust it
    try:
        pid = int(mark.get("pid", 0))
    except (TypeError, ValueError):
        return False
    start = _proc_start(pid)
    return start is not None and start == mark.get("start")


def is_busy(s: dict) -> bool:
    """A live session works on this slice now."""
    return s.get("status") in BUSY_STATUSES and alive(s.get("busy"))


def needs_recovery(s: dict) -> bool:
    """A session died in the middle of a deploy, start or stop of this slice: what it left on the
    hosts must be undone (or the stop finished) before the slice is used again."""
    return s.get("status") in RECOVERED and not alive(s.get("busy"))


def recovery_pending_text(s: dict) -> str:
    """Why a slice whose dead session's work could not be undone yet cannot be used now."""
    what = RECOVERED.get(s.get("status"), "change")
    return (f"Slice {s.get('slice_id')}: what an interrupted {what} (its session ended) left on the hosts "
            "could not be removed yet, because a host cannot be reached; it is removed as soon as the hosts "
            "answer: try again then")


def marked_vm_ids(s: dict) -> Optional[set]:
    """The IDs of the VMs a start or stop marked in ``busy.vms`` (None when the mark does not say)."""
    ids = (s.get("busy") or {}).get("vms") if isinstance(s.get("busy"), dict) else None
    if not isinstance(ids, list):
        return None
    return {int(x) for x in ids if isinstance(x, int) and not isinstance(x, bool)}


def normalise(s: dict) -> bool:
    """Resolve a stale mark of a slice in place: back to its status before.  True if changed.

    A slice that ``needs_recovery`` is left as it is: its mark says what to undo on the hosts.
    """
    if needs_recovery(s):
        return False
    if s.get("status") in BUSY_STATUSES and not alive(s.get("busy")):
        s["status"] = (s.get("busy") or {}).get("previous", "design")
        s.pop("busy", None)
        return True
    if "busy" in s and s.get("status") not in BUSY_STATUSES:
        s.pop("busy", None)
        return True
    return False


def dead_pending_vms(s: dict) -> list:
    """VMs of the slice left ``pending`` by a session that died (their add never finished)."""
    return [vm for vm in s.get("vms", []) if vm.get("status") == "pending" and not alive(vm.get("busy"))]


def holds_resources(s: dict) -> bool:
    """Does the slice hold processes and networks on the hosts (or may a live session be making them)?"""
    status = s.get("status")
    return status in ("running", "stopped") or (status in BUSY_STATUSES and alive(s.get("busy")))
