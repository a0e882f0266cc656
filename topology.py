"""Topology designs: templates, topology files (export and import) and pictures.  Pure: no I/O.

A *design* is what a slice is made of before anything exists on a host: VMs
(name, flavor, number of data interfaces, internet) and links between their
data interfaces, named by VM name.  Everything here works on designs:

- ``validate(design)`` applies, to a whole design at once, the rules that
  ``add_vm_to_slice`` and ``create_link`` apply one call at a time.
- ``linear``, ``ring``, ``star``, ``mesh`` (or ``build_template``) make the
  template designs, Mininet ``topolib`` style: small builders over the model.
- ``design_from_slice`` / ``export_topology`` turn a slice as stored in
  ``database.yaml`` into a design / a topology file.
- ``parse_topology`` reads a topology file into a design, or into problems
  that each name their line.
- ``render_diagram`` (text, 80 columns) and ``to_dot`` (Graphviz) draw a
  slice or a design.

The topology file (YAML)::

    topology_type: ring            # custom, linear, ring, star or mesh (optional)
    name: ring4                    # suggested slice name (optional)
    vms:
      - {name: vm1, flavor: cirros, data_interfaces: 2, internet: true}
      - {name: vm2, flavor: cirros, data_interfaces: 2}     # internet: false
    links:                         # optional
      - {vm1: vm1, if1: eth1, vm2: vm2, if2: eth1}

No IDs, hosts, ports, MACs or VLANs: importing makes a new slice that gets
its own.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Union

import yaml

import naming
from models import Flavor

MAX_DATA_INTERFACES = 8          # per VM: eth1..eth8 (the same limit as add_vm_to_slice)
MAX_LINKS = naming.POOL_SIZE     # one VLAN of the slice's 20-VLAN pool per link
TOPOLOGY_TYPES = ("custom", "linear", "ring", "star", "mesh")
TEMPLATES = ("linear", "ring", "star", "mesh")
MAX_TEXT = 1_000_000             # characters of a topology file

_IFNAME_RE = re.compile(r"eth(0|[1-9][0-9]*)")
_PLAIN_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")


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

def validate(design: Design) -> list[Problem]:
    """Every rule the product applies to a slice's VMs and links, checked on the whole design.

    Unique valid VM names, known flavors, 0-8 data interfaces, link ends that
    exist (eth1..ethN of the VM, never eth0), two different interfaces per
    link, each interface in at most one link, at most 20 links.  ``[]`` when
    the design can be created as it is.
    """
    return _validate(design, {})


def _validate(design: Design, lines: dict) -> list[Problem]:
    """``validate`` with the file line of each part (keys as written by ``_Reader``)."""
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
        problems.append(Problem(f"unknown topology_type {design.topology_type!r} ({', '.join(TOPOLOGY_TYPES)})",
                                at("topology_type")))
    if design.name is not None and not naming.valid_name(design.name):
        problems.append(Problem(f"invalid slice name {design.name!r}: {naming.NAME_RULE}", at("name")))
    return problems


def _check_vms(design: Design, at) -> list[Problem]:
    problems, first_with = [], {}
    for i, vm in enumerate(design.vms, 1):
        if not naming.valid_name(vm.name):
            problems.append(Problem(f"VM {i}: invalid name {vm.name!r}: {naming.NAME_RULE}", at("vm", i, "name")))
        elif vm.name in first_with:
            problems.append(Problem(f"VM {i}: the name {vm.name!r} is already used by VM {first_with[vm.name]}",
                                    at("vm", i, "name")))
        else:
            first_with[vm.name] = i
        who = f"VM {vm.name!r}" if naming.valid_name(vm.name) else f"VM {i}"
        if not isinstance(vm.flavor, str) or vm.flavor not in Flavor.FLAVORS:
            problems.append(Problem(f"{who}: unknown flavor {vm.flavor!r} ({', '.join(Flavor.names())})",
                                    at("vm", i, "flavor")))
        if not _is_int(vm.data_interfaces) or not 0 <= vm.data_interfaces <= MAX_DATA_INTERFACES:
            problems.append(Problem(f"{who}: data_interfaces must be between 0 and {MAX_DATA_INTERFACES} "
                                    f"(got {vm.data_interfaces!r})", at("vm", i, "data_interfaces")))
        if not isinstance(vm.internet, bool):
            problems.append(Problem(f"{who}: internet must be true or false (got {vm.internet!r})",
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
                                    f"({link.vm1} {link.if1} is at both ends)", at("link", j, "if2")))
            continue
        for vm, ifname, _, key_if in ends:
            if (vm, ifname) in used:
                problems.append(Problem(f"link {j}: {vm} {ifname} is already in link {used[vm, ifname]} "
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
        return f"VM {vm_name!r} does not exist"
    index = interface_index(ifname)
    if index is None:
        return f"{ifname!r} is not an interface name (eth1, eth2, ...)"
    if index == 0:
        return "eth0 cannot be in a link (links join data interfaces eth1 and above)"
    count = vms[vm_name].data_interfaces
    if _is_int(count) and 0 <= count <= MAX_DATA_INTERFACES and index > count:  # a bad count is reported already
        return f"VM {vm_name!r} has no {ifname} (it has {_data_range(count)})"
    return None


def interface_index(ifname: Any) -> Optional[int]:
    """3 for ``"eth3"``; None for anything that is not an interface name."""
    m = _IFNAME_RE.fullmatch(ifname) if isinstance(ifname, str) else None
    return int(m.group(1)) if m else None


def _data_range(count: int) -> str:
    if count <= 0:
        return "no data interfaces"
    return "only eth1" if count == 1 else f"eth1 to eth{count}"


def _is_int(value: Any) -> bool:
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
        raise TemplateError(f"Unknown template {kind!r} ({', '.join(TEMPLATES)})")
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
    if not _is_int(n):
        raise TemplateError("The number of VMs must be a whole number")
    low, high = template_sizes(kind)
    if n < low:
        raise TemplateError(f"A {shape.label} needs at least {low} VMs")
    if n > high:
        raise TemplateError(_too_big(shape, n, high))
    if flavor not in Flavor.FLAVORS:
        raise TemplateError(f"Unknown flavor {flavor!r} ({', '.join(Flavor.names())})")
    if not (isinstance(prefix, str) and naming.valid_name(f"{prefix}{n}") and naming.valid_name(f"{prefix}1")):
        raise TemplateError(f"Invalid VM name prefix {prefix!r}: names like {prefix}{n} must be {naming.NAME_RULE}")
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
        if not all(_is_int(k) for k in numbers):
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


# === export ====================================================================

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


def _data_interface_names(vm: dict) -> list[str]:
    return [i.get("name") for i in vm.get("interfaces") or []
            if (interface_index(i.get("name")) or 0) >= 1]


def _internet_vlan_of(vm: dict) -> Optional[int]:
    """The VLAN on the VM's eth0 (only ever the internet VLAN), or None."""
    eth0 = next((i for i in vm.get("interfaces") or [] if i.get("name") == "eth0"), None)
    return eth0.get("vlan_id") if eth0 else None


def design_from_slice(slice_dict: dict) -> Design:
    """The design of a slice as stored in ``database.yaml`` (IDs become names).

    Raises ``ExportError`` for a VM whose flavor matches no known flavor or
    a link to a VM that is not in the slice.
    """
    vms, names = [], {}
    for vm in slice_dict.get("vms") or []:
        flavor = flavor_name_of(vm.get("flavor_name") or vm.get("flavor"))
        if flavor is None:
            raise ExportError(f"VM {vm.get('name')!r}: its flavor matches none of {', '.join(Flavor.names())}")
        names[vm.get("vm_id")] = vm.get("name")
        vms.append(VMSpec(vm.get("name"), flavor, len(_data_interface_names(vm)),
                          _internet_vlan_of(vm) is not None))
    links = []
    for link in slice_dict.get("links") or []:
        for key in ("vm1_id", "vm2_id"):
            if link.get(key) not in names:
                raise ExportError(f"Link {link.get('link_id')}: VM {link.get(key)} is not in the slice")
        links.append(LinkSpec(names[link["vm1_id"]], link.get("vm1_interface"),
                              names[link["vm2_id"]], link.get("vm2_interface")))
    kind = slice_dict.get("topology_type", "custom")
    return Design(vms, links, kind if kind in TOPOLOGY_TYPES else "custom", slice_dict.get("name"))


def export_topology(slice_dict: dict) -> str:
    """The topology file of a stored slice (see ``design_to_yaml``); raises ``ExportError``."""
    design = design_from_slice(slice_dict)
    name = f"{slice_dict['name']} " if slice_dict.get("name") else ""
    return design_to_yaml(design, f"slice {name}({slice_dict.get('slice_id')})")


def design_to_yaml(design: Design, origin: Optional[str] = None) -> str:
    """A topology file for ``design``: a comment header, then one line per VM and per link.

    ``parse_topology(design_to_yaml(d))`` gives back ``d``.  ``origin`` (e.g.
    "slice lab1 (1000)") goes into the header.
    """
    out = _header(design, origin)
    out.append(f"topology_type: {_yaml_scalar(design.topology_type)}")
    if design.name is not None:
        out.append(f"name: {_yaml_scalar(design.name)}")
    out += _vm_lines(design.vms) + _link_lines_yaml(design.links)
    return "\n".join(out) + "\n"


def _header(design: Design, origin: Optional[str]) -> list[str]:
    made = f"Exported from {origin}: " if origin else ""
    return [
        "# Cloud Repositorio topology file.",
        f"# {made}{_count(len(design.vms), 'VM')}, {_count(len(design.links), 'link')}.",
        "# No IDs, hosts, ports, MACs or VLANs: importing it makes a new slice with its own.",
        "#",
        f"# vms:   name, flavor ({', '.join(Flavor.names())}), data_interfaces (0-{MAX_DATA_INTERFACES}: "
        "eth1..ethN),",
        f"#        internet (true: eth0 on the internet VLAN {naming.INTERNET_VLAN}; default false)",
        "# links: two data interfaces (eth1 and above) by VM name; an interface is in at most",
        f"#        one link; at most {MAX_LINKS} links (each gets a VLAN of the slice)",
        "",
    ]


def _vm_lines(vms: list[VMSpec]) -> list[str]:
    if not vms:
        return ["vms: []"]
    width = max(len(_yaml_scalar(vm.name)) for vm in vms) + 1
    return ["vms:"] + [
        f"  - {{name: {_yaml_scalar(vm.name) + ',':<{width}} flavor: {_yaml_scalar(vm.flavor)}, "
        f"data_interfaces: {vm.data_interfaces}, internet: {'true' if vm.internet else 'false'}}}"
        for vm in vms]


def _link_lines_yaml(links: list[LinkSpec]) -> list[str]:
    if not links:
        return ["links: []"]
    w1 = max(len(_yaml_scalar(link.vm1)) for link in links) + 1
    w2 = max(len(_yaml_scalar(link.if1)) for link in links) + 1
    w3 = max(len(_yaml_scalar(link.vm2)) for link in links) + 1
    return ["links:"] + [
        f"  - {{vm1: {_yaml_scalar(link.vm1) + ',':<{w1}} if1: {_yaml_scalar(link.if1) + ',':<{w2}} "
        f"vm2: {_yaml_scalar(link.vm2) + ',':<{w3}} if2: {_yaml_scalar(link.if2)}}}"
        for link in links]


def _yaml_scalar(value: Any) -> str:
    """``value`` as a YAML flow scalar that reads back as the same string (plain when it can be)."""
    text = str(value)
    if _PLAIN_RE.fullmatch(text) and yaml.safe_load(text) == text:
        return text
    return json.dumps(text)  # a JSON string is a YAML double-quoted scalar


def _count(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


# === import ====================================================================

_TOP_KEYS = ("topology_type", "name", "vms", "links")
_VM_KEYS = ("name", "flavor", "data_interfaces", "internet")
_LINK_KEYS = ("vm1", "if1", "vm2", "if2")
_VM_EXAMPLE = "{name: vm1, flavor: cirros, data_interfaces: 1, internet: false}"
_LINK_EXAMPLE = "{vm1: vm1, if1: eth1, vm2: vm2, if2: eth1}"


def parse_topology(text: str) -> tuple[Optional[Design], list[Problem]]:
    """Read a topology file: ``(design, [])``, or ``(None, problems)`` each naming its line.

    Checks the YAML, the keys (unknown ones are refused), the value types,
    then every rule of ``validate``.  Creates nothing: the caller makes the
    slice only when there are no problems.
    """
    if not isinstance(text, str):
        return None, [Problem("a topology file must be text")]
    if len(text) > MAX_TEXT:
        return None, [Problem(f"the file is too large ({len(text)} characters; at most {MAX_TEXT})")]
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        return None, [_yaml_problem(e)]
    except RecursionError:  # PyYAML composes nested collections recursively
        return None, [Problem("not valid YAML: nested too deeply", 1)]
    if root is None:
        return None, [Problem(f"the file is empty: expected topology_type, vms and links, e.g. vms: [{_VM_EXAMPLE}]",
                              1)]
    reader = _Reader()
    design = reader.design(root)
    if reader.problems:
        return None, sorted(reader.problems, key=lambda p: p.line or 0)
    problems = _validate(design, reader.lines)
    return (None, problems) if problems else (design, [])


def _yaml_problem(error: yaml.YAMLError) -> Problem:
    mark = getattr(error, "problem_mark", None)
    reason = ": ".join(str(x) for x in (getattr(error, "context", None), getattr(error, "problem", None)) if x)
    return Problem(f"not valid YAML: {reason or error}", mark.line + 1 if mark else 1)


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


_NOT_SCALAR = object()
_UNKNOWN_TAG = object()


class _Reader:
    """Walks the composed YAML nodes into a Design, noting each part's line and every structural problem."""

    def __init__(self):
        self.problems: list[Problem] = []
        self.lines: dict[tuple, int] = {}
        self._constructor = yaml.constructor.SafeConstructor()

    def fail(self, node: yaml.Node, message: str) -> None:
        self.problems.append(Problem(message, _line(node)))

    def value(self, node: yaml.Node) -> Any:
        """The Python value of a scalar node, or ``_NOT_SCALAR``."""
        if not isinstance(node, yaml.ScalarNode):
            return _NOT_SCALAR
        try:
            return self._constructor.construct_object(node, deep=True)
        except yaml.YAMLError:
            return _UNKNOWN_TAG

    def mapping(self, node: yaml.Node, what: str, allowed: tuple, required: tuple,
                example: str) -> Optional[dict]:
        """{key: value node} of a mapping with only ``allowed`` keys, or None (problem noted)."""
        if not isinstance(node, yaml.MappingNode):
            self.fail(node, f"{what} must be a mapping like {example}")
            return None
        found: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            key = self.value(key_node)
            if not isinstance(key, str) or key not in allowed:
                shown = key_node.value if isinstance(key_node, yaml.ScalarNode) else "(not a name)"
                self.fail(key_node, f"{what}: unknown key {shown!r} (allowed: {', '.join(allowed)})")
            elif key in found:
                self.fail(key_node, f"{what}: {key} is given twice")
            else:
                found[key] = value_node
        missing = [k for k in required if k not in found]
        if missing:
            self.fail(node, f"{what}: missing {', '.join(missing)}")
            return None
        return found

    def typed(self, node: yaml.Node, what: str, kind: type) -> Any:
        """The scalar value of ``node`` when it has type ``kind`` (bool is not an int), else None."""
        value = self.value(node)
        if type(value) is kind:
            return value
        expected = {str: "text", int: "a whole number", bool: "true or false"}[kind]
        hint = f" (to mean the text, quote it: '{node.value}')" if kind is str and isinstance(value, bool) else ""
        self.fail(node, f"{what} must be {expected}, not {_describe(node, value)}{hint}")
        return None

    def sequence(self, node: yaml.Node, what: str, example: str) -> list:
        if isinstance(node, yaml.ScalarNode) and self.value(node) is None:
            return []
        if not isinstance(node, yaml.SequenceNode):
            self.fail(node, f"{what} must be a list, e.g. {what}: [{example}]")
            return []
        return node.value

    def design(self, root: yaml.Node) -> Optional[Design]:
        top = self.mapping(root, "the file", _TOP_KEYS, ("vms",), f"vms: [{_VM_EXAMPLE}]")
        if top is None:
            return None
        kind, name = "custom", None
        if "topology_type" in top:
            self.lines["topology_type",] = _line(top["topology_type"])
            kind = self.typed(top["topology_type"], "topology_type", str)
        if "name" in top:
            self.lines["name",] = _line(top["name"])
            name = self.typed(top["name"], "name", str)
        vms = [self.vm(i, node) for i, node in enumerate(self.sequence(top["vms"], "vms", _VM_EXAMPLE), 1)]
        links = [self.link(j, node) for j, node in
                 enumerate(self.sequence(top["links"], "links", _LINK_EXAMPLE) if "links" in top else [], 1)]
        return Design(vms, links, kind, name)

    def vm(self, i: int, node: yaml.Node) -> Optional[VMSpec]:
        self.lines["vm", i] = _line(node)
        fields = self.mapping(node, f"VM {i}", _VM_KEYS, ("name", "flavor", "data_interfaces"), _VM_EXAMPLE)
        if fields is None:
            return None
        for key, value_node in fields.items():
            self.lines["vm", i, key] = _line(value_node)
        name = self.typed(fields["name"], f"VM {i}: name", str)
        flavor = self.typed(fields["flavor"], f"VM {i}: flavor", str)
        count = self.typed(fields["data_interfaces"], f"VM {i}: data_interfaces", int)
        internet = self.typed(fields["internet"], f"VM {i}: internet", bool) if "internet" in fields else False
        return VMSpec(name, flavor, count, internet)

    def link(self, j: int, node: yaml.Node) -> Optional[LinkSpec]:
        self.lines["link", j] = _line(node)
        fields = self.mapping(node, f"link {j}", _LINK_KEYS, _LINK_KEYS, _LINK_EXAMPLE)
        if fields is None:
            return None
        for key, value_node in fields.items():
            self.lines["link", j, key] = _line(value_node)
        return LinkSpec(*(self.typed(fields[k], f"link {j}: {k}", str) for k in _LINK_KEYS))


def _describe(node: yaml.Node, value: Any) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if value is _UNKNOWN_TAG:
        return f"a value tagged {node.tag!r}"
    if value is None:
        return "empty"
    if isinstance(value, bool):
        return f"{node.value} (true/false)"
    if isinstance(value, (int, float)):
        return f"the number {node.value}"
    return f"{node.value!r}"


# === pictures ==================================================================

@dataclass
class _VMView:
    name: str
    flavor: str
    data_interfaces: list[str]
    internet_vlan: Optional[int]


@dataclass
class _LinkView:
    number: int
    a: Optional[int]          # VM index, None when the VM is unknown
    if_a: str
    b: Optional[int]
    if_b: str
    vlan: Optional[int]


@dataclass
class _View:
    title: str
    graph_name: str
    vms: list[_VMView]
    links: list[_LinkView]


@dataclass(frozen=True)
class _Glyphs:
    v: str
    h: str
    left: str
    right: str
    bus: str
    drop: str
    joins: str
    cut: str


_GLYPHS = {
    "ascii": _Glyphs("|", "-", "+", "+", "=", "+", "--", "~"),
    "unicode": _Glyphs("│", "─", "├", "┤", "═", "╤", "──", "…"),
}


def _view_of(source: Union[Design, dict]) -> _View:
    if isinstance(source, Design):
        return _design_view(source)
    if isinstance(source, dict):
        return _slice_view(source)
    raise TypeError("expected a Design or a slice dict")


def _design_view(design: Design) -> _View:
    index = {}
    for i, vm in enumerate(design.vms):
        index.setdefault(vm.name, i)
    vms = [_VMView(str(vm.name), str(vm.flavor),
                   [f"eth{k}" for k in range(1, vm.data_interfaces + 1)] if _is_int(vm.data_interfaces) else [],
                   naming.INTERNET_VLAN if vm.internet else None) for vm in design.vms]
    links = [_LinkView(j, index.get(link.vm1), str(link.if1), index.get(link.vm2), str(link.if2), None)
             for j, link in enumerate(design.links, 1)]
    what = f"Topology {design.name}" if design.name else "Topology"
    title = f"{what} ({design.topology_type}): {_count(len(vms), 'VM')}, {_count(len(links), 'link')}"
    return _View(title, design.name or "topology", vms, links)


def _slice_view(s: dict) -> _View:
    stored = s.get("vms") or []
    index = {vm.get("vm_id"): i for i, vm in enumerate(stored)}
    vms = [_VMView(str(vm.get("name")), flavor_name_of(vm.get("flavor_name") or vm.get("flavor")) or "?",
                   _data_interface_names(vm), _internet_vlan_of(vm)) for vm in stored]
    links = [_LinkView(int(link.get("link_id") or j), index.get(link.get("vm1_id")), str(link.get("vm1_interface")),
                       index.get(link.get("vm2_id")), str(link.get("vm2_interface")), link.get("vlan_id"))
             for j, link in enumerate(s.get("links") or [], 1)]
    sid, name = s.get("slice_id"), s.get("name")
    about = f"{s.get('topology_type', 'custom')}, {s.get('status', '?')}"
    title = (f"Slice {name} ({sid}, {about})" if name else f"Slice {sid} ({about})") + \
        f": {_count(len(vms), 'VM')}, {_count(len(links), 'link')}"
    return _View(title, str(name or f"slice {sid}"), vms, links)


def render_diagram(source: Union[Design, dict], width: int = 80, charset: str = "ascii") -> list[str]:
    """Text lines picturing a slice dict (as stored) or a Design, none longer than ``width``.

    VMs stand in a row (name, flavor); the internet VLAN is a bus above the
    VMs that use it; each link is a horizontal line between two VM columns,
    labelled with its VLAN (a design has none yet: its link number), packed
    into as few rows as the links allow.  Below: every link with its
    interfaces, and the data interfaces no link uses.  ``charset``:
    ``"ascii"`` (any terminal) or ``"unicode"`` (box-drawing characters).
    """
    g = _GLYPHS[charset]
    view = _view_of(source)
    out = [view.title]
    if not view.vms:
        out.append("(no VMs)")
    else:
        out += [""] + _picture(view, width, g) + [""]
        out += _link_list(view, width, g) + _free_list(view)
    return [_clip(line, width, g) for line in out]


def _clip(line: str, width: int, g: _Glyphs) -> str:
    return line if len(line) <= width else line[:max(0, width - 1)] + g.cut


def _picture(view: _View, width: int, g: _Glyphs) -> list[str]:
    n = len(view.vms)
    fit = width // n
    longest = max(len(vm.name) for vm in view.vms)
    col = min(max(8, longest + 2), fit)
    use_numbers = longest > col - 1
    if use_numbers:
        col = min(max(8, len(str(n)) + 2), fit)
    if col < len(str(n)) + 2 or col < 3:
        return [f"(too many VMs to draw in {width} columns: see the links below)"]
    centers = [i * col + col // 2 for i in range(n)]
    total = n * col
    labels = [str(i + 1) if use_numbers else vm.name for i, vm in enumerate(view.vms)]
    rows = _internet_rows(view, centers, total, g)
    rows.append(_centered(labels, centers, total))
    rows.append(_centered([vm.flavor[:col - 1] for vm in view.vms], centers, total))
    rows.append(_verticals(centers, total, g))
    rows += _arc_rows(view, centers, total, g)
    if use_numbers:
        rows += [""] + [f"{i:>3}  {vm.name}" for i, vm in enumerate(view.vms, 1)]
    return [r.rstrip() for r in rows]


def _internet_rows(view: _View, centers: list[int], total: int, g: _Glyphs) -> list[str]:
    users = [i for i, vm in enumerate(view.vms) if vm.internet_vlan is not None]
    if not users:
        return ["(no VM has internet)"]
    vlans = sorted({view.vms[i].internet_vlan for i in users})
    label = f"internet (VLAN {', '.join(str(v) for v in vlans)}): " + ", ".join(view.vms[i].name for i in users)
    bus = [" "] * total
    for x in range(centers[users[-1]] + 1):
        bus[x] = g.bus
    drops = [" "] * total
    for i in users:
        bus[centers[i]] = g.drop
        drops[centers[i]] = g.v
    return [label, "".join(bus), "".join(drops)]


def _centered(labels: list[str], centers: list[int], total: int) -> str:
    row = [" "] * total
    for text, c in zip(labels, centers):
        start = max(0, c - len(text) // 2)
        row[start:start + len(text)] = list(text)
    return "".join(row)[:total]


def _verticals(centers: list[int], total: int, g: _Glyphs) -> str:
    row = [" "] * total
    for c in centers:
        row[c] = g.v
    return "".join(row)


def _arc_rows(view: _View, centers: list[int], total: int, g: _Glyphs) -> list[str]:
    """One text row per group of links whose spans do not touch (greedy interval colouring)."""
    arcs = sorted(((min(link.a, link.b), max(link.a, link.b), link) for link in view.links
                   if link.a is not None and link.b is not None and link.a != link.b),
                  key=lambda arc: (arc[0], arc[1], arc[2].number))
    groups: list[list] = []
    for lo, hi, link in arcs:
        group = next((grp for grp in groups if grp[-1][1] < lo), None)
        if group is None:
            groups.append([(lo, hi, link)])
        else:
            group.append((lo, hi, link))
    groups.sort(key=lambda grp: sum(hi - lo for lo, hi, _ in grp) / len(grp))  # long links at the bottom
    rows = []
    for group in groups:
        row = list(_verticals(centers, total, g))
        for lo, hi, link in group:
            _draw_arc(row, centers[lo], centers[hi], _arc_label(link), g)
        rows.append("".join(row))
    return rows


def _arc_label(link: _LinkView) -> str:
    return str(link.vlan) if link.vlan is not None else f"#{link.number}"


def _draw_arc(row: list, x1: int, x2: int, label: str, g: _Glyphs) -> None:
    row[x1], row[x2] = g.left, g.right
    for x in range(x1 + 1, x2):
        row[x] = g.h  # crossing another VM's column: the line goes over it (that VM is not on this link)
    inner = x2 - x1 - 1
    if len(label) + 2 <= inner:
        start = x1 + 1 + (inner - len(label)) // 2
        row[start:start + len(label)] = list(label)


def _link_list(view: _View, width: int, g: _Glyphs) -> list[str]:
    if not view.links:
        return ["No links."]

    def name(index: Optional[int]) -> str:
        return view.vms[index].name if index is not None else "?"

    tags = [f"VLAN {link.vlan}" if link.vlan is not None else f"link {link.number}" for link in view.links]
    tag_w = max(len(t) for t in tags)
    if_w = max(len(link.if_a) for link in view.links)
    room = max(4, (width - (2 + tag_w + 2 + 1 + if_w + 1 + len(g.joins) + 1 + 1 + 6)) // 2)
    left = [_shorten(name(link.a), room, g) for link in view.links]
    right = [_shorten(name(link.b), room, g) for link in view.links]
    name_w = max(len(x) for x in left)
    out = ["Links:"]
    for tag, a, b, link in zip(tags, left, right, view.links):
        loop = "  (both ends on one VM)" if link.a is not None and link.a == link.b else ""
        out.append(f"  {tag:<{tag_w}}  {a:>{name_w}} {link.if_a:<{if_w}} {g.joins} {b} {link.if_b}{loop}")
    return out


def _shorten(text: str, room: int, g: _Glyphs) -> str:
    return text if len(text) <= room else text[:room - 1] + g.cut


def _free_list(view: _View) -> list[str]:
    used = set()
    for link in view.links:
        used.add((link.a, link.if_a))
        used.add((link.b, link.if_b))
    free = [f"{vm.name} {ifname}" for i, vm in enumerate(view.vms) for ifname in vm.data_interfaces
            if (i, ifname) not in used]
    return [f"Data interfaces in no link: {', '.join(free)}"] if free else []


def to_dot(source: Union[Design, dict]) -> str:
    """Graphviz DOT of a slice dict or a Design: VMs (name and flavor), links, the internet.

    Each link is an edge labelled with its VLAN (or link number) and the
    interface at each end; each internet VLAN is a node joined to its VMs' eth0.
    """
    view = _view_of(source)
    out = [f"graph {_dot_string(view.graph_name)} {{",
           f"  graph [label={_dot_string(view.title)}, labelloc=t, fontsize=12];",
           "  graph [nodesep=0.8, ranksep=0.9];",
           "  node [shape=box, style=rounded];",
           "  edge [fontsize=10, labelfontsize=9, labeldistance=2.2, labelangle=30];"]
    for i, vm in enumerate(view.vms):
        out.append(f"  n{i + 1} [label={_dot_string(vm.name + chr(10) + vm.flavor)}];")
    for vlan in sorted({vm.internet_vlan for vm in view.vms if vm.internet_vlan is not None}):
        out.append(f"  internet{vlan} [shape=ellipse, label={_dot_string(f'internet{chr(10)}VLAN {vlan}')}];")
    for i, vm in enumerate(view.vms):
        if vm.internet_vlan is not None:
            out.append(f"  n{i + 1} -- internet{vm.internet_vlan} [label=\"eth0\", style=dashed];")
    for link in view.links:
        if link.a is None or link.b is None:
            continue
        label = f"VLAN {link.vlan}" if link.vlan is not None else f"link {link.number}"
        out.append(f"  n{link.a + 1} -- n{link.b + 1} [label={_dot_string(label)}, "
                   f"taillabel={_dot_string(link.if_a)}, headlabel={_dot_string(link.if_b)}];")
    out.append("}")
    return "\n".join(out) + "\n"


def _dot_string(text: str) -> str:
    """A DOT double-quoted string (a newline becomes DOT's centred line break)."""
    escaped = str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'
