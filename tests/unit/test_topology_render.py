"""topology_render.py: the text diagram and Graphviz DOT of slices and designs."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from topology import model as t
from topology import render as r
from topology.model import Design, LinkSpec, VMSpec

# --- text diagram ----------------------------------------------------------------

def deployed_slice(design: Design, first_vlan: int = 100) -> dict:
    """A slice dict as the API stores it for ``design`` (VLANs in link order, internet on eth0)."""
    vms = []
    for i, vm in enumerate(design.vms):
        eth0 = {"name": "eth0", "vlan_id": 400 if vm.internet else None, "mac": f"52:54:00:00:{i:02x}:00",
                "ip_config": None, "link_id": None}
        data = [{"name": f"eth{k}", "vlan_id": None, "mac": None, "ip_config": None, "link_id": None}
                for k in range(1, vm.data_interfaces + 1)]
        vms.append({"vm_id": 2001 + i, "name": vm.name, "worker_ip": "10.9.0.11", "vnc_port": 5901 + i,
                    "status": "running", "flavor": {"cores": 1, "ram_gb": 0.5, "disk_gb": 1, "image": "/i"},
                    "interfaces": [eth0] + data})
    ids = {vm["name"]: vm["vm_id"] for vm in vms}
    links = [{"link_id": j, "vlan_id": first_vlan + j - 1, "vm1_id": ids[x.vm1], "vm1_interface": x.if1,
              "vm2_id": ids[x.vm2], "vm2_interface": x.if2} for j, x in enumerate(design.links, 1)]
    return {"slice_id": 2000, "owner": "admin", "name": "lab", "topology_type": design.topology_type,
            "status": "running", "vms": vms, "links": links, "networks": []}


def drawn_links(lines: list[str]) -> set:
    """The links the ASCII picture draws: {(left VM, right VM, label)} read back from the columns."""
    names_at = next(i for i, line in enumerate(lines) if line.split() and line.split()[0] in ("vm1", "r1", "1"))
    columns = [i for i, ch in enumerate(lines[names_at + 2]) if ch == "|"]
    names = lines[names_at].split()
    found = set()
    for line in lines[names_at + 3:]:
        if not line.strip():
            break
        ends = [i for i, ch in enumerate(line) if ch == "+"]
        for x1, x2 in zip(ends[::2], ends[1::2]):
            label = line[x1 + 1:x2].strip("-")
            found.add((names[columns.index(x1)], names[columns.index(x2)], label))
    return found


@pytest.mark.parametrize("design", [t.ring(6, internet="first"), t.star(5), t.mesh(4, internet="all"),
                                    t.linear(10, internet="1,10"), t.star(9), t.mesh(6), t.ring(10)])
def test_the_picture_draws_exactly_the_links(design):
    s = deployed_slice(design)
    lines = r.render_diagram(s)
    expected = set()
    for link in s["links"]:
        a, b = sorted([link["vm1_id"], link["vm2_id"]])
        expected.add((f"vm{a - 2000}", f"vm{b - 2000}", str(link["vlan_id"])))
    assert drawn_links(lines) == expected
    assert all(len(line) <= 80 for line in lines)
    for link in s["links"]:  # the list gives each link's interfaces
        assert any(line.split()[:2] == ["VLAN", str(link["vlan_id"])] and f"-- vm{link['vm2_id'] - 2000} "
                   f"{link['vm2_interface']}" in line for line in lines)


def test_picture_of_a_design_labels_link_numbers():
    lines = r.render_diagram(t.ring(4))
    assert drawn_links(lines) == {("vm1", "vm2", "#1"), ("vm2", "vm3", "#2"), ("vm3", "vm4", "#3"),
                                  ("vm1", "vm4", "#4")}
    assert "  link 4  vm4 eth2 -- vm1 eth2" in lines
    assert lines[0] == "Topology (ring): 4 VMs, 4 links"


def test_internet_is_a_bus_above_the_vms_that_have_it():
    lines = r.render_diagram(deployed_slice(t.linear(3, internet="1,3")))
    assert lines[2] == "internet (VLAN 400): vm1, vm3"
    assert lines[3] == "====+===============+"
    assert lines[4] == "    |               |"
    assert lines[5] == "   vm1     vm2     vm3"
    assert "(no VM has internet)" in r.render_diagram(t.linear(3))


def test_free_interfaces_are_listed():
    d = Design([VMSpec("a", "cirros", 2), VMSpec("b", "ubuntu", 1)], [LinkSpec("a", "eth2", "b", "eth1")])
    assert r.render_diagram(d)[-1] == "Data interfaces in no link: a eth1"


def names_of(n: int, length: int) -> list[str]:
    return [f"v{i:02d}" + "x" * (length - 3) for i in range(1, n + 1)]


@pytest.mark.parametrize("length", [1, 3, 7, 12, 32])
@pytest.mark.parametrize("n", range(1, 11))
@pytest.mark.parametrize("charset", ["ascii", "unicode"])
def test_diagram_fits_80_columns(n, length, charset):
    names = names_of(n, max(length, 3))
    vms = [VMSpec(name, "ubuntu", 8, i % 2 == 0) for i, name in enumerate(names)]
    ends = [(vm.name, f"eth{k}") for k in range(1, 9) for vm in vms]
    links = [LinkSpec(*ends[2 * j], *ends[2 * j + 1]) for j in range(min(20, len(ends) // 2))]
    design = Design(vms, links, "custom", "s" * 32)
    for source in (design, deployed_slice(design, first_vlan=4075)):
        lines = r.render_diagram(source, charset=charset)
        assert all(len(line) <= 80 for line in lines), "\n".join(lines)
        if charset == "ascii":
            assert all(line.isascii() for line in lines)
        assert lines[2].startswith("internet (VLAN 400): ")  # the picture is there
        text = "\n".join(lines)
        assert all(name in text for name in names)


def test_long_names_become_numbers_with_a_legend():
    names = names_of(8, 20)
    lines = r.render_diagram(Design([VMSpec(name, "cirros", 1) for name in names],
                                    [LinkSpec(names[0], "eth1", names[7], "eth1")]))
    assert [str(i) for i in range(1, 9)] in [line.split() for line in lines]
    assert all(f"{i:>3}  {name}" in lines for i, name in enumerate(names, 1))


def test_too_many_vms_to_draw_still_lists_everything_within_the_width():
    vms = [VMSpec(f"vm{i}", "cirros", 0) for i in range(1, 31)]
    lines = r.render_diagram(Design(vms, []), width=80)
    assert "(too many VMs to draw in 80 columns: see the links below)" in lines
    assert all(len(line) <= 80 for line in lines)
    lines = r.render_diagram(Design(vms[:10], []), width=40)
    assert all(len(line) <= 40 for line in lines)


def test_diagram_of_odd_slices_does_not_fail():
    assert r.render_diagram({"slice_id": 1, "vms": [], "links": []}) == [
        "Slice 1 (custom, ?): 0 VMs, 0 links", "(no VMs)"]
    s = deployed_slice(t.linear(2))
    s["links"].append({"link_id": 2, "vlan_id": 101, "vm1_id": 2001, "vm1_interface": "eth1", "vm2_id": 77,
                       "vm2_interface": "eth9"})
    s["vms"][1]["flavor"] = {"cores": 7}
    lines = r.render_diagram(s)
    assert "  VLAN 101  vm1 eth1 -- ? eth9" in lines
    assert ["cirros", "?"] in [line.split() for line in lines]


# --- DOT -------------------------------------------------------------------------

def test_dot_has_every_vm_link_and_the_internet():
    s = deployed_slice(t.ring(4, internet="1,3"))
    dot = r.to_dot(s)
    for i in range(1, 5):
        assert f'  n{i} [label="vm{i}\\ncirros"];' in dot
    assert '  internet400 [shape=ellipse, label="internet\\nVLAN 400"];' in dot
    assert '  n1 -- internet400 [label="eth0", style=dashed];' in dot
    assert '  n3 -- internet400 [label="eth0", style=dashed];' in dot
    assert dot.count(" -- internet400") == 2
    assert '  n4 -- n1 [label="VLAN 103", taillabel="eth2", headlabel="eth2"];' in dot
    assert dot.count(" -- n") == 4
    assert dot.startswith('graph "lab" {\n') and dot.endswith("}\n")


def test_dot_of_a_design_labels_link_numbers():
    assert '  n1 -- n2 [label="link 1", taillabel="eth1", headlabel="eth1"];' in r.to_dot(t.linear(2))


def plain_graph(dot: str) -> tuple:
    """(nodes, edges) as Graphviz itself reads them (``dot -Tplain``)."""
    out = subprocess.run(["dot", "-Tplain"], input=dot, capture_output=True, text=True, timeout=60, check=True)
    rows = [line.split() for line in out.stdout.splitlines()]
    return ({r[1] for r in rows if r[0] == "node"}, sorted(tuple(sorted(r[1:3])) for r in rows if r[0] == "edge"))


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz (dot) is not installed")
@pytest.mark.parametrize("design", [t.mesh(4, internet="all"), t.star(9, internet="first"), t.linear(10)])
def test_graphviz_reads_the_dot(design):
    nodes, edges = plain_graph(r.to_dot(deployed_slice(design)))
    n = len(design.vms)
    internet = [f"n{i}" for i, vm in enumerate(design.vms, 1) if vm.internet]
    assert nodes == {f"n{i}" for i in range(1, n + 1)} | ({"internet400"} if internet else set())
    index = {vm.name: i for i, vm in enumerate(design.vms, 1)}
    expected = [tuple(sorted((f"n{index[x.vm1]}", f"n{index[x.vm2]}"))) for x in design.links]
    assert edges == sorted(expected + [tuple(sorted((v, "internet400"))) for v in internet])


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz (dot) is not installed")
def test_graphviz_reads_names_that_need_escaping():
    s = deployed_slice(t.linear(2))
    s["name"] = 'my "lab" \\ one'
    s["vms"][0]["name"] = 'a"b'
    nodes, edges = plain_graph(r.to_dot(s))
    assert nodes == {"n1", "n2"} and edges == [("n1", "n2")]
