"""What runs on the network node: per-VLAN gateways and DHCP, internet NAT, isolation.

The node's layout (names in ``naming``), so that a VLAN costs netlink work and
a few flows, never an Open vSwitch port:

* one trunk from ``br-int`` into the node's kernel: ``br-int``'s patch port
  ``cr-int-patch`` (every VLAN) to the node bridge ``cr-node``
  (``fail_mode=secure``), whose other port is the veth ``cr-trunk-br``, peer of
  ``cr-trunk`` in the kernel.  Made once by the first VLAN set-up
  (``trunk_up``, under the node's ``trunk.lock``), removed with the last.
  Open vSwitch's cost per port change grows with the ports on the bridge
  (about 1 s per add at 1,000 ports in the lab's userspace datapath), so
  nothing of a VLAN changes its ports;
* per link VLAN V: the marker ``vlan{V}.owner``; five flows on ``cr-node``
  (cookie per VLAN, ``node_vlan_flows``) that take tag V off frames for the
  VLAN's gateway and DHCP server MACs (a broadcast: one copy to each) and put
  it on their frames; the gateway ``gw_vlan{V}``, a macvlan (mode private) of
  ``cr-trunk`` with its fixed MAC (no IPv6) holding ``.1``, in the namespace
  ``ns-cr-gateways`` (made and removed with the trunk; it forwards nothing and
  has its own isolation chains): ovs-vswitchd mirrors the routes of its own
  namespace and re-reads them all at each change, so 1,000 gateways there
  made every later VLAN's addresses cost ten times more; the namespace
  ``ns-dhcp-vlan{V}`` holding ``dhcp{V}-i``, another macvlan of ``cr-trunk``,
  and its own dnsmasq (started with ``nsenter --net``: no mount namespace per
  VLAN), with its own pid, lease and log files, stopped by that pid (after
  checking the pid is that VLAN's dnsmasq).  Nothing here ever touches
  another VLAN.  (A kernel 802.1Q subinterface per VLAN would be simpler, but
  the lab's kernel has no ``8021q``, no VLAN-filtering bridge and no tc vlan
  action: the tags are handled where Open vSwitch handles them anyway.)

The internet VLAN (400) is shared: ``gw_vlan400`` with 10.60.7.1, a dnsmasq
that answers only reserved MACs (one file per VM in its hosts directory, so
each VM gets exactly the ``ip_config`` address the database shows), and
MASQUERADE out of the uplink; its gateway stays in the node's own namespace,
where the uplink is.  ``internet_up`` keeps a running setup as it
is, so deploying a slice never disturbs another slice's internet VMs; the
node itself decides, under a lock, when the last reservation is gone.

L3 isolation: the network node forwards only between the internet VLAN and
the uplink.  The chain ``CR-FORWARD`` (jumped to first from FORWARD, replaced
atomically with ``iptables-restore --noflush``) accepts VLAN 400 -> uplink
and the replies, and drops everything else that enters or leaves a
``gw_vlan*`` device (or comes from the trunk itself), so no VM reaches another slice's
subnets through the gateways.  ``CR-INPUT`` lets a VM ping only its own
gateway.  Both chains go when the last VLAN of this system leaves the node.  The
gateways' namespace has the same chains (``vm_firewall.gateway_namespace_policy``).

Every builder returns one idempotent script (``HostCommand``) that holds the
node's locks it needs itself, so the scripts of several deploys can be
concatenated into one.  The kinds of node objects (trunk, VLAN marker,
gateway, DHCP namespace, dnsmasq, internet reservation, NAT rule, isolation
rules, and the old layout's ports) are described below, each with its scan,
parser and removal.
"""
from __future__ import annotations

import hashlib
import ipaddress
import re
from typing import Optional

import naming
from hosts import vm_firewall
from hosts.hostcmd import HostCommand, join, link_exists, q, stop_by_pidfile
from hosts.resources import Found, HostContext, Key, Kind, int_or_none, register
from vm_launcher import OVS_DOWN_EXIT, del_ports, ovs_alive, ovs_preflight

OVS = ["ovs-vsctl", "--timeout=10"]
TRUNK, TRUNK_PORT = naming.NODE_TRUNK, naming.NODE_TRUNK_PORT
GWNS = naming.GATEWAY_NAMESPACE
GWNS_PATH = naming.netns_path(GWNS)
IN_GWNS = join(["nsenter", f"--net={GWNS_PATH}"])  # prefix: run a command in the gateways' namespace


def _stop_dnsmasq(vlan: int) -> str:
    """Shell: stop VLAN ``vlan``'s dnsmasq by its pid file, only if it is that dnsmasq."""
    pidfile = naming.dnsmasq_files(vlan)["pid"]
    return stop_by_pidfile(pidfile, f"--pid-file={pidfile}", signal="TERM", wait_s=5)


def _dnsmasq_running(vlan: int) -> str:
    """Shell test: VLAN ``vlan``'s dnsmasq is alive (sets ``$pid``)."""
    pidfile = naming.dnsmasq_files(vlan)["pid"]
    return (f"{{ pid=; {{ read -r pid < {q(pidfile)}; }} 2>/dev/null; [ -n \"$pid\" ] && "
            f"tr '\\0' ' ' 2>/dev/null < /proc/$pid/cmdline | grep -q -- {q('--pid-file=' + pidfile)}; }}")


def _ipv6_off(dev: str) -> str:
    return (f"if [ -e {q('/proc/sys/net/ipv6/conf/' + dev)} ]; then "
            f"sysctl -q -w {q(f'net.ipv6.conf.{dev}.disable_ipv6=1')}; fi")


NODE_BRIDGE, PATCH, PATCH_INT = naming.NODE_BRIDGE, naming.NODE_PATCH, naming.NODE_PATCH_INT


def trunk_up(bridge: str) -> str:
    """Shell: the node's trunk, made if any part of it is missing (under ``trunk.lock``).

    The veth ``cr-trunk``/``cr-trunk-br`` (no IPv6, marked with an alias), the
    node bridge ``cr-node`` (``fail_mode=secure``, the datapath type of
    ``bridge``) holding ``cr-trunk-br`` and a patch port to ``bridge``.  When
    all of it is there this is three cheap queries; otherwise one Open vSwitch
    transaction (re)makes the bridge and its ports and waits for vswitchd.  The
    node bridge's two ports ask for OpenFlow ports 1 and 2, so the VLANs' flows
    (ports by number once installed) still match when a repair remakes them.
    """
    alias = naming.device_alias(naming.TRUNK_MARK)
    mark = f"external_ids:{naming.MARK}={naming.TRUNK_MARK}"
    present = (f"{link_exists(TRUNK)} && {join([*OVS, 'port-to-br', TRUNK_PORT])} >/dev/null 2>&1 && "
               f"{join([*OVS, 'port-to-br', PATCH_INT])} >/dev/null 2>&1")
    return _locked_once("trunk.lock", [
        f"if ! {{ {present}; }}; then",
        f"{link_exists(TRUNK)} || ip link add {q(TRUNK)} type veth peer name {q(TRUNK_PORT)}",
        _ipv6_off(TRUNK), _ipv6_off(TRUNK_PORT),
        join(["ip", "link", "set", TRUNK, "alias", alias]),
        join(["ip", "link", "set", TRUNK_PORT, "alias", alias]),
        join(["ip", "link", "set", TRUNK_PORT, "up"]),
        join(["ip", "link", "set", TRUNK, "up"]),
        f"dp=$({join([*OVS, 'get', 'bridge', bridge, 'datapath_type'])})",
        join([*OVS, "--", "--may-exist", "add-br", NODE_BRIDGE]) + " -- set bridge " + q(NODE_BRIDGE)
        + " fail_mode=secure \"datapath_type=$dp\" " + q(mark) + " "
        + join(["--", "--if-exists", "del-port", NODE_BRIDGE, TRUNK_PORT,
                "--", "add-port", NODE_BRIDGE, TRUNK_PORT, "--", "set", "port", TRUNK_PORT, mark,
                "--", "set", "interface", TRUNK_PORT, "ofport_request=1",
                "--", "--if-exists", "del-port", NODE_BRIDGE, PATCH,
                "--", "add-port", NODE_BRIDGE, PATCH, "--", "set", "interface", PATCH, "type=patch",
                f"options:peer={PATCH_INT}", "ofport_request=2", "--", "set", "port", PATCH, mark,
                "--", "--if-exists", "del-port", bridge, PATCH_INT,
                "--", "add-port", bridge, PATCH_INT, "--", "set", "interface", PATCH_INT, "type=patch",
                f"options:peer={PATCH}", "--", "set", "port", PATCH_INT, mark]),
        "fi",
        gateway_namespace_up(),
    ])


def gateway_namespace_up() -> str:
    """Shell: the link gateways' namespace, made if missing: loopback up, no forwarding, no IPv6.

    IPv6 is off for ``all`` and ``default`` before any gateway is made in it, so no gateway
    ever gets a link-local address.  Run under ``trunk.lock`` (``trunk_up``).
    """
    sysctls = ["net.ipv4.ip_forward=0", "net.ipv6.conf.all.disable_ipv6=1",
               "net.ipv6.conf.default.disable_ipv6=1"]
    inside = " && ".join([join(["ip", "link", "set", "lo", "up"]),
                          "{ [ ! -e /proc/sys/net/ipv6 ] || sysctl -q -w " + " ".join(sysctls[1:]) + "; }",
                          join(["sysctl", "-q", "-w", sysctls[0]])])
    return (f"[ -e {q(GWNS_PATH)} ] || {{ {join(['ip', 'netns', 'add', GWNS])} && "
            f"{IN_GWNS} sh -c {q(inside)}; }}")


def remove_trunk(bridge: str) -> list:
    """Shell lines: remove the trunk (the node bridge, br-int's patch port, the veth: every gateway with it)."""
    argv = ["ovs-vsctl", "--timeout=5", "--no-wait", "--", "--if-exists", "del-br", NODE_BRIDGE,
            "--", "--if-exists", "del-port", bridge, PATCH_INT]
    sums = " ".join(q(f"{naming.STATE_DIR}/policy-{vm_firewall.GATEWAYS_POLICY}{t}.sum")
                    for t in ("iptables", "ip6tables"))
    return [f"[ \"${{ovs_ok:-1}}\" = 0 ] || {join(argv)} || true", f"ip link del {q(TRUNK)} 2>/dev/null || true",
            f"ip netns del {q(GWNS)} 2>/dev/null || true; rm -f {sums}", _ensured_forget("trunk.lock")]


def any_vlan_marker(state_dir: str = naming.STATE_DIR) -> str:
    """Shell test: some VLAN of this system has its marker on the node.

    Not ``ls DIR/vlan*.owner``: ``ls`` fails when one of the files the glob
    named is removed before it looks (another VLAN's removal running at the
    same moment), and the node would then tear down the trunk or the
    isolation chains of every VLAN still there.
    """
    return f"( for f in {q(state_dir)}/vlan*.owner; do [ -e \"$f\" ] && exit 0; done; exit 1 )"


def trunk_teardown_if_unused(bridge: str) -> str:
    """Shell: under ``trunk.lock``, remove the trunk once no VLAN of this system is left on the node.

    A set-up writes its VLAN's marker before it takes the lock to make sure of
    the trunk, so a removal that runs meanwhile either sees that marker and
    keeps the trunk, or removes it before the set-up makes it again.
    """
    return _locked("trunk.lock", [
        f"if ! {any_vlan_marker()}; then",
        *remove_trunk(bridge),
        "fi",
    ])


def node_vlan_flows(vlan: int, gateway_ip: str, dhcp_ip: str) -> list:
    """The node bridge's flows of VLAN ``vlan`` (``ovs-ofctl`` syntax), between ``br-int`` and the trunk.

    From ``br-int`` (tagged ``vlan``): to the gateway's or the DHCP server's
    MAC, untagged onto the trunk; a broadcast, as one unicast copy to each of
    them (a macvlan would hand a broadcast to every VLAN's devices).  From the
    trunk: frames of those two MACs, tagged ``vlan``, to ``br-int``.  Anything
    else is dropped (``fail_mode=secure``, no other flow).
    """
    c = vm_firewall.cookie_text(naming.node_vlan_flow_cookie(vlan))
    g, d = naming.port_mac(gateway_ip), naming.port_mac(dhcp_ip)
    head = f"cookie={c},priority=100"
    down = f"{head},in_port={PATCH},dl_vlan={vlan}"
    return [
        f"{down},dl_dst={g},actions=strip_vlan,output:{TRUNK_PORT}",
        f"{down},dl_dst={d},actions=strip_vlan,output:{TRUNK_PORT}",
        f"{down},dl_dst=ff:ff:ff:ff:ff:ff,actions=strip_vlan,mod_dl_dst:{g},output:{TRUNK_PORT},"
        f"mod_dl_dst:{d},output:{TRUNK_PORT}",
        f"{head},in_port={TRUNK_PORT},dl_src={g},actions=mod_vlan_vid:{vlan},output:{PATCH}",
        f"{head},in_port={TRUNK_PORT},dl_src={d},actions=mod_vlan_vid:{vlan},output:{PATCH}",
    ]


def _vlan_flows_up(vlan: int, gateway_ip: str, dhcp_ip: str) -> str:
    """Shell: (re)install VLAN ``vlan``'s flows on the node bridge, atomically (one bundle)."""
    cookie = vm_firewall.cookie_match(naming.node_vlan_flow_cookie(vlan))
    return vm_firewall.flow_bundle(NODE_BRIDGE, [f"delete {cookie}"]
                                   + [f"add {f}" for f in node_vlan_flows(vlan, gateway_ip, dhcp_ip)])


def _vlan_flows_down(vlan: int) -> str:
    cookie = vm_firewall.cookie_match(naming.node_vlan_flow_cookie(vlan))
    return (f"[ \"${{ovs_ok:-1}}\" = 0 ] || "
            f"{join([*vm_firewall.OFCTL, 'del-flows', NODE_BRIDGE, cookie])} 2>/dev/null || true")


def _is_macvlan(dev: str) -> str:
    return f"ip -o -d link show dev {q(dev)} 2>/dev/null | grep -q ' macvlan mode '"


def _legacy_ports_gone(bridge: str, vlan: int) -> str:
    """Shell: remove VLAN ``vlan``'s Open vSwitch ports of the old layout, only when they are there.

    The old gateway was an OVS internal port with the gateway's name (now the
    name of a macvlan), the old DHCP veth ``dhcp{V}-o`` a port too.  On a node
    without them this costs two netlink queries and no Open vSwitch call.
    """
    gw, veth = naming.gateway_port(vlan), naming.legacy_dhcp_veth(vlan)
    return (f"if {{ {link_exists(gw)} && ! {_is_macvlan(gw)}; }} || {link_exists(veth)}; then "
            f"{del_ports(bridge, [gw, veth])}; ip link del {q(veth)} 2>/dev/null || true; "
            f"{_is_macvlan(gw)} || ip link del {q(gw)} 2>/dev/null || true; fi")


def _gateway(bridge: str, vlan: int, gateway_ip: str, prefixlen: int, dhcp_ip: str, link: bool = True) -> list:
    """Shell: VLAN ``vlan``'s flows and its gateway (a macvlan of the trunk) with its fixed MAC, mark and
    address, no IPv6 (switched off before the device comes up, when it would get a link-local address).
    A link VLAN's gateway (``link``) is made in the gateways' namespace, the internet VLAN's in the node's."""
    make = _namespace_gateway if link else _root_gateway
    return [_legacy_ports_gone(bridge, vlan), _vlan_flows_up(vlan, gateway_ip, dhcp_ip),
            *make(vlan, gateway_ip, prefixlen)]


def _root_gateway(vlan: int, gateway_ip: str, prefixlen: int) -> list:
    gw = naming.gateway_port(vlan)
    mac = naming.port_mac(gateway_ip)
    return [
        f"{link_exists(gw)} || "
        + join(["ip", "link", "add", "link", TRUNK, "name", gw, "address", mac, "type", "macvlan", "mode", "private"]),
        join(["ip", "link", "set", gw, "address", mac, "alias", naming.device_alias(naming.vlan_mark(vlan))]),
        vm_firewall.gateway_ipv6_off(gw),
        join(["ip", "addr", "replace", f"{gateway_ip}/{prefixlen}", "dev", gw]),
        join(["ip", "link", "set", gw, "up"]),
    ]


def _namespace_gateway(vlan: int, gateway_ip: str, prefixlen: int) -> list:
    """Shell: a link gateway in ``ns-cr-gateways``; one of the layout before (in the node's own
    namespace) is removed first.  Its settings in one ``ip -batch``."""
    gw = naming.gateway_port(vlan)
    mac = naming.port_mac(gateway_ip)
    batch = [f"link set {gw} address {mac} alias {naming.device_alias(naming.vlan_mark(vlan))}",
             f"addr replace {gateway_ip}/{prefixlen} dev {gw}", f"link set {gw} up"]
    return [
        f"if {link_exists(gw)}; then ip link del {q(gw)}; fi",
        f"{IN_GWNS} ip link show dev {q(gw)} >/dev/null 2>&1 || "
        + join(["ip", "link", "add", "link", TRUNK, "name", gw, "netns", GWNS, "address", mac,
                "type", "macvlan", "mode", "private"]),
        f"{IN_GWNS} sh -c {q(vm_firewall.gateway_ipv6_off(gw))}",
        f"printf '%s\\n' {' '.join(q(x) for x in batch)} | {IN_GWNS} ip -batch -",
    ]


def _dhcp_namespace_down(vlan: int, keep_reservations: bool = False) -> list:
    """Shell: stop VLAN ``vlan``'s dnsmasq and remove its namespace (its macvlan first: the
    kernel removes a namespace's devices later, and a new macvlan with the same MAC on the
    trunk would be refused meanwhile)."""
    ns = naming.dhcp_namespace(vlan)
    path = naming.netns_path(ns)
    files = naming.dnsmasq_files(vlan)
    hostsdir = "" if keep_reservations else " " + q(files["hostsdir"])
    return [
        _stop_dnsmasq(vlan),
        f"if [ -e {q(path)} ]; then nsenter --net={q(path)} ip link del {q(naming.dhcp_macvlan(vlan))} "
        f"2>/dev/null || true; ip netns del {q(ns)} 2>/dev/null || true; fi",
        f"rm -rf {q(files['leases'])} {q(files['log'])}{hostsdir}",
    ]


# Every dnsmasq watches its hosts directory through an inotify instance of its own; the kernel's
# default of 128 instances per user stops a node at about 128 links ("failed to create inotify").  One per
# possible VLAN, twice over.
INOTIFY_INSTANCES = 2 * 4096


def inotify_room() -> str:
    """Shell: raise the node's inotify instances per user to ``INOTIFY_INSTANCES`` (never lower)."""
    sysctl = "/proc/sys/fs/inotify/max_user_instances"
    return (f"{{ n=0; {{ read -r n < {sysctl}; }} 2>/dev/null; [ \"${{n:-0}}\" -ge {INOTIFY_INSTANCES} ]; }} || "
            f"sysctl -q -w fs.inotify.max_user_instances={INOTIFY_INSTANCES} || true")


def _dhcp_namespace_up(vlan: int, server_ip: str, prefixlen: int, dnsmasq_range: str,
                       router: Optional[str]) -> list:
    """Shell: namespace, macvlan and dnsmasq of VLAN ``vlan``; ``router=None`` sends no router option.

    Inside the namespace everything runs under ``nsenter --net`` (the network
    namespace only): ``ip netns exec`` would also make a mount namespace per
    command, and a long-lived dnsmasq would keep one per VLAN, which every
    later ``ip netns add`` has to propagate its mount to.
    """
    ns = naming.dhcp_namespace(vlan)
    inside = naming.dhcp_macvlan(vlan)
    files = naming.dnsmasq_files(vlan)
    enter = ["nsenter", f"--net={naming.netns_path(ns)}"]
    dnsmasq = enter + [
        "dnsmasq", "--conf-file=/dev/null", "--port=0", "--no-resolv", "--no-hosts", "--no-ping",
        f"--interface={inside}", "--bind-interfaces", "--except-interface=lo",
        f"--dhcp-range={dnsmasq_range}",
        f"--dhcp-option=option:router,{router}" if router else "--dhcp-option=option:router",
        "--dhcp-authoritative", f"--dhcp-hostsdir={files['hostsdir']}",
        f"--dhcp-leasefile={files['leases']}", f"--pid-file={files['pid']}",
        f"--log-facility={files['log']}", "--log-dhcp"]
    batch = ["link set lo up", f"addr add {server_ip}/{prefixlen} dev {inside}", f"link set {inside} up"]
    return [
        f"mkdir -p {q(files['hostsdir'])}",
        join(["ip", "netns", "add", ns]),
        join(["ip", "link", "add", "link", TRUNK, "name", inside, "netns", ns,
              "address", naming.port_mac(server_ip), "type", "macvlan", "mode", "private"]),
        f"printf '%s\\n' {' '.join(q(x) for x in batch)} | {join(enter + ['ip', '-batch', '-'])}",
        inotify_room(),
        join(dnsmasq),
        _dnsmasq_running(vlan) + " || { echo 'dnsmasq did not start' >&2; exit 4; }",
    ]


def _locked(lock: str, lines: list) -> str:
    """Shell: run ``lines`` in a subshell holding ``flock`` on a lock file of this system.

    Serialises scripts that share state on the node (iptables chains, the internet VLAN).
    """
    return "\n".join(["(", "flock 9", *lines, f") 9>{q(naming.lock_file(lock))}"])


def _locked_once(lock: str, lines: list, always: tuple = ()) -> str:
    """Shell: like ``_locked``, but ``lines`` (an idempotent check-and-make of shared node state)
    are skipped when another script made the same check under ``lock`` while this one waited for it.

    When a class deploys at once, dozens of set-ups queue for the node's locks, and each one
    would check again what the one before it has just checked (the isolation chains: four
    ``-save``s).  The record ``naming.ensured_file(lock)`` holds ``<generation> <verified
    generation> <digest of lines>``: a script reads the generation before it waits; once it
    holds the lock it skips ``lines`` only if a check of the same lines ended after that read
    and nothing was removed since (every removal under the lock deletes the record,
    ``_ensured_forget``).  Without contention nothing is skipped.  ``always`` run first, every time.
    """
    rec = q(naming.ensured_file(lock))
    digest = hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]
    numeric = ('case "$cr_g0" in ""|*[!0-9]*) cr_g0=0;; esac; '
               'case "$cr_g" in ""|*[!0-9]*) cr_g=0; cr_ok=x;; esac')
    return "\n".join([
        "(",
        f"{{ read -r cr_g0 cr_ok cr_d < {rec}; }} 2>/dev/null || cr_g0=0",
        "flock 9",
        *always,
        f"{{ read -r cr_g cr_ok cr_d < {rec}; }} 2>/dev/null || {{ cr_g=0; cr_ok=x; cr_d=; }}",
        numeric,
        f'if [ "$cr_ok" = "$cr_g" ] && [ "$cr_g" -gt "$cr_g0" ] && [ "$cr_d" = {digest} ]; then :; else',
        *lines,
        f'printf "%s %s %s\\n" $((cr_g + 1)) $((cr_g + 1)) {digest} > {rec}.tmp && mv {rec}.tmp {rec}',
        "fi",
        f") 9>{q(naming.lock_file(lock))}",
    ])


def _ensured_forget(lock: str) -> str:
    """Shell: the next script under ``lock`` checks again (run by removals of what it makes)."""
    return f"rm -f {q(naming.ensured_file(lock))}"


def _vlan_marker_up(vlan: int) -> str:
    return f"printf '%s\\n' {q(naming.MARK)} > {q(naming.vlan_marker_file(vlan))}"


def isolation_rules(internet_vlan: int, uplink: str, management=()) -> str:
    """Shell: the node's isolation (IPv4 and IPv6 chains ``CR-FORWARD``/``CR-INPUT``), loaded if not in place.

    Forwarding: only internet VLAN <-> uplink, never to ``management`` (the hosts' and the
    manager's addresses).  From any gateway port only ping to that port's own address and replies
    reach the node; over IPv6 nothing does.  See ``vm_firewall.node_policy``.
    """
    return _locked_once("iptables.lock", [vm_firewall.node_policy(internet_vlan, uplink, management),
                                     vm_firewall.gateway_namespace_policy(internet_vlan, uplink, management)])


def isolation_teardown_if_unused() -> str:
    """Shell: remove the isolation chains once no VLAN of this system is left on the node."""
    return _locked("iptables.lock", [
        f"if ! {any_vlan_marker()}; then",
        remove_isolation_rules(),
        "fi",
    ])


def remove_isolation_rules() -> str:
    """Shell: unhook and delete the isolation chains of both families (idempotent), in the node's
    namespace and in the gateways' (when it exists)."""
    lines = []
    for enter, sums_name in (("", ""), (IN_GWNS + " ", vm_firewall.GATEWAYS_POLICY)):
        guard = f"[ -e {q(GWNS_PATH)} ] && " if enter else ""
        for tool in ("iptables", "ip6tables"):
            run = enter + tool
            for chain, parent in ((naming.FORWARD_CHAIN, "FORWARD"), (naming.INPUT_CHAIN, "INPUT")):
                lines.append(f"{guard}{{ while {run} -w -D {parent} -j {chain} 2>/dev/null; do :; done; "
                             f"{run} -w -F {chain} 2>/dev/null; {run} -w -X {chain} 2>/dev/null; }}; true")
            lines.append(f"rm -f {q(naming.STATE_DIR + '/policy-' + sums_name + tool + '.sum')}")
    return "\n".join([*lines, _ensured_forget("iptables.lock")])


def nat_rule_args(internet: dict) -> list:
    return ["POSTROUTING", "-s", str(internet["cidr"]), "-o", str(internet["uplink"]),
            "-m", "comment", "--comment", naming.NAT_COMMENT, "-j", "MASQUERADE"]


def nat_rule_up(internet: dict) -> str:
    args = nat_rule_args(internet)
    return (f"{join(['iptables', '-w', '-t', 'nat', '-C', *args])} 2>/dev/null || "
            f"{join(['iptables', '-w', '-t', 'nat', '-A', *args])}")


def nat_rule_down(internet: dict) -> str:
    return f"while {join(['iptables', '-w', '-t', 'nat', '-D', *nat_rule_args(internet)])} 2>/dev/null; do :; done"


def vlan_up_lines(vlan: int, bridge: str, internet_vlan: int, uplink: str, management=()) -> list:
    """Shell lines (``set -e``) of ``vlan_up_command``, to concatenate with other VLANs' set-ups."""
    net = naming.link_network(vlan)
    dhcp_range = f"{net['dhcp_start']},{net['dhcp_end']},255.255.255.0,12h"
    return [_vlan_marker_up(vlan),
            trunk_up(bridge),
            isolation_rules(internet_vlan, uplink, management),
            *_gateway(bridge, vlan, net["gateway_ip"], net["prefixlen"], net["dhcp_server_ip"]),
            *_dhcp_namespace_down(vlan),
            *_dhcp_namespace_up(vlan, net["dhcp_server_ip"], net["prefixlen"], dhcp_range, None)]


def vlan_up_command(node: str, vlan: int, bridge: str, internet_vlan: int, uplink: str,
                    management=()) -> HostCommand:
    """Root script: gateway + fresh DHCP namespace for link VLAN ``vlan`` (idempotent).

    A link is an L2 segment: its DHCP sends no router option, so a VM's default
    route is the internet VLAN's (when it has one), never a link gateway that
    forwards nowhere.  The gateway ``.1`` still answers ping.  The marker is
    written first: the trunk and the isolation chains it needs stay while it exists.
    """
    script = "\n".join(["set -e", ovs_preflight(node), f"mkdir -p {q(naming.STATE_DIR)}",
                        *vlan_up_lines(vlan, bridge, internet_vlan, uplink, management)])
    return HostCommand(node, script, sudo=True, timeout=60, step=f"gateway and DHCP for VLAN {vlan}",
                       action="vlan_up", target=vlan)


def vlan_teardown(bridge: str, vlan: int) -> list:
    """Shell lines removing everything of one VLAN on the node (marker last; idempotent)."""
    return [*_dhcp_namespace_down(vlan),
            _legacy_ports_gone(bridge, vlan),
            _vlan_flows_down(vlan),
            f"ip link del {q(naming.gateway_port(vlan))} 2>/dev/null || true",
            f"[ ! -e {q(GWNS_PATH)} ] || {IN_GWNS} ip link del {q(naming.gateway_port(vlan))} 2>/dev/null || true",
            f"rm -f {q(naming.vlan_marker_file(vlan))}", _ensured_forget(f"vlan{vlan}.lock")]


def node_teardown_if_unused(bridge: str) -> list:
    """Shell lines: the isolation chains and the trunk go once no VLAN of this system is left."""
    return [isolation_teardown_if_unused(), trunk_teardown_if_unused(bridge)]


def vlan_down_command(node: str, vlan: int, bridge: str) -> HostCommand:
    """Root script: remove VLAN ``vlan``'s DHCP namespace, dnsmasq and gateway (idempotent)."""
    script = "\n".join([ovs_alive(), *vlan_teardown(bridge, vlan), *node_teardown_if_unused(bridge), "true"])
    return HostCommand(node, script, sudo=True, timeout=60, step=f"remove VLAN {vlan}",
                       action="vlan_down", target=vlan)


def _dhcp_alive(vlan: int) -> str:
    """Shell test: VLAN ``vlan``'s dnsmasq runs and its macvlan is in its namespace."""
    path = naming.netns_path(naming.dhcp_namespace(vlan))
    return (f"{{ {_dnsmasq_running(vlan)} && nsenter --net={q(path)} ip link show dev "
            f"{q(naming.dhcp_macvlan(vlan))} >/dev/null 2>&1; }}")


def internet_up_command(node: str, internet: dict, bridge: str, reservations: list,
                        management=()) -> HostCommand:
    """Root script: the shared internet VLAN (gateway, static-only DHCP, NAT), kept if running.

    ``reservations``: (vm_id, mac, ip) of the VMs of the slice being deployed, written every
    time; the rest (a check of the running set-up) is skipped when another deploy's made it while
    this one waited (``_locked_once``).  Runs under the node's ``vlan<V>.lock``, as does
    ``internet_release_command``.
    """
    vlan = int(internet["vlan"])
    net = ipaddress.IPv4Network(internet["cidr"])
    uplink = internet["uplink"]
    server_ip = str(net.broadcast_address - 1)
    dhcp_range = f"{net.network_address},static,{net.netmask},12h"
    setup = (_dhcp_namespace_down(vlan, keep_reservations=True)
             + _dhcp_namespace_up(vlan, server_ip, net.prefixlen, dhcp_range, internet["gateway"]))
    script = "\n".join([
        "set -e", ovs_preflight(node), f"mkdir -p {q(naming.STATE_DIR)}",
        _locked_once(f"vlan{vlan}.lock", [
            _vlan_marker_up(vlan),
            "sysctl -q -w net.ipv4.ip_forward=1",
            trunk_up(bridge),
            isolation_rules(vlan, uplink, management),
            nat_rule_up(internet),
            *_gateway(bridge, vlan, internet["gateway"], net.prefixlen, server_ip, link=False),
            f"if ! {_dhcp_alive(vlan)}; then",
            *setup,
            "else",
            vm_firewall.node_internet_macs(vm_firewall.internet_edge(internet)),
            "fi",
        ], always=tuple(reservation_lines(vlan, reservations))),
    ])
    return HostCommand(node, script, sudo=True, timeout=60, step=f"internet VLAN {vlan} (gateway, DHCP, NAT)",
                       action="internet_up", target=vlan)


def reservation_lines(vlan: int, reservations: list) -> list:
    """Shell: one dnsmasq hosts file per VM (read by dnsmasq through inotify)."""
    hostsdir = naming.dnsmasq_files(vlan)["hostsdir"]
    lines = [f"mkdir -p {q(hostsdir)}"]
    for vm_id, mac, ip in reservations:
        path = f"{hostsdir}/vm{int(vm_id)}"
        lines.append(f"printf '%s\\n' {q(f'{mac},{ip}')} > {q(path)}.tmp && mv {q(path)}.tmp {q(path)}")
    return lines


def internet_release_lines(internet: dict, bridge: str, vm_ids: list) -> list:
    """Shell lines (under the VLAN lock): release VMs' reservations; tear the VLAN down if none is left."""
    vlan = int(internet["vlan"])
    files = naming.dnsmasq_files(vlan)
    hostsdir = files["hostsdir"]
    path = naming.netns_path(naming.dhcp_namespace(vlan))
    inside = naming.dhcp_macvlan(vlan)
    lines = []
    for vm_id in vm_ids:
        f = q(f"{hostsdir}/vm{int(vm_id)}")
        lines.append(f"if [ -f {f} ]; then IFS=, read -r mac addr < {f} || true; "
                     f"nsenter --net={q(path)} dhcp_release {q(inside)} \"$addr\" \"$mac\" 2>/dev/null || true; "
                     f"rm -f {f}; fi")
    teardown = [*vlan_teardown(bridge, vlan), nat_rule_down(internet)]
    return [
        _locked(f"vlan{vlan}.lock", [
            *lines,
            f"if [ -z \"$(ls -A {q(hostsdir)} 2>/dev/null)\" ]; then",
            *teardown,
            "else",
            f"{_dnsmasq_running(vlan)} && kill -HUP \"$pid\" || true",
            "fi",
        ]),
        *node_teardown_if_unused(bridge),
    ]


def internet_release_command(node: str, internet: dict, bridge: str, vm_ids: list) -> HostCommand:
    """Root script: release VMs' reservations and leases; remove the internet VLAN once none is left.

    The node decides "last user" itself, under the same lock as ``internet_up_command``:
    a deploy that starts meanwhile either sees the VLAN torn down and makes it
    again, or has written its reservations first and keeps it.
    """
    vlan = int(internet["vlan"])
    script = "\n".join([ovs_alive(), f"mkdir -p {q(naming.STATE_DIR)}",
                        *internet_release_lines(internet, bridge, vm_ids), "true"])
    return HostCommand(node, script, sudo=True, timeout=60, step=f"release internet VLAN {vlan}",
                       action="internet_release", target=vlan)


# --- kinds -----------------------------------------------------------------------------------

class _VlanKind(Kind):
    """A per-VLAN object on the network node (link VLANs and the internet VLAN)."""

    role = "node"

    def owned(self, view):
        return (Key(self.name, view.config.network_node, vlan=v) for v in view.vlans(owned=True))

    def expected(self, view):
        return {Key(self.name, view.config.network_node, vlan=v): self.expected_detail(view, v)
                for v in view.vlans(owned=False)}

    def expected_detail(self, view, vlan: int) -> str:
        return ""

    def remove(self, ctx, host, keys):
        inet = ctx.config.internet
        out = []
        for k in keys:
            if k.vlan == int(inet["vlan"]):
                out += internet_release_lines(inet, ctx.config.bridge, [])
            else:
                out += [*vlan_teardown(ctx.config.bridge, k.vlan), *node_teardown_if_unused(ctx.config.bridge)]
        return out

    def parse(self, host, fields):
        vlan = int_or_none(fields[0]) if fields else None
        if vlan is None:
            return None
        return Found(Key(self.name, host, vlan=vlan), " ".join(fields[1:]))

    def describe(self, key):
        return f"{self.label} {key.vlan}"


@register
class VlanMarker(_VlanKind):
    name = "vlan"
    label = "VLAN"

    def scan(self, ctx, host):
        return (f"for f in {q(naming.STATE_DIR)}/vlan*.owner; do [ -f \"$f\" ] || continue; v=${{f##*/vlan}}; "
                "echo \"vlan ${v%.owner}\"; done")


_MACVLANS = ("ip -o -d link show type macvlan 2>/dev/null | awk '{n = $2; sub(/:$/, \"\", n); l = n; "
             "sub(/@.*/, \"\", n); sub(/^[^@]*@/, \"\", l); al = \"\"; "
             "for (i = 3; i < NF; i++) if ($i == \"alias\") al = $(i + 1); print \"L\", n, l, al}'; "
             "ip -o -4 addr show 2>/dev/null | awk '$2 ~ /^gw_vlan/ {n = $2; sub(/@.*/, \"\", n); "
             "print \"A\", n, $4}'")


def _gateway_scan(internet_vlan: int) -> str:
    """Shell: ``gateway V ADDR`` for each macvlan ``gw_vlanV`` of the trunk with this system's alias
    (ADDR its IPv4 address, ``-`` when it has none), in the gateways' namespace or the node's own.
    A link VLAN's gateway found only in the node's own namespace (the layout before) gets ``root``
    after its address, so that it is not what is expected and a repair moves it."""
    mark = f"$4 == \"{naming.MARK}=vlan\" substr($2, 8)"
    inside = f"{IN_GWNS} sh -c {q(_MACVLANS)} 2>/dev/null | sed 's/^/N/'"  # nothing when it does not exist
    return (f"{{ {_MACVLANS}; {inside}; }} "
            f"| awk '$1 == \"L\" && $2 ~ /^gw_vlan[0-9]+$/ && $3 == \"{TRUNK}\" && {mark} {{p[$2] = 1}} "
            f"$1 == \"NL\" && $2 ~ /^gw_vlan[0-9]+$/ && ($3 == \"{TRUNK}\" || $3 ~ /^if[0-9]+$/) && {mark} "
            "{np[$2] = 1} $1 == \"A\" {a[$2] = $3} $1 == \"NA\" {na[$2] = $3} "
            "END {for (n in np) print \"gateway\", substr(n, 8), (n in na ? na[n] : \"-\"); "
            "for (n in p) if (!(n in np)) print \"gateway\", substr(n, 8), (n in a ? a[n] : \"-\") "
            f"(substr(n, 8) == \"{int(internet_vlan)}\" ? \"\" : \" root\")}}'")


@register
class VlanFlows(_VlanKind):
    """A VLAN's flows on the node bridge (cookie ``0x4352_0002_<V>``); detail = how many there are."""

    name = "vlanflows"
    label = "node bridge flows of VLAN"

    def scan(self, ctx, host):
        mask = vm_firewall.COOKIE_PREFIX_MASK | vm_firewall.KIND_MASK
        cookie = vm_firewall.cookie_match(naming.node_vlan_flow_cookie(0), mask)
        return (f"{join([*vm_firewall.OFCTL, '--no-stats', 'dump-flows', NODE_BRIDGE, cookie])} 2>/dev/null "
                "| sed -n 's/.*cookie=0x4352[0]*2\\([0-9a-f]\\{8\\}\\)[,\\ ].*/\\1/p' "
                "| sort | uniq -c | while read -r n c; do echo \"vlanflows $((0x$c)) $n\"; done; true")

    def expected_detail(self, view, vlan):
        return str(len(node_vlan_flows(vlan, "10.0.0.1", "10.0.0.2")))

    def remove(self, ctx, host, keys):
        return [_vlan_flows_down(k.vlan) for k in keys]


@register
class Gateway(_VlanKind):
    """``gw_vlan{V}``: VLAN V of the node's trunk with this system's alias; detail = its IPv4 address."""

    name = "gateway"
    label = "gateway of VLAN"

    def scan(self, ctx, host):
        return _gateway_scan(int(ctx.config.internet["vlan"]))

    def expected_detail(self, view, vlan):
        inet = view.config.internet
        if vlan == int(inet["vlan"]):
            return f"{inet['gateway']}/{ipaddress.IPv4Network(inet['cidr']).prefixlen}"
        net = naming.link_network(vlan)
        return f"{net['gateway_ip']}/{net['prefixlen']}"


def marked_ports(bridge: str) -> str:
    """Shell: ``P <port> <mark>`` for each port of the bridge that carries this system's external id."""
    return (f"ovs-vsctl --timeout=5 --format=csv --data=bare --no-headings --columns=name,external_ids "
            f"find port external_ids:{naming.MARK}!=none 2>/dev/null | tr ',' ' ' "
            f"| sed -n 's/^\\([^ ]*\\) .*{naming.MARK}=\\([^ ]*\\).*/P \\1 \\2/p'")


@register
class NodeTrunk(Kind):
    """The node's trunk: ``cr-trunk`` with this system's alias; detail ``ok`` when its peer is on the
    node bridge and that bridge is patched to br-int, ``detached`` when not."""

    name = "trunk"
    label = "trunk of the network node"
    role = "node"

    def scan(self, ctx, host):
        alias = naming.device_alias(naming.TRUNK_MARK)
        attached = (f"[ \"$({join([*OVS, 'port-to-br', TRUNK_PORT])} 2>/dev/null)\" = {q(NODE_BRIDGE)} ] && "
                    f"[ \"$({join([*OVS, 'port-to-br', PATCH_INT])} 2>/dev/null)\" = {q(ctx.config.bridge)} ]")
        return (f"if ip -o link show dev {q(TRUNK)} 2>/dev/null | grep -qF -- {q('alias ' + alias)}; then "
                f"if {attached}; then echo {q(f'trunk {TRUNK} ok')}; else echo {q(f'trunk {TRUNK} detached')}; "
                "fi; fi")

    def parse(self, host, fields):
        return Found(Key(self.name, host, name=fields[0]), " ".join(fields[1:])) if fields else None

    def owned(self, view):
        if view.vlans(owned=True):
            yield Key(self.name, view.config.network_node, name=TRUNK)

    def expected(self, view):
        return {Key(self.name, view.config.network_node, name=TRUNK): "ok"} if view.vlans(owned=False) else {}

    def remove(self, ctx, host, keys):
        return [trunk_teardown_if_unused(ctx.config.bridge)]  # never under a VLAN set up meanwhile

    def describe(self, key):
        return "trunk of the network node (cr-trunk)"


@register
class LegacyVlanPort(Kind):
    """A VLAN's Open vSwitch port of the layout before issue 19 (``gw_vlanV``, ``dhcpV-o``, marked
    ``vlanV``).  Never expected: a VLAN's set-up replaces it; an orphan when its VLAN is no slice's."""

    name = "oldport"
    label = "old-layout port of VLAN"
    role = "node"

    def scan(self, ctx, host):
        return (f"{marked_ports(ctx.config.bridge)} | awk '$3 ~ /^vlan[0-9]+$/ "
                "{print \"oldport\", substr($3, 5), $2}' || true")

    def parse(self, host, fields):
        vlan = int_or_none(fields[0]) if len(fields) == 2 else None
        port = fields[1] if vlan is not None else ""
        if port not in (naming.gateway_port(vlan or 0), naming.legacy_dhcp_veth(vlan or 0)):
            return None
        return Found(Key(self.name, host, vlan=vlan, name=port))

    def owned(self, view):
        node = view.config.network_node
        for v in view.vlans(owned=True):
            yield from (Key(self.name, node, vlan=v, name=p) for p in (naming.gateway_port(v),
                                                                       naming.legacy_dhcp_veth(v)))

    def expected(self, view):
        return {}

    def remove(self, ctx, host, keys):
        return [_legacy_ports_gone(ctx.config.bridge, v) for v in sorted({k.vlan for k in keys})]

    def describe(self, key):
        return f"old-layout port {key.name} of VLAN {key.vlan}"


@register
class DhcpNamespace(_VlanKind):
    """``ns-dhcp-vlan{V}`` (only when the VLAN's marker exists)."""

    name = "namespace"
    label = "DHCP namespace of VLAN"

    def scan(self, ctx, host):
        return ("for n in $(ip netns list 2>/dev/null | awk '{print $1}'); do case \"$n\" in ns-dhcp-vlan*) "
                f"v=${{n#ns-dhcp-vlan}}; [ -f {q(naming.STATE_DIR)}/vlan\"$v\".owner ] && echo \"namespace $v\";; "
                "esac; done; true")


@register
class Dnsmasq(_VlanKind):
    """A VLAN's dnsmasq, by its pid file; detail ``alive`` or ``dead``."""

    name = "dnsmasq"
    label = "dnsmasq of VLAN"

    def scan(self, ctx, host):
        state = naming.STATE_DIR
        pattern = f"^dnsmasq .*--pid-file={state}/dnsmasq-vlan[0-9]+[.]pid"
        return ("{ "
                f"pgrep -a -f -- {q(pattern)} | sed -n 's|^\\([0-9]*\\) .*--pid-file={state}/dnsmasq-vlan"
                "\\([0-9]*\\)\\.pid.*|R \\2 \\1|p'; "
                f"for f in {q(state)}/dnsmasq-vlan*.pid; do [ -f \"$f\" ] || continue; v=${{f##*/dnsmasq-vlan}}; "
                "echo \"F ${v%.pid} $(cat \"$f\" 2>/dev/null)\"; done; } "
                "| awk '$1 == \"R\" {r[$2] = $3} $1 == \"F\" {f[$2] = $3} "
                "END {for (v in f) print \"dnsmasq\", v, ((v in r) && r[v] == f[v] ? \"alive\" : \"dead\")}'")

    def expected_detail(self, view, vlan):
        return "alive"


@register
class Reservation(Kind):
    """An internet VM's DHCP reservation file on the network node."""

    name = "reservation"
    label = "DHCP reservation of VM"
    role = "node"

    def scan(self, ctx, host):
        hostsdir = naming.dnsmasq_files(int(ctx.config.internet["vlan"]))["hostsdir"]
        return (f"for f in {q(hostsdir)}/vm*; do [ -f \"$f\" ] || continue; "
                "echo \"reservation ${f##*/vm}\"; done")

    def parse(self, host, fields):
        vm_id = int_or_none(fields[0]) if fields else None
        return Found(Key(self.name, host, vm_id=vm_id)) if vm_id is not None else None

    def owned(self, view):
        node = view.config.network_node
        return (Key(self.name, node, vm_id=vm_id) for vm_id, _mac, _ip in view.reservations(owned=True))

    def expected(self, view):
        node = view.config.network_node
        return {Key(self.name, node, vm_id=vm_id): "" for vm_id, _mac, _ip in view.reservations(owned=False)}

    def remove(self, ctx, host, keys):
        return internet_release_lines(ctx.config.internet, ctx.config.bridge, [k.vm_id for k in keys])

    def describe(self, key):
        return f"DHCP reservation of VM {key.vm_id}"


_NAT_SOURCE = re.compile(r"-s (\S+)")


@register
class NatRule(Kind):
    """The MASQUERADE rule of the internet VLAN (marked with a comment)."""

    name = "nat"
    label = "NAT rule"
    role = "node"

    def scan(self, ctx, host):
        return (f"iptables -w -t nat -S POSTROUTING 2>/dev/null | grep -F -- {q('--comment ' + naming.NAT_COMMENT)} "
                "| sed 's/^/nat /' || true")

    def parse(self, host, fields):
        m = _NAT_SOURCE.search(" ".join(fields))
        return Found(Key(self.name, host, name=m.group(1))) if m else None

    def owned(self, view):
        if view.internet(owned=True):
            yield Key(self.name, view.config.network_node, name=str(view.config.internet["cidr"]))

    def expected(self, view):
        if view.internet(owned=False):
            return {Key(self.name, view.config.network_node, name=str(view.config.internet["cidr"])): ""}
        return {}

    def remove(self, ctx, host, keys):
        return [nat_rule_down(dict(ctx.config.internet, cidr=k.name)) for k in keys]

    def describe(self, key):
        return f"NAT rule for {key.name}"


@register
class IsolationRules(Kind):
    """The chains ``CR-FORWARD`` and ``CR-INPUT``, in the node's namespace (``ipv4``, ``ipv6``) and in
    the gateways' (``gateways-ipv4``, ``gateways-ipv6``)."""

    name = "isolation"
    label = "isolation rules"
    role = "node"
    FAMILIES = ("ipv4", "ipv6", "gateways-ipv4", "gateways-ipv6")

    def scan(self, ctx, host):
        chain = naming.FORWARD_CHAIN
        lines = []
        for enter, prefix in (("", ""), (IN_GWNS + " ", "gateways-")):
            guard = f"[ -e {q(GWNS_PATH)} ] && " if enter else ""
            lines += [  # a node without IPv6 has nothing to protect over IPv6
                f"{guard}{enter}iptables -w -S {chain} >/dev/null 2>&1 && echo 'isolation {prefix}ipv4' || true",
                f"{guard}if [ -e /proc/net/if_inet6 ]; then {enter}ip6tables -w -S {chain} >/dev/null 2>&1; "
                f"else {enter}iptables -w -S {chain} >/dev/null 2>&1; fi && echo 'isolation {prefix}ipv6' || true"]
        return "\n".join(lines)

    def parse(self, host, fields):
        return Found(Key(self.name, host, name=fields[0])) if fields else None

    def owned(self, view):
        if view.vlans(owned=True):
            yield from (Key(self.name, view.config.network_node, name=f) for f in self.FAMILIES)

    def expected(self, view):
        node = view.config.network_node
        return {Key(self.name, node, name=f): "" for f in self.FAMILIES} if view.vlans(owned=False) else {}

    def remove(self, ctx, host, keys):
        return [_locked("iptables.lock", [remove_isolation_rules()])]

    def describe(self, key):
        return f"isolation chains ({key.name})"


__all__ = ["OVS_DOWN_EXIT", "HostContext", "internet_release_command", "internet_up_command",
           "isolation_rules", "vlan_down_command", "vlan_up_command"]
