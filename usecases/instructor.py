"""Instructor tools (admin): a class roster made into accounts and slices, and the overview of every slice.

Roster import, in this order, so that a refusal changes nothing:

1. the roster and the topology file are read whole; any bad row or line
   refuses the import (every problem listed with its line).  A new student
   whose quota cannot hold the topology is such a problem;
2. the password file is created (only when passwords are generated): mode
   0600 from the start, ``O_EXCL`` (an existing file is never reused or
   overwritten), ``O_NOFOLLOW``;
3. one database transaction creates the accounts that do not exist yet;
   existing accounts are reported and left as they are (quota, password);
4. the generated passwords go to the file (and to the report, shown once);
5. with a topology, every listed student who has no slice of that name yet
   gets one (``SliceBuilder.build``, all or nothing per student).  A student
   whose slice fails is reported and the others go on; Ctrl-C undoes the
   slice being made and stops there.  Running the same roster again makes
   only what is missing, so it changes nothing once all is made.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from hosts.runner import Cancel, interrupts_cancel, interrupts_ignored
from models import User
from topology import model as topology
from usecases import passwords, roster
from usecases.access import require_admin
from usecases.inventory import Inventory
from usecases.leases import parse_stamp
from usecases.services import Services
from usecases.slice_builder import INTERRUPTED, SliceBuilder, named_design, problems_text, recorded_type

Say = Callable[[str], None]


@dataclass
class OverviewRow:
    """One slice in the instructor's overview."""

    slice_id: int
    owner: str
    name: str
    status: str
    topology_type: str
    vms: int
    links: int
    workers: list
    deployed_at: Optional[str]       # "YYYY-mm-dd HH:MM:SS" (manager's local time), None unless running
    running_for: Optional[float]     # seconds since deployed_at
    lease_end: Optional[str] = None  # "YYYY-mm-dd HH:MM:SS" (manager's local time), None: no lease
    lease_left: Optional[float] = None  # seconds until lease_end (negative once it ended)


@dataclass
class StudentOutcome:
    """What a roster import did for one student."""

    username: str
    line: int
    account: str                      # "created", "exists" or "missing" (deleted while the import ran)
    quota: int                        # the account's quota now
    password: Optional[str] = None    # the generated password (new accounts only)
    slice: Optional[str] = None       # None (no topology), "made", "exists" or "failed"
    slice_id: Optional[int] = None
    message: str = ""


@dataclass
class RosterReport:
    """A roster import: one outcome per student, the password file, the slice name given."""

    students: list = field(default_factory=list)
    password_file: Optional[str] = None
    slice_name: Optional[str] = None

    @property
    def ok(self) -> bool:
        return not [s for s in self.students if s.slice == "failed"]

    def count(self, **match) -> int:
        return sum(all(getattr(s, k) == v for k, v in match.items()) for s in self.students)


def default_password_file(roster_path: Optional[str]) -> str:
    """``<roster name>-passwords-<time>.txt`` beside the roster (or in the current folder), a name not taken yet."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    stem = os.path.splitext(roster_path)[0] if roster_path else "roster"
    path, n = f"{stem}-passwords-{stamp}.txt", 1
    while os.path.lexists(path):
        n += 1
        path = f"{stem}-passwords-{stamp}-{n}.txt"
    return path


def open_secret_file(path: str) -> int:
    """A new file only its owner can read or write (0600 from its creation on); never an existing one."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags, 0o600)
    os.fchmod(fd, 0o600)  # whatever the umask
    return fd


def write_password_file(fd: int, students: list) -> bool:
    """Write ``username password`` of each generated password to ``fd`` (closed after); False when none."""
    lines = [f"{o.username} {o.password}\n" for o in students if o.password]
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        if lines:
            f.write(f"# Cloud Repositorio accounts made {time.strftime('%Y-%m-%d %H:%M:%S')}: username password\n"
                    "# Give each student theirs; they change it with option 10 of the menu.\n")
            f.writelines(lines)
            f.flush()
            os.fsync(f.fileno())
    return bool(lines)


def age_of(stamp: Optional[str], now: Optional[float] = None) -> Optional[float]:
    """Seconds since a ``deployed_at`` stamp (local time), or None when there is none or it is unreadable."""
    if not stamp:
        return None
    try:
        then = time.mktime(time.strptime(str(stamp), "%Y-%m-%d %H:%M:%S"))
    except (ValueError, OverflowError):
        return None
    return max(0.0, (time.time() if now is None else now) - then)


def overview_rows(slices: list, now: Optional[float] = None) -> list[OverviewRow]:
    """The overview of slices as stored, by owner then ID."""
    rows = []
    for s in slices:
        vms = s.get("vms") or []
        stamp = s.get("deployed_at") if s.get("status") == "running" else None
        end = parse_stamp(s.get("lease_end"))
        rows.append(OverviewRow(int(s["slice_id"]), str(s.get("owner")), str(s.get("name") or "-"),
                                str(s.get("status")), str(s.get("topology_type", "custom")), len(vms),
                                len(s.get("links") or []), sorted({vm.get("worker_ip") for vm in vms
                                                                   if vm.get("worker_ip")}),
                                stamp, age_of(stamp, now), s.get("lease_end") if end is not None else None,
                                None if end is None else end - (time.time() if now is None else now)))
    return sorted(rows, key=lambda r: (r.owner, r.slice_id))


class Instructor:
    """Admin use cases for a class; each returns ``(ok, payload_or_message)``."""

    def __init__(self, services: Services, builder: SliceBuilder):
        self.s = services
        self.builder = builder

    def overview(self, admin: str) -> tuple:
        """(True, [OverviewRow]) of every slice (stale marks settled first)."""
        err = require_admin(self.s.db.load(), admin)
        if err:
            return False, err
        ok, slices = Inventory(self.s).list_slices(admin)
        if not ok:
            return False, slices
        return True, overview_rows(slices)

    def import_roster(self, admin: str, roster_text: str, roster_format: str, topology_text: Optional[str] = None,
                      slice_name: Optional[str] = None, password_file: Optional[str] = None,
                      progress: Optional[Say] = None) -> tuple:
        """Accounts for every student of a roster and, with a topology file, a slice for each.

        ``(False, message)`` when the roster or the topology is refused (nothing
        changed); otherwise ``(ok, RosterReport)`` where ok is False when some
        student's slice could not be made.  See the module docstring.
        """
        say = progress or (lambda _line: None)
        data = self.s.db.load()
        err = require_admin(data, admin)
        if err:
            return False, err
        students, problems = roster.parse_roster(roster_text, roster_format)
        if problems:
            return False, problems_text("The roster", problems)
        design = None
        if topology_text is not None:
            ok, design = self._topology(topology_text, slice_name)
            if not ok:
                return False, design
            slice_name = slice_name or design.name
            problems = [topology.Problem(f"{st.username}: a quota of {st.quota} VMs cannot hold the "
                                         f"{topology.plural(len(design.vms), 'VM')} of the topology", st.line)
                        for st in students if st.username not in data["users"] and st.quota < len(design.vms)]
            if problems:
                return False, problems_text("The roster", problems)
        report = RosterReport(slice_name=slice_name if design else None)
        ok, msg = self._accounts(students, data, password_file, report, say)
        if not ok:
            return False, msg
        if design is not None:
            self._slices(admin, report, design, slice_name, say)
        return report.ok, report

    def _slices(self, admin: str, report: RosterReport, design: topology.Design, slice_name: str, say: Say) -> None:
        """A slice for each student who has none of that name; Ctrl-C stops before the next student."""
        slices = list(self.s.db.load()["slices"].values())
        cancel = Cancel()
        with interrupts_cancel(cancel):  # while a slice is built, the builder's own handler undoes it
            for outcome in report.students:
                if cancel.is_set():
                    break
                self._slice_for(admin, outcome, design, slice_name, slices, say)
                if outcome.slice == "failed" and outcome.message.startswith(INTERRUPTED):
                    break
        for outcome in report.students:
            if outcome.slice is None:
                outcome.slice, outcome.message = "failed", "not made: the import was interrupted (Ctrl-C)"

    @staticmethod
    def _topology(text: str, slice_name: Optional[str]) -> tuple:
        ok, found = named_design(text, slice_name)
        return (True, found[0]) if ok else (False, found)

    def _accounts(self, students: list, data: dict, password_file: Optional[str], report: RosterReport,
                  say: Say) -> tuple:
        """Create the accounts that do not exist (one transaction); generated passwords to the file."""
        new = [st for st in students if st.username not in data["users"]]
        generated = {st.username: roster.generate_password() for st in new if st.password is None}
        hashes = {st.username: passwords.hash_password(st.password or generated[st.username]) for st in new}
        path = password_file if generated else None  # None: the passwords are in the report only
        with interrupts_ignored():  # from the password file's creation to its last line: all of it or nothing
            try:
                fd = open_secret_file(path) if path else None
            except OSError as e:
                return False, f"Cannot create the password file {path}: {e.strerror or e} (nothing was changed)"
            try:
                created, users = self._create_accounts(new, hashes) if new else (set(), data["users"])
            except Exception:
                if fd is not None:
                    os.close(fd)
                    os.unlink(path)
                raise
            for st in students:
                user = users.get(st.username)
                account = "created" if st.username in created else "exists" if user else "missing"
                report.students.append(StudentOutcome(
                    st.username, st.line, account, int(user.get("quota_vms", 0)) if user else st.quota,
                    generated.get(st.username) if account == "created" else None))
            if fd is not None:
                self._write_passwords(fd, path, report, say)
        for outcome in report.students:
            say(f"{outcome.username}: account {outcome.account}")
        return True, None

    def _create_accounts(self, new: list, hashes: dict) -> tuple:
        """(usernames created, every user) after one transaction; someone made meanwhile is left alone."""
        created = set()
        with self.s.db.transaction() as data:
            for st in new:
                if st.username not in data["users"]:
                    user = User(st.username, hashes[st.username], st.quota).to_dict()
                    if st.disk_quota_mib is not None:
                        user["disk_quota_mib"] = st.disk_quota_mib
                    if st.max_lease_days is not None:
                        user["max_lease_days"] = st.max_lease_days
                    data["users"][st.username] = user
                    created.add(st.username)
            users = data["users"]
        return created, users

    @staticmethod
    def _write_passwords(fd: int, path: str, report: RosterReport, say: Say) -> None:
        if write_password_file(fd, report.students):
            report.password_file = os.path.abspath(path)
            say(f"generated passwords written to {report.password_file} (mode 0600)")
        else:  # every account was made by someone else meanwhile: no password of ours to keep
            os.unlink(path)

    def _slice_for(self, admin: str, outcome: StudentOutcome, design: topology.Design, slice_name: str,
                   slices: list, say: Say) -> None:
        """Give one student the slice, unless ``slices`` (as they were before) hold one of that name."""
        existing = next((s for s in slices if s.get("owner") == outcome.username and s.get("name") == slice_name),
                        None)
        if existing is not None:
            outcome.slice, outcome.slice_id = "exists", int(existing["slice_id"])
            outcome.message = f"already has slice {slice_name} ({existing['slice_id']}): not changed"
        else:
            ok, made = self.builder.build(admin, design, slice_name, recorded_type(design), owner=outcome.username)
            if ok:
                outcome.slice, outcome.slice_id = "made", int(made["slice_id"])
                outcome.message = f"slice {slice_name} ({made['slice_id']}) made"
            else:
                outcome.slice, outcome.message = "failed", made
        say(f"{outcome.username}: {outcome.message}")
