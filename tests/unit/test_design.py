"""Design phase with a FakeExecutor: IDs, overlays, placement, VNC, quotas, links, authorization."""
from __future__ import annotations

import threading

import pytest
from fakes import FakeExecutor
from uhelpers import CIRROS_BASE, WORKERS, build_slice, lab_config, make_api, ok, restart

from deployment_api import DeploymentAPI
from models import Flavor
from qcow_manager import QCOWManager

QEMU_IMG = "qemu-img create -q -f qcow2 -b {base} -F qcow2 {file}"


def _qemu_img_calls(ex):
    return [(h, t) for h, t in ex.calls if "qemu-img create" in t]


# --- IDs, VNC, overlay ----------------------------------------------------------

def test_first_slice_1000_first_vm_1001_vnc_5901(tmp_path):
    api, db, ex = make_api(tmp_path)
    created = ok(api.create_slice("admin", "lab1"))
    assert created["slice_id"] == 1000 and created["name"] == "lab1"
    vm = ok(api.add_vm_to_slice("admin", 1000, "vm1", "cirros", 1))
    assert vm["vm_id"] == 1001
    assert vm["vnc_port"] == 5901
    assert vm["status"] == "design"
    assert vm["pid"] is None
    assert vm["qcow_image"] == "~/vm_images/vm1_img.qcow2"
    assert vm["flavor"] == Flavor.FLAVORS["cirros"]
    assert vm["interfaces"] == [
        {"name": "eth0", "vlan_id": None, "mac": "52:54:00:03:e9:00", "ip_config": None, "link_id": None},
        {"name": "eth1", "vlan_id": None, "mac": "52:54:00:03:e9:01", "ip_config": None, "link_id": None},
    ]
    assert db.get_slice(1000)["vms"] == [vm]
    assert db.load()["next_vm_id"] == 1002
    assert db.get_user("admin")["slices"] == [1000]


def test_qemu_img_sent_to_chosen_worker(tmp_path):
    api, _db, ex = make_api(tmp_path)
    ok(api.create_slice("admin", "lab1"))
    vm = ok(api.add_vm_to_slice("admin", 1000, "vm1", "cirros", 1))
    calls = _qemu_img_calls(ex)
    assert len(calls) == 1
    host, text = calls[0]
    assert host == vm["worker_ip"] == WORKERS[0]
    assert QEMU_IMG.format(base=CIRROS_BASE, file="vm1_img.qcow2") in text
    # marked as this system's, naming the VM
    assert f"printf '%s\\n' 'cloud-repositorio vm {vm['vm_id']}' > vm1_img.qcow2.owner" in text
    assert text.startswith("umask 077 && ") and 'chmod 700 "$HOME"/vm_images' in text  # disks 0600 in a 0700 folder
    assert not text.startswith("sudo")  # overlays belong to the SSH user
    # the base check came first, on the same worker
    checks = [(h, t) for h, t in ex.calls if t.startswith("test -f")]
    assert checks == [(WORKERS[0], f'test -f "$HOME"/vm_images/{CIRROS_BASE} && echo exists || echo missing')]
    assert ex.calls.index(checks[0]) < ex.calls.index(calls[0])
    assert ex.puts == []


def test_internet_vm_gets_documented_ip_config(tmp_path):
    api, _db, _ex = make_api(tmp_path)
    ok(api.create_slice("admin", "lab1"))
    vm = ok(api.add_vm_to_slice("admin", 1000, "vm1", "cirros", 0, True))
    assert vm["interfaces"] == [{"name": "eth0", "vlan_id": 400, "mac": "52:54:00:03:e9:00",
                                 "ip_config": {"ip": "10.60.7.101", "cidr": "10.60.7.0/24",
                                               "gateway": "10.60.7.1"},
                                 "link_id": None}]


def test_internet_ips_unique_when_formula_collides(tmp_path):
    api, db, _ex = make_api(tmp_path)
    sid, (a,) = build_slice(api, vms=(("vm1", 0, True),))
    assert a == 1001
    with db.transaction() as data:
        data["next_vm_id"] = 1100  # slice 1100, VM 1101 -> formula 10.60.7.101, held by VM 1001
    sid2 = ok(api.create_slice("admin", "s2"))["slice_id"]
    vm = ok(api.add_vm_to_slice("admin", sid2, "vm1", "cirros", 0, True))
    assert vm["vm_id"] == 1101
    ip = vm["interfaces"][0]["ip_config"]["ip"]
    assert ip != "10.60.7.101"
    assert ip == "10.60.7.100"  # the next free address of the documented range


def test_base_image_copied_when_missing(tmp_path):
    base = tmp_path / "cirros-local.img"
    base.write_bytes(b"QFI\xfb")
    copies = []

    class Recording(FakeExecutor):
        def _put(self, host, local_path, remote_path, timeout):
            copies.append(timeout)
            super()._put(host, local_path, remote_path, timeout)

    from database import Database
    from orchestrator_api import OrchestratorAPI
    ex = Recording(lab_config(flavor_images={"cirros": str(base)}), base_exists=False)
    api = OrchestratorAPI(Database(str(tmp_path / "db.yaml")), DeploymentAPI(ex))
    ok(api.create_slice("admin", "lab1"))
    vm = ok(api.add_vm_to_slice("admin", 1000, "vm1", "cirros", 1))
    assert ex.puts == [(WORKERS[0], str(base), "~/vm_images/cirros-local.img")]
    assert copies == [60]
    assert vm["flavor"]["image"] == str(base)
    assert QEMU_IMG.format(base="cirros-local.img", file="vm1_img.qcow2") in _qemu_img_calls(ex)[0][1]


def test_base_missing_everywhere_fails_cleanly(tmp_path):
    api, db, ex = make_api(tmp_path, lab_config(flavor_images={"cirros": str(tmp_path / "none.img")}),
                           base_exists=False)
    ok(api.create_slice("admin", "lab1"))
    res = api.add_vm_to_slice("admin", 1000, "vm1", "cirros", 1)
    assert res[0] is False
    assert "missing on the manager" in res[1]
    assert _qemu_img_calls(ex) == [] and ex.puts == []
    assert db.get_slice(1000)["vms"] == []
    assert db.get_user("admin")["used_vms"] == 0


def test_deployment_api_documented_contract(tmp_path):
    ex = FakeExecutor()
    dep = DeploymentAPI(ex)
    assert dep.vnc_port_counter == 5900
    okay, vm = dep.create_vm_with_qcow(1000, 1001, "vm1", "admin", WORKERS[1], Flavor.get("cirros"), 2, True)
    assert okay is True
    assert vm.status == "design" and vm.vnc_port == 5901 and vm.qcow_image == "~/vm_images/vm1_img.qcow2"
    assert [i.mac for i in vm.interfaces] == ["52:54:00:03:e9:00", "52:54:00:03:e9:01", "52:54:00:03:e9:02"]
    assert vm.interfaces[0].ip_config == {"ip": "10.60.7.101", "cidr": "10.60.7.0/24", "gateway": "10.60.7.1"}
    assert [i.vlan_id for i in vm.interfaces] == [400, None, None]
    okay, vm2 = dep.create_vm_with_qcow(1000, 1002, "vm2", "admin", WORKERS[1], Flavor.get("cirros"), 0)
    assert vm2.vnc_port == 5902 and vm2.interfaces[0].vlan_id is None and vm2.interfaces[0].ip_config is None
    ex.fail("create_overlay", err="boom")
    assert dep.create_vm_with_qcow(1000, 1003, "vm3", "admin", WORKERS[1], Flavor.get("cirros"), 0) == (False, None)
    assert "boom" in dep.last_error
    assert dep.delete_vm_dict({"worker_ip": WORKERS[1], "qcow_image": "~/vm_images/vm1_img.qcow2",
                               "vm_id": 1001}) is True
    disk = '"$HOME"/vm_images/vm1_img.qcow2'
    assert ex.calls[-1] == (WORKERS[1], f"""case "$(cat {disk}.owner 2>/dev/null)" in 'cloud-repositorio vm 1001'"""
                                        f"""|cloud-repositorio) rm -f {disk} {disk}.owner;; esac""")
    assert dep.delete_vm_dict({"worker_ip": WORKERS[1], "qcow_image": None}) is True


def test_qcow_manager_documented_return(tmp_path):
    ex = FakeExecutor()
    qm = QCOWManager(ex)
    assert qm.create_backing_image(WORKERS[2], "web", "/tmp/vm_images/" + CIRROS_BASE) == (
        True, "~/vm_images/web_img.qcow2")
    ex.fail("create_overlay", status=17, err="web_img.qcow2 already exists")
    assert qm.create_backing_image(WORKERS[2], "web", "/tmp/vm_images/" + CIRROS_BASE) == (False, None)
    assert qm.last_exit == 17
    assert qm.delete_image(WORKERS[2], "~/vm_images/web_img.qcow2") is True


# --- placement, VNC ports and overlays across restarts ------------------------------

def test_placement_balanced_and_survives_restart(tmp_path):
    api, db, _ex = make_api(tmp_path)
    sid = ok(api.create_slice("admin", "s1"))["slice_id"]
    placed = [ok(api.add_vm_to_slice("admin", sid, f"vm{i}", "cirros", 0))["worker_ip"] for i in range(3)]
    assert placed == WORKERS
    api2, _db2, _ex2 = restart(tmp_path, db)
    placed2 = [ok(api2.add_vm_to_slice("admin", sid, f"vm{i}", "cirros", 0))["worker_ip"] for i in range(3, 6)]
    assert placed2 == WORKERS
    counts = {w: 0 for w in WORKERS}
    for vm in db.get_slice(sid)["vms"]:
        counts[vm["worker_ip"]] += 1
    assert counts == {w: 2 for w in WORKERS}


def test_vnc_ports_unique_across_restart_and_slices(tmp_path):
    api, db, _ex = make_api(tmp_path)
    s1 = ok(api.create_slice("admin", "s1"))["slice_id"]
    ports = [ok(api.add_vm_to_slice("admin", s1, f"vm{i}", "cirros", 0))["vnc_port"] for i in range(2)]
    api2, _db2, _ex2 = restart(tmp_path, db)  # new OrchestratorAPI and DeploymentAPI (counter 5900 again)
    s2 = ok(api2.create_slice("student", "s2"))["slice_id"]
    ports += [ok(api2.add_vm_to_slice("student", s2, f"vm{i}", "cirros", 0))["vnc_port"] for i in range(2)]
    assert ports == [5901, 5902, 5903, 5904]


def test_vnc_port_freed_by_delete_is_reused_not_duplicated(tmp_path):
    api, db, _ex = make_api(tmp_path)
    s1, _ = build_slice(api, name="s1", vms=(("a", 0, False),))
    s2, _ = build_slice(api, name="s2", vms=(("b", 0, False),))
    ok(api.delete_slice("admin", s1))
    api2, _db2, _ex2 = restart(tmp_path, db)
    s3 = ok(api2.create_slice("admin", "s3"))["slice_id"]
    p = ok(api2.add_vm_to_slice("admin", s3, "c", "cirros", 0))["vnc_port"]
    held = [v["vnc_port"] for s in db.all_slices().values() for v in s["vms"]]
    assert sorted(held) == [5901, 5902]
    assert p == 5901


def test_concurrent_menus_get_distinct_ids_and_ports(tmp_path):
    api, db, _ex = make_api(tmp_path)
    sid = ok(api.create_slice("admin", "s1"))["slice_id"]
    api2, _db2, _ex2 = restart(tmp_path, db)
    results, errors = [], []

    def adder(a, prefix):
        for i in range(4):
            r = a.add_vm_to_slice("admin", sid, f"{prefix}{i}", "cirros", 0)
            (results if r[0] else errors).append(r[1])

    threads = [threading.Thread(target=adder, args=(a, p)) for a, p in ((api, "a"), (api2, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    vms = db.get_slice(sid)["vms"]
    assert len(vms) == 8
    assert len({v["vm_id"] for v in vms}) == 8
    assert sorted(v["vnc_port"] for v in vms) == list(range(5901, 5909))
    assert db.get_user("admin")["used_vms"] == 8


def test_same_vm_name_on_same_worker_gets_id_qualified_overlay(tmp_path):
    cfg = lab_config(workers=[WORKERS[0]])
    api, db, ex = make_api(tmp_path, cfg)
    s1, (a,) = build_slice(api, name="s1", vms=(("vm1", 0, False),))
    s2, (b,) = build_slice(api, name="s2", vms=(("vm1", 0, False),))
    assert db.get_slice(s1)["vms"][0]["qcow_image"] == "~/vm_images/vm1_img.qcow2"
    assert db.get_slice(s2)["vms"][0]["qcow_image"] == f"~/vm_images/vm1.{b}_img.qcow2"
    texts = [t for _h, t in _qemu_img_calls(ex)]
    assert QEMU_IMG.format(base=CIRROS_BASE, file="vm1_img.qcow2") in texts[0]
    assert QEMU_IMG.format(base=CIRROS_BASE, file=f"vm1.{b}_img.qcow2") in texts[1]
    # after a restart too
    api2, _db2, ex2 = restart(tmp_path, db, cfg)
    s3, (c,) = build_slice(api2, name="s3", vms=(("vm1", 0, False),))
    assert db.get_slice(s3)["vms"][0]["qcow_image"] == f"~/vm_images/vm1.{c}_img.qcow2"


def test_same_vm_name_on_other_worker_keeps_documented_path(tmp_path):
    api, db, _ex = make_api(tmp_path)
    s1, _ = build_slice(api, name="s1", vms=(("vm1", 0, False),))  # worker 1
    s2, _ = build_slice(api, name="s2", vms=(("x", 0, False), ("vm1", 0, False)))  # workers 2, 3
    vm = db.get_slice(s2)["vms"][1]
    assert vm["worker_ip"] != WORKERS[0]
    assert vm["qcow_image"] == "~/vm_images/vm1_img.qcow2"


def test_same_vm_name_same_worker_custom_image_dir(tmp_path):
    cfg = lab_config(workers=[WORKERS[0]], worker_image_dir="/srv/images")
    api, db, ex = make_api(tmp_path, cfg)
    s1, _ = build_slice(api, name="s1", vms=(("vm1", 0, False),))
    s2, _ = build_slice(api, name="s2", vms=(("vm1", 0, False),))
    paths = [db.get_slice(s)["vms"][0]["qcow_image"] for s in (s1, s2)]
    assert paths[0] == "/srv/images/vm1_img.qcow2"
    assert paths[0] != paths[1]


def test_duplicate_vm_name_in_slice_refused(tmp_path):
    api, _db, ex = make_api(tmp_path)
    sid, _ = build_slice(api, vms=(("vm1", 0, False),))
    n = len(ex.calls)
    assert api.add_vm_to_slice("admin", sid, "vm1", "cirros", 0) == (False, "Slice already has a VM named vm1")
    assert len(ex.calls) == n


# --- quotas ---------------------------------------------------------------------------

@pytest.mark.parametrize("user,quota", [("admin", 10), ("student", 6)])
def test_quota_default_and_exceeded(tmp_path, user, quota):
    api, db, ex = make_api(tmp_path)
    sid = ok(api.create_slice(user, "s1"))["slice_id"]
    for i in range(quota):
        ok(api.add_vm_to_slice(user, sid, f"vm{i}", "cirros", 0))
    assert db.get_user(user)["used_vms"] == quota
    n = len(ex.calls)
    assert api.add_vm_to_slice(user, sid, "extra", "cirros", 0) == (False, "Quota exceeded")
    assert len(ex.calls) == n
    assert db.get_user(user)["used_vms"] == quota
    assert ok(api.get_quota(user)) == {"used_vms": quota, "quota_vms": quota, "slices": 1, "disk_used_bytes": 0,
                                       "disk_quota_mib": 1024, "max_lease_days": None}


def test_used_vms_up_on_add_down_on_delete_never_below_zero(tmp_path):
    api, db, _ex = make_api(tmp_path)
    s1, _ = build_slice(api, name="s1", vms=(("a", 0, False), ("b", 0, False)))
    s2, _ = build_slice(api, name="s2", vms=(("c", 0, False),))
    assert db.get_user("admin")["used_vms"] == 3
    ok(api.delete_slice("admin", s1))
    assert db.get_user("admin")["used_vms"] == 1
    with db.transaction() as data:
        data["users"]["admin"]["used_vms"] = 0  # e.g. hand-edited by an instructor
    ok(api.delete_slice("admin", s2))
    assert db.get_user("admin")["used_vms"] == 0


def test_failing_overlay_returns_false_leaves_no_vm_and_gives_quota_back(tmp_path):
    api, db, ex = make_api(tmp_path)
    sid = ok(api.create_slice("admin", "s1"))["slice_id"]
    ex.fail("create_overlay", err="boom")
    res = api.add_vm_to_slice("admin", sid, "vm1", "cirros", 1)
    assert res[0] is False
    assert res[1] == (f"VM creation failed on {WORKERS[0]}: creating vm1_img.qcow2 on {WORKERS[0]}: "
                      "exit status 1: boom")
    assert db.get_slice(sid)["vms"] == []
    assert db.get_user("admin")["used_vms"] == 0
    ex.rules.clear()
    vm = ok(api.add_vm_to_slice("admin", sid, "vm1", "cirros", 1))
    assert vm["vnc_port"] == 5901  # the failed VM's port was not kept


# --- links -------------------------------------------------------------------------------

@pytest.fixture
def two_vm_slice(tmp_path):
    api, db, ex = make_api(tmp_path)
    sid, ids = build_slice(api, vms=(("vm1", 2, False), ("vm2", 2, False)))
    return api, db, ex, sid, ids


def test_first_link_takes_vlan_100_and_marks_both_interfaces(two_vm_slice):
    api, db, ex, sid, (a, b) = two_vm_slice
    n = len(ex.calls)
    link = ok(api.create_link("admin", sid, a, "eth1", b, "eth1"))
    assert link == {"link_id": 1, "vlan_id": 100, "vm1_id": a, "vm1_interface": "eth1",
                    "vm2_id": b, "vm2_interface": "eth1"}
    link2 = ok(api.create_link("admin", sid, str(a), "eth2", str(b), "eth2"))
    assert (link2["link_id"], link2["vlan_id"]) == (2, 101)
    assert link2["vm1_id"] == a  # stored as numbers
    s = db.get_slice(sid)
    assert s["vlan_pool_used"] == [100, 101]
    ifs = {(v["vm_id"], i["name"]): (i["vlan_id"], i["link_id"]) for v in s["vms"] for i in v["interfaces"]}
    assert ifs[(a, "eth1")] == (100, 1) and ifs[(b, "eth1")] == (100, 1)
    assert ifs[(a, "eth2")] == (101, 2) and ifs[(b, "eth2")] == (101, 2)
    assert ifs[(a, "eth0")] == (None, None)
    assert [n_["cidr"] for n_ in s["networks"]] == ["192.168.100.0/24", "192.168.101.0/24"]
    assert len(ex.calls) == n  # links are database-only until deploy


@pytest.mark.parametrize("args,message", [
    ((9999, "eth1", "B", "eth1"), "VM 9999 is not in slice 1000"),
    (("A", "eth7", "B", "eth1"), "VM A has no interface 'eth7'"),
    (("A", "eth0", "B", "eth1"), "eth0 is the management interface: links join data interfaces (eth1 and above)"),
    (("A", "eth1", "B", "eth0"), "eth0 is the management interface: links join data interfaces (eth1 and above)"),
    (("A", "eth1", "A", "eth1"), "A link needs two different interfaces"),
    (("vm1", "eth1", "B", "eth1"), "VM IDs must be numbers (e.g., 1025, not 'vm1')"),
    (("A", "eth1", "", "eth1"), "VM IDs must be numbers (e.g., 1025, not 'vm1')"),
    (("A", "eth1", None, "eth1"), "VM IDs must be numbers (e.g., 1025, not 'vm1')"),
])
def test_create_link_validations(two_vm_slice, args, message):
    api, db, _ex, sid, (a, b) = two_vm_slice
    ids = {"A": a, "B": b}
    args = tuple(ids.get(x, x) if isinstance(x, str) else x for x in args)
    message = message.replace("VM A", f"VM {a}")
    assert api.create_link("admin", sid, args[0], args[1], args[2], args[3]) == (False, message)
    s = db.get_slice(sid)
    assert s["links"] == [] and s["vlan_pool_used"] == []


def test_already_linked_interface_refused(two_vm_slice):
    api, db, _ex, sid, (a, b) = two_vm_slice
    ok(api.create_link("admin", sid, a, "eth1", b, "eth1"))
    assert api.create_link("admin", sid, a, "eth1", b, "eth2") == (
        False, f"VM {a} eth1 is already connected to Link 1")
    assert api.create_link("admin", sid, a, "eth2", b, "eth1") == (
        False, f"VM {b} eth1 is already connected to Link 1")
    assert db.get_slice(sid)["vlan_pool_used"] == [100]


def test_link_between_two_interfaces_of_one_vm_allowed(two_vm_slice):
    api, _db, _ex, sid, (a, _b) = two_vm_slice
    assert ok(api.create_link("admin", sid, a, "eth1", a, "eth2"))["vlan_id"] == 100


def test_vlan_pool_exhausted_after_20_links(tmp_path):
    api, db, _ex = make_api(tmp_path)
    sid, ids = build_slice(api, vms=tuple((f"vm{i}", 8, False) for i in range(6)))
    ends = [(v, f"eth{k}") for v in ids for k in range(1, 9)]
    vlans = []
    for n in range(20):
        (v1, i1), (v2, i2) = ends[2 * n], ends[2 * n + 1]
        vlans.append(ok(api.create_link("admin", sid, v1, i1, v2, i2))["vlan_id"])
    assert vlans == list(range(100, 120))
    (v1, i1), (v2, i2) = ends[40], ends[41]
    assert api.create_link("admin", sid, v1, i1, v2, i2) == (False, "VLAN pool exhausted")
    s = db.get_slice(sid)
    assert len(s["links"]) == 20 and 400 not in s["vlan_pool_used"]


# --- authorization ------------------------------------------------------------------------

def test_student_cannot_touch_admin_slice(tmp_path):
    api, db, ex = make_api(tmp_path)
    sid, (a, b) = build_slice(api, vms=(("vm1", 1, False), ("vm2", 1, False)))
    before = db.get_slice(sid)
    n = len(ex.calls)
    denied = (False, "Slice not found or not authorized")
    assert api.get_slice("student", sid) == denied
    assert api.add_vm_to_slice("student", sid, "x", "cirros", 0) == denied
    assert api.create_link("student", sid, a, "eth1", b, "eth1") == denied
    assert api.deploy_slice("student", sid) == denied
    assert api.delete_slice("student", sid) == denied
    assert api.get_slice("student", 424242) == denied
    assert len(ex.calls) == n
    assert db.get_slice(sid) == before
    assert db.get_user("student")["used_vms"] == 0


def test_list_slices_admin_sees_all_student_only_theirs(tmp_path):
    api, _db, _ex = make_api(tmp_path)
    a = ok(api.create_slice("admin", "mine"))["slice_id"]
    s = ok(api.create_slice("student", "theirs"))["slice_id"]
    assert [x["slice_id"] for x in ok(api.list_slices("admin"))] == [a, s]
    assert [x["slice_id"] for x in ok(api.list_slices("student"))] == [s]
    assert api.list_slices("ghost") == (False, "User not found")
    assert ok(api.get_slice("admin", s))["owner"] == "student"


def test_running_slice_refuses_add_vm_and_link(tmp_path):
    api, db, _ex = make_api(tmp_path)
    sid, (a, b) = build_slice(api, vms=(("vm1", 2, False), ("vm2", 2, False)))
    ok(api.deploy_slice("admin", sid))
    msg = "Slice is running: a running slice cannot be changed (delete it and design a new one)"
    assert api.add_vm_to_slice("admin", sid, "vm3", "cirros", 0) == (False, msg)
    assert api.create_link("admin", sid, a, "eth1", b, "eth1") == (False, msg)
    s = db.get_slice(sid)
    assert len(s["vms"]) == 2 and s["links"] == []
    assert db.get_user("admin")["used_vms"] == 2


@pytest.mark.parametrize("call", [
    lambda api: api.create_user("student", "newbie", "secret12"),
    lambda api: api.set_quota("student", "student", 50),
    lambda api: api.reset_password("student", "admin", "hacked12"),
    lambda api: api.list_users("student"),
    lambda api: api.find_orphans("student"),
    lambda api: api.cleanup_orphans("student", []),
])
def test_admin_only_operations_refused_for_students(tmp_path, call):
    api, db, ex = make_api(tmp_path)
    before = db.load()
    assert call(api) == (False, "Only an admin can do this")
    assert db.load() == before
    assert ex.calls == []


def test_admin_user_management(tmp_path):
    api, db, _ex = make_api(tmp_path)
    ok(api.create_user("admin", "newbie", "secret12"))
    u = db.get_user("newbie")
    assert (u["quota_vms"], u["role"], u["used_vms"], u["slices"]) == (6, "student", 0, [])
    assert u["password_hash"].startswith("scrypt$")
    assert api.create_user("admin", "newbie", "secret12") == (False, "User newbie already exists")
    assert api.create_user("admin", "Bad Name", "secret12")[0] is False
    assert api.create_user("admin", "ok_name", "123") == (False, "Password must have at least 6 characters")
    ok(api.set_quota("admin", "newbie", 3))
    assert db.get_user("newbie")["quota_vms"] == 3
    assert api.set_quota("admin", "newbie", "x") == (False, "Quota must be a number")
    assert api.set_quota("admin", "ghost", 3) == (False, "User not found")
    ok(api.reset_password("admin", "newbie", "other123"))
    ok(api.authenticate("newbie", "other123"))
    assert api.authenticate("newbie", "secret12")[0] is False


def test_set_quota_not_below_used(tmp_path):
    api, db, _ex = make_api(tmp_path)
    build_slice(api, user="student", vms=(("a", 0, False), ("b", 0, False)))
    assert api.set_quota("admin", "student", 1)[0] is False
    assert db.get_user("student")["quota_vms"] == 6


# --- delete of a design slice --------------------------------------------------------------

def test_delete_design_slice_removes_overlays_and_slice_id(tmp_path):
    api, db, ex = make_api(tmp_path)
    keep = ok(api.create_slice("admin", "keep"))["slice_id"]
    sid, (a, b) = build_slice(api, name="gone", vms=(("vm1", 1, False), ("vm2", 1, False)))
    hosts = {v["vm_id"]: v["worker_ip"] for v in db.get_slice(sid)["vms"]}
    ex.calls.clear()
    assert api.delete_slice("admin", sid) == (True, "Slice deleted")
    rms = [(h, t) for h, t in ex.calls if t.startswith("case ")]
    rm = ('case "$(cat "$HOME"/vm_images/{0}_img.qcow2.owner 2>/dev/null)" in \'cloud-repositorio vm {1}\''
          '|cloud-repositorio) rm -f "$HOME"/vm_images/{0}_img.qcow2 "$HOME"/vm_images/{0}_img.qcow2.owner;; esac')
    assert sorted(rms) == sorted([(hosts[a], rm.format("vm1", a)), (hosts[b], rm.format("vm2", b))])
    # the whole teardown runs even for a design slice (a dead session may have left VMs behind)
    stops = {(h, vm_id) for h, t in ex.calls for vm_id in (a, b) if f"vm{vm_id}.pid" in t and "kill -9" in t}
    assert stops == {(hosts[a], a), (hosts[b], b)}
    assert db.get_slice(sid) is None
    user = db.get_user("admin")
    assert user["slices"] == [keep]
    assert user["used_vms"] == 0


def test_delete_keeps_slice_when_overlay_removal_fails(tmp_path):
    api, db, ex = make_api(tmp_path)
    sid, _ = build_slice(api, vms=(("vm1", 0, False),))
    ex.down_hosts.add(WORKERS[0])
    res = api.delete_slice("admin", sid)
    assert res[0] is False
    assert res[1].startswith(f"Delete incomplete: step 'stop VM 1001 (vm1)' on {WORKERS[0]}: ")
    assert db.get_slice(sid)["status"] == "design"
    assert "busy" not in db.get_slice(sid)
    assert db.get_user("admin")["used_vms"] == 1
    ex.down_hosts.clear()
    ok(api.delete_slice("admin", sid))
    assert db.get_slice(sid) is None


def test_admin_deletes_student_slice_and_student_quota_returns(tmp_path):
    api, db, _ex = make_api(tmp_path)
    sid, _ = build_slice(api, user="student", vms=(("vm1", 0, False),))
    ok(api.delete_slice("admin", sid))
    st = db.get_user("student")
    assert st["slices"] == [] and st["used_vms"] == 0


@pytest.mark.parametrize("value", ["\u0663", "\u00b2", "\u2460", "1\x00", "", None, True, "3.0", "1e3"])
def test_only_ascii_digits_are_numbers_in_the_api(tmp_path, value):
    api, db, _ex = make_api(tmp_path)
    before = db.get_user("student")["quota_vms"]
    assert api.set_quota("admin", "student", value) == (False, "Quota must be a number")
    assert db.get_user("student")["quota_vms"] == before
    ok(api.create_slice("admin", "s1"))
    res = api.add_vm_to_slice("admin", 1000, "vm1", "cirros", value)
    assert res == (False, "Number of data interfaces must be a number")
