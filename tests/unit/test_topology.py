"""topology.py: templates, validation, topology files (export/import), text diagrams and DOT."""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import textwrap

import pytest
import yaml
from uhelpers import build_slice, lab_config, make_api, ok

import topology as t
from topology import Design, LinkSpec, Problem, TemplateError, VMSpec

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def links_of(design: Design) -> list[tuple]:
    return [(x.vm1, x.if1, x.vm2, x.if2) for x in design.links]


def messages(text: str) -> list[str]:
    design, problems = t.parse_topology(textwrap.dedent(text))
    assert design is None
    return [str(p) for p in problems]


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


# --- topology files: import ------------------------------------------------------

GOOD = """\
topology_type: custom
vms:
  - {name: r1, flavor: cirros, data_interfaces: 2}
  - {name: r2, flavor: cirros, data_interfaces: 1, internet: true}
links:
  - {vm1: r1, if1: eth1, vm2: r2, if2: eth1}
"""


def test_parse_good_file():
    design, problems = t.parse_topology(GOOD)
    assert problems == []
    assert design == Design([VMSpec("r1", "cirros", 2, False), VMSpec("r2", "cirros", 1, True)],
                            [LinkSpec("r1", "eth1", "r2", "eth1")], "custom", None)


@pytest.mark.parametrize("old,new,expected", [
    ("{name: r1, flavor: cirros", "{name: r1, flavor: tiny",
     ["line 3: VM 'r1': unknown flavor 'tiny' (cirros, ubuntu)"]),
    ("vm2: r2, if2", "vm2: r3, if2", ["line 6: link 1: VM 'r3' does not exist"]),
    ("{name: r2,", "{name: r1,", ["line 4: VM 2: the name 'r1' is already used by VM 1",
                                  "line 6: link 1: VM 'r2' does not exist"]),
    ("if1: eth1", "if1: eth0",
     ["line 6: link 1: eth0 cannot be in a link (links join data interfaces eth1 and above)"]),
    ("if2: eth1", "if2: eth2", ["line 6: link 1: VM 'r2' has no eth2 (it has only eth1)"]),
    ("if2: eth1", "if2: e1", ["line 6: link 1: 'e1' is not an interface name (eth1, eth2, ...)"]),
    ("vm2: r2, if2: eth1", "vm2: r1, if2: eth1",
     ["line 6: link 1: a link needs two different interfaces (r1 eth1 is at both ends)"]),
    ("data_interfaces: 2}", "data_interfaces: 9}",
     ["line 3: VM 'r1': data_interfaces must be between 0 and 8 (got 9)"]),
    ("data_interfaces: 2}", "data_interfaces: -1}",
     ["line 3: VM 'r1': data_interfaces must be between 0 and 8 (got -1)"]),
    ("{name: r1,", "{name: 1st,",
     ["line 3: VM 1: invalid name '1st': 1-32 characters: a letter first, then letters, digits, '-' or '_'",
      "line 6: link 1: VM 'r1' does not exist"]),
    ("topology_type: custom", "topology_type: tree",
     ["line 1: unknown topology_type 'tree' (custom, linear, ring, star, mesh)"]),
    # wrong types
    ("data_interfaces: 2}", "data_interfaces: '2'}", ["line 3: VM 1: data_interfaces must be a whole number, not '2'"]),
    ("data_interfaces: 2}", "data_interfaces: 2.5}",
     ["line 3: VM 1: data_interfaces must be a whole number, not the number 2.5"]),
    ("data_interfaces: 2}", "data_interfaces: true}",
     ["line 3: VM 1: data_interfaces must be a whole number, not true (true/false)"]),
    ("internet: true", "internet: maybe", ["line 4: VM 2: internet must be true or false, not 'maybe'"]),
    ("{name: r1,", "{name: yes,", ["line 3: VM 1: name must be text, not yes (true/false) "
                                   "(to mean the text, quote it: 'yes')"]),
    ("{name: r1,", "{name: [r1],", ["line 3: VM 1: name must be text, not a list"]),
    ("{name: r1,", "{name: !foo r1,", ["line 3: VM 1: name must be text, not a value tagged '!foo'"]),
    ("{name: r1,", "{name: !!python/name:os.system r1,",
     ["line 3: VM 1: name must be text, not a value tagged 'tag:yaml.org,2002:python/name:os.system'"]),
    ("flavor: cirros, data_interfaces: 2", "flavor: , data_interfaces: 2",
     ["line 3: VM 1: flavor must be text, not empty"]),
    ("if1: eth1", "if1: 1", ["line 6: link 1: if1 must be text, not the number 1"]),
    ("  - {name: r2, flavor: cirros, data_interfaces: 1, internet: true}", "  - r2",
     ["line 4: VM 2 must be a mapping like {name: vm1, flavor: cirros, data_interfaces: 1, internet: false}"]),
    ("  - {vm1: r1, if1: eth1, vm2: r2, if2: eth1}", "  - [r1, eth1, r2, eth1]",
     ["line 6: link 1 must be a mapping like {vm1: vm1, if1: eth1, vm2: vm2, if2: eth1}"]),
    ("links:\n  - {vm1: r1, if1: eth1, vm2: r2, if2: eth1}", "links: r1-r2",
     ["line 5: links must be a list, e.g. links: [{vm1: vm1, if1: eth1, vm2: vm2, if2: eth1}]"]),
    # unknown, missing and repeated keys
    ("topology_type: custom", "owner: admin",
     ["line 1: the file: unknown key 'owner' (allowed: topology_type, name, vms, links)"]),
    ("data_interfaces: 2}", "data_interfaces: 2, cpus: 2}",
     ["line 3: VM 1: unknown key 'cpus' (allowed: name, flavor, data_interfaces, internet)"]),
    ("if2: eth1}", "if2: eth1, vlan: 100}", ["line 6: link 1: unknown key 'vlan' (allowed: vm1, if1, vm2, if2)"]),
    ("{name: r1, flavor: cirros, ", "{name: r1, ", ["line 3: VM 1: missing flavor"]),
    ("vm1: r1, if1: eth1, ", "", ["line 6: link 1: missing vm1, if1"]),
    ("{name: r1, flavor: cirros, ", "{name: r1, flavor: cirros, flavor: ubuntu, ",
     ["line 3: VM 1: flavor is given twice"]),
])
def test_bad_files_name_the_line_and_the_problem(old, new, expected):
    assert old in GOOD
    assert messages(GOOD.replace(old, new, 1)) == expected


def test_an_interface_used_twice():
    text = GOOD + "  - {vm1: r1, if1: eth2, vm2: r1, if2: eth1}\n"
    assert messages(text) == [
        "line 7: link 2: r1 eth1 is already in link 1 (an interface joins at most one link)"]


def test_lines_of_block_style_fields():
    assert messages("""\
        vms:
          - name: a
            flavor: cirros
            data_interfaces: 1

          - name: b
            flavor: tiny
            data_interfaces: 1
        links:
          - vm1: a
            if1: eth1
            vm2: c
            if2: eth1
        """) == ["line 7: VM 'b': unknown flavor 'tiny' (cirros, ubuntu)", "line 12: link 1: VM 'c' does not exist"]


def test_every_problem_is_reported_in_line_order():
    assert messages("""\
        vms:
          - {name: a, flavor: tiny, data_interfaces: 1}
          - {name: a, flavor: cirros, data_interfaces: 10}
        links:
          - {vm1: a, if1: eth3, vm2: zz, if2: eth1}
        """) == ["line 2: VM 'a': unknown flavor 'tiny' (cirros, ubuntu)",
                 "line 3: VM 2: the name 'a' is already used by VM 1",
                 "line 3: VM 'a': data_interfaces must be between 0 and 8 (got 10)",
                 "line 5: link 1: VM 'a' has no eth3 (it has only eth1)",
                 "line 5: link 1: VM 'zz' does not exist"]


def test_structural_problems_are_all_reported_before_the_rules():
    # a wrong type stops the rule checks, so no "VM does not exist" follows from it
    assert messages("""\
        vms:
          - {name: 5, flavor: cirros, data_interfaces: 1}
          - {name: b, flavor: cirros, data_interfaces: x, color: red}
        links:
          - {vm1: 5, if1: eth1, vm2: b, if2: eth1}
        """) == ["line 2: VM 1: name must be text, not the number 5",
                 "line 3: VM 2: unknown key 'color' (allowed: name, flavor, data_interfaces, internet)",
                 "line 3: VM 2: data_interfaces must be a whole number, not 'x'",
                 "line 5: link 1: vm1 must be text, not the number 5"]


def test_21_links_names_the_line_of_the_21st():
    vms = [VMSpec(f"v{i}", "cirros", 8) for i in range(1, 7)]
    ends = [(vm.name, f"eth{k}") for vm in vms for k in range(1, 9)]
    text = t.design_to_yaml(Design(vms, [LinkSpec(*ends[2 * j], *ends[2 * j + 1]) for j in range(21)]))
    line = text.splitlines().index("links:") + 1 + 21
    assert "{vm1: v6, if1: eth1, vm2: v6, if2: eth2}" in text.splitlines()[line - 1]
    assert messages(text) == [f"line {line}: 21 links: a slice has 20 VLANs for links, so at most 20 links"]


@pytest.mark.parametrize("text,expected", [
    ("vms: [\n", "line 2: not valid YAML: while parsing a flow node: expected the node content, but found "),
    ("vms:\n  - {name: a\n  - b\n", "line 4: not valid YAML: while parsing a flow mapping: expected ',' or '}'"),
    ("vms:\n\t- a\n", "line 2: not valid YAML: "),
    ("a: 1\n---\nb: 2\n", "line 2: not valid YAML: "),
    ("", "line 1: the file is empty: expected topology_type, vms and links"),
    ("# only a comment\n", "line 1: the file is empty"),
    ("- a\n- b\n", "line 1: the file must be a mapping like vms: "),
    ("topology_type: ring\n", "line 1: the file: missing vms"),
    ("vms: 5\n", "line 1: vms must be a list, e.g. vms: [{name: vm1,"),
    ("vms: !!python/object:os.system {}\n", "line 1: vms must be a list"),
    ("[" * 5000 + "]" * 5000, "line 1: not valid YAML: nested too deeply"),
])
def test_not_a_topology(text, expected):
    got = messages(text)
    assert len(got) == 1 and got[0].startswith(expected), got


def test_standard_yaml_tags_are_fine():
    design, problems = t.parse_topology(GOOD.replace("{name: r1,", "{name: !!str r1,"))
    assert problems == [] and design.vms[0].name == "r1"


def test_empty_lists_and_missing_links_are_a_valid_design():
    assert t.parse_topology("vms: []\n") == (Design([], [], "custom", None), [])
    assert t.parse_topology("vms:\nlinks:\n") == (Design([], [], "custom", None), [])
    assert t.parse_topology("vms: [{name: a, flavor: ubuntu, data_interfaces: 0}]\n")[0].vms == [
        VMSpec("a", "ubuntu", 0, False)]


def test_input_that_is_not_text_or_too_large():
    assert t.parse_topology(b"vms: []") == (None, [Problem("a topology file must be text")])
    design, problems = t.parse_topology("#" * (t.MAX_TEXT + 1))
    assert design is None and "too large" in str(problems[0])


def test_problem_text():
    assert str(Problem("x", 7)) == "line 7: x"
    assert str(Problem("x")) == "x"


# --- topology files: export and round trip ----------------------------------------

@pytest.mark.parametrize("design", [
    t.ring(4, internet="first"), t.star(5, flavor="ubuntu"), t.mesh(6, internet="all"), t.linear(21),
    Design([VMSpec("yes", "cirros", 1), VMSpec("null", "ubuntu", 1, True), VMSpec("on", "cirros", 0),
            VMSpec("True", "cirros", 0), VMSpec("a-b_c", "cirros", 0)],
           [LinkSpec("yes", "eth1", "null", "eth1")], "custom", "off"),
    Design([], [], "custom", None),
])
def test_design_round_trip(design):
    text = t.design_to_yaml(design)
    assert t.parse_topology(text) == (design, [])
    assert text.startswith("# Cloud Repositorio topology file.\n")
    assert max(len(line) for line in text.splitlines()) <= 100


def test_names_that_yaml_would_read_as_other_types_are_quoted():
    text = t.design_to_yaml(Design([VMSpec("yes", "cirros", 0), VMSpec("null", "cirros", 0)], [], "custom", "no"))
    assert 'name: "no"' in text and '{name: "yes",' in text and '{name: "null",' in text


def test_export_of_a_slice_made_by_the_api(tmp_path):
    api, db, _ = make_api(tmp_path)
    sid, ids = build_slice(api, name="lab1", vms=(("r1", 2, True), ("r2", 2, False), ("h1", 1, False)),
                           links=((0, "eth1", 1, "eth1"), (1, "eth2", 2, "eth1")))
    s = db.get_slice(sid)
    text = t.export_topology(s)
    design, problems = t.parse_topology(text)
    assert problems == []
    assert design == t.design_from_slice(s) == Design(
        [VMSpec("r1", "cirros", 2, True), VMSpec("r2", "cirros", 2, False), VMSpec("h1", "cirros", 1, False)],
        [LinkSpec("r1", "eth1", "r2", "eth1"), LinkSpec("r2", "eth2", "h1", "eth1")], "custom", "lab1")
    assert f"Exported from slice lab1 ({sid}): 3 VMs, 2 links." in text
    data = yaml.safe_load(text)
    assert set(data) == {"topology_type", "name", "vms", "links"}
    for vm in s["vms"]:  # no IDs, hosts, ports or MACs
        for leak in (str(vm["vm_id"]), vm["worker_ip"], str(vm["vnc_port"]), vm["interfaces"][0]["mac"]):
            assert leak not in text
    assert str(s["links"][0]["vlan_id"]) not in text.split("\n\n", 1)[1]


def test_export_is_stable(tmp_path):
    api, db, _ = make_api(tmp_path)
    sid, _ = build_slice(api, links=((0, "eth1", 1, "eth1"),))
    assert t.export_topology(db.get_slice(sid)) == t.export_topology(db.get_slice(sid))


def test_export_of_the_documented_slice():
    eth = [{"name": "eth0", "vlan_id": 400, "mac": "52:54:00:03:e9:00",
            "ip_config": {"ip": "10.60.7.101", "cidr": "10.60.7.0/24", "gateway": "10.60.7.1"}, "link_id": None},
           {"name": "eth1", "vlan_id": 100, "mac": "52:54:00:03:e9:01", "ip_config": None, "link_id": 1}]
    cirros = {"cores": 1, "ram_gb": 0.5, "disk_gb": 1, "image": "/tmp/vm_images/cirros-0.6.2-x86_64-disk.img"}
    s = {"slice_id": 1000, "owner": "admin", "topology_type": "custom", "vlan_pool_start": 100,
         "vlan_pool_end": 119, "vlan_pool_used": [100], "status": "running",
         "vms": [{"vm_id": 1001, "name": "vm1", "worker_ip": "10.0.10.1", "vnc_port": 5901, "flavor": cirros,
                  "interfaces": eth},
                 {"vm_id": 1002, "name": "vm2", "worker_ip": "10.0.10.2", "vnc_port": 5902, "flavor": cirros,
                  "interfaces": [dict(eth[0], vlan_id=None, ip_config=None), eth[1]]}],
         "links": [{"link_id": 1, "vlan_id": 100, "vm1_id": 1001, "vm1_interface": "eth1", "vm2_id": 1002,
                    "vm2_interface": "eth1"}], "networks": []}
    assert t.parse_topology(t.export_topology(s))[0] == Design(
        [VMSpec("vm1", "cirros", 1, True), VMSpec("vm2", "cirros", 1, False)],
        [LinkSpec("vm1", "eth1", "vm2", "eth1")], "custom", None)


def test_flavor_names_survive_a_config_that_gives_both_flavors_one_image(tmp_path):
    api, db, _ = make_api(tmp_path, lab_config(flavor_images={"cirros": "/lab/img.qcow2",
                                                              "ubuntu": "/lab/img.qcow2"}))
    sid = ok(api.create_slice("admin", "s"))["slice_id"]
    ok(api.add_vm_to_slice("admin", sid, "a", "ubuntu", 0))
    ok(api.add_vm_to_slice("admin", sid, "b", "cirros", 0))
    assert [vm.flavor for vm in t.design_from_slice(db.get_slice(sid)).vms] == ["ubuntu", "cirros"]


def test_flavor_name_of():
    assert t.flavor_name_of({"cores": 1, "ram_gb": 0.5, "disk_gb": 2.2, "image": "/x/y.img"}) == "ubuntu"
    assert t.flavor_name_of({"cores": 9, "ram_gb": 64, "disk_gb": 1,
                             "image": "/z/cirros-0.6.2-x86_64-disk.img"}) == "cirros"
    assert t.flavor_name_of({"cores": 9, "ram_gb": 64, "disk_gb": 9, "image": "/z/other.img"}) is None
    assert t.flavor_name_of("ubuntu") == "ubuntu" and t.flavor_name_of(None) is None


def test_export_refuses_what_it_cannot_write():
    vm = {"vm_id": 1, "name": "a", "flavor": {"cores": 4, "ram_gb": 8, "disk_gb": 40, "image": "/x.img"},
          "interfaces": [{"name": "eth0"}]}
    with pytest.raises(t.ExportError, match="VM 'a': its flavor matches none of cirros, ubuntu"):
        t.export_topology({"slice_id": 5, "vms": [vm], "links": []})
    vm["flavor"] = "cirros"
    with pytest.raises(t.ExportError, match="Link 1: VM 99 is not in the slice"):
        t.export_topology({"slice_id": 5, "vms": [vm], "links": [
            {"link_id": 1, "vlan_id": 100, "vm1_id": 1, "vm1_interface": "eth1", "vm2_id": 99,
             "vm2_interface": "eth1"}]})


@pytest.mark.parametrize("design", [t.ring(6, internet="first"), t.star(9, flavor="ubuntu", internet="all"),
                                    t.mesh(6), t.linear(10, internet="1,10")])
def test_a_design_made_through_the_api_exports_as_itself(tmp_path, design):
    """Template -> add_vm_to_slice/create_link (the import the menu will do) -> export -> parse."""
    api, db, _ = make_api(tmp_path)
    with db.transaction() as data:
        data["users"]["admin"]["quota_vms"] = 20
    sid = ok(api.create_slice("admin", "lab", design.topology_type))["slice_id"]
    ids = {vm.name: ok(api.add_vm_to_slice("admin", sid, vm.name, vm.flavor, vm.data_interfaces,
                                           vm.internet))["vm_id"] for vm in design.vms}
    for x in design.links:
        ok(api.create_link("admin", sid, ids[x.vm1], x.if1, ids[x.vm2], x.if2))
    expected = Design(design.vms, design.links, design.topology_type, "lab")
    assert t.parse_topology(t.export_topology(db.get_slice(sid))) == (expected, [])


# --- example topologies ----------------------------------------------------------

EXAMPLES = sorted(glob.glob(os.path.join(ROOT, "topologies", "*.yaml")))


def test_there_are_examples():
    assert {os.path.basename(p) for p in EXAMPLES} >= {"ring4.yaml", "star5.yaml", "two-routers.yaml",
                                                      "lab-internet.yaml"}


@pytest.mark.parametrize("path", EXAMPLES, ids=os.path.basename)
def test_examples_are_valid(path):
    with open(path) as f:
        design, problems = t.parse_topology(f.read())
    assert problems == [] and design.vms and design.name == os.path.basename(path)[:-5]


def test_template_examples_equal_their_templates():
    def load(name):
        with open(os.path.join(ROOT, "topologies", name)) as f:
            return t.parse_topology(f.read())[0]

    ring4, star5 = load("ring4.yaml"), load("star5.yaml")
    assert (ring4.vms, ring4.links) == (t.ring(4, internet="first").vms, t.ring(4, internet="first").links)
    assert (star5.vms, star5.links) == (t.star(5, internet="first").vms, t.star(5, internet="first").links)


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
    lines = t.render_diagram(s)
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
    lines = t.render_diagram(t.ring(4))
    assert drawn_links(lines) == {("vm1", "vm2", "#1"), ("vm2", "vm3", "#2"), ("vm3", "vm4", "#3"),
                                  ("vm1", "vm4", "#4")}
    assert "  link 4  vm4 eth2 -- vm1 eth2" in lines
    assert lines[0] == "Topology (ring): 4 VMs, 4 links"


def test_internet_is_a_bus_above_the_vms_that_have_it():
    lines = t.render_diagram(deployed_slice(t.linear(3, internet="1,3")))
    assert lines[2] == "internet (VLAN 400): vm1, vm3"
    assert lines[3] == "====+===============+"
    assert lines[4] == "    |               |"
    assert lines[5] == "   vm1     vm2     vm3"
    assert "(no VM has internet)" in t.render_diagram(t.linear(3))


def test_free_interfaces_are_listed():
    d = Design([VMSpec("a", "cirros", 2), VMSpec("b", "ubuntu", 1)], [LinkSpec("a", "eth2", "b", "eth1")])
    assert t.render_diagram(d)[-1] == "Data interfaces in no link: a eth1"


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
        lines = t.render_diagram(source, charset=charset)
        assert all(len(line) <= 80 for line in lines), "\n".join(lines)
        if charset == "ascii":
            assert all(line.isascii() for line in lines)
        assert lines[2].startswith("internet (VLAN 400): ")  # the picture is there
        text = "\n".join(lines)
        assert all(name in text for name in names)


def test_long_names_become_numbers_with_a_legend():
    names = names_of(8, 20)
    lines = t.render_diagram(Design([VMSpec(name, "cirros", 1) for name in names],
                                    [LinkSpec(names[0], "eth1", names[7], "eth1")]))
    assert [str(i) for i in range(1, 9)] in [line.split() for line in lines]
    assert all(f"{i:>3}  {name}" in lines for i, name in enumerate(names, 1))


def test_too_many_vms_to_draw_still_lists_everything_within_the_width():
    vms = [VMSpec(f"vm{i}", "cirros", 0) for i in range(1, 31)]
    lines = t.render_diagram(Design(vms, []), width=80)
    assert "(too many VMs to draw in 80 columns: see the links below)" in lines
    assert all(len(line) <= 80 for line in lines)
    lines = t.render_diagram(Design(vms[:10], []), width=40)
    assert all(len(line) <= 40 for line in lines)


def test_diagram_of_odd_slices_does_not_fail():
    assert t.render_diagram({"slice_id": 1, "vms": [], "links": []}) == [
        "Slice 1 (custom, ?): 0 VMs, 0 links", "(no VMs)"]
    s = deployed_slice(t.linear(2))
    s["links"].append({"link_id": 2, "vlan_id": 101, "vm1_id": 2001, "vm1_interface": "eth1", "vm2_id": 77,
                       "vm2_interface": "eth9"})
    s["vms"][1]["flavor"] = {"cores": 7}
    lines = t.render_diagram(s)
    assert "  VLAN 101  vm1 eth1 -- ? eth9" in lines
    assert ["cirros", "?"] in [line.split() for line in lines]


# --- DOT -------------------------------------------------------------------------

def test_dot_has_every_vm_link_and_the_internet():
    s = deployed_slice(t.ring(4, internet="1,3"))
    dot = t.to_dot(s)
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
    assert '  n1 -- n2 [label="link 1", taillabel="eth1", headlabel="eth1"];' in t.to_dot(t.linear(2))


def plain_graph(dot: str) -> tuple:
    """(nodes, edges) as Graphviz itself reads them (``dot -Tplain``)."""
    out = subprocess.run(["dot", "-Tplain"], input=dot, capture_output=True, text=True, timeout=60, check=True)
    rows = [line.split() for line in out.stdout.splitlines()]
    return ({r[1] for r in rows if r[0] == "node"}, sorted(tuple(sorted(r[1:3])) for r in rows if r[0] == "edge"))


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz (dot) is not installed")
@pytest.mark.parametrize("design", [t.mesh(4, internet="all"), t.star(9, internet="first"), t.linear(10)])
def test_graphviz_reads_the_dot(design):
    nodes, edges = plain_graph(t.to_dot(deployed_slice(design)))
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
    nodes, edges = plain_graph(t.to_dot(s))
    assert nodes == {"n1", "n2"} and edges == [("n1", "n2")]
