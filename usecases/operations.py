"""Operating a running cloud: slice status and repair, per-VM stop/start/reboot, the cluster view (SPEC §14).

Status and repair use the same expected-vs-found comparison as the orphan
cleanup (``status.slice_report``).  Repair recreates exactly what is
missing, with the deploy's own idempotent steps, for this slice only:

* a link VLAN missing any part (marker, gateway, flows, namespace, dnsmasq): that
  VLAN's set-up again;
* the internet VLAN, the NAT rule, the isolation rules or one of the
  slice's reservations missing: the internet set-up with this slice's
  reservations (it keeps a working shared set-up as it is);
* the isolation rules or the node's trunk missing or detached, the slice
  having links: the set-up of its first link VLAN (which remakes both);
* a VM whose QEMU is gone (crashed, killed, worker rebooted), or whose TAP is
  missing: the VM is started again from its disk;
* a VM whose port on br-int is missing or has the wrong tag, QEMU still
  running: its ports are wired again.

Per-VM and per-slice stop/start keep the disks; a stopped VM frees its
worker's CPU and memory (capacity no longer counts it) and keeps its quota.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

import naming
import vlan_manager
import vm_launcher
from hosts import impairments
from hosts.hostcmd import HostCommand, q
from hosts.runner import Cancel, Progress, interrupts_cancel
from usecases import capacity, leases
from usecases.access import as_int, authorized_slice, require_admin
from usecases.inventory import Inventory, guard_refusal, mark_in, settle_in, unmark_in
from usecases.lifecycle import launch_command, reservations_of
from usecases.services import Services
from usecases.status import SliceReport, slice_report

NODE_KINDS = ("vlan", "gateway", "vlanflows", "namespace", "dnsmasq")


@dataclass
class StepOutcome:
    """One step of a repair or of a lifecycle action, for the report."""

    host: str
    step: str
    ok: bool
    message: str = ""


@dataclass
class ActionOutcome:
    ok: bool
    message: str
    steps: list = field(default_factory=list)

    def pair(self) -> tuple:
        return self.ok, self.message


def reboot_command(vm: dict) -> HostCommand:
    """Root script: reset the VM's virtual machine over QMP (its QEMU process and disk stay)."""
    vm_id = int(vm["vm_id"])
    qmp = q(f"UNIX-CONNECT:{naming.vm_qmp_socket(vm_id)}")
    req = '{"execute":"qmp_capabilities"}\\n{"execute":"system_reset"}\\n'
    script = (f"resp=$(printf '{req}' | socat -t 2 - {qmp} 2>&1) || true\n"
              "case \"$resp\" in *'\"return\": {}'*'\"return\": {}'*) ;; "
              "*) echo \"the VM did not accept the reset: $resp\" >&2; exit 6;; esac")
    return HostCommand(vm["worker_ip"], script, sudo=True, timeout=20, step=f"reboot VM {vm_id} ({vm['name']})",
                       action="reboot_vm", target=vm_id)


def repair_plan(report: SliceReport, services: Services) -> list:
    """The commands that recreate what ``report`` found missing (this slice's objects only)."""
    s, config = report.slice, services.config
    node, bridge, inet = config.network_node, config.bridge, config.internet
    internet_vlan = int(inet["vlan"])
    bad = report.problems
    cmds = []
    bad_vlans = sorted({c.key.vlan for c in bad if c.key.kind in NODE_KINDS and c.key.vlan != internet_vlan})
    cmds += [vlan_manager.vlan_up_command(node, v, bridge, internet_vlan, inet["uplink"], config.management)
             for v in bad_vlans]
    internet_bad = any((c.key.kind in NODE_KINDS and c.key.vlan == internet_vlan)
                       or c.key.kind in ("nat", "isolation", "reservation") for c in bad)
    if internet_bad and reservations_of(s, inet):
        cmds.append(vlan_manager.internet_up_command(node, inet, bridge, reservations_of(s, inet), config.management))
    elif any(c.key.kind in ("isolation", "trunk") for c in bad) and s.get("links"):
        first = min(int(link["vlan_id"]) for link in s["links"])
        if first not in bad_vlans:
            cmds.append(vlan_manager.vlan_up_command(node, first, bridge, internet_vlan, inet["uplink"],
                                                     config.management))
    ctx = services.host_context()
    for vm in s.get("vms", []):
        vm_id = int(vm["vm_id"])
        mine = {c.key.kind for c in bad if c.key.vm_id == vm_id}
        if mine & {"qemu", "tap", "vmfiles"}:
            cmds.append(launch_command(vm, ctx, services.credentials, s))
            continue
        if mine & {"port", "flows"}:
            cmds.append(vm_launcher.wire_vm_command(vm, vm_launcher.LaunchSettings.of(config)))
        cmds += impairment_repairs(report, vm)
    return cmds


def impairment_repairs(report: SliceReport, vm: dict) -> list:
    """Commands giving a running VM's TAPs back their links' impairments (missing or different), and
    clearing an impairment its links no longer have."""
    vm_id = int(vm["vm_id"])
    wanted = impairments.impairments_of(report.slice, vm)
    bad = {c.key.name for c in report.problems if c.key.kind == "impair" and c.key.vm_id == vm_id}
    bad |= {k.name for k in report.extra if k.kind == "impair" and k.vm_id == vm_id}
    return [impairments.impair_command(vm, naming.tap_index(tap)[1], wanted.get(naming.tap_index(tap)[1]))
            for tap in sorted(bad)]


class _Refused(Exception):
    """Aborts a transaction: nothing of it is saved."""


class Operations:
    """Status, repair, VM lifecycle and the cluster view; each returns ``(ok, payload_or_message)``."""

    def __init__(self, services: Services):
        self.s = services

    # --- status and repair -------------------------------------------------------------

    def _slice_for(self, username: str, slice_id) -> tuple:
        if as_int(slice_id, "Slice ID")[0]:
            Inventory(self.s).settle([slice_id])
        data = self.s.db.load()
        ok, s = authorized_slice(data, username, slice_id)
        return (True, (s, data)) if ok else (False, s)

    def status(self, username: str, slice_id) -> tuple:
        """(True, SliceReport): what the slice's hosts hold against what it should have."""
        ok, found = self._slice_for(username, slice_id)
        if not ok:
            return False, found
        s, data = found
        if s.get("status") not in ("running", "stopped"):
            return False, f"Slice {s['slice_id']} is {s.get('status')}: only a deployed slice has a status on the hosts"
        return True, slice_report(self.s, s, data)

    def repair(self, username: str, slice_id, progress: Optional[Progress] = None) -> tuple:
        """Recreate what status finds missing; (ok, ActionOutcome with a step per command)."""
        ok, report = self.status(username, slice_id)
        if not ok:
            return False, report
        if any(v is not True for v in report.reachable.values()):
            down = ", ".join(h for h, v in report.reachable.items() if v is not True)
            return False, f"Cannot repair while a host cannot be reached: {down}"
        cmds = repair_plan(report, self.s)
        lost = [c for c in report.problems if c.key.kind == "snapshot"]
        if not cmds and lost:
            return False, ActionOutcome(False, f"Repair cannot make lost snapshots again ({lost[0].label}"
                                               f"{' and more' if len(lost) > 1 else ''}): delete them (option 19)")
        if not cmds:
            return True, ActionOutcome(True, "Nothing to repair: the slice has everything it should")
        outcome, results = self._run(cmds, "repair", progress)
        self._record_pids(report.slice, results)
        return outcome.ok, outcome

    def _run(self, cmds: list, phase: str, progress: Optional[Progress]) -> tuple:
        """Run every command (each host visited whatever fails): (ActionOutcome, [(command, result)])."""
        cancel = Cancel()
        with interrupts_cancel(cancel):
            report = self.s.runner.run(cmds, phase=phase, progress=progress, stop_on_failure=False, cancel=cancel)
        steps = [StepOutcome(c.host, c.step, r is not None and r.ok, "" if r is None else r.message())
                 for c, r in zip(cmds, report.results)]
        results = [(c, r) for c, r in zip(cmds, report.results) if r is not None]
        failed = [st for st in steps if not st.ok]
        if report.interrupted:
            return ActionOutcome(False, f"{phase.capitalize()} interrupted (Ctrl-C) after {len(steps) - len(failed)} "
                                        "step(s); run it again", steps), results
        if failed:
            return ActionOutcome(False, f"{phase.capitalize()} incomplete: {len(failed)} of {len(steps)} step(s) "
                                        f"failed (first: '{failed[0].step}' on {failed[0].host}: {failed[0].message})",
                                 steps), results
        return ActionOutcome(True, f"{phase.capitalize()} done: {len(steps)} step(s)", steps), results

    def _record_pids(self, s: dict, results: list) -> None:
        """Store the pids of VMs (re)started by a run."""
        pids = {c.target: (r.stdout.strip().splitlines() or [None])[-1]
                for c, r in results if c.action == "start_vm" and r.ok}
        if not pids:
            return
        with self.s.db.transaction() as data:
            stored = data["slices"].get(str(s["slice_id"]))
            for vm in (stored or {}).get("vms", []):
                if vm["vm_id"] in pids:
                    vm["pid"], vm["status"] = pids[vm["vm_id"]], "running"

    # --- VM lifecycle -------------------------------------------------------------------

    def _mark(self, username: str, slice_id, status: str, vm_id, caps: Optional[dict] = None,
              guard=None) -> tuple:
        """Owner/admin, the slice running or stopped: mark it ``status`` for this session, with the VMs
        it works on (``busy.vms``), in one transaction: (True, snapshot, dropped) or (False, why, dropped).

        ``caps`` (a start: workers' capacities, read before): admission happens in that same
        transaction, and the marked VMs hold their workers' capacity from then on, so two starts at
        once never both take the last room.  ``guard(slice)`` may refuse under the same lock (why, or
        None: the lease reaper's "is the lease still over?"); a slice whose lease ended is not started.
        """
        try:
            with self.s.db.transaction() as data:
                dropped = settle_in(data, None)
                why = guard_refusal(data, slice_id, guard)
                if why:
                    return False, why, dropped
                ok, s = mark_in(data, username, slice_id, status, ("running", "stopped"))
                if not ok:
                    return False, s, dropped
                why = leases.ended_refusal(s, time.time(), "started") if status == "starting" else None
                if why:
                    raise _Refused(why)
                ok, vms = self._select_vms(s, vm_id)
                if not ok:
                    raise _Refused(vms)
                if status == "starting":
                    vms = self._admit(data, s, vms, caps or {})
                ids = [int(vm["vm_id"]) for vm in vms]
                data["slices"][str(s["slice_id"])]["busy"]["vms"] = ids
                s["busy"]["vms"] = ids
                return True, s, dropped
        except _Refused as e:  # nothing of the transaction is saved: the slice was never marked
            return False, str(e), []

    @staticmethod
    def _admit(data: dict, s: dict, vms: list, caps: dict) -> list:
        """In the marking transaction: the VMs of a start (the stopped ones) if they fit, else _Refused."""
        previous = s["busy"]["previous"]
        vms = [vm for vm in vms if vm.get("status") == "stopped" or previous == "stopped"]
        if not vms:
            raise _Refused("Nothing to start: the VM is not stopped")
        used = capacity.allocations(data["slices"].values())
        why = capacity.check_slice([dict(vm, status="design") for vm in vms], used, caps)
        if why:
            raise _Refused(f"Not started: {why}")
        return vms

    def _unmark(self, sid: int, status: str, vm_updates: dict) -> None:
        with self.s.db.transaction() as data:
            s = unmark_in(data, sid, status)
            for vm in s.get("vms", []) if s is not None else []:
                if vm["vm_id"] in vm_updates:
                    vm["status"], vm["pid"] = vm_updates[vm["vm_id"]]

    def _select_vms(self, s: dict, vm_id) -> tuple:
        if vm_id is None:
            return True, list(s.get("vms", []))
        ok, vid = as_int(vm_id, "VM ID")
        if not ok:
            return False, vid
        vm = next((v for v in s.get("vms", []) if int(v["vm_id"]) == vid), None)
        return (True, [vm]) if vm else (False, f"VM {vid} is not in slice {s['slice_id']}")

    def stop(self, username: str, slice_id, vm_id=None, progress: Optional[Progress] = None, guard=None) -> tuple:
        """Stop one VM (``vm_id``) or the whole slice: processes gone, disks kept, status ``stopped``."""
        self.s.recover([slice_id])
        ok, s, dropped = self._mark(username, slice_id, "stopping", vm_id, guard=guard)
        Inventory(self.s).remove_disks(dropped)
        if not ok:
            return False, s
        previous = s["busy"]["previous"]
        vms = [vm for vm in s["vms"] if vm["vm_id"] in s["busy"]["vms"]]
        cmds = [vm_launcher.stop_vm_command(vm, self.s.config.bridge, keep_log=True, graceful=True) for vm in vms]
        outcome, results = self._run(cmds, "stop", progress)
        stopped = {c.target: ("stopped", None) for c, r in results if r.ok}
        whole = vm_id is None or all(v["vm_id"] in stopped or v.get("status") == "stopped" for v in s["vms"])
        self._unmark(int(s["slice_id"]), "stopped" if whole and outcome.ok else previous, stopped)
        return outcome.ok, outcome.message if not outcome.ok else (
            f"Stopped {len(stopped)} VM(s); disks kept" + ("; the slice is stopped" if whole else ""))

    def start(self, username: str, slice_id, vm_id=None, progress: Optional[Progress] = None) -> tuple:
        """Start one stopped VM or every stopped VM of the slice, after checking they fit."""
        self.s.recover([slice_id])
        ok, s, dropped = self._mark(username, slice_id, "starting", vm_id, self._capacities(username, slice_id))
        Inventory(self.s).remove_disks(dropped)
        if not ok:
            return False, s
        sid, previous = int(s["slice_id"]), s["busy"]["previous"]
        vms = [vm for vm in s["vms"] if vm["vm_id"] in s["busy"]["vms"]]
        ctx, failed = self.s.connect(sorted({vm["worker_ip"] for vm in vms}))
        if failed is not None:
            self._unmark(sid, previous, {})
            return False, f"Not started: cannot reach {failed.host}: {failed.message()}"
        outcome, results = self._run([launch_command(vm, ctx, self.s.credentials, s) for vm in vms], "start",
                                     progress)
        started = {c.target: ("running", (r.stdout.strip().splitlines() or [None])[-1]) for c, r in results if r.ok}
        self._unmark(sid, "running" if started or previous == "running" else previous, started)
        return outcome.ok, outcome.message if not outcome.ok else f"Started {len(started)} VM(s)"

    def _capacities(self, username: str, slice_id) -> dict:
        """The capacities of the workers of a slice the user may see (read over SSH, before any lock)."""
        ok, s = authorized_slice(self.s.db.load(), username, slice_id)
        workers = sorted({vm["worker_ip"] for vm in s.get("vms", [])}) if ok else []
        return self.s.capacity.capacities(workers)[0] if workers else {}

    def reboot(self, username: str, slice_id, vm_id, progress: Optional[Progress] = None) -> tuple:
        """Reset a running VM (its QEMU keeps running: same pid, same disk)."""
        ok, s = self._slice_for(username, slice_id)
        if not ok:
            return False, s
        s, _data = s
        if s.get("status") != "running":
            return False, f"Slice {s['slice_id']} is {s.get('status')}: only a running VM can be rebooted"
        ok, vms = self._select_vms(s, vm_id)
        if not ok:
            return False, vms
        if vms[0].get("status") == "stopped":
            return False, f"VM {vms[0]['vm_id']} is stopped: start it instead"
        outcome, _results = self._run([reboot_command(vms[0])], "reboot", progress)
        return outcome.ok, outcome.message if not outcome.ok else f"VM {vms[0]['vm_id']} is rebooting"

    # --- cluster view ---------------------------------------------------------------------

    def cluster_view(self, username: str) -> tuple:
        """Admin: per host, reachable or not, VMs running, memory and vCPUs allocated against capacity, free disk."""
        data = self.s.db.load()
        err = require_admin(data, username)
        if err:
            return False, err
        hosts = self.s.config.hosts
        reach = self.s.connect_each(hosts)
        up = [h for h in hosts if reach[h] is not None and reach[h].ok]
        facts = self.s.capacity.read(up, refresh=True)
        used = capacity.allocations(data["slices"].values())
        rows = []
        for host in hosts:
            f = facts.get(host)
            role = ", ".join(r for r, yes in (("worker", host in self.s.config.workers),
                                              ("network node", host == self.s.config.network_node)) if yes)
            row = {"host": host, "role": role, "reachable": host in up and isinstance(f, capacity.HostFacts),
                   "error": "" if host in up else (reach[host].message() if reach[host] else "not tried")}
            if isinstance(f, capacity.HostFacts):
                cap = capacity.capacity_of(host, f, self.s.capacity.raw)
                u = used.get(host, capacity.ZERO)
                row.update(vms_running=f.vms_running, memory_used=u.memory_mib, memory_cap=cap.memory_mib,
                           vcpus_used=u.vcpus, vcpus_cap=cap.vcpus, disk_free_mib=f.disk_free_mib)
            elif isinstance(f, str):
                row["error"] = f
            rows.append(row)
        return True, {"rows": rows, "at": time.strftime("%Y-%m-%d %H:%M:%S")}
