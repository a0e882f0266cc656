"""The verbs a menu may ask of the manager service, and the arguments each takes.

Only what is listed here can be called; the service puts the session's user
in as the first argument of every one (the client never names a user), and
checks every argument's JSON type before the use case sees it.  Anything
else — an unknown method, an argument too many, a keyword the method does
not take, a value of the wrong type — is refused with a message and changes
nothing.  Both sides read this table: the service to check a call, the
menu's proxy (``service.client.RemoteAPI``) to know what it may send.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

REQUIRED = object()
ID = (int, str)             # IDs and numbers typed by people: the use cases parse them (usecases.access.as_int)
TEXT = (str,)
OPT_TEXT = (str, type(None))
FLAG = (bool,)
OPT_ID = (int, str, type(None))
LIST = (list,)
VALUE = (int, float, str, type(None))  # a measure typed by people ("100ms", "1.5") or a number
MAX_TEXT_ARG = 4 * 1024 * 1024


@dataclass(frozen=True)
class Param:
    name: str
    types: tuple
    default: Any = REQUIRED
    items: Optional[tuple] = None  # for a list: the types of its items


@dataclass(frozen=True)
class Method:
    """One verb: its parameters after the user, and whether it streams progress events."""

    name: str
    params: tuple = ()
    progress: bool = False
    forced: dict = field(default_factory=dict)  # keyword arguments the service always sets itself


def _m(name: str, *params: Param, progress: bool = False, **forced) -> Method:
    return Method(name, tuple(params), progress, dict(forced))


P = Param
METHODS = {m.name: m for m in [
    _m("change_password", P("old_password", TEXT), P("new_password", TEXT)),
    _m("create_user", P("username", TEXT), P("password", TEXT), P("quota_vms", ID, 6), P("role", TEXT, "student")),
    _m("set_quota", P("username", TEXT), P("quota_vms", ID)),
    _m("reset_password", P("username", TEXT), P("new_password", TEXT)),
    _m("list_users"),
    _m("get_quota"),
    _m("list_slices"),
    _m("get_slice", P("slice_id", ID)),
    _m("check_editable", P("slice_id", ID)),
    _m("create_slice", P("slice_name", TEXT)),  # topology_type: only templates and imports set it
    _m("add_vm_to_slice", P("slice_id", ID), P("vm_name", TEXT), P("flavor_name", TEXT),
       P("data_interfaces_count", ID), P("internet_enabled", FLAG, False)),
    _m("create_link", P("slice_id", ID), P("vm1_id", ID), P("vm1_interface", TEXT), P("vm2_id", ID),
       P("vm2_interface", TEXT)),
    _m("deploy_slice", P("slice_id", ID), progress=True),
    _m("delete_slice", P("slice_id", ID), progress=True),
    _m("plan_text", P("slice_id", ID)),
    _m("access_details", P("slice_ids", LIST, items=(int, str))),
    _m("open_console", P("slice_id", ID), P("vm_id", ID)),
    _m("boot_log", P("slice_id", ID), P("vm_id", ID), P("lines", (int,), 40)),
    # A capture's pcap bytes come back on its stream; the menu writes the file with the user's own rights.
    _m("open_capture", P("slice_id", ID), P("target", TEXT), P("filter_expr", TEXT, ""), P("count", OPT_ID, None),
       P("seconds", OPT_ID, None), P("mode", TEXT, "text")),
    _m("set_impairment", P("slice_id", ID), P("link_id", ID), P("delay", VALUE, None), P("jitter", VALUE, None),
       P("loss", VALUE, None), P("rate", VALUE, None), progress=True),
    _m("clear_impairment", P("slice_id", ID), P("link_id", ID), progress=True),
    _m("slice_status", P("slice_id", ID)),
    _m("repair_slice", P("slice_id", ID), progress=True),
    _m("stop_vm", P("slice_id", ID), P("vm_id", OPT_ID, None), progress=True),
    _m("start_vm", P("slice_id", ID), P("vm_id", OPT_ID, None), progress=True),
    _m("reboot_vm", P("slice_id", ID), P("vm_id", ID), progress=True),
    _m("cluster_view"),
    _m("cluster_workers"),
    _m("find_orphans"),
    _m("cleanup_orphans", P("orphans", LIST, items=(dict,))),
    _m("create_from_template", P("kind", TEXT), P("n_vms", ID), P("flavor", TEXT), P("internet", TEXT),
       P("slice_name", TEXT), P("owner", OPT_TEXT, None), progress=True),
    _m("import_topology", P("text", TEXT), P("slice_name", OPT_TEXT, None), P("owner", OPT_TEXT, None),
       progress=True),
    _m("export_slice", P("slice_id", ID), P("fmt", TEXT, "yaml")),
    # Generated passwords come back in the report; the menu writes them with the admin's own rights.
    _m("import_roster", P("roster_text", TEXT), P("roster_format", TEXT), P("topology_text", OPT_TEXT, None),
       P("slice_name", OPT_TEXT, None), progress=True, password_file=None),
    _m("overview"),
    # disk snapshots and leases (SPEC §17); reap_leases is the service's own periodic work, never a menu's
    _m("list_snapshots", P("slice_id", ID)),
    _m("save_snapshot", P("slice_id", ID), P("vm_id", ID), P("name", TEXT), progress=True),
    _m("restore_snapshot", P("slice_id", ID), P("vm_id", ID), P("name", TEXT), progress=True),
    _m("delete_snapshot", P("slice_id", ID), P("vm_id", ID), P("name", TEXT), progress=True),
    _m("set_disk_quota", P("username", TEXT), P("disk_quota_mib", ID)),
    _m("set_max_lease", P("username", TEXT), P("max_lease_days", OPT_ID)),
    _m("set_lease", P("slice_id", ID), P("days", OPT_ID)),
    _m("list_leases", P("slice_id", OPT_ID, None)),
    _m("lease_warnings"),
]}


class BadCall(Exception):
    """A call the table does not allow (the message says why)."""


def bind(method: Method, args: list, kwargs: dict) -> dict:
    """The call's arguments by name, each checked against the table; BadCall when not allowed."""
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise BadCall("args must be a list and kwargs an object")
    if len(args) > len(method.params):
        raise BadCall(f"{method.name} takes at most {len(method.params)} arguments")
    names = [p.name for p in method.params]
    unknown = sorted(set(kwargs) - set(names))
    if unknown:
        raise BadCall(f"{method.name} takes no argument {unknown[0]!r}")
    bound = dict(zip(names, args))
    for name in kwargs:
        if name in bound:
            raise BadCall(f"{method.name}: {name!r} given twice")
    bound.update(kwargs)
    for p in method.params:
        if p.name not in bound:
            if p.default is REQUIRED:
                raise BadCall(f"{method.name} needs {p.name!r}")
            bound[p.name] = p.default
            continue
        _check(method.name, p, bound[p.name])
    bound.update(method.forced)
    return bound


def _check(method: str, p: Param, value: Any) -> None:
    if isinstance(value, bool) and bool not in p.types:
        raise BadCall(f"{method}: {p.name} must not be true/false")
    if not isinstance(value, p.types):
        raise BadCall(f"{method}: {p.name} has the wrong type ({type(value).__name__})")
    if isinstance(value, str) and len(value) > MAX_TEXT_ARG:
        raise BadCall(f"{method}: {p.name} is too long")
    if p.items is not None and not all(isinstance(v, p.items) and not isinstance(v, bool) for v in value):
        raise BadCall(f"{method}: {p.name} holds an item of the wrong type")


def method_of(name: Any) -> Optional[Method]:
    return METHODS.get(name) if isinstance(name, str) else None
