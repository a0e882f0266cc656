"""slice_builder.py: whole slices from templates and topology files, all or nothing; export."""
from __future__ import annotations

import glob
import os
import signal
import textwrap

import pytest
from uhelpers import make_api, ok

from topology import files as tf
from topology import model as t
from topology.model import Design, LinkSpec, VMSpec

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = sorted(glob.glob(os.path.join(ROOT, "topologies", "*.yaml")))


def vm_named(s: dict, name: str) -> dict:
    return next(vm for vm in s["vms"] if vm["name"] == name)


def links_by_name(s: dict) -> list[tuple]:
    """(vm1 name, if1, vm2 name, if2, VLAN) of every link of a stored slice."""
    names = {vm["vm_id"]: vm["name"] for vm in s["vms"]}
    return [(names[x["vm1_id"]], x["vm1_interface"], names[x["vm2_id"]], x["vm2_interface"], x["vlan_id"])
            for x in s["links"]]


def assert_nothing_made(api, db, ex, user: str = "admin", used: int = 0) -> None:
    """No slice of ``user``, their quota as it was, and no overlay left on any (fake) host."""
    assert [s for s in db.all_slices().values() if s["owner"] == user] == []
    assert db.get_user(user)["slices"] == []
    assert db.get_user(user)["used_vms"] == used
    assert ex.made("overlay") == set()


@pytest.fixture
def env(tmp_path):
    return make_api(tmp_path)


# --- templates ----------------------------------------------------------------------------

def test_ring_of_4_as_a_user_expects(env):
    api, db, ex = env
    lines = []
    s = ok(api.create_from_template("student", "ring", 4, "cirros", "first", "ring4", progress=lines.append))
    assert s["owner"] == "student" and s["topology_type"] == "ring" and s["status"] == "design"
    assert [(vm["name"], vm["flavor_name"], len(vm["interfaces"])) for vm in s["vms"]] == [
        (f"vm{i}", "cirros", 3) for i in range(1, 5)]
    assert links_by_name(s) == [("vm1", "eth1", "vm2", "eth1", 100), ("vm2", "eth2", "vm3", "eth1", 101),
                                ("vm3", "eth2", "vm4", "eth1", 102), ("vm4", "eth2", "vm1", "eth2", 103)]
    for vm in s["vms"]:  # every data interface is in a link, with its VLAN
        assert all(i["link_id"] is not None and i["vlan_id"] in range(100, 104) for i in vm["interfaces"][1:])
    assert vm_named(s, "vm1")["interfaces"][0]["vlan_id"] == 400
    assert [vm_named(s, f"vm{i}")["interfaces"][0]["vlan_id"] for i in (2, 3, 4)] == [None, None, None]
    assert len(ex.made("overlay")) == 4 and len({vm["worker_ip"] for vm in s["vms"]}) == 3
    assert db.get_user("student")["used_vms"] == 4
    assert lines[0].startswith("VM vm1 added (ID 1001, worker ") and lines[-1] == "Link vm4 eth2 -- vm1 eth2: VLAN 103"


def test_star_of_5_as_a_user_expects(env):
    api, db, ex = env
    s = ok(api.create_from_template("admin", "star", "5", "ubuntu", "none", "star5"))
    assert s["topology_type"] == "star"
    hub = vm_named(s, "vm1")
    assert [i["name"] for i in hub["interfaces"]] == ["eth0", "eth1", "eth2", "eth3", "eth4"]
    assert links_by_name(s) == [("vm1", f"eth{k}", f"vm{k + 1}", "eth1", 99 + k) for k in range(1, 5)]
    assert all(vm["flavor_name"] == "ubuntu" for vm in s["vms"])
    assert len(ex.made("overlay")) == 5


@pytest.mark.parametrize("kind,n,links", [("linear", 3, 2), ("mesh", 4, 6)])
def test_other_templates(env, kind, n, links):
    api, _, _ = env
    s = ok(api.create_from_template("admin", kind, n, "cirros", "all", kind))
    assert (s["topology_type"], len(s["vms"]), len(s["links"])) == (kind, n, links)


@pytest.mark.parametrize("args,message", [
    (("tree", 4, "cirros", "none"), "Unknown template 'tree'"),
    (("ring", 2, "cirros", "none"), "A ring needs at least 3 VMs"),
    (("ring", "four", "cirros", "none"), "The number of VMs must be a number"),
    (("ring", 4, "tiny", "none"), "Unknown flavor 'tiny'"),
    (("ring", 4, "cirros", "9"), "Internet: there is no VM 9"),
])
def test_templates_that_cannot_be_built_make_nothing(env, args, message):
    api, db, ex = env
    got, msg = api.create_from_template("admin", *args, "bad")
    assert not got and msg.startswith(message), msg
    assert db.all_slices() == {} and ex.commands == []


def test_a_template_that_exceeds_the_quota_makes_nothing(env):
    api, db, ex = env
    ok(api.create_from_template("student", "linear", 2, "cirros", "none", "first"))  # student: 2 of 6 used
    calls = len(ex.commands)
    got, msg = api.create_from_template("student", "ring", 5, "cirros", "none", "big")
    assert not got and msg == "Quota exceeded: 5 VMs needed, student uses 2 of 6"
    assert len(ex.commands) == calls  # refused before anything went to a host
    assert [s["name"] for s in db.all_slices().values()] == ["first"]
    assert db.get_user("student")["used_vms"] == 2 and len(ex.made("overlay")) == 2


def test_a_bad_slice_name_makes_nothing(env):
    api, db, ex = env
    got, msg = api.create_from_template("admin", "ring", 3, "cirros", "none", "no spaces")
    assert not got and msg.startswith("Invalid slice name") and db.all_slices() == {} and ex.commands == []
    ok(api.create_from_template("admin", "ring", 3, "cirros", "none", "r"))
    got, msg = api.create_from_template("admin", "ring", 3, "cirros", "none", "r")
    assert not got and msg == "You already have a slice named r"


# --- all or nothing ---------------------------------------------------------------------------

def test_an_overlay_that_fails_removes_everything_made_before(env):
    api, db, ex = env
    ex.fail("create_overlay", target="vm3_img.qcow2", err="No space left on device")
    got, msg = api.create_from_template("admin", "ring", 4, "cirros", "first", "r4")
    assert not got
    assert msg.startswith("VM vm3 could not be added: VM creation failed on 10.9.0.13") and \
        "No space left on device" in msg and msg.endswith("Nothing was made: the new slice and its VMs were removed.")
    assert_nothing_made(api, db, ex)
    assert ("delete_overlay", "vm1_img.qcow2") in ex.actions() and ("delete_overlay", "vm2_img.qcow2") in ex.actions()
    assert db.load()["next_vm_id"] == 1004  # IDs are never reused, nothing else is left


def test_a_worker_that_fails_makes_nothing(env):
    api, db, ex = env
    ex.fail("create_overlay", host="10.9.0.12", err="No space left on device")
    got, msg = api.create_from_template("admin", "star", 3, "cirros", "none", "s3")
    assert not got and "VM vm2 could not be added" in msg and "10.9.0.12" in msg
    assert_nothing_made(api, db, ex)


def test_a_worker_that_is_down_is_left_out_of_placement(env):
    api, db, ex = env
    ex.down_hosts.add("10.9.0.12")
    s = ok(api.create_from_template("admin", "star", 3, "cirros", "none", "s3"))
    assert "10.9.0.12" not in {vm["worker_ip"] for vm in s["vms"]}


def test_links_that_fail_remove_the_vms(env, monkeypatch):
    api, db, ex = env
    monkeypatch.setattr("usecases.design.add_link", lambda *args: (False, "VLAN pool exhausted"))
    got, msg = api.create_from_template("admin", "linear", 3, "cirros", "none", "l3")
    assert not got and msg.startswith("The links could not be created: VLAN pool exhausted. Nothing was made")
    assert_nothing_made(api, db, ex)


def test_links_are_made_all_or_none(env):
    api, db, _ = env
    s = ok(api.create_from_template("admin", "linear", 2, "cirros", "none", "l2"))
    a, b = (vm["vm_id"] for vm in s["vms"])
    got, msg = api.builder.design.create_links("admin", s["slice_id"], [((a, "eth1"), (b, "eth1"))])
    assert not got and msg == f"VM {a} eth1 is already connected to Link 1"
    ok(api.add_vm_to_slice("admin", s["slice_id"], "c", "cirros", 2))
    c = db.get_slice(s["slice_id"])["vms"][-1]["vm_id"]
    got, msg = api.builder.design.create_links("admin", s["slice_id"], [((c, "eth1"), (c, "eth2")),
                                                                         ((c, "eth2"), (a, "eth1"))])
    assert not got and msg == f"VM {c} eth2 is already connected to Link 2"
    assert len(db.get_slice(s["slice_id"])["links"]) == 1  # the first of the two was not kept either


def test_ctrl_c_while_building_removes_everything(env):
    api, db, ex = env
    seen = []

    def press_ctrl_c(cmd):
        seen.append(cmd.target)
        if len(seen) == 2:
            os.kill(os.getpid(), signal.SIGINT)

    ex.hooks["create_overlay"] = press_ctrl_c
    got, msg = api.create_from_template("admin", "ring", 4, "cirros", "none", "r4")
    assert not got and msg.startswith("Interrupted (Ctrl-C). Nothing was made"), msg
    assert seen == ["vm1_img.qcow2", "vm2_img.qcow2"]  # it stopped at once
    assert_nothing_made(api, db, ex)


def test_a_slice_deployed_from_another_menu_while_it_was_built_is_deleted_whole(env):
    api, db, ex = env

    def other_menu_deploys(cmd):
        if cmd.target == "vm3_img.qcow2":
            sid = next(iter(db.all_slices()))
            assert api.deploy_slice("admin", sid)[0]

    ex.hooks["create_overlay"] = other_menu_deploys
    got, msg = api.create_from_template("admin", "ring", 4, "cirros", "none", "r4")
    assert not got and "Slice is running" in msg and msg.endswith("Nothing was made: the new slice and its VMs "
                                                                  "were removed."), msg
    assert_nothing_made(api, db, ex)
    assert ex.made() == set()  # VMs and VLANs of the deploy too


def test_disks_that_cannot_be_removed_are_reported(env):
    api, db, ex = env
    ex.fail("create_overlay", target="vm2_img.qcow2")
    ex.fail("delete_overlay", target="vm1_img.qcow2", err="Input/output error")
    got, msg = api.create_from_template("admin", "linear", 2, "cirros", "none", "l2")
    assert not got and "some of its disks could not be (vm1_img.qcow2 on 10.9.0.11)" in msg
    assert "'8. Cleanup orphaned VMs' finds them" in msg
    assert db.all_slices() == {} and db.get_user("admin")["used_vms"] == 0


def test_only_an_admin_builds_for_someone_else(env):
    api, db, _ = env
    s = ok(api.create_from_template("admin", "linear", 2, "cirros", "none", "given", owner="student"))
    assert s["owner"] == "student" and db.get_user("student")["slices"] == [s["slice_id"]]
    assert db.get_user("admin")["used_vms"] == 0 and db.get_user("student")["used_vms"] == 2
    got, msg = api.create_from_template("student", "linear", 2, "cirros", "none", "x", owner="admin")
    assert not got and msg == "Only an admin can make a slice for another user"
    got, msg = api.create_from_template("admin", "linear", 2, "cirros", "none", "x", owner="nobody")
    assert not got and msg == "User not found"


# --- import ------------------------------------------------------------------------------------

def test_export_then_import_round_trips_with_new_ids(env):
    api, db, ex = env
    first = ok(api.create_from_template("admin", "star", 4, "cirros", "1,3", "orig"))
    text = ok(api.export_slice("admin", first["slice_id"]))
    copy = ok(api.import_topology("student", text, "copy"))
    assert copy["owner"] == "student" and copy["topology_type"] == "star"
    assert {vm["vm_id"] for vm in copy["vms"]}.isdisjoint({vm["vm_id"] for vm in first["vms"]})
    assert copy["slice_id"] != first["slice_id"]
    assert {x[4] for x in links_by_name(copy)}.isdisjoint({x[4] for x in links_by_name(first)})  # own VLANs
    assert [x[:4] for x in links_by_name(copy)] == [x[:4] for x in links_by_name(first)]
    again = tf.parse_topology(ok(api.export_slice("student", copy["slice_id"])))[0]
    assert (again.vms, again.links) == (tf.parse_topology(text)[0].vms, tf.parse_topology(text)[0].links)


@pytest.mark.parametrize("path", EXAMPLES, ids=os.path.basename)
def test_every_example_imports_and_exports_as_itself(env, path):
    api, _, _ = env
    with open(path) as f:
        text = f.read()
    s = ok(api.import_topology("admin", text))
    name = os.path.basename(path)[:-5]
    assert s["name"] == name
    design = tf.parse_topology(text)[0]
    assert tf.parse_topology(ok(api.export_slice("admin", s["slice_id"])))[0] == Design(
        design.vms, design.links, design.topology_type if design.topology_type in t.TEMPLATES else "custom", name)


def test_a_custom_file_is_recorded_as_imported(env):
    api, _, _ = env
    text = ("vms:\n  - {name: a, flavor: cirros, data_interfaces: 1}\n"
            "  - {name: b, flavor: cirros, data_interfaces: 1}\n"
            "links:\n  - {vm1: a, if1: eth1, vm2: b, if2: eth1}\n")
    got, msg = api.import_topology("admin", text)
    assert not got and msg == "The topology file names no slice (name:): give the slice a name"
    s = ok(api.import_topology("admin", text, "pair"))
    assert s["topology_type"] == "imported" and s["name"] == "pair"
    assert "topology_type: custom" in ok(api.export_slice("admin", s["slice_id"]))


GOOD = textwrap.dedent("""\
    name: lab
    vms:
      - {name: r1, flavor: cirros, data_interfaces: 2}
      - {name: r2, flavor: cirros, data_interfaces: 1, internet: true}
    links:
      - {vm1: r1, if1: eth1, vm2: r2, if2: eth1}
    """)


@pytest.mark.parametrize("old,new,expected", [
    ("flavor: cirros, data_interfaces: 2", "flavor: tiny, data_interfaces: 2",
     "line 3: VM 'r1': unknown flavor 'tiny' (cirros, ubuntu)"),
    ("vm2: r2, if2", "vm2: r9, if2", "line 6: link 1: VM 'r9' does not exist"),
    ("{name: r2,", "{name: r1,", "line 4: VM 2: the name 'r1' is already used by VM 1"),
    ("if1: eth1", "if1: eth0", "line 6: link 1: eth0 cannot be in a link (links join data interfaces eth1 and above)"),
    ("links:\n", "links: [\n", "line 6: not valid YAML: "),
])
def test_a_bad_topology_file_is_refused_with_its_line_and_changes_nothing(env, old, new, expected):
    api, db, ex = env
    ok(api.get_quota("admin"))  # the database file exists
    before = open(db.path, "rb").read()
    got, msg = api.import_topology("admin", GOOD.replace(old, new, 1))
    assert not got
    lines = msg.split("\n")
    assert lines[0].startswith("The topology file has ") and lines[0].endswith("; nothing was made:")
    assert any(line.startswith(f"  {expected}") for line in lines[1:]), msg
    assert open(db.path, "rb").read() == before and ex.commands == []


def test_import_into_the_account_of_another_user_needs_an_admin(env):
    api, _, _ = env
    assert ok(api.import_topology("admin", GOOD, owner="student"))["owner"] == "student"
    got, msg = api.import_topology("student", GOOD, "mine", owner="admin")
    assert not got and msg == "Only an admin can make a slice for another user"


def test_a_design_with_problems_is_refused_before_anything(env):
    api, db, ex = env
    bad = Design([VMSpec("a", "cirros", 1), VMSpec("a", "cirros", 1)], [LinkSpec("a", "eth1", "a", "eth1")])
    got, msg = api.builder.build("admin", bad, "x", "custom")
    assert not got and msg.startswith("The topology has 2 problems; nothing was made:")
    assert db.all_slices() == {} and ex.commands == []


# --- export ----------------------------------------------------------------------------------

def test_export_needs_the_owner_or_an_admin_and_knows_dot(env):
    api, _, _ = env
    s = ok(api.create_from_template("admin", "linear", 2, "cirros", "none", "l2"))
    got, msg = api.export_slice("student", s["slice_id"])
    assert not got and msg == "Slice not found or not authorized"
    dot = ok(api.export_slice("admin", s["slice_id"], "dot"))
    assert dot.startswith('graph "l2" {') and 'label="VLAN 100"' in dot
    got, msg = api.export_slice("admin", s["slice_id"], "png")
    assert not got and msg == "Export format must be yaml or dot"
    got, msg = api.export_slice("admin", "x")
    assert not got and msg == "Slice ID must be a number"
