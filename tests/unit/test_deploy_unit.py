"""Deploy, rollback, delete and orphans with a FakeExecutor (SPEC §4.3, §4.4, §4.6, §4.7, §4.14)."""
from __future__ import annotations

import shlex

import pytest
from uhelpers import NODE, WORKERS, build_slice, make_api, ok, qemu_argv, script_of

import vlan_manager


def _is_launch(text):
    return "qemu-system-x86_64 " in text and "-daemonize" in text


def _node_scripts(ex):
    return [script_of(t) for h, t in ex.calls if h == NODE and t.startswith("sudo")]


@pytest.fixture
def linked(tmp_path):
    """Slice 1000: vm1 (1001, internet, 2 data NICs) -- vm2 (1002, 1 data NIC) on VLAN 100."""
    api, db, ex = make_api(tmp_path)
    sid, ids = build_slice(api, vms=(("vm1", 2, True), ("vm2", 1, False)), links=((0, "eth1", 1, "eth1"),))
    assert (sid, ids) == (1000, [1001, 1002])
    ex.calls.clear()
    return api, db, ex, sid, ids


def test_deploy_success_updates_database(linked):
    api, db, ex, sid, _ids = linked
    res = api.deploy_slice("admin", sid)
    assert res[0] is True
    assert res[1].startswith("Slice deployed successfully (2 VMs, ")
    s = db.get_slice(sid)
    assert s["status"] == "running"
    assert "busy" not in s
    assert [(v["status"], v["pid"]) for v in s["vms"]] == [("running", "4242"), ("running", "4242")]
    assert [n["status"] for n in s["networks"]] == ["running"]


def test_network_node_before_vms(linked):
    api, _db, ex, sid, _ids = linked
    ok(api.deploy_slice("admin", sid))
    node_idx = [i for i, (h, t) in enumerate(ex.calls) if h == NODE and t.startswith("sudo")]
    vm_idx = [i for i, (_h, t) in enumerate(ex.calls) if _is_launch(t)]
    assert len(node_idx) == 2  # VLAN 100 and the internet VLAN
    assert len(vm_idx) == 2
    assert max(node_idx) < min(vm_idx)
    assert {ex.calls[i][0] for i in vm_idx} == {WORKERS[0], WORKERS[1]}


def test_one_dnsmasq_per_vlan_with_own_files_never_pkill(tmp_path):
    api, _db, ex = make_api(tmp_path)
    sid, _ = build_slice(api, vms=(("a", 2, False), ("b", 2, False)),
                         links=((0, "eth1", 1, "eth1"), (0, "eth2", 1, "eth2")))
    ex.calls.clear()
    ok(api.deploy_slice("admin", sid))
    scripts = _node_scripts(ex)
    assert len(scripts) == 2
    for vlan in (100, 101):
        mine = [s for s in scripts if f"gw_vlan{vlan} " in s]
        assert len(mine) == 1
        s = mine[0]
        dnsmasq = [ln for ln in s.splitlines() if " dnsmasq " in ln and "--pid-file" in ln]
        assert len(dnsmasq) == 1
        argv = shlex.split(dnsmasq[0])
        assert argv[:3] == ["nsenter", f"--net=/run/netns/ns-dhcp-vlan{vlan}", "dnsmasq"]
        assert f"--pid-file=/run/cloud-repositorio/dnsmasq-vlan{vlan}.pid" in argv
        assert f"--dhcp-leasefile=/run/cloud-repositorio/dnsmasq-vlan{vlan}.leases" in argv
        assert f"--interface=dhcp{vlan}-i" in argv
        assert f"--dhcp-range=192.168.{vlan}.10,192.168.{vlan}.250,255.255.255.0,12h" in argv
        assert "--dhcp-option=option:router" in argv  # a link sends no default route
        assert not [a for a in argv if a.startswith("--dhcp-option=option:router,")]
        gateway = [ln for ln in s.splitlines() if "ip -batch" in ln and f"gw_vlan{vlan} " in ln]
        assert len(gateway) == 1, gateway  # in the gateways' namespace, with its address
        assert shlex.split(gateway[0].split("|")[1]) == ["nsenter", "--net=/run/netns/ns-cr-gateways",
                                                         "ip", "-batch", "-"]
        assert f"addr replace 192.168.{vlan}.1/24 dev gw_vlan{vlan}" in gateway[0]
        other = 101 if vlan == 100 else 100
        assert f"vlan{other}" not in s  # never touches the other VLAN
    for _h, t in ex.calls:
        assert "pkill" not in t and "killall" not in t


def test_qemu_command_line(linked):
    api, _db, ex, sid, _ids = linked
    ok(api.deploy_slice("admin", sid))
    launches = {h: script_of(t) for h, t in ex.calls if _is_launch(t)}
    argv = qemu_argv(launches[WORKERS[0]])
    assert argv[argv.index("-name") + 1] == "cr-vm1001,process=cr-vm1001"
    assert argv[argv.index("-pidfile") + 1] == "/run/cloud-repositorio/vm1001.pid"
    assert argv[argv.index("-vnc") + 1] == ":1,password=on"  # asks for the VM's password
    assert argv[argv.index("-qmp") + 1] == "unix:/run/cloud-repositorio/vm1001.qmp,server=on,wait=off"
    drives = [argv[k + 1] for k, a in enumerate(argv) if a == "-drive"]
    assert drives[1] == "file=/run/cloud-repositorio/vm1001.seed.img,if=virtio,format=raw,readonly=on"
    m, smp = argv.index("-m"), argv.index("-smp")
    assert argv[m:m + 2] == ["-m", "512"] and argv[smp:smp + 2] == ["-smp", "1"]
    i = argv.index("-accel")
    assert argv[i:i + 4] == ["-accel", "kvm", "-accel", "tcg"]
    assert argv.count("-accel") == 2
    assert "-daemonize" in argv
    assert any(a.startswith("file=/home/ubuntu/vm_images/vm1_img.qcow2,") for a in argv)
    netdevs = [argv[k + 1] for k, a in enumerate(argv) if a == "-netdev"]
    devices = [argv[k + 1] for k, a in enumerate(argv) if a == "-device"]
    assert netdevs == [f"tap,id=net{k},ifname=tap1001_{k},script=no,downscript=no" for k in range(3)]
    assert devices == [f"virtio-net-pci,netdev=net{k},mac=52:54:00:03:e9:0{k}" for k in range(3)]
    assert "pkill" not in launches[WORKERS[0]]
    argv2 = qemu_argv(launches[WORKERS[1]])
    assert argv2[argv2.index("-vnc") + 1] == ":2,password=on"
    assert [argv2[k + 1] for k, a in enumerate(argv2) if a == "-device"] == [
        "virtio-net-pci,netdev=net0,mac=52:54:00:03:ea:00", "virtio-net-pci,netdev=net1,mac=52:54:00:03:ea:01"]


def test_ubuntu_flavor_sizing(tmp_path):
    api, _db, ex = make_api(tmp_path)
    sid = ok(api.create_slice("admin", "s"))["slice_id"]
    ok(api.add_vm_to_slice("admin", sid, "u", "ubuntu", 0))
    ok(api.deploy_slice("admin", sid))
    argv = qemu_argv(next(script_of(t) for _h, t in ex.calls if _is_launch(t)))
    assert argv[argv.index("-m") + 1] == "512" and argv[argv.index("-smp") + 1] == "1"
    # a slice without links nor internet needs nothing on the network node
    assert [h for h, _t in ex.calls if h == NODE] == []


def test_tap_without_vlan_not_on_bridge(linked):
    api, _db, ex, sid, _ids = linked
    ok(api.deploy_slice("admin", sid))
    launches = {h: script_of(t) for h, t in ex.calls if _is_launch(t)}
    s1, s2 = launches[WORKERS[0]], launches[WORKERS[1]]
    # vm1: eth0 internet (400), eth1 on VLAN 100, eth2 unconnected
    assert "add-port br-int tap1001_0 tag=400" in s1
    assert "add-port br-int tap1001_1 tag=100" in s1
    assert "add-port br-int tap1001_2" not in s1
    assert "link set tap1001_2 up" in s1.splitlines()  # the NIC exists, attached to nothing (in the ip batch)
    assert "--if-exists del-port br-int tap1001_2" in s1  # and no port of an earlier VM stays on it
    # vm2: eth0 without internet is not on the bridge
    assert "add-port br-int tap1002_0" not in s2
    assert "add-port br-int tap1002_1 tag=100" in s2
    for s in (s1, s2):
        assert "add-port br-int tap" in s and " tag=0" not in s


def test_internet_reservation_file(linked):
    api, db, ex, sid, _ids = linked
    ok(api.deploy_slice("admin", sid))
    inet = [s for s in _node_scripts(ex) if "gw_vlan400" in s and "MASQUERADE" in s]
    assert len(inet) == 1
    s = inet[0]
    ip = db.get_slice(sid)["vms"][0]["interfaces"][0]["ip_config"]["ip"]
    assert ip == "10.60.7.101"
    assert ("printf '%s\\n' 52:54:00:03:e9:00,10.60.7.101 > "
            "/run/cloud-repositorio/dnsmasq-vlan400.hosts.d/vm1001.tmp") in s
    assert "mv /run/cloud-repositorio/dnsmasq-vlan400.hosts.d/vm1001.tmp " \
           "/run/cloud-repositorio/dnsmasq-vlan400.hosts.d/vm1001" in s
    assert "vm1002" not in s  # vm2 has no internet
    assert "--pid-file=/run/cloud-repositorio/dnsmasq-vlan400.pid" in s
    assert ("iptables -w -t nat -A POSTROUTING -s 10.60.7.0/24 -o uplink0 -m comment --comment cloud-repositorio "
            "-j MASQUERADE") in s


def test_isolation_rules_loaded_with_link_vlans(linked):
    api, _db, ex, sid, _ids = linked
    ok(api.deploy_slice("admin", sid))
    s = next(x for x in _node_scripts(ex) if "gw_vlan100 " in x)
    assert "-A CR-FORWARD -i gw_vlan+ -j DROP" in s
    assert "-A CR-FORWARD -o gw_vlan+ -j DROP" in s
    assert "-A CR-FORWARD -i gw_vlan400 -o uplink0 -j ACCEPT" in s


def test_vm_start_failure_rolls_back(linked):
    api, db, ex, sid, _ids = linked
    ex.fail("start_vm", host=WORKERS[1], err="Could not open")
    res = api.deploy_slice("admin", sid)
    assert res[0] is False
    assert res[1].startswith(f"Deploy failed at step 'start VM 1002 (vm2)' on {WORKERS[1]}: "
                             "exit status 1: Could not open. ")
    assert res[1].endswith("Everything this deploy created was removed; the slice is still in design.")
    first_fail = next(i for i, (h, t) in enumerate(ex.calls) if h == WORKERS[1] and _is_launch(t))
    after = [(h, script_of(t)) for h, t in ex.calls[first_fail + 1:]]
    stops = {h for h, s in after
             if "qemu-system" not in s and "kill -9" in s and "/run/cloud-repositorio/vm100" in s}
    assert stops == {WORKERS[0], WORKERS[1]}
    assert all("qemu-system-x86_64 -name" not in s for _h, s in after)
    assert any(h == NODE and "--if-exists del-port br-int gw_vlan100" in s
               and "ip netns del ns-dhcp-vlan100" in s for h, s in after)
    # the internet VLAN: last user, so it is removed again
    assert any(h == NODE and "del-port br-int gw_vlan400" in s and "dnsmasq-vlan400.hosts.d/vm1001" in s
               for h, s in after)
    s = db.get_slice(sid)
    assert s["status"] == "design" and "busy" not in s
    assert [(v["status"], v["pid"]) for v in s["vms"]] == [("design", None), ("design", None)]
    # and a second deploy succeeds once QEMU works
    ex.rules.clear()
    ok(api.deploy_slice("admin", sid))
    assert db.get_slice(sid)["status"] == "running"


def test_network_failure_rolls_back_before_vms(linked):
    api, db, ex, sid, _ids = linked
    ex.fail("vlan_up", target=100, status=2, err="ovs-vsctl: database connection failed")
    res = api.deploy_slice("admin", sid)
    assert res[0] is False
    assert "step 'gateway and DHCP for VLAN 100' on 10.9.0.10: exit status 2: ovs-vsctl: database " \
           "connection failed" in res[1]
    assert not any(_is_launch(t) for _h, t in ex.calls)
    assert db.get_slice(sid)["status"] == "design"


def test_unreachable_worker_fails_before_network_node_changes(linked):
    api, db, ex, sid, _ids = linked
    ex.down_hosts.add(WORKERS[1])
    res = api.deploy_slice("admin", sid)
    assert res[0] is False
    assert res[1].startswith(f"Deploy failed at step 'connect' on {WORKERS[1]}: ")
    assert f"cannot connect to {WORKERS[1]}:22" in res[1]
    for h, t in ex.calls:
        s = script_of(t)
        assert "--may-exist add-port" not in s, (h, s)
        assert "dnsmasq --conf-file" not in s
        assert "qemu-system-x86_64 -name" not in s
        assert "MASQUERADE" not in s or "-D POSTROUTING" in s
    s = db.get_slice(sid)
    assert s["status"] == "design" and "busy" not in s


def test_unreachable_worker_message_says_nothing_was_left(linked):
    api, _db, ex, sid, _ids = linked
    ex.down_hosts.add(WORKERS[1])
    res = api.deploy_slice("admin", sid)
    assert res[0] is False
    assert res[1].endswith("Nothing was created; the slice is still in design."), res[1]
    assert WORKERS[1] in res[1] and "connect" in res[1]
    assert [t for _h, t in ex.calls if t != 'printf %s "$HOME"'] == []  # nothing but the reachability check


def test_second_deploy_refused(linked):
    api, _db, ex, sid, _ids = linked
    ok(api.deploy_slice("admin", sid))
    n = len(ex.calls)
    assert api.deploy_slice("admin", sid) == (False, "Slice already running")
    assert len(ex.calls) == n


def test_deploy_empty_slice_refused(tmp_path):
    api, _db, ex = make_api(tmp_path)
    sid = ok(api.create_slice("admin", "s"))["slice_id"]
    assert api.deploy_slice("admin", sid) == (False, "Slice has no VMs: add VMs before deploying")
    assert ex.calls == []


def test_delete_running_slice(linked):
    api, db, ex, sid, _ids = linked
    ok(api.deploy_slice("admin", sid))
    ex.calls.clear()
    assert api.delete_slice("admin", sid) == (True, "Slice deleted")
    texts = [(h, script_of(t)) for h, t in ex.calls]
    for vm_id, worker in ((1001, WORKERS[0]), (1002, WORKERS[1])):
        assert any(h == worker and f"/run/cloud-repositorio/vm{vm_id}.pid" in s and "kill -9" in s
                   and f"--if-exists del-port br-int tap{vm_id}_1" in s for h, s in texts)
    assert any(h == NODE and "--if-exists del-port br-int gw_vlan100" in s for h, s in texts)
    for vm_id, worker, name in ((1001, WORKERS[0], "vm1"), (1002, WORKERS[1], "vm2")):
        disk = f'"$HOME"/vm_images/{name}_img.qcow2'
        assert (worker, f"""case "$(cat {disk}.owner 2>/dev/null)" in 'cloud-repositorio vm {vm_id}'"""
                        f"""|cloud-repositorio) rm -f {disk} {disk}.owner;; esac""") in ex.calls
    stop_i = max(i for i, (h, s) in enumerate(texts) if h in WORKERS and "kill -9" in s)
    rm_i = min(i for i, (_h, s) in enumerate(texts) if s.startswith('case "$(cat "$HOME"/vm_images/'))
    assert stop_i < rm_i  # disks go after the VMs are stopped
    assert all("pkill" not in s for _h, s in texts)
    assert db.get_slice(sid) is None
    user = db.get_user("admin")
    assert user["used_vms"] == 0 and user["slices"] == []


def test_delete_running_slice_with_host_down_keeps_it_running(linked):
    api, db, ex, sid, _ids = linked
    ok(api.deploy_slice("admin", sid))
    ex.down_hosts.add(WORKERS[1])
    res = api.delete_slice("admin", sid)
    assert res[0] is False and res[1].startswith("Delete incomplete: ")
    assert db.get_slice(sid)["status"] == "running"
    assert db.get_user("admin")["used_vms"] == 2


def _internet_slice(api, name):
    sid, ids = build_slice(api, name=name, vms=((f"{name}vm", 0, True),))
    ok(api.deploy_slice("admin", sid))
    return sid, ids[0]


def test_internet_vlan_last_user_is_decided_on_the_node_under_its_lock(tmp_path):
    api, _db, ex = make_api(tmp_path)
    s1, vm1 = _internet_slice(api, "a")
    s2, vm2 = _internet_slice(api, "b")
    # each deploy writes only its own slice's reservation
    up2 = [s for s in _node_scripts(ex) if "MASQUERADE" in s and "-A POSTROUTING" in s][-1]
    assert f"dnsmasq-vlan400.hosts.d/vm{vm2}" in up2 and f"dnsmasq-vlan400.hosts.d/vm{vm1}" not in up2
    assert "flock 9" in up2 and "9>/run/cloud-repositorio/vlan400.lock" in up2
    ex.calls.clear()
    ok(api.delete_slice("admin", s1))
    node = _node_scripts(ex)
    assert len(node) == 1
    release = node[0]
    assert f"rm -f /run/cloud-repositorio/dnsmasq-vlan400.hosts.d/vm{vm1}" in release
    assert f"vm{vm2}" not in release
    assert "dhcp_release dhcp400-i" in release                  # its lease is given back at once
    assert "9>/run/cloud-repositorio/vlan400.lock" in release
    # teardown only when no reservation is left on the node, else a reload
    cond = release.index('if [ -z "$(ls -A /run/cloud-repositorio/dnsmasq-vlan400.hosts.d')
    assert cond < release.index("ip netns del ns-dhcp-vlan400") < release.index("\nelse\n") \
        < release.index("kill -HUP")
    assert ("iptables -w -t nat -D POSTROUTING -s 10.60.7.0/24 -o uplink0 -m comment --comment cloud-repositorio "
            "-j MASQUERADE") in release


def test_rollback_releases_only_its_own_internet_reservations(tmp_path):
    api, db, ex = make_api(tmp_path)
    s1, vm1 = _internet_slice(api, "a")
    s2, ids = build_slice(api, name="b", vms=(("bvm", 0, True),))
    ex.fail("start_vm", err="Could not open")
    ex.calls.clear()
    assert api.deploy_slice("admin", s2)[0] is False
    releases = [s for s in _node_scripts(ex) if "dhcp_release" in s]
    assert len(releases) == 1
    assert f"hosts.d/vm{ids[0]}" in releases[0] and f"hosts.d/vm{vm1}" not in releases[0]
    assert db.get_slice(s1)["status"] == "running"


# --- idempotent steps, Ctrl-C ------------------------------------------------------------------

def test_launch_clears_leftovers_of_same_vm_first(linked):
    api, _db, ex, sid, _ids = linked
    ok(api.deploy_slice("admin", sid))
    s = next(script_of(t) for h, t in ex.calls if h == WORKERS[0] and _is_launch(t))
    lines = s.splitlines()
    assert lines[0] == "IFS= read -r pw || true"  # the VM's password arrives on stdin, first
    assert lines[2] == "set -e"
    kill = next(i for i, ln in enumerate(lines) if "kill -9" in ln and "/run/cloud-repositorio/vm1001.pid" in ln)
    deltap = next(i for i, ln in enumerate(lines) if "--if-exists del-port br-int tap1001_0" in ln)
    qemu = next(i for i, ln in enumerate(lines) if ln.startswith("qemu-system-x86_64 "))
    assert kill < qemu and deltap < qemu
    assert "grep -q -- '-name cr-vm1001,'" in lines[kill]  # only that VM's QEMU is killed
    # a restart's old ports leave in a transaction of their own, before their TAPs (a port removed
    # and re-added in one transaction keeps its OpenFlow port on the deleted TAP); only if a TAP is there
    own = next(i for i, ln in enumerate(lines) if ln.startswith("if [ -e /proc/sys/net/ipv4/conf/tap1001_0 ] || ")
               and "del-port br-int tap1001_0 -- --if-exists del-port br-int tap1001_1" in ln)
    iplink = next(i for i, ln in enumerate(lines) if "ip link del tap1001_0" in ln)
    assert kill < own < iplink and "add-port" not in lines[own]
    assert "vm1002" not in s


def test_vlan_up_recreates_its_own_dhcp_namespace(linked):
    api, _db, ex, sid, _ids = linked
    ok(api.deploy_slice("admin", sid))
    s = next(x for x in _node_scripts(ex) if "gw_vlan100 " in x)
    lines = s.splitlines()
    down = next(i for i, ln in enumerate(lines) if "ip netns del ns-dhcp-vlan100 " in ln)
    add = lines.index("ip netns add ns-dhcp-vlan100")
    assert down < add
    assert "grep -q -- --pid-file=/run/cloud-repositorio/dnsmasq-vlan100.pid" in s


def test_a_link_vlan_is_a_macvlan_of_the_trunk_with_its_flows_and_changes_no_ovs_port(linked):
    """Issue 19: the node's Open vSwitch gets no port per VLAN; a VLAN is netlink work and five flows."""
    api, _db, ex, sid, _ids = linked
    ok(api.deploy_slice("admin", sid))
    s = next(x for x in _node_scripts(ex) if "gw_vlan100 " in x)
    lines = s.splitlines()
    gwns = "nsenter --net=/run/netns/ns-cr-gateways"
    assert "if [ -e /proc/sys/net/ipv4/conf/gw_vlan100 ]; then ip link del gw_vlan100; fi" in lines  # layout before
    assert (f"{gwns} ip link show dev gw_vlan100 >/dev/null 2>&1 || ip link add link cr-trunk name gw_vlan100 "
            "netns ns-cr-gateways address 02:00:c0:a8:64:01 type macvlan mode private") in lines
    batch = next(ln for ln in lines if ln.endswith(f"| {gwns} ip -batch -") and "gw_vlan100" in ln)
    assert shlex.split(batch.split(" | ")[0])[2:] == [
        "link set gw_vlan100 address 02:00:c0:a8:64:01 alias cloud-repositorio=vlan100",
        "addr replace 192.168.100.1/24 dev gw_vlan100", "link set gw_vlan100 up"]
    assert ("ip link add link cr-trunk name dhcp100-i netns ns-dhcp-vlan100 address 02:00:c0:a8:64:fe "
            "type macvlan mode private") in lines
    ipv6_off = next(i for i, ln in enumerate(lines) if "net.ipv6.conf.gw_vlan100.disable_ipv6=1" in ln)
    assert lines[ipv6_off].startswith(f"{gwns} sh -c ") and ipv6_off < lines.index(batch)
    # the namespace: made with the trunk (under its lock), no forwarding and no IPv6 before any gateway
    gwns_up = next(ln for ln in lines if "ip netns add ns-cr-gateways" in ln)
    assert "net.ipv4.ip_forward=0" in gwns_up and "net.ipv6.conf.default.disable_ipv6=1" in gwns_up
    assert lines.index(gwns_up) < ipv6_off
    # its own isolation chains, loaded before the gateway comes up
    restore = next(i for i, ln in enumerate(lines) if f"| {gwns} iptables-restore -w --noflush" in ln)
    assert restore < lines.index(batch)
    # the only ovs-vsctl changes: the trunk, when it is missing; an old-layout port, when there is one
    changes = [ln for ln in lines if "ovs-vsctl" in ln and ("add-port" in ln or "del-port" in ln)]
    assert len(changes) == 2
    assert "add-br cr-node -- set bridge cr-node fail_mode=secure" in changes[0]
    assert "add-port br-int cr-int-patch -- set interface cr-int-patch type=patch options:peer=cr-node-patch" \
        in changes[0]
    assert changes[1].startswith("if { [ -e /proc/sys/net/ipv4/conf/gw_vlan100 ] && ! ip -o -d link show "
                                 "dev gw_vlan100")
    trunk = s.index("port-to-br cr-trunk-br")
    assert s.index("vlan100.owner") < trunk < s.index("ip link add link cr-trunk name gw_vlan100")
    assert "9>/run/cloud-repositorio/trunk.lock" in s
    # the VLAN's flows: one bundle on the node bridge, only between VLAN 100 and its two MACs
    bundle = next(ln for ln in lines if "--bundle add-flows cr-node -" in ln)
    flows = shlex.split(bundle.split(" | ")[0])[2:]
    assert flows[0] == "delete cookie=0x4352000200000064/0xffffffffffffffff"
    assert flows[1:] == ["add " + f for f in vlan_manager.node_vlan_flows(100, "192.168.100.1", "192.168.100.254")]
    assert all("dl_vlan=100," in f or "mod_vlan_vid:100," in f for f in flows[1:])
    assert bundle.index("cr-node") and lines.index(bundle) < lines.index(batch)


def test_node_vlan_flows_map_one_vlan_to_its_two_macs_only():
    flows = vlan_manager.node_vlan_flows(401, "172.17.145.1", "172.17.145.254")
    c = "cookie=0x4352000200000191,priority=100"
    assert flows == [
        f"{c},in_port=cr-node-patch,dl_vlan=401,dl_dst=02:00:ac:11:91:01,actions=strip_vlan,output:cr-trunk-br",
        f"{c},in_port=cr-node-patch,dl_vlan=401,dl_dst=02:00:ac:11:91:fe,actions=strip_vlan,output:cr-trunk-br",
        f"{c},in_port=cr-node-patch,dl_vlan=401,dl_dst=ff:ff:ff:ff:ff:ff,actions=strip_vlan,"
        "mod_dl_dst:02:00:ac:11:91:01,output:cr-trunk-br,mod_dl_dst:02:00:ac:11:91:fe,output:cr-trunk-br",
        f"{c},in_port=cr-trunk-br,dl_src=02:00:ac:11:91:01,actions=mod_vlan_vid:401,output:cr-node-patch",
        f"{c},in_port=cr-trunk-br,dl_src=02:00:ac:11:91:fe,actions=mod_vlan_vid:401,output:cr-node-patch",
    ]

def test_ctrl_c_during_vm_start_rolls_back(tmp_path):
    import os
    import signal
    import time

    from fakes import FakeExecutor

    from database import Database
    from deployment_api import DeploymentAPI
    from orchestrator_api import OrchestratorAPI

    class CtrlC(FakeExecutor):
        fired = False

        def _transport(self, cmd, text, timeout):
            res = super()._transport(cmd, text, timeout)
            if cmd.action == "start_vm" and not CtrlC.fired:
                CtrlC.fired = True
                os.kill(os.getpid(), signal.SIGINT)  # delivered to the main thread, like a real Ctrl-C
                time.sleep(0.3)
            return res

    ex = CtrlC()
    api = OrchestratorAPI(Database(str(tmp_path / "db.yaml")), DeploymentAPI(ex))
    sid, _ids = build_slice(api, vms=(("vm1", 1, False), ("vm2", 1, False)), links=((0, "eth1", 1, "eth1"),))
    res = api.deploy_slice("admin", sid)
    assert CtrlC.fired
    assert res == (False, "Deploy interrupted (Ctrl-C). Everything this deploy created was removed; "
                          "the slice is still in design.")
    assert api.db.get_slice(sid)["status"] == "design"
    assert any(h == NODE and "--if-exists del-port br-int gw_vlan100" in script_of(t) for h, t in ex.calls)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert ex.made("vm") == set() and ex.made("vlan") == set()  # nothing made is left


def test_a_niced_guest_gets_its_scheduling_group_niced_before_its_cpu_runs(tmp_path):
    """``qemu_nice`` lowers the QEMU's autogroup too (QEMU's -daemonize starts a session, and the kernel
    shares the CPU between sessions before nice counts), while the guest waits stopped (``-S``) and
    before QMP ``cont``; the line runs."""
    import os
    import subprocess

    import vm_launcher
    vm = {"vm_id": 1001, "name": "a", "worker_ip": "10.0.0.11", "vnc_port": 5901,
          "qcow_image": "~/vm_images/a_img.qcow2", "interfaces": [],
          "flavor": {"cores": 1, "ram_gb": 0.5, "disk_gb": 1, "image": "/tmp/x.img"}}
    niced = vm_launcher.launch_vm_command(vm, "/h", vm_launcher.LaunchSettings(nice=10), "Abc23456").script
    plain = vm_launcher.launch_vm_command(vm, "/h", vm_launcher.LaunchSettings(), "Abc23456").script
    assert "autogroup" not in plain
    lines = niced.splitlines()
    group = next(i for i, ln in enumerate(lines) if "/autogroup" in ln)
    assert any("nice -n 10 qemu-system-x86_64 " in ln for ln in lines[:group])
    qemu = next(i for i, ln in enumerate(lines) if "qemu-system-x86_64 " in ln)
    assert " -S -daemonize " in lines[qemu]
    start = next(i for i, ln in enumerate(lines) if "set_password" in ln)
    assert qemu < group < start and '{"execute":"cont"}' in lines[start]
    if not os.path.exists("/proc/self/autogroup"):
        pytest.skip("this kernel has no autogroups")
    guest = subprocess.Popen(["setsid", "sleep", "30"])   # a session of its own, as QEMU's -daemonize makes
    try:
        while os.getsid(guest.pid) != guest.pid:   # setsid has not yet made its session
            os.sched_yield()
        subprocess.run(["sh", "-ec", f"pid={guest.pid}\n" + "\n".join(vm_launcher.autogroup_nice(10))], check=True)
        with open(f"/proc/{guest.pid}/autogroup") as f:
            assert f.read().split()[-2:] == ["nice", "10"]
    finally:
        guest.kill()
        guest.wait()
