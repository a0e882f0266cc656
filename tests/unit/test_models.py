"""models.py: documented constructors, defaults, statuses and to_dict shapes (seed 001)."""
from __future__ import annotations

import copy

import pytest

from models import VM, Flavor, Interface, Link, Network, Slice, User

# The "Serialized slice example" of seed 001, verbatim (null -> None).
SEED_001_SLICE = {
    "slice_id": 1000,
    "owner": "admin",
    "topology_type": "custom",
    "vlan_pool_start": 100,
    "vlan_pool_end": 119,
    "vlan_pool_used": [100],
    "status": "running",
    "vms": [
        {
            "vm_id": 1001,
            "name": "vm1",
            "owner": "admin",
            "worker_ip": "10.0.10.1",
            "vnc_port": 5901,
            "status": "running",
            "pid": "4821",
            "qcow_image": "~/vm_images/vm1_img.qcow2",
            "flavor": {
                "cores": 1,
                "ram_gb": 0.5,
                "disk_gb": 1,
                "image": "/tmp/vm_images/cirros-0.6.2-x86_64-disk.img",
            },
            "interfaces": [
                {
                    "name": "eth0",
                    "vlan_id": 400,
                    "mac": "52:54:00:03:e9:00",
                    "ip_config": {
                        "ip": "10.60.7.101",
                        "cidr": "10.60.7.0/24",
                        "gateway": "10.60.7.1",
                    },
                    "link_id": None,
                },
                {
                    "name": "eth1",
                    "vlan_id": 100,
                    "mac": "52:54:00:03:e9:01",
                    "ip_config": None,
                    "link_id": 1,
                },
            ],
        },
        {
            "vm_id": 1002,
            "name": "vm2",
            "owner": "admin",
            "worker_ip": "10.0.10.2",
            "vnc_port": 5902,
            "status": "running",
            "pid": "5103",
            "qcow_image": "~/vm_images/vm2_img.qcow2",
            "flavor": {
                "cores": 1,
                "ram_gb": 0.5,
                "disk_gb": 1,
                "image": "/tmp/vm_images/cirros-0.6.2-x86_64-disk.img",
            },
            "interfaces": [
                {
                    "name": "eth0",
                    "vlan_id": None,
                    "mac": "52:54:00:03:ea:00",
                    "ip_config": None,
                    "link_id": None,
                },
                {
                    "name": "eth1",
                    "vlan_id": 100,
                    "mac": "52:54:00:03:ea:01",
                    "ip_config": None,
                    "link_id": 1,
                },
            ],
        },
    ],
    "links": [
        {
            "link_id": 1,
            "vlan_id": 100,
            "vm1_id": 1001,
            "vm1_interface": "eth1",
            "vm2_id": 1002,
            "vm2_interface": "eth1",
        }
    ],
    "networks": [],
}


# --- User -------------------------------------------------------------------

def test_user_constructor_defaults():
    u = User("alice", "abc123")
    assert u.username == "alice"
    assert u.password_hash == "abc123"
    assert u.quota_vms == 10
    assert u.used_vms == 0
    assert u.slices == []


def test_user_can_create_vms_documented_example():
    user = User("alice", "abc123...", quota_vms=5)
    user.used_vms = 4
    assert user.can_create_vms(1) is True
    assert user.can_create_vms(2) is False


@pytest.mark.parametrize("used,count,expected", [(0, 10, True), (0, 11, False), (10, 0, True),
                                                 (9, 1, True), (10, 1, False), (3, 7, True)])
def test_user_can_create_vms_boundary(used, count, expected):
    u = User("bob", "h")
    u.used_vms = used
    assert u.can_create_vms(count) is expected


def test_user_round_trip_keeps_unknown_keys():
    d = {"username": "s1", "password_hash": "x", "quota_vms": 6, "used_vms": 2,
         "slices": [1000, 1003], "role": "student", "email": "s1@example.edu"}
    assert User.from_dict(d).to_dict() == d


# --- Flavor -----------------------------------------------------------------

def test_flavors_exactly_as_documented():
    assert Flavor.FLAVORS == {
        "cirros": {"cores": 1, "ram_gb": 0.5, "disk_gb": 1,
                   "image": "/tmp/vm_images/cirros-0.6.2-x86_64-disk.img"},
        "ubuntu": {"cores": 1, "ram_gb": 0.5, "disk_gb": 2.2,
                   "image": "/tmp/vm_images/focal-server-cloudimg-amd64.img"},
    }


def test_flavor_get_known_and_unknown():
    assert Flavor.get("cirros") == {"cores": 1, "ram_gb": 0.5, "disk_gb": 1,
                                    "image": "/tmp/vm_images/cirros-0.6.2-x86_64-disk.img"}
    assert Flavor.get("ubuntu")["disk_gb"] == 2.2
    assert Flavor.get("unknown") is None
    assert Flavor.get("") is None


def test_flavor_get_result_does_not_alias_registry():
    spec = Flavor.get("cirros")
    spec["image"] = "/elsewhere.img"
    assert Flavor.FLAVORS["cirros"]["image"] == "/tmp/vm_images/cirros-0.6.2-x86_64-disk.img"


# --- Interface, Link, VM, Network -------------------------------------------

def test_interface_defaults_and_shape():
    i = Interface("eth1")
    assert i.to_dict() == {"name": "eth1", "vlan_id": None, "mac": None, "ip_config": None,
                           "link_id": None}
    j = Interface("eth0", 400, "52:54:00:03:e9:00", {"ip": "10.60.7.101"}, None)
    assert j.to_dict()["vlan_id"] == 400
    assert Interface.from_dict(j.to_dict()).to_dict() == j.to_dict()


def test_link_shape():
    link = Link(1, 100, 1001, "eth1", 1002, "eth1")
    assert link.to_dict() == {"link_id": 1, "vlan_id": 100, "vm1_id": 1001, "vm1_interface": "eth1",
                              "vm2_id": 1002, "vm2_interface": "eth1"}
    assert Link.from_dict(link.to_dict()).to_dict() == link.to_dict()


def test_vm_defaults_pending_without_pid():
    vm = VM(1001, "vm1", "admin", "10.0.10.1", 5901, [Interface("eth0")])
    assert vm.status == "pending"
    assert vm.pid is None
    assert vm.flavor is None
    assert vm.qcow_image is None
    d = vm.to_dict()
    assert set(d) == {"vm_id", "name", "owner", "worker_ip", "vnc_port", "status", "pid",
                      "qcow_image", "flavor", "interfaces"}
    assert d["interfaces"] == [{"name": "eth0", "vlan_id": None, "mac": None, "ip_config": None,
                                "link_id": None}]


def test_network_defaults():
    n = Network(101, "192.168.101.0/24", "192.168.101.1")
    assert n.status == "pending"
    assert n.dhcp_enabled is False
    assert n.dhcp_range is None
    assert (n.vlan_id, n.cidr, n.gateway_ip) == (101, "192.168.101.0/24", "192.168.101.1")


def test_network_for_link_vlan_documented_range():
    n = Network.for_link_vlan(101)
    assert n.cidr == "192.168.101.0/24"
    assert n.gateway_ip == "192.168.101.1"
    assert n.dhcp_range == "192.168.101.10,192.168.101.250"


# --- Slice --------------------------------------------------------------------

def test_slice_constructor_defaults():
    s = Slice(1000, "admin")
    assert s.topology_type == "custom"
    assert s.vlan_pool_start == 100
    assert s.vlan_pool_end == 119
    assert s.vlan_pool_used == []
    assert s.vms == [] and s.links == [] and s.networks == []
    assert s.status == "design"
    assert s.to_dict() == {"slice_id": 1000, "owner": "admin", "topology_type": "custom",
                           "vlan_pool_start": 100, "vlan_pool_end": 119, "vlan_pool_used": [],
                           "status": "design", "vms": [], "links": [], "networks": []}


@pytest.mark.parametrize("slice_id,start", [(1000, 100), (1001, 120), (1002, 140), (1050, 1100),
                                            (1099, 2080), (1100, 100)])
def test_slice_documented_pool_table(slice_id, start):
    s = Slice(slice_id, "admin")
    assert s.vlan_pool_start == start
    assert s.vlan_pool_end == start + 19


def test_seed_001_example_round_trips_exactly():
    seed = copy.deepcopy(SEED_001_SLICE)
    assert Slice.from_dict(seed).to_dict() == SEED_001_SLICE
    assert seed == SEED_001_SLICE  # from_dict does not modify its input


def test_seed_001_example_objects():
    s = Slice.from_dict(copy.deepcopy(SEED_001_SLICE))
    assert s.status == "running"
    assert [vm.vm_id for vm in s.vms] == [1001, 1002]
    assert s.vms[0].pid == "4821"
    assert s.vms[0].interfaces[0].ip_config["ip"] == "10.60.7.101"
    assert s.links[0].vlan_id == 100
    assert s.get_next_vlan() == 101  # 100 is already used


def test_get_next_vlan_in_order_then_exhausted():
    s = Slice(1000, "admin")
    assert s.get_next_vlan() == 100
    assert s.get_next_vlan() == 101
    got = [s.get_next_vlan() for _ in range(18)]
    assert got == list(range(102, 120))
    assert s.vlan_pool_used == list(range(100, 120))
    assert s.get_next_vlan() is None
    assert s.get_next_vlan() is None
    assert len(s.vlan_pool_used) == 20


def test_get_next_vlan_skips_used_and_fills_gaps():
    s = Slice(1001, "admin")
    s.vlan_pool_used = [120, 122]
    assert s.get_next_vlan() == 121
    assert s.get_next_vlan() == 123
