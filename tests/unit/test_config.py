"""config.py: the cluster config's keys and values are checked, and refused with key, value and line (SPEC §5)."""
from __future__ import annotations

import copy
import textwrap
from pathlib import Path

import pytest
from fakes import LAB_LIKE

from store import config
from store.config import DEFAULTS, SCHEMA, ClusterConfig, ConfigError, Setting

ROOT = Path(__file__).resolve().parents[2]


def _load(tmp_path, text: str) -> ClusterConfig:
    path = tmp_path / "cluster.yaml"
    path.write_text(textwrap.dedent(text))
    return ClusterConfig.load(str(path))


REFUSED = [
    ("wokers: [10.0.0.1]\n", "cluster.yaml line 1: unknown key 'wokers' (known: workers, network_node, ssh,"),
    ("ssh:\n  user: bob\n  prot: 22\n", "cluster.yaml line 3: unknown key 'ssh.prot' (known in ssh: user, port,"),
    ("internet: {vlan: 400, gw: 10.60.7.1}\n", "unknown key 'internet.gw' (known in internet: vlan, cidr, gateway"),
    ("workers: 10.0.0.1\n",
     "cluster.yaml line 1: workers: '10.0.0.1' is not a non-empty list of hosts (IP addresses or host names)"),
    ("workers: []\n", "workers: [] is not a non-empty list of hosts"),
    ("workers:\n- 10.0.0.1\n- 10.0.10.256\n",
     "cluster.yaml line 3: workers[1]: '10.0.10.256' is not a host (an IP address or a host name)"),
    ("workers: [10.0.0.1, 'bad host']\n", "workers[1]: 'bad host' is not a host"),
    ("workers: [10.0.0.1, 5]\n", "workers[1]: 5 is not a host"),
    ("network_node: -node\n", "network_node: '-node' is not a host (an IP address or a host name)"),
    ("internet:\n  cidr: 10.60.7.0/33\n",
     "cluster.yaml line 2: internet.cidr: '10.60.7.0/33' is not an IPv4 network (like 10.60.7.0/24)"),
    ("internet: {cidr: 10.60.7.1/24}\n", "internet.cidr: '10.60.7.1/24' is not an IPv4 network"),
    ("internet: {cidr: 10.60.7.0}\n", "internet.cidr: '10.60.7.0' is not an IPv4 network"),
    ("internet:\n  vlan: 400\n  gateway: 10.60.8.1\n",
     "cluster.yaml line 3: internet.gateway: '10.60.8.1' is not inside internet.cidr 10.60.7.0/24"),
    ("internet: {gateway: gw}\n", "internet.gateway: 'gw' is not an IPv4 address"),
    ("internet: {vlan: 0}\n", "internet.vlan: 0 is not a VLAN (1-4094)"),
    ("internet: {vlan: 4095}\n", "internet.vlan: 4095 is not a VLAN (1-4094)"),
    ("internet: {vlan: '400'}\n", "internet.vlan: '400' is not a VLAN (1-4094)"),
    ("internet: {uplink: 'eth 0'}\n", "internet.uplink: 'eth 0' is not an interface name"),
    ("internet: [400]\n", "internet: [400] is not a mapping (of vlan, cidr, gateway, uplink)"),
    ("reserved_vlans: [100, 5000]\n", "reserved_vlans[1]: 5000 is not a VLAN (1-4094)"),
    ("reserved_vlans: 100\n", "reserved_vlans: 100 is not a list of VLANs (1-4094)"),
    ("ssh: {sudo: 'yes'}\n", "ssh.sudo: 'yes' is not true or false"),
    ("ssh: {accept_new_host_keys: 1}\n", "ssh.accept_new_host_keys: 1 is not true or false"),
    ("ssh: {port: abc}\n", "ssh.port: 'abc' is not a port number (1-65535)"),
    ("ssh: {port: 0}\n", "ssh.port: 0 is not a port number (1-65535)"),
    ("ssh: {port: 70000}\n", "ssh.port: 70000 is not a port number (1-65535)"),
    ("ssh: {connect_timeout: 0}\n", "ssh.connect_timeout: 0 is not a positive number of seconds"),
    ("ssh: {command_timeout: -5}\n", "ssh.command_timeout: -5 is not a positive number of seconds"),
    ("ssh: {user: 'a b'}\n", "ssh.user: 'a b' is not a user name"),
    ("ssh: {key_file: ''}\n", "ssh.key_file: '' is not a file path"),
    ("ssh: [a]\n", "ssh: ['a'] is not a mapping (of user, port, key_file"),
    ("copy_timeout: 0\n", "copy_timeout: 0 is not a positive number of seconds"),
    ("copy_timeout: true\n", "copy_timeout: true is not a positive number of seconds"),
    ("workers:\n", "workers: null is not a non-empty list of hosts"),
    ("qemu_accel: xen\n", "qemu_accel: 'xen' is not kvm, tcg or kvm:tcg"),
    ("bridge: br int\n", "bridge: 'br int' is not a bridge name"),
    ("bridge: a-very-long-bridge-name\n", "bridge: 'a-very-long-bridge-name' is not a bridge name"),
    ("flavor_images: [cirros]\n", "flavor_images: ['cirros'] is not a mapping of flavor name to image path"),
    ("flavor_images: {cirros: 5}\n", "flavor_images: {'cirros': 5} is not a mapping of flavor name to image path"),
    ("log_file: [a]\n", "log_file: ['a'] is not a file path"),
    ("- a\n- b\n", "cluster.yaml: the file must be a mapping of settings (workers, network_node,"),
]


@pytest.mark.parametrize("text, message", REFUSED)
def test_unknown_keys_and_bad_values_are_refused_with_key_value_and_line(tmp_path, monkeypatch, text, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cluster.yaml").write_text(text)
    with pytest.raises(ConfigError) as e:
        ClusterConfig.load("cluster.yaml")
    assert message in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("data, message", [
    ({"wokers": []}, "bad cluster config: unknown key 'wokers' (known: workers,"),
    ({"workers": "10.0.0.1"}, "bad cluster config: workers: '10.0.0.1' is not a non-empty list of hosts"),
    ({"internet": {"cidr": "10.60.7.0/33"}}, "internet.cidr: '10.60.7.0/33' is not an IPv4 network"),
    ({"ssh": {"port": "22"}}, "ssh.port: '22' is not a port number (1-65535)"),
])
def test_from_dict_refuses_the_same(data, message):
    with pytest.raises(ConfigError) as e:
        ClusterConfig.from_dict(data)
    assert message in str(e.value)


def test_accepted_values(tmp_path):
    c = _load(tmp_path, """\
        workers: [10.0.0.1, worker-2.example.org, fe80::1]
        network_node: netnode
        ssh: {user: lab_user, port: 2222, sudo: false, connect_timeout: 2.5}
        bridge: br-int
        internet: {vlan: 401, cidr: 10.61.0.0/16, gateway: 10.61.255.254, uplink: enp0s31f6}
        reserved_vlans: [100, 4094]
        flavor_images: {cirros: /srv/cirros.img}
        qemu_accel: kvm:tcg
        copy_timeout: 0.5
        lab: {root: /x, hosts: {a: [1, 2]}, anything: {goes: here}}
        """)
    assert c.workers == ["10.0.0.1", "worker-2.example.org", "fe80::1"]
    assert c.ssh.port == 2222 and c.ssh.sudo is False and c.ssh.connect_timeout == 2.5
    assert c.ssh.command_timeout == 60.0 and c.ssh.accept_new_host_keys is False   # the defaults fill in
    assert c.internet == {"vlan": 401, "cidr": "10.61.0.0/16", "gateway": "10.61.255.254", "uplink": "enp0s31f6"}
    assert c.all_reserved_vlans == [100, 401, 4094]
    assert c.flavor_images == {"cirros": "/srv/cirros.img"} and c.copy_timeout == 0.5
    assert c.raw["lab"] == {"root": "/x", "hosts": {"a": [1, 2]}, "anything": {"goes": "here"}}
    assert c.setting("ssh.port") == 2222 and c.setting("internet.vlan") == 401


def test_empty_sections_take_the_defaults(tmp_path):
    c = _load(tmp_path, "ssh:\ninternet:\nreserved_vlans:\nflavor_images:\n")
    assert c.ssh.user == "ubuntu" and c.internet["vlan"] == 400 and c.reserved_vlans == []
    assert c.flavor_images == {}


def test_the_shipped_config_the_labs_format_and_the_unit_tests_config_load(tmp_path):
    ClusterConfig.load(str(ROOT / "cluster.yaml"))
    lab = _load(tmp_path, """\
        # Written by lab/up.sh
        workers: [10.250.0.11, 10.250.0.12, 10.250.0.13]
        network_node: 10.250.0.10
        ssh: {user: crlab, key_file: /x/id_ed25519, known_hosts: /x/known_hosts, accept_new_host_keys: false, sudo: true, connect_timeout: 5, command_timeout: 60}
        bridge: br-int
        worker_image_dir: ~/vm_images
        flavor_images: {cirros: /x/guest.qcow2, ubuntu: /x/guest.qcow2}
        qemu_accel: "kvm:tcg"
        internet: {vlan: 400, cidr: 10.60.7.0/24, gateway: 10.60.7.1, uplink: uplink0}
        lab:
          root: /x/lab
          hosts: {netnode: 10.250.0.10, worker1: 10.250.0.11}
          internet_host: 10.250.1.2
          internet_http: http://10.250.1.2:8080/
        """)  # noqa: E501 - the lab writes that line as it is
    assert lab.ssh.connect_timeout == 5.0 and lab.raw["lab"]["internet_host"] == "10.250.1.2"
    ClusterConfig.from_dict(copy.deepcopy(LAB_LIKE))


def test_defaults_come_from_the_table():
    assert DEFAULTS["workers"] == ["10.0.10.1", "10.0.10.2", "10.0.10.3"]
    assert DEFAULTS["ssh"]["port"] == 22 and DEFAULTS["internet"]["cidr"] == "10.60.7.0/24"
    assert "lab" not in DEFAULTS
    c = ClusterConfig.from_dict(None)
    assert c.raw == DEFAULTS and "lab" not in c.raw


def test_a_new_key_is_one_line_in_the_table(monkeypatch, tmp_path):
    schema = copy.deepcopy(SCHEMA)
    schema["capacity"] = {"cpu_overcommit": Setting(4.0, config.positive, "a positive number")}
    monkeypatch.setattr(config, "SCHEMA", schema)
    monkeypatch.setattr(config, "DEFAULTS", config._defaults(schema))
    assert ClusterConfig.from_dict(None).setting("capacity.cpu_overcommit") == 4.0
    assert _load(tmp_path, "capacity: {cpu_overcommit: 2}\n").setting("capacity.cpu_overcommit") == 2
    with pytest.raises(ConfigError, match=r"capacity.cpu_overcommit: -1 is not a positive number"):
        _load(tmp_path, "capacity: {cpu_overcommit: -1}\n")


def test_errors_never_leak_python_messages(tmp_path):
    for text, _message in REFUSED:
        with pytest.raises(ConfigError) as e:
            _load(tmp_path, text)
        for leak in ("list indices", "object has no attribute", "not subscriptable", "invalid literal"):
            assert leak not in str(e.value)
