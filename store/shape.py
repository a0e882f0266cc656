"""The documented shape of ``database.yaml`` (seed 001, models.py), one line per key.

``check_shape(data, names=...)`` finds the first way data differs from it:
the key path and a sentence (``users.admin.quota_vms must be a whole number,
0 or more, not the text 'ten'``); the store turns the path into the line of
the file.  With ``names=True`` every documented text (user, slice and VM
names, owners, statuses, addresses...) and every user name key must hold no
control character: the menu shows them, and a name holding ``ESC]2;...BEL``
or ``ESC[2J`` would drive the terminal of whoever looks (store/text.py).
The store's fast reader only reads texts without control characters, so the
store asks for that check when PyYAML read the file, and before a save
whose text needed PyYAML's escapes.  Keys the program does not know are
allowed and kept.
"""
from __future__ import annotations

import re
from typing import Any, Optional

import naming
from store.text import clip, excerpt, has_control


def _describe(value: Any) -> str:
    """How a wrong value reads in a message: ``a list``, ``the text 'ten'``, ``null``..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the text {excerpt(value)}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


Problem = Optional[tuple]   # (path below the checked value, "must be ..., not ...") or None


class _Walk:
    """What one check of a whole database found besides problems."""

    __slots__ = ("plain",)

    def __init__(self):
        self.plain = True   # every unknown key's value survives JSON unchanged


class _Scalar:
    """A scalar of given Python types, optionally null, within bounds or matching a pattern."""

    def __init__(self, types: tuple, expected: str, nullable: bool = False, low: Optional[int] = None,
                 high: Optional[int] = None, pattern: Optional[str] = None):
        self.types, self.expected, self.nullable = types, expected, nullable
        self.low, self.high = low, high
        self.pattern = re.compile(pattern) if pattern else None
        self.bounded = low is not None or high is not None or pattern is not None

    def problem(self, value: Any, walk: _Walk) -> Problem:
        if type(value) in self.types:
            if not self.bounded or self._within(value):
                return None
        elif value is None and self.nullable:
            return None
        return (), f"must be {self.expected}, not {_describe(value)}"

    def _within(self, value: Any) -> bool:
        return ((self.low is None or value >= self.low) and (self.high is None or value <= self.high)
                and (self.pattern is None or bool(self.pattern.fullmatch(value))))


class _Text(_Scalar):
    """A scalar that may be text, which must then hold no control character (the names' check)."""

    def problem(self, value: Any, walk: _Walk) -> Problem:
        found = super().problem(value, walk)
        if found is None and type(value) is str and has_control(value):
            return (), f"must be {self.expected} without control characters, not {_describe(value)}"
        return found


class _Record:
    """A mapping with documented keys (required or not); other keys are allowed and kept."""

    def __init__(self, expected: str, fields: dict, nullable: bool = False):
        self.expected, self.nullable = expected, nullable
        self.fields = tuple((key, required, spec.problem) for key, (required, spec) in fields.items())
        self.known = frozenset(fields)

    def problem(self, value: Any, walk: _Walk) -> Problem:
        if type(value) is not dict:
            if value is None and self.nullable:
                return None
            return (), f"must be {self.expected}, not {_describe(value)}"
        present = 0
        for key, required, check in self.fields:
            if key in value:
                present += 1
                found = check(value[key], walk)
                if found:
                    return (key, *found[0]), found[1]
            elif required:
                return (), f"has no {key} (it must be {self.expected})"
        if present != len(value) and walk.plain:
            try:
                walk.plain = all(type(k) is str and plain(v) for k, v in value.items() if k not in self.known)
            except RecursionError:      # data that contains itself
                walk.plain = False
        return None


class _ListOf:
    def __init__(self, expected: str, item):
        self.expected, self.item = expected, item.problem

    def problem(self, value: Any, walk: _Walk) -> Problem:
        if type(value) is not list:
            return (), f"must be {self.expected}, not {_describe(value)}"
        check = self.item
        for i, item in enumerate(value):
            found = check(item, walk)
            if found:
                return (i, *found[0]), found[1]
        return None


class _Table:
    """A mapping of name -> record, each record naming its own key in ``id_field``."""

    def __init__(self, expected: str, record: _Record, id_field: str, key_type: tuple, names: bool):
        self.expected, self.record, self.id_field, self.key_type = expected, record, id_field, key_type
        self.names = names

    def problem(self, value: Any, walk: _Walk) -> Problem:
        if type(value) is not dict:
            return (), f"must be {self.expected}, not {_describe(value)}"
        check, id_field = self.record.problem, self.id_field
        for key, item in value.items():
            if type(key) not in self.key_type:
                return (key,), f"is not a valid key: {self.expected}"
            if self.names and type(key) is str and has_control(key):
                return (key,), f"is not a valid key: {self.expected}, without control characters"
            found = check(item, walk)
            if found:
                return (key, *found[0]), found[1]
            if str(item[id_field]) != str(key):
                return (key, id_field), f"must be {key} (its key), not {_describe(item[id_field])}"
        return None


_INT, _STR, _NUM = (int,), (str,), (int, float)
_VLAN = {"low": 1, "high": naming.MAX_VLAN}
_IFNAME = {"pattern": r"eth[0-9]+"}
_STAMP = {"pattern": r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"}


def _documented(names: bool) -> _Record:
    """The whole documented shape; ``names``: texts must hold no control character (a second tree, so the
    common check pays nothing for it)."""
    def scalar(types: tuple, expected: str, **kw) -> _Scalar:
        return (_Text if names and str in types else _Scalar)(types, expected, **kw)

    def one_of(types: tuple, expected: str, **kw) -> tuple:     # (required?, spec) of an optional key
        return False, scalar(types, expected, **kw)

    def required(types: tuple, expected: str, **kw) -> tuple:
        return True, scalar(types, expected, **kw)

    interface = _Record("an interface (name, vlan_id, mac, ip_config, link_id)", {
        "name": required(_STR, "an interface name (eth0, eth1...)", **_IFNAME),
        "vlan_id": one_of(_INT, "a VLAN (1-4094) or null", nullable=True, **_VLAN),
        "mac": one_of(_STR, "a MAC address (text) or null", nullable=True),
        "ip_config": (False, _Record("a mapping (ip, cidr, gateway) or null", {
            "ip": one_of(_STR, "an address (text)"),
            "cidr": one_of(_STR, "a network (text)"),
            "gateway": one_of(_STR, "an address (text)"),
        }, nullable=True)),
        "link_id": one_of(_INT, "a link ID or null", nullable=True, low=0),
    })
    snapshot = _Record("a snapshot (name, created_at, size_bytes)", {
        "name": required(_STR, "a snapshot name (1-32 characters: a letter first, then letters, digits, '-' or '_')",
                         pattern=naming.NAME_RE.pattern),
        "created_at": one_of(_STR, "a time (YYYY-mm-dd HH:MM:SS)", **_STAMP),
        "size_bytes": one_of(_INT, "a size in bytes (a whole number)", low=0),
    })
    vm = _Record("a VM (vm_id, name, owner, worker_ip, ...)", {
        "vm_id": required(_INT, "a VM ID (a whole number)", low=0),
        "name": required(_STR, "a name (text)"),
        "owner": one_of(_STR, "a user name or null", nullable=True),
        "worker_ip": one_of(_STR, "an address (text) or null", nullable=True),
        "vnc_port": one_of(_INT, "a port number or null", nullable=True, low=1, high=65535),
        "status": one_of(_STR, "a status (text)"),
        "pid": one_of((str, int), "a process ID or null", nullable=True),
        "qcow_image": one_of(_STR, "a path (text) or null", nullable=True),
        "flavor": (False, _Record("a flavor (cores, ram_gb, disk_gb, image) or null", {
            "cores": one_of(_INT, "a number of cores", low=1),
            "ram_gb": one_of(_NUM, "a size in GB", low=0),
            "disk_gb": one_of(_NUM, "a size in GB", low=0),
            "image": one_of(_STR, "a path (text)"),
        }, nullable=True)),
        "interfaces": (False, _ListOf("a list of interfaces", interface)),
        "snapshots": (False, _ListOf("a list of snapshots", snapshot)),
    })
    link = _Record("a link (link_id, vlan_id, vm1_id, vm1_interface, vm2_id, vm2_interface)", {
        "link_id": required(_INT, "a link ID (a whole number)", low=0),
        "vlan_id": required(_INT, "a VLAN (1-4094)", **_VLAN),
        "vm1_id": required(_INT, "a VM ID", low=0),
        "vm1_interface": required(_STR, "an interface name (eth1...)", **_IFNAME),
        "vm2_id": required(_INT, "a VM ID", low=0),
        "vm2_interface": required(_STR, "an interface name (eth1...)", **_IFNAME),
        "impairment": (False, _Record("an impairment (delay_ms, jitter_ms, loss_pct, rate_kbit) or null", {
            "delay_ms": one_of(_NUM, "milliseconds from 0 to 10000", low=0, high=10000),
            "jitter_ms": one_of(_NUM, "milliseconds from 0 to 10000", low=0, high=10000),
            "loss_pct": one_of(_NUM, "a percentage from 0 to 100", low=0, high=100),
            "rate_kbit": one_of(_INT, "kbit/s (0: no limit, else 8 to 10000000)", low=0, high=10_000_000),
        }, nullable=True)),
    })
    network = _Record("a network (vlan_id, cidr, gateway_ip, ...)", {
        "vlan_id": required(_INT, "a VLAN (1-4094)", **_VLAN),
        "cidr": required(_STR, "a network (text)"),
        "gateway_ip": required(_STR, "an address (text)"),
        "dhcp_enabled": one_of((bool,), "true or false"),
        "dhcp_range": one_of(_STR, "a range (text) or null", nullable=True),
        "status": one_of(_STR, "a status (text)"),
    })
    one_slice = _Record("a slice (slice_id, owner, vms, links, ...)", {
        "slice_id": required(_INT, "a slice ID (a whole number)", low=0),
        "owner": one_of(_STR, "a user name (text)"),
        "topology_type": one_of(_STR, "a topology type (text)"),
        "vlan_pool_start": one_of(_INT, "a VLAN (1-4094) or null", nullable=True, **_VLAN),
        "vlan_pool_end": one_of(_INT, "a VLAN (1-4094) or null", nullable=True, **_VLAN),
        "vlan_pool_used": (False, _ListOf("a list of VLANs", _Scalar(_INT, "a VLAN (1-4094)", **_VLAN))),
        "status": one_of(_STR, "a status (text)"),
        "vms": (False, _ListOf("a list of VMs", vm)),
        "links": (False, _ListOf("a list of links", link)),
        "networks": (False, _ListOf("a list of networks", network)),
        "name": one_of(_STR, "a name (text) or null", nullable=True),
        "lease_end": one_of(_STR, "a time (YYYY-mm-dd HH:MM:SS) or null", nullable=True, **_STAMP),
    })
    user = _Record("a user (username, password_hash, quota_vms, used_vms, slices, role)", {
        "username": required(_STR, "a user name (text)"),
        "password_hash": one_of(_STR, "a password hash (text)"),
        "quota_vms": one_of(_INT, "a whole number, 0 or more", low=0),
        "used_vms": one_of(_INT, "a whole number, 0 or more", low=0),
        "slices": (False, _ListOf("a list of slice IDs", _Scalar(_INT, "a slice ID", low=0))),
        "role": one_of(_STR, "a role (text)"),
        "disk_quota_mib": one_of(_INT, "a whole number of MiB, 0 or more, or null", nullable=True, low=0),
        "max_lease_days": one_of(_INT, "a whole number of days (1-365) or null", nullable=True, low=1, high=365),
    })
    return _Record("a mapping of users, slices and next_vm_id", {
        "users": (True, _Table("a mapping of user name to user", user, "username", _STR, names)),
        "slices": (False, _Table("a mapping of slice ID to slice", one_slice, "slice_id", (str, int), names)),
        "next_vm_id": required(_INT, "the next free ID (a whole number)", low=0),
    })


DATABASE = _documented(names=False)
DATABASE_NAMES = _documented(names=True)


def dotted(path: tuple) -> str:
    """``slices.1000.vms[2].name`` (keys from the file escaped and cut short: store/text.py)."""
    out = ""
    for step in path:
        out += f"[{step}]" if isinstance(step, int) and not isinstance(step, bool) and out else f".{clip(step)}"
    return out.lstrip(".")


def check_shape(data: Any, names: bool = True) -> tuple:
    """(problem, plain): ``problem`` is (key path, sentence) of the first way ``data`` differs
    from the documented shape, or None; ``plain`` says whether JSON keeps ``data`` exactly.
    ``names=False`` skips the control-character check (for text known to have none)."""
    if type(data) is not dict:      # a file that is no database at all: described, never quoted
        kind = "a list" if type(data) is list else "a text" if type(data) is str else f"a {type(data).__name__}"
        return ((), f"the file must be {DATABASE.expected}, not {kind}"), False
    if data.get("slices") is None and "slices" in data:
        data = dict(data, slices={})
    walk = _Walk()
    found = (DATABASE_NAMES if names else DATABASE).problem(data, walk)
    if not found:
        return None, walk.plain
    path, text = found
    return (path, f"{dotted(path) or 'the file'} {text}"), False


def shape_problem(data: Any) -> Optional[tuple]:
    """(key path, sentence) of the first way ``data`` differs from the documented shape, or None."""
    return check_shape(data)[0]


_ORDER = ("users", "slices", "next_vm_id")


def normalised(data: dict) -> dict:
    """The documented spelling of a valid database (checked first): slice keys are text, no slices
    is ``{}``, users then slices then next_vm_id come first (other keys follow, kept)."""
    slices = data.get("slices")
    if slices is None:
        slices = {}
    elif any(type(k) is not str for k in slices):
        slices = {str(k): v for k, v in slices.items()}
    data["slices"] = slices
    if tuple(data)[:3] != _ORDER:
        rest = {k: v for k, v in data.items() if k not in _ORDER}
        ordered = {k: data[k] for k in _ORDER}
        data.clear()
        data.update(ordered)
        data.update(rest)
    return data


def plain(value: Any) -> bool:
    """True when JSON keeps ``value`` exactly (what a YAML parse of its dump gives back)."""
    kind = type(value)
    if kind is dict:
        return all(type(k) is str and plain(v) for k, v in value.items())
    if kind is list:
        return all(plain(v) for v in value)
    return kind in (str, int, float, bool) or value is None
