"""Privacy between tenants on the shared planes (SPEC §11), proven from inside the VMs.

Two tenants, A (admin) and B (student), each deploy a slice of two VMs with internet (eth0 on
VLAN 400) and one link between them (eth1).  On an empty lab the placement (fewest VMs first)
puts them as a1 worker1, a2 worker2, b1 worker3, b2 worker1: one A/B pair on the same worker and
pairs across the trunk.  Everything is deployed through the product's API (``make_api``); the
checks run inside the guests (serial console) and, from outside, read OpenFlow tables, OVS
columns, leases and iptables.

What the product must do for these tests to pass (``vm_firewall`` wired into deploy/delete):

* worker, VM launch (``vm_launcher.launch_vm_command``): internet TAPs added with
  ``vm_firewall.port_columns`` (``protected=true``); after add-port and before ``ip link set
  tapX up``: ``vm_firewall.vm_rules(bridge, vm, edge)``; on a worker with an internet VM (not on a
  host that holds the gateway): ``vm_firewall.worker_trunk_rules(bridge, edge)``;
* worker, VM stop (``stop_vm_command``): ``vm_firewall.remove_vm_rules(bridge, vm_id)``;
* network node: ``gw_vlan400`` (a VLAN of the node's trunk) made with its fixed MAC, the VLAN 400
  DHCP macvlan with its fixed MAC, every ``gw_vlan*`` gateway given
  ``gateway_ipv6_off`` before link up, and ``node_policy`` (IPv4 tightened + IPv6)
  in place of ``vlan_manager.isolation_rules`` with ``management`` = the workers', the network
  node's and the manager's addresses.

The tests run in file order and share one deployment (module fixture); the spoofing and
re-launch tests come after the read-only ones because they change B's guests.
"""
from __future__ import annotations

import ipaddress
import re
import subprocess
import time
from types import SimpleNamespace

import pytest
from labtools import GATEWAYS, STATE, console, host_of, leases, make_api, sh, wait_for_leases, wait_guest_configured
from labtools import console_fails as fails
from labtools import console_ok as ok

import naming
from hosts import vm_firewall as fw
from usecases.lifecycle import launch_command

NODE_PORT = 2222          # a listener on "::" of the network node
HTTP6_PID = "/tmp/cr-privacy-http6.pid"
IN_GATEWAYS = f"nsenter --net=/run/netns/{GATEWAYS}"  # run a command in the link gateways' namespace


# --- helpers -------------------------------------------------------------------------------------

def mac(vm: dict, i: int) -> str:
    return vm["interfaces"][i]["mac"].lower()


def inet_ip(vm: dict) -> str:
    return vm["interfaces"][0]["ip_config"]["ip"]


def link_local(mac_text: str) -> str:
    """The EUI-64 IPv6 link-local address Linux derives from a MAC."""
    b = bytearray(int(x, 16) for x in mac_text.split(":"))
    b[0] ^= 0x02
    eui = bytes(b[:3]) + b"\xff\xfe" + bytes(b[3:])
    return str(ipaddress.IPv6Address(b"\xfe\x80" + b"\x00" * 6 + eui))


def no_arp_reply(lab, vm, ip: str, dev: str = "eth0") -> None:
    out = fails(lab, vm, f"arping -c 2 -w 3 -I {dev} {ip} | grep -q 'Received [1-9]'")
    assert "Unicast reply" not in out, out


def never_saw(lab, vm, ip: str) -> None:
    """``vm`` never learned ``ip``'s MAC: no frame from ``ip`` (not even a broadcast ARP) reached it."""
    out = ok(lab, vm, "ip neigh")
    learned = [line for line in out.splitlines() if line.split()[:1] == [ip] and "lladdr" in line]
    assert not learned, f"{vm['name']} learned {ip}:\n{out}"


def get_internet(lab) -> str:
    host, port = lab["lab"]["internet_host"], lab["lab"]["internet_http"].rsplit(":", 1)[1].strip("/")
    return f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {host} {port}"


def flows_on(lab, host: str) -> str:
    return sh(lab, host, fw.scan_rules("br-int"))


def port_rx(lab, vm: dict, i: int) -> int:
    tap = naming.tap_name(vm["vm_id"], i)
    return int(sh(lab, host_of(lab, vm["worker_ip"]),
                  f"ovs-vsctl get interface {tap} statistics:rx_packets").strip().strip('"'))


def manager_address(lab) -> str:
    """The manager's address as the hosts see it (source of the route to the network node)."""
    out = subprocess.run(["ip", "-o", "route", "get", lab["network_node"]], capture_output=True, text=True).stdout
    return re.search(r"\bsrc (\S+)", out).group(1)


def edge(lab) -> fw.InternetEdge:
    return fw.internet_edge(lab["internet"])


def build(api, user: str, name: str) -> tuple:
    ok_, s = api.create_slice(user, name)
    assert ok_, s
    vms = []
    for i in (1, 2):
        ok_, vm = api.add_vm_to_slice(user, s["slice_id"], f"{name}{i}", "cirros", 1, True)
        assert ok_, vm
        vms.append(vm)
    ok_, link = api.create_link(user, s["slice_id"], vms[0]["vm_id"], "eth1", vms[1]["vm_id"], "eth1")
    assert ok_, link
    return s["slice_id"], vms, link["vlan_id"]


# --- the deployment --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def t(lab, tmp_path_factory):
    api = make_api(lab, tmp_path_factory.mktemp("privacy") / "database.yaml")
    try:
        yield deploy_two_tenants(lab, api)
    finally:
        for s in api.db.all_slices().values():
            api.delete_slice(s["owner"], s["slice_id"])
        api.executor.close()


def deploy_two_tenants(lab, api) -> SimpleNamespace:
    sid_a, a, va = build(api, "admin", "pa")
    sid_b, b, vb = build(api, "student", "pb")
    for user, sid in (("admin", sid_a), ("student", sid_b)):
        ok_, msg = api.deploy_slice(user, sid)
        assert ok_, msg
    a, b = (api.db.get_slice(sid)["vms"] for sid in (sid_a, sid_b))   # with their links' VLANs
    got = wait_for_leases(lab, {(400, mac(v, 0)) for v in a + b} | {(va, mac(v, 1)) for v in a}
                          | {(vb, mac(v, 1)) for v in b}, timeout=150)
    wait_guest_configured(lab, [(v, i) for v in a + b for i in ("eth0", "eth1")])
    same = [(x, y) for x in a for y in b if x["worker_ip"] == y["worker_ip"]]
    cross = [(x, y) for x in a for y in b if x["worker_ip"] != y["worker_ip"]]
    placement = [v["worker_ip"] for v in a + b]
    assert same and cross, f"placement gives no same-worker and no cross-worker A/B pair: {placement}"
    return SimpleNamespace(api=api, a=a, b=b, va=va, vb=vb, sid_a=sid_a, sid_b=sid_b, same=same[0], cross=cross[0],
                           link_ip={v["vm_id"]: got[(vlan, mac(v, 1))] for vlan, vs in ((va, a), (vb, b)) for v in vs})


# --- requirement 3 (state after deploy): rules, protected ports, fixed MACs --------------------------

def test_every_vm_has_exactly_its_rules_and_internet_taps_are_protected(lab, t):
    e = edge(lab)
    for host in ("worker1", "worker2", "worker3"):
        text = flows_on(lab, host)
        here = [v for v in t.a + t.b if host_of(lab, v["worker_ip"]) == host]
        assert fw.parse_rule_scan(text) == {v["vm_id"] for v in here}, text
        assert fw.stale_rule_vms(text) == set(), text
        if any(p.vlan == e.vlan for v in here for p in fw.ports_of(v)):
            assert fw.parse_trunk_scan(text) == {e.vlan}, text
        for vm in here:
            installed = {fw.flow_key(line) for line in text.splitlines()
                         if f"cookie={fw.cookie_text(fw.vm_cookie(vm['vm_id']))}," in line}
            assert installed == {fw.flow_key(f) for f in fw.vm_flows(vm, e)}, (vm["vm_id"], text)
            for i in (0, 1):
                prot = sh(lab, host, f"ovs-vsctl get port {naming.tap_name(vm['vm_id'], i)} protected").strip()
                assert prot == ("true" if i == 0 else "false"), (vm["vm_id"], i, prot)


def test_the_internet_gateway_and_dhcp_server_have_their_fixed_macs_and_no_ipv6(lab, t):
    e = edge(lab)
    assert sh(lab, "netnode", "cat /sys/class/net/gw_vlan400/address").strip() == e.gateway_mac
    inside = naming.dhcp_macvlan(e.vlan)
    out = sh(lab, "netnode", f"ip netns exec {naming.dhcp_namespace(e.vlan)} cat /sys/class/net/{inside}/address")
    assert out.strip() == e.dhcp_mac
    ports = re.findall(r"^\d+: (gw_vlan\d+)@cr-trunk:", sh(lab, "netnode", "ip -o link show type macvlan"),
                       flags=re.M)
    assert ports == ["gw_vlan400"]            # the link gateways are in their own namespace
    inner = re.findall(r"^\d+: (gw_vlan\d+)@if\d+:", sh(lab, "netnode", f"{IN_GATEWAYS} ip -o link show type macvlan"),
                       flags=re.M)
    assert {f"gw_vlan{t.va}", f"gw_vlan{t.vb}"} <= set(inner) and "gw_vlan400" not in inner
    assert not [p for p in sh(lab, "netnode", "ovs-vsctl list-ports br-int").split() if p.startswith("gw_vlan")]
    assert sh(lab, "netnode", "ip -6 -o addr show dev gw_vlan400").strip() == ""
    assert sh(lab, "netnode", f"{IN_GATEWAYS} ip -6 -o addr show").strip() == ""
    for enter in ("", IN_GATEWAYS + " "):
        assert "-A CR-INPUT -i gw_vlan+ -j DROP" in sh(lab, "netnode", f"{enter}ip6tables -S CR-INPUT")
        assert "-j CR-INPUT" in sh(lab, "netnode", f"{enter}ip6tables -S INPUT")
        assert "-j CR-FORWARD" in sh(lab, "netnode", f"{enter}ip6tables -S FORWARD")


# --- requirement 1: VLAN 400 is not a shared LAN -------------------------------------------------------

def test_every_internet_vm_reaches_its_gateway_and_the_internet(lab, t):
    for vm in t.a + t.b:
        ok(lab, vm, "ping -c 2 -W 2 10.60.7.1")
        out = ok(lab, vm, get_internet(lab))
        assert "you are " in out, out


@pytest.mark.parametrize("pair", ["same", "cross"])
def test_no_vm_reaches_another_tenants_vm_on_vlan_400(lab, t, pair):
    x, y = getattr(t, pair)
    for src, dst in ((x, y), (y, x)):
        fails(lab, src, f"ping -c 2 -W 2 {inet_ip(dst)}")
        no_arp_reply(lab, src, inet_ip(dst))
        never_saw(lab, dst, inet_ip(src))
        # nor through the gateway (routed, not bridged)
        fails(lab, src, f"ip route add {inet_ip(dst)}/32 via 10.60.7.1; ping -c 2 -W 2 {inet_ip(dst)}; "
                        f"r=$?; ip route del {inet_ip(dst)}/32; exit $r")


def test_vlan_400_is_not_shared_inside_a_tenant_either(lab, t):
    a1, a2 = t.a
    fails(lab, a1, f"ping -c 2 -W 2 {inet_ip(a2)}")
    no_arp_reply(lab, a1, inet_ip(a2))
    never_saw(lab, a2, inet_ip(a1))


# --- requirement 4: links stay plain L2; tagged frames stay in their VLAN -------------------------------

def test_a_link_is_plain_l2_static_addresses_any_mac_and_ipv6(lab, t):
    a1, a2 = t.a
    ok(lab, a1, "ip addr add 10.99.0.1/24 dev eth1")
    ok(lab, a2, "ip addr add 10.99.0.2/24 dev eth1")
    ok(lab, a1, "ping -c 2 -W 2 10.99.0.2")
    # a student's own MAC on a link port is fine (a router or a bridge inside a VM needs it)
    ok(lab, a1, "ip link set eth1 down && ip link set eth1 address 02:11:22:33:44:55 && ip link set eth1 up "
                "&& ip addr add 10.99.0.1/24 dev eth1 2>/dev/null; ping -c 3 -W 3 10.99.0.2")
    ok(lab, a1, f"ip link set eth1 down && ip link set eth1 address {mac(a1, 1)} && ip link set eth1 up")
    ok(lab, a1, f"sleep 2; ping6 -c 2 -W 3 {link_local(mac(a2, 1))}%eth1")


def test_tagged_frames_from_a_vm_never_reach_another_vlan(lab, t):
    a1 = t.same[0]
    rc, out = console(lab, a1, f"vconfig add eth1 {t.vb}")
    if rc != 0:
        pytest.skip(f"the guest kernel has no 802.1Q support (build the image with 8021q): {out}")
    b_net = naming.link_subnet(t.vb)
    spoof = str(b_net.network_address + 77)
    rx = port_rx(lab, a1, 1)
    try:
        ok(lab, a1, f"ip link set eth1.{t.vb} up && ip addr add {spoof}/24 dev eth1.{t.vb}")
        for b in t.b:
            fails(lab, a1, f"ping -c 2 -W 2 {t.link_ip[b['vm_id']]}")
            never_saw(lab, b, spoof)
        # the tagged frames did leave the VM (and were dropped by the switch)
        assert port_rx(lab, a1, 1) >= rx + 4
        # into the internet VLAN from a link port: nothing either
        ok(lab, a1, "vconfig add eth1 400 && ip link set eth1.400 up && ip addr add 10.60.7.77/32 dev eth1.400")
        fails(lab, a1, "ping -c 2 -W 2 -I eth1.400 10.60.7.1")
    finally:
        console(lab, a1, f"vconfig rem eth1.{t.vb}; vconfig rem eth1.400; true")


# --- requirement 5: no way to the node's services or to management addresses ----------------------------

def _http6_servers(lab) -> None:
    """A web server on "::" of the network node, in its own namespace and in the gateways' (there is
    none in a real one: the worst case)."""
    for enter, pid in (("", HTTP6_PID), (IN_GATEWAYS + " ", HTTP6_PID + "-gw")):
        sh(lab, "netnode", f"cd /tmp && setsid {enter}/usr/bin/python3 -m http.server --bind :: {NODE_PORT} "
                           f">/dev/null 2>&1 </dev/null & echo $! > {pid}")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not all(
            f":{NODE_PORT}" in sh(lab, "netnode", f"{enter}ss -ltn") for enter in ("", IN_GATEWAYS + " ")):
        time.sleep(0.2)


def test_ipv6_link_local_of_a_gateway_reaches_no_node_service(lab, t):
    a1, a2 = t.a
    gw = f"gw_vlan{t.va}"
    _http6_servers(lab)
    try:
        # control: IPv6 inside the link works between the tenant's own VMs
        ok(lab, a1, f"ping6 -c 2 -W 3 {link_local(mac(a2, 1))}%eth1")
        gw_mac = re.search(r"link/ether (\S+)", sh(lab, "netnode", f"{IN_GATEWAYS} ip -o link show dev {gw}"))[1]
        gw_ll = link_local(gw_mac)
        req = f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {gw_ll}%eth1 {NODE_PORT} | grep -q 200"
        fails(lab, a1, req)
        # even if IPv6 were on again in the gateways' namespace (the gateway port and the loopback that
        # local traffic takes), ip6tables keeps the node closed
        sh(lab, "netnode", f"{IN_GATEWAYS} sysctl -q -w net.ipv6.conf.lo.disable_ipv6=0 "
                           f"net.ipv6.conf.{gw}.disable_ipv6=0; sleep 3")
        assert gw_ll in sh(lab, "netnode", f"{IN_GATEWAYS} ip -6 -o addr show dev {gw}")
        local = sh(lab, "netnode", f"{IN_GATEWAYS} /usr/bin/python3 -c \"import urllib.request as u; "
                                   f"print(u.urlopen('http://[{gw_ll}%{gw}]:{NODE_PORT}/', timeout=10).status)\"")
        assert "200" in local                             # control: the service answers on that address
        fails(lab, a1, f"ping6 -c 2 -W 2 {gw_ll}%eth1")
        fails(lab, a1, req)
        # and over the internet VLAN, no IPv6 leaves the VM at all
        gw400_ll = link_local(edge(lab).gateway_mac)
        fails(lab, a1, f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {gw400_ll}%eth0 {NODE_PORT} | grep -q 200")
    finally:
        sh(lab, "netnode", f"{IN_GATEWAYS} sysctl -q -w net.ipv6.conf.{gw}.disable_ipv6=1 "
                           "net.ipv6.conf.lo.disable_ipv6=1; "
                           f"kill $(cat {HTTP6_PID} {HTTP6_PID}-gw) 2>/dev/null; rm -f {HTTP6_PID} {HTTP6_PID}-gw")


def test_no_vm_reaches_a_management_address_or_another_gateway(lab, t):
    a1 = t.a[0]
    targets = [lab["network_node"], *lab["workers"], manager_address(lab)]
    for addr in targets:
        fails(lab, a1, f"ping -c 1 -W 2 {addr}")
        fails(lab, a1, f"nc -w 3 {addr} 22 </dev/null")
    # ICMP reaches only the gateway address of the port it came in on
    ok(lab, a1, f"ping -c 1 -W 2 {naming.link_network(t.va)['gateway_ip']}")
    fails(lab, a1, f"ping -c 1 -W 2 {naming.link_network(t.vb)['gateway_ip']}")


# --- requirement 2: anti-spoofing ---------------------------------------------------------------------

def test_a_vm_that_takes_another_vms_ip_or_mac_gets_nothing(lab, t):
    a, b = t.cross
    log = f"{STATE}/dnsmasq-vlan400.log"
    discovers = sh(lab, "netnode", f"grep -c DHCPDISCOVER {log} || true").strip()
    ok(lab, b, f"kill $(cat /run/udhcpc.eth0.pid); ip addr flush dev eth0; ip addr add {inet_ip(a)}/24 dev eth0; "
               "ip route add default via 10.60.7.1")
    fails(lab, b, "ping -c 2 -W 2 10.60.7.1")
    fails(lab, b, get_internet(lab) + " | grep -q 'you are'")
    ok(lab, b, f"ip addr flush dev eth0; ip link set eth0 down; ip link set eth0 address {mac(a, 0)}; "
               "ip link set eth0 up")
    out = fails(lab, b, "udhcpc -n -q -t 3 -T 2 -i eth0 -s /bin/true", timeout=60)
    assert "no lease" in out, out
    ok(lab, b, f"ip addr add {inet_ip(a)}/24 dev eth0; arping -U -c 2 -I eth0 {inet_ip(a)}; true")
    fails(lab, b, "ping -c 2 -W 2 10.60.7.1")
    # the victim is untouched, and the network node never heard the spoofer's DHCP
    ok(lab, a, "ping -c 2 -W 2 10.60.7.1")
    assert "you are " in ok(lab, a, get_internet(lab))
    assert sh(lab, "netnode", f"grep -c DHCPDISCOVER {log} || true").strip() == discovers
    assert leases(lab, 400)[mac(a, 0)] == inet_ip(a)


def test_a_vms_dhcp_server_answers_nobody(lab, t):
    a, b = t.same
    b_other = next(v for v in t.b if v is not b)
    conf = ("printf 'start {lo}\\nend {hi}\\ninterface {dev}\\nopt router {rt}\\nopt subnet 255.255.255.0\\n"
            "lease_file /tmp/{dev}.leases\\npidfile /tmp/{dev}.udhcpd.pid\\n' > /tmp/{dev}.conf; "
            "touch /tmp/{dev}.leases; udhcpd /tmp/{dev}.conf")
    net_b = naming.link_subnet(t.vb).network_address
    ok(lab, b, conf.format(lo="10.60.7.50", hi="10.60.7.60", dev="eth0", rt=inet_ip(b)))
    ok(lab, b, conf.format(lo=net_b + 251, hi=net_b + 253, dev="eth1", rt=net_b + 66))   # outside .10-.250
    host = host_of(lab, b["worker_ip"])
    drop = f"udp,in_port={naming.tap_name(b['vm_id'], 1)},tp_src=67,tp_dst=68"
    try:
        for vm, dev in ((a, "eth0"), (b_other, "eth1")):
            ok(lab, vm, f"kill -USR2 $(cat /run/udhcpc.{dev}.pid); sleep 1; kill -USR1 $(cat /run/udhcpc.{dev}.pid); "
                        "sleep 5")
        out = ok(lab, a, "ip -4 addr show eth0; ip route")
        assert f"inet {inet_ip(a)}/24" in out and "default via 10.60.7.1" in out, out
        out = ok(lab, b_other, "ip -4 addr show eth1; ip route")
        assert re.search(rf"inet {re.escape(str(net_b)[:-1])}(\d+)/24", out), out
        got = int(re.search(rf"inet {re.escape(str(net_b)[:-1])}(\d+)/24", out).group(1))
        assert 10 <= got <= 250 and "default via " + str(net_b + 66) not in out, out
        counters = sh(lab, host, f"ovs-ofctl -O OpenFlow14 dump-flows br-int {drop}")
        assert int(re.search(r"n_packets=(\d+)", counters).group(1)) >= 1, counters
    finally:
        console(lab, b, "kill $(cat /tmp/eth0.udhcpd.pid) $(cat /tmp/eth1.udhcpd.pid); true")


# --- requirement 3: rules follow the VM (restart, delete) -------------------------------------------------

def test_rules_are_reinstalled_when_the_vm_restarts_and_a_second_run_changes_nothing(lab, t):
    e = edge(lab)
    vm = t.cross[1]                     # a B VM; its guest was changed by the spoofing tests
    host = host_of(lab, vm["worker_ip"])
    before = sh(lab, host, f"ovs-vsctl get interface {naming.tap_name(vm['vm_id'], 0)} ofport").strip()
    for _ in range(2):                 # QEMU restart = the launch command again (new TAPs, new OpenFlow ports)
        result = t.api.executor.run(launch_command(vm, t.api.services.host_context(), t.api.services.credentials))
        assert result.ok, result.message()
    after = sh(lab, host, f"ovs-vsctl get interface {naming.tap_name(vm['vm_id'], 0)} ofport").strip()
    assert after != before
    text = flows_on(lab, host)
    assert fw.stale_rule_vms(text) == set(), text
    installed = {fw.flow_key(line) for line in text.splitlines()
                 if f"cookie={fw.cookie_text(fw.vm_cookie(vm['vm_id']))}," in line}
    assert installed == {fw.flow_key(f) for f in fw.vm_flows(vm, e)}, text
    assert sum(1 for line in text.splitlines() if fw.cookie_text(fw.vm_cookie(vm["vm_id"])) in line) == \
        len(fw.vm_flows(vm, e))
    wait_guest_configured(lab, [(vm, "eth0")], timeout=90)
    ok(lab, vm, "ping -c 2 -W 2 10.60.7.1")
    a = t.cross[0]
    fails(lab, vm, f"ping -c 2 -W 2 {inet_ip(a)}")
    no_arp_reply(lab, vm, inet_ip(a))


def test_deleting_a_slice_removes_exactly_its_vms_rules(lab, t):
    ok_, msg = t.api.delete_slice("student", t.sid_b)
    assert ok_, msg
    for host in ("worker1", "worker2", "worker3"):
        here_a = {v["vm_id"] for v in t.a if host_of(lab, v["worker_ip"]) == host}
        assert fw.parse_rule_scan(flows_on(lab, host)) == here_a, host
    ok(lab, t.a[0], "ping -c 2 -W 2 10.60.7.1")
    ok_, msg = t.api.delete_slice("admin", t.sid_a)
    assert ok_, msg
    for host in ("worker1", "worker2", "worker3"):
        assert fw.parse_rule_scan(flows_on(lab, host)) == set(), host
