"""VM objects for the design phase: VNC port, MACs, interfaces, the overlay.

As documented: ``DeploymentAPI(remote_executor, base_image_path=None)`` with
``vnc_port_counter = 5900`` (first VM 5901), MACs
``52:54:00:{(vm_id>>8)&0xFF:02x}:{vm_id&0xFF:02x}:{i:02x}``, eth0 on the
internet VLAN with an ``ip_config`` when internet is enabled, eth1..ethN
unconnected.  The orchestrator passes the VNC port, the internet address and
the overlay file it reserved in the database, so that they stay unique
across restarts and concurrent menus (the in-memory counter alone is only
used when nobody passes a port, as in the original).
"""
from __future__ import annotations

import logging
import posixpath
from typing import Optional

import naming
from hosts.hostcmd import HostCommand
from models import VM, Interface
from qcow_manager import OVERLAY_EXISTS, QCOWManager, overlay_delete
from remote_executor import RemoteExecutor

log = logging.getLogger("cloudrepo.deployment")


class DeploymentAPI:
    """Builds VM objects and their overlays on workers."""

    def __init__(self, remote_executor: RemoteExecutor, base_image_path: Optional[str] = None):
        self.executor = remote_executor
        self.base_image_path = base_image_path
        self.vnc_port_counter = naming.VNC_BASE
        config = getattr(remote_executor, "config", None)
        base_dir = getattr(config, "worker_image_dir", naming.IMAGE_DIR)
        self.qcow_manager = QCOWManager(remote_executor, base_dir=base_dir)
        self.last_error = ""

    @staticmethod
    def generate_unique_macs(vm_id: int, count: int = 3) -> list:
        """Deterministic MACs, one per interface index."""
        return [f"52:54:00:{(vm_id >> 8) & 0xFF:02x}:{vm_id & 0xFF:02x}:{i:02x}"
                for i in range(count)]

    def internet_ip_config(self, vm_id: int, ip: Optional[str] = None) -> dict:
        """eth0's ``ip_config`` on the internet VLAN (documented formula by default)."""
        inet = getattr(self.executor.config, "internet", None) or {
            "cidr": "10.60.7.0/24", "gateway": "10.60.7.1"}
        if ip is None:
            ip = naming.internet_ip_candidates(vm_id, inet["cidr"], inet["gateway"])[0]
        return {"ip": ip, "cidr": inet["cidr"], "gateway": inet["gateway"]}

    def build_interfaces(self, vm_id: int, data_interfaces_count: int, internet_enabled: bool,
                         ip: Optional[str] = None) -> list:
        """eth0 (internet VLAN or nothing) then unconnected eth1..ethN."""
        macs = self.generate_unique_macs(vm_id, data_interfaces_count + 1)
        internet_vlan = getattr(self.executor.config, "internet_vlan", naming.INTERNET_VLAN)
        eth0 = (Interface("eth0", internet_vlan, macs[0], self.internet_ip_config(vm_id, ip))
                if internet_enabled else Interface("eth0", None, macs[0]))
        return [eth0] + [Interface(f"eth{i}", None, macs[i]) for i in range(1, data_interfaces_count + 1)]

    def create_vm_with_qcow(self, slice_id: int, vm_id: int, vm_name: str, owner: str,
                            worker_ip: str, flavor: dict, data_interfaces_count: int,
                            internet_enabled: bool = False, *, vnc_port: Optional[int] = None,
                            ip: Optional[str] = None, overlay_file: Optional[str] = None,
                            fallback_overlay_file: Optional[str] = None) -> tuple:
        """Create the VM's overlay on its worker and return ``(True, VM)`` in ``design``.

        ``(False, None)`` on failure, with the reason in ``last_error``.
        """
        self.last_error = ""
        try:
            if vnc_port is None:
                self.vnc_port_counter += 1
                vnc_port = self.vnc_port_counter
            else:
                self.vnc_port_counter = max(self.vnc_port_counter, vnc_port)
            interfaces = self.build_interfaces(vm_id, data_interfaces_count, internet_enabled, ip)
            base = self.base_image_path or flavor.get("image")
            marker = naming.overlay_marker_text(vm_id)
            ok, image = self.qcow_manager.create_backing_image(worker_ip, vm_name, base, [],
                                                               overlay_file=overlay_file, owner=marker)
            if not ok and fallback_overlay_file and self.qcow_manager.last_exit == OVERLAY_EXISTS:
                ok, image = self.qcow_manager.create_backing_image(worker_ip, vm_name, base, [],
                                                                   overlay_file=fallback_overlay_file, owner=marker)
            if not ok:
                self.last_error = self.qcow_manager.last_error
                return False, None
            vm = VM(vm_id, vm_name, owner, worker_ip, vnc_port, interfaces, dict(flavor), image)
            vm.status = "design"
            return True, vm
        except Exception as e:  # noqa: BLE001 - documented contract: (False, None) on any error
            log.exception("create_vm_with_qcow failed for VM %s", vm_id)
            self.last_error = str(e)
            return False, None

    @staticmethod
    def delete_vm_command(vm_dict: dict) -> HostCommand:
        """The command that removes a VM's overlay from its worker (only if its marker names that VM)."""
        return overlay_delete(vm_dict["worker_ip"], vm_dict["qcow_image"], int(vm_dict["vm_id"]))

    @staticmethod
    def delete_pending_vm_command(vm_dict: dict) -> HostCommand:
        """For a VM whose add never finished: its disk at the documented or the fallback path,
        whichever its add made (only a file whose marker names that VM; no marker of before)."""
        folder = posixpath.dirname(vm_dict["qcow_image"])
        name, vm_id = vm_dict["name"], int(vm_dict["vm_id"])
        candidates = [posixpath.join(folder, posixpath.basename(naming.overlay_path(name, x))) for x in (None, vm_id)]
        also = tuple(p for p in candidates if p != vm_dict["qcow_image"])
        return overlay_delete(vm_dict["worker_ip"], vm_dict["qcow_image"], vm_id, legacy=False, also=also)

    def delete_vm_dict(self, vm_dict: dict) -> bool:
        """Delete the overlay of a serialized VM (no-op without one)."""
        image = vm_dict.get("qcow_image")
        if not image:
            return True
        try:
            return self.qcow_manager.delete_image(vm_dict["worker_ip"], image, vm_dict.get("vm_id"))
        except Exception:  # noqa: BLE001 - documented contract: False on any error
            log.exception("delete_vm_dict failed for VM %s", vm_dict.get("vm_id"))
            return False
