"""Link VLANs beyond the 198 blocks and the node's trunk, for real (SPEC §16, issue 19), checked from the VMs.

The database holds 198 other slices recording every block of 20 VLANs (design slices without VMs,
written into it as an instructor's class would leave them), so two new slices get no block: their
links take free VLANs elsewhere (401, 402, ...: 172.17.x.0/24 subnets).  Tenant A (admin) and
tenant B (student) each deploy two VMs joined by two links; placement puts their VMs on different
workers, so every link crosses the lab's trunk and the network node's trunk (its node bridge's flows
and the gateways' macvlans).  From inside the VMs: every NIC leased, pings over each link and to its gateway,
full-size frames (1500-byte IP packets: 1518-byte tagged frames on the trunks) in both
directions, and nothing of A reaching B or B reaching A (not a ping, not an ARP, not a broadcast).
"""
from __future__ import annotations

import pytest
from labtools import (
    GATEWAYS,
    assert_clean,
    host_of,
    make_api,
    node_gateways,
    sh,
    wait_for_leases,
    wait_guest_configured,
)
from labtools import console_fails as fails
from labtools import console_ok as ok

import naming
from models import Slice

BLOCKS = [b for b in range(100, 4080, 20) if b != 400]


def mac(vm: dict, i: int) -> str:
    return vm["interfaces"][i]["mac"].lower()


def tap_tx(lab, vm: dict, i: int) -> int:
    """Frames Open vSwitch delivered to the VM's NIC ``eth{i}``."""
    tap = naming.tap_name(vm["vm_id"], i)
    return int(sh(lab, host_of(lab, vm["worker_ip"]),
                  f"ovs-vsctl get interface {tap} statistics:tx_packets").strip().strip('"'))


def every_block_recorded(db) -> None:
    with db.transaction() as data:
        for k, start in enumerate(BLOCKS):
            sid = 50000 + k
            data["slices"][str(sid)] = Slice(sid, "student", name=f"class{k}", vlan_pool_start=start).to_dict()
            data["users"]["student"]["slices"].append(sid)
        data["next_vm_id"] = 60000


def build(api, user: str, name: str) -> tuple:
    made, s = api.create_slice(user, name)
    assert made, s
    assert (s["vlan_pool_start"], s["vlan_pool_end"]) == (None, None), s
    vms = []
    for i in (1, 2):
        made, vm = api.add_vm_to_slice(user, s["slice_id"], f"{name}{i}", "cirros", 2, False)
        assert made, vm
        vms.append(vm)
    links = []
    for ifname in ("eth1", "eth2"):
        made, link = api.create_link(user, s["slice_id"], vms[0]["vm_id"], ifname, vms[1]["vm_id"], ifname)
        assert made, link
        links.append(link["vlan_id"])
    return s["slice_id"], links


@pytest.fixture(scope="module")
def two(lab, tmp_path_factory):
    api = make_api(lab, tmp_path_factory.mktemp("vlans") / "database.yaml")
    every_block_recorded(api.db)
    made = {}
    try:
        for user, name in (("admin", "wa"), ("student", "wb")):
            made[name] = build(api, user, name)
        for (user, name) in (("admin", "wa"), ("student", "wb")):
            ok_, msg = api.deploy_slice(user, made[name][0])
            assert ok_, msg
        a, b = (api.db.get_slice(made[n][0])["vms"] for n in ("wa", "wb"))
        wanted = {(iface["vlan_id"], iface["mac"].lower()) for vm in a + b for iface in vm["interfaces"][1:]}
        got = wait_for_leases(lab, wanted, timeout=180)
        wait_guest_configured(lab, [(vm, i) for vm in a + b for i in ("eth1", "eth2")])
        yield {"api": api, "a": a, "b": b, "vlans": {n: made[n][1] for n in made}, "ip": got}
    finally:
        for name, user in (("wa", "admin"), ("wb", "student")):
            if name in made:
                api.delete_slice(user, made[name][0])
        api.executor.close()


def ip_of(two, vm: dict, i: int) -> str:
    iface = vm["interfaces"][i]
    return two["ip"][(iface["vlan_id"], iface["mac"].lower())]


def test_links_beyond_the_blocks_get_distinct_free_vlans_on_the_nodes_trunk(lab, two):
    va, vb = two["vlans"]["wa"], two["vlans"]["wb"]
    assert va == [401, 402] and vb == [403, 404]       # the VLANs in no block come first
    links = node_gateways(lab)
    flows = sh(lab, "netnode", "ovs-ofctl -O OpenFlow14 --no-stats dump-flows cr-node")
    for v in va + vb:
        assert f"gw_vlan{v}@if" in links, links   # in the gateways' namespace, on the trunk
        assert f"gw_vlan{v}" not in sh(lab, "netnode", "ip -o link show")
        assert len([ln for ln in flows.splitlines() if f"cookie=0x{naming.node_vlan_flow_cookie(v):016x}," in ln]) == 5
    ports = sh(lab, "netnode", "ovs-vsctl list-ports br-int").split()
    assert not [p for p in ports if p.startswith(("gw_vlan", "dhcp"))], ports   # no OVS port per VLAN
    for vm in two["a"] + two["b"]:
        host = host_of(lab, vm["worker_ip"])
        for i in (1, 2):
            tag = sh(lab, host, f"ovs-vsctl get port {naming.tap_name(vm['vm_id'], i)} tag").strip()
            assert tag == str(vm["interfaces"][i]["vlan_id"])
    workers = {vm["worker_ip"] for vm in two["a"]} | {vm["worker_ip"] for vm in two["b"]}
    assert len({two["a"][0]["worker_ip"], two["a"][1]["worker_ip"]}) == 2 and len(workers) >= 2


def test_every_link_leases_in_its_own_subnet_and_pings_its_gateway_and_peer(lab, two):
    for vms in (two["a"], two["b"]):
        for i in (1, 2):
            vlan = vms[0]["interfaces"][i]["vlan_id"]
            net = naming.link_network(vlan)
            for me, peer in ((vms[0], vms[1]), (vms[1], vms[0])):
                assert ip_of(two, me, i).startswith(net["cidr"].rsplit(".", 2)[0] + ".")
                ok(lab, me, f"ping -c 2 -W 2 {net['gateway_ip']}")
                ok(lab, me, f"ping -c 2 -W 2 {ip_of(two, peer, i)}")


def test_full_size_frames_pass_the_trunks_both_ways(lab, two):
    # a 1472-byte ICMP payload is a 1500-byte IP packet: 1514-byte frames on the TAPs, 1518 with the tag
    for vms in (two["a"], two["b"]):
        me, peer = vms
        net = naming.link_network(me["interfaces"][1]["vlan_id"])
        ok(lab, me, f"ping -c 2 -W 3 -s 1472 {net['gateway_ip']}")      # VM -> node's subinterface and back
        ok(lab, me, f"ping -c 2 -W 3 -s 1472 {ip_of(two, peer, 1)}")     # worker -> worker over the trunk
        out = sh(lab, "netnode", f"ip netns exec {GATEWAYS} ping -c 2 -W 2 -M do -s 1472 "
                                 f"-I gw_vlan{me['interfaces'][1]['vlan_id']} "
                                 f"{ip_of(two, me, 1)}")                 # node -> VM, no fragmenting
        assert " 0% packet loss" in out, out


@pytest.mark.parametrize("attacker,victim", [("a", "b"), ("b", "a")])
def test_no_frame_of_one_tenant_reaches_the_other(lab, two, attacker, victim):
    me = two[attacker][0]
    v1, v2 = two[victim]
    target = ip_of(two, v1, 1)
    # the attacker puts an address of the victim's subnet on its own link and tries the victim's VM:
    # nothing answers, and the victim's NICs receive none of those 13 frames
    foreign = str(naming.link_subnet(v1["interfaces"][1]["vlan_id"]).network_address + 77)
    before = [tap_tx(lab, vm, i) for vm in (v1, v2) for i in (1, 2)]
    ok(lab, me, f"ip addr add {foreign}/24 dev eth1")
    try:
        fails(lab, me, f"ping -c 3 -W 2 -I eth1 {target}")
        fails(lab, me, f"arping -c 10 -w 11 -I eth1 {target} | grep -q 'Received [1-9]'", timeout=30)
    finally:
        ok(lab, me, f"ip addr del {foreign}/24 dev eth1")
    after = [tap_tx(lab, vm, i) for vm in (v1, v2) for i in (1, 2)]
    grown = [y - x for x, y in zip(before, after)]
    assert max(grown) < 10, f"the victim's NICs received {grown} frames while the attacker sent 13 to it"
    out = ok(lab, v1, "ip neigh")
    assert foreign not in out, out


def test_deleting_one_keeps_the_others_vlans_and_deleting_both_leaves_nothing(lab, two):
    api = two["api"]
    live = [s for s in api.db.all_slices().values() if s.get("vms")]
    first, second = sorted(live, key=lambda s: s["slice_id"])
    ok_, msg = api.delete_slice(first["owner"], first["slice_id"])   # its two VLANs go at the same moment
    assert ok_, msg
    # the other slice's VLANs keep the trunk, their gateways and the isolation chains
    assert "cr-trunk" in sh(lab, "netnode", "ip -o link show")
    links = node_gateways(lab)
    for v in (link["vlan_id"] for link in second["links"]):
        assert f"gw_vlan{v}@if" in links
    assert "CR-FORWARD" in sh(lab, "netnode", "iptables -S FORWARD")
    vm = second["vms"][0]
    ok(lab, vm, f"ping -c 2 -W 2 {naming.link_network(vm['interfaces'][1]['vlan_id'])['gateway_ip']}")
    ok_, msg = api.delete_slice(second["owner"], second["slice_id"])
    assert ok_, msg
    assert "gw_vlan" not in sh(lab, "netnode", "ip -o link show") + node_gateways(lab)
    assert "cr-trunk" not in sh(lab, "netnode", "ip -o link show")
    assert GATEWAYS not in sh(lab, "netnode", "ip netns list")
    assert_clean(lab)
