"""Disk snapshots of VMs (SPEC §17): save, list, restore, delete, within a per-user disk quota.

A snapshot is a copy of the VM's overlay on its worker (``hosts.snapshots``
says why copies, and how each script works).  In ``database.yaml``:

``slices.<id>.vms[i].snapshots``
    the VM's snapshots, oldest first: ``{name, created_at, size_bytes}``
    (``size_bytes``: the copy's size, measured on the worker when it was
    made; the copy never changes afterwards).  Present (possibly empty) once
    a snapshot of the VM was ever started, so the VM's deletion removes any
    file a dead session left.
``users.<name>.disk_quota_mib``
    the MiB the user's snapshots may hold in all, over every VM of every
    slice they own (absent or null: ``snapshots.quota_mib`` of the config,
    1024 by default).  Admin-set (option 11) or from a roster's column.

Rules: the owner or an admin, on a VM of a deployed slice (running or
stopped).  Names follow the slice/VM rule (no ``/``, no spaces, 1-32
characters).  A save is refused before anything is made when the VM has
``snapshots.max_per_vm`` snapshots, the name is taken, or the copy (the
overlay's size, read on the worker) would take the owner past their quota;
the slice's owner pays for it, whoever saves it.  While a save, restore or
delete runs, the slice is ``snapshotting`` (``restoring`` for a restore),
marked for this session, and the mark names the snapshot, so the orphan scan
leaves its files alone.  A session that dies in a restore (a killed menu or
service) is ended by ``usecases.recovery`` as a stop is: the VM is stopped,
its disk the old one or the restored one (never half: a copy then a rename),
and its owner starts it again (option 14).  One that dies in a save leaves
the VM running (the worker's script resumes it as it ends) and maybe a file
no VM holds, which option 8 finds.

* save: a running VM is paused for the copy and resumed (its guest keeps
  running: nothing reboots); a stopped VM is copied as it is;
* restore: the VM is stopped through QMP as option 14 does (its last writes
  reach the disk), its overlay replaced by a copy of the snapshot, and it is
  started again if it was running (the guest boots from the restored disk);
  later snapshots are kept;
* delete: the snapshot's files are removed; the VM is not touched.

Ctrl-C waits until the VM is back as it was (each step is short and
bounded by its timeout); a failure leaves the disk as it was, and a VM that
was running is started again.  Snapshots go with their VM: deleting the
slice removes them (``lifecycle``), and the orphan scan (``snapshot`` kind)
finds any file no VM in the database holds.
"""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from typing import Optional

import naming
import vm_launcher
from hosts import snapshots as builders
from hosts.hostcmd import CommandResult
from hosts.runner import Progress, interrupts_ignored
from usecases import leases, sessions
from usecases.access import as_int, authorized_slice
from usecases.accounts import MIB, disk_quota_of, snapshot_bytes
from usecases.inventory import Inventory, mark_in, settle_in, unmark_in
from usecases.lifecycle import launch_command
from usecases.services import Services

log = logging.getLogger("cloudrepo.snapshots")

def mib(n_bytes: int) -> str:
    """``12.3 MiB``."""
    return f"{n_bytes / MIB:.1f} MiB"


@dataclass
class SnapshotInfo:
    name: str
    created_at: str
    size_bytes: int


@dataclass
class VMSnapshots:
    vm_id: int
    name: str
    status: str
    snapshots: list = field(default_factory=list)   # SnapshotInfo, oldest first


@dataclass
class SnapshotListing:
    """A slice's VMs with their snapshots, its lease, and the owner's disk quota."""

    slice_id: int
    name: str
    owner: str
    status: str
    vms: list                       # VMSnapshots
    used_bytes: int                 # the owner's snapshots, every slice
    quota_mib: int
    max_per_vm: int
    lease: Optional[leases.LeaseInfo] = None

    @property
    def left_bytes(self) -> int:
        return max(0, self.quota_mib * MIB - self.used_bytes)


class Snapshots:
    """Snapshot use cases; each returns ``(ok, payload_or_message)``."""

    def __init__(self, services: Services):
        self.s = services

    # --- reading ---------------------------------------------------------------------------

    def listing(self, username: str, slice_id, now: Optional[float] = None) -> tuple:
        """(True, SnapshotListing) of a slice the user may see."""
        if as_int(slice_id, "Slice ID")[0]:
            Inventory(self.s).settle([slice_id], reap=False)  # a mark of a dead session is what it was before
        data = self.s.db.load()
        ok, s = authorized_slice(data, username, slice_id)
        if not ok:
            return False, s
        owner = str(s.get("owner"))
        vms = [VMSnapshots(int(vm["vm_id"]), vm["name"], str(vm.get("status")),
                           [SnapshotInfo(str(x.get("name")), str(x.get("created_at") or "-"),
                                         int(x.get("size_bytes") or 0)) for x in vm.get("snapshots") or []])
               for vm in s.get("vms", [])]
        lease = leases.Leases(self.s).info(s, data["users"], time.time() if now is None else now)
        return True, SnapshotListing(int(s["slice_id"]), str(s.get("name") or "-"), owner, str(s.get("status")),
                                     vms, snapshot_bytes(data, owner), disk_quota_of(data["users"].get(owner),
                                                                               self.s.config),
                                     int(self.s.config.setting("snapshots.max_per_vm")), lease)

    # --- marking ---------------------------------------------------------------------------

    def _mark(self, username: str, slice_id, vm_id, name: str, action: str) -> tuple:
        """Check the request and mark the slice (``restoring`` for a restore, else ``snapshotting``):
        (True, (slice copy, vm, limit)) or (False, why)."""
        if not naming.valid_name(name if isinstance(name, str) else ""):
            return False, f"Invalid snapshot name: {naming.NAME_RULE} (no '/', no spaces)"
        ok, vid = as_int(vm_id, "VM ID")
        if not ok:
            return False, vid
        self.s.recover([slice_id])  # what a dead session's deploy, start, stop or restore left
        with self.s.db.transaction() as data:
            settle_in(data, None, reap=False)
            ok, s = authorized_slice(data, username, slice_id)
            if not ok:
                return False, s
            vm = next((v for v in s.get("vms", []) if int(v["vm_id"]) == vid), None)
            why = self._refusal(data, s, vm, vid, name, action)
            if why:
                return False, why
            status = "restoring" if action == "restore" else "snapshotting"
            ok, marked = mark_in(data, username, slice_id, status, ("running", "stopped"))
            if not ok:
                return False, marked
            stored = data["slices"][str(s["slice_id"])]
            stored["busy"]["snapshot"] = {"vm_id": vid, "name": name, "action": action}
            if action == "restore":  # the VM a recovery stops if this session dies (usecases.recovery)
                stored["busy"]["vms"] = [vid]
            stored_vm = next(v for v in stored["vms"] if int(v["vm_id"]) == vid)
            stored_vm.setdefault("snapshots", [])
            owner = data["users"].get(s.get("owner"))
            limit = disk_quota_of(owner, self.s.config) * MIB - snapshot_bytes(data, str(s.get("owner")))
            return True, (marked, copy.deepcopy(stored_vm), limit)

    def _refusal(self, data: dict, s: dict, vm: Optional[dict], vid: int, name: str, action: str) -> Optional[str]:
        """Why this save/restore/delete cannot be done now (checked under the lock), or None."""
        if sessions.is_busy(s):
            return f"Slice is {s['status']} in another session"
        if vm is None:
            return f"VM {vid} is not in slice {s['slice_id']}"
        if s.get("status") not in ("running", "stopped"):
            return (f"Slice {s['slice_id']} is {s.get('status')}: snapshots are of the VMs of a deployed slice "
                    "(running or stopped)")
        taken = {x.get("name") for x in vm.get("snapshots") or []}
        if action != "save":
            return None if name in taken else f"VM {vid} ({vm['name']}) has no snapshot {name}"
        if name in taken:
            return f"VM {vid} ({vm['name']}) already has a snapshot {name}: choose another name or delete it first"
        most = int(self.s.config.setting("snapshots.max_per_vm"))
        if len(taken) >= most:
            return f"VM {vid} ({vm['name']}) already has {len(taken)} snapshots (at most {most}): delete one first"
        owner = str(s.get("owner"))
        quota = disk_quota_of(data["users"].get(owner), self.s.config)
        if snapshot_bytes(data, owner) >= quota * MIB:
            return (f"Not saved: the disk quota for snapshots of {owner} is full ({mib(snapshot_bytes(data, owner))} "
                    f"of {quota} MiB used): delete snapshots that are no longer needed")
        return None

    def _unmark(self, sid: int, status: str, vm_id: int, change=None) -> None:
        """Leave the slice in ``status``; ``change(vm)`` updates the VM's record in the same transaction."""
        with self.s.db.transaction() as data:
            s = unmark_in(data, sid, status)
            vm = next((v for v in (s or {}).get("vms", []) if int(v["vm_id"]) == vm_id), None)
            if vm is not None and change is not None:
                change(vm)

    def _run(self, cmd, progress: Optional[Progress], t0: Optional[float] = None) -> CommandResult:
        report = self.s.runner.run([cmd], phase="snapshot", progress=progress, t0=t0)
        return report.results[0] or CommandResult.failed(cmd, "not run")

    # --- save ------------------------------------------------------------------------------

    def save(self, username: str, slice_id, vm_id, name: str, progress: Optional[Progress] = None) -> tuple:
        """Save the VM's disk as snapshot ``name`` (a running VM is paused meanwhile, then resumed)."""
        ok, found = self._mark(username, slice_id, vm_id, name, "save")
        if not ok:
            return False, found
        s, vm, limit = found
        sid, previous, vid = int(s["slice_id"]), s["busy"]["previous"], int(vm["vm_id"])
        with interrupts_ignored():
            ctx, failed = self.s.connect([vm["worker_ip"]])
            res = failed or self._run(builders.save_command(vm, ctx.home(vm["worker_ip"]), name, limit), progress)
            size = _value_of(res.stdout, "size")
            record = {"name": name, "created_at": leases.stamp(time.time()), "size_bytes": size or 0}
            self._unmark(sid, previous, vid, (lambda v: v["snapshots"].append(record)) if res.ok else None)
        if res.ok:
            log.info("slice %s: snapshot %s of VM %s saved (%s bytes)", sid, name, vid, size)
            paused = "paused" in res.stdout.split()
            return True, (f"Snapshot {name} of VM {vid} ({vm['name']}) saved: {mib(size or 0)}"
                          f"{'; the VM was paused for the copy and runs on' if paused else ''}")
        if res.exit_status == builders.NO_ROOM:
            need = _value_of(res.stdout, "need") or 0
            return False, (f"Not saved: the snapshot needs {mib(need)} and the disk quota for snapshots of "
                           f"{s.get('owner')} leaves {mib(max(0, limit))}: delete snapshots that are no longer "
                           "needed")
        return False, f"Not saved: {_failure(res)}. Nothing was made; the VM is as it was"

    # --- restore ---------------------------------------------------------------------------

    def restore(self, username: str, slice_id, vm_id, name: str, progress: Optional[Progress] = None) -> tuple:
        """The VM's disk restored from snapshot ``name``: stopped, replaced, started again if it was running."""
        ok, found = self._mark(username, slice_id, vm_id, name, "restore")
        if not ok:
            return False, found
        s, vm, _limit = found
        sid, previous, vid = int(s["slice_id"]), s["busy"]["previous"], int(vm["vm_id"])
        was_running = previous == "running" and vm.get("status") != "stopped"
        t0 = time.monotonic()
        with interrupts_ignored():
            ctx, failed = self.s.connect([vm["worker_ip"]])
            stop = failed or self._run(vm_launcher.stop_vm_command(vm, self.s.config.bridge, keep_log=True,
                                                                   graceful=True), progress, t0)
            res = stop if not stop.ok else \
                self._run(builders.restore_command(vm, ctx.home(vm["worker_ip"]), name), progress, t0)
            start = self._run(launch_command(vm, ctx, self.s.credentials), progress, t0) \
                if was_running and failed is None else None
            pid = (start.stdout.strip().splitlines() or [None])[-1] if start is not None and start.ok else None
            if failed is not None:  # the worker was never reached: the VM is as it was
                self._unmark(sid, previous, vid)
            else:
                self._unmark(sid, self._status_after(s, vid, pid is not None, previous), vid,
                             lambda v: v.update(status="running" if pid else "stopped", pid=pid))
        return self._restore_message(vm, name, res, stop, was_running, start)

    @staticmethod
    def _status_after(s: dict, vid: int, running: bool, previous: str) -> str:
        """The slice's status once the VM is ``running`` or not: stopped when none of its VMs runs."""
        others = any(v.get("status") != "stopped" for v in s.get("vms", []) if int(v["vm_id"]) != vid)
        return "running" if running or (previous == "running" and others) else "stopped"

    @staticmethod
    def _restore_message(vm: dict, name: str, res: CommandResult, stop: CommandResult, was_running: bool,
                         start: Optional[CommandResult]) -> tuple:
        what = f"VM {vm['vm_id']} ({vm['name']})"
        again = "" if not was_running else "; it is running again" if start is not None and start.ok else \
            f"; but it could not be started again ({_failure(start) if start else 'not reached'}): start it " \
            "with option 14"
        if not stop.ok:
            return False, f"Not restored: {what} could not be stopped ({_failure(stop)}). Its disk is as it was"
        if not res.ok:
            return False, f"Not restored: {_failure(res)}. The disk of {what} is as it was{again}"
        return (start is None or start.ok), f"{what} restored from snapshot {name}{again or '; it stays stopped'}"

    # --- delete ----------------------------------------------------------------------------

    def delete(self, username: str, slice_id, vm_id, name: str, progress: Optional[Progress] = None) -> tuple:
        """Remove snapshot ``name`` of the VM (its files on the worker, then its record)."""
        ok, found = self._mark(username, slice_id, vm_id, name, "delete")
        if not ok:
            return False, found
        s, vm, _limit = found
        sid, previous, vid = int(s["slice_id"]), s["busy"]["previous"], int(vm["vm_id"])
        with interrupts_ignored():
            ctx, failed = self.s.connect([vm["worker_ip"]])
            res = failed or self._run(builders.delete_command(vm, ctx.home(vm["worker_ip"]), name), progress)

            def forget(v: dict) -> None:
                v["snapshots"] = [x for x in v.get("snapshots") or [] if x.get("name") != name]
            self._unmark(sid, previous, vid, forget if res.ok else None)
        if not res.ok:
            return False, f"Not deleted: {_failure(res)}. The snapshot is kept; try again"
        return True, f"Snapshot {name} of VM {vid} ({vm['name']}) deleted"


def _value_of(stdout: str, word: str) -> Optional[int]:
    """N of the last ``<word> N`` line of a script's output."""
    for line in reversed(stdout.splitlines()):
        parts = line.split()
        if len(parts) == 2 and parts[0] == word and parts[1].isdigit():
            return int(parts[1])
    return None


def _failure(res: CommandResult) -> str:
    where = f" on {res.host}" if res.host and res.host != "-" else ""
    return f"'{res.step}'{where}: {res.message()}"
