"""topology_file.py: topology files (import with line numbers, export, round trips) and the examples."""
from __future__ import annotations

import glob
import os
import textwrap

import pytest
import yaml
from uhelpers import build_slice, lab_config, make_api, ok

from topology import files as tf
from topology import model as t
from topology.model import Design, LinkSpec, Problem, VMSpec

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def messages(text: str) -> list[str]:
    design, problems = tf.parse_topology(textwrap.dedent(text))
    assert design is None
    return [str(p) for p in problems]


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
    design, problems = tf.parse_topology(GOOD)
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
     ["line 3: VM 1: flavor is given twice (first on line 3)"]),
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
    text = tf.design_to_yaml(Design(vms, [LinkSpec(*ends[2 * j], *ends[2 * j + 1]) for j in range(21)]))
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
    design, problems = tf.parse_topology(GOOD.replace("{name: r1,", "{name: !!str r1,"))
    assert problems == [] and design.vms[0].name == "r1"


def test_empty_lists_and_missing_links_are_a_valid_design():
    assert tf.parse_topology("vms: []\n") == (Design([], [], "custom", None), [])
    assert tf.parse_topology("vms:\nlinks:\n") == (Design([], [], "custom", None), [])
    assert tf.parse_topology("vms: [{name: a, flavor: ubuntu, data_interfaces: 0}]\n")[0].vms == [
        VMSpec("a", "ubuntu", 0, False)]


def test_input_that_is_not_text_or_too_large():
    assert tf.parse_topology(b"vms: []") == (None, [Problem("a topology file must be text")])
    design, problems = tf.parse_topology("#" * (tf.MAX_TEXT + 1))
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
    text = tf.design_to_yaml(design)
    assert tf.parse_topology(text) == (design, [])
    assert text.startswith("# Cloud Repositorio topology file.\n")
    assert max(len(line) for line in text.splitlines()) <= 100


def test_names_that_yaml_would_read_as_other_types_are_quoted():
    text = tf.design_to_yaml(Design([VMSpec("yes", "cirros", 0), VMSpec("null", "cirros", 0)], [], "custom", "no"))
    assert 'name: "no"' in text and '{name: "yes",' in text and '{name: "null",' in text


def test_export_of_a_slice_made_by_the_api(tmp_path):
    api, db, _ = make_api(tmp_path)
    sid, ids = build_slice(api, name="lab1", vms=(("r1", 2, True), ("r2", 2, False), ("h1", 1, False)),
                           links=((0, "eth1", 1, "eth1"), (1, "eth2", 2, "eth1")))
    s = db.get_slice(sid)
    text = tf.export_topology(s)
    design, problems = tf.parse_topology(text)
    assert problems == []
    assert design == tf.design_from_slice(s) == Design(
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
    assert tf.export_topology(db.get_slice(sid)) == tf.export_topology(db.get_slice(sid))


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
    assert tf.parse_topology(tf.export_topology(s))[0] == Design(
        [VMSpec("vm1", "cirros", 1, True), VMSpec("vm2", "cirros", 1, False)],
        [LinkSpec("vm1", "eth1", "vm2", "eth1")], "custom", None)


def test_flavor_names_survive_a_config_that_gives_both_flavors_one_image(tmp_path):
    api, db, _ = make_api(tmp_path, lab_config(flavor_images={"cirros": "/lab/img.qcow2",
                                                              "ubuntu": "/lab/img.qcow2"}))
    sid = ok(api.create_slice("admin", "s"))["slice_id"]
    ok(api.add_vm_to_slice("admin", sid, "a", "ubuntu", 0))
    ok(api.add_vm_to_slice("admin", sid, "b", "cirros", 0))
    assert [vm.flavor for vm in tf.design_from_slice(db.get_slice(sid)).vms] == ["ubuntu", "cirros"]




def test_export_refuses_what_it_cannot_write():
    vm = {"vm_id": 1, "name": "a", "flavor": {"cores": 4, "ram_gb": 8, "disk_gb": 40, "image": "/x.img"},
          "interfaces": [{"name": "eth0"}]}
    with pytest.raises(t.ExportError, match="VM 'a': its flavor matches none of cirros, ubuntu"):
        tf.export_topology({"slice_id": 5, "vms": [vm], "links": []})
    vm["flavor"] = "cirros"
    with pytest.raises(t.ExportError, match="Link 1: VM 99 is not in the slice"):
        tf.export_topology({"slice_id": 5, "vms": [vm], "links": [
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
    assert tf.parse_topology(tf.export_topology(db.get_slice(sid))) == (expected, [])


# --- example topologies ----------------------------------------------------------

EXAMPLES = sorted(glob.glob(os.path.join(ROOT, "topologies", "*.yaml")))


def test_there_are_examples():
    assert {os.path.basename(p) for p in EXAMPLES} >= {"ring4.yaml", "star5.yaml", "two-routers.yaml",
                                                      "lab-internet.yaml"}


@pytest.mark.parametrize("path", EXAMPLES, ids=os.path.basename)
def test_examples_are_valid(path):
    with open(path) as f:
        design, problems = tf.parse_topology(f.read())
    assert problems == [] and design.vms and design.name == os.path.basename(path)[:-5]


def test_template_examples_equal_their_templates():
    def load(name):
        with open(os.path.join(ROOT, "topologies", name)) as f:
            return tf.parse_topology(f.read())[0]

    ring4, star5 = load("ring4.yaml"), load("star5.yaml")
    assert (ring4.vms, ring4.links) == (t.ring(4, internet="first").vms, t.ring(4, internet="first").links)
    assert (star5.vms, star5.links) == (t.star(5, internet="first").vms, t.star(5, internet="first").links)
