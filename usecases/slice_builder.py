"""Whole slices in one go: from a template or a topology file, and back to a file.

One code path makes every such slice: a template (``topology.build_template``)
or a topology file (``topology_file.parse_topology``) gives a design, and
``SliceBuilder.build`` makes it into a new slice of one user, all or nothing:

1. the design is checked as a whole (``topology.validate``);
2. one database transaction checks the owner's quota for every VM of it and
   creates the slice with its block of 20 VLANs when one is free (a design
   has at most 20 links; each link takes a free VLAN of the block, else a
   free one elsewhere, see ``naming``);
3. each VM is added (its overlay made on its worker) through
   ``design.Design.add_vm_to_slice``, as the menu's option 3 does; then
   every link is created in one transaction (``Design.create_links``, the
   rules of option 4);
4. on any failure, or Ctrl-C, the new slice is removed again: the overlays
   of its VMs deleted, its records and the quota given back.  The message
   says which step failed and that nothing was made.

While a slice is being built it is an ordinary ``design`` slice; if its
owner deploys or changes it from another menu meanwhile, the next step
fails and the build removes it (through ``Lifecycle.delete`` when it was
deployed), so the outcome is still all or nothing.
"""
from __future__ import annotations

import logging
from typing import Callable, Optional

import naming
from hosts.runner import Cancel, interrupts_cancel, interrupts_ignored
from topology import files as topology_file
from topology import model as topology
from topology import render as topology_render
from usecases.access import as_int, require_admin
from usecases.design import Design
from usecases.inventory import Inventory
from usecases.lifecycle import Lifecycle
from usecases.services import Services

log = logging.getLogger("cloudrepo.slice_builder")

Say = Callable[[str], None]
INTERRUPTED = "Interrupted (Ctrl-C)"


def problems_text(what: str, problems: list) -> str:
    """A refusal listing every problem (one per line), saying that nothing changed."""
    lines = [f"{what} has {topology.plural(len(problems), 'problem')}; nothing was made:"]
    return "\n".join(lines + [f"  {p}" for p in problems])


def recorded_type(design: topology.Design) -> str:
    """The ``topology_type`` a slice made from a file records: the template it names, else ``imported``."""
    return design.topology_type if design.topology_type in topology.TEMPLATES else "imported"


class SliceBuilder:
    """Templates, import and export; each method returns ``(ok, payload_or_message)``."""

    def __init__(self, services: Services):
        self.s = services
        self.design = Design(services)

    # --- the one code path ----------------------------------------------------------------

    def build(self, actor: str, design: topology.Design, slice_name: str, topology_type: str,
              owner: Optional[str] = None, progress: Optional[Say] = None) -> tuple:
        """Make ``design`` into a new slice of ``owner`` (default: ``actor``), all or nothing.

        Only an admin may build a slice for someone else.  ``(True, slice dict
        as stored)`` or ``(False, message)``; ``progress`` hears one line per
        VM and link made.
        """
        owner = owner or actor
        if owner != actor:
            err = require_admin(self.s.db.load(), actor)
            if err:
                return False, "Only an admin can make a slice for another user"
        problems = topology.validate(design)
        if problems:
            return False, problems_text("The topology", problems)
        cancel = Cancel()
        failure: Optional[str] = None
        with interrupts_cancel(cancel):  # Ctrl-C from here on: undo, then say so
            ok, made = self.design.create_slice(owner, slice_name, topology_type, need_vms=len(design.vms))
            if not ok:
                return False, made
            sid = made["slice_id"]
            try:
                failure = self._fill(owner, sid, design, cancel, progress or (lambda _line: None),
                                     made["vlan_pool_start"])
            except Exception as e:  # noqa: BLE001 - whatever happened, leave nothing behind
                log.exception("building slice %s failed", sid)
                failure = f"an internal error ({e})"
        if failure is None:
            return True, self.s.db.get_slice(sid)
        with interrupts_ignored():
            left = self._discard(owner, sid)
        tail = "Nothing was made: the new slice and its VMs were removed."
        if left:
            tail = (f"The new slice was removed, but some of its disks could not be ({left}): "
                    "'8. Cleanup orphaned VMs' finds them.")
        return False, f"{failure}. {tail}"

    def _fill(self, owner: str, sid: int, design: topology.Design, cancel: Cancel, progress: Say,
              pool_start: Optional[int] = None) -> Optional[str]:
        """Add every VM and link to slice ``sid``; the first failure (None when all were made).

        ``pool_start``: the slice's VLAN block (None: it has none), to say which links are outside it.
        """
        ids = {}
        for vm in design.vms:
            if cancel.is_set():
                return INTERRUPTED
            ok, made = self.design.add_vm_to_slice(owner, sid, vm.name, vm.flavor, vm.data_interfaces, vm.internet)
            if not ok:
                return f"VM {vm.name} could not be added: {made}"
            ids[vm.name] = made["vm_id"]
            progress(f"VM {vm.name} added (ID {made['vm_id']}, worker {made['worker_ip']})")
        if cancel.is_set():
            return INTERRUPTED
        pairs = [((ids[x.vm1], x.if1), (ids[x.vm2], x.if2)) for x in design.links]
        ok, made = self.design.create_links(owner, sid, pairs) if pairs else (True, [])
        if not ok:
            return f"The links could not be created: {made}"
        for x, link in zip(design.links, made):
            outside = "" if naming.in_pool(link["vlan_id"], pool_start) else " (outside the slice's VLAN pool)"
            progress(f"Link {x.vm1} {x.if1} -- {x.vm2} {x.if2}: VLAN {link['vlan_id']}{outside}")
        return INTERRUPTED if cancel.is_set() else None

    def _discard(self, owner: str, sid: int) -> str:
        """Remove a slice this build made: records, quota, overlays.  What could not be removed ("" if none)."""
        with self.s.db.transaction() as data:
            s = data["slices"].get(str(sid))
            if s is None:
                return ""
            if s.get("status") == "design":
                del data["slices"][str(sid)]
                user = data["users"].get(owner)
                if user:
                    user["slices"] = [x for x in user.get("slices", []) if int(x) != sid]
                    user["used_vms"] = max(0, int(user.get("used_vms", 0)) - len(s.get("vms", [])))
                vms = list(s.get("vms", []))
            else:
                vms = None
        if vms is None:  # deployed from another menu meanwhile: the whole teardown
            outcome = Lifecycle(self.s).delete(owner, sid)
            return "" if outcome.ok else outcome.message
        cmds = [self.s.deployment.delete_vm_command(vm) for vm in vms if vm.get("qcow_image")]
        report = self.s.runner.run(cmds, phase="rollback", stop_on_failure=False)
        for res in report.failures:
            log.warning("could not remove the overlay %s on %s: %s", res.target, res.host, res.message())
        return ", ".join(f"{res.target} on {res.host}" for res in report.failures)

    # --- templates and files ----------------------------------------------------------------

    def create_from_template(self, actor: str, kind: str, n_vms, flavor: str, internet, slice_name: str,
                             owner: Optional[str] = None, progress: Optional[Say] = None) -> tuple:
        """A ``linear``, ``ring``, ``star`` or ``mesh`` of ``n_vms`` VMs as a new slice (see ``build``).

        ``internet``: ``"none"``, ``"all"``, ``"first"`` or VM numbers (``"1,3"``).
        """
        ok, n = as_int(n_vms, "The number of VMs")
        if not ok:
            return False, n
        try:
            design = topology.build_template(kind, n, flavor, internet)
        except topology.TemplateError as e:
            return False, str(e)
        return self.build(actor, design, slice_name, kind, owner, progress)

    def import_topology(self, actor: str, text: str, slice_name: Optional[str] = None,
                        owner: Optional[str] = None, progress: Optional[Say] = None) -> tuple:
        """A topology file made into a new slice (see ``build``), named ``slice_name`` or as the file says.

        The slice records the template the file names (``topology_type``), or ``imported``.
        """
        ok, found = named_design(text, slice_name)
        if not ok:
            return False, found
        design, name = found
        return self.build(actor, design, name, recorded_type(design), owner, progress)

    def export_slice(self, actor: str, slice_id, fmt: str = "yaml") -> tuple:
        """(True, text) of a slice the actor may see: its topology file (``yaml``) or Graphviz ``dot``."""
        if fmt not in ("yaml", "dot"):
            return False, "Export format must be yaml or dot"
        ok, s = Inventory(self.s).get_slice(actor, slice_id)
        if not ok:
            return False, s
        if fmt == "dot":
            return True, topology_render.to_dot(s)
        try:
            return True, topology_file.export_topology(s)
        except topology.ExportError as e:
            return False, f"Cannot export slice {s['slice_id']}: {e}"


def named_design(text: str, slice_name: Optional[str]) -> tuple:
    """(True, (design, slice name)) from a topology file's text, or (False, its problems for people)."""
    design, problems = topology_file.parse_topology(text)
    if problems:
        return False, problems_text("The topology file", problems)
    name = slice_name or design.name
    if not name:
        return False, "The topology file names no slice (name:): give the slice a name"
    if not naming.valid_name(name):
        return False, f"Invalid slice name: {naming.NAME_RULE}"
    return True, (design, name)
