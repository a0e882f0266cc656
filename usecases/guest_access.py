"""Using a deployed VM: its access details, its console, its boot log (SPEC §10).

Only the slice's owner, or an admin, gets them.  Access details hold, per
VM: its state on its host (running, stopped, crashed), the user and
password to log in with, its VNC address, and each NIC's real address (the
network node's lease on a link VLAN; the ``ip_config`` on the internet VLAN).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from hosts import console, seed
from models import Flavor
from remote_executor import ExecutorError
from usecases.access import as_int, authorized_slice
from usecases.inventory import Inventory
from usecases.services import Services
from usecases.status import slice_reports


@dataclass
class NicView:
    name: str
    mac: str
    vlan: Optional[int]
    address: Optional[str]
    link_id: Optional[int]


@dataclass
class VMView:
    vm_id: int
    name: str
    worker: str
    state: str
    user: str
    password: Optional[str]
    vnc: str
    nics: list = field(default_factory=list)


@dataclass
class ConsoleSession:
    """An open console: the channel to bridge, and what to tell the user first."""

    vm: VMView
    channel: object
    early: bytes = b""


class GuestAccess:
    """Access details, consoles and boot logs; each method returns ``(ok, payload_or_message)``."""

    def __init__(self, services: Services):
        self.s = services

    def _vm_view(self, s: dict, vm: dict, report, with_password: bool) -> VMView:
        internet = int(self.s.config.internet["vlan"])
        nics = [NicView(i["name"], i.get("mac"), i.get("vlan_id"),
                        report.address(vm, i, internet) if report else None, i.get("link_id"))
                for i in vm.get("interfaces", [])]
        profile = seed.guest_profile(Flavor.name_of(vm) or "")
        return VMView(int(vm["vm_id"]), vm["name"], vm["worker_ip"],
                      report.vm_state(vm) if report else vm.get("status", "design"), profile.user,
                      self.s.credentials.password(vm["vm_id"]) if with_password else None,
                      f"{vm['worker_ip']}:{vm['vnc_port']}", nics)

    def details(self, username: str, slice_ids: list) -> tuple:
        """(True, {slice_id: [VMView]}) for running slices the user may see (passwords only to owner/admin)."""
        data = self.s.db.load()
        slices = []
        for sid in slice_ids:
            ok, s = authorized_slice(data, username, sid)
            if ok and s.get("status") in ("running", "stopped"):
                slices.append(s)
        if not slices:
            return True, {}
        reports = slice_reports(self.s, slices, data)
        return True, {int(s["slice_id"]): [self._vm_view(s, vm, reports[int(s["slice_id"])], True)
                                          for vm in s.get("vms", [])] for s in slices}

    def _running_vm(self, username: str, slice_id, vm_id) -> tuple:
        """(True, (slice, vm)) for a VM of a running slice the user may use; else why not."""
        if as_int(slice_id, "Slice ID")[0]:
            Inventory(self.s).settle([slice_id])
        ok, s = authorized_slice(self.s.db.load(), username, slice_id)
        if not ok:
            return False, s
        ok, vid = as_int(vm_id, "VM ID")
        if not ok:
            return False, vid
        vm = next((v for v in s.get("vms", []) if int(v["vm_id"]) == vid), None)
        if vm is None:
            return False, f"VM {vid} is not in slice {s['slice_id']}"
        if s.get("status") != "running":
            return False, f"Slice {s['slice_id']} is {s.get('status')}: deploy it first"
        if vm.get("status") == "stopped":
            return False, f"VM {vid} is stopped: start it first"
        return True, (s, vm)

    def open_console(self, username: str, slice_id, vm_id) -> tuple:
        """(True, ConsoleSession) attached to the VM's serial console; (False, message) when busy or down."""
        ok, found = self._running_vm(username, slice_id, vm_id)
        if not ok:
            return False, found
        s, vm = found
        try:
            channel = self.s.executor.open_interactive(console.console_command(vm))
        except ExecutorError as e:
            return False, f"Cannot reach {vm['worker_ip']}: {e}"
        attached, reason, early = console.wait_attached(channel)
        if not attached:
            channel.close()
            if reason == "busy":
                return False, f"The console of VM {vm['vm_id']} is busy: another session is using it"
            if reason == "not running":
                return False, f"VM {vm['vm_id']} is not running on {vm['worker_ip']} (see Slice status)"
            return False, f"Cannot open the console of VM {vm['vm_id']}: {reason}"
        return True, ConsoleSession(self._vm_view(s, vm, None, True), channel, early)

    def boot_log(self, username: str, slice_id, vm_id, lines: int = 40) -> tuple:
        """(True, text): the last lines the VM printed on its console."""
        ok, found = self._running_vm(username, slice_id, vm_id)
        if not ok:
            return False, found
        _s, vm = found
        res = self.s.executor.run(console.boot_log_command(vm, lines))
        if not res.ok:
            return False, f"Cannot read the boot log on {vm['worker_ip']}: {res.message()}"
        return True, res.stdout
