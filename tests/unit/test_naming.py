"""naming.py: VLAN pools, subnets, host object names, MACs (SPEC §3, §4.1, §4.2, §4.9)."""
from __future__ import annotations

import ipaddress

import pytest
from uhelpers import lab_config, make_api, ok

import naming
from deployment_api import DeploymentAPI


def _overlaps(a_start, b_start):
    return not (a_start + 19 < b_start or b_start + 19 < a_start)


@pytest.mark.parametrize("slice_id,start", [(1000, 100), (1001, 120), (1002, 140), (1050, 1100),
                                            (1099, 2080), (1014, 380), (1016, 420)])
def test_documented_pool_when_free(slice_id, start):
    assert naming.documented_pool_start(slice_id) == start
    assert naming.allocate_vlan_pool(slice_id, []) == start


def test_pool_overlapping_a_live_pool_gets_another_free_block():
    # slice 1100 would get 100-119 by the formula, which slice 1000 holds
    start = naming.allocate_vlan_pool(1100, [(100, 119)])
    assert start is not None and start != 100
    assert not _overlaps(start, 100)
    assert (start - 100) % 20 == 0
    assert start == 120  # the first free aligned block


def test_pool_partially_overlapping_is_refused_too():
    # an odd live pool (e.g. hand-edited) 110-129 overlaps both 100-119 and 120-139
    start = naming.allocate_vlan_pool(1000, [(110, 129)])
    assert start == 140


def test_vlan_400_block_never_handed_out():
    assert naming.documented_pool_start(1015) == 400
    start = naming.allocate_vlan_pool(1015, [])
    assert start is not None
    assert not start <= 400 <= start + 19
    for sid in range(1000, 1200):
        s = naming.allocate_vlan_pool(sid, [])
        assert not s <= 400 <= s + 19, sid


def test_extra_reserved_vlan_is_avoided():
    start = naming.allocate_vlan_pool(1001, [], reserved=(400, 125))
    assert start is not None and not start <= 125 <= start + 19
    assert not start <= 400 <= start + 19


def test_pools_exhausted_returns_none():
    taken = [(s, s + 19) for s in range(100, 4080, 20)]
    assert naming.allocate_vlan_pool(1000, taken) is None


def test_orchestrator_gives_overlapping_slice_another_block(tmp_path):
    api, db, _ex = make_api(tmp_path)
    first = ok(api.create_slice("admin", "first"))
    assert (first["slice_id"], first["vlan_pool_start"]) == (1000, 100)
    with db.transaction() as data:
        data["next_vm_id"] = 1100  # formula pool of 1100 is 100-119 again
    second = ok(api.create_slice("admin", "second"))
    assert second["slice_id"] == 1100
    assert second["vlan_pool_start"] != 100
    assert not _overlaps(second["vlan_pool_start"], 100)
    stored = db.get_slice(1100)
    assert stored["vlan_pool_start"] == second["vlan_pool_start"]
    assert stored["vlan_pool_end"] == second["vlan_pool_start"] + 19


def test_orchestrator_slice_1015_never_gets_vlan_400(tmp_path):
    api, db, _ex = make_api(tmp_path)
    with db.transaction() as data:
        data["next_vm_id"] = 1015
    created = ok(api.create_slice("admin", "s15"))
    assert created["slice_id"] == 1015
    assert not created["vlan_pool_start"] <= 400 <= created["vlan_pool_end"]


def test_orchestrator_respects_config_reserved_vlans(tmp_path):
    api, _db, _ex = make_api(tmp_path, lab_config(reserved_vlans=[100]))
    created = ok(api.create_slice("admin", "s"))
    assert created["slice_id"] == 1000
    assert not created["vlan_pool_start"] <= 100 <= created["vlan_pool_end"]


def test_subnets_unique_for_all_vlans():
    nets = [naming.link_subnet(v) for v in range(1, 4095)]
    assert len(set(nets)) == 4094
    assert all(n.prefixlen == 24 for n in nets)
    # distinct /24s never overlap; and none collides with the internet subnet
    internet = ipaddress.IPv4Network("10.60.7.0/24")
    assert not any(n.overlaps(internet) for n in nets)


@pytest.mark.parametrize("vlan", [1, 100, 101, 119, 200, 255])
def test_documented_subnet_up_to_255(vlan):
    assert str(naming.link_subnet(vlan)) == f"192.168.{vlan}.0/24"
    net = naming.link_network(vlan)
    assert net["gateway_ip"] == f"192.168.{vlan}.1"
    assert net["dhcp_start"] == f"192.168.{vlan}.10"
    assert net["dhcp_end"] == f"192.168.{vlan}.250"


@pytest.mark.parametrize("vlan", [0, 4095, -1])
def test_subnet_out_of_range(vlan):
    with pytest.raises(ValueError):
        naming.link_subnet(vlan)


def test_subnets_above_255_are_private():
    private = ipaddress.IPv4Network("172.16.0.0/12")
    for v in range(256, 4095):
        assert naming.link_subnet(v).subnet_of(private), v


def test_tap_names_fit_ifnamsiz():
    for vm_id in (1000, 1001, 9999, 10000, 99999, 123456):
        for i in range(0, 9):
            name = naming.tap_name(vm_id, i)
            assert len(name) <= 15, name
            assert naming.TAP_RE.match(name)
    assert naming.tap_name(1001, 2) == "tap1001_2"


def test_tap_name_too_long_is_refused():
    with pytest.raises(ValueError):
        naming.tap_name(10 ** 11, 1)


def test_network_node_names_fit_ifnamsiz():
    for v in (1, 100, 400, 4094):
        for name in (naming.gateway_port(v), naming.dhcp_macvlan(v), naming.legacy_dhcp_veth(v)):
            assert len(name) <= naming.IFNAMSIZ, name
    assert max(len(naming.NODE_TRUNK), len(naming.NODE_TRUNK_PORT)) <= naming.IFNAMSIZ
    assert naming.gateway_port(100) == "gw_vlan100" and naming.dhcp_macvlan(100) == "dhcp100-i"
    assert naming.device_alias(naming.vlan_mark(100)) == "cloud-repositorio=vlan100"
    assert naming.netns_path(naming.dhcp_namespace(100)) == "/run/netns/ns-dhcp-vlan100"
    assert naming.dhcp_namespace(100) == "ns-dhcp-vlan100"


def test_mac_formula_for_1001():
    assert DeploymentAPI.generate_unique_macs(1001, 3) == [
        "52:54:00:03:e9:00", "52:54:00:03:e9:01", "52:54:00:03:e9:02"]
    assert DeploymentAPI.generate_unique_macs(1002, 2) == ["52:54:00:03:ea:00", "52:54:00:03:ea:01"]
    assert DeploymentAPI.generate_unique_macs(0x1234, 1) == ["52:54:00:12:34:00"]


@pytest.mark.parametrize("name,valid", [("vm1", True), ("web-01", True), ("a_b", True), ("A" * 32, True),
                                        ("A" * 33, False), ("1vm", False), ("", False),
                                        ("vm 1", False), ("vm;ls", False), ("$(id)", False),
                                        ("vm`x`", False), ("vm'1", False), ("vm/1", False),
                                        ("vm\n1", False), ("vmé", False)])
def test_valid_name(name, valid):
    assert naming.valid_name(name) is valid


def test_valid_name_refuses_trailing_newline():
    assert naming.valid_name("vm1\n") is False
    assert naming.USERNAME_RE.fullmatch("bob\n") is None


def test_internet_ip_documented_first():
    cands = naming.internet_ip_candidates(1001, "10.60.7.0/24", "10.60.7.1")
    assert cands[0] == "10.60.7.101"
    assert len(cands) == len(set(cands))
    assert "10.60.7.1" not in cands and "10.60.7.255" not in cands and "10.60.7.0" not in cands
