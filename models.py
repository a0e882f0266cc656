"""Domain objects: plain data with ``to_dict()`` / ``from_dict()``.  No I/O.

The shapes are the ones documented for the original system (seed 001): a
slice serialized with ``to_dict()`` round-trips through ``from_dict()``.
Keys this project adds (a slice's ``name``, a user's ``role``) are written
only when set, and unknown keys read from a file are kept and written back,
so an instructor's ``database.yaml`` never loses information.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

import naming


def _extra(d: dict, known: tuple) -> dict:
    return {k: copy.deepcopy(v) for k, v in d.items() if k not in known}


@dataclass
class User:
    """A person who logs in; owns slices and has a VM quota."""

    _KEYS: ClassVar[tuple] = ("username", "password_hash", "quota_vms", "used_vms", "slices", "role")

    username: str
    password_hash: str
    quota_vms: int = 10
    role: str = "student"
    used_vms: int = field(default=0, init=False)
    slices: list = field(default_factory=list, init=False)
    extra: dict = field(default_factory=dict, init=False, repr=False)

    def can_create_vms(self, count: int) -> bool:
        """True when ``count`` more VMs fit in the quota."""
        return self.used_vms + count <= self.quota_vms

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def to_dict(self) -> dict:
        d = {"username": self.username, "password_hash": self.password_hash,
             "quota_vms": self.quota_vms, "used_vms": self.used_vms,
             "slices": list(self.slices), "role": self.role}
        d.update(copy.deepcopy(self.extra))
        return d

    @classmethod
    def from_dict(cls, d: dict) -> User:
        u = cls(d["username"], d.get("password_hash", ""), int(d.get("quota_vms", 10)),
                d.get("role", "student"))
        u.used_vms = int(d.get("used_vms", 0))
        u.slices = [int(s) for s in d.get("slices", [])]
        u.extra = _extra(d, cls._KEYS)
        return u


class Flavor:
    """The static registry of VM sizes (exactly as documented)."""

    FLAVORS = {
        "cirros": {"cores": 1, "ram_gb": 0.5, "disk_gb": 1,
                   "image": "/tmp/vm_images/cirros-0.6.2-x86_64-disk.img"},
        "ubuntu": {"cores": 1, "ram_gb": 0.5, "disk_gb": 2.2,
                   "image": "/tmp/vm_images/focal-server-cloudimg-amd64.img"},
    }

    @classmethod
    def get(cls, flavor_name: str) -> Optional[dict]:
        """The flavor's spec dict (a copy), or None for an unknown name."""
        spec = cls.FLAVORS.get(flavor_name)
        return dict(spec) if spec is not None else None

    @classmethod
    def names(cls) -> list[str]:
        return list(cls.FLAVORS)

    @classmethod
    def name_of(cls, vm: dict) -> Optional[str]:
        """The flavor name of a VM dict: its ``flavor_name``, else the flavor whose sizes its spec has."""
        if vm.get("flavor_name") in cls.FLAVORS:
            return vm["flavor_name"]
        spec = vm.get("flavor") or {}
        for name, known in cls.FLAVORS.items():
            if all(spec.get(k) == known[k] for k in ("cores", "ram_gb", "disk_gb")):
                return name
        return None


@dataclass
class Interface:
    """One NIC of a VM: ``eth0`` (management/internet) or a data NIC."""

    name: str
    vlan_id: Optional[int] = None
    mac: Optional[str] = None
    ip_config: Optional[dict] = None
    link_id: Optional[int] = None

    @property
    def index(self) -> int:
        return int(self.name[3:])

    def to_dict(self) -> dict:
        return {"name": self.name, "vlan_id": self.vlan_id, "mac": self.mac,
                "ip_config": copy.deepcopy(self.ip_config), "link_id": self.link_id}

    @classmethod
    def from_dict(cls, d: dict) -> Interface:
        return cls(d["name"], d.get("vlan_id"), d.get("mac"), copy.deepcopy(d.get("ip_config")),
                   d.get("link_id"))


@dataclass
class Link:
    """An L2 connection between two data interfaces, on one VLAN.

    ``impairment`` (written only when set): the link's delay, jitter, loss and
    rate, ``{delay_ms, jitter_ms, loss_pct, rate_kbit}`` (``topology.impairment``).
    """

    link_id: int
    vlan_id: int
    vm1_id: int
    vm1_interface: str
    vm2_id: int
    vm2_interface: str
    impairment: Optional[dict] = None

    def to_dict(self) -> dict:
        d = {"link_id": self.link_id, "vlan_id": self.vlan_id,
             "vm1_id": self.vm1_id, "vm1_interface": self.vm1_interface,
             "vm2_id": self.vm2_id, "vm2_interface": self.vm2_interface}
        if self.impairment:
            d["impairment"] = copy.deepcopy(self.impairment)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Link:
        return cls(d["link_id"], d["vlan_id"], d["vm1_id"], d["vm1_interface"],
                   d["vm2_id"], d["vm2_interface"], copy.deepcopy(d.get("impairment")) or None)


@dataclass
class VM:
    """A virtual machine of a slice, placed on one worker."""

    _KEYS: ClassVar[tuple] = ("vm_id", "name", "owner", "worker_ip", "vnc_port", "status", "pid",
                              "qcow_image", "flavor", "interfaces")

    vm_id: int
    name: str
    owner: str
    worker_ip: str
    vnc_port: int
    interfaces: list
    flavor: Optional[dict] = None
    qcow_image: Optional[str] = None
    status: str = field(default="pending", init=False)
    pid: Optional[str] = field(default=None, init=False)
    extra: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.interfaces = list(self.interfaces)

    def interface(self, name: str) -> Optional[Interface]:
        return next((i for i in self.interfaces if i.name == name), None)

    def to_dict(self) -> dict:
        d = {"vm_id": self.vm_id, "name": self.name, "owner": self.owner,
             "worker_ip": self.worker_ip, "vnc_port": self.vnc_port, "status": self.status,
             "pid": self.pid, "qcow_image": self.qcow_image,
             "flavor": copy.deepcopy(self.flavor),
             "interfaces": [i.to_dict() for i in self.interfaces]}
        d.update(copy.deepcopy(self.extra))
        return d

    @classmethod
    def from_dict(cls, d: dict) -> VM:
        vm = cls(d["vm_id"], d["name"], d.get("owner"), d.get("worker_ip"), d.get("vnc_port"),
                 [Interface.from_dict(i) for i in d.get("interfaces", [])],
                 copy.deepcopy(d.get("flavor")), d.get("qcow_image"))
        vm.status = d.get("status", "pending")
        vm.pid = d.get("pid")
        vm.extra = _extra(d, cls._KEYS)
        return vm


@dataclass
class Network:
    """The addressing of one link VLAN (gateway and DHCP on the network node)."""

    vlan_id: int
    cidr: str
    gateway_ip: str
    dhcp_enabled: bool = False
    dhcp_range: Optional[str] = None
    status: str = field(default="pending", init=False)

    @classmethod
    def for_link_vlan(cls, vlan_id: int) -> Network:
        n = naming.link_network(vlan_id)
        return cls(vlan_id, n["cidr"], n["gateway_ip"], True, f"{n['dhcp_start']},{n['dhcp_end']}")

    def to_dict(self) -> dict:
        return {"vlan_id": self.vlan_id, "cidr": self.cidr, "gateway_ip": self.gateway_ip,
                "dhcp_enabled": self.dhcp_enabled, "dhcp_range": self.dhcp_range,
                "status": self.status}

    @classmethod
    def from_dict(cls, d: dict) -> Network:
        n = cls(d["vlan_id"], d["cidr"], d["gateway_ip"], d.get("dhcp_enabled", False),
                d.get("dhcp_range"))
        n.status = d.get("status", "pending")
        return n


@dataclass
class Slice:
    """A tenant's topology: VMs, links and their VLAN pool.

    ``vlan_pool_start``/``vlan_pool_end``: the slice's block of 20 VLANs (the
    documented one by default); both None for a slice that has no block
    because every block is recorded by another slice (see ``naming``).

    Statuses: ``design`` (editable), ``deploying`` (a deploy is under way),
    ``running`` (deployed), ``stopped`` (its VMs stopped, disks kept),
    ``deleting``, ``stopping``, ``starting``.
    """

    _KEYS: ClassVar[tuple] = ("slice_id", "owner", "topology_type", "vlan_pool_start", "vlan_pool_end",
                              "vlan_pool_used", "status", "vms", "links", "networks", "name")

    slice_id: int
    owner: str
    topology_type: str = "custom"
    name: Optional[str] = None
    vlan_pool_start: Optional[int] = None
    vlan_pool_end: Optional[int] = field(default=0, init=False)
    vlan_pool_used: list = field(default_factory=list, init=False)
    vms: list = field(default_factory=list, init=False)
    links: list = field(default_factory=list, init=False)
    networks: list = field(default_factory=list, init=False)
    status: str = field(default="design", init=False)
    extra: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.vlan_pool_start is None:
            self.vlan_pool_start = naming.documented_pool_start(self.slice_id)
        self.vlan_pool_end = self.vlan_pool_start + naming.POOL_SIZE - 1

    def get_next_vlan(self) -> Optional[int]:
        """Take the first unused VLAN of the pool, or None when it is exhausted (or there is none)."""
        if self.vlan_pool_start is None or self.vlan_pool_end is None:
            return None
        for vlan in range(self.vlan_pool_start, self.vlan_pool_end + 1):
            if vlan not in self.vlan_pool_used:
                self.vlan_pool_used.append(vlan)
                return vlan
        return None

    def vm(self, vm_id: int) -> Optional[VM]:
        return next((v for v in self.vms if v.vm_id == vm_id), None)

    def link_vlans(self) -> list[int]:
        return sorted({link.vlan_id for link in self.links})

    def uses_internet(self, internet_vlan: int = naming.INTERNET_VLAN) -> bool:
        return any(i.vlan_id == internet_vlan for v in self.vms for i in v.interfaces)

    def to_dict(self) -> dict:
        d: dict[str, Any] = {
            "slice_id": self.slice_id, "owner": self.owner, "topology_type": self.topology_type,
            "vlan_pool_start": self.vlan_pool_start, "vlan_pool_end": self.vlan_pool_end,
            "vlan_pool_used": list(self.vlan_pool_used), "status": self.status,
            "vms": [v.to_dict() for v in self.vms],
            "links": [link.to_dict() for link in self.links],
            "networks": [n.to_dict() for n in self.networks],
        }
        if self.name is not None:
            d["name"] = self.name
        d.update(copy.deepcopy(self.extra))
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Slice:
        s = cls(int(d["slice_id"]), d.get("owner"), d.get("topology_type", "custom"),
                d.get("name"), d.get("vlan_pool_start"))
        if "vlan_pool_start" in d and d["vlan_pool_start"] is None:  # a slice without a block
            s.vlan_pool_start = s.vlan_pool_end = None
        elif d.get("vlan_pool_end") is not None:
            s.vlan_pool_end = d["vlan_pool_end"]
        s.vlan_pool_used = list(d.get("vlan_pool_used", []))
        s.status = d.get("status", "design")
        s.vms = [VM.from_dict(v) for v in d.get("vms", [])]
        s.links = [Link.from_dict(x) for x in d.get("links", [])]
        s.networks = [Network.from_dict(n) for n in d.get("networks", [])]
        s.extra = _extra(d, cls._KEYS)
        return s
