"""Menu option 19 (disk snapshots and slice leases), the login warning, and their script-mode commands.

Prompts and rendering only: every action is one ``OrchestratorAPI`` call
(``list_snapshots``, ``save_snapshot``, ``restore_snapshot``,
``delete_snapshot``, ``set_lease``, ``list_leases``, ``lease_warnings``;
``reap_leases`` for the operator's ``lease reap``).  Script mode::

    snapshot list ID                      a slice's VMs, their snapshots, the owner's disk quota
    snapshot save|restore|delete ID VM NAME
    lease show [ID]                       the leases of your slices (an admin: every slice)
    lease set ID DAYS|none                renew: the lease ends DAYS days from now
    lease reap [--at TIME]                the operator's run of the reaper (embedded mode, an admin)
"""
from __future__ import annotations

import argparse
import time

from menu.prompts import (
    ERR,
    OK,
    WARN,
    Cancel,
    ask,
    ask_valid,
    parse_int,
    parse_number,
    parse_yes_no,
    result,
    say,
)
from menu.script_io import Failed, checked, out
from usecases.leases import MAX_LEASE_DAYS, STAMP, lease_text, left_text, stamp

MIB = 1024 * 1024


# --- rendering -------------------------------------------------------------------------------

def mib(n_bytes: int) -> str:
    return f"{n_bytes / MIB:.1f} MiB"


def render_progress(event: dict) -> str:
    mark = OK if event["ok"] else ERR
    text = f"  [{event['elapsed']:6.2f}s] {mark} {event['host']:<15} {event['step']}"
    if event.get("duration"):
        text += f" ({event['duration']:.2f} s)"
    return text + ("" if event["ok"] else f": {event['message']}")


def render_listing(listing) -> list:
    """A slice's lease, the owner's snapshot disk quota, and each VM's snapshots."""
    lines = [f"\nSlice {listing.slice_id} ({listing.name}) [{listing.status}], owner {listing.owner}"]
    if listing.lease is not None:
        most = listing.lease.max_days
        lines.append(f"  Lease: {lease_text(listing.lease)}"
                     + (f"; renewable up to {most} days from the day of renewal" if most else ""))
    lines.append(f"  Snapshot disk quota of {listing.owner}: {mib(listing.used_bytes)} of {listing.quota_mib} MiB "
                 f"used ({mib(listing.left_bytes)} left); at most {listing.max_per_vm} snapshots per VM")
    for vm in listing.vms:
        if not vm.snapshots:
            lines.append(f"  VM {vm.vm_id} {vm.name} [{vm.status}]: no snapshots")
            continue
        lines.append(f"  VM {vm.vm_id} {vm.name} [{vm.status}]:")
        for snap in vm.snapshots:
            lines.append(f"      {snap.name:<24} saved {snap.created_at}  {mib(snap.size_bytes):>12}")
    return lines


def render_leases(rows: list) -> list:
    if not rows:
        return ["No slices."]
    return [f"  Slice {r.slice_id} ({r.name}, {r.owner}) [{r.status}]: {lease_text(r)}"
            + (f"; the owner's maximum: {r.max_days} days" if r.max_days else "") for r in rows]


def render_warnings(rows: list) -> list:
    """The login warnings: leases ending soon, or ended."""
    out = []
    for r in rows:
        if r.ended:
            out.append(f"{WARN}  The lease of slice {r.slice_id} ({r.name}) ended at {r.lease_end}: the manager "
                       f"stops its VMs and deletes it at {r.delete_at}. Ask an admin to extend it.")
        else:
            out.append(f"{WARN}  The lease of slice {r.slice_id} ({r.name}) ends at {r.lease_end} "
                       f"(in {left_text(r.seconds_left or 0)}): renew it with option 19.")
    return out


def render_reap(at: str, outcomes: list) -> list:
    if not outcomes:
        return [f"{at}: nothing to stop or delete."]
    lines = [f"{at}:"]
    for o in outcomes:
        lines.append(f"  slice {o.slice_id} ({o.name}, {o.owner}), lease ended {o.lease_end}: {o.action}"
                     + (f": {o.message}" if o.message and o.action not in ("deleted",) else ""))
    return lines


# --- option 19 ---------------------------------------------------------------------------------

def menu(cli) -> None:
    """Option 19: a slice's snapshots and lease; save, restore or delete a snapshot, or renew the lease."""
    slice_id = ask_valid("\nSlice ID: ", parse_number, "Slice ID must be a number")
    ok, listing = cli.api.list_snapshots(cli.username, slice_id)
    if not ok:
        return result(False, listing)
    for line in render_listing(listing):
        say(line)
    say("\n1. Save a snapshot of a VM\n2. Restore a VM from a snapshot\n3. Delete a snapshot\n"
        "4. Renew the slice's lease")
    choice = ask_valid("Choice (1-4): ", parse_int(1, 4), "Choose a number from 1 to 4")
    if choice == 4:
        return renew(cli, listing)
    vm_id = ask_valid("VM ID: ", parse_number, "VM ID must be a number")
    name = ask("Snapshot name: ")
    if choice == 2 and not ask_valid(f"Restore VM {vm_id} from snapshot {name}? Its disk is replaced and the VM "
                                     "restarts (y/n): ", parse_yes_no, "Answer y or n"):
        raise Cancel()
    action = {1: cli.api.save_snapshot, 2: cli.api.restore_snapshot, 3: cli.api.delete_snapshot}[choice]
    say("Working (Ctrl-C waits until the VM is as it was)...")
    ok, msg = action(cli.username, slice_id, vm_id, name, progress=lambda e: say(render_progress(e)))
    result(ok, msg)


def renew(cli, listing) -> None:
    most = listing.lease.max_days if listing.lease is not None else None
    if cli.is_admin or not most:
        prompt = f"New lease in days from now (1-{MAX_LEASE_DAYS}, or none): "
    else:
        prompt = f"New lease in days from now (1-{most}): "
    ok, msg = cli.api.set_lease(cli.username, listing.slice_id, ask(prompt))
    result(ok, msg)


def warn_at_login(api, username: str) -> None:
    """Tell the user about their leases that end within a day (``leases.warn_hours``) or ended."""
    ok, rows = api.lease_warnings(username)
    if ok:
        for line in render_warnings(rows):
            say(line)


# --- script mode ---------------------------------------------------------------------------------

def add_subcommands(sub, common: argparse.ArgumentParser) -> None:
    """``snapshot ...`` and ``lease ...`` on the script mode's parser."""
    snap = sub.add_parser("snapshot", help="disk snapshots of VMs").add_subparsers(dest="action", metavar="ACTION",
                                                                                 required=True)
    p = snap.add_parser("list", parents=[common], help="a slice's VMs, their snapshots, the disk quota")
    p.add_argument("slice_id", metavar="ID")
    p.set_defaults(run=run_snapshot_list)
    for action, text in (("save", "save a VM's disk as a snapshot (a running VM is paused meanwhile)"),
                         ("restore", "restore a VM's disk from a snapshot (the VM restarts)"),
                         ("delete", "delete a snapshot")):
        p = snap.add_parser(action, parents=[common], help=text)
        p.add_argument("slice_id", metavar="ID")
        p.add_argument("vm_id", metavar="VM")
        p.add_argument("name", metavar="NAME")
        p.set_defaults(run=run_snapshot_action)

    lease = sub.add_parser("lease", help="slice leases").add_subparsers(dest="action", metavar="ACTION",
                                                                       required=True)
    p = lease.add_parser("show", parents=[common], help="the leases of your slices (an admin: every slice)")
    p.add_argument("slice_id", metavar="ID", nargs="?")
    p.set_defaults(run=run_lease_show)
    p = lease.add_parser("set", parents=[common], help="renew a slice's lease: it ends DAYS days from now")
    p.add_argument("slice_id", metavar="ID")
    p.add_argument("days", metavar="DAYS", help="whole days from now, or none")
    p.set_defaults(run=run_lease_set)
    p = lease.add_parser("reap", parents=[common],
                         help="stop slices whose lease ended, delete them after the grace period (operator)")
    p.add_argument("--at", metavar="TIME", help=f"act as if it were TIME ({STAMP.replace('%', '')}), not now")
    p.set_defaults(run=run_lease_reap)


def run_snapshot_list(args, api, user: str) -> int:
    for line in render_listing(checked(api.list_snapshots(user, args.slice_id))):
        out(line)
    return 0


def run_snapshot_action(args, api, user: str) -> int:
    fn = {"save": api.save_snapshot, "restore": api.restore_snapshot, "delete": api.delete_snapshot}[args.action]
    out(checked(fn(user, args.slice_id, args.vm_id, args.name, progress=lambda e: out(render_progress(e)))))
    return 0


def run_lease_show(args, api, user: str) -> int:
    for line in render_leases(checked(api.list_leases(user, args.slice_id))):
        out(line)
    return 0


def run_lease_set(args, api, user: str) -> int:
    out(checked(api.set_lease(user, args.slice_id, args.days)))
    return 0


def run_lease_reap(args, api, user: str) -> int:
    if getattr(api, "remote", False):
        raise Failed("the manager service reaps leases itself; 'lease reap' is the embedded mode's "
                       "(give --config and --db, e.g. from the service account's cron)")
    if (api.db.get_user(user) or {}).get("role") != "admin":
        raise Failed("Only an admin can do this")
    now = None
    if args.at:
        try:
            now = time.mktime(time.strptime(args.at, STAMP))
        except ValueError:
            raise Failed(f"--at must be a time like {time.strftime(STAMP)}") from None
    outcomes = checked(api.reap_leases(now=now, progress=lambda e: out(render_progress(e))))
    for line in render_reap(stamp(time.time() if now is None else now), outcomes):
        out(line)
    return 0 if all(o.action in ("stopped", "deleted", "kept") for o in outcomes) else 1
