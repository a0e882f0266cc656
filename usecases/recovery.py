"""Ending what a session that died left half-done on the hosts (a killed menu, a killed service).

A session marks a slice before it changes the hosts (``sessions``).  When it
dies (SIGKILL, a crash, the manager service killed), its mark names a
process that is gone, and what it was doing decides how it ends, the way a
failure would have ended it:

* ``deploying`` (the slice was ``design``): the deploy's rollback, i.e. the
  slice's whole idempotent teardown (its VMs, TAPs, rules and state files,
  its link VLANs, its internet reservations; its disks stay); the slice is
  ``design`` again with nothing on any host;
* ``starting``: the VMs the start worked on are stopped (disks kept): a start
  that never finished ends as stopped, with nothing of those VMs running;
* ``stopping``: the stop is finished: the VMs it worked on are stopped;
* ``restoring`` (a disk snapshot's restore, ``usecases.snapshots``): ended as
  a stop: its VM is stopped, its disk the old or the restored one (the
  restore copies, then renames), for its owner to start again.

(A delete that died leaves the slice as it was before: run Delete again.)

The next reader or writer of the slice (View, deploy, delete, start/stop,
status and repair, a design change, option 8) calls ``recover`` first.  It
takes the mark over in one transaction (its own session's, so no other
session does the same work at once), runs the removals on every host it can
reach, then writes the end state.  A host that cannot be reached puts the
dead session's mark back: the slice stays blocked (every change refused with
a message saying why) and a later reader tries again, at most every
``RETRY_S`` seconds in one process.  A session that dies during a recovery
leaves its own stale mark, with the same meaning: the next reader starts
over (every step is idempotent).

The manager service calls ``recover_all`` once when it starts: its marks are
its own pid, so after it was killed every slice it left marked is recovered
at once, VMs left half-added included.
"""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from typing import Optional

import vm_launcher
from hosts.runner import Progress, interrupts_ignored
from usecases import sessions
from usecases.access import as_int
from usecases.inventory import Inventory, back_to_design, needs_settling
from usecases.lifecycle import failure_text, teardown_commands
from usecases.services import Services

log = logging.getLogger("cloudrepo.recovery")

OPERATIONS = {**sessions.RECOVERED, "deleting": "delete", "repairing": "repair"}


@dataclass
class RecoveryOutcome:
    """How one slice's interrupted work ended (plain fields: it crosses the service's socket)."""

    slice_id: int
    operation: str   # "deploy", "start", "stop", "delete", "add VM"
    ok: bool
    status: str      # the slice's status now
    message: str


def _keys(slice_ids) -> Optional[set]:
    """Database keys of slice IDs typed by people (None: every slice)."""
    if slice_ids is None:
        return None
    out = set()
    for x in slice_ids:
        ok, sid = as_int(x, "Slice ID")
        if ok:
            out.add(str(sid))
    return out


def marked_vms(s: dict) -> list:
    """The VMs a start or stop worked on: those its mark lists (a mark that lists none: every VM it
    may have touched)."""
    ids = sessions.marked_vm_ids(s)
    vms = s.get("vms", [])
    if ids is not None:
        return [vm for vm in vms if int(vm["vm_id"]) in ids]
    if s.get("status") == "starting" and (s.get("busy") or {}).get("previous") != "stopped":
        return [vm for vm in vms if vm.get("status") == "stopped"]
    return list(vms)


def recovery_commands(s: dict, ctx, bridge: str) -> tuple:
    """(VM commands, network node commands) that end the interrupted work of slice ``s``."""
    if s.get("status") == "deploying":
        return teardown_commands(s, ctx)
    return [vm_launcher.stop_vm_command(vm, bridge, keep_log=True, graceful=True) for vm in marked_vms(s)], []


def end_state(s: dict, snapshot: dict) -> None:
    """In a transaction's data: the slice as its interrupted work ends (``snapshot``: as taken over)."""
    if snapshot.get("status") == "deploying":
        back_to_design(s)
        return
    ids = {int(vm["vm_id"]) for vm in marked_vms(snapshot)}
    for vm in s.get("vms", []):
        if int(vm["vm_id"]) in ids:
            vm["status"], vm["pid"] = "stopped", None
    every = all(vm.get("status") in ("stopped", "pending") for vm in s.get("vms", []))
    s["status"] = "stopped" if every else "running"
    s.pop("busy", None)


def _same_mark(a, b) -> bool:
    return isinstance(a, dict) and all(a.get(k) == b.get(k) for k in ("pid", "host", "start"))


class Recovery:
    """Recovers slices whose session died in the middle of a deploy, start or stop."""

    RETRY_S = 30.0  # after a failed recovery (a host down), readers of one process wait this long to retry

    def __init__(self, services: Services):
        self.s = services

    def _due(self, key: str) -> bool:
        failed_at = self.s.recovery_failures.get(key)
        return failed_at is None or time.monotonic() - failed_at >= self.RETRY_S

    def recover(self, slice_ids=None, data: Optional[dict] = None, progress: Optional[Progress] = None,
                force: bool = False) -> list:
        """Recover the slices (of ``slice_ids``, or all) that need it: [RecoveryOutcome], one per slice.

        ``data``: the database as just read (saves a read); ``force``: retry a recent failure too.
        """
        keys = _keys(slice_ids)
        if keys is not None and not keys:
            return []
        data = data if data is not None else self.s.db.load()
        wanted = [key for key, s in data["slices"].items()
                  if (keys is None or key in keys) and sessions.needs_recovery(s) and (force or self._due(key))]
        if not wanted:
            return []
        with interrupts_ignored():  # undoing must not be interrupted halfway
            taken = self._take_over(wanted)
            if not taken:
                return []
            failures = self._run(taken, progress)
            return self._finish(taken, failures)

    def _take_over(self, keys: list) -> list:
        """In one transaction: put this session's mark on each slice still needing recovery.

        Returns [(snapshot with this session's mark, the dead session's mark)].
        """
        out = []
        with self.s.db.transaction() as data:
            for key in keys:
                s = data["slices"].get(key)
                if s is None or not sessions.needs_recovery(s):
                    continue  # another session recovered it meanwhile
                dead = copy.deepcopy(s.get("busy")) if isinstance(s.get("busy"), dict) else {}
                default = "design" if s.get("status") == "deploying" else "running"
                mark = sessions.marker(dead.get("previous", default))
                mark.update({k: v for k, v in dead.items() if k not in mark})  # what it worked on (vms)
                mark["recovering"] = {k: dead.get(k) for k in ("pid", "host", "since")}
                s["busy"] = mark
                out.append((copy.deepcopy(s), dead))
        return out

    def _run(self, taken: list, progress: Optional[Progress]) -> dict:
        """Run every slice's VM commands, then the network node's: slice key -> [failed CommandResult]."""
        ctx, bridge = self.s.host_context(), self.s.config.bridge
        plans = [(str(snap["slice_id"]), recovery_commands(snap, ctx, bridge)) for snap, _dead in taken]
        failures: dict = {key: [] for key, _cmds in plans}
        t0 = time.monotonic()
        for index in (0, 1):  # VMs first, then the VLANs they were on
            owners = [key for key, cmds in plans for _c in cmds[index]]
            cmds = [c for _key, cmds in plans for c in cmds[index]]
            report = self.s.runner.run(cmds, phase="recover", progress=progress, t0=t0, stop_on_failure=False)
            for key, res in zip(owners, report.results):
                if res is None or not res.ok:
                    failures[key].append(res)
        return failures

    def _finish(self, taken: list, failures: dict) -> list:
        """Write each slice's end state (or put the dead mark back when something failed)."""
        outcomes = []
        with self.s.db.transaction() as data:
            for snap, dead in taken:
                key = str(snap["slice_id"])
                op = sessions.RECOVERED.get(snap.get("status"), "change")
                s = data["slices"].get(key)
                if s is None or not _same_mark(s.get("busy"), snap["busy"]):
                    outcomes.append(RecoveryOutcome(int(key), op, False, "gone" if s is None else s.get("status"),
                                                    "the slice changed meanwhile"))
                    continue
                failed = failures.get(key)
                bad = [r for r in failed or [] if r is not None]
                if failed:
                    s["busy"] = dead  # the next reader tries again
                    self.s.recovery_failures[key] = time.monotonic()
                    why = failure_text(bad[0]) if bad else "interrupted"
                    outcomes.append(RecoveryOutcome(int(key), op, False, s.get("status"),
                                                    f"interrupted {op} not undone yet: {why}"))
                    log.warning("slice %s: the interrupted %s of a dead session could not be undone: %s",
                                key, op, why)
                    continue
                end_state(s, snap)
                self.s.recovery_failures.pop(key, None)
                done = "rolled back" if op == "deploy" else ("finished" if op == "stop" else
                                                             "ended with its VM stopped" if op == "restore"
                                                             else "undone")
                outcomes.append(RecoveryOutcome(int(key), op, True, s["status"],
                                                f"the interrupted {op} of a session that died was {done}; "
                                                f"the slice is {s['status']}"))
                log.warning("slice %s: the interrupted %s of a dead session (%s) was %s; now %s", key, op,
                            dead.get("pid"), done, s["status"])
        return outcomes

    def recover_all(self, progress: Optional[Progress] = None) -> tuple:
        """Everything dead sessions left marked, at once (the manager service, when it starts):
        (ok, [RecoveryOutcome]): interrupted deploys, starts and stops, deletes, VMs half added."""
        outcomes = self.recover(None, progress=progress, force=True)
        data = self.s.db.load()
        stale = {key: s.get("status") for key, s in data["slices"].items() if needs_settling(s, reap=False)}
        dropped = Inventory(self.s).settle(None)
        after = self.s.db.load()["slices"]
        for key, status in sorted(stale.items()):
            now = after.get(key, {}).get("status", "gone")
            outcomes.append(RecoveryOutcome(int(key), OPERATIONS.get(status, "change"), True, now,
                                            f"the mark of a session that died was dropped; the slice is {now}"))
        for vm in dropped:
            key = next((k for k, s in data["slices"].items()
                        if any(v["vm_id"] == vm["vm_id"] for v in s.get("vms", []))), "0")
            outcomes.append(RecoveryOutcome(int(key), "add VM", True, after.get(key, {}).get("status", "gone"),
                                            f"VM {vm['vm_id']} ({vm.get('name')}), half added by a session that "
                                            "died, was rolled back"))
        return all(o.ok for o in outcomes), outcomes
