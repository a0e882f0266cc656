"""Design mode: slices, VMs and links in the database, and what they are given.

Allocation (all inside one database transaction, so concurrent menus never
hand out the same thing twice): the slice's VLAN block, each link's VLAN
(from the whole free range, see ``naming``), the VM's ID, worker, VNC port,
internet address and overlay file name.  A VM is first reserved
(``pending``, with this session's mark and its quota taken), then its
overlay is made on its worker, then it is committed as ``design`` or the
reservation is undone.  A session that dies in between leaves a pending VM
that ``inventory`` rolls back.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Optional

import naming
from hosts.runner import interrupts_ignored
from models import Flavor, Link, Network, Slice, User
from topology.model import MAX_DATA_INTERFACES
from topology.model import TOPOLOGY_TYPES as DESIGNED_TYPES
from usecases import capacity, leases, sessions
from usecases.access import as_int, owned_editable_slice
from usecases.inventory import settle_in
from usecases.services import Services

log = logging.getLogger("cloudrepo.design")

TOPOLOGY_TYPES = DESIGNED_TYPES + ("imported",)  # imported: made from a custom topology file


def all_vms(data: dict) -> list:
    return [vm for s in data["slices"].values() for vm in s.get("vms", [])]


def free_vnc_port(data: dict) -> int:
    """The lowest VNC port from 5901 that no VM in the database holds."""
    used = {int(vm["vnc_port"]) for vm in all_vms(data) if vm.get("vnc_port")}
    port = naming.FIRST_VNC_PORT
    while port in used:
        port += 1
    return port


def free_internet_ip(data: dict, internet: dict, vm_id: int) -> Optional[str]:
    """The documented internet address of a VM, or the next one no VM in the database holds."""
    used = {i["ip_config"]["ip"] for vm in all_vms(data) for i in vm.get("interfaces", []) if i.get("ip_config")}
    return next((ip for ip in naming.internet_ip_candidates(vm_id, internet["cidr"], internet["gateway"])
                 if ip not in used), None)


def vm_counts(data: dict) -> dict:
    """worker -> VMs the database places there."""
    out: dict = {}
    for vm in all_vms(data):
        out[vm.get("worker_ip")] = out.get(vm.get("worker_ip"), 0) + 1
    return out


def pick_worker(data: dict, workers: list, need: capacity.Need, caps: dict) -> tuple:
    """(True, worker) with room for ``need`` holding the fewest VMs (config order breaks ties), else (False, why)."""
    used = capacity.allocations(data["slices"].values())
    return capacity.place(need, workers, used, caps, vm_counts(data))


def overlay_file(data: dict, base_dir: str, worker: str, vm_name: str, vm_id: int) -> str:
    """The documented ``<name>_img.qcow2``, or ``<name>.<id>_img.qcow2`` when a VM on that worker has it
    (``naming``: the fallback of one VM never equals another VM's file)."""
    documented = f"{base_dir}/{vm_name}_img.qcow2"
    taken = any(vm.get("worker_ip") == worker and vm.get("qcow_image") == documented for vm in all_vms(data))
    return os.path.basename(naming.overlay_path(vm_name, vm_id if taken else None))


def check_vm_request(vm_name: str, flavor_name: str, data_interfaces_count) -> tuple:
    """(True, (name, flavor dict, n)) for a valid Add VM request, else (False, message)."""
    vm_name = (vm_name or "").strip() if isinstance(vm_name, str) else ""
    if not naming.valid_name(vm_name):
        return False, f"Invalid VM name: {naming.NAME_RULE}"
    flavor = Flavor.get(flavor_name) if isinstance(flavor_name, str) else None
    if flavor is None:
        return False, "Invalid flavor"
    ok, n_data = as_int(data_interfaces_count, "Number of data interfaces")
    if not ok:
        return False, n_data
    if not 0 <= n_data <= MAX_DATA_INTERFACES:
        return False, f"Number of data interfaces must be between 0 and {MAX_DATA_INTERFACES}"
    return True, (vm_name, flavor, n_data)


class Design:
    """Design use cases; each returns ``(ok, payload_or_message)``."""

    def __init__(self, services: Services):
        self.s = services

    @property
    def config(self):
        return self.s.config

    def create_slice(self, username: str, slice_name: str, topology_type: str = "custom", need_vms: int = 0) -> tuple:
        """A new empty slice in ``design`` with its block of 20 VLANs (or none when all are recorded).

        ``need_vms``: the VMs about to be added to it (a whole topology): refused
        with "Quota exceeded" unless the user's quota leaves room for all of them.
        """
        slice_name = (slice_name or "").strip() if isinstance(slice_name, str) else ""
        if not naming.valid_name(slice_name):
            return False, f"Invalid slice name: {naming.NAME_RULE}"
        if topology_type not in TOPOLOGY_TYPES:
            return False, "Invalid topology type"
        with self.s.db.transaction() as data:
            user = data["users"].get(username)
            if not user:
                return False, "User not found"
            if need_vms and not User.from_dict(user).can_create_vms(need_vms):
                return False, (f"Quota exceeded: {need_vms} VMs needed, {username} uses {user.get('used_vms', 0)} "
                               f"of {user.get('quota_vms', 10)}")
            if any(s.get("owner") == username and s.get("name") == slice_name for s in data["slices"].values()):
                return False, f"You already have a slice named {slice_name}"
            slice_id = int(data.get("next_vm_id", naming.FIRST_ID))
            taken = [(int(s["vlan_pool_start"]), int(s["vlan_pool_end"])) for s in data["slices"].values()
                     if s.get("vlan_pool_start") is not None and s.get("vlan_pool_end") is not None]
            start = naming.allocate_vlan_pool(slice_id, taken, self.config.all_reserved_vlans)
            data["next_vm_id"] = slice_id + 1
            s = Slice(slice_id, username, topology_type, slice_name, start)
            if start is None:  # every block is recorded: its links get free VLANs wherever they are
                s.vlan_pool_start = s.vlan_pool_end = None
            data["slices"][str(slice_id)] = s.to_dict()
            lease_end = leases.default_lease_end(user, time.time())
            if lease_end:  # the owner's maximum lease (none without a maximum: see usecases.leases)
                data["slices"][str(slice_id)]["lease_end"] = lease_end
            user.setdefault("slices", []).append(slice_id)
        if start is None:
            log.info("slice %s: every block of %s VLANs is recorded by a slice; it has none", slice_id,
                     naming.POOL_SIZE)
        elif start != naming.documented_pool_start(slice_id):
            log.info("slice %s: documented VLAN pool taken, using %s-%s", slice_id, start, start + 19)
        return True, {"slice_id": slice_id, "name": slice_name,
                      "vlan_pool_start": start, "vlan_pool_end": s.vlan_pool_end}

    def check_editable(self, username: str, slice_id) -> tuple:
        """(True, slice) when the user may change this slice now; else why not."""
        self.s.recover([slice_id])
        with self.s.db.transaction() as data:
            dropped = settle_in(data, slice_key(slice_id))
            result = owned_editable_slice(data, username, slice_id)
        self._remove_disks(dropped)
        return result

    def _refusal_before_hosts(self, username: str, slice_id, vm_name: str) -> tuple:
        """The checks that need no host (slice, name, quota), before asking workers for their capacity.

        The transaction that reserves the VM checks them again.
        """
        data = self.s.db.load()
        ok, s = owned_editable_slice(data, username, slice_id)
        if not ok:
            return True, ""  # settled and answered inside the transaction
        if any(vm["name"] == vm_name for vm in s.get("vms", [])):
            return False, f"Slice already has a VM named {vm_name}"
        if not User.from_dict(data["users"][username]).can_create_vms(1):
            return False, "Quota exceeded"
        return True, ""

    def _reserve_vm(self, username: str, slice_id, vm_name: str, flavor_name: str, flavor: dict,
                    internet: bool) -> tuple:
        """Take the VM's ID, quota, worker, VNC port, address and overlay name; store it ``pending``."""
        ok, why = self._refusal_before_hosts(username, slice_id, vm_name)
        if not ok:
            return False, why, []
        caps, unreachable = self.s.capacity.capacities(self.config.workers)  # read before taking the lock
        if not caps:
            why = "; ".join(f"{w}: {e}" for w, e in unreachable.items())
            return False, f"Cannot place the VM: no worker can be reached ({why})", []
        with self.s.db.transaction() as data:
            dropped = settle_in(data, slice_key(slice_id))
            ok, s = owned_editable_slice(data, username, slice_id)
            if not ok:
                return False, s, dropped
            if any(vm["name"] == vm_name for vm in s.get("vms", [])):
                return False, f"Slice already has a VM named {vm_name}", dropped
            user = User.from_dict(data["users"][username])
            if not user.can_create_vms(1):
                return False, "Quota exceeded", dropped
            vm_id = int(data.get("next_vm_id", naming.FIRST_ID))
            ip = free_internet_ip(data, self.config.internet, vm_id) if internet else None
            if internet and ip is None:
                return False, "No free internet address left", dropped
            ok, worker = pick_worker(data, self.config.workers, capacity.Need.of({"flavor": flavor}), caps)
            if not ok:
                return False, f"No worker has room for this VM: {worker}", dropped
            data["next_vm_id"] = vm_id + 1
            base_dir = self.s.deployment.qcow_manager.base_dir
            placeholder = {"vm_id": vm_id, "name": vm_name, "owner": username, "worker_ip": worker,
                           "vnc_port": free_vnc_port(data), "status": "pending", "pid": None,
                           "qcow_image": f"{base_dir}/{overlay_file(data, base_dir, worker, vm_name, vm_id)}",
                           "flavor": flavor, "flavor_name": flavor_name, "interfaces": [],
                           "busy": sessions.marker()}
            s["vms"].append(placeholder)
            data["users"][username]["used_vms"] = user.used_vms + 1
            return True, (int(s["slice_id"]), placeholder, ip), dropped

    def add_vm_to_slice(self, username: str, slice_id, vm_name: str, flavor_name: str,
                        data_interfaces_count, internet_enabled: bool = False) -> tuple:
        """Add a VM: checks, reservation, overlay on its worker, then commit or undo."""
        ok, req = check_vm_request(vm_name, flavor_name, data_interfaces_count)
        if not ok:
            return False, req
        vm_name, flavor, n_data = req
        flavor["image"] = self.config.flavor_image(flavor_name, flavor)
        self.s.recover([slice_id])
        ok, reserved, dropped = self._reserve_vm(username, slice_id, vm_name, flavor_name, flavor,
                                                 bool(internet_enabled))
        self._remove_disks(dropped)
        if not ok:
            return False, reserved
        sid, placeholder, ip = reserved
        return self._make_disk_and_commit(sid, placeholder, ip, n_data, bool(internet_enabled))

    def _make_disk_and_commit(self, sid: int, placeholder: dict, ip, n_data: int, internet: bool) -> tuple:
        vm_id, worker, name = placeholder["vm_id"], placeholder["worker_ip"], placeholder["name"]
        fallback = os.path.basename(naming.overlay_path(name, vm_id))
        chosen = os.path.basename(placeholder["qcow_image"])
        vm, committed, vm_dict, made = None, False, None, False
        try:
            made, vm = self.s.deployment.create_vm_with_qcow(
                sid, vm_id, name, placeholder["owner"], worker, placeholder["flavor"], n_data, internet,
                vnc_port=placeholder["vnc_port"], ip=ip, overlay_file=chosen,
                fallback_overlay_file=fallback if fallback != chosen else None)
            if made:
                vm_dict = vm.to_dict()
                vm_dict["flavor_name"] = placeholder["flavor_name"]
                committed = self._commit_vm(sid, vm_dict)
        finally:
            if not committed:  # failure, Ctrl-C, or the slice was deleted meanwhile: leave nothing
                with interrupts_ignored():
                    if vm:
                        self.s.deployment.delete_vm_dict(vm.to_dict())
                    self._undo_reservation(sid, vm_id, placeholder["owner"])
        if not made:
            return False, f"VM creation failed on {worker}: {self.s.deployment.last_error or 'unknown error'}"
        if not committed:
            return False, "Slice was deleted meanwhile"
        return True, vm_dict

    def _commit_vm(self, sid: int, vm_dict: dict) -> bool:
        """Replace the placeholder by the made VM; False when the slice is gone."""
        with self.s.db.transaction() as data:
            stored = data["slices"].get(str(sid))
            if stored is None or not any(v["vm_id"] == vm_dict["vm_id"] for v in stored["vms"]):
                return False
            stored["vms"] = [vm_dict if v["vm_id"] == vm_dict["vm_id"] else v for v in stored["vms"]]
            return True

    def _undo_reservation(self, slice_id: int, vm_id: int, username: str) -> None:
        with self.s.db.transaction() as data:
            s = data["slices"].get(str(slice_id))
            if s is not None and any(v["vm_id"] == vm_id for v in s["vms"]):
                s["vms"] = [v for v in s["vms"] if v["vm_id"] != vm_id]
                user = data["users"].get(username)
                if user:
                    user["used_vms"] = max(0, int(user.get("used_vms", 0)) - 1)

    def _remove_disks(self, vms: list) -> None:
        if vms:
            from usecases.inventory import Inventory
            Inventory(self.s).remove_disks(vms)

    def create_link(self, username: str, slice_id, vm1_id, vm1_interface: str,
                    vm2_id, vm2_interface: str) -> tuple:
        """Join two data interfaces on the next free VLAN of the slice's block (or a free one elsewhere)."""
        ok1, v1 = as_int(vm1_id, "VM IDs")
        ok2, v2 = as_int(vm2_id, "VM IDs")
        if not (ok1 and ok2):
            return False, "VM IDs must be numbers (e.g., 1025, not 'vm1')"
        if1 = vm1_interface.strip() if isinstance(vm1_interface, str) else ""
        if2 = vm2_interface.strip() if isinstance(vm2_interface, str) else ""
        self.s.recover([slice_id])
        with self.s.db.transaction() as data:
            dropped = settle_in(data, slice_key(slice_id))
            result = add_link(data, username, slice_id, (v1, if1), (v2, if2), self.config.all_reserved_vlans)
        self._remove_disks(dropped)
        return result

    def create_links(self, username: str, slice_id, pairs: list) -> tuple:
        """Several links in one transaction, all or none: (True, [link dict]) or (False, message).

        ``pairs``: ``((vm1_id, vm1_interface), (vm2_id, vm2_interface))`` each, checked as ``create_link`` does.
        """
        self.s.recover([slice_id])
        try:
            with self.s.db.transaction() as data:
                made = []
                for end1, end2 in pairs:
                    ok, link = add_link(data, username, slice_id, end1, end2, self.config.all_reserved_vlans)
                    if not ok:
                        raise _Refused(link)  # leaves the transaction without saving anything
                    made.append(link)
        except _Refused as e:
            return False, str(e)
        return True, made


class _Refused(Exception):
    """Aborts a transaction: nothing of it is saved."""


def slice_key(slice_id) -> set:
    """The database key of a slice ID, as a set for ``settle_in`` (empty when not a number)."""
    ok, sid = as_int(slice_id, "Slice ID")
    return {str(sid)} if ok else set()


def link_vlans_in_use(data: dict) -> set:
    """Every VLAN a link of the database holds (with each slice's ``vlan_pool_used``)."""
    used = set()
    for s in data["slices"].values():
        used.update(int(v) for v in s.get("vlan_pool_used") or ())
        used.update(int(link["vlan_id"]) for link in s.get("links") or ())
    return used


def no_free_vlan_message(data: dict, reserved) -> str:
    """The refusal when every link VLAN is held: how many there are and how many links hold them."""
    links = sum(len(s.get("links") or ()) for s in data["slices"].values())
    holders = sum(1 for s in data["slices"].values() if s.get("links"))
    usable = len(naming.link_vlan_range(reserved))
    return (f"No free VLAN for this link: all {usable} link VLANs ({naming.LINK_VLAN_FIRST}-{naming.MAX_VLAN} "
            f"less the reserved ones) are held by {links} links of {holders} slices. "
            "Delete slices that are no longer needed first.")


def add_link(data: dict, username: str, slice_id, end1: tuple, end2: tuple,
             reserved=(naming.INTERNET_VLAN,)) -> tuple:
    """In a transaction's data: link two interfaces of the user's editable slice.

    The link's VLAN is the first free one of the slice's block, else a free one
    elsewhere (``naming.allocate_link_vlan``); ``reserved`` are never given.
    """
    ok, s = owned_editable_slice(data, username, slice_id)
    if not ok:
        return False, s
    sl = Slice.from_dict(s)
    ok, ends = link_ends(sl, (end1, end2))
    if not ok:
        return False, ends
    if len(sl.links) >= naming.MAX_LINKS:
        return False, "VLAN pool exhausted"
    vlan = naming.allocate_link_vlan(sl.vlan_pool_start, link_vlans_in_use(data), reserved)
    if vlan is None:
        return False, no_free_vlan_message(data, reserved)
    sl.vlan_pool_used.append(vlan)
    link_id = max((link.link_id for link in sl.links), default=0) + 1
    for iface in ends:
        iface.vlan_id, iface.link_id = vlan, link_id
    link = Link(link_id, vlan, end1[0], end1[1], end2[0], end2[1])
    sl.links.append(link)
    sl.networks.append(Network.for_link_vlan(vlan))
    data["slices"][str(sl.slice_id)] = sl.to_dict()
    return True, link.to_dict()


def link_ends(sl: Slice, ends: tuple) -> tuple:
    """(True, [Interface, Interface]) when both ends may be linked, else (False, message)."""
    out = []
    for vid, ifname in ends:
        vm = sl.vm(vid)
        if vm is None:
            return False, f"VM {vid} is not in slice {sl.slice_id}"
        if vm.status != "design":
            return False, f"VM {vid} is not ready ({vm.status})"
        iface = vm.interface(ifname)
        if iface is None:
            return False, f"VM {vid} has no interface {ifname!r}"
        if iface.index == 0:
            return False, "eth0 is the management interface: links join data interfaces (eth1 and above)"
        if iface.link_id is not None:
            return False, f"VM {vid} {ifname} is already connected to Link {iface.link_id}"
        out.append(iface)
    if ends[0] == ends[1]:
        return False, "A link needs two different interfaces"
    return True, out
