"""Orphans: what the hosts hold minus what the database owns (FakeExecutor, scans answered per step)."""
from __future__ import annotations

import os

from uhelpers import NODE, WORKERS, build_slice, make_api, ok, script_of

from hosts import kinds
from hosts.hostcmd import HostCommand
from hosts.resources import ClusterView, HostContext, Key
from usecases import reconcile

W0_SCAN = "\n".join([
    "qemu 1001 4242", "tap tap1001_0", "tap tap1001_1", "port tap1001_1 100", "vmfiles vm1001.pid",
    "overlay vm1_img.qcow2",
    "qemu 1999 5555", "tap tap1999_0", "port tap1999_1 101", "vmfiles vm1999.pid", "vmfiles vm1999.serial",
    "overlay ghost_img.qcow2", "nonsense line", ""])
W1_SCAN = "qemu 1002 4243\ntap tap1002_0\ntap tap1002_1\nport tap1002_1 100\noverlay vm2_img.qcow2\n"
NODE_SCAN = "\n".join([
    "vlan 100", "gateway 100 192.168.100.1/24", "namespace 100", "dnsmasq 100 alive",
    "vlan 400", "gateway 400 10.60.7.1/24", "namespace 400", "dnsmasq 400 alive", "reservation 1001",
    "nat -A POSTROUTING -s 10.60.7.0/24 -o uplink0 -m comment --comment cloud-repositorio -j MASQUERADE",
    "isolation ipv4",
    "vlan 555", "gateway 555 -", "namespace 555", "dnsmasq 555 dead", "reservation 1888", ""])


def scans(ex):
    ex.answer("scan", host=WORKERS[0], out=W0_SCAN)
    ex.answer("scan", host=WORKERS[1], out=W1_SCAN)
    ex.answer("scan", host=NODE, out=NODE_SCAN)


def linked(tmp_path):
    api, db, ex = make_api(tmp_path)
    sid, ids = build_slice(api, vms=(("vm1", 2, True), ("vm2", 1, False)), links=((0, "eth1", 1, "eth1"),))
    return api, db, ex, sid, ids


def test_orphans_are_found_minus_owned(tmp_path):
    api, _db, ex, sid, _ids = linked(tmp_path)
    ok(api.deploy_slice("admin", sid))
    scans(ex)
    orphans = ok(api.find_orphans("admin"))
    keys = {o.key for o in orphans}
    assert keys == {
        Key("qemu", WORKERS[0], vm_id=1999), Key("tap", WORKERS[0], vm_id=1999, name="tap1999_0"),
        Key("port", WORKERS[0], vm_id=1999, name="tap1999_1"), Key("vmfiles", WORKERS[0], vm_id=1999),
        Key("overlay", WORKERS[0], name="ghost_img.qcow2"),
        Key("vlan", NODE, vlan=555), Key("gateway", NODE, vlan=555), Key("namespace", NODE, vlan=555),
        Key("dnsmasq", NODE, vlan=555), Key("reservation", NODE, vm_id=1888)}
    names = {(o.host, o.name) for o in orphans}
    assert (WORKERS[0], "QEMU of VM 1999") in names and (NODE, "DHCP reservation of VM 1888") in names
    assert (WORKERS[0], "overlay ghost_img.qcow2") in names and (NODE, "gateway of VLAN 555") in names


def test_a_design_slices_leftovers_are_not_orphans(tmp_path):
    # a session that died mid-deploy may have left processes of a design slice: the next deploy or delete
    # of that slice removes them; option 8 never touches anything of a slice still in the database
    api, _db, ex, _sid, _ids = linked(tmp_path)
    scans(ex)
    keys = {o.key for o in ok(api.find_orphans("admin"))}
    assert not [k for k in keys if k.vm_id in (1001, 1002) or k.vlan in (100, 400)]


def test_a_stale_deleting_mark_keeps_the_slice_owned(tmp_path):
    # defect: a Delete session killed before it touched a host left "deleting" with a dead pid;
    # option 8 then removed the whole running slice
    api, db, ex, sid, _ids = linked(tmp_path)
    ok(api.deploy_slice("admin", sid))
    with db.transaction() as data:
        s = data["slices"][str(sid)]
        s["status"] = "deleting"
        s["busy"] = {"pid": 999999, "host": os.uname().nodename, "start": "1", "previous": "running"}
    scans(ex)
    orphans = ok(api.find_orphans("admin"))
    assert not [o for o in orphans if o.key.vm_id in (1001, 1002) or o.key.vlan in (100, 400)]
    ex.calls.clear()
    ok(api.cleanup_orphans("admin", orphans))
    for _h, t in ex.calls:
        assert "1001" not in t and "1002" not in t and "vlan100" not in t
    assert db.get_slice(sid)["status"] == "running"  # and the file says so again


def test_cleanup_removes_only_what_is_listed_one_command_per_host(tmp_path):
    api, _db, ex, sid, _ids = linked(tmp_path)
    ok(api.deploy_slice("admin", sid))
    scans(ex)
    orphans = [o for o in ok(api.find_orphans("admin")) if o.key.vm_id == 1999 or o.key.vlan == 555]
    ex.calls.clear()
    assert api.cleanup_orphans("admin", orphans) == (True, f"Cleanup completed: {len(orphans)} item(s) removed")
    removals = [c for c in ex.commands if c.action == "remove_orphans"]
    assert sorted(c.host for c in removals) == sorted([WORKERS[0], NODE])
    w0 = script_of(next(t for h, t in ex.calls if h == WORKERS[0] and "remove" not in t and "1999" in t))
    assert "tap1999_0" in w0 and "tap1999_1" in w0 and "/run/cloud-repositorio/vm1999.pid" in w0
    node = script_of(next(t for h, t in ex.calls if h == NODE and "555" in t))
    assert "gw_vlan555" in node and "ns-dhcp-vlan555" in node
    assert node.count("ip netns del ns-dhcp-vlan555") == 1  # one removal per VLAN, however many kinds list it
    for _h, t in ex.calls:
        assert "ghost_img" not in t and "1888" not in t  # not listed, not removed
        assert "1001" not in t and "vlan100" not in t and "pkill" not in t


def test_cleanup_skips_items_that_became_owned(tmp_path):
    api, _db, ex, sid, _ids = linked(tmp_path)
    ok(api.deploy_slice("admin", sid))
    ex.calls.clear()
    stale = [reconcile.Orphan(WORKERS[0], "QEMU of VM", "QEMU of VM 1001", Key("qemu", WORKERS[0], vm_id=1001)),
             reconcile.Orphan(NODE, "VLAN", "VLAN 100", Key("vlan", NODE, vlan=100))]
    ok(api.cleanup_orphans("admin", stale))
    assert [c for c in ex.commands if c.action == "remove_orphans"] == []


def test_dead_pending_vm_is_listed_and_rolled_back(tmp_path):
    # defect: a manager killed during Add VM left a VM pending forever (quota taken, slice undeployable)
    api, db, ex = make_api(tmp_path)
    sid = ok(api.create_slice("admin", "s"))["slice_id"]
    with db.transaction() as data:
        data["slices"][str(sid)]["vms"].append({
            "vm_id": 1005, "name": "half", "owner": "admin", "worker_ip": WORKERS[0], "vnc_port": 5901,
            "status": "pending", "pid": None, "qcow_image": "~/vm_images/half_img.qcow2", "flavor": {},
            "interfaces": [], "busy": {"pid": 999999, "host": os.uname().nodename, "start": "1"}})
        data["users"]["admin"]["used_vms"] = 1
    orphans = ok(api.find_orphans("admin"))
    pending = [o for o in orphans if o.key.kind == "pending"]
    assert len(pending) == 1 and "VM 1005 (half)" in pending[0].name and pending[0].host == "database"
    ok(api.cleanup_orphans("admin", pending))
    assert db.get_slice(sid)["vms"] == [] and db.get_user("admin")["used_vms"] == 0
    assert ("delete_overlay", "half_img.qcow2") in ex.actions(WORKERS[0])


def test_scan_failure_is_reported_with_the_host(tmp_path):
    api, _db, ex = make_api(tmp_path)
    ex.fail("scan", host=WORKERS[2], err="ovs-vsctl: database connection failed")
    res = api.find_orphans("admin")
    assert res == (False, f"Cannot scan {WORKERS[2]}: exit status 1: ovs-vsctl: database connection failed")
    ex.down_hosts.add(WORKERS[1])
    res = api.find_orphans("admin")
    assert res[0] is False and res[1].startswith(f"Cannot scan {WORKERS[1]}: ")


def test_only_admins_scan(tmp_path):
    api, _db, ex = make_api(tmp_path)
    assert api.find_orphans("student") == (False, "Only an admin can do this")
    assert api.cleanup_orphans("student", []) == (False, "Only an admin can do this")
    assert ex.calls == []


def test_every_kind_has_a_scan_a_parser_and_a_removal(tmp_path):
    api, _db, ex = make_api(tmp_path)
    ctx = HostContext(ex.config, {h: "/home/ubuntu" for h in ex.config.hosts})
    view = ClusterView(ex.config, [])
    for kind in kinds.kinds():
        host = NODE if kind.role == "node" else WORKERS[0]
        assert kind.scan(ctx, host).strip(), kind.name
        assert list(kind.owned(view)) == [] and kind.expected(view) == {}, kind.name
        assert kind.remove(ctx, host, [Key(kind.name, host, vm_id=1001, vlan=100, name="x_img.qcow2")]), kind.name
        assert kind.name in reconcile.scan_command(ctx, host).script or kind.name == "overlay"


def test_scan_lines_round_trip_through_the_parsers():
    for line, key in [("qemu 1001 77", Key("qemu", "h", vm_id=1001)),
                      ("tap tap1001_3", Key("tap", "h", vm_id=1001, name="tap1001_3")),
                      ("port tap1001_3 100", Key("port", "h", vm_id=1001, name="tap1001_3")),
                      ("vmfiles vm1001.seed.img", Key("vmfiles", "h", vm_id=1001)),
                      ("overlay a_1005_img.qcow2", Key("overlay", "h", name="a_1005_img.qcow2")),
                      ("vlan 100", Key("vlan", "h", vlan=100)), ("dnsmasq 100 dead", Key("dnsmasq", "h", vlan=100)),
                      ("reservation 1001", Key("reservation", "h", vm_id=1001))]:
        assert [f.key for f in reconcile.parse_scan("h", line)] == [key], line
    for junk in ("qemu x 1", "tap eth0", "vmfiles vm1001.txt", "overlay thesis.qcow2", "vlan abc", "unknown 1"):
        assert reconcile.parse_scan("h", junk) == [], junk


def test_removal_commands_are_root_and_one_per_host():
    from fakes import FakeExecutor
    config = FakeExecutor().config
    ctx = HostContext(config, {h: "/home/ubuntu" for h in config.hosts})
    cmds = reconcile.removal_commands(ctx, [Key("overlay", WORKERS[0], name="a_img.qcow2"),
                                           Key("qemu", WORKERS[0], vm_id=1001), Key("vlan", NODE, vlan=100)])
    assert [type(c) for c in cmds] == [HostCommand, HostCommand]
    assert all(c.sudo for c in cmds)
    w = next(c for c in cmds if c.host == WORKERS[0]).script
    assert "rm -f /home/ubuntu/vm_images/a_img.qcow2 /home/ubuntu/vm_images/a_img.qcow2.owner" in w


def test_a_thousand_orphans_are_removed_in_commands_a_login_shell_accepts():
    # 1,654 leftovers on one node once made a single command line that sshd could not run.
    from fakes import FakeExecutor

    from remote_executor import RemoteExecutor
    config = FakeExecutor().config
    ctx = HostContext(config, {h: "/home/ubuntu" for h in config.hosts})
    keys = [Key(kind, NODE, vlan=v) for v in range(1000, 1500) for kind in ("vlan", "namespace", "dnsmasq")]
    keys += [Key("reservation", NODE, vm_id=100000 + i) for i in range(100)]
    cmds = reconcile.removal_commands(ctx, keys)
    assert len(cmds) > 1 and {c.host for c in cmds} == {NODE}
    render = RemoteExecutor.__new__(RemoteExecutor)
    render.config = config
    assert max(len(render.render(c)) for c in cmds) < 128 * 1024
    assert sum(int(c.step.split()[1]) for c in cmds) == len(keys)
    every = "\n".join(c.script for c in cmds)
    for v in (1000, 1250, 1499):
        assert f"ip netns del ns-dhcp-vlan{v} " in every
    assert "vm100099" in every


def test_the_trunk_is_an_orphan_only_when_no_vlan_is_owned(tmp_path):
    api, _db, ex, sid, _ids = linked(tmp_path)
    ok(api.deploy_slice("admin", sid))
    ex.answer("scan", host=NODE, out="trunk cr-trunk ok\nvlan 100\n")
    assert Key("trunk", NODE, name="cr-trunk") not in {o.key for o in ok(api.find_orphans("admin"))}
    ok(api.delete_slice("admin", sid))
    ex.answer("scan", host=NODE, out="trunk cr-trunk detached\n")
    orphans = ok(api.find_orphans("admin"))
    assert [(o.key, o.name) for o in orphans] == [(Key("trunk", NODE, name="cr-trunk"),
                                                   "trunk of the network node (cr-trunk)")]
    ex.commands.clear()
    ok(api.cleanup_orphans("admin", orphans))
    removal = script_of(next(c for c in reversed(ex.calls) if c[0] == NODE)[1])
    assert "--if-exists del-br cr-node -- --if-exists del-port br-int cr-int-patch" in removal
    assert "ip link del cr-trunk" in removal and "for f in /run/cloud-repositorio/vlan*.owner" in removal
    assert "flock 9" in removal and "trunk.lock" in removal


def test_old_layout_ports_are_orphans_unless_their_vlan_is_owned(tmp_path):
    api, _db, ex, sid, _ids = linked(tmp_path)
    ok(api.deploy_slice("admin", sid))
    ex.answer("scan", host=NODE, out="oldport 100 gw_vlan100\noldport 100 dhcp100-o\noldport 555 gw_vlan555\n"
                                      "oldport 556 gw_vlan999\n")
    orphans = ok(api.find_orphans("admin"))
    assert [(o.key, o.name) for o in orphans] == [(Key("oldport", NODE, vlan=555, name="gw_vlan555"),
                                                   "old-layout port gw_vlan555 of VLAN 555")]
    ex.commands.clear()
    ok(api.cleanup_orphans("admin", orphans))
    removal = script_of(next(c for c in reversed(ex.calls) if c[0] == NODE)[1])
    assert "--if-exists del-port br-int gw_vlan555 -- --if-exists del-port br-int dhcp555-o" in removal
    assert "gw_vlan100" not in removal
