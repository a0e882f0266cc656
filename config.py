"""The cluster config file (SPEC §5): which hosts, how to reach them, settings.

Defaults are the original cluster's.  ``ClusterConfig.load(path)`` reads a
YAML file; unknown keys are kept (the lab adds a ``lab:`` section).
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import yaml

DEFAULTS: dict[str, Any] = {
    "workers": ["10.0.10.1", "10.0.10.2", "10.0.10.3"],
    "network_node": "10.0.10.3",
    "ssh": {
        "user": "ubuntu",
        "port": 22,
        "key_file": "~/.ssh/id_rsa",
        "known_hosts": "~/.ssh/known_hosts",
        "accept_new_host_keys": False,
        "sudo": True,
        "connect_timeout": 10,
        "command_timeout": 60,
    },
    "bridge": "br-int",
    "worker_image_dir": "~/vm_images",
    "flavor_images": {},
    "qemu_accel": "kvm",
    "internet": {"vlan": 400, "cidr": "10.60.7.0/24", "gateway": "10.60.7.1", "uplink": "ens3"},
    "reserved_vlans": [],
    "copy_timeout": 60,
    "log_file": "logs/cloud-repositorio.log",
}


def yaml_error_where(error: Exception) -> str:
    """`` (line L, column C)`` of a YAML parse error, for a one-line message."""
    mark = getattr(error, "problem_mark", None)
    return f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""


class ConfigError(Exception):
    """The cluster config is missing or malformed."""


def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (override or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


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
    """Parsed cluster config.  ``raw`` keeps every key of the file."""

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
        merged = _merge(DEFAULTS, data or {})
        base_dir = os.path.dirname(os.path.abspath(path)) if path else os.getcwd()
        try:
            s = merged["ssh"]
            ssh = SSHSettings(
                user=str(s["user"]), port=int(s["port"]),
                key_file=os.path.expanduser(str(s["key_file"])),
                known_hosts=os.path.expanduser(str(s["known_hosts"])),
                accept_new_host_keys=bool(s["accept_new_host_keys"]), sudo=bool(s["sudo"]),
                connect_timeout=float(s["connect_timeout"]),
                command_timeout=float(s["command_timeout"]))
            workers = [str(w) for w in merged["workers"]]
            if not workers:
                raise ConfigError("the config names no workers")
            accel = str(merged["qemu_accel"])
            if accel not in ("kvm", "tcg", "kvm:tcg"):
                raise ConfigError(f"qemu_accel must be kvm, tcg or kvm:tcg, not {accel!r}")
            log_file = os.path.expanduser(str(merged["log_file"]))
            if not os.path.isabs(log_file):
                log_file = os.path.join(base_dir, log_file)
            internet = dict(merged["internet"])
            internet["vlan"] = int(internet["vlan"])
            return cls(
                workers=workers, network_node=str(merged["network_node"]), ssh=ssh,
                bridge=str(merged["bridge"]), worker_image_dir=str(merged["worker_image_dir"]),
                flavor_images=dict(merged["flavor_images"] or {}), qemu_accel=accel,
                internet=internet,
                reserved_vlans=[int(v) for v in merged["reserved_vlans"] or []],
                copy_timeout=float(merged["copy_timeout"]), log_file=log_file,
                path=path, raw=merged)
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"bad cluster config{' ' + path if path else ''}: {e}") from e

    @classmethod
    def load(cls, path: str) -> ClusterConfig:
        """Read a cluster config file."""
        try:
            with open(path, encoding="utf-8") as f:
                data = yaml.safe_load(f)
        except OSError as e:
            raise ConfigError(f"cannot read cluster config {path}: {e}") from e
        except yaml.YAMLError as e:
            raise ConfigError(f"cluster config {path} is not valid YAML{yaml_error_where(e)}") from e
        if data is not None and not isinstance(data, dict):
            raise ConfigError(f"cluster config {path} is not a mapping")
        return cls.from_dict(data, path)

    @classmethod
    def coerce(cls, config: Union[ClusterConfig, str, dict, None]) -> ClusterConfig:
        if isinstance(config, ClusterConfig):
            return config
        if isinstance(config, str):
            return cls.load(config)
        return cls.from_dict(config)

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
