"""vm_firewall: exact rules and scripts, quoting, and the scan parsers (pure: no host needed)."""
from __future__ import annotations

import shlex
import shutil
import subprocess

import pytest

from hosts import vm_firewall as fw

INTERNET = {"vlan": 400, "cidr": "10.60.7.0/24", "gateway": "10.60.7.1", "uplink": "uplink0"}
EDGE = fw.internet_edge(INTERNET)
SHELLS = [s for s in ("dash", "bash") if shutil.which(s)]


def vm_1001() -> dict:
    """An internet VM with one linked and one unconnected data interface (as the database holds it)."""
    return {"vm_id": 1001, "name": "a1", "worker_ip": "10.0.10.1", "interfaces": [
        {"name": "eth0", "mac": "52:54:00:03:e9:00", "vlan_id": 400,
         "ip_config": {"ip": "10.60.7.101", "cidr": "10.60.7.0/24", "gateway": "10.60.7.1"}},
        {"name": "eth1", "mac": "52:54:00:03:E9:01", "vlan_id": 100, "link_id": 1},
        {"name": "eth2", "mac": "52:54:00:03:e9:02", "vlan_id": None},
    ]}


# The exact table installed for VM 1001 (cookie 0x4352_0000_000003e9).
VM_1001_FLOWS = [
    "cookie=0x43520000000003e9,priority=200,udp,in_port=tap1001_0,tp_src=67,tp_dst=68,actions=drop",
    "cookie=0x43520000000003e9,priority=150,udp,in_port=tap1001_0,dl_src=52:54:00:03:e9:00,"
    "dl_dst=ff:ff:ff:ff:ff:ff,nw_dst=255.255.255.255,tp_src=68,tp_dst=67,nw_src=0.0.0.0,actions=NORMAL",
    "cookie=0x43520000000003e9,priority=150,udp,in_port=tap1001_0,dl_src=52:54:00:03:e9:00,"
    "dl_dst=ff:ff:ff:ff:ff:ff,nw_dst=255.255.255.255,tp_src=68,tp_dst=67,nw_src=10.60.7.101,actions=NORMAL",
    "cookie=0x43520000000003e9,priority=150,arp,in_port=tap1001_0,dl_src=52:54:00:03:e9:00,"
    "arp_sha=52:54:00:03:e9:00,arp_spa=10.60.7.101,arp_tpa=10.60.7.1,actions=NORMAL",
    "cookie=0x43520000000003e9,priority=150,arp,in_port=tap1001_0,dl_src=52:54:00:03:e9:00,"
    "arp_sha=52:54:00:03:e9:00,arp_spa=10.60.7.101,arp_tpa=10.60.7.254,actions=NORMAL",
    "cookie=0x43520000000003e9,priority=150,ip,in_port=tap1001_0,dl_src=52:54:00:03:e9:00,"
    "dl_dst=02:00:0a:3c:07:01,nw_src=10.60.7.101,actions=NORMAL",
    "cookie=0x43520000000003e9,priority=150,ip,in_port=tap1001_0,dl_src=52:54:00:03:e9:00,"
    "dl_dst=02:00:0a:3c:07:fe,nw_src=10.60.7.101,actions=NORMAL",
    "cookie=0x43520000000003e9,priority=100,in_port=tap1001_0,actions=drop",
    "cookie=0x43520000000003e9,priority=200,udp,in_port=tap1001_1,tp_src=67,tp_dst=68,actions=drop",
]

# What `scan_rules` printed on a lab worker (OVS 3.1) holding VM 1001 and VM 1005 after tap1005_1 was
# deleted and re-added without reinstalling its rules (the rule then names the old port number, 5).
SCAN_SAMPLE = """\
 cookie=0x43520000000003e9, priority=200,udp,in_port="tap1001_0",tp_src=67,tp_dst=68 actions=drop
 cookie=0x43520000000003e9, priority=200,udp,in_port="tap1001_1",tp_src=67,tp_dst=68 actions=drop
 cookie=0x43520000000003ed, priority=200,udp,in_port="tap1005_0",tp_src=67,tp_dst=68 actions=drop
 cookie=0x43520000000003ed, priority=200,udp,in_port=5,tp_src=67,tp_dst=68 actions=drop
 cookie=0x43520000000003e9, priority=150,udp,in_port="tap1001_0",dl_src=52:54:00:03:e9:00,dl_dst=ff:ff:ff:ff:ff:ff,\
nw_src=0.0.0.0,nw_dst=255.255.255.255,tp_src=68,tp_dst=67 actions=NORMAL
 cookie=0x43520000000003e9, priority=150,udp,in_port="tap1001_0",dl_src=52:54:00:03:e9:00,dl_dst=ff:ff:ff:ff:ff:ff,\
nw_src=10.60.7.101,nw_dst=255.255.255.255,tp_src=68,tp_dst=67 actions=NORMAL
 cookie=0x43520000000003e9, priority=150,arp,in_port="tap1001_0",dl_src=52:54:00:03:e9:00,arp_spa=10.60.7.101,\
arp_tpa=10.60.7.1,arp_sha=52:54:00:03:e9:00 actions=NORMAL
 cookie=0x43520000000003e9, priority=150,arp,in_port="tap1001_0",dl_src=52:54:00:03:e9:00,arp_spa=10.60.7.101,\
arp_tpa=10.60.7.254,arp_sha=52:54:00:03:e9:00 actions=NORMAL
 cookie=0x43520000000003e9, priority=150,ip,in_port="tap1001_0",dl_src=52:54:00:03:e9:00,dl_dst=02:00:0a:3c:07:01,\
nw_src=10.60.7.101 actions=NORMAL
 cookie=0x43520000000003e9, priority=150,ip,in_port="tap1001_0",dl_src=52:54:00:03:e9:00,dl_dst=02:00:0a:3c:07:fe,\
nw_src=10.60.7.101 actions=NORMAL
 cookie=0x43520000000003e9, priority=100,in_port="tap1001_0" actions=drop
 cookie=0x4352000100000190, priority=60,dl_vlan=400,dl_src=02:00:0a:3c:07:01 actions=NORMAL
 cookie=0x4352000100000190, priority=60,dl_vlan=400,dl_src=02:00:0a:3c:07:fe actions=NORMAL
 cookie=0x4352000100000190, priority=50,dl_vlan=400 actions=drop
"""


def words(script: str) -> list:
    return shlex.split(script)


# --- addresses and cookies -----------------------------------------------------------------------

def test_fixed_macs_are_locally_administered_unicast_and_never_vm_macs():
    assert fw.fixed_mac("10.60.7.1") == "02:00:0a:3c:07:01"
    assert EDGE == fw.InternetEdge(400, "10.60.7.1", "02:00:0a:3c:07:01", "10.60.7.254", "02:00:0a:3c:07:fe")
    for mac in (EDGE.gateway_mac, EDGE.dhcp_mac):
        first = int(mac[:2], 16)
        assert first & 0x02 and not first & 0x01
        assert not mac.startswith("52:54:00:")
    with pytest.raises(ValueError):
        fw.fixed_mac("10.60.7")


def test_cookies_name_their_vm_or_vlan():
    assert fw.vm_cookie(1001) == 0x43520000000003E9
    assert fw.cookie_text(fw.vm_cookie(1001)) == "0x43520000000003e9"
    assert fw.trunk_cookie(400) == 0x4352000100000190
    assert fw.vm_cookie(2**32 - 1) & fw.ID_MASK == 2**32 - 1
    with pytest.raises(ValueError):
        fw.vm_cookie(2**32)


# --- per-VM rules -----------------------------------------------------------------------------------

def test_exact_flow_table_of_an_internet_vm():
    assert fw.vm_flows(vm_1001(), EDGE) == VM_1001_FLOWS


def test_ports_skip_unconnected_nics_and_only_internet_taps_are_protected():
    ports = fw.ports_of(vm_1001())
    assert [(p.tap, p.mac, p.vlan, p.ip) for p in ports] == [
        ("tap1001_0", "52:54:00:03:e9:00", 400, "10.60.7.101"), ("tap1001_1", "52:54:00:03:e9:01", 100, None)]
    assert [fw.port_columns(p, EDGE) for p in ports] == [["protected=true"], []]
    assert fw.protect_ports(vm_1001(), EDGE) == "ovs-vsctl -- set port tap1001_0 protected=true"


def test_link_only_vm_gets_just_the_dhcp_server_drop():
    vm = {"vm_id": 1002, "interfaces": [{"mac": "52:54:00:03:ea:00", "vlan_id": None},
                                        {"mac": "52:54:00:03:ea:01", "vlan_id": 101}]}
    assert fw.vm_flows(vm, EDGE) == [
        "cookie=0x43520000000003ea,priority=200,udp,in_port=tap1002_1,tp_src=67,tp_dst=68,actions=drop"]
    assert fw.protect_ports(vm, EDGE) == ":"


def test_vm_without_ports_needs_nothing():
    vm = {"vm_id": 1003, "interfaces": [{"mac": "52:54:00:03:eb:00", "vlan_id": None}]}
    assert fw.vm_rules("br-int", vm, EDGE) == ":"


def test_vm_rules_is_one_atomic_bundle_replacing_the_vms_rules():
    script = fw.vm_rules("br-int", vm_1001(), EDGE)
    printf, ofctl = script.split(" | ")
    assert words(ofctl) == ["ovs-ofctl", "-O", "OpenFlow14", "--bundle", "add-flows", "br-int", "-"]
    lines = words(printf)[2:]
    assert words(printf)[:2] == ["printf", "%s\\n"]
    assert lines[:3] == [
        "delete cookie=0x43520000000003e9/0xffffffffffffffff",
        "delete cookie=0x4352000000000000/0xffffffff00000000,in_port=tap1001_0",
        "delete cookie=0x4352000000000000/0xffffffff00000000,in_port=tap1001_1",
    ]
    assert lines[3:] == ["add " + f for f in VM_1001_FLOWS]


def test_vm_rules_can_carry_the_trunk_filter_in_the_same_bundle():
    printf, _ofctl = fw.vm_rules("br-int", vm_1001(), EDGE, trunk_filter=True).split(" | ")
    lines = words(printf)[2:]
    assert lines[:4] == ["delete cookie=0x4352000100000190/0xffffffffffffffff"] + \
        ["add " + f for f in fw.trunk_flows(EDGE)]
    assert lines[4:] == words(fw.vm_rules("br-int", vm_1001(), EDGE).split(" | ")[0])[2:]
    link_only = {"vm_id": 1002, "interfaces": [{"mac": "52:54:00:03:ea:01", "vlan_id": 101}]}
    assert fw.vm_rules("br-int", link_only, EDGE, trunk_filter=True) == fw.vm_rules("br-int", link_only, EDGE)


def test_bad_vm_data_is_refused_with_a_clear_message():
    vm = vm_1001()
    del vm["interfaces"][0]["ip_config"]
    with pytest.raises(ValueError, match="internet VLAN but has no address"):
        fw.vm_flows(vm, EDGE)
    vm = vm_1001()
    vm["interfaces"][0]["mac"] = "52:54:00:03:e9:00,actions=NORMAL"
    with pytest.raises(ValueError, match="not a MAC"):
        fw.vm_rules("br-int", vm, EDGE)
    vm = vm_1001()
    vm["interfaces"][0]["ip_config"]["ip"] = "10.60.7.101,actions=NORMAL"
    with pytest.raises(ValueError, match="not an IPv4"):
        fw.vm_rules("br-int", vm, EDGE)
    with pytest.raises(ValueError, match="not a TAP"):
        fw.port_flows(1001, fw.PortSpec("eth1", "52:54:00:03:e9:00", 5), EDGE)


def test_remove_and_scan_select_by_cookie():
    assert fw.remove_vm_rules("br-int", 1001) == \
        "ovs-ofctl -O OpenFlow14 del-flows br-int cookie=0x43520000000003e9/0xffffffffffffffff"
    assert fw.scan_rules("br-int") == ("ovs-ofctl -O OpenFlow14 --names --no-stats dump-flows br-int "
                                       "cookie=0x4352000000000000/0xffff000000000000")


def test_parse_rule_scan_finds_vms_trunk_filter_and_stale_rules():
    assert fw.parse_rule_scan(SCAN_SAMPLE) == {1001, 1005}
    assert fw.parse_trunk_scan(SCAN_SAMPLE) == {400}
    assert fw.stale_rule_vms(SCAN_SAMPLE) == {1005}
    assert fw.parse_rule_scan("") == set()
    other = " cookie=0x1234000000000001, priority=5,in_port=1 actions=drop\n cookie=0x0, priority=0 actions=NORMAL\n"
    assert fw.parse_rule_scan(other) == set() and fw.stale_rule_vms(other) == set()


def test_installed_rules_compare_equal_to_intended_ones():
    installed = {fw.flow_key(line) for line in SCAN_SAMPLE.splitlines() if "0x43520000000003e9" in line}
    assert installed == {fw.flow_key(f) for f in VM_1001_FLOWS}
    trunk = {fw.flow_key(line) for line in SCAN_SAMPLE.splitlines() if "0x4352000100000190" in line}
    assert trunk == {fw.flow_key(f) for f in fw.trunk_flows(EDGE)}
    assert fw.flow_key(" cookie=0x0, priority=0 actions=NORMAL") == (0, 0, frozenset(), "NORMAL")
    assert fw.flow_key("NXST_FLOW reply (xid=0x4):") is None


# --- trunk filter ---------------------------------------------------------------------------------

def test_worker_trunk_filter_passes_internet_vlan_only_from_the_gateways_macs():
    assert fw.trunk_flows(EDGE) == [
        "cookie=0x4352000100000190,priority=60,dl_vlan=400,dl_src=02:00:0a:3c:07:01,actions=NORMAL",
        "cookie=0x4352000100000190,priority=60,dl_vlan=400,dl_src=02:00:0a:3c:07:fe,actions=NORMAL",
        "cookie=0x4352000100000190,priority=50,dl_vlan=400,actions=drop",
    ]
    printf, ofctl = fw.worker_trunk_rules("br-int", EDGE).split(" | ")
    assert words(printf)[2:] == ["delete cookie=0x4352000100000190/0xffffffffffffffff"] + \
        ["add " + f for f in fw.trunk_flows(EDGE)]
    assert fw.remove_worker_trunk_rules("br-int", EDGE) == \
        "ovs-ofctl -O OpenFlow14 del-flows br-int cookie=0x4352000100000190/0xffffffffffffffff"


# --- network node ---------------------------------------------------------------------------------

def test_fixed_macs_on_the_network_node():
    assert (EDGE.gateway_mac, EDGE.dhcp_mac) == ("02:00:0a:3c:07:01", "02:00:0a:3c:07:fe")
    assert fw.node_internet_macs(EDGE) == ("nsenter --net=/run/netns/ns-dhcp-vlan400 ip link set dev dhcp400-i "
                                           "address 02:00:0a:3c:07:fe 2>/dev/null || true")


def test_gateway_ipv6_off_only_for_gateway_ports():
    assert fw.gateway_ipv6_off("gw_vlan100") == (
        "if [ -e /proc/sys/net/ipv6/conf/gw_vlan100 ]; then sysctl -q -w net.ipv6.conf.gw_vlan100.disable_ipv6=1; fi")
    for bad in ("eth0", "gw_vlan1;reboot", "gw_vlan"):
        with pytest.raises(ValueError):
            fw.gateway_ipv6_off(bad)


def test_ipv4_policy_tightens_icmp_and_blocks_management_before_the_uplink():
    rules = fw.ipv4_isolation_rules(400, "uplink0", ["10.0.10.0/24", "192.0.2.7"]).splitlines()
    assert rules == [
        "*filter",
        ":CR-FORWARD - [0:0]",
        ":CR-INPUT - [0:0]",
        "-A CR-FORWARD -i cr-trunk -j DROP",
        "-A CR-FORWARD -i gw_vlan+ -d 10.0.10.0/24 -j DROP",
        "-A CR-FORWARD -i gw_vlan+ -d 192.0.2.7/32 -j DROP",
        "-A CR-FORWARD -i gw_vlan400 -o uplink0 -j ACCEPT",
        "-A CR-FORWARD -i uplink0 -o gw_vlan400 -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
        "-A CR-FORWARD -i gw_vlan+ -j DROP",
        "-A CR-FORWARD -o gw_vlan+ -j DROP",
        "-A CR-INPUT -i cr-trunk -j DROP",
        "-A CR-INPUT -i gw_vlan+ -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
        "-A CR-INPUT -i gw_vlan+ -p icmp --icmp-type echo-request -m addrtype --dst-type LOCAL "
        "--limit-iface-in -j ACCEPT",
        "-A CR-INPUT -i gw_vlan+ -j REJECT",
        "COMMIT",
    ]
    with pytest.raises(ValueError, match="not an address"):
        fw.ipv4_isolation_rules(400, "uplink0", ["10.0.10.0/24 -j ACCEPT"])


def test_policy_is_reloaded_only_when_what_is_loaded_differs():
    rules = fw.ipv4_isolation_rules(400, "uplink0", ["10.0.10.0/24"])
    marker = fw.policy_marker(rules)
    assert marker == fw.policy_marker(rules) and marker.startswith("cr-policy-") and len(marker) == 26
    assert marker != fw.policy_marker(fw.ipv4_isolation_rules(400, "uplink0", ["10.0.11.0/24"]))
    lines = fw.node_policy(400, "uplink0", ["10.0.10.0/24"]).splitlines()
    check = next(i for i, line in enumerate(lines) if line.startswith("if [ \"$(printf"))
    assert lines[check - 1] == ("st=$(iptables-save -t filter 2>/dev/null | grep -E -- "
                                "'^-A (CR-FORWARD|CR-INPUT) |^-A (FORWARD -j CR-FORWARD|INPUT -j CR-INPUT)$' || true)")
    assert f"grep -qF -- {marker}; then" in lines[check]
    assert "/run/cloud-repositorio/policy-iptables.sum" in lines[check]
    # the loaded text carries the marker as the last rule of CR-INPUT
    assert f"-A CR-INPUT -m comment --comment {marker}\nCOMMIT" in "\n".join(lines)


@pytest.mark.skipif(not shutil.which("sh"), reason="no sh")
def test_policy_check_runs_the_restore_once_then_skips(tmp_path):
    """The generated check/load logic, run by sh against fake iptables tools that keep a state file."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    state = tmp_path / "state"
    log = tmp_path / "log"
    fake = f"""#!/bin/sh
case "$0" in
*-restore) cat >> {state}; echo restore >> {log} ;;
*-save) cat {state} 2>/dev/null ;;
*) case "$*" in *" -C "*) grep -qx -- "-A $3 -j $5" {state} 2>/dev/null ;;
   *" -I "*) echo "-A $3 -j $6" >> {state} ;; esac ;;
esac
"""
    for tool in ("iptables", "iptables-restore", "iptables-save"):
        (bin_dir / tool).write_text(fake)
        (bin_dir / tool).chmod(0o755)
    script = "\n".join(fw._load_chains("iptables", fw.ipv4_isolation_rules(400, "uplink0")))
    script = script.replace("/run/cloud-repositorio", str(tmp_path / "run"))
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    for _ in range(3):
        proc = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
    assert log.read_text().split() == ["restore"]
    assert "-A INPUT -j CR-INPUT" in state.read_text().splitlines()
    state.write_text(state.read_text().replace("-A CR-INPUT -i gw_vlan+ -j REJECT\n", ""))   # tampered
    subprocess.run(["sh", "-c", script], env=env, check=True)
    assert log.read_text().split() == ["restore", "restore"]


def test_ipv6_policy_drops_everything_from_gateway_ports():
    assert fw.ipv6_isolation_rules().splitlines() == [
        "*filter", ":CR-FORWARD - [0:0]", ":CR-INPUT - [0:0]",
        "-A CR-FORWARD -i cr-trunk -j DROP", "-A CR-FORWARD -i gw_vlan+ -j DROP",
        "-A CR-FORWARD -o gw_vlan+ -j DROP", "-A CR-INPUT -i cr-trunk -j DROP", "-A CR-INPUT -i gw_vlan+ -j DROP",
        "COMMIT"]
    script = fw.node_ipv6_policy()
    assert "ip6tables-restore -w --noflush" in script and script.startswith("if [ -e /proc/net/if_inet6 ]; then")
    assert "ip6tables -w -C INPUT -j CR-INPUT 2>/dev/null || ip6tables -w -I INPUT 1 -j CR-INPUT" in script
    policy = fw.node_policy(400, "uplink0", ["10.0.10.0/24"])
    assert "iptables-restore -w --noflush" in policy and script in policy


# --- every script is valid POSIX sh, every argument quoted ------------------------------------------

def all_scripts(bridge: str = "br-int") -> list:
    return [
        fw.vm_rules(bridge, vm_1001(), EDGE), fw.protect_ports(vm_1001(), EDGE),
        fw.remove_vm_rules(bridge, 1001), fw.scan_rules(bridge),
        fw.worker_trunk_rules(bridge, EDGE), fw.remove_worker_trunk_rules(bridge, EDGE),
        fw.node_internet_macs(EDGE), fw.gateway_ipv6_off("gw_vlan400"),
        fw.node_ipv6_policy(), fw.node_policy(400, "uplink0", ["10.0.10.0/24"]),
    ]


@pytest.mark.skipif(not SHELLS, reason="no dash or bash to check syntax with")
@pytest.mark.parametrize("shell", SHELLS)
def test_every_script_parses(shell):
    for script in all_scripts():
        proc = subprocess.run([shell, "-n", "-c", script], capture_output=True, text=True)
        assert proc.returncode == 0, (script, proc.stderr)


def test_a_hostile_bridge_name_stays_one_word():
    bridge = "br int; touch /tmp/owned"
    scripts = all_scripts(bridge)
    for script in scripts[:1] + scripts[2:6]:
        assert "'br int; touch /tmp/owned'" in script, script
