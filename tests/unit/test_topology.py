"""topology.py: the design model, templates and validation."""
from __future__ import annotations

import pytest

from topology import model as t
from topology.model import Design, LinkSpec, TemplateError, VMSpec


def links_of(design: Design) -> list[tuple]:
    return [(x.vm1, x.if1, x.vm2, x.if2) for x in design.links]


# --- templates ------------------------------------------------------------------

def test_ring_of_4():
    d = t.ring(4)
    assert d.topology_type == "ring"
    assert d.vms == [VMSpec(f"vm{i}", "cirros", 2, False) for i in range(1, 5)]
    assert links_of(d) == [("vm1", "eth1", "vm2", "eth1"), ("vm2", "eth2", "vm3", "eth1"),
                           ("vm3", "eth2", "vm4", "eth1"), ("vm4", "eth2", "vm1", "eth2")]


def test_star_of_5_vm1_is_the_hub():
    d = t.star(5, flavor="ubuntu", internet="first")
    assert d.topology_type == "star"
    assert d.vms == [VMSpec("vm1", "ubuntu", 4, True)] + [VMSpec(f"vm{i}", "ubuntu", 1, False) for i in range(2, 6)]
    assert links_of(d) == [("vm1", f"eth{k}", f"vm{k + 1}", "eth1") for k in range(1, 5)]


def test_mesh_of_4_joins_every_pair_once():
    d = t.mesh(4, prefix="r")
    assert d.topology_type == "mesh"
    assert [vm.name for vm in d.vms] == ["r1", "r2", "r3", "r4"]
    assert all(vm.data_interfaces == 3 for vm in d.vms)
    assert links_of(d) == [("r1", "eth1", "r2", "eth1"), ("r1", "eth2", "r3", "eth1"), ("r1", "eth3", "r4", "eth1"),
                           ("r2", "eth2", "r3", "eth2"), ("r2", "eth3", "r4", "eth2"), ("r3", "eth3", "r4", "eth3")]


def test_linear_of_3():
    d = t.linear(3, internet="all")
    assert d.topology_type == "linear"
    assert d.vms == [VMSpec("vm1", "cirros", 1, True), VMSpec("vm2", "cirros", 2, True),
                     VMSpec("vm3", "cirros", 1, True)]
    assert links_of(d) == [("vm1", "eth1", "vm2", "eth1"), ("vm2", "eth2", "vm3", "eth1")]


@pytest.mark.parametrize("kind", t.TEMPLATES)
def test_every_buildable_size_is_valid(kind):
    low, high = t.template_sizes(kind)
    for n in range(low, high + 1):
        d = t.build_template(kind, n)
        assert len(d.vms) == n
        assert t.validate(d) == [], (kind, n)
        used = [(x.vm1, x.if1) for x in d.links] + [(x.vm2, x.if2) for x in d.links]
        assert sorted(used) == sorted((vm.name, f"eth{k}") for vm in d.vms
                                      for k in range(1, vm.data_interfaces + 1))  # every interface, once


def test_template_sizes():
    assert {k: t.template_sizes(k) for k in t.TEMPLATES} == {
        "linear": (2, 21), "ring": (3, 20), "star": (2, 9), "mesh": (2, 6)}


@pytest.mark.parametrize("call,message", [
    (lambda: t.ring(2), "A ring needs at least 3 VMs"),
    (lambda: t.linear(1), "A linear topology needs at least 2 VMs"),
    (lambda: t.mesh(7), "A full mesh of 7 VMs needs 21 links, but a slice has 20 VLANs for links (at most 6 VMs)"),
    (lambda: t.star(10), "A star of 10 VMs needs 9 data interfaces on one VM, but a VM has at most 8 (at most 9 VMs)"),
    (lambda: t.ring(21), "A ring of 21 VMs needs 21 links, but a slice has 20 VLANs for links (at most 20 VMs)"),
    (lambda: t.linear(22), "A linear topology of 22 VMs needs 21 links, but a slice has 20 VLANs for links "
                           "(at most 21 VMs)"),
    (lambda: t.mesh(10 ** 9), "A full mesh of 1000000000 VMs needs 999999999 data interfaces on one VM"),
    (lambda: t.ring("4"), "The number of VMs must be a whole number"),
    (lambda: t.ring(True), "The number of VMs must be a whole number"),
    (lambda: t.ring(4, flavor="tiny"), "Unknown flavor 'tiny' (cirros, ubuntu)"),
    (lambda: t.ring(4, prefix="9x"), "Invalid VM name prefix '9x'"),
    (lambda: t.ring(4, prefix="a" * 32), "Invalid VM name prefix"),
    (lambda: t.ring(4, internet="5"), "Internet: there is no VM 5 (VMs are numbered 1 to 4)"),
    (lambda: t.ring(4, internet=[0]), "Internet: there is no VM 0"),
    (lambda: t.ring(4, internet="some"), "Internet: none, all, first, or VM numbers like 1,3"),
    (lambda: t.build_template("tree", 3), "Unknown template 'tree' (linear, ring, star, mesh)"),
])
def test_templates_refuse_what_cannot_be_built(call, message):
    with pytest.raises(TemplateError) as e:
        call()
    assert str(e.value).startswith(message)


@pytest.mark.parametrize("internet,expected", [
    ("none", []), (None, []), ("all", [1, 2, 3, 4]), ("first", [1]), ("1, 3", [1, 3]), ("2 4", [2, 4]),
    ({4}, [4]), ([], []),
])
def test_template_internet_choice(internet, expected):
    d = t.ring(4, internet=internet)
    assert [i for i, vm in enumerate(d.vms, 1) if vm.internet] == expected


# --- validate (the product's rules on a whole design) ---------------------------

def test_validate_names_every_problem_without_lines():
    d = Design([VMSpec("a", "cirros", 1), VMSpec("a", "tiny", 9), VMSpec("bad name", "cirros", 0, "yes")],
               [LinkSpec("a", "eth1", "zz", "eth1"), LinkSpec("a", "eth0", "a", "eth2")], "tree", "x y")
    assert [str(p) for p in t.validate(d)] == [
        "unknown topology_type 'tree' (custom, linear, ring, star, mesh)",
        "invalid slice name 'x y': 1-32 characters: a letter first, then letters, digits, '-' or '_'",
        "VM 2: the name 'a' is already used by VM 1",
        "VM 'a': unknown flavor 'tiny' (cirros, ubuntu)",
        "VM 'a': data_interfaces must be between 0 and 8 (got 9)",
        "VM 3: invalid name 'bad name': 1-32 characters: a letter first, then letters, digits, '-' or '_'",
        "VM 3: internet must be true or false (got 'yes')",
        "link 1: VM 'zz' does not exist",
        "link 2: eth0 cannot be in a link (links join data interfaces eth1 and above)",
        "link 2: VM 'a' has no eth2 (it has only eth1)",
    ]


def test_validate_allows_a_link_between_two_interfaces_of_one_vm():
    assert t.validate(Design([VMSpec("a", "cirros", 2)], [LinkSpec("a", "eth1", "a", "eth2")])) == []


def test_validate_at_most_20_links():
    vms = [VMSpec(f"v{i}", "cirros", 8) for i in range(1, 7)]
    ends = [(vm.name, f"eth{k}") for vm in vms for k in range(1, 9)]
    links = [LinkSpec(*ends[2 * j], *ends[2 * j + 1]) for j in range(21)]
    assert t.validate(Design(vms, links[:20])) == []
    assert [str(p) for p in t.validate(Design(vms, links))] == [
        "21 links: a slice has 20 VLANs for links, so at most 20 links"]

def test_flavor_name_of():
    assert t.flavor_name_of({"cores": 1, "ram_gb": 0.5, "disk_gb": 2.2, "image": "/x/y.img"}) == "ubuntu"
    assert t.flavor_name_of({"cores": 9, "ram_gb": 64, "disk_gb": 1,
                             "image": "/z/cirros-0.6.2-x86_64-disk.img"}) == "cirros"
    assert t.flavor_name_of({"cores": 9, "ram_gb": 64, "disk_gb": 9, "image": "/z/other.img"}) is None
    assert t.flavor_name_of("ubuntu") == "ubuntu" and t.flavor_name_of(None) is None
