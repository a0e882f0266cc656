"""Slice leases: an expiry per slice, within a maximum the admin gives each user; the reaper (SPEC §17).

In ``database.yaml``:

``users.<name>.max_lease_days``
    the longest lease the user may give a slice, in days from the moment it
    is set (1-365).  Absent or null: no maximum, and the user's slices need
    no lease.  Set by an admin (option 11) or by a roster's optional column.
``slices.<id>.lease_end``
    when the slice's lease ends (``YYYY-mm-dd HH:MM:SS``, the manager's local
    time, like ``deployed_at``).  Absent or null: no lease, the slice never
    expires.

Rules:

* a new slice of a user who has a maximum gets the longest lease (now +
  ``max_lease_days``); a user without a maximum gets none (their slices
  never expire unless they or an admin set a lease);
* the owner renews: a new end 1 to ``max_lease_days`` days from now (at
  most 365 without a maximum, or none); once the lease has ended only an
  admin can change it (extend it, or clear it);
* an admin sets any slice's lease (1-365 days from now, or none), also
  after it ended;
* a slice whose lease has ended cannot be deployed or started;
* ``reap`` (the manager service calls it every minute; an operator's
  cron runs ``python3 cli.py lease reap``) stops every running slice whose
  lease has ended (disks kept, as option 14 does) and, ``leases.grace_hours``
  after the end, deletes it with the usual teardown, all or nothing: a host
  that cannot be reached keeps the slice and the next run tries again.  A
  slice another session works on is left for the next run.  Never a
  student's session: logging in only warns (``warnings``: leases that end
  within ``leases.warn_hours``, or have ended).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Optional

from usecases import sessions
from usecases.access import as_int, authorized_slice, require_admin
from usecases.inventory import Inventory
from usecases.services import Services

log = logging.getLogger("cloudrepo.leases")

MAX_LEASE_DAYS = 365
DAY = 86400.0
STAMP = "%Y-%m-%d %H:%M:%S"
NONE_WORDS = ("none", "no", "never", "0")


def stamp(t: float) -> str:
    """A moment as the database writes it (the manager's local time)."""
    return time.strftime(STAMP, time.localtime(t))


def parse_stamp(text) -> Optional[float]:
    """Seconds since the epoch of a stamp, or None when there is none or it is unreadable."""
    if not text:
        return None
    try:
        return time.mktime(time.strptime(str(text), STAMP))
    except (ValueError, OverflowError):
        return None


def left_text(seconds: float) -> str:
    """``3d 4h``, ``5h 07m``, ``12m`` (what is left, or how long ago: the absolute value)."""
    minutes = int(round(abs(seconds) / 60))
    days, rest = divmod(minutes, 24 * 60)
    hours, mins = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    return f"{hours}h {mins:02d}m" if hours else f"{mins}m"


def max_days_of(user: Optional[dict]) -> Optional[int]:
    """A user's maximum lease in days, or None (no maximum)."""
    value = (user or {}).get("max_lease_days")
    return int(value) if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def default_lease_end(user: dict, now: float) -> Optional[str]:
    """The lease a new slice of ``user`` gets: the longest one allowed, or none without a maximum."""
    days = max_days_of(user)
    return stamp(now + days * DAY) if days else None


def ended(s: dict, now: float) -> bool:
    end = parse_stamp(s.get("lease_end"))
    return end is not None and end <= now


def ended_refusal(s: dict, now: float, doing: str) -> Optional[str]:
    """Why a slice whose lease has ended cannot be ``doing`` ("deployed", "started"), or None."""
    if not ended(s, now):
        return None
    return (f"The lease of slice {s['slice_id']} ended at {s['lease_end']}: it cannot be {doing}. "
            "An admin can extend it (option 19)")


@dataclass
class LeaseInfo:
    """A slice's lease as people read it."""

    slice_id: int
    owner: str
    name: str
    status: str
    lease_end: Optional[str]        # None: no lease
    seconds_left: Optional[float]   # negative once ended
    delete_at: Optional[str]        # when the reaper deletes it (lease_end + grace)
    max_days: Optional[int]         # the owner's maximum (None: no maximum)

    @property
    def ended(self) -> bool:
        return self.seconds_left is not None and self.seconds_left <= 0


@dataclass
class LeaseOutcome:
    """What the reaper did to one slice."""

    slice_id: int
    owner: str
    name: str
    lease_end: str
    action: str   # "stopped", "deleted"; "busy" or "failed" (tried again next run); "kept" (lease changed meanwhile)
    message: str = ""


def lease_text(info: LeaseInfo) -> str:
    """``ends 2025-03-09 10:00:00 (in 6d 23h)``, ``ended ... : stopped, deleted at ...``, ``none``."""
    if info.lease_end is None:
        return "none (the slice does not expire)"
    if not info.ended:
        return f"ends {info.lease_end} (in {left_text(info.seconds_left or 0)})"
    return (f"ended {info.lease_end} ({left_text(info.seconds_left or 0)} ago): the manager stops its VMs, and it is "
            f"deleted at {info.delete_at}")


class Leases:
    """Leases of slices; each method returns ``(ok, payload_or_message)``."""

    def __init__(self, services: Services):
        self.s = services

    @property
    def grace_s(self) -> float:
        return float(self.s.config.setting("leases.grace_hours")) * 3600

    def info(self, s: dict, users: dict, now: float) -> LeaseInfo:
        end = parse_stamp(s.get("lease_end"))
        owner = str(s.get("owner"))
        return LeaseInfo(int(s["slice_id"]), owner, str(s.get("name") or "-"), str(s.get("status")),
                         s.get("lease_end") if end is not None else None,
                         None if end is None else end - now,
                         None if end is None else stamp(end + self.grace_s), max_days_of(users.get(owner)))

    def set_lease(self, username: str, slice_id, days, now: Optional[float] = None) -> tuple:
        """The slice's lease ends ``days`` days from now (None, 0 or "none": no lease); see the rules above."""
        now = time.time() if now is None else now
        clear = days is None or (isinstance(days, str) and days.strip().lower() in NONE_WORDS) or days == 0
        n = 0
        if not clear:
            ok, n = as_int(days, "The lease")
            if not ok:
                return False, "The lease must be a whole number of days (or none)"
        with self.s.db.transaction() as data:
            ok, s = authorized_slice(data, username, slice_id)
            if not ok:
                return False, s
            why = self._refusal(data, username, s, n, clear, now)
            if why:
                return False, why
            if clear:
                s.pop("lease_end", None)
            else:
                s["lease_end"] = stamp(now + n * DAY)
            info = self.info(s, data["users"], now)
        log.info("slice %s: lease set by %s to %s", info.slice_id, username, info.lease_end)
        return True, f"Lease of slice {info.slice_id} ({info.name}): {lease_text(info)}"

    @staticmethod
    def _refusal(data: dict, username: str, s: dict, days: int, clear: bool, now: float) -> Optional[str]:
        if s.get("status") == "deleting":
            return f"Slice {s['slice_id']} is being deleted"
        if require_admin(data, username) is None:
            if not clear and not 1 <= days <= MAX_LEASE_DAYS:
                return f"A lease is 1 to {MAX_LEASE_DAYS} days (or none)"
            return None
        if ended(s, now):
            return (f"The lease of slice {s['slice_id']} ended at {s['lease_end']}: it cannot be renewed "
                    "any more; ask an admin to extend it")
        limit = max_days_of(data["users"].get(s.get("owner")))
        if clear:
            return f"Your slices need a lease (at most {limit} days): it cannot be removed" if limit else None
        top = limit or MAX_LEASE_DAYS
        if not 1 <= days <= top:
            return (f"A lease of {days} days is beyond your maximum: 1 to {top} days from now"
                    if days > top else f"A lease is 1 to {top} days from now")
        return None

    def leases(self, username: str, slice_id=None, now: Optional[float] = None) -> tuple:
        """(True, [LeaseInfo]) of the user's slices (an admin: every slice), or of one slice."""
        now = time.time() if now is None else now
        data = self.s.db.load()
        if slice_id is not None:
            ok, s = authorized_slice(data, username, slice_id)
            return (True, [self.info(s, data["users"], now)]) if ok else (False, s)
        user = data["users"].get(username)
        if not user:
            return False, "User not found"
        admin = user.get("role") == "admin"
        rows = [self.info(s, data["users"], now) for s in data["slices"].values()
                if admin or s.get("owner") == username]
        return True, sorted(rows, key=lambda r: r.slice_id)

    def warnings(self, username: str, now: Optional[float] = None) -> tuple:
        """(True, [LeaseInfo]) of the user's own slices whose lease ends within ``leases.warn_hours`` or ended."""
        now = time.time() if now is None else now
        within = float(self.s.config.setting("leases.warn_hours")) * 3600
        data = self.s.db.load()
        if username not in data["users"]:
            return False, "User not found"
        rows = [self.info(s, data["users"], now) for s in data["slices"].values() if s.get("owner") == username]
        return True, sorted((r for r in rows if r.seconds_left is not None and r.seconds_left <= within),
                            key=lambda r: r.slice_id)

    # --- the reaper ---------------------------------------------------------------------

    def reap(self, stop: Callable, delete: Callable, now: Optional[float] = None,
             progress=None) -> tuple:
        """Stop slices whose lease has ended; delete them ``grace_hours`` after: (True, [LeaseOutcome]).

        ``stop(actor, slice_id, progress, guard)`` and ``delete(actor, slice_id, progress, guard)`` are
        the lifecycle's own (``guard(slice)`` is checked again under the database lock, so a lease
        extended meanwhile is never reaped).
        """
        now = time.time() if now is None else now
        grace = self.grace_s
        Inventory(self.s).settle()  # a mark of a dead session is what it was before
        data = self.s.db.load()
        outcomes = []
        for s in sorted(data["slices"].values(), key=lambda x: int(x["slice_id"])):
            end = parse_stamp(s.get("lease_end"))
            if end is None or end > now:
                continue
            actor = self._actor(data, s)
            due = now >= end + grace
            if not due and s.get("status") in ("stopped", "design"):
                continue  # nothing runs: kept until the grace period ends
            guard = LeaseGuard(now, grace if due else 0.0)
            ok, msg = (delete if due else stop)(actor, s["slice_id"], progress, guard)
            action = ("deleted" if due else "stopped") if ok else "kept" if guard.refused else \
                "busy" if sessions.is_busy(s) or "another session" in str(msg) else "failed"
            outcomes.append(LeaseOutcome(int(s["slice_id"]), str(s.get("owner")), str(s.get("name") or "-"),
                                                str(s.get("lease_end")), action, str(msg)))
            log.info("lease of slice %s ended %s: %s (%s)", s["slice_id"], s.get("lease_end"), action, msg)
        return True, outcomes

    @staticmethod
    def _actor(data: dict, s: dict) -> str:
        """Who the reaper acts as: the owner (authorised for their slice), or an admin if the owner is gone."""
        if s.get("owner") in data["users"]:
            return s["owner"]
        return next((n for n, u in sorted(data["users"].items()) if u.get("role") == "admin"), str(s.get("owner")))



class LeaseGuard:
    """Checked by stop and delete under the database lock: is the lease still over (by ``after`` seconds)?"""

    def __init__(self, now: float, after: float):
        self.now, self.after = now, after
        self.refused = False

    def __call__(self, s: dict) -> Optional[str]:
        end = parse_stamp(s.get("lease_end"))
        if end is None or end + self.after > self.now:
            self.refused = True
            return (f"Kept: the lease of slice {s['slice_id']} was changed meanwhile "
                    f"(now {s.get('lease_end') or 'none'})")
        return None
