"""Topology designs: the model, its rules and the templates.  Pure: no I/O.

A *design* is what a slice is made of before anything exists on a host: VMs
(name, flavor, number of data interfaces, internet) and links between their
data interfaces, named by VM name.

- ``validate(design)`` applies, to a whole design at once, the rules that
  ``add_vm_to_slice`` and ``create_link`` apply one call at a time.
- ``linear``, ``ring``, ``star``, ``mesh`` (or ``build_template``) make the
  template designs, Mininet ``topolib`` style: small builders over the model.
- ``flavor_name_of``, ``data_interface_names``, ``internet_vlan_of`` read a
  slice as stored in ``database.yaml``.

Beside it: ``topology_file`` (topology files: export and import) and
``topology_render`` (the text diagram and Graphviz DOT).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Union

import naming
from models import Flavor
from store.text import clip, excerpt

MAX_DATA_INTERFACES = 8          # per VM: eth1..eth8 (add_vm_to_slice uses this limit too)
MAX_LINKS = naming.POOL_SIZE     # one VLAN of the slice's 20-VLAN pool per link
TOPOLOGY_TYPES = ("custom", "linear", "ring", "star", "mesh")
TEMPLATES = ("linear", "ring", "star", "mesh")

_IFNAME_RE = re.compile(r"eth(0|[1-9][0-9]*)")


# === the design model ==========================================================

@dataclass(frozen=True)
class VMSpec:
    """One VM of a design: its interfaces are eth0 (internet or nothing) and eth1..eth{data_interfaces}."""

    name: str
    flavor: str = "cirros"
    data_interfaces: int = 0
    internet: bool = False


@dataclass(frozen=True)
class LinkSpec:
    """A link between interface ``if1`` of VM ``vm1`` and ``if2`` of ``vm2`` (VM names)."""

    vm1: str
    if1: str
    vm2: str
    if2: str


@dataclass
class Design:
    """A slice's topology without IDs, hosts or VLANs; ``name`` is a suggested slice name."""

    vms: list[VMSpec] = field(default_factory=list)
    links: list[LinkSpec] = field(default_factory=list)
    topology_type: str = "custom"
    name: Optional[str] = None


@dataclass(frozen=True)
class Problem:
    """Something wrong with a design or a topology file; ``line`` (1-based) when it came from a file."""

    message: str
    line: Optional[int] = None

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}" if self.line is not None else self.message


class TemplateError(ValueError):
    """A template that cannot be built (size, flavor, prefix, internet choice); the message says why."""


class ExportError(ValueError):
    """A stored slice that cannot be written as a topology file; the message says why."""


# === validation ================================================================

def validate(design: Design, lines: Optional[dict] = None) -> list[Problem]:
    """Every rule the product applies to a slice's VMs and links, checked on the whole design.

    Unique valid VM names, known flavors, 0-8 data interfaces, link ends that
    exist (eth1..ethN of the VM, never eth0), two different interfaces per
    link, each interface in at most one link, at most 20 links.  ``[]`` when
    the design can be created as it is.  ``lines`` (from a topology file's
    reader) gives the file line of each part, keyed ``("vm", i, field)``,
    ``("link", j, field)``, ``("topology_type",)`` or ``("name",)``.
    """
    lines = lines or {}

    def at(*key) -> Optional[int]:
        while key:
            if key in lines:
                return lines[key]
            key = key[:-1]
        return None

    problems = _check_header(design, at) + _check_vms(design, at) + _check_links(design, at)
    return sorted(problems, key=lambda p: p.line or 0)


def _check_header(design: Design, at) -> list[Problem]:
    problems = []
    if design.topology_type not in TOPOLOGY_TYPES:
        problems.append(Problem(f"unknown topology_type {excerpt(design.topology_type)} ({', '.join(TOPOLOGY_TYPES)})",
                                at("topology_type")))
    if design.name is not None and not naming.valid_name(design.name):
        problems.append(Problem(f"invalid slice name {excerpt(design.name)}: {naming.NAME_RULE}", at("name")))
    return problems


def _check_vms(design: Design, at) -> list[Problem]:
    problems, first_with = [], {}
    for i, vm in enumerate(design.vms, 1):
        if not naming.valid_name(vm.name):
            problems.append(Problem(f"VM {i}: invalid name {excerpt(vm.name)}: {naming.NAME_RULE}",
                                    at("vm", i, "name")))
        elif vm.name in first_with:
            problems.append(Problem(f"VM {i}: the name {excerpt(vm.name)} is already used by VM {first_with[vm.name]}",
                                    at("vm", i, "name")))
        else:
            first_with[vm.name] = i
        who = f"VM {excerpt(vm.name)}" if naming.valid_name(vm.name) else f"VM {i}"
        if not isinstance(vm.flavor, str) or vm.flavor not in Flavor.FLAVORS:
            problems.append(Problem(f"{who}: unknown flavor {excerpt(vm.flavor)} ({', '.join(Flavor.names())})",
                                    at("vm", i, "flavor")))
        if not is_whole_number(vm.data_interfaces) or not 0 <= vm.data_interfaces <= MAX_DATA_INTERFACES:
            problems.append(Problem(f"{who}: data_interfaces must be between 0 and {MAX_DATA_INTERFACES} "
                                    f"(got {excerpt(vm.data_interfaces)})", at("vm", i, "data_interfaces")))
        if not isinstance(vm.internet, bool):
            problems.append(Problem(f"{who}: internet must be true or false (got {excerpt(vm.internet)})",
                                    at("vm", i, "internet")))
    return problems


def _check_links(design: Design, at) -> list[Problem]:
    vms: dict[str, VMSpec] = {}
    for vm in design.vms:
        if isinstance(vm.name, str):
            vms.setdefault(vm.name, vm)
    problems, used = [], {}
    for j, link in enumerate(design.links, 1):
        ends = ((link.vm1, link.if1, "vm1", "if1"), (link.vm2, link.if2, "vm2", "if2"))
        bad = [(_end_problem(vms, vm, ifname), key_vm if not _has_vm(vms, vm) else key_if)
               for vm, ifname, key_vm, key_if in ends]
        bad = [(msg, key) for msg, key in bad if msg]
        for msg, key in bad:
            problems.append(Problem(f"link {j}: {msg}", at("link", j, key)))
        if bad:
            continue
        if (link.vm1, link.if1) == (link.vm2, link.if2):
            problems.append(Problem(f"link {j}: a link needs two different interfaces "
                                    f"({clip(link.vm1)} {clip(link.if1)} is at both ends)", at("link", j, "if2")))
            continue
        for vm, ifname, _, key_if in ends:
            if (vm, ifname) in used:
                problems.append(Problem(f"link {j}: {clip(vm)} {clip(ifname)} is already in link {used[vm, ifname]} "
                                        "(an interface joins at most one link)", at("link", j, key_if)))
            else:
                used[vm, ifname] = j
    if len(design.links) > MAX_LINKS:
        problems.append(Problem(f"{len(design.links)} links: a slice has {MAX_LINKS} VLANs for links, "
                                f"so at most {MAX_LINKS} links", at("link", MAX_LINKS + 1)))
    return problems


def _has_vm(vms: dict, name: Any) -> bool:
    return isinstance(name, str) and name in vms


def _end_problem(vms: dict, vm_name: Any, ifname: Any) -> Optional[str]:
    """What is wrong with one end of a link, or None."""
    if not _has_vm(vms, vm_name):
        return f"VM {excerpt(vm_name)} does not exist"
    index = interface_index(ifname)
    if index is None:
        return f"{excerpt(ifname)} is not an interface name (eth1, eth2, ...)"
    if index == 0:
        return "eth0 cannot be in a link (links join data interfaces eth1 and above)"
    count = vms[vm_name].data_interfaces
    # a bad count is reported already
    if is_whole_number(count) and 0 <= count <= MAX_DATA_INTERFACES and index > count:
        return f"VM {excerpt(vm_name)} has no {ifname} (it has {_data_range(count)})"
    return None


def interface_index(ifname: Any) -> Optional[int]:
    """3 for ``"eth3"``; None for anything that is not an interface name."""
    m = _IFNAME_RE.fullmatch(ifname) if isinstance(ifname, str) else None
    return int(m.group(1)) if m else None


def _data_range(count: int) -> str:
    if count <= 0:
        return "no data interfaces"
    return "only eth1" if count == 1 else f"eth1 to eth{count}"


def is_whole_number(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# === templates =================================================================

@dataclass(frozen=True)
class _Shape:
    label: str
    min_vms: int
    pairs: Any        # n -> [(a, b)] 0-based VM indexes, in link order
    links: Any        # n -> number of links
    degree: Any       # n -> the most data interfaces one VM needs


_SHAPES = {
    "linear": _Shape("linear topology", 2, lambda n: [(i, i + 1) for i in range(n - 1)],
                     lambda n: n - 1, lambda n: min(2, n - 1)),
    "ring": _Shape("ring", 3, lambda n: [(i, i + 1) for i in range(n - 1)] + [(n - 1, 0)],
                   lambda n: n, lambda n: 2),
    "star": _Shape("star", 2, lambda n: [(0, i) for i in range(1, n)], lambda n: n - 1, lambda n: n - 1),
    "mesh": _Shape("full mesh", 2, lambda n: [(i, j) for i in range(n) for j in range(i + 1, n)],
                   lambda n: n * (n - 1) // 2, lambda n: n - 1),
}


def _fits(shape: _Shape, n: int) -> bool:
    return shape.links(n) <= MAX_LINKS and shape.degree(n) <= MAX_DATA_INTERFACES


def template_sizes(kind: str) -> tuple[int, int]:
    """(fewest, most) VMs a template can have: linear 2-21, ring 3-20, star 2-9, mesh 2-6."""
    shape = _shape(kind)
    most = shape.min_vms
    while _fits(shape, most + 1):
        most += 1
    return shape.min_vms, most


def _shape(kind: str) -> _Shape:
    if kind not in _SHAPES:
        raise TemplateError(f"Unknown template {excerpt(kind)} ({', '.join(TEMPLATES)})")
    return _SHAPES[kind]


def build_template(kind: str, n: int, flavor: str = "cirros", internet: Union[str, Iterable[int], None] = "none",
                   prefix: str = "vm") -> Design:
    """The design of a ``linear``, ``ring``, ``star`` (VM 1 the hub) or ``mesh`` (full mesh) of ``n`` VMs.

    VMs are named ``{prefix}1`` .. ``{prefix}{n}``, all of ``flavor``, each with
    exactly the data interfaces its links use, given eth1, eth2, ... in link
    order.  ``internet``: ``"none"``, ``"all"``, ``"first"``, VM numbers as
    text (``"1,3"``) or an iterable of VM numbers (1-based).  Raises
    ``TemplateError`` with a message for the user when it cannot be built.
    """
    shape = _shape(kind)
    if not is_whole_number(n):
        raise TemplateError("The number of VMs must be a whole number")
    low, high = template_sizes(kind)
    if n < low:
        raise TemplateError(f"A {shape.label} needs at least {low} VMs")
    if n > high:
        raise TemplateError(_too_big(shape, n, high))
    if flavor not in Flavor.FLAVORS:
        raise TemplateError(f"Unknown flavor {excerpt(flavor)} ({', '.join(Flavor.names())})")
    if not (isinstance(prefix, str) and naming.valid_name(f"{prefix}{n}") and naming.valid_name(f"{prefix}1")):
        raise TemplateError(f"Invalid VM name prefix {excerpt(prefix)}: names like {clip(prefix)}{n} must be "
                            f"{naming.NAME_RULE}")
    with_internet = _internet_choice(internet, n)
    names = [f"{prefix}{i}" for i in range(1, n + 1)]
    used = [0] * n
    links = []
    for a, b in shape.pairs(n):
        used[a] += 1
        used[b] += 1
        links.append(LinkSpec(names[a], f"eth{used[a]}", names[b], f"eth{used[b]}"))
    vms = [VMSpec(names[i], flavor, used[i], i + 1 in with_internet) for i in range(n)]
    return Design(vms, links, kind)


def _too_big(shape: _Shape, n: int, high: int) -> str:
    if shape.degree(n) > MAX_DATA_INTERFACES:
        return (f"A {shape.label} of {n} VMs needs {shape.degree(n)} data interfaces on one VM, "
                f"but a VM has at most {MAX_DATA_INTERFACES} (at most {high} VMs)")
    return (f"A {shape.label} of {n} VMs needs {shape.links(n)} links, but a slice has {MAX_LINKS} VLANs "
            f"for links (at most {high} VMs)")


def _internet_choice(internet: Union[str, Iterable[int], None], n: int) -> set[int]:
    """The 1-based numbers of the VMs that get internet."""
    if internet is None:
        return set()
    if isinstance(internet, str):
        text = internet.strip().lower()
        if text in ("", "none", "no"):
            return set()
        if text == "all":
            return set(range(1, n + 1))
        if text == "first":
            return {1}
        words = text.replace(",", " ").split()
        if not all(w.isdigit() for w in words):
            raise TemplateError("Internet: none, all, first, or VM numbers like 1,3")
        numbers = [int(w) for w in words]
    else:
        numbers = list(internet)
        if not all(is_whole_number(k) for k in numbers):
            raise TemplateError("Internet: none, all, first, or VM numbers like 1,3")
    outside = sorted(k for k in numbers if not 1 <= k <= n)
    if outside:
        raise TemplateError(f"Internet: there is no VM {outside[0]} (VMs are numbered 1 to {n})")
    return set(numbers)


def linear(n: int, flavor: str = "cirros", internet: Union[str, Iterable[int], None] = "none",
           prefix: str = "vm") -> Design:
    """A chain: VM i joined to VM i+1 (see ``build_template``)."""
    return build_template("linear", n, flavor, internet, prefix)


def ring(n: int, flavor: str = "cirros", internet: Union[str, Iterable[int], None] = "none",
         prefix: str = "vm") -> Design:
    """A chain closed by a link from the last VM to the first (n >= 3; see ``build_template``)."""
    return build_template("ring", n, flavor, internet, prefix)


def star(n: int, flavor: str = "cirros", internet: Union[str, Iterable[int], None] = "none",
         prefix: str = "vm") -> Design:
    """VM 1 the hub, joined to every other VM (see ``build_template``)."""
    return build_template("star", n, flavor, internet, prefix)


def mesh(n: int, flavor: str = "cirros", internet: Union[str, Iterable[int], None] = "none",
         prefix: str = "vm") -> Design:
    """Every VM joined to every other VM (see ``build_template``)."""
    return build_template("mesh", n, flavor, internet, prefix)


# === reading a stored slice ======================================================

def flavor_name_of(flavor: Any) -> Optional[str]:
    """The flavor name of a VM's stored flavor spec dict, or None when it matches no flavor.

    The database keeps the spec (cores, RAM, disk, image) rather than the
    name, and the config may replace the image (the lab gives both flavors
    the same one), so the size decides; the image basename breaks a tie.
    """
    if isinstance(flavor, str):
        return flavor if flavor in Flavor.FLAVORS else None
    if not isinstance(flavor, dict):
        return None
    if flavor.get("name") in Flavor.FLAVORS:
        return flavor["name"]

    def size(spec: dict) -> tuple:
        return spec.get("cores"), spec.get("ram_gb"), spec.get("disk_gb")

    same_size = [n for n, spec in Flavor.FLAVORS.items() if size(spec) == size(flavor)]
    if len(same_size) == 1:
        return same_size[0]
    image = os.path.basename(str(flavor.get("image") or ""))
    same_image = [n for n in (same_size or Flavor.FLAVORS)
                  if os.path.basename(Flavor.FLAVORS[n]["image"]) == image]
    return same_image[0] if len(same_image) == 1 else None


def data_interface_names(vm: dict) -> list[str]:
    """The names of a stored VM's data interfaces (eth1 and above), in order."""
    return [i.get("name") for i in vm.get("interfaces") or []
            if (interface_index(i.get("name")) or 0) >= 1]


def internet_vlan_of(vm: dict) -> Optional[int]:
    """The VLAN on the VM's eth0 (only ever the internet VLAN), or None."""
    eth0 = next((i for i in vm.get("interfaces") or [] if i.get("name") == "eth0"), None)
    return eth0.get("vlan_id") if eth0 else None


def plural(n: int, what: str) -> str:
    """``"1 VM"``, ``"3 VMs"``."""
    return f"{n} {what}" + ("" if n == 1 else "s")
