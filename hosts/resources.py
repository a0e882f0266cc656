"""What this system makes on the hosts, described one kind at a time.

Each *kind* of host object (an overlay, a QEMU process, a TAP, a gateway
port, a DHCP namespace, a NAT rule...) is one ``Kind`` subclass, written in
the builder module of its concern (``qcow_manager``, ``vm_launcher``,
``vlan_manager``, ...) beside the script that makes it.  A kind knows:

* ``scan(ctx, host)``: shell that prints one line per object found, each
  starting with the kind's name (``"tap tap1001_0"``);
* ``parse(host, fields)``: such a line (without the name) -> ``Found``;
* ``owned(view)``: the keys any slice in the database may hold (never orphans);
* ``expected(view)``: the keys that should exist now, with the detail they
  should show (e.g. a port's VLAN tag), for status and repair;
* ``remove(ctx, host, keys)``: shell snippets that remove those objects
  (idempotent, root).

``reconcile`` runs every kind's scan in one command per host and compares:
orphans = found - owned; missing = expected - found.  Adding a kind is one
class in one module, registered with ``@register``; ``hosts.kinds`` lists
every kind (it imports the builder modules, which import this one).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Iterable, Optional

from hosts.hostcmd import home_path
from store.config import ClusterConfig


@dataclass(frozen=True, order=True)
class Key:
    """One object on one host, as this system names it."""

    kind: str
    host: str
    vm_id: Optional[int] = None
    vlan: Optional[int] = None
    name: Optional[str] = None


@dataclass(frozen=True)
class Found:
    """An object a scan found; ``detail`` is what status compares (a tag, an address, alive...)."""

    key: Key
    detail: str = ""


@dataclass(frozen=True)
class HostContext:
    """The config and the facts about hosts that builders need (no I/O)."""

    config: ClusterConfig
    homes: dict = field(default_factory=dict)  # host -> the SSH user's home directory

    def home(self, host: str) -> str:
        return self.homes.get(host, "~")

    def image_dir(self, host: str) -> str:
        """The worker's image folder, absolute when the home directory is known."""
        return home_path(self.config.worker_image_dir, self.home(host)).rstrip("/")

    def abs_path(self, host: str, path: str) -> str:
        return home_path(path, self.home(host))


class Kind:
    """One kind of host object.  Subclasses set the class variables and override the methods."""

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    role: ClassVar[str] = "worker"  # "worker" or "node": which hosts hold it
    transient: ClassVar[bool] = False  # never expected, and not a problem when found (e.g. a capture)

    def scan(self, ctx: HostContext, host: str) -> str:
        raise NotImplementedError

    def parse(self, host: str, fields: list) -> Optional[Found]:
        raise NotImplementedError

    def owned(self, view) -> Iterable[Key]:
        raise NotImplementedError

    def expected(self, view) -> dict:
        """Key -> expected detail ("" when any detail will do)."""
        return {}

    def remove(self, ctx: HostContext, host: str, keys: list) -> list:
        raise NotImplementedError

    def describe(self, key: Key) -> str:
        """Human name of an object, e.g. ``TAP tap1001_0``."""
        return f"{self.label} {key.name or key.vm_id or key.vlan or ''}".strip()


KINDS: dict = {}


def register(cls):
    """Class decorator: make a kind known to the scans (one instance per kind)."""
    KINDS[cls.name] = cls()
    return cls


def int_or_none(text: str) -> Optional[int]:
    return int(text) if text.isdigit() else None


class ClusterView:
    """What the database says the hosts hold: slices (stale marks already resolved) and the config.

    *owned*: anything a slice in the database may hold, whatever its state
    (never an orphan).  *expected*: what must exist now (running slices,
    their VMs that are not stopped).
    """

    def __init__(self, config: ClusterConfig, slices: Iterable[dict]):
        self.config = config
        self.slices = list(slices)

    @staticmethod
    def _live(s: dict) -> bool:
        return s.get("status") in ("running", "stopped")

    def all_vms(self) -> list:
        return [vm for s in self.slices for vm in s.get("vms", [])]

    def running_vms(self) -> list:
        """VMs whose QEMU should run: in a running or stopped slice, and not stopped themselves."""
        return [vm for s in self.slices if self._live(s) for vm in s.get("vms", [])
                if vm.get("status") not in ("stopped", "design", "pending")]

    def _slices(self, owned: bool) -> list:
        return self.slices if owned else [s for s in self.slices if self._live(s)]

    def vlans(self, owned: bool) -> set:
        """Link VLANs (and the internet VLAN when used) on the network node."""
        out = set()
        for s in self._slices(owned):
            out.update(int(link["vlan_id"]) for link in s.get("links", []))
        if self.internet(owned):
            out.add(int(self.config.internet["vlan"]))
        return out

    def reservations(self, owned: bool) -> list:
        """(vm_id, mac, ip) of every internet VM on the internet VLAN."""
        vlan = int(self.config.internet["vlan"])
        slices = self._slices(owned)
        return [(int(vm["vm_id"]), i["mac"], i["ip_config"]["ip"]) for s in slices for vm in s.get("vms", [])
                if owned or vm.get("status") not in ("design", "pending")
                for i in vm.get("interfaces", []) if i.get("vlan_id") == vlan and i.get("ip_config")]

    def internet(self, owned: bool) -> bool:
        vlan = int(self.config.internet["vlan"])
        return any(i.get("vlan_id") == vlan for s in self._slices(owned) for vm in s.get("vms", [])
                   for i in vm.get("interfaces", []))
