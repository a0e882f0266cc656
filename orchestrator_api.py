"""The use cases the menu calls: one façade over the modules that do the work.

Every method returns ``(ok, payload_or_message)`` (SPEC §7).  The work is
done beside this file, one concern per module:

    accounts    logging in, passwords, user management (admin)
    inventory   reading slices as they are (stale marks resolved, dead half-made VMs rolled back)
    design      slices, VMs, links and what they are given (VLAN pool, ID, worker, VNC port, ...)
    lifecycle   deploy and delete on the hosts, all or nothing, with rollback
    reconcile   what the hosts hold against what the database expects (orphans)
    status      a slice as its hosts hold it (VM states, addresses, what is missing)
    guest_access  using a deployed VM: access details, console, boot log
    captures    packet captures on a link or a VM's NIC (live lines or pcap bytes over a channel)
    impairments a link's delay, jitter, loss and rate on both ends' TAPs
    operations  status and repair, per-VM stop/start/reboot, the cluster view
    recovery    ending what a session that died left half-done (a deploy, a start, a stop)
    capacity    what each worker may hold; admission of new and restarted VMs
    runner      the one parallel runner of host commands (failures, Ctrl-C)
    slice_builder  whole slices from a template or a topology file (all or nothing), export
    instructor  class rosters (accounts and a slice each) and the overview of every slice
    snapshots   disk snapshots of VMs (save, restore, delete) within a per-user disk quota
    leases      an expiry per slice within the owner's maximum; the reaper of expired slices

Database discipline: anything that reads then writes the database does it
in one ``db.transaction()``; remote work never runs inside a transaction,
except the admin's orphan cleanup, which must not race with a deploy.
"""
from __future__ import annotations

import logging
from typing import Optional

from database import Database
from deployment_api import DeploymentAPI
from hosts.runner import Progress, Runner
from usecases.access import not_editable_reason
from usecases.accounts import Accounts
from usecases.captures import Captures
from usecases.design import Design
from usecases.guest_access import GuestAccess
from usecases.impairments import LinkImpairments
from usecases.instructor import Instructor
from usecases.inventory import Inventory
from usecases.leases import Leases
from usecases.lifecycle import Lifecycle, deploy_commands, hosts_of, teardown_commands
from usecases.operations import Operations
from usecases.reconcile import Orphan, Reconciler
from usecases.recovery import Recovery
from usecases.services import Services
from usecases.sessions import normalise
from usecases.slice_builder import SliceBuilder
from usecases.snapshots import Snapshots

log = logging.getLogger("cloudrepo.orchestrator")

__all__ = ["OrchestratorAPI", "Orphan"]


class OrchestratorAPI:
    """Slices, VMs, links, deploy and delete for logged-in users."""

    def __init__(self, db: Database, deployment_api: DeploymentAPI, config=None):
        self.db = db
        self.deployment = deployment_api
        self.executor = deployment_api.executor
        self.config = config or self.executor.config
        self.services = Services(db, self.config, deployment_api, Runner(self.executor))
        self.services.recovery = self.recovery = Recovery(self.services)
        self.accounts = Accounts(self.services)
        self.inventory = Inventory(self.services)
        self.design = Design(self.services)
        self.lifecycle = Lifecycle(self.services)
        self.reconciler = Reconciler(self.services)
        self.guests = GuestAccess(self.services)
        self.operations = Operations(self.services)
        self.builder = SliceBuilder(self.services)
        self.instructor = Instructor(self.services, self.builder)
        self.captures = Captures(self.services)
        self.impairments = LinkImpairments(self.services)
        self.snapshots = Snapshots(self.services)
        self.leases = Leases(self.services)

    @property
    def runner(self) -> Runner:
        return self.services.runner

    # --- accounts ------------------------------------------------------------------------

    def authenticate(self, username: str, password: str) -> tuple:
        return self.accounts.authenticate(username, password)

    def change_password(self, username: str, old_password: str, new_password: str) -> tuple:
        return self.accounts.change_password(username, old_password, new_password)

    def create_user(self, admin: str, username: str, password: str, quota_vms=6, role: str = "student") -> tuple:
        return self.accounts.create_user(admin, username, password, quota_vms, role)

    def set_quota(self, admin: str, username: str, quota_vms) -> tuple:
        return self.accounts.set_quota(admin, username, quota_vms)

    def reset_password(self, admin: str, username: str, new_password: str) -> tuple:
        return self.accounts.reset_password(admin, username, new_password)

    def list_users(self, admin: str) -> tuple:
        return self.accounts.list_users(admin)

    def get_quota(self, username: str) -> tuple:
        return self.accounts.get_quota(username)

    # --- reading -------------------------------------------------------------------------

    def list_slices(self, username: str) -> tuple:
        return self.inventory.list_slices(username)

    def get_slice(self, username: str, slice_id) -> tuple:
        return self.inventory.get_slice(username, slice_id)

    @staticmethod
    def not_editable_reason(s: dict) -> str:
        """Why a slice cannot be changed now ("" when it can)."""
        import copy
        s = copy.deepcopy(s)
        normalise(s)
        return not_editable_reason(s) or ""

    def check_editable(self, username: str, slice_id) -> tuple:
        """(True, slice) when the user may change this slice now (owner, design); else why not."""
        return self.design.check_editable(username, slice_id)

    # --- design --------------------------------------------------------------------------

    def create_slice(self, username: str, slice_name: str, topology_type: str = "custom") -> tuple:
        return self.design.create_slice(username, slice_name, topology_type)

    def add_vm_to_slice(self, username: str, slice_id, vm_name: str, flavor_name: str,
                        data_interfaces_count, internet_enabled: bool = False) -> tuple:
        return self.design.add_vm_to_slice(username, slice_id, vm_name, flavor_name, data_interfaces_count,
                                           internet_enabled)

    def create_link(self, username: str, slice_id, vm1_id, vm1_interface: str, vm2_id, vm2_interface: str) -> tuple:
        return self.design.create_link(username, slice_id, vm1_id, vm1_interface, vm2_id, vm2_interface)

    # --- lifecycle -----------------------------------------------------------------------

    def deploy_slice(self, username: str, slice_id, progress: Optional[Progress] = None) -> tuple:
        return self.lifecycle.deploy(username, slice_id, progress).pair()

    def delete_slice(self, username: str, slice_id, progress: Optional[Progress] = None) -> tuple:
        return self.lifecycle.delete(username, slice_id, progress).pair()

    def deploy_commands(self, s: dict) -> tuple:
        """(network node commands, worker commands) that deploy slice ``s`` (facts as known now)."""
        return deploy_commands(s, self.services.host_context(), self.services.credentials)

    def teardown_commands(self, s: dict) -> tuple:
        """(VM stops, network node teardown) for slice ``s``."""
        return teardown_commands(s, self.services.host_context())

    def plan_deploy(self, username: Optional[str], slice_id) -> tuple:
        """The exact commands a deploy would run (facts read from the hosts), running nothing.

        ``username=None``: the operator's dry run (``cli.py --plan``), for any slice.
        """
        if username is None:
            s = self.db.get_slice(slice_id)
            if s is None:
                return False, f"Slice {slice_id} not found"
        else:
            ok, s = self.get_slice(username, slice_id)
            if not ok:
                return False, s
        return self.lifecycle.plan(s)

    def plan_text(self, username: Optional[str], slice_id) -> tuple:
        """(True, [{"host", "step", "text"}]): the plan as the exact text each host's shell would get."""
        ok, cmds = self.plan_deploy(username, slice_id)
        if not ok:
            return False, cmds
        return True, [{"host": c.host, "step": c.step, "text": self.executor.render(c)} for c in cmds]

    def cluster_workers(self, username: str) -> tuple:
        """(True, [worker address]) in the config's order (the overview numbers workers by it)."""
        return True, list(self.config.workers)

    def logout(self, username: str) -> tuple:
        """The session ends (nothing to undo on this side; the service unbinds the session)."""
        return True, f"Goodbye, {username}."

    def hosts_of(self, s: dict) -> list:
        return hosts_of(s, self.config)

    # --- using VMs ------------------------------------------------------------------------

    def access_details(self, username: str, slice_ids: list) -> tuple:
        """(True, {slice_id: [VMView]}): state, login, VNC and addresses of the VMs of running slices."""
        return self.guests.details(username, slice_ids)

    def open_console(self, username: str, slice_id, vm_id) -> tuple:
        """(True, ConsoleSession) on the VM's serial console, or (False, message)."""
        return self.guests.open_console(username, slice_id, vm_id)

    def boot_log(self, username: str, slice_id, vm_id, lines: int = 40) -> tuple:
        return self.guests.boot_log(username, slice_id, vm_id, lines)

    # --- tools of a networking class: captures and link impairments (SPEC §17) ----------------

    def open_capture(self, username: str, slice_id, target, filter_expr: str = "", count=None, seconds=None,
                     mode: str = "text") -> tuple:
        """(True, CaptureSession) capturing on ``target`` (``"link N"`` or ``"VM_ID ethN"``) until ``count``
        packets or ``seconds``; ``mode`` ``text`` (one line per packet) or ``pcap`` (the pcap bytes)."""
        return self.captures.open(username, slice_id, target, filter_expr, count, seconds, mode)

    def set_impairment(self, username: str, slice_id, link_id, delay=None, jitter=None, loss=None, rate=None,
                       progress: Optional[Progress] = None) -> tuple:
        """Give a link delay/jitter (ms), loss (%) and a rate (e.g. ``10mbit``) on both ends' TAPs;
        (True, {"message", "slice_id", "link_id", "impairment", "text"}) or (False, message)."""
        return self.impairments.set(username, slice_id, link_id, delay, jitter, loss, rate, progress)

    def clear_impairment(self, username: str, slice_id, link_id, progress: Optional[Progress] = None) -> tuple:
        return self.impairments.clear(username, slice_id, link_id, progress)

    # --- operating a running cloud ----------------------------------------------------------

    def slice_status(self, username: str, slice_id) -> tuple:
        """(True, SliceReport): each expected object of the slice on its host, found or missing."""
        return self.operations.status(username, slice_id)

    def repair_slice(self, username: str, slice_id, progress: Optional[Progress] = None) -> tuple:
        """Recreate what status finds missing (this slice only); (ok, ActionOutcome or message)."""
        return self.operations.repair(username, slice_id, progress)

    def stop_vm(self, username: str, slice_id, vm_id=None, progress: Optional[Progress] = None) -> tuple:
        """Stop one VM, or every VM of the slice when ``vm_id`` is None (disks kept)."""
        return self.operations.stop(username, slice_id, vm_id, progress)

    def start_vm(self, username: str, slice_id, vm_id=None, progress: Optional[Progress] = None) -> tuple:
        """Start one stopped VM, or every stopped VM of the slice when ``vm_id`` is None."""
        return self.operations.start(username, slice_id, vm_id, progress)

    def reboot_vm(self, username: str, slice_id, vm_id, progress: Optional[Progress] = None) -> tuple:
        return self.operations.reboot(username, slice_id, vm_id, progress)

    def cluster_view(self, username: str) -> tuple:
        """Admin: every host with what it holds against its capacity."""
        return self.operations.cluster_view(username)

    def recover_interrupted(self, progress: Optional[Progress] = None) -> tuple:
        """Once, when the manager service starts: end everything its dead predecessor (or any dead
        session) left half-done: (ok, [RecoveryOutcome]).

        Interrupted deploys are rolled back, starts undone, stops finished, VMs half added rolled
        back, stale marks dropped (each slice's next reader would do the same for that slice).
        """
        return self.recovery.recover_all(progress)

    # --- orphans -------------------------------------------------------------------------

    def find_orphans(self, username: str) -> tuple:
        return self.reconciler.find_orphans(username)

    def cleanup_orphans(self, username: str, orphans: list) -> tuple:
        return self.reconciler.cleanup_orphans(username, orphans)

    # --- classes: templates, topology files, rosters, overview (SPEC §13) ------------------

    def create_from_template(self, username: str, kind: str, n_vms, flavor: str, internet, slice_name: str,
                             owner: Optional[str] = None, progress=None) -> tuple:
        """A linear, ring, star or mesh of ``n_vms`` VMs as a new slice, all or nothing: (True, slice dict)."""
        return self.builder.create_from_template(username, kind, n_vms, flavor, internet, slice_name, owner,
                                                 progress)

    def import_topology(self, username: str, text: str, slice_name: Optional[str] = None,
                        owner: Optional[str] = None, progress=None) -> tuple:
        """A topology file (its text) as a new slice, all or nothing: (True, slice dict) or (False, problems)."""
        return self.builder.import_topology(username, text, slice_name, owner, progress)

    def export_slice(self, username: str, slice_id, fmt: str = "yaml") -> tuple:
        """(True, text): the slice's topology file (``yaml``) or its Graphviz graph (``dot``)."""
        return self.builder.export_slice(username, slice_id, fmt)

    def import_roster(self, admin: str, roster_text: str, roster_format: str, topology_text: Optional[str] = None,
                      slice_name: Optional[str] = None, password_file: Optional[str] = None, progress=None) -> tuple:
        """Admin: accounts from a class list, and a slice from a topology for each: (ok, RosterReport or message)."""
        return self.instructor.import_roster(admin, roster_text, roster_format, topology_text, slice_name,
                                             password_file, progress)

    def overview(self, admin: str) -> tuple:
        """Admin: (True, [OverviewRow]) of every slice."""
        return self.instructor.overview(admin)

    # --- tools of a networking class: disk snapshots and leases (SPEC §17) -----------------

    def list_snapshots(self, username: str, slice_id) -> tuple:
        """(True, SnapshotListing): the slice's VMs with their snapshots, its lease, the owner's disk quota."""
        return self.snapshots.listing(username, slice_id)

    def save_snapshot(self, username: str, slice_id, vm_id, name: str, progress: Optional[Progress] = None) -> tuple:
        """Save the VM's disk as snapshot ``name`` (a running VM is paused for the copy): (ok, message)."""
        return self.snapshots.save(username, slice_id, vm_id, name, progress)

    def restore_snapshot(self, username: str, slice_id, vm_id, name: str,
                         progress: Optional[Progress] = None) -> tuple:
        """The VM's disk back to snapshot ``name`` (stopped meanwhile, started again if it ran): (ok, message)."""
        return self.snapshots.restore(username, slice_id, vm_id, name, progress)

    def delete_snapshot(self, username: str, slice_id, vm_id, name: str,
                        progress: Optional[Progress] = None) -> tuple:
        return self.snapshots.delete(username, slice_id, vm_id, name, progress)

    def set_disk_quota(self, admin: str, username: str, disk_quota_mib) -> tuple:
        """Admin: the MiB a user's snapshots may hold in all."""
        return self.accounts.set_disk_quota(admin, username, disk_quota_mib)

    def set_max_lease(self, admin: str, username: str, max_lease_days) -> tuple:
        """Admin: the longest lease a user may give a slice (days; None or "none": no maximum)."""
        return self.accounts.set_max_lease(admin, username, max_lease_days)

    def set_lease(self, username: str, slice_id, days) -> tuple:
        """The slice's lease ends ``days`` days from now (None or "none": no lease), within the owner's maximum."""
        return self.leases.set_lease(username, slice_id, days)

    def list_leases(self, username: str, slice_id=None) -> tuple:
        """(True, [LeaseInfo]) of the user's slices (an admin: every slice), or of one slice."""
        return self.leases.leases(username, slice_id)

    def lease_warnings(self, username: str) -> tuple:
        """(True, [LeaseInfo]) of the user's own slices whose lease ends soon (``leases.warn_hours``) or ended."""
        return self.leases.warnings(username)

    def reap_leases(self, now: Optional[float] = None, progress: Optional[Progress] = None) -> tuple:
        """The manager's periodic work (never a menu's): (True, [LeaseOutcome]) of what it did.

        Every slice whose lease has ended is stopped; ``leases.grace_hours`` after the
        end it is deleted with the usual teardown.  The manager service calls this every
        minute; ``python3 cli.py lease reap`` runs it once (cron, embedded mode).
        """
        def stop(actor, slice_id, progress_, guard):
            return self.operations.stop(actor, slice_id, None, progress_, guard=guard)

        def delete(actor, slice_id, progress_, guard):
            return self.lifecycle.delete(actor, slice_id, progress_, guard=guard).pair()

        return self.leases.reap(stop, delete, now, progress)
