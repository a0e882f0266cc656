#!/usr/bin/env python3
"""The numbered text menu: prompts and rendering only.

Usage: ``python3 cli.py [--config CLUSTER.yaml] [--db DATABASE.yaml]``
(or the environment variables ``CLOUD_CONFIG`` and ``CLOUD_DB``).  With a
command (``python3 cli.py roster import FILE``, ``... overview``, ...) it
runs that for a script instead of the menu: see ``commands.py``.

Every use case is a call to ``OrchestratorAPI``, which returns
``(ok, payload_or_message)``; this module only asks and shows.  Bad input
gets a message and changes nothing; Ctrl-C or Ctrl-D at a prompt cancels that
option; Ctrl-D or ``0`` at the main menu leaves.  No traceback reaches the
screen: unexpected errors are logged and summarised.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from typing import Optional

from hosts import console
from menu import classes as cli_classes
from menu import commands, snapshots_leases
from menu import tools as cli_tools
from menu.prompts import (
    CANCELLED,
    ERR,
    LINE,
    OK,
    WARN,
    WIDE,
    Cancel,
    ask,
    ask_secret,
    ask_valid,
    choose_message,
    link_vlan_note,
    parse_choice,
    parse_int,
    parse_number,
    parse_yes_no,
    pool_text,
    printable,
    read_line,
    render_flavors,
    result,
    say,
)
from models import Flavor
from service.client import DEFAULT_SOCKET, ServiceGone
from topology.model import MAX_DATA_INTERFACES

HERE = os.path.dirname(os.path.abspath(__file__))
log = logging.getLogger("cloudrepo.cli")


# --- rendering ------------------------------------------------------------------

def render_slices(slices: list, show_owner: bool) -> list:
    """Lines of option 5: the whole topology of each slice."""
    if not slices:
        return ["\nNo Slices found."]
    lines = ["\n" + WIDE]
    for s in slices:
        name = f" ({s['name']})" if s.get("name") else ""
        owner = f", owner: {s['owner']}" if show_owner else ""
        lines.append(f"Slice {s['slice_id']}{name} [{s.get('status')}]: {len(s.get('vms', []))} VMs, "
                     f"{len(s.get('links', []))} Links, VLAN pool: {pool_text(s)}"
                     f"{owner}")
        for vm in s.get("vms", []):
            flavor = vm.get("flavor") or {}
            state = "" if vm.get("status") == s.get("status") else f", {vm.get('status')}"
            lines.append(f"  \u2514\u2500 VM {vm['vm_id']}: {vm['name']} (VNC: {vm.get('vnc_port')}, "
                         f"Worker: {vm.get('worker_ip')}, Disk: {flavor.get('disk_gb')}GB{state})")
            for i in vm.get("interfaces", []):
                text = f"      {i['name']}: MAC {i.get('mac')}"
                if i.get("vlan_id") is not None:
                    text += f", VLAN: {i['vlan_id']}"
                if i.get("ip_config"):
                    text += f", IP: {i['ip_config']['ip']}"
                if i.get("link_id") is not None:
                    text += f", Link: {i['link_id']}"
                elif i["name"] != "eth0":
                    text += ", unconnected"
                lines.append(text)
        for link in s.get("links", []):
            lines.append(f"  Link {link['link_id']}: VM{link['vm1_id']}.{link['vm1_interface']} <-> "
                         f"VM{link['vm2_id']}.{link['vm2_interface']} (VLAN {link['vlan_id']})"
                         f"{cli_tools.impairment_text(link)}")
    lines.append(WIDE)
    return lines


def render_interfaces(s: dict) -> list:
    """The "Available VMs and interfaces" listing of option 4."""
    lines = ["\nAvailable VMs and interfaces:"]
    for vm in s.get("vms", []):
        lines.append(f"  VM {vm['vm_id']}: {vm['name']}")
        for i in vm.get("interfaces", []):
            if i["name"] == "eth0":
                continue
            state = f"connected to Link {i['link_id']}" if i.get("link_id") is not None else "unconnected"
            lines.append(f"    - {i['name']} ({state})")
    return lines


def render_access(vms: list) -> list:
    """Lines of a running slice's VMs as their hosts hold them: state, login, VNC, addresses."""
    lines = []
    for v in vms:
        login = f", user: {v.user} password: {v.password}" if v.password else ""
        lines.append(f"  VM {v.vm_id} {v.name}: {v.state} on {v.worker}{login}")
        lines.append(f"      VNC {v.vnc} (same password), console: option 12")
        for n in v.nics:
            if n.vlan is None:
                continue
            where = f"Link {n.link_id}" if n.link_id is not None else "internet"
            lines.append(f"      {n.name} ({where}, VLAN {n.vlan}): {n.address or 'no address yet'}")
    return lines


def show_progress(event: dict) -> None:
    say(render_progress(event))


def render_status(report) -> list:
    """The status table of a slice: every expected object on its host, and what is missing."""
    s = report.slice
    lines = [f"\nSlice {s['slice_id']} ({s.get('name') or '-'}) [{s.get('status')}], as its hosts hold it:"]
    for host, state in report.reachable.items():
        if state is not True:
            lines.append(f"  {ERR} {host}: unreachable ({state})")
    lines.append(f"  {'host':<15} {'object':<34} {'expected':<20} state")
    for c in report.checks:
        state = "ok" if c.ok else c.problem.upper() if c.found is None else f"WRONG: {c.problem}"
        lines.append(f"  {c.key.host:<15} {c.label:<34} {c.expected or '-':<20} {state}")
    for key in report.extra:
        lines.append(f"  {key.host:<15} {key.kind + ' ' + str(key.vm_id or key.vlan or key.name):<34} "
                     f"{'(none)':<20} EXTRA: should not exist")
    internet = 400
    for vm in s.get("vms", []):
        addrs = ", ".join(f"{i['name']} {report.address(vm, i, internet) or '-'}" for i in vm.get("interfaces", [])
                          if i.get("vlan_id") is not None)
        lines.append(f"  VM {vm['vm_id']} {vm['name']}: {report.vm_state(vm)}" + (f"; {addrs}" if addrs else ""))
    problems = report.problems
    lines.append(f"{OK} Everything is in place." if not problems and all(v is True for v in report.reachable.values())
                 else f"{WARN}  {len(problems)} problem(s): " + ", ".join(c.label for c in problems[:8])
                 + (" ..." if len(problems) > 8 else ""))
    return lines


def render_cluster(view: dict) -> list:
    """The admin's table of hosts: reachable, VMs running, memory and vCPUs against capacity, free disk."""
    lines = [f"\nCluster at {view['at']}:",
             f"  {'host':<15} {'role':<22} {'state':<12} {'VMs':>4} {'memory MiB (used/cap)':>22} "
             f"{'vCPUs':>9} {'free disk':>10}"]
    for r in view["rows"]:
        if not r["reachable"]:
            lines.append(f"  {r['host']:<15} {r['role']:<22} {'UNREACHABLE':<12} {r['error']}")
            continue
        disk = f"{r['disk_free_mib']} MiB" if r.get("disk_free_mib") is not None else "-"
        lines.append(f"  {r['host']:<15} {r['role']:<22} {'up':<12} {r['vms_running']:>4} "
                     f"{str(r['memory_used']) + '/' + str(r['memory_cap']):>22} "
                     f"{str(r['vcpus_used']) + '/' + str(r['vcpus_cap']):>9} {disk:>10}")
    return lines


def render_progress(event: dict) -> str:
    mark = OK if event["ok"] else ERR
    text = f"  [{event['elapsed']:6.2f}s] {mark} {event['phase']:<8} {event['host']:<15} {event['step']}"
    if event.get("duration"):
        text += f" ({event['duration']:.2f} s)"
    if not event["ok"]:
        text += f": {event['message']}"
    return text


# --- the menu ---------------------------------------------------------------------

@contextlib.contextmanager
def menu_signals():
    """While the menu runs: Ctrl-Z and Ctrl-\\ do nothing (they would leave a shell as the menu's account)."""
    names = ("SIGTSTP", "SIGQUIT", "SIGTTIN", "SIGTTOU")
    old = {}
    if threading.current_thread() is threading.main_thread():
        for name in names:
            sig = getattr(signal, name, None)
            if sig is not None:
                old[sig] = signal.signal(sig, signal.SIG_IGN)
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def set_log_actor(username: str) -> None:
    """The menu run on its own: its log lines name the user and this process's uid."""
    from remote_executor import LOG_ACTOR

    LOG_ACTOR.set(f"user={username} uid={os.getuid()} pid={os.getpid()}")


class CLI:
    """Login screen and main menu over an ``OrchestratorAPI``."""

    def __init__(self, orchestrator):
        self.api = orchestrator
        self.user: Optional[dict] = None

    @property
    def username(self) -> str:
        return self.user["username"] if self.user else ""

    @property
    def is_admin(self) -> bool:
        return bool(self.user and self.user.get("role") == "admin")

    def run(self) -> int:
        """Loop: login, menu, until Exit or end of input (job control and Ctrl-\\ are ignored meanwhile)."""
        with menu_signals():
            while True:
                try:
                    if self.user is None and not self.login():
                        say("\nGoodbye!")
                        return 0
                    if not self.main_menu():
                        say("\nGoodbye!")
                        return 0
                except ServiceGone as e:
                    if not self.reconnect(str(e)):
                        return 1

    def reconnect(self, why: str) -> bool:
        """The manager service went away: say so, connect again and log in again (False: it is not back)."""
        self.user = None
        say(f"\n{ERR} {why}: the manager service stopped or restarted. Whatever it was doing for you "
            "finished or was undone there; log in again.")
        for _ in range(20):
            try:
                self.api.reconnect()
                return True
            except ServiceGone:
                time.sleep(0.5)
        say(f"{ERR} The manager service is not back: try again later.")
        return False

    def login(self) -> bool:
        """Ask for credentials until they are right; False when input ends."""
        while True:
            say("\n" + LINE)
            say("  SLICE MANAGER - LOGIN")
            say(LINE)
            try:
                username = read_line("Username: ").strip()
                password = ask_secret("Password: ")
            except (EOFError, KeyboardInterrupt, Cancel):
                return False
            try:
                ok, info = self.api.authenticate(username, password)
            except Exception as e:  # noqa: BLE001 - e.g. a database file that cannot be read
                log.exception("login failed")
                say(f"\n{ERR} Cannot log in: {e}")
                return False
            if not ok:
                say(f"\n{info}")
                continue
            self.user = info
            set_log_actor(info["username"])
            say(f"\nWelcome, {username}!")
            if info.get("default_password"):
                say(f"{WARN}  You are using the default password: change it now (option 10).")
            for notice in info.get("notices") or ():
                say(f"{WARN}  {notice}")
            snapshots_leases.warn_at_login(self.api, self.username)
            return True

    def menu_items(self) -> list:
        items = [("1", "View quota and resources", self.view_quota),
                 ("2", "Create Slice", self.create_slice),
                 ("3", "Add VM to Slice", self.add_vm),
                 ("4", "Create Link between VMs", self.create_link),
                 ("5", "View my Slices", self.view_slices),
                 ("6", "Deploy Slice", self.deploy_slice),
                 ("7", "Delete Slice", self.delete_slice),
                 ("8", "Cleanup orphaned VMs", self.cleanup),
                 ("9", "Logout", None),
                 ("10", "Change password", self.change_password)]
        if self.is_admin:
            items.append(("11", "Manage users", self.manage_users))
        items.append(("12", "Open VM console", self.open_console))
        items.append(("13", "Slice status and repair", self.slice_status))
        items.append(("14", "Start, stop or reboot VMs", self.vm_lifecycle))
        items.append(("15", "Topology templates, import and export", self.topologies))
        if self.is_admin:
            items.append(("16", "Instructor tools (overview, class roster)", self.instructor_tools))
            items.append(("17", "Cluster view", self.cluster_view))
        items.append(("18", "Capture and link impairments", self.net_tools))
        items.append(("19", "Snapshots and leases", self.snapshots_and_leases))
        items.append(("0", "Exit", None))
        return items

    def main_menu(self) -> bool:
        """One menu round; False means leave the program."""
        items = self.menu_items()
        say("\n" + LINE)
        say("  MAIN MENU")
        say(LINE)
        for key, label, _ in items:
            say(f"{key}. {label}")
        try:
            choice = read_line("\nChoice: ").strip()
        except EOFError:
            return False
        except KeyboardInterrupt:
            say("\n(Ctrl-C: nothing was changed. Use 0 to exit.)")
            return True
        if choice == "0":
            return False
        if choice == "9":
            self.api.logout(self.username)
            say(f"\nGoodbye, {self.username}.")
            self.user = None
            return True
        action = next((fn for key, _, fn in items if key == choice and fn), None)
        if action is None:
            say(f"\n{ERR} Invalid choice: enter one of the numbers of the menu.")
            return True
        try:
            action()
        except Cancel:
            say(CANCELLED)
        except KeyboardInterrupt:
            say("\n" + CANCELLED)
        except ServiceGone:
            raise
        except Exception as e:  # noqa: BLE001 - the user sees a summary, the log has the traceback
            log.exception("menu option %s failed", choice)
            say(f"\n{ERR} Unexpected error: {e} (details in the log)")
        return True

    # --- options ----------------------------------------------------------------

    def view_quota(self) -> None:
        ok, q = self.api.get_quota(self.username)
        if not ok:
            return result(False, q)
        say(f"\nQuota: {q['used_vms']}/{q['quota_vms']} VMs used")
        say(f"Slices: {q['slices']}")
        if "disk_quota_mib" in q:
            say(f"Snapshots: {q['disk_used_bytes'] / 2**20:.1f}/{q['disk_quota_mib']} MiB of disk used")
        if q.get("max_lease_days"):
            say(f"Slice leases: at most {q['max_lease_days']} days, renewable (option 19)")

    def create_slice(self) -> None:
        name = ask("\nSlice name: ")
        ok, payload = self.api.create_slice(self.username, name)
        if ok:
            say(f"\n{OK} Slice created! ID: {payload['slice_id']}")
            say(f"   VLAN pool: {pool_text(payload)}")
        else:
            result(False, payload)

    def add_vm(self) -> None:
        slice_id = ask_valid("\nSlice ID: ", parse_number, "Slice ID must be a number")
        ok, s = self.api.check_editable(self.username, slice_id)
        if not ok:
            return result(False, s)
        vm_name = ask("VM name: ")
        say("\nAvailable flavors:")
        names = Flavor.names()
        for line in render_flavors():
            say(line)
        flavor = ask_valid(f"Choose flavor (1-{len(names)}): ", parse_choice(names), choose_message(len(names)))
        count = ask_valid("Number of data interfaces (eth1, eth2, ...): ", parse_int(0, MAX_DATA_INTERFACES),
                          f"Enter a number from 0 to {MAX_DATA_INTERFACES}")
        internet = ask_valid("Enable internet access (eth0 in VLAN 400)? (y/n): ", parse_yes_no,
                             "Answer y or n")
        say("Creating the VM disk on its worker...")
        ok, vm = self.api.add_vm_to_slice(self.username, slice_id, vm_name, flavor, count, internet)
        if ok:
            say(f"\n{OK} VM added! ID: {vm['vm_id']}, VNC: {vm['vnc_port']}, Flavor: {flavor}")
            say(f"   Worker: {vm['worker_ip']}, disk: {vm['qcow_image']}")
        else:
            result(False, vm)

    def create_link(self) -> None:
        slice_id = ask_valid("\nSlice ID: ", parse_number, "Slice ID must be a number")
        ok, s = self.api.check_editable(self.username, slice_id)
        if not ok:
            return result(False, s)
        for line in render_interfaces(s):
            say(line)
        vm1 = ask("\nFirst VM ID: ")
        if1 = ask("First VM interface (e.g., eth1): ")
        vm2 = ask("Second VM ID: ")
        if2 = ask("Second VM interface (e.g., eth1): ")
        ok, link = self.api.create_link(self.username, slice_id, vm1, if1, vm2, if2)
        if ok:
            say(f"\n{OK} Link created! VLAN: {link['vlan_id']}")
            note = link_vlan_note(s, link["vlan_id"])
            if note:
                say(note)
        else:
            result(False, link)

    def view_slices(self) -> None:
        ok, slices = self.api.list_slices(self.username)
        if not ok:
            return result(False, slices)
        for line in render_slices(slices, show_owner=self.is_admin):
            say(line)
        for line in cli_classes.render_diagrams([s for s in slices if s.get("vms")]):
            say(line)
        mine = [s["slice_id"] for s in slices if s.get("owner") == self.username and s.get("status") == "running"]
        if mine:
            ok, details = self.api.access_details(self.username, mine)
            if not ok:
                return result(False, details)
            for sid in mine:
                say(f"\nSlice {sid}, as its hosts hold it now:")
                for line in render_access(details.get(int(sid), [])):
                    say(line)

    def deploy_slice(self) -> None:
        slice_id = ask_valid("\nSlice ID to deploy: ", parse_number, "Slice ID must be a number")
        started = []

        def progress(event: dict) -> None:
            if not started:
                started.append(True)
                say("Deploying (Ctrl-C undoes everything this deploy made)...")
            say(render_progress(event))

        ok, msg = self.api.deploy_slice(self.username, slice_id, progress=progress)
        say(f"\n{OK} {msg}" if ok else f"\n{ERR} {msg}")
        if ok:
            ok, details = self.api.access_details(self.username, [slice_id])
            if ok:
                for vm in details.get(int(slice_id), []):
                    say(f"   VM {vm.vm_id} {vm.name}: VNC {vm.vnc} (display :{int(vm.vnc.rsplit(':', 1)[1]) - 5900})"
                        f"  user: {vm.user} password: {vm.password}")
                say("   Open a VM's console with option 12; its addresses show in View (option 5) "
                    "once it has booted.")

    def slice_status(self) -> None:
        slice_id = ask_valid("\nSlice ID: ", parse_number, "Slice ID must be a number")
        say("Checking the hosts...")
        ok, report = self.api.slice_status(self.username, slice_id)
        if not ok:
            return result(False, report)
        for line in render_status(report):
            say(line)
        if not report.problems:
            return
        if not ask_valid("\nRepair what is missing? (y/n): ", parse_yes_no, "Answer y or n"):
            raise Cancel()
        ok, outcome = self.api.repair_slice(self.username, slice_id, progress=show_progress)
        if isinstance(outcome, str):
            return result(False, outcome)
        say(f"\n{OK if ok else ERR} {outcome.message}")

    def vm_lifecycle(self) -> None:
        slice_id = ask_valid("\nSlice ID: ", parse_number, "Slice ID must be a number")
        say("\n1. Stop a VM\n2. Start a VM\n3. Reboot a VM\n4. Stop the whole slice\n5. Start the whole slice")
        choice = ask_valid("Choice (1-5): ", parse_int(1, 5), "Choose a number from 1 to 5")
        vm_id = ask_valid("VM ID: ", parse_number, "VM ID must be a number") if choice <= 3 else None
        action = {1: self.api.stop_vm, 2: self.api.start_vm, 3: self.api.reboot_vm,
                  4: self.api.stop_vm, 5: self.api.start_vm}[choice]
        ok, msg = action(self.username, slice_id, vm_id, progress=show_progress)
        result(ok, msg)

    def cluster_view(self) -> None:
        say("\nReading the hosts...")
        ok, view = self.api.cluster_view(self.username)
        if not ok:
            return result(False, view)
        for line in render_cluster(view):
            say(line)

    def open_console(self) -> None:
        if not sys.stdin.isatty():
            say(f"\n{ERR} The console needs a terminal: run the menu in a terminal (not with piped input).")
            return
        slice_id = ask_valid("\nSlice ID: ", parse_number, "Slice ID must be a number")
        vm_id = ask_valid("VM ID: ", parse_number, "VM ID must be a number")
        say("\n1. Open the console\n2. Show the last lines of its boot log")
        if ask_valid("Choice (1-2): ", parse_int(1, 2), "Choose 1 or 2") == 2:
            ok, text = self.api.boot_log(self.username, slice_id, vm_id)
            if not ok:
                return result(False, text)
            say(f"\n--- last lines printed by VM {vm_id} ---")
            for line in text.replace("\r", "").splitlines():
                say(printable(line))
            say("--- end ---")
            return
        ok, session = self.api.open_console(self.username, slice_id, vm_id)
        if not ok:
            return result(False, session)
        vm = session.vm
        say(f"\nConsole of VM {vm.vm_id} ({vm.name}) on {vm.worker}. Log in as user: {vm.user} password: {vm.password}")
        say("Connected: press Enter if no prompt shows. Ctrl-] returns to the menu.")
        try:
            if session.early:
                os.write(sys.stdout.fileno(), session.early)
            how = console.bridge(session.channel, sys.stdin.fileno(), sys.stdout.fileno())
        finally:
            session.channel.close()
        say("\r\n(console detached)" if how == "detached" else "\r\n(the console was closed)")

    def topologies(self) -> None:
        cli_classes.topology_menu(self)

    def snapshots_and_leases(self) -> None:
        snapshots_leases.menu(self)

    def instructor_tools(self) -> None:
        cli_classes.instructor_menu(self)

    def net_tools(self) -> None:
        cli_tools.tools_menu(self)

    def delete_slice(self) -> None:
        slice_id = ask_valid("\nSlice ID: ", parse_number, "Slice ID must be a number")
        ok, s = self.api.get_slice(self.username, slice_id)
        if not ok:
            return result(False, s)
        sure = ask_valid(f"Delete slice {s['slice_id']} ({s.get('name') or '-'}, {s.get('status')}, "
                         f"{len(s.get('vms', []))} VMs)? (y/n): ", parse_yes_no, "Answer y or n")
        if not sure:
            raise Cancel()
        ok, msg = self.api.delete_slice(self.username, slice_id, progress=lambda e: say(render_progress(e)))
        say(f"\n{OK} {msg}" if ok else f"\n{ERR} {msg}")

    def cleanup(self) -> None:
        if not self.is_admin:
            say(f"\n{ERR} Only an admin can clean up orphaned VMs.")
            return
        say("\nScanning the hosts...")
        ok, orphans = self.api.find_orphans(self.username)
        if not ok:
            return result(False, orphans)
        if not orphans:
            say(f"\n{OK} Nothing to clean: every resource on the hosts belongs to a slice in the database.")
            return
        say(f"\nFound {len(orphans)} resource(s) created by Cloud Repositorio that no slice owns:")
        for o in orphans:
            say(f"  - {o.host:<15} {o.kind:<16} {o.name}")
        say(f"\n{WARN}  This will remove exactly the resources listed above.")
        try:
            answer = read_line("Are you sure? (yes/no): ").strip()
        except (EOFError, KeyboardInterrupt):
            answer = ""
        if answer != "yes":
            say(f"\n{ERR} Cleanup cancelled")
            return
        ok, msg = self.api.cleanup_orphans(self.username, orphans)
        result(ok, msg)

    def change_password(self) -> None:
        old = ask_secret("\nCurrent password: ")
        new = ask_secret("New password (6+ characters): ")
        again = ask_secret("New password again: ")
        if new != again:
            return result(False, "The two new passwords differ")
        ok, msg = self.api.change_password(self.username, old, new)
        result(ok, msg)

    def manage_users(self) -> None:
        ok, users = self.api.list_users(self.username)
        if not ok:
            return result(False, users)
        say("\nUsers:")
        for u in users:
            lease = f"{u['max_lease_days']} days" if u.get("max_lease_days") else "none"
            say(f"  {u['username']:<16} {u.get('role', 'student'):<8} quota {u.get('used_vms', 0)}/"
                f"{u.get('quota_vms', 0)}  slices: {len(u.get('slices', []))}"
                f"  snapshots {u.get('disk_used_bytes', 0) / 2**20:.1f}/{u.get('disk_quota_mib', '-')} MiB"
                f"  max lease: {lease}")
        say("\n1. Create user\n2. Set quota\n3. Reset password\n4. Set disk quota for snapshots\n"
            "5. Set maximum lease")
        choice = ask_valid("Choice (1-5): ", parse_int(1, 5), "Choose a number from 1 to 5")
        username = ask("Username: ")
        if choice == 1:
            password = ask_secret("Password (6+ characters): ")
            quota = ask_valid("VM quota: ", parse_int(0, 1000), "Enter a number from 0 to 1000")
            admin = ask_valid("Admin role? (y/n): ", parse_yes_no, "Answer y or n")
            ok, msg = self.api.create_user(self.username, username, password, quota,
                                           "admin" if admin else "student")
        elif choice == 2:
            quota = ask_valid("New VM quota: ", parse_int(0, 1000), "Enter a number from 0 to 1000")
            ok, msg = self.api.set_quota(self.username, username, quota)
        elif choice == 4:
            mib = ask_valid("Disk quota for snapshots (MiB): ", parse_int(0, 1024 * 1024),
                            "Enter a number of MiB from 0 to 1048576")
            ok, msg = self.api.set_disk_quota(self.username, username, mib)
        elif choice == 5:
            days = ask("Maximum lease in days (1-365, or none): ")
            ok, msg = self.api.set_max_lease(self.username, username, days)
        else:
            password = ask_secret("New password (6+ characters): ")
            ok, msg = self.api.reset_password(self.username, username, password)
        result(ok, msg)


# --- wiring --------------------------------------------------------------------------

def default_config_path() -> str:
    return os.environ.get("CLOUD_CONFIG") or os.path.join(HERE, "cluster.yaml")


def default_db_path() -> str:
    return os.environ.get("CLOUD_DB") or os.path.join(HERE, "database.yaml")


def build(config_path: str, db_path: str, dry_run: bool = False):
    """Config, logging, executor, database and orchestrator, wired together (the menu run on its own)."""
    from database import Database
    from deployment_api import DeploymentAPI
    from orchestrator_api import OrchestratorAPI
    from remote_executor import RemoteExecutor, configure_logging
    from store.config import ClusterConfig

    config = ClusterConfig.load(config_path)
    configure_logging(config.log_file)
    executor = RemoteExecutor(config, dry_run=dry_run, batch_hosts={config.network_node})
    db = Database(db_path)
    db.load()  # a broken file is reported now, not after login
    return OrchestratorAPI(db, DeploymentAPI(executor), config), executor


def make_parser() -> argparse.ArgumentParser:
    """The command line: the menu's options, and the script mode's commands."""
    parser = argparse.ArgumentParser(
        description="Cloud Repositorio slice manager: the text menu, or (with a COMMAND) a script's tool",
        epilog="Without a COMMAND: the menu. Commands: see 'python3 cli.py COMMAND --help'. "
               "With --socket (or CLOUD_SOCKET, or when the manager service's socket "
               f"{DEFAULT_SOCKET} exists and no --config/--db is given) the menu is a client of the manager "
               "service; otherwise it runs the use cases itself (the operator's embedded mode).")
    parser.add_argument("--config", default=None, help="cluster config YAML (embedded mode)")
    parser.add_argument("--db", default=None, help="database YAML (embedded mode)")
    parser.add_argument("--socket", default=None, help="the manager service's socket (client mode)")
    parser.add_argument("--embedded", action="store_true",
                        help="run the use cases in this process, even when a manager service is there")
    parser.add_argument("--user", default=None, metavar="NAME",
                        help="script mode and --plan: the account to log in as (default: this Unix account's name)")
    parser.add_argument("--password-file", default=None, metavar="FILE",
                        help="script mode and --plan: the password, from a file of yours (mode 0600)")
    parser.add_argument("--plan", metavar="SLICE_ID", type=int,
                        help="print the host commands a deploy of this slice would run, run nothing (logs in)")
    commands.add_subcommands(parser)
    return parser


def service_socket(args) -> Optional[str]:
    """The manager service's socket when the menu is its client, None for the embedded mode."""
    explicit = args.socket or os.environ.get("CLOUD_SOCKET")
    embedded = args.embedded or args.config or args.db or os.environ.get("CLOUD_CONFIG") or \
        os.environ.get("CLOUD_DB")
    if explicit and embedded:
        raise StartError("--socket (or CLOUD_SOCKET) names the manager service; --config, --db and --embedded "
                         "run without it: give one or the other")
    if explicit:
        return explicit
    if not embedded and os.path.exists(DEFAULT_SOCKET):
        return DEFAULT_SOCKET
    return None


class StartError(Exception):
    """The menu cannot start (the message says why)."""


def connect(args) -> tuple:
    """(api, close): the manager service's client, or the use cases run here (embedded)."""
    from database import DatabaseError
    from service.client import RemoteAPI, ServiceGone
    from store.config import ConfigError

    path = service_socket(args)
    if path:
        try:
            api = RemoteAPI(path)
        except ServiceGone as e:
            raise StartError(str(e)) from None
        return api, api.close
    try:
        api, executor = build(args.config or default_config_path(), args.db or default_db_path())
    except (ConfigError, DatabaseError, OSError) as e:
        if isinstance(e, PermissionError):
            raise StartError(f"{e} (this account cannot run the menu on its own: use the manager "
                             f"service, e.g. --socket {DEFAULT_SOCKET})") from None
        raise StartError(str(e)) from None
    return api, executor.close


def run_menu(api) -> int:
    started = time.monotonic()
    try:
        return CLI(api).run()
    except KeyboardInterrupt:
        say("\nGoodbye!")
        return 0
    except Exception as e:  # noqa: BLE001 - last resort: never a traceback on screen
        log.exception("fatal error")
        print(f"\n{ERR} Fatal error: {printable(str(e))} (details in the log)", file=sys.stderr)
        return 1
    finally:
        log.info("menu session ended after %.1f s", time.monotonic() - started)


def main(argv: Optional[list] = None) -> int:
    args = make_parser().parse_args(argv)
    if getattr(args, "offline", False):
        return commands.run(args)
    script = bool(args.command) or args.plan is not None
    try:
        api, close = connect(args)
    except StartError as e:
        why = printable(str(e))
        print(f"error: cannot start: {why}" if script else f"{ERR} Cannot start: {why}", file=sys.stderr)
        return 2
    try:
        if script:
            return run_script(args, api)
        return run_menu(api)
    finally:
        close()


def run_script(args, api) -> int:
    """Script mode (and ``--plan``): log in, then the command, as that user."""
    from service.client import ServiceGone

    try:
        user = commands.login(api, args)
        if args.plan is not None and not args.command:
            return commands.run(argparse.Namespace(run=commands.run_plan, plan=args.plan, command="plan"), api, user)
        return commands.run(args, api, user)
    except commands.Failed as e:
        print(f"error: {commands.safe(str(e))}", file=sys.stderr)
        return 1
    except ServiceGone as e:
        print(f"error: {commands.safe(str(e))}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
