"""The use cases the menu calls.  Every method returns ``(ok, payload_or_message)``.

Validation, quotas, authorization, placement and the deploy/delete sequence
with its rollback live here; what to run on which host comes from
``vlan_manager`` / ``vm_launcher`` / ``qcow_manager``, and every command goes
through the ``RemoteExecutor``.  Nothing here prints: deploy and delete
report each step to an optional ``progress`` callback.

Database discipline: anything that reads then writes the database does it in
one ``db.transaction()``.  Remote work never runs inside a transaction
(except the admin's orphan cleanup, which must not race with a deploy).  A
slice being deployed or deleted carries a ``busy`` mark (pid, host, status to
go back to), so other sessions leave it alone, and a mark left by a dead
session is recognised and undone.  A VM is first reserved (status
``pending``, quota, VNC port, worker, overlay name), then its overlay is
made, then it is committed as ``design`` or the reservation is undone.
"""
from __future__ import annotations

import copy
import logging
import os
import signal
import socket
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Callable, Optional

import naming
import passwords
from database import Database
from deployment_api import DeploymentAPI
from hostcmd import CommandResult, HostCommand
from models import Flavor, Link, Network, Slice, User
from remote_executor import ExecutorError
from vlan_manager import VLANManager
from vm_launcher import VMLauncher

log = logging.getLogger("cloudrepo.orchestrator")

MAX_DATA_INTERFACES = 8
MAX_QUOTA = 1000

Progress = Callable[[dict], None]


def _proc_start(pid: int) -> Optional[str]:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _session_marker(previous: str) -> dict:
    """Who is working on a slice (this process), and the status to go back to if it dies."""
    pid = os.getpid()
    return {"pid": pid, "host": socket.gethostname(), "start": _proc_start(pid),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"), "previous": previous}


def _marker_alive(marker: Optional[dict]) -> bool:
    """Is the session that marked a slice busy still running?"""
    if not marker:
        return False
    if marker.get("host") != socket.gethostname():
        return True  # another manager host: trust it
    start = _proc_start(int(marker.get("pid", 0)))
    return start is not None and start == marker.get("start")


def _normalise_stale(s: dict) -> None:
    """A slice left ``deploying``/``deleting`` by a session that died goes back to its status before."""
    if s.get("status") in ("deploying", "deleting") and not _marker_alive(s.get("busy")):
        s["status"] = (s.get("busy") or {}).get("previous", "design")
        s.pop("busy", None)


def _is_live(s: dict) -> bool:
    """Does the slice hold resources on the hosts (running, or a live session works on it)?"""
    status = s.get("status")
    return status == "running" or (status in ("deploying", "deleting") and _marker_alive(s.get("busy")))


def _failures(report: StepReport) -> list:
    return [r for r in report.results if r is not None and not r.ok]


def _quota(value) -> tuple:
    """(True, quota) for a whole number from 0 to MAX_QUOTA, else (False, message)."""
    ok, quota = _as_int(value, "Quota")
    if ok and not 0 <= quota <= MAX_QUOTA:
        return False, f"Quota must be between 0 and {MAX_QUOTA}"
    return ok, quota


def _as_int(value, what: str) -> tuple:
    try:
        if isinstance(value, bool):
            raise ValueError
        return True, int(str(value).strip())
    except (TypeError, ValueError):
        return False, f"{what} must be a number"


@dataclass
class Orphan:
    """Something on a host that this system created and the database does not know."""

    host: str
    kind: str
    name: str
    key: tuple


@dataclass
class StepReport:
    ok: bool
    failed: Optional[CommandResult] = None
    results: list = field(default_factory=list)
    interrupted: bool = False


class OrchestratorAPI:
    """Slices, VMs, links, deploy and delete for logged-in users."""

    max_parallel = 12  # host commands of one phase in flight at once (1: one after another)

    def __init__(self, db: Database, deployment_api: DeploymentAPI, config=None):
        self.db = db
        self.deployment = deployment_api
        self.executor = deployment_api.executor
        self.config = config or self.executor.config
        self.vlan_manager = VLANManager(self.executor)
        self.vm_launcher = VMLauncher(self.executor)

    # === users and authentication ===========================================

    def authenticate(self, username: str, password: str) -> tuple:
        """Check a login; upgrades a legacy SHA-256 hash to scrypt on success."""
        username = (username or "").strip()
        user = self.db.get_user(username)
        if not user or not passwords.verify_password(password, user.get("password_hash", "")):
            return False, "Invalid credentials!"
        default_password = password == username and username in ("admin", "student")
        if passwords.is_legacy(user["password_hash"]):
            new_hash = passwords.hash_password(password)
            with self.db.transaction() as data:
                stored = data["users"].get(username)
                if stored and stored.get("password_hash") == user["password_hash"]:
                    stored["password_hash"] = new_hash
            log.info("upgraded the password hash of %s to scrypt", username)
        info = dict(user, password_hash="<hidden>")
        info["default_password"] = default_password
        return True, info

    def _require_admin(self, data: dict, username: str) -> Optional[str]:
        user = data["users"].get(username)
        if not user or user.get("role") != "admin":
            return "Only an admin can do this"
        return None

    def _admin_target(self, data: dict, admin: str, username: str) -> tuple:
        """(True, user dict) when ``admin`` is an admin and ``username`` exists."""
        err = self._require_admin(data, admin)
        if err:
            return False, err
        user = data["users"].get(username)
        return (True, user) if user else (False, "User not found")

    def _check_new_password(self, password: str) -> Optional[str]:
        if not isinstance(password, str) or len(password) < 6:
            return "Password must have at least 6 characters"
        if len(password) > 128:
            return "Password is too long"
        return None

    def change_password(self, username: str, old_password: str, new_password: str) -> tuple:
        """A user changes their own password."""
        err = self._check_new_password(new_password)
        if err:
            return False, err
        with self.db.transaction() as data:
            user = data["users"].get(username)
            if not user or not passwords.verify_password(old_password, user.get("password_hash", "")):
                return False, "Current password is wrong"
            if old_password == new_password:
                return False, "The new password is the same as the old one"
            user["password_hash"] = passwords.hash_password(new_password)
        return True, "Password changed"

    def create_user(self, admin: str, username: str, password: str, quota_vms: int = 6,
                    role: str = "student") -> tuple:
        """Admin: create an account."""
        username = (username or "").strip()
        if not naming.USERNAME_RE.fullmatch(username):
            return False, f"Invalid username: {naming.USERNAME_RULE}"
        if role not in ("student", "admin"):
            return False, "Role must be student or admin"
        ok, quota = _quota(quota_vms)
        if not ok:
            return False, quota
        err = self._check_new_password(password)
        if err:
            return False, err
        password_hash = passwords.hash_password(password)
        with self.db.transaction() as data:
            err = self._require_admin(data, admin)
            if err:
                return False, err
            if username in data["users"]:
                return False, f"User {username} already exists"
            data["users"][username] = User(username, password_hash, quota, role).to_dict()
        return True, f"User {username} created (quota {quota}, role {role})"

    def set_quota(self, admin: str, username: str, quota_vms) -> tuple:
        """Admin: change a user's VM quota (not below the VMs they hold)."""
        ok, quota = _quota(quota_vms)
        if not ok:
            return False, quota
        with self.db.transaction() as data:
            ok, user = self._admin_target(data, admin, username)
            if not ok:
                return False, user
            if quota < int(user.get("used_vms", 0)):
                return False, f"{username} already uses {user['used_vms']} VMs: the quota cannot go below that"
            user["quota_vms"] = quota
        return True, f"Quota of {username} set to {quota}"

    def reset_password(self, admin: str, username: str, new_password: str) -> tuple:
        """Admin: set another user's password."""
        err = self._check_new_password(new_password)
        if err:
            return False, err
        password_hash = passwords.hash_password(new_password)
        with self.db.transaction() as data:
            ok, user = self._admin_target(data, admin, username)
            if not ok:
                return False, user
            user["password_hash"] = password_hash
        return True, f"Password of {username} reset"

    def list_users(self, admin: str) -> tuple:
        """Admin: every account without its hash."""
        data = self.db.load()
        err = self._require_admin(data, admin)
        if err:
            return False, err
        return True, [{k: v for k, v in u.items() if k != "password_hash"}
                      for _, u in sorted(data["users"].items())]

    # === reading ==============================================================

    def get_quota(self, username: str) -> tuple:
        """``{"used_vms", "quota_vms", "slices"}`` of a user."""
        user = self.db.get_user(username)
        if not user:
            return False, "User not found"
        return True, {"used_vms": int(user.get("used_vms", 0)),
                      "quota_vms": int(user.get("quota_vms", 10)),
                      "slices": len(user.get("slices", []))}

    def list_slices(self, username: str) -> tuple:
        """The user's slices (an admin sees every slice), by ID."""
        data = self.db.load()
        user = data["users"].get(username)
        if not user:
            return False, "User not found"
        slices = list(data["slices"].values())
        if user.get("role") != "admin":
            slices = [s for s in slices if s.get("owner") == username]
        return True, sorted(slices, key=lambda s: int(s["slice_id"]))

    def get_slice(self, username: str, slice_id) -> tuple:
        """One slice the user may see."""
        data = self.db.load()
        return self._authorized_slice(data, username, slice_id)

    def _authorized_slice(self, data: dict, username: str, slice_id) -> tuple:
        ok, sid = _as_int(slice_id, "Slice ID")
        if not ok:
            return False, sid
        user = data["users"].get(username)
        if not user:
            return False, "User not found"
        s = data["slices"].get(str(sid))
        if s is None or (s.get("owner") != username and user.get("role") != "admin"):
            return False, "Slice not found or not authorized"
        return True, s

    def not_editable_reason(self, s: dict) -> str:
        """Why a slice cannot be changed now ("" when it can)."""
        s = copy.deepcopy(s)
        _normalise_stale(s)
        return self._editable(s) or ""

    def _editable_slice(self, data: dict, username: str, slice_id) -> tuple:
        """The user's own slice, if it may be changed now."""
        ok, s = self._authorized_slice(data, username, slice_id)
        if not ok:
            return False, s
        if s.get("owner") != username:
            return False, "Not authorized"
        _normalise_stale(s)
        err = self._editable(s)
        return (False, err) if err else (True, s)

    @staticmethod
    def _editable(s: dict) -> Optional[str]:
        status = s.get("status")
        if status == "design":
            return None
        if status == "running":
            return "Slice is running: a running slice cannot be changed (delete it and design a new one)"
        return f"Slice is {status}: it cannot be changed now"

    # === design ===============================================================

    def create_slice(self, username: str, slice_name: str, topology_type: str = "custom") -> tuple:
        """A new empty slice in ``design`` with its own VLAN pool."""
        slice_name = (slice_name or "").strip()
        if not naming.valid_name(slice_name):
            return False, f"Invalid slice name: {naming.NAME_RULE}"
        if topology_type not in ("custom", "linear", "ring", "star", "mesh"):
            return False, "Invalid topology type"
        with self.db.transaction() as data:
            user = data["users"].get(username)
            if not user:
                return False, "User not found"
            if any(s.get("owner") == username and s.get("name") == slice_name
                   for s in data["slices"].values()):
                return False, f"You already have a slice named {slice_name}"
            slice_id = int(data.get("next_vm_id", naming.FIRST_ID))
            taken = [(int(s["vlan_pool_start"]), int(s["vlan_pool_end"])) for s in data["slices"].values()]
            start = naming.allocate_vlan_pool(slice_id, taken, self.config.all_reserved_vlans)
            if start is None:
                return False, "No free VLAN pool: delete unused slices first"
            data["next_vm_id"] = slice_id + 1
            s = Slice(slice_id, username, topology_type, slice_name, start)
            data["slices"][str(slice_id)] = s.to_dict()
            user.setdefault("slices", []).append(slice_id)
        if start != naming.documented_pool_start(slice_id):
            log.info("slice %s: documented VLAN pool taken, using %s-%s", slice_id, start, start + 19)
        return True, {"slice_id": slice_id, "name": slice_name,
                      "vlan_pool_start": start, "vlan_pool_end": start + naming.POOL_SIZE - 1}

    def _pick_worker(self, data: dict) -> str:
        """The worker holding the fewest VMs (config order breaks ties)."""
        load = {w: 0 for w in self.config.workers}
        for s in data["slices"].values():
            for vm in s.get("vms", []):
                if vm.get("worker_ip") in load:
                    load[vm["worker_ip"]] += 1
        return min(self.config.workers, key=lambda w: (load[w], self.config.workers.index(w)))

    @staticmethod
    def _all_vms(data: dict) -> list:
        return [vm for s in data["slices"].values() for vm in s.get("vms", [])]

    def _free_vnc_port(self, data: dict) -> int:
        used = {int(vm["vnc_port"]) for vm in self._all_vms(data) if vm.get("vnc_port")}
        port = naming.FIRST_VNC_PORT
        while port in used:
            port += 1
        return port

    def _free_internet_ip(self, data: dict, vm_id: int) -> Optional[str]:
        inet = self.config.internet
        used = {i["ip_config"]["ip"] for vm in self._all_vms(data) for i in vm.get("interfaces", [])
                if i.get("ip_config")}
        return next((ip for ip in naming.internet_ip_candidates(vm_id, inet["cidr"], inet["gateway"])
                     if ip not in used), None)

    def _overlay_file(self, data: dict, worker: str, vm_name: str, vm_id: int) -> str:
        documented = f"{self.deployment.qcow_manager.base_dir}/{vm_name}_img.qcow2"
        taken = any(vm.get("worker_ip") == worker and vm.get("qcow_image") == documented
                    for vm in self._all_vms(data))
        return os.path.basename(naming.overlay_path(vm_name, vm_id if taken else None))

    def add_vm_to_slice(self, username: str, slice_id, vm_name: str, flavor_name: str,
                        data_interfaces_count, internet_enabled: bool = False) -> tuple:
        """Add a VM: checks, reservation, overlay on its worker, then commit or undo."""
        vm_name = (vm_name or "").strip()
        if not naming.valid_name(vm_name):
            return False, f"Invalid VM name: {naming.NAME_RULE}"
        flavor = Flavor.get(flavor_name)
        if flavor is None:
            return False, "Invalid flavor"
        ok, n_data = _as_int(data_interfaces_count, "Number of data interfaces")
        if not ok:
            return False, n_data
        if not 0 <= n_data <= MAX_DATA_INTERFACES:
            return False, f"Number of data interfaces must be between 0 and {MAX_DATA_INTERFACES}"
        flavor["image"] = self.config.flavor_image(flavor_name, flavor)

        with self.db.transaction() as data:
            ok, s = self._editable_slice(data, username, slice_id)
            if not ok:
                return False, s
            if any(vm["name"] == vm_name for vm in s.get("vms", [])):
                return False, f"Slice already has a VM named {vm_name}"
            user = User.from_dict(data["users"][username])
            if not user.can_create_vms(1):
                return False, "Quota exceeded"
            vm_id = int(data.get("next_vm_id", naming.FIRST_ID))
            data["next_vm_id"] = vm_id + 1
            worker = self._pick_worker(data)
            vnc_port = self._free_vnc_port(data)
            ip = self._free_internet_ip(data, vm_id) if internet_enabled else None
            if internet_enabled and ip is None:
                return False, "No free internet address left"
            overlay_file = self._overlay_file(data, worker, vm_name, vm_id)
            placeholder = {"vm_id": vm_id, "name": vm_name, "owner": username, "worker_ip": worker,
                           "vnc_port": vnc_port, "status": "pending", "pid": None,
                           "qcow_image": f"{self.deployment.qcow_manager.base_dir}/{overlay_file}",
                           "flavor": flavor, "interfaces": []}
            s["vms"].append(placeholder)
            data["users"][username]["used_vms"] = user.used_vms + 1

        # a leftover file at the documented path (a crash, the original system) must not block the add
        fallback = os.path.basename(naming.overlay_path(vm_name, vm_id))
        vm, committed, vm_dict = None, False, None
        try:
            ok, vm = self.deployment.create_vm_with_qcow(
                int(s["slice_id"]), vm_id, vm_name, username, worker, flavor, n_data,
                bool(internet_enabled), vnc_port=vnc_port, ip=ip, overlay_file=overlay_file,
                fallback_overlay_file=fallback if fallback != overlay_file else None)
            if ok:
                vm_dict = vm.to_dict()
                found = False
                with self.db.transaction() as data:
                    stored = data["slices"].get(str(s["slice_id"]))
                    if stored is not None:
                        stored["vms"] = [vm_dict if v["vm_id"] == vm_id else v for v in stored["vms"]]
                        found = True
                committed = found  # only once the file is written
        finally:
            if not committed:  # failure, Ctrl-C, or the slice was deleted meanwhile: leave nothing
                with _sigint_ignored():
                    if vm:
                        self.deployment.delete_vm_dict(vm.to_dict())
                    self._undo_reservation(int(s["slice_id"]), vm_id, username)
        if not ok:
            reason = self.deployment.last_error or "unknown error"
            return False, f"VM creation failed on {worker}: {reason}"
        if not committed:
            return False, "Slice was deleted meanwhile"
        return True, vm_dict

    def _undo_reservation(self, slice_id: int, vm_id: int, username: str) -> None:
        with self.db.transaction() as data:
            s = data["slices"].get(str(slice_id))
            if s is not None and any(v["vm_id"] == vm_id for v in s["vms"]):
                s["vms"] = [v for v in s["vms"] if v["vm_id"] != vm_id]
                user = data["users"].get(username)
                if user:
                    user["used_vms"] = max(0, int(user.get("used_vms", 0)) - 1)

    def create_link(self, username: str, slice_id, vm1_id, vm1_interface: str,
                    vm2_id, vm2_interface: str) -> tuple:
        """Join two data interfaces on the next VLAN of the slice's pool."""
        ok1, v1 = _as_int(vm1_id, "VM IDs")
        ok2, v2 = _as_int(vm2_id, "VM IDs")
        if not (ok1 and ok2):
            return False, "VM IDs must be numbers (e.g., 1025, not 'vm1')"
        if1, if2 = (vm1_interface or "").strip(), (vm2_interface or "").strip()
        with self.db.transaction() as data:
            ok, s = self._editable_slice(data, username, slice_id)
            if not ok:
                return False, s
            sl = Slice.from_dict(s)
            ends = []
            for vid, ifname in ((v1, if1), (v2, if2)):
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
                ends.append(iface)
            if v1 == v2 and if1 == if2:
                return False, "A link needs two different interfaces"
            vlan = sl.get_next_vlan()
            if vlan is None:
                return False, "VLAN pool exhausted"
            link_id = max((link.link_id for link in sl.links), default=0) + 1
            for iface in ends:
                iface.vlan_id, iface.link_id = vlan, link_id
            link = Link(link_id, vlan, v1, if1, v2, if2)
            sl.links.append(link)
            sl.networks.append(Network.for_link_vlan(vlan))
            data["slices"][str(sl.slice_id)] = sl.to_dict()
        return True, link.to_dict()

    # === running commands in phases ==========================================

    def _run_phase(self, cmds: list, progress: Optional[Progress], t0: float, phase: str,
                   cancel: threading.Event) -> StepReport:
        """Run commands in parallel; stop handing out new ones after a failure or Ctrl-C."""
        report = StepReport(ok=True)
        if not cmds:
            return report
        lock = threading.Lock()

        report.results = [None] * len(cmds)

        def one(index: int, cmd: HostCommand) -> CommandResult:
            if cancel.is_set():
                res = CommandResult(cmd.host, cmd.script, -1, error="cancelled", step=cmd.step)
                report.results[index] = res
                return res
            res = self.executor.run(cmd)
            with lock:
                report.results[index] = res
                if not res.ok:
                    cancel.set()
            if progress:
                progress({"phase": phase, "host": cmd.host, "step": cmd.step, "ok": res.ok,
                          "duration": res.duration, "elapsed": time.monotonic() - t0,
                          "message": res.message()})
            return res

        pool = ThreadPoolExecutor(max_workers=min(self.max_parallel, len(cmds)), thread_name_prefix=phase)
        futures = [pool.submit(one, i, c) for i, c in enumerate(cmds)]
        try:
            while True:
                done, pending = wait(futures, timeout=0.1, return_when=FIRST_EXCEPTION)
                if not pending:
                    break
        except KeyboardInterrupt:
            report.interrupted = True
            cancel.set()
            with _sigint_ignored():
                for f in futures:
                    f.cancel()
                wait(futures)
        finally:
            pool.shutdown(wait=True)
        for f in futures:
            if f.cancelled():
                continue
            exc = f.exception()
            if exc is not None:
                report.ok = False
                report.failed = report.failed or CommandResult("?", "", -1, error=str(exc))
        failed = [r for r in report.results if r is not None and not r.ok and r.error != "cancelled"]
        if failed:
            report.ok = False
            report.failed = failed[0]
        if report.interrupted:
            report.ok = False
        return report

    def _connect_hosts(self, hosts: list, progress: Optional[Progress], t0: float) -> Optional[str]:
        """Reach every host first (in parallel): fail before anything is created."""
        if not hosts:
            return None
        with ThreadPoolExecutor(max_workers=min(self.max_parallel, len(hosts)), thread_name_prefix="connect") as pool:
            results = list(pool.map(self.executor.check, hosts))
        failed = None
        for res in results:
            if progress:
                progress({"phase": "connect", "host": res.host, "step": "connect", "ok": res.ok,
                          "duration": res.duration, "elapsed": time.monotonic() - t0, "message": res.message()})
            if not res.ok and failed is None:
                failed = res
        if failed is not None:
            return f"step 'connect' on {failed.host}: {failed.message()}"
        return None

    # === deploy ===============================================================

    def deploy_commands(self, s: dict) -> tuple:
        """(network node commands, worker commands) that deploy slice ``s``."""
        sl = Slice.from_dict(s)
        node_cmds = [self.vlan_manager.up_command(v) for v in sl.link_vlans()]
        if sl.uses_internet(self.config.internet_vlan):
            node_cmds.append(self.vlan_manager.internet_up(self._reservations_of(s)))
        vm_cmds = [self.vm_launcher.launch_command(vm) for vm in s["vms"]]
        return node_cmds, vm_cmds

    def teardown_commands(self, s: dict) -> tuple:
        """(VM stops, network node teardown) for slice ``s``; all idempotent."""
        sl = Slice.from_dict(s)
        stops = [self.vm_launcher.stop_command(vm) for vm in s["vms"]]
        node = [self.vlan_manager.down_command(v) for v in sl.link_vlans()]
        if sl.uses_internet(self.config.internet_vlan):
            node.append(self.vlan_manager.internet_release([vm["vm_id"] for vm in s["vms"]]))
        return stops, node

    def plan_deploy(self, username: str, slice_id) -> tuple:
        """Dry run: the commands a deploy would run, per host, without running them."""
        ok, s = self.get_slice(username, slice_id)
        if not ok:
            return False, s
        node_cmds, vm_cmds = self.deploy_commands(s)
        return True, node_cmds + vm_cmds

    def _reservations_of(self, s: dict) -> list:
        vlan = self.config.internet_vlan
        return [(vm["vm_id"], i["mac"], i["ip_config"]["ip"]) for vm in s["vms"]
                for i in vm.get("interfaces", []) if i.get("vlan_id") == vlan and i.get("ip_config")]

    def deploy_slice(self, username: str, slice_id, progress: Optional[Progress] = None) -> tuple:
        """Deploy all or nothing: network node first, then every VM, hosts in parallel."""
        t0 = time.monotonic()
        with self.db.transaction() as data:
            ok, s = self._authorized_slice(data, username, slice_id)
            if not ok:
                return False, s
            _normalise_stale(s)
            status = s.get("status")
            if status == "running":
                return False, "Slice already running"
            if status != "design":
                return False, f"Slice is {status} in another session"
            if not s.get("vms"):
                return False, "Slice has no VMs: add VMs before deploying"
            not_ready = [vm["vm_id"] for vm in s["vms"] if vm.get("status") != "design"]
            if not_ready:
                return False, f"VM {not_ready[0]} is not ready (still being created, or its creation failed)"
            s["status"] = "deploying"
            s["busy"] = _session_marker("design")
            snapshot = copy.deepcopy(s)
        sid = int(snapshot["slice_id"])
        failure, interrupted = None, False
        try:
            hosts = sorted({vm["worker_ip"] for vm in snapshot["vms"]})
            if snapshot.get("links") or Slice.from_dict(snapshot).uses_internet(self.config.internet_vlan):
                hosts = [self.config.network_node] + [h for h in hosts if h != self.config.network_node]
            failure = self._connect_hosts(hosts, progress, t0)
            if failure is not None:
                self._finish(sid, "design")
                return False, f"Deploy failed at {failure}. Nothing was created; the slice is still in design."
            cancel = threading.Event()
            node_cmds, vm_cmds = self.deploy_commands(snapshot)
            for phase, cmds in (("network", node_cmds), ("vms", vm_cmds)):
                report = self._run_phase(cmds, progress, t0, phase, cancel)
                interrupted = interrupted or report.interrupted
                if not report.ok:
                    if report.failed is not None:
                        f = report.failed
                        failure = f"step '{f.step}' on {f.host}: {f.message()}"
                    break
            else:
                pids = {vm["vm_id"]: (r.stdout.strip().splitlines() or [None])[-1]
                        for vm, r in zip(snapshot["vms"], report.results)}
                self._mark_running(sid, pids)
                took = time.monotonic() - t0
                return True, f"Slice deployed successfully ({len(snapshot['vms'])} VMs, {took:.1f} s)"
        except KeyboardInterrupt:
            interrupted = True
        except Exception as e:  # noqa: BLE001 - whatever happened, undo what this deploy made
            log.exception("deploy of slice %s failed", sid)
            failure = failure or f"an internal error ({e})"
        with _sigint_ignored():
            undo_ok = self._rollback(snapshot, progress, t0)
        why = "interrupted (Ctrl-C)" if interrupted and not failure else f"failed at {failure}"
        tail = ("Everything this deploy created was removed; the slice is still in design."
                if undo_ok else "Some of what this deploy created could not be removed: "
                "see the log, and use '8. Cleanup orphaned VMs'.")
        return False, f"Deploy {why}. {tail}"

    def _mark_running(self, sid: int, pids: dict) -> None:
        with self.db.transaction() as data:
            s = data["slices"][str(sid)]
            s["status"] = "running"
            s.pop("busy", None)
            for vm in s["vms"]:
                vm["status"] = "running"
                vm["pid"] = pids.get(vm["vm_id"])
            for n in s.get("networks", []):
                n["status"] = "running"

    def _finish(self, sid: int, status: str) -> None:
        """Leave a slice in ``status`` and drop this session's busy mark (if it still exists).

        Back to ``design`` means nothing runs: its VMs and networks say so too.
        """
        with self.db.transaction() as data:
            s = data["slices"].get(str(sid))
            if s is not None:
                s["status"] = status
                s.pop("busy", None)
                if status == "design":
                    for vm in s.get("vms", []):
                        if vm.get("status") == "running":
                            vm["status"], vm["pid"] = "design", None
                    for n in s.get("networks", []):
                        n["status"] = "pending"

    def _rollback(self, snapshot: dict, progress: Optional[Progress], t0: float) -> bool:
        """Undo a failed deploy: remove everything of the slice from the hosts; back to design."""
        stops, node = self.teardown_commands(snapshot)
        ok_vms = self._run_phase(stops, progress, t0, "rollback", threading.Event()).ok
        ok_net = self._run_phase(node, progress, t0, "rollback", threading.Event()).ok
        self._finish(int(snapshot["slice_id"]), "design")
        return ok_vms and ok_net

    # === delete ===============================================================

    def delete_slice(self, username: str, slice_id, progress: Optional[Progress] = None) -> tuple:
        """Delete a slice in any state: stop its VMs, tear its VLANs down, delete its overlays."""
        t0 = time.monotonic()
        with self.db.transaction() as data:
            ok, s = self._authorized_slice(data, username, slice_id)
            if not ok:
                return False, s
            status = s.get("status")
            if status in ("deploying", "deleting") and _marker_alive(s.get("busy")):
                return False, f"Slice is {status} in another session"
            _normalise_stale(s)
            restore = s["status"]  # what the slice is if this delete does not finish
            s["status"] = "deleting"
            s["busy"] = _session_marker(restore)
            snapshot = copy.deepcopy(s)
        sid = int(snapshot["slice_id"])
        failures: list = []
        disks = [self.deployment.delete_vm_command(vm) for vm in snapshot["vms"] if vm.get("qcow_image")]
        # Always the whole teardown, whatever the status says: a session that died may have
        # left VMs or VLANs of a design slice (every step is idempotent). VMs first; then
        # their disks together with the network node's teardown.
        stops, node = self.teardown_commands(snapshot)
        phases = [("stop", stops), ("teardown", node + disks)]
        try:
            for phase, cmds in phases:
                report = self._run_phase(cmds, progress, t0, phase, threading.Event())
                failures += _failures(report)
                if report.interrupted:
                    failures.insert(0, CommandResult("-", "", -1, error="interrupted (Ctrl-C)", step=phase))
                if failures:
                    break
        except KeyboardInterrupt:
            failures.insert(0, CommandResult("-", "", -1, error="interrupted (Ctrl-C)", step="delete"))
        with _sigint_ignored(), self.db.transaction() as data:
            s = data["slices"].get(str(sid))
            if s is None:
                return False, "Slice was already deleted"
            if failures:
                s["status"] = restore
                s.pop("busy", None)
                f = failures[0]
                where = f" on {f.host}" if f.host != "-" else ""
                return False, (f"Delete incomplete: step '{f.step}'{where}: {f.message()}. "
                               "The slice is kept; run Delete again (when the host is back).")
            owner = data["users"].get(s["owner"])
            if owner:
                owner["slices"] = [x for x in owner.get("slices", []) if int(x) != sid]
                owner["used_vms"] = max(0, int(owner.get("used_vms", 0)) - len(s.get("vms", [])))
            del data["slices"][str(sid)]
        return True, "Slice deleted"

    # === orphans ==============================================================

    def _expected(self, data: dict) -> dict:
        vms, vlans, overlays, reservations = set(), set(), set(), set()
        internet = False
        for s in data["slices"].values():
            live = _is_live(s)
            for vm in s.get("vms", []):
                if vm.get("qcow_image"):
                    overlays.add((vm["worker_ip"], os.path.basename(vm["qcow_image"])))
                if live:
                    vms.add((vm["worker_ip"], int(vm["vm_id"])))
            if live:
                sl = Slice.from_dict(s)
                vlans.update(sl.link_vlans())
                reservations.update(int(vm_id) for vm_id, _mac, _ip in self._reservations_of(s))
                if sl.uses_internet(self.config.internet_vlan):
                    internet = True
        if internet:
            vlans.add(self.config.internet_vlan)
        return {"vms": vms, "vlans": vlans, "overlays": overlays, "reservations": reservations}

    def find_orphans(self, username: str) -> tuple:
        """Admin: everything on the hosts that this system made and the database does not know."""
        data = self.db.load()
        err = self._require_admin(data, username)
        if err:
            return False, err
        scans = [self.vlan_manager.scan_command()]
        try:
            scans += [self.vm_launcher.scan_command(w) for w in self.config.workers]
        except ExecutorError as e:
            return False, f"Cannot scan the hosts: {e}"
        results = self.executor.run_all(scans)
        bad = [r for r in results if not r.ok]
        if bad:
            return False, f"Cannot scan {bad[0].host}: {bad[0].message()}"
        data = self.db.load()  # after the scan: anything made meanwhile is known
        expected = self._expected(data)
        orphans: list = []
        node = self.config.network_node
        for line in results[0].stdout.splitlines():
            parts = line.split()
            if len(parts) < 2 or not parts[1].isdigit():
                continue
            kind, vlan = parts[0], int(parts[1])
            if kind == "reservation" and len(parts) == 3 and parts[2].isdigit():
                if int(parts[2]) not in expected["reservations"]:
                    orphans.append(Orphan(node, "DHCP reservation", f"VLAN {vlan} VM {parts[2]}",
                                          ("reservation", node, vlan, int(parts[2]))))
            elif kind in ("gw", "ns", "veth", "dnsmasq") and vlan not in expected["vlans"]:
                label = {"gw": f"gateway port gw_vlan{vlan}", "ns": f"namespace ns-dhcp-vlan{vlan}",
                         "veth": f"DHCP port dhcp{vlan}-o", "dnsmasq": f"dnsmasq of VLAN {vlan}"}[kind]
                orphans.append(Orphan(node, "VLAN", label, ("vlan", node, vlan)))
        bases = self._base_image_names()
        for worker, res in zip(self.config.workers, results[1:]):
            for line in res.stdout.splitlines():
                parts = line.split()
                if len(parts) < 2:
                    continue
                kind = parts[0]
                if kind == "overlay":
                    name = line.split(" ", 1)[1]
                    # only files named as this system names overlays; never a base image
                    if (naming.OVERLAY_RE.fullmatch(name) and name not in bases
                            and (worker, name) not in expected["overlays"]):
                        orphans.append(Orphan(worker, "overlay", f"{self.config.worker_image_dir}/{name}",
                                              ("overlay", worker, name)))
                    continue
                vm_id = None
                if kind in ("tap", "port"):
                    m = naming.TAP_RE.match(parts[1])
                    vm_id = int(m.group(1)) if m else None
                elif kind == "pidfile" and parts[1].isdigit():
                    vm_id = int(parts[1])
                elif kind == "qemu" and len(parts) == 3 and parts[2].isdigit():
                    vm_id = int(parts[2])
                if vm_id is None or (worker, vm_id) in expected["vms"]:
                    continue
                label = {"tap": f"TAP {parts[1]}", "port": f"OVS port {parts[1]}",
                         "pidfile": f"pid file of VM {vm_id}", "qemu": f"QEMU of VM {vm_id} (pid {parts[1]})"}[kind]
                orphans.append(Orphan(worker, "VM", label, ("vm", worker, vm_id)))
        return True, orphans

    def _base_image_names(self) -> set:
        images = [spec["image"] for spec in Flavor.FLAVORS.values()] + list(self.config.flavor_images.values())
        return {os.path.basename(str(i)) for i in images}

    def cleanup_orphans(self, username: str, orphans: list) -> tuple:
        """Admin: remove exactly the orphans listed (re-checked against the database first).

        Runs inside a database transaction, so no deploy can start using one of
        them between the check and the removal.
        """
        with self.db.transaction() as data:
            return self._cleanup_orphans_locked(data, username, orphans)

    def _cleanup_orphans_locked(self, data: dict, username: str, orphans: list) -> tuple:
        err = self._require_admin(data, username)
        if err:
            return False, err
        expected = self._expected(data)
        cmds, seen, released, internet_orphan = [], set(), [], False
        for o in orphans:
            key = o.key
            if key in seen:
                continue
            seen.add(key)
            if key[0] == "vm" and (key[1], key[2]) not in expected["vms"]:
                fake = {"vm_id": key[2], "name": f"orphan {key[2]}", "worker_ip": key[1],
                        "interfaces": [{}] * (MAX_DATA_INTERFACES + 1)}  # every TAP it may have had
                kill = self.vm_launcher.kill_orphan_qemu_command(key[1], key[2])
                stop = self.vm_launcher.stop_command(fake)
                cmds.append(HostCommand(key[1], kill.script + "\n" + stop.script, True, stop.timeout,
                                        f"remove orphan VM {key[2]}"))
            elif key[0] == "vlan" and key[2] not in expected["vlans"]:
                if key[2] == self.config.internet_vlan:
                    internet_orphan = True
                else:
                    cmds.append(self.vlan_manager.down_command(key[2]))
            elif key[0] == "overlay" and (key[1], key[2]) not in expected["overlays"]:
                cmds.append(self.deployment.delete_vm_command(
                    {"worker_ip": key[1], "qcow_image": f"{self.config.worker_image_dir}/{key[2]}"}))
            elif key[0] == "reservation" and key[3] not in expected["reservations"]:
                released.append(key[3])
        if released or internet_orphan:
            # one command: it drops these reservations, then removes the VLAN if none is left
            cmds.append(self.vlan_manager.internet_release(released))
        results = self.executor.run_all(cmds)
        bad = [r for r in results if not r.ok]
        if bad:
            return False, f"Cleanup incomplete: step '{bad[0].step}' on {bad[0].host}: {bad[0].message()}"
        return True, f"Cleanup completed: {len(orphans)} item(s) removed"


class _sigint_ignored:
    """Ignore Ctrl-C while undoing (main thread only; elsewhere a no-op)."""

    def __enter__(self):
        self._old = None
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, signal.SIG_IGN)
        return self

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        return False
