"""QCOW2 overlays on workers: the base image check, its copy, the overlay.

As documented for the original: ``test -f`` the base in ``~/vm_images`` on
the worker, copy it from the manager when missing (SFTP, to a temporary name
then renamed, so a partial copy never counts as present), then
``qemu-img create -f qcow2 -b <base> -F qcow2 <vm_name>_img.qcow2`` inside
``~/vm_images``.  Unlike the original, an existing file is never overwritten:
the create fails instead (exit status ``OVERLAY_EXISTS``), and a marker file
``<overlay>.owner`` naming the VM (``cloud-repositorio vm <id>``) is written
beside each overlay: only marked files are this system's (the orphan scan
never touches a user's own ``*_img.qcow2``), and a VM's delete or rollback
removes a file only when its marker names that VM (so a VM whose add died
before its disk was made never removes another VM's disk at its path).

Disks hold students' data: the folder is made 0700 and each overlay 0600
(the SSH user makes them, QEMU reads them as root), so no other account of a
worker reads them.
"""
from __future__ import annotations

import logging
import os
from typing import Optional

import naming
from hosts.hostcmd import HostCommand, chain, join, q, shell_path
from hosts.resources import Found, HostContext, Key, Kind, register
from remote_executor import RemoteExecutor

log = logging.getLogger("cloudrepo.qcow")

OVERLAY_EXISTS = 17

def base_image_check(worker: str, base_dir: str, base_name: str) -> HostCommand:
    """Is the base image already on the worker?  Prints exists/missing."""
    target = shell_path(f"{base_dir}/{base_name}")
    return HostCommand(worker, f"test -f {target} && echo exists || echo missing",
                       sudo=False, step="check base image", action="check_base_image", target=base_name)


def overlay_create(worker: str, base_dir: str, base_name: str, overlay_file: str,
                   owner: str = naming.MARK) -> HostCommand:
    """Create the overlay next to its base, with its marker (``owner``: what it holds, see
    ``naming.overlay_marker_text``); refuse to overwrite an existing file.  Folder 0700, files 0600."""
    marker = naming.overlay_marker(overlay_file)
    script = chain(
        "umask 077",
        f"mkdir -p {shell_path(base_dir)}",
        f"chmod 700 {shell_path(base_dir)}",
        f"cd {shell_path(base_dir)}",
        f"if [ -e {q(overlay_file)} ]; then echo {q(overlay_file + ' already exists')} >&2; "
        f"exit {OVERLAY_EXISTS}; fi",
        f"printf '%s\\n' {q(owner)} > {q(marker)}",
        join(["qemu-img", "create", "-q", "-f", "qcow2", "-b", base_name, "-F", "qcow2", overlay_file])
        + f" || {{ rc=$?; rm -f {q(marker)}; exit $rc; }}",
    )
    return HostCommand(worker, script, sudo=False, step="create overlay", action="create_overlay",
                       target=overlay_file)


ANY_MARK = f"{q(naming.MARK)}|{q(naming.MARK + ' vm ')}*"  # a ``case`` pattern: any marker of this system


def _if_marked(image_path: str, pattern: str) -> str:
    """Shell: remove the overlay and its marker when the marker's text matches ``pattern`` (``case``)."""
    marker = shell_path(naming.overlay_marker(image_path))
    return (f"case \"$(cat {marker} 2>/dev/null)\" in {pattern}) "
            f"rm -f {shell_path(image_path)} {marker};; esac")


def overlay_delete(worker: str, image_path: str, vm_id: Optional[int] = None, legacy: bool = True,
                   also: tuple = ()) -> HostCommand:
    """Remove a VM's overlay and its marker, only when the marker names that VM (no error when gone).

    ``legacy``: also a marker of before (``cloud-repositorio``, naming no VM): a committed VM's own
    recorded disk.  ``vm_id=None``: any marker of this system.  ``also``: more candidate paths of the
    same VM, each removed on the same condition.
    """
    if vm_id is None:
        pattern = ANY_MARK
    else:
        pattern = q(naming.overlay_marker_text(vm_id)) + (f"|{q(naming.MARK)}" if legacy else "")
    script = "\n".join(_if_marked(path, pattern) for path in [image_path, *also])
    return HostCommand(worker, script, sudo=False, step="delete overlay", action="delete_overlay",
                       target=os.path.basename(image_path))


@register
class Overlay(Kind):
    """A VM's disk: a qcow2 overlay in the worker's image folder, with its ``.owner`` marker."""

    name = "overlay"
    label = "overlay"

    def scan(self, ctx: HostContext, host: str) -> str:
        folder = q(ctx.image_dir(host))
        return (f"for f in {folder}/{naming.OVERLAY_GLOB}; do [ -f \"$f\" ] && [ -f \"$f.owner\" ] "
                "&& echo \"overlay ${f##*/}\"; done; true")

    def parse(self, host, fields):
        name = " ".join(fields)
        return Found(Key(self.name, host, name=name)) if naming.OVERLAY_RE.fullmatch(name) else None

    def owned(self, view):
        return (Key(self.name, vm["worker_ip"], name=os.path.basename(vm["qcow_image"]))
                for vm in view.all_vms() if vm.get("qcow_image"))

    def expected(self, view):
        return {k: "" for k in self.owned(view)}

    def remove(self, ctx, host, keys):
        """Only files whose marker is still this system's (checked again as they are removed)."""
        folder = ctx.image_dir(host)
        lines = []
        for k in keys:
            path, marker = q(f"{folder}/{k.name}"), q(f"{folder}/{k.name}.owner")
            lines.append(f"case \"$(cat {marker} 2>/dev/null)\" in {ANY_MARK}) rm -f {path} {marker};; esac")
        return lines

    def describe(self, key):
        return f"overlay {key.name}"


class QCOWManager:
    """Creates and deletes per-VM overlays on workers."""

    def __init__(self, remote_executor: RemoteExecutor, base_dir: str = naming.IMAGE_DIR):
        self.executor = remote_executor
        self.base_dir = base_dir.rstrip("/")
        self.last_error = ""
        self.last_exit = 0

    def ensure_base_image(self, worker_ip: str, base_image_path: str) -> bool:
        """Check the base image on the worker; copy it from the manager if missing."""
        base_name = os.path.basename(base_image_path)
        res = self.executor.run(base_image_check(worker_ip, self.base_dir, base_name))
        if not res.ok:
            self.last_error = f"checking the base image on {worker_ip}: {res.message()}"
            return False
        if res.stdout.strip() == "exists":
            return True
        if not os.path.isfile(base_image_path):
            self.last_error = f"base image {base_image_path} is missing on the manager"
            return False
        copied = self.executor.put_file(worker_ip, base_image_path, f"{self.base_dir}/{base_name}")
        if not copied.ok:
            self.last_error = f"copying the base image to {worker_ip}: {copied.message()}"
        return copied.ok

    def create_backing_image(self, worker_ip: str, vm_name: str, base_image_path: str,
                             vlan_ids: Optional[list] = None,
                             overlay_file: Optional[str] = None, owner: str = naming.MARK) -> tuple:
        """Make ``<vm_name>_img.qcow2`` (or ``overlay_file``) backed by the base image.

        Returns ``(True, "~/vm_images/<file>")`` or ``(False, None)``; the
        reason of a failure is in ``last_error``.  ``vlan_ids`` is unused, as
        in the original.  ``owner``: the marker's text (``naming.overlay_marker_text(vm_id)``).
        """
        self.last_error = ""
        self.last_exit = 0
        if not self.ensure_base_image(worker_ip, base_image_path):
            return False, None
        overlay_file = overlay_file or f"{vm_name}_img.qcow2"
        res = self.executor.run(overlay_create(worker_ip, self.base_dir,
                                               os.path.basename(base_image_path), overlay_file, owner))
        if not res.ok:
            self.last_error = f"creating {overlay_file} on {worker_ip}: {res.message()}"
            self.last_exit = res.exit_status
            return False, None
        return True, f"{self.base_dir}/{overlay_file}"

    def delete_image(self, worker_ip: str, image_path: str, vm_id: Optional[int] = None) -> bool:
        """``rm -f`` the overlay on the worker, if its marker is this system's (and names ``vm_id``)."""
        res = self.executor.run(overlay_delete(worker_ip, image_path, vm_id))
        if not res.ok:
            self.last_error = f"deleting {image_path} on {worker_ip}: {res.message()}"
        return res.ok
