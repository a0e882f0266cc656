"""Class rosters: the students of a class, read from YAML or CSV.  Pure: no I/O.

YAML: a list of students, or a mapping whose only key is ``students``::

    students:
      - {username: alice, quota: 6, password: generate}
      - {username: bob, quota: 4, password: "bob-secret-1"}

CSV: a header row names the columns (any order; only ``username`` is
required); blank lines and lines starting with ``#`` are skipped::

    username,quota,password
    alice,6,generate
    bob,4,bob-secret-1

``quota`` is 0-1000 VMs (default 6, a student's default); ``password`` is
6-128 characters, or ``generate`` (the default): a random password made at
import.  Two more optional columns: ``disk_quota_mib`` (the MiB the student's
disk snapshots may hold; default: the config's ``snapshots.quota_mib``) and
``max_lease_days`` (1-365: the longest lease the student may give a slice,
and the lease their new slices get; default or ``none``: no maximum, no
lease).  Like the quota, they are given to accounts the import creates.
``parse_roster`` returns every student, or every problem, each naming its line; one bad row refuses the whole roster.
"""
from __future__ import annotations

import csv
import io
import secrets
from dataclasses import dataclass
from typing import Any, Optional

import yaml

import naming
from store.text import clip, excerpt, word
from store.yamlcheck import anchor_problem
from topology.model import Problem
from usecases.access import MAX_QUOTA
from usecases.accounts import check_new_password

DEFAULT_QUOTA = 6
GENERATE = "generate"
FORMATS = ("yaml", "csv")
COLUMNS = ("username", "quota", "password", "disk_quota_mib", "max_lease_days")
MAX_DISK_QUOTA_MIB = 1024 * 1024
MAX_LEASE_DAYS = 365
MAX_TEXT = 1_000_000
MAX_STUDENTS = 1000
_ALPHABET = "abcdefghjkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/l/I
_EXAMPLE = "{username: alice, quota: 6, password: generate}"


@dataclass(frozen=True)
class Student:
    """One row of a roster; ``password`` None means: generate one."""

    username: str
    quota: int
    password: Optional[str]
    line: int
    disk_quota_mib: Optional[int] = None   # None: the config's default
    max_lease_days: Optional[int] = None   # None: no maximum


def format_of(path: str) -> Optional[str]:
    """``yaml`` or ``csv`` from a file name's extension, or None."""
    lower = path.lower()
    if lower.endswith((".yaml", ".yml")):
        return "yaml"
    return "csv" if lower.endswith(".csv") else None


def generate_password(length: int = 12) -> str:
    """A random password of letters and digits that cannot be mistaken for one another."""
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def parse_roster(text: str, fmt: str) -> tuple[list[Student], list[Problem]]:
    """``(students, [])``, or ``([], problems)`` each naming its line.  ``fmt``: ``yaml`` or ``csv``."""
    if fmt not in FORMATS:
        return [], [Problem(f"unknown roster format {fmt!r} (yaml or csv)")]
    if not isinstance(text, str):
        return [], [Problem("a roster must be text")]
    if len(text) > MAX_TEXT:
        return [], [Problem(f"the roster is too large ({len(text)} characters; at most {MAX_TEXT})")]
    rows, problems = (_yaml_rows if fmt == "yaml" else _csv_rows)(text)
    students, bad_rows = _students(rows)
    problems += bad_rows
    if not problems and not students:
        problems = [Problem("the roster lists no student", 1)]
    if problems:
        return [], sorted(problems, key=lambda p: p.line or 0)
    return students, []


def _students(rows: list) -> tuple[list[Student], list[Problem]]:
    """Check each row (line, {column: value}) and the roster as a whole."""
    students, problems, first_line = [], [], {}
    if len(rows) > MAX_STUDENTS:
        return [], [Problem(f"{len(rows)} students: a roster has at most {MAX_STUDENTS}", rows[MAX_STUDENTS][0])]
    for line, row in rows:
        student, bad = _student(line, row)
        if student is not None and student.username in first_line:
            bad.append(Problem(f"{student.username} is listed twice (first on line {first_line[student.username]})",
                               line))
        problems += bad
        if student is not None:
            first_line.setdefault(student.username, line)
            if not bad:
                students.append(student)
    return students, problems


def _student(line: int, row: dict) -> tuple[Optional[Student], list[Problem]]:
    problems = []
    username = row.get("username")
    if username in (None, ""):
        return None, [Problem("username is missing", line)]
    if not isinstance(username, str) or not naming.USERNAME_RE.fullmatch(username):
        return None, [Problem(f"invalid username {excerpt(str(username))}: {naming.USERNAME_RULE}", line)]
    quota = row.get("quota")
    if quota in (None, ""):
        quota = DEFAULT_QUOTA
    elif isinstance(quota, str) and quota.strip().isascii() and quota.strip().isdigit():
        quota = int(quota.strip())
    if isinstance(quota, bool) or not isinstance(quota, int) or not 0 <= quota <= MAX_QUOTA:
        problems.append(Problem(f"{username}: quota must be a whole number from 0 to {MAX_QUOTA}, "
                                f"not {excerpt(quota)}", line))
    password = row.get("password")
    if password in (None, "", GENERATE):
        password = None
    elif not isinstance(password, str):
        problems.append(Problem(f"{username}: password must be text (quote it) or {GENERATE}", line))
    else:
        err = check_new_password(password)
        if err:  # never echo the password itself
            problems.append(Problem(f"{username}: {err[0].lower()}{err[1:]} (or write {GENERATE})", line))
    disk = _optional_whole(row.get("disk_quota_mib"), 0, MAX_DISK_QUOTA_MIB, f"{username}: disk_quota_mib "
                           f"must be a whole number of MiB from 0 to {MAX_DISK_QUOTA_MIB}", line, problems)
    lease = _optional_whole(row.get("max_lease_days"), 1, MAX_LEASE_DAYS, f"{username}: max_lease_days must be a "
                            f"whole number of days from 1 to {MAX_LEASE_DAYS}, or none", line, problems)
    return Student(username, quota if isinstance(quota, int) else DEFAULT_QUOTA, password, line, disk,
                   lease), problems


def _optional_whole(value: Any, low: int, high: int, rule: str, line: int, problems: list) -> Optional[int]:
    """An optional whole-number column (empty or ``none``: None); a bad value adds ``rule`` to ``problems``."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
        return None
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        problems.append(Problem(f"{rule}, not {value!r}", line))
        return None
    return value


# --- CSV -----------------------------------------------------------------------------

def _csv_rows(text: str) -> tuple[list, list[Problem]]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header: Optional[list] = None
    rows, problems = [], []
    try:
        for cells in reader:
            line = reader.line_num
            if not cells or not "".join(cells).strip() or cells[0].lstrip().startswith("#"):
                continue
            cells = [c.strip() for c in cells]
            if header is None:
                header, bad = _header(cells, line)
                if bad:
                    return [], bad
                continue
            if len(cells) != len(header):
                problems.append(Problem(f"expected {len(header)} values ({', '.join(header)}), found {len(cells)}",
                                        line))
                continue
            rows.append((line, dict(zip(header, cells))))
    except csv.Error as e:
        return [], [Problem(f"not valid CSV: {clip(str(e), 80)}", reader.line_num or 1)]
    if header is None:
        return [], [Problem(f"the roster is empty: expected a header row like {','.join(COLUMNS)}", 1)]
    return rows, problems


def _header(cells: list, line: int) -> tuple[list, list[Problem]]:
    names = [c.lower() for c in cells]
    unknown = [i for i, c in enumerate(names, 1) if c not in COLUMNS]
    if unknown:
        shown = word(names[unknown[0] - 1])    # a file that is no roster: described, never quoted
        return [], [Problem(f"the header row must name the columns ({', '.join(COLUMNS)}): "
                            + (f"unknown column {shown}" if shown else f"column {unknown[0]} is none of them"), line)]
    twice = sorted({c for c in names if names.count(c) > 1})
    if twice:
        return [], [Problem(f"the header row names {twice[0]} twice", line)]
    if "username" not in names:
        return [], [Problem("the header row must have a username column", line)]
    return names, []


# --- YAML ----------------------------------------------------------------------------

def _yaml_rows(text: str) -> tuple[list, list[Problem]]:
    refused = anchor_problem(text, yaml.SafeLoader)
    if refused:
        return [], [Problem(refused.message, refused.line)]
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        reason = clip(str(getattr(e, "problem", None) or "a syntax error"), 120)   # PyYAML's words, not the file's
        return [], [Problem(f"not valid YAML: {reason}", mark.line + 1 if mark else 1)]
    except RecursionError:
        return [], [Problem("not valid YAML: nested too deeply", 1)]
    if root is None:
        return [], [Problem(f"the roster is empty: expected students: [{_EXAMPLE}]", 1)]
    if isinstance(root, yaml.MappingNode):
        keys = [_scalar(k) for k, _ in root.value]
        if keys != ["students"]:
            return [], [Problem(f"the roster must be a list of students, or students: [{_EXAMPLE}]", _line(root))]
        root = root.value[0][1]
    if isinstance(root, yaml.ScalarNode) and _scalar(root) is None:
        return [], []
    if not isinstance(root, yaml.SequenceNode):
        return [], [Problem(f"the students must be a list, e.g. [{_EXAMPLE}]", _line(root))]
    rows, problems = [], []
    for node in root.value:
        row, bad = _yaml_row(node)
        problems += bad
        if row is not None:
            rows.append((_line(node), row))
    return rows, problems


def _yaml_row(node: yaml.Node) -> tuple[Optional[dict], list[Problem]]:
    if not isinstance(node, yaml.MappingNode):
        return None, [Problem(f"a student must be a mapping like {_EXAMPLE}", _line(node))]
    row, problems, first = {}, [], {}
    for key_node, value_node in node.value:
        key = _scalar(key_node)
        if key in COLUMNS:
            first.setdefault(key, _line(key_node))
        if key not in COLUMNS:
            shown = word(key)
            problems.append(Problem(f"unknown key{' ' + shown if shown else ''} (allowed: {', '.join(COLUMNS)})",
                                    _line(key_node)))
        elif key in row:
            problems.append(Problem(f"{key} is given twice (first on line {first[key]})", _line(key_node)))
        elif not isinstance(value_node, yaml.ScalarNode):
            problems.append(Problem(f"{key} must be a single value", _line(value_node)))
        else:
            row[key] = _scalar(value_node)
    return (None if problems else row), problems


_CONSTRUCTOR = yaml.constructor.SafeConstructor()


def _scalar(node: yaml.Node) -> Any:
    if not isinstance(node, yaml.ScalarNode):
        return None
    try:
        return _CONSTRUCTOR.construct_object(node, deep=True)
    except yaml.YAMLError:
        return node.value


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1
