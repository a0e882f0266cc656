"""Pictures of a slice or a design: a text diagram for the terminal and Graphviz DOT.  Pure: no I/O.

``render_diagram`` draws the VMs in a row, the internet VLAN as a bus above
the VMs that use it and each link as a line between two VM columns labelled
with its VLAN, within 80 columns for up to 10 VMs; ``to_dot`` writes the
same graph for Graphviz (reports).  Every name is drawn through
``store.text.terminal_safe`` (control characters escaped) before the layout
measures it, so a name from a file can neither drive the terminal nor break
the boxes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import naming
from store.text import terminal_safe
from topology.model import Design, data_interface_names, flavor_name_of, internet_vlan_of, is_whole_number, plural


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


def _shown(value) -> str:
    """A name as drawn: text with every control character escaped (one line, whatever it held)."""
    return terminal_safe(str(value), keep="")


def _design_view(design: Design) -> _View:
    index = {}
    for i, vm in enumerate(design.vms):
        index.setdefault(vm.name, i)
    vms = [_VMView(_shown(vm.name), _shown(vm.flavor),
                   [f"eth{k}" for k in range(1, vm.data_interfaces + 1)] if is_whole_number(vm.data_interfaces) else [],
                   naming.INTERNET_VLAN if vm.internet else None) for vm in design.vms]
    links = [_LinkView(j, index.get(link.vm1), _shown(link.if1), index.get(link.vm2), _shown(link.if2), None)
             for j, link in enumerate(design.links, 1)]
    what = f"Topology {_shown(design.name)}" if design.name else "Topology"
    title = f"{what} ({_shown(design.topology_type)}): {plural(len(vms), 'VM')}, {plural(len(links), 'link')}"
    return _View(title, _shown(design.name) if design.name else "topology", vms, links)


def _slice_view(s: dict) -> _View:
    stored = s.get("vms") or []
    index = {vm.get("vm_id"): i for i, vm in enumerate(stored)}
    vms = [_VMView(_shown(vm.get("name")), _shown(flavor_name_of(vm.get("flavor_name") or vm.get("flavor")) or "?"),
                   [_shown(n) for n in data_interface_names(vm)], internet_vlan_of(vm)) for vm in stored]
    links = [_LinkView(int(link.get("link_id") or j), index.get(link.get("vm1_id")),
                       _shown(link.get("vm1_interface")), index.get(link.get("vm2_id")),
                       _shown(link.get("vm2_interface")), link.get("vlan_id"))
             for j, link in enumerate(s.get("links") or [], 1)]
    sid, name = s.get("slice_id"), (_shown(s["name"]) if s.get("name") else None)
    about = f"{_shown(s.get('topology_type', 'custom'))}, {_shown(s.get('status', '?'))}"
    title = (f"Slice {name} ({sid}, {about})" if name else f"Slice {sid} ({about})") + \
        f": {plural(len(vms), 'VM')}, {plural(len(links), 'link')}"
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
