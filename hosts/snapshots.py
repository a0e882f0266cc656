"""Disk snapshots of VMs on their workers: save, restore, delete, and the ``snapshot`` kind.

A snapshot is an external file: a copy of the VM's qcow2 overlay, in the
overlay's folder (``naming.snapshot_file``), with the same backing file (the
base image, never touched).  Why copies and not internal qcow2 snapshots
(``qemu-img snapshot -c``):

* size accounting is exact and known before anything is made: a snapshot
  holds exactly its file (``stat`` on the worker), the size of the overlay at
  the moment of the save, so a save that the owner's disk quota cannot hold
  is refused before the copy; an internal snapshot's share of a qcow2 file
  cannot be measured (it grows later, as the guest overwrites the clusters
  it shares);
* a running VM is only paused for a save (QMP ``stop`` drains and flushes its
  disks to the file, ``cont`` resumes it): ``qemu-img snapshot`` needs the
  image's write lock, so the VM would have to be shut down;
* snapshots are independent: each can be restored or deleted in any order,
  and deleting one never needs the VM stopped or its disk rewritten;
* the overlay stays a plain one-layer qcow2 over the base image.

The cost is the copy: proportional to the overlay's size (``bench/snapshots.py``
measures it against ``qemu-img snapshot -c``), and no sharing of clusters
between snapshots (``cp --reflink=auto`` shares them where the file system can).

Every script is idempotent or refuses without changing anything; the marker
``<file>.owner`` is written before a copy and removed with it, so the orphan
scan finds a file a dead session left.  Restore needs the VM stopped (the use
case stops it through QMP as option 14 does, and starts it again after).
"""
from __future__ import annotations

import os
from typing import Iterable, Optional

import naming
from hosts.hostcmd import HostCommand, home_path, q, shell_path
from hosts.resources import Found, HostContext, Key, Kind, register
from vm_launcher import qemu_pattern

SNAPSHOT_EXISTS = 17
NO_SNAPSHOT = 66
DISK_MISSING = 67
VM_RUNNING = 73
NO_ROOM = 75
COPY_TIMEOUT = 900   # seconds: a copy of a large overlay on a slow disk
PART = ".part"


def _paths(vm: dict, home: str, snapshot: str) -> tuple:
    """(overlay, snapshot file, its part file, its marker), absolute on the VM's worker."""
    overlay = home_path(vm["qcow_image"], home)
    snap = naming.snapshot_file(int(vm["vm_id"]), snapshot, os.path.dirname(overlay))
    return overlay, snap, naming.snapshot_part(snap), naming.overlay_marker(snap)


def _qmp(vm_id: int, command: str, what: str) -> str:
    """Shell: one QMP command to the VM's QEMU; exit 6, saying ``what`` failed, unless it returns."""
    qmp = q(f"UNIX-CONNECT:{naming.vm_qmp_socket(vm_id)}")
    req = '{"execute":"qmp_capabilities"}\\n{"execute":"' + command + '"}\\n'
    return (f"resp=$(printf '{req}' | timeout 30 socat -t 30 - {qmp} 2>&1) || true; "
            "case \"$resp\" in *'\"return\": {}'*'\"return\": {}'*) ;; "
            f"*) echo \"{what}: $resp\" >&2; exit 6;; esac")


def _qemu_alive(vm_id: int) -> str:
    """Shell: ``alive=1`` when a QEMU of the VM runs (found by its command line), else ``alive=0``."""
    return f"if pgrep -f -- {q(qemu_pattern(vm_id))} >/dev/null; then alive=1; else alive=0; fi"


def save_command(vm: dict, home: str, snapshot: str, limit_bytes: int) -> HostCommand:
    """Root script on the VM's worker: copy its overlay to the snapshot ``snapshot``.

    A running VM is paused over QMP while its disk is copied (``stop`` drains
    and flushes the guest's writes to the file) and resumed after, whatever
    happens.  Refused, changing nothing, when the snapshot exists (exit
    ``SNAPSHOT_EXISTS``) or the overlay is larger than ``limit_bytes`` (exit
    ``NO_ROOM``, printing ``need <bytes>``).  Prints ``size <bytes>`` of the copy.
    """
    vm_id = int(vm["vm_id"])
    overlay, snap, part, marker = _paths(vm, home, snapshot)
    script = "\n".join([
        "set -e",
        "umask 077",  # a snapshot holds a student's data, like the disk: 0600, its marker too
        f"o={q(overlay)}; f={q(snap)}; p={q(part)}; m={q(marker)}",
        f"[ -f \"$o\" ] || {{ echo {q(f'the disk of VM {vm_id} is missing: {overlay}')} >&2; exit {DISK_MISSING}; }}",
        f"if [ -e \"$f\" ] || [ -e \"$m\" ]; then echo {q(f'VM {vm_id} already has a snapshot {snapshot}')} >&2; "
        f"exit {SNAPSHOT_EXISTS}; fi",
        "size=$(stat -c %s \"$o\")",
        f"if [ \"$size\" -gt {int(limit_bytes)} ]; then echo \"need $size\"; exit {NO_ROOM}; fi",
        "paused=0",
        f"resume() {{ if [ \"$paused\" = 1 ]; then paused=0; {_qmp(vm_id, 'cont', 'could not resume the VM')}; fi; }}",
        "trap 'rc=$?; rm -f \"$p\"; [ -e \"$f\" ] || rm -f \"$m\"; resume; exit $rc' EXIT",
        "trap 'exit 130' INT TERM HUP PIPE",
        f"printf '%s\\n' {q(f'{naming.MARK} vm {vm_id} snapshot {snapshot}')} > \"$m\"",
        _qemu_alive(vm_id),
        f"if [ \"$alive\" = 1 ]; then {_qmp(vm_id, 'stop', 'could not pause the VM')}; paused=1; echo paused; fi",
        "cp --reflink=auto --sparse=always \"$o\" \"$p\"",
        "chown --reference=\"$o\" \"$p\" \"$m\" 2>/dev/null || true",
        "sync \"$p\" 2>/dev/null || sync",
        "mv \"$p\" \"$f\"",
        "resume",
        "echo \"size $(stat -c %s \"$f\")\"",
    ])
    return HostCommand(vm["worker_ip"], script, sudo=True, timeout=COPY_TIMEOUT,
                       step=f"save snapshot {snapshot} of VM {vm_id} ({vm['name']})", action="snapshot_save",
                       target=(vm_id, snapshot))


def restore_command(vm: dict, home: str, snapshot: str) -> HostCommand:
    """Root script: the VM's overlay replaced by a copy of the snapshot (the VM must be stopped).

    The copy goes to the part file and is renamed over the overlay, so the
    disk is either the old one or the restored one.  Refused, changing
    nothing, while the VM's QEMU runs (exit ``VM_RUNNING``) or when the
    snapshot or the disk is missing.
    """
    vm_id = int(vm["vm_id"])
    overlay, snap, part, _marker = _paths(vm, home, snapshot)
    script = "\n".join([
        "set -e",
        "umask 077",
        f"o={q(overlay)}; f={q(snap)}; p={q(part)}",
        f"[ -f \"$f\" ] || {{ echo {q(f'snapshot {snapshot} of VM {vm_id} is missing on its worker')} >&2; "
        f"exit {NO_SNAPSHOT}; }}",
        f"[ -f \"$o\" ] || {{ echo {q(f'the disk of VM {vm_id} is missing: {overlay}')} >&2; exit {DISK_MISSING}; }}",
        _qemu_alive(vm_id),
        f"if [ \"$alive\" = 1 ]; then echo {q(f'VM {vm_id} is still running: its disk is not replaced')} >&2; "
        f"exit {VM_RUNNING}; fi",
        "trap 'rc=$?; rm -f \"$p\"; exit $rc' EXIT",
        "trap 'exit 130' INT TERM HUP PIPE",
        "cp --reflink=auto --sparse=always \"$f\" \"$p\"",
        "chown --reference=\"$o\" \"$p\" 2>/dev/null || true",
        "sync \"$p\" 2>/dev/null || sync",
        "mv -f \"$p\" \"$o\"",
        "echo restored",
    ])
    return HostCommand(vm["worker_ip"], script, sudo=True, timeout=COPY_TIMEOUT,
                       step=f"restore VM {vm_id} ({vm['name']}) from snapshot {snapshot}",
                       action="snapshot_restore", target=(vm_id, snapshot))


def delete_command(vm: dict, home: str, snapshot: str) -> HostCommand:
    """Root script: remove the snapshot's file, part file and marker (no error when they are gone)."""
    vm_id = int(vm["vm_id"])
    _overlay, snap, part, marker = _paths(vm, home, snapshot)
    return HostCommand(vm["worker_ip"], f"rm -f {q(snap)} {q(part)} {q(marker)}", sudo=True, timeout=60,
                       step=f"delete snapshot {snapshot} of VM {vm_id} ({vm['name']})", action="snapshot_delete",
                       target=(vm_id, snapshot))


def purge_lines(folder: str, vm_ids: Iterable[int]) -> list:
    """Shell lines removing every snapshot (file, part file, marker) of the VMs in ``folder`` (``~/`` kept live)."""
    return [f"for m in {shell_path(folder.rstrip('/') + f'/vm{int(vm_id)}.')}*.snap.qcow2.owner; do "
            "[ -e \"$m\" ] || continue; f=${m%.owner}; rm -f \"$f\" \"$f.part\" \"$m\"; done"
            for vm_id in sorted({int(v) for v in vm_ids})]


def purge_command(worker: str, folder: str, vm_ids: Iterable[int]) -> HostCommand:
    """Every snapshot of these VMs (of one worker, overlays in ``folder``) removed as their disks go.

    Run as the SSH user, like the overlay's removal (the files are the user's); idempotent.
    """
    ids = sorted({int(v) for v in vm_ids})
    return HostCommand(worker, "\n".join([*purge_lines(folder, ids), "true"]), sudo=False, timeout=60,
                       step=f"delete the snapshots of VM {', '.join(map(str, ids))}", action="snapshot_purge",
                       target=tuple(ids))


def purge_commands(vms: Iterable[dict]) -> list:
    """One purge per worker and folder, for the VMs that ever had a snapshot (their ``snapshots`` field)."""
    groups: dict = {}
    for vm in vms:
        if "snapshots" in vm and vm.get("qcow_image") and vm.get("worker_ip"):
            groups.setdefault((vm["worker_ip"], os.path.dirname(vm["qcow_image"])), []).append(int(vm["vm_id"]))
    return [purge_command(worker, folder, ids) for (worker, folder), ids in sorted(groups.items())]


def sizes_of(vm: dict) -> int:
    """Bytes the VM's recorded snapshots hold."""
    return sum(int(s.get("size_bytes") or 0) for s in vm.get("snapshots") or [])


# --- the kind -------------------------------------------------------------------------------

def _in_progress(view) -> Iterable[tuple]:
    """(vm, snapshot name) of saves and restores that live sessions are doing (their slice's mark)."""
    for s in view.slices:
        op = (s.get("busy") or {}).get("snapshot") or {}
        vm = next((v for v in s.get("vms", []) if v.get("vm_id") == op.get("vm_id")), None)
        if vm is not None and vm.get("worker_ip") and op.get("name"):
            yield vm, str(op["name"])


@register
class Snapshot(Kind):
    """A VM's disk snapshot: ``vm{id}.{name}.snap.qcow2`` with its marker (detail: its size in bytes).

    A part file (or a marker left alone) is its own object, ``{name}.part``:
    owned only while a live session saves or restores that snapshot.
    """

    name = "snapshot"
    label = "snapshot"

    def scan(self, ctx: HostContext, host: str) -> str:
        folder = q(ctx.image_dir(host))
        return (f"for m in {folder}/{naming.SNAPSHOT_MARKER_GLOB}; do [ -f \"$m\" ] || continue; "
                "f=${m%.owner}; b=${f##*/}; "
                "if [ -f \"$f\" ]; then echo \"snapshot $b $(stat -c %s \"$f\")\"; fi; "
                "if [ -f \"$f.part\" ] || [ ! -f \"$f\" ]; then echo \"snapshot $b.part -\"; fi; done; true")

    def parse(self, host: str, fields: list) -> Optional[Found]:
        if not fields:
            return None
        base, part = (fields[0][:-len(PART)], True) if fields[0].endswith(PART) else (fields[0], False)
        m = naming.SNAPSHOT_RE.fullmatch(base)
        if not m:
            return None
        name = m.group(2) + (PART if part else "")
        detail = fields[1] if len(fields) > 1 and not part else ""
        return Found(Key(self.name, host, vm_id=int(m.group(1)), name=name), detail)

    def owned(self, view):
        for vm in view.all_vms():
            for snap in vm.get("snapshots") or []:
                yield Key(self.name, vm["worker_ip"], vm_id=int(vm["vm_id"]), name=str(snap.get("name")))
        for vm, name in _in_progress(view):
            for n in (name, name + PART):
                yield Key(self.name, vm["worker_ip"], vm_id=int(vm["vm_id"]), name=n)

    def expected(self, view):
        return {Key(self.name, vm["worker_ip"], vm_id=int(vm["vm_id"]), name=str(snap.get("name"))):
                str(snap.get("size_bytes", "")) for s in view.slices if view._live(s)
                for vm in s.get("vms", []) for snap in vm.get("snapshots") or []}

    def remove(self, ctx, host, keys):
        folder = ctx.image_dir(host)
        lines = []
        for k in keys:
            name = str(k.name)
            part = name.endswith(PART)
            snap = f"{folder}/vm{int(k.vm_id)}.{name[:-len(PART)] if part else name}.snap.qcow2"
            if part:
                lines.append(f"rm -f {q(snap + PART)}; [ -e {q(snap)} ] || rm -f {q(snap + '.owner')}")
            else:
                lines.append(f"rm -f {q(snap)} {q(snap + PART)} {q(snap + '.owner')}")
        return lines

    def describe(self, key):
        if key.name and key.name.endswith(PART):
            return f"unfinished snapshot {key.name[:-len(PART)]} of VM {key.vm_id}"
        return f"snapshot {key.name} of VM {key.vm_id}"
