"""Link impairments (SPEC §17): set, change and clear a link's delay, jitter, loss and rate.

The values are read strictly (``topology.impairment``); bad input changes
nothing.  The owner or an admin sets them on a slice in any state but a busy
one: in design they are only stored (deploy applies them); on a running or
stopped slice the slice is marked ``impairing`` for this session, the
link's ``impairment`` is stored, and both ends' TAPs of the VMs that run get
it at once (``hosts.impairments``).  If a TAP cannot take it, both ends get
the previous impairment back and the link keeps it: all or nothing.
A VM started again (start, repair, a deploy) gets its links' impairments
when its TAPs are made; status compares each TAP with its link; the TAPs'
removal takes the impairments with them.
"""
from __future__ import annotations

import copy
from typing import Optional

from hosts import impairments
from hosts.runner import Cancel, Progress, interrupts_cancel, interrupts_ignored
from topology import impairment
from usecases import sessions
from usecases.access import as_int, authorized_slice
from usecases.inventory import settle_in, unmark_in
from usecases.services import Services

CHANGEABLE = ("design", "running", "stopped")


def _link(s: dict, link_id: int) -> Optional[dict]:
    return next((lk for lk in s.get("links", []) if int(lk["link_id"]) == link_id), None)


def _store(link: dict, imp: Optional[dict]) -> None:
    if imp:
        link["impairment"] = dict(imp)
    else:
        link.pop("impairment", None)


def end_commands(s: dict, link_id: int, imp: Optional[dict]) -> list:
    """The commands giving both ends' TAPs of link ``link_id`` (of VMs that run) the impairment ``imp``."""
    return [impairments.impair_command(vm, index, imp) for link, vm, index in impairments.link_ends(s)
            if int(link["link_id"]) == link_id and vm.get("status") not in ("stopped", "design", "pending")]


class LinkImpairments:
    """``set`` and ``clear``; each returns ``(ok, {"message", "slice_id", "link_id", "impairment"})`` or
    ``(False, message)``."""

    def __init__(self, services: Services):
        self.s = services

    def set(self, username: str, slice_id, link_id, delay=None, jitter=None, loss=None, rate=None,
            progress: Optional[Progress] = None) -> tuple:
        """Give link ``link_id`` this impairment (all values 0 or empty: clear it)."""
        ok, imp = impairment.parse(delay, jitter, loss, rate)
        if not ok:
            return False, imp
        return self._change(username, slice_id, link_id, imp, progress)

    def clear(self, username: str, slice_id, link_id, progress: Optional[Progress] = None) -> tuple:
        return self._change(username, slice_id, link_id, None, progress)

    def _reserve(self, username: str, slice_id, link_id, imp: Optional[dict]) -> tuple:
        """Store ``imp`` on the link; mark a deployed slice for this session.  (True, (snapshot, old)) or why not."""
        ok, lid = as_int(link_id, "Link ID")
        if not ok:
            return False, lid
        with self.s.db.transaction() as data:
            settle_in(data, None, reap=False)
            ok, s = authorized_slice(data, username, slice_id)
            if not ok:
                return False, s
            link = _link(s, lid)
            if link is None:
                return False, f"Link {lid} is not in slice {s['slice_id']}"
            if sessions.is_busy(s):
                return False, f"Slice is {s['status']} in another session"
            if s.get("status") not in CHANGEABLE:
                return False, f"Slice {s['slice_id']} is {s.get('status')}: its links cannot be impaired now"
            old = impairment.normalised(link.get("impairment"))
            _store(link, imp)
            if s["status"] != "design":
                s["busy"] = sessions.marker(s["status"])
                s["status"] = "impairing"
            return True, (copy.deepcopy(s), old)

    def _change(self, username: str, slice_id, link_id, imp: Optional[dict], progress) -> tuple:
        ok, found = self._reserve(username, slice_id, link_id, imp)
        if not ok:
            return False, found
        s, old = found
        sid, lid = int(s["slice_id"]), int(link_id)
        what = impairment.describe(imp)
        payload = {"slice_id": sid, "link_id": lid, "impairment": imp, "text": what}
        if s["status"] == "design":
            payload["message"] = f"Link {lid}: {what} (stored; applied when the slice is deployed)"
            return True, payload
        previous = s["busy"]["previous"]
        cmds = end_commands(s, lid, imp)
        failure = self._apply(cmds, progress)
        with interrupts_ignored():
            if failure:
                self._apply(end_commands(s, lid, old), None)  # both ends back as they were
            with self.s.db.transaction() as data:
                back = unmark_in(data, sid, previous)
                if back is not None and failure:
                    _store(_link(back, lid) or {}, old)
        if failure:
            return False, f"Link {lid} not changed: {failure} (it keeps {impairment.describe(old)})"
        where = f"on {len(cmds)} TAP(s)" if cmds else "when its VMs start"
        payload["message"] = f"Link {lid}: {what} (applied {where})"
        return True, payload

    def _apply(self, cmds: list, progress) -> Optional[str]:
        """Run the commands on their hosts (all of them); the first failure's text, or None."""
        if not cmds:
            return None
        cancel = Cancel()
        with interrupts_cancel(cancel):
            report = self.s.runner.run(cmds, phase="impair", progress=progress, stop_on_failure=False,
                                       cancel=cancel)
        if report.interrupted:
            return "interrupted (Ctrl-C)"
        bad = report.failures[0] if report.failures else None
        return f"step '{bad.step}' on {bad.host}: {bad.message()}" if bad else None
