"""The cluster config file (SPEC §5): which hosts, how to reach them, settings.

Every key is one line of ``SCHEMA``: its default (the original cluster's), a
check and what the value must be.  A section (``ssh``, ``internet``) is a
nested table.  ``ClusterConfig.load(path)`` refuses an unknown key or a bad
value with the key, the value, what was expected and the line, e.g.
``cluster.yaml line 2: unknown key 'wokers' (known: workers, network_node, ...)``
or ``cluster.yaml line 9: internet.cidr: '10.60.7.0/33' is not an IPv4 network``.
A key given twice, an anchor or an alias is refused with its lines
(store/yamlcheck.py); a refused file is described, never quoted beyond a
short escaped excerpt.  The ``lab:`` section is free-form (lab/up.sh writes it).  To add a key, add a
line to ``SCHEMA``; its checked value is ``config.setting("section.key")``.
"""
from __future__ import annotations

import copy
import ipaddress
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

import yaml

from store.text import excerpt, word
from store.yamlcheck import YamlRefused
from store.yamlcheck import load as strict_load
from store.yamltext import line_of


def yaml_error_where(error: Exception) -> str:
    """`` (line L, column C)`` of a YAML parse error, for a one-line message."""
    mark = getattr(error, "problem_mark", None)
    return f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""


class ConfigError(Exception):
    """The cluster config is missing or malformed."""


# --- checks: each says whether a value is acceptable ----------------------------------------

_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,15}")          # a Linux interface / OVS bridge name
_USER = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}")


def _is_int(v: Any) -> bool:
    return type(v) is int


def _is_ip(v: Any) -> bool:
    try:
        ipaddress.ip_address(v)
        return True
    except ValueError:
        return False


def host(v: Any) -> bool:
    """An IPv4/IPv6 address or a DNS host name (not a mistyped address like 10.0.10.256)."""
    if type(v) is not str:
        return False
    if _is_ip(v):
        return True
    labels = v.rstrip(".").split(".")
    return (len(v) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in labels)
            and not labels[-1].isdigit())


def hosts(v: Any) -> bool:
    return type(v) is list and len(v) > 0 and all(host(h) for h in v)


def vlan(v: Any) -> bool:
    return _is_int(v) and 1 <= v <= 4094


def vlans(v: Any) -> bool:
    return v is None or (type(v) is list and all(vlan(x) for x in v))


def positive(v: Any) -> bool:
    return type(v) in (int, float) and math.isfinite(v) and v > 0


def port(v: Any) -> bool:
    return _is_int(v) and 1 <= v <= 65535


def boolean(v: Any) -> bool:
    return type(v) is bool


def text(v: Any) -> bool:
    return type(v) is str and v.strip() != "" and "\n" not in v and "\0" not in v


def ifname(v: Any) -> bool:
    return type(v) is str and bool(_NAME.fullmatch(v))


def user_name(v: Any) -> bool:
    return type(v) is str and bool(_USER.fullmatch(v))


def ipv4(v: Any) -> bool:
    try:
        ipaddress.IPv4Address(v)
        return type(v) is str
    except ValueError:
        return False


def ipv4_network(v: Any) -> bool:
    try:
        ipaddress.IPv4Network(v, strict=True)
        return type(v) is str and "/" in v
    except ValueError:
        return False


def one_of(*choices: str) -> Callable[[Any], bool]:
    return lambda v: type(v) is str and v in choices


def text_map(v: Any) -> bool:
    return v is None or (type(v) is dict and all(type(k) is str and text(x) for k, x in v.items()))


def anything(v: Any) -> bool:
    return True


def non_negative_int(v: Any) -> bool:
    return _is_int(v) and v >= 0


def positive_int(v: Any) -> bool:
    return _is_int(v) and v >= 1


def non_negative(v: Any) -> bool:
    return type(v) in (int, float) and math.isfinite(v) and v >= 0


def ip_network(v: Any) -> bool:
    try:
        ipaddress.ip_network(v, strict=False)
        return type(v) is str
    except ValueError:
        return False


def ip_networks(v: Any) -> bool:
    return v is None or (type(v) is list and all(ip_network(x) for x in v))


def nice_level(v: Any) -> bool:
    return _is_int(v) and 0 <= v <= 19


def host_sizes(v: Any) -> bool:
    """host -> {memory_mib: N, vcpus: N} (either may be left out): what a worker holds, overriding it."""
    return v is None or (type(v) is dict and all(
        host(h) and type(size) is dict and set(size) <= {"memory_mib", "vcpus"}
        and all(_is_int(x) and x > 0 for x in size.values()) for h, size in v.items()))


# --- the schema: one line per key ---------------------------------------------------------

NO_DEFAULT = object()   # the key is absent unless the file has it


@dataclass(frozen=True)
class Setting:
    """One config key: default, check, and what the value must be (for messages)."""

    default: Any
    check: Callable[[Any], bool]
    expected: str
    item: Optional[Callable[[Any], bool]] = None   # lists: the check of one item, to name the bad one
    item_expected: str = ""


SCHEMA: dict = {
    "workers": Setting(["10.0.10.1", "10.0.10.2", "10.0.10.3"], hosts,
                       "a non-empty list of hosts (IP addresses or host names)",
                       host, "a host (an IP address or a host name)"),
    "network_node": Setting("10.0.10.3", host, "a host (an IP address or a host name)"),
    "ssh": {
        "user": Setting("ubuntu", user_name, "a user name"),
        "port": Setting(22, port, "a port number (1-65535)"),
        "key_file": Setting("~/.ssh/id_rsa", text, "a file path"),
        "known_hosts": Setting("~/.ssh/known_hosts", text, "a file path"),
        "accept_new_host_keys": Setting(False, boolean, "true or false"),
        "sudo": Setting(True, boolean, "true or false"),
        "connect_timeout": Setting(10, positive, "a positive number of seconds"),
        "command_timeout": Setting(60, positive, "a positive number of seconds"),
    },
    "bridge": Setting("br-int", ifname, "a bridge name (1-15 letters, digits, '_', '.', '-')"),
    "worker_image_dir": Setting("~/vm_images", text, "a folder path"),
    "flavor_images": Setting({}, text_map, "a mapping of flavor name to image path"),
    "qemu_accel": Setting("kvm", one_of("kvm", "tcg", "kvm:tcg"), "kvm, tcg or kvm:tcg"),
    "internet": {
        "vlan": Setting(400, vlan, "a VLAN (1-4094)"),
        "cidr": Setting("10.60.7.0/24", ipv4_network, "an IPv4 network (like 10.60.7.0/24)"),
        "gateway": Setting("10.60.7.1", ipv4, "an IPv4 address"),
        "uplink": Setting("ens3", ifname, "an interface name (1-15 letters, digits, '_', '.', '-')"),
    },
    "reserved_vlans": Setting([], vlans, "a list of VLANs (1-4094)", vlan, "a VLAN (1-4094)"),
    "copy_timeout": Setting(60, positive, "a positive number of seconds"),
    "log_file": Setting("logs/cloud-repositorio.log", text, "a file path"),
    "management_networks": Setting([], ip_networks, "a list of IP addresses or networks (e.g. the manager's)",
                                   ip_network, "an IP address or network"),
    "qemu_nice": Setting(0, nice_level, "a nice level from 0 to 19 (guests below the hosts' own daemons)"),
    "capacity": {
        "cpu_ratio": Setting(4.0, positive, "a positive number (vCPUs per host CPU)"),
        "ram_ratio": Setting(1.0, positive, "a positive number (guest memory per MiB of host memory)"),
        "reserved_memory_mib": Setting(512, non_negative_int, "a whole number of MiB kept for the host itself"),
        "hosts": Setting({}, host_sizes, "a mapping of host to {memory_mib: N, vcpus: N}"),
    },
    "snapshots": {
        "quota_mib": Setting(1024, non_negative_int, "a whole number of MiB (a user's default snapshot disk quota)"),
        "max_per_vm": Setting(10, positive_int, "a whole number, 1 or more (snapshots a VM may keep)"),
    },
    "leases": {
        "grace_hours": Setting(24, non_negative, "a number of hours, 0 or more (an expired slice is kept "
                                                 "stopped this long, then deleted)"),
        "warn_hours": Setting(24, non_negative, "a number of hours, 0 or more (owners are warned at login "
                                                "when a lease ends within it)"),
    },
    "lab": Setting(NO_DEFAULT, anything, "free-form (written by lab/up.sh)"),
}


def _defaults(schema: dict) -> dict:
    return {key: _defaults(spec) if isinstance(spec, dict) else copy.deepcopy(spec.default)
            for key, spec in schema.items()
            if isinstance(spec, dict) or spec.default is not NO_DEFAULT}


DEFAULTS: dict[str, Any] = _defaults(SCHEMA)


def _dotted(path: tuple) -> str:
    return ".".join(str(p) for p in path)


def _short(value: Any) -> str:
    """A value as the file spells it (null, true, '10.0.0.1', [1, 2]): short and escaped (store/text.py)."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return excerpt(value)


def _kind(value: Any) -> str:
    """What a value is, without quoting it (a file that is not a config at all is described, not shown)."""
    return {str: "a text", list: "a list", int: "a number", float: "a number"}.get(type(value), "a value")


def _problem(data: dict, schema: dict, prefix: tuple = ()) -> Optional[tuple]:
    """(key path, message) of the first unknown key or bad value in ``data``, or None."""
    for key, value in data.items():
        path = prefix + (key,)
        spec = schema.get(key) if isinstance(key, str) else None
        if spec is None:
            section = f" in {_dotted(prefix)}" if prefix else ""
            shown = word(key)
            return path, (f"unknown key {_dotted(prefix + (key,))!r}" if shown else "an unknown key") + \
                f" (known{section}: {', '.join(schema)})"
        if isinstance(spec, dict):
            if value is None:
                continue
            if type(value) is not dict:
                return path, f"{_dotted(path)}: {_short(value)} is not a mapping (of {', '.join(spec)})"
            found = _problem(value, spec, path)
            if found:
                return found
        elif not spec.check(value):
            return _bad_value(spec, path, value)
    return None


def _bad_value(spec: Setting, path: tuple, value: Any) -> tuple:
    """(path, message) for a value its check refused, naming the bad item of a list."""
    if spec.item is not None and type(value) is list:
        for i, item in enumerate(value):
            if not spec.item(item):
                return path + (i,), f"{_dotted(path)}[{i}]: {_short(item)} is not {spec.item_expected}"
    return path, f"{_dotted(path)}: {_short(value)} is not {spec.expected}"


def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (override or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        elif v is not None or not isinstance(out.get(k), (dict, list)):
            out[k] = copy.deepcopy(v)
    return out


def _cross_problem(merged: dict) -> Optional[tuple]:
    """Checks between keys, on the merged config."""
    inet = merged["internet"]
    if ipaddress.IPv4Address(inet["gateway"]) not in ipaddress.IPv4Network(inet["cidr"]):
        return (("internet", "gateway"),
                f"internet.gateway: {inet['gateway']!r} is not inside internet.cidr {inet['cidr']}")
    return None


def config_problem(data: Any) -> Optional[tuple]:
    """(key path, message) of what is wrong with a config mapping, or None."""
    if data is None:
        return None
    if type(data) is not dict:
        return (), f"the file must be a mapping of settings ({', '.join(SCHEMA)}), not {_kind(data)}"
    return _problem(data, SCHEMA) or _cross_problem(_merge(DEFAULTS, data))


@dataclass
class SSHSettings:
    user: str
    port: int
    key_file: str
    known_hosts: str
    accept_new_host_keys: bool
    sudo: bool
    connect_timeout: float
    command_timeout: float


@dataclass
class ClusterConfig:
    """Parsed cluster config.  ``raw`` keeps every key of the file (with the defaults)."""

    workers: list
    network_node: str
    ssh: SSHSettings
    bridge: str
    worker_image_dir: str
    flavor_images: dict
    qemu_accel: str
    internet: dict
    reserved_vlans: list
    copy_timeout: float
    log_file: str
    path: Optional[str] = None
    raw: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Optional[dict], path: Optional[str] = None) -> ClusterConfig:
        """A checked config from a mapping (missing keys take the defaults)."""
        found = config_problem(data)
        if found:
            raise ConfigError(f"bad cluster config{' ' + path if path else ''}: {found[1]}")
        merged = _merge(DEFAULTS, data or {})
        base_dir = os.path.dirname(os.path.abspath(path)) if path else os.getcwd()
        s = merged["ssh"]
        ssh = SSHSettings(
            user=s["user"], port=s["port"],
            key_file=os.path.expanduser(s["key_file"]), known_hosts=os.path.expanduser(s["known_hosts"]),
            accept_new_host_keys=s["accept_new_host_keys"], sudo=s["sudo"],
            connect_timeout=float(s["connect_timeout"]), command_timeout=float(s["command_timeout"]))
        log_file = os.path.expanduser(merged["log_file"])
        if not os.path.isabs(log_file):
            log_file = os.path.join(base_dir, log_file)
        return cls(
            workers=list(merged["workers"]), network_node=merged["network_node"], ssh=ssh,
            bridge=merged["bridge"], worker_image_dir=merged["worker_image_dir"],
            flavor_images=dict(merged["flavor_images"] or {}), qemu_accel=merged["qemu_accel"],
            internet=dict(merged["internet"]), reserved_vlans=list(merged["reserved_vlans"] or []),
            copy_timeout=float(merged["copy_timeout"]), log_file=log_file,
            path=path, raw=merged)

    @classmethod
    def load(cls, path: str) -> ClusterConfig:
        """Read a cluster config file; ConfigError names the key, the value and the line."""
        try:
            with open(path, encoding="utf-8") as f:
                text_ = f.read()
            data = strict_load(text_)
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read cluster config {path}: {e}") from e
        except YamlRefused as e:
            raise ConfigError(f"{path} line {e.line}: {e.message}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"cluster config {path} is not valid YAML{yaml_error_where(e)}") from e
        found = config_problem(data)
        if found:
            line = line_of(text_, found[0]) if found[0] else None
            raise ConfigError(f"{path}{f' line {line}' if line else ''}: {found[1]}")
        return cls.from_dict(data, path)

    @classmethod
    def coerce(cls, config: Union[ClusterConfig, str, dict, None]) -> ClusterConfig:
        if isinstance(config, ClusterConfig):
            return config
        if isinstance(config, str):
            return cls.load(config)
        return cls.from_dict(config)

    def setting(self, dotted: str) -> Any:
        """The checked value of any key, e.g. ``config.setting("ssh.port")`` (KeyError if unknown)."""
        value: Any = self.raw
        for part in dotted.split("."):
            value = value[part]
        return value

    @property
    def management(self) -> list:
        """Addresses VMs must never reach: the hosts' own (when given as IPs) and ``management_networks``."""
        hosts = [h for h in self.hosts if _is_ip(h)]
        return hosts + [str(n) for n in (self.raw.get("management_networks") or [])]

    @property
    def internet_vlan(self) -> int:
        return self.internet["vlan"]

    @property
    def all_reserved_vlans(self) -> list:
        return sorted({self.internet_vlan, *self.reserved_vlans})

    @property
    def hosts(self) -> list:
        """Every host, network node last, without duplicates."""
        out = [w for w in self.workers]
        if self.network_node not in out:
            out.append(self.network_node)
        return out

    def flavor_image(self, flavor_name: str, flavor: dict) -> str:
        """Base image on the manager for a flavor (config override first)."""
        return str(self.flavor_images.get(flavor_name) or flavor.get("image"))
