"""Deploy and delete slices on the hosts, all or nothing, with rollback.

Deploy: mark the slice ``deploying`` (this session's mark), reach every host
it needs in parallel and learn their facts (an unreachable host fails before
anything is made), set up the network node (each link VLAN, the internet
VLAN), then start every VM, hosts in parallel.  Any failure, or Ctrl-C at
any instant, stops handing out steps, waits for those under way and removes
everything of the slice from every host (each removal idempotent, every host
visited even when one fails); the slice goes back to ``design``.

Delete works in any state: VMs first, then their disks (with their
snapshots) and the network node's VLANs, every host visited whatever fails; the slice is removed from
the database only when nothing failed (otherwise it is kept, with the status
it had, and Delete can be run again).
"""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import vlan_manager
import vm_launcher
from hosts import impairments, snapshots
from hosts.hostcmd import CommandResult
from hosts.resources import HostContext
from hosts.runner import Cancel, Progress, StepReport, interrupts_cancel, interrupts_ignored
from models import Slice
from usecases import capacity, leases, sessions
from usecases.access import authorized_slice
from usecases.inventory import Inventory, back_to_design, guard_refusal, mark_in, settle_in, unmark_in
from usecases.services import Services

log = logging.getLogger("cloudrepo.lifecycle")

Guard = Callable[[dict], Optional[str]]  # a slice -> why it must be left alone now, or None


@dataclass
class Outcome:
    """What a lifecycle use case did: ``ok``, a message for people, and the details."""

    ok: bool
    message: str
    failures: list = field(default_factory=list)  # CommandResult of each step that failed
    interrupted: bool = False
    pids: dict = field(default_factory=dict)

    def pair(self) -> tuple:
        return self.ok, self.message


def deploy_commands(s: dict, ctx: HostContext, credentials) -> tuple:
    """(network node commands, worker commands) that deploy slice ``s``.

    ``credentials`` gives each VM's password (sent on the launch script's stdin).
    """
    config = ctx.config
    node, bridge, inet = config.network_node, config.bridge, config.internet
    sl = Slice.from_dict(s)
    node_cmds = [vlan_manager.vlan_up_command(node, v, bridge, int(inet["vlan"]), inet["uplink"], config.management)
                 for v in sl.link_vlans()]
    if sl.uses_internet(int(inet["vlan"])):
        node_cmds.append(vlan_manager.internet_up_command(node, inet, bridge, reservations_of(s, inet),
                                                          config.management))
    vm_cmds = [launch_command(vm, ctx, credentials, s) for vm in s["vms"]]
    return node_cmds, vm_cmds


def launch_command(vm: dict, ctx: HostContext, credentials, s: Optional[dict] = None):
    """The script that (re)starts one VM on its worker (with its links' impairments when ``s``, its slice,
    is given)."""
    config = ctx.config
    password = credentials.password(vm["vm_id"])
    return vm_launcher.launch_vm_command(vm, ctx.home(vm["worker_ip"]), vm_launcher.LaunchSettings.of(config),
                                         password, impairments.impairments_of(s, vm))


def teardown_commands(s: dict, ctx: HostContext) -> tuple:
    """(VM stops, network node teardown) for slice ``s``; all idempotent."""
    config = ctx.config
    node, bridge, inet = config.network_node, config.bridge, config.internet
    sl = Slice.from_dict(s)
    stops = [vm_launcher.stop_vm_command(vm, bridge) for vm in s["vms"]]
    node_cmds = [vlan_manager.vlan_down_command(node, v, bridge) for v in sl.link_vlans()]
    if sl.uses_internet(int(inet["vlan"])):
        node_cmds.append(vlan_manager.internet_release_command(node, inet, bridge, [vm["vm_id"] for vm in s["vms"]]))
    return stops, node_cmds


def reservations_of(s: dict, internet: dict) -> list:
    """(vm_id, mac, ip) of the slice's internet VMs."""
    vlan = int(internet["vlan"])
    return [(vm["vm_id"], i["mac"], i["ip_config"]["ip"]) for vm in s["vms"]
            for i in vm.get("interfaces", []) if i.get("vlan_id") == vlan and i.get("ip_config")]


def hosts_of(s: dict, config) -> list:
    """The hosts a slice needs: the network node first (when it has links or internet), then its workers."""
    workers = sorted({vm["worker_ip"] for vm in s.get("vms", [])})
    if s.get("links") or Slice.from_dict(s).uses_internet(int(config.internet["vlan"])):
        return [config.network_node] + [w for w in workers if w != config.network_node]
    return workers


def failure_text(res: CommandResult) -> str:
    where = f" on {res.host}" if res.host and res.host != "-" else ""
    return f"step '{res.step}'{where}: {res.message()}"


class Lifecycle:
    """Deploy and delete; each returns an ``Outcome``."""

    def __init__(self, services: Services):
        self.s = services

    def plan(self, s: dict) -> tuple:
        """(True, commands) a deploy of ``s`` would run, with the hosts' real facts; or (False, message)."""
        ctx, failed = self.s.connect(hosts_of(s, self.s.config))
        if failed is not None:
            return False, f"Cannot plan: {failure_text(failed)}"
        node_cmds, vm_cmds = deploy_commands(s, ctx, self.s.credentials)
        return True, node_cmds + vm_cmds

    # --- deploy -----------------------------------------------------------------------

    def _reserve_for_deploy(self, username: str, slice_id) -> tuple:
        """Mark the slice ``deploying`` for this session; (True, snapshot, dropped) or (False, message, dropped).

        Checks again that its VMs fit on their workers (capacity read before taking the lock).
        """
        ok, s = authorized_slice(self.s.db.load(), username, slice_id)
        workers = sorted({vm["worker_ip"] for vm in s.get("vms", [])}) if ok else []
        caps, _unreachable = self.s.capacity.capacities(workers) if workers else ({}, {})
        with self.s.db.transaction() as data:
            dropped = settle_in(data, None)
            ok, s = authorized_slice(data, username, slice_id)
            if not ok:
                return False, s, dropped
            if sessions.needs_recovery(s):
                return False, sessions.recovery_pending_text(s), dropped
            status = s.get("status")
            if status == "running":
                return False, "Slice already running", dropped
            if status == "stopped":
                return False, "Slice is stopped: start it (option 14) instead of deploying it", dropped
            if status != "design":
                return False, f"Slice is {status} in another session", dropped
            if not s.get("vms"):
                return False, "Slice has no VMs: add VMs before deploying", dropped
            why = leases.ended_refusal(s, time.time(), "deployed")
            if why:
                return False, why, dropped
            used = capacity.allocations(data["slices"].values(), exclude_slice=s["slice_id"])
            why = capacity.check_slice(s["vms"], used, caps)
            if why:
                return False, f"Not deployed: {why}. Nothing was created.", dropped
            s["status"] = "deploying"
            s["busy"] = sessions.marker("design")
            return True, copy.deepcopy(s), dropped

    def deploy(self, username: str, slice_id, progress: Optional[Progress] = None) -> Outcome:
        """Deploy all or nothing: network node first, then every VM, hosts in parallel."""
        t0 = time.monotonic()
        self.s.recover([slice_id])  # what a dead session's deploy of it left is removed first
        ok, snapshot, dropped = self._reserve_for_deploy(username, slice_id)
        Inventory(self.s).remove_disks(dropped)
        if not ok:
            return Outcome(False, snapshot)
        sid = int(snapshot["slice_id"])
        cancel = Cancel()
        failure: Optional[CommandResult] = None
        with interrupts_cancel(cancel):
            try:
                ctx, failure = self.s.connect(hosts_of(snapshot, self.s.config), progress, t0, cancel)
                if failure is not None:
                    self._finish(sid, "design")
                    why = "was interrupted (Ctrl-C)" if cancel.interrupted else f"failed at {failure_text(failure)}"
                    return Outcome(False, f"Deploy {why}. Nothing was created; the slice is still in design.",
                                   [failure], interrupted=cancel.interrupted)
                outcome, failure = self._deploy_phases(snapshot, ctx, progress, t0, cancel)
                if outcome is not None:
                    return outcome
            except KeyboardInterrupt:  # raised only where no handler could be installed
                cancel.set("interrupted")
            except Exception as e:  # noqa: BLE001 - whatever happened, undo what this deploy made
                log.exception("deploy of slice %s failed", sid)
                failure = CommandResult("-", "", -1, error=f"an internal error ({e})", step="deploy")
        return self._undo(snapshot, progress, t0, failure, cancel.interrupted)

    def _deploy_phases(self, snapshot: dict, ctx: HostContext, progress, t0, cancel: Cancel) -> tuple:
        """Run the network and VM phases: (Outcome, None) on success, (None, failure or None) otherwise."""
        node_cmds, vm_cmds = deploy_commands(snapshot, ctx, self.s.credentials)
        report = StepReport()
        for phase, cmds in (("network", node_cmds), ("vms", vm_cmds)):
            report = self.s.runner.run(cmds, phase=phase, progress=progress, t0=t0, cancel=cancel)
            if not report.ok:
                return None, report.failed
        pids = {vm["vm_id"]: (r.stdout.strip().splitlines() or [None])[-1]
                for vm, r in zip(snapshot["vms"], report.results)}
        if cancel.interrupted or not self._mark_running(int(snapshot["slice_id"]), pids):
            return None, None
        took = time.monotonic() - t0
        return Outcome(True, f"Slice deployed successfully ({len(snapshot['vms'])} VMs, {took:.1f} s)",
                       pids=pids), None

    def _mark_running(self, sid: int, pids: dict) -> bool:
        with self.s.db.transaction() as data:
            s = data["slices"].get(str(sid))
            if s is None:
                return False
            s["status"] = "running"
            s.pop("busy", None)
            s["deployed_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
            for vm in s["vms"]:
                vm["status"] = "running"
                vm["pid"] = pids.get(vm["vm_id"])
            for n in s.get("networks", []):
                n["status"] = "running"
            return True

    def _undo(self, snapshot: dict, progress, t0: float, failure: Optional[CommandResult],
              interrupted: bool) -> Outcome:
        """Roll a failed or interrupted deploy back; the slice returns to design."""
        with interrupts_ignored():
            undo_failures = self._teardown(snapshot, progress, t0, "rollback")
            self._finish(int(snapshot["slice_id"]), "design")
        why = "interrupted (Ctrl-C)" if interrupted and failure is None else \
            f"failed at {failure_text(failure) if failure else 'an unknown step'}"
        if undo_failures:
            hosts = ", ".join(sorted({r.host for r in undo_failures}))
            tail = (f"Some of what this deploy created could not be removed (on {hosts}): see the log, "
                    "and use '8. Cleanup orphaned VMs'.")
        else:
            tail = "Everything this deploy created was removed; the slice is still in design."
        return Outcome(False, f"Deploy {why}. {tail}", [f for f in [failure] if f] + undo_failures,
                       interrupted=interrupted)

    def _teardown(self, snapshot: dict, progress, t0: float, phase: str, extra: Optional[list] = None,
                  cancel: Optional[Cancel] = None) -> list:
        """Remove everything of a slice from every host it can reach: VMs, then the network (and ``extra``).

        Returns the failures (never stops at the first one).
        """
        ctx = self.s.host_context()
        stops, node_cmds = teardown_commands(snapshot, ctx)
        failures = []
        for cmds in (stops, node_cmds + (extra or [])):
            report = self.s.runner.run(cmds, phase=phase, progress=progress, t0=t0, cancel=cancel,
                                       stop_on_failure=False)
            failures += report.failures
            if report.interrupted:
                failures.insert(0, CommandResult("-", "", -1, error="interrupted (Ctrl-C)", step=phase))
                break
        return failures

    def _finish(self, sid: int, status: str) -> None:
        """Leave a slice in ``status`` and drop the busy mark.  Back to ``design``: nothing runs."""
        with self.s.db.transaction() as data:
            s = unmark_in(data, sid, status)
            if s is not None and status == "design":
                back_to_design(s)

    # --- delete -----------------------------------------------------------------------

    def _reserve_for_delete(self, username: str, slice_id, guard: Optional[Guard] = None) -> tuple:
        with self.s.db.transaction() as data:
            dropped = settle_in(data, None)
            why = guard_refusal(data, slice_id, guard)
            if why:
                return False, why, dropped
            return (*mark_in(data, username, slice_id, "deleting"), dropped)

    def delete(self, username: str, slice_id, progress: Optional[Progress] = None,
               guard: Optional[Guard] = None) -> Outcome:
        """Delete a slice in any state: stop its VMs, tear its VLANs down, delete its overlays and snapshots.

        ``guard(slice)``, checked under the database lock before anything is done, may refuse (the
        lease reaper: "is the lease still over?").
        """
        t0 = time.monotonic()
        self.s.recover([slice_id])
        ok, snapshot, dropped = self._reserve_for_delete(username, slice_id, guard)
        Inventory(self.s).remove_disks(dropped)
        if not ok:
            return Outcome(False, snapshot)
        restore = snapshot["busy"]["previous"]
        disks = [self.s.deployment.delete_vm_command(vm) for vm in snapshot["vms"] if vm.get("qcow_image")]
        disks += snapshots.purge_commands(snapshot["vms"])
        cancel = Cancel()
        with interrupts_cancel(cancel):
            # Always the whole teardown, whatever the status says: a session that died may have
            # left VMs or VLANs of a design slice (every step is idempotent).
            failures = self._teardown(snapshot, progress, t0, "delete", extra=disks, cancel=cancel)
        with interrupts_ignored():
            return self._forget_or_restore(int(snapshot["slice_id"]), restore, failures)

    def _forget_or_restore(self, sid: int, restore: str, failures: list) -> Outcome:
        with self.s.db.transaction() as data:
            s = data["slices"].get(str(sid))
            if s is None:
                return Outcome(False, "Slice was already deleted")
            if failures:
                s["status"] = restore
                s.pop("busy", None)
                first = failures[0]
                others = len({r.host for r in failures if r.host != first.host})
                more = f" (and {others} other host(s))" if others else ""
                return Outcome(False, f"Delete incomplete: {failure_text(first)}{more}. "
                                      "The slice is kept; run Delete again (when the host is back).", failures,
                               interrupted=first.error.startswith("interrupted"))
            owner = data["users"].get(s["owner"])
            if owner:
                owner["slices"] = [x for x in owner.get("slices", []) if int(x) != sid]
                owner["used_vms"] = max(0, int(owner.get("used_vms", 0)) - len(s.get("vms", [])))
            del data["slices"][str(sid)]
        return Outcome(True, "Slice deleted")
