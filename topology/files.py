"""Topology files: a slice or a design written as YAML (export), and read back (import).  Pure: no I/O.

The topology file (YAML)::

    topology_type: ring            # custom, linear, ring, star or mesh (optional)
    name: ring4                    # suggested slice name (optional)
    vms:
      - {name: vm1, flavor: cirros, data_interfaces: 2, internet: true}
      - {name: vm2, flavor: cirros, data_interfaces: 2}     # internet: false
    links:                         # optional
      - {vm1: vm1, if1: eth1, vm2: vm2, if2: eth1}

No IDs, hosts, ports, MACs or VLANs: importing makes a new slice that gets
its own.  ``parse_topology`` reads a file into a design, or into problems
that each name their line; ``export_topology`` / ``design_to_yaml`` write one.
"""
from __future__ import annotations

import json
import re
from typing import Any, Optional

import yaml

import naming
from models import Flavor
from store.text import clip, excerpt, terminal_safe, word
from store.yamlcheck import anchor_problem
from topology.model import (
    MAX_DATA_INTERFACES,
    MAX_LINKS,
    TOPOLOGY_TYPES,
    Design,
    ExportError,
    LinkSpec,
    Problem,
    VMSpec,
    data_interface_names,
    flavor_name_of,
    internet_vlan_of,
    plural,
    validate,
)

MAX_TEXT = 1_000_000             # characters of a topology file

_PLAIN_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")


# === export ====================================================================

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
        vms.append(VMSpec(vm.get("name"), flavor, len(data_interface_names(vm)),
                          internet_vlan_of(vm) is not None))
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
        f"# {made}{plural(len(design.vms), 'VM')}, {plural(len(design.links), 'link')}.",
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
    refused = anchor_problem(text, yaml.SafeLoader)
    if refused:
        return None, [Problem(refused.message, refused.line)]
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
    problems = validate(design, reader.lines)
    return (None, problems) if problems else (design, [])


def yaml_reason(error: yaml.YAMLError) -> str:
    """PyYAML's reason for refusing a text, without its quote of the text (only PyYAML's own words)."""
    reason = ": ".join(str(x) for x in (getattr(error, "context", None), getattr(error, "problem", None)) if x)
    return terminal_safe(reason, keep="")[:120] or "a syntax error"


def _yaml_problem(error: yaml.YAMLError) -> Problem:
    mark = getattr(error, "problem_mark", None)
    return Problem(f"not valid YAML: {yaml_reason(error)}", mark.line + 1 if mark else 1)


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
                shown = word(key_node.value) if isinstance(key_node, yaml.ScalarNode) else None
                self.fail(key_node, f"{what}: unknown key{' ' + shown if shown else ''} "
                                    f"(allowed: {', '.join(allowed)})")
            elif key in found:
                self.fail(key_node, f"{what}: {key} is given twice (first on line {_line(found[key])})")
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
        hint = f" (to mean the text, quote it: {excerpt(node.value)})" if kind is str and isinstance(value, bool) \
            else ""
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
        return f"a value tagged {excerpt(node.tag)}"
    if value is None:
        return "empty"
    if isinstance(value, bool):
        return f"{clip(node.value)} (true/false)"
    if isinstance(value, (int, float)):
        return f"the number {clip(node.value)}"
    return excerpt(node.value)
