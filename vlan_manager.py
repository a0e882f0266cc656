"""What runs on the network node: per-VLAN gateways and DHCP, internet NAT, isolation.

Per link VLAN V (names in ``naming``): the marker ``vlan{V}.owner``, the OVS
internal port ``gw_vlan{V}`` (tag V) holding the gateway ``.1``, and the
namespace ``ns-dhcp-vlan{V}`` holding one end of the veth
``dhcp{V}-o``/``dhcp{V}-i`` and its own dnsmasq, with its own pid, lease and
log files, stopped by that pid (after checking the pid is that VLAN's
dnsmasq).  Nothing here ever touches another VLAN.

The internet VLAN (400) is shared: ``gw_vlan400`` with 10.60.7.1, a dnsmasq
that answers only reserved MACs (one file per VM in its hosts directory, so
each VM gets exactly the ``ip_config`` address the database shows), and
MASQUERADE out of the uplink.  ``internet_up`` keeps a running setup as it
is, so deploying a slice never disturbs another slice's internet VMs; the
node itself decides, under a lock, when the last reservation is gone.

L3 isolation: the network node forwards only between the internet VLAN and
the uplink.  The chain ``CR-FORWARD`` (jumped to first from FORWARD, replaced
atomically with ``iptables-restore --noflush``) accepts VLAN 400 -> uplink
and the replies, and drops everything else that enters or leaves a
``gw_vlan*`` port, so no VM reaches another slice's subnets through the
gateways.  ``CR-INPUT`` lets a VM ping only its own gateway.  Both chains go
when the last VLAN of this system leaves the node.

The kinds of node objects (VLAN marker, gateway, DHCP namespace, dnsmasq,
internet reservation, NAT rule, isolation rules) are described below, each
with its scan, parser and removal.
"""
from __future__ import annotations

import ipaddress
import re
from typing import Optional

import naming
from hosts import vm_firewall
from hosts.hostcmd import HostCommand, join, q, stop_by_pidfile
from hosts.resources import Found, HostContext, Key, Kind, int_or_none, register
from vm_launcher import OVS_DOWN_EXIT, del_ports, ovs_alive, ovs_preflight

OVS = ["ovs-vsctl", "--timeout=10"]


def _stop_dnsmasq(vlan: int) -> str:
    """Shell: stop VLAN ``vlan``'s dnsmasq by its pid file, only if it is that dnsmasq."""
    pidfile = naming.dnsmasq_files(vlan)["pid"]
    return stop_by_pidfile(pidfile, f"--pid-file={pidfile}", signal="TERM", wait_s=5)


def _dnsmasq_running(vlan: int) -> str:
    """Shell test: VLAN ``vlan``'s dnsmasq is alive (sets ``$pid``)."""
    pidfile = naming.dnsmasq_files(vlan)["pid"]
    return (f"{{ pid=$(cat {q(pidfile)} 2>/dev/null) && [ -n \"$pid\" ] && "
            f"tr '\\0' ' ' 2>/dev/null < /proc/$pid/cmdline | grep -q -- {q('--pid-file=' + pidfile)}; }}")


PORT_WAIT_S = 30


def _wait_for_device(dev: str) -> str:
    """Shell: wait until Open vSwitch has made the internal port ``dev`` (exit 70 after ``PORT_WAIT_S``).

    The gateway's port add uses ``--no-wait``: the client does not wait for vswitchd's whole
    reconfiguration, whose cost grows with every port on the bridge.  Only the device itself is
    needed here.  (The DHCP veth's add still waits: the VLAN's leases depend on vswitchd having
    attached it, and nothing in the script would notice if it had not.)
    """
    tries = PORT_WAIT_S * 20
    return (f"n=0; until ip link show dev {q(dev)} >/dev/null 2>&1; do [ $n -lt {tries} ] || "
            f"{{ echo {q(f'Open vSwitch did not create {dev} within {PORT_WAIT_S} s')} >&2; exit 70; }}; "
            f"sleep 0.05; n=$((n+1)); done")


def _gateway(bridge: str, vlan: int, gateway_ip: str, prefixlen: int) -> list:
    """Shell: the gateway port with its fixed MAC and address, and no IPv6 (set before it comes up)."""
    gw = naming.gateway_port(vlan)
    return [
        join([*OVS, "--no-wait", "--may-exist", "add-port", bridge, gw, "--", "set", "interface", gw,
              "type=internal", f"mac=\"{naming.port_mac(gateway_ip)}\"", "--", "set", "port", gw, f"tag={vlan}",
              f"external_ids:{naming.MARK}={naming.vlan_mark(vlan)}"]),
        _wait_for_device(gw),
        vm_firewall.gateway_ipv6_off(gw),
        join(["ip", "addr", "replace", f"{gateway_ip}/{prefixlen}", "dev", gw]),
        join(["ip", "link", "set", gw, "up"]),
    ]


def _dhcp_namespace_down(bridge: str, vlan: int, keep_reservations: bool = False) -> list:
    ns = naming.dhcp_namespace(vlan)
    outside, _inside = naming.dhcp_veth(vlan)
    files = naming.dnsmasq_files(vlan)
    hostsdir = "" if keep_reservations else " " + q(files["hostsdir"])
    return [
        _stop_dnsmasq(vlan),
        f"ip netns del {q(ns)} 2>/dev/null || true",
        del_ports(bridge, [outside]),
        f"ip link del {q(outside)} 2>/dev/null || true",
        f"rm -rf {q(files['leases'])} {q(files['log'])}{hostsdir}",
    ]


# Every dnsmasq watches its hosts directory through an inotify instance of its own; the kernel's
# default of 128 instances per user stops a node at about 128 links ("failed to create inotify").  One per
# possible VLAN, twice over.
INOTIFY_INSTANCES = 2 * 4096


def inotify_room() -> str:
    """Shell: raise the node's inotify instances per user to ``INOTIFY_INSTANCES`` (never lower)."""
    sysctl = "/proc/sys/fs/inotify/max_user_instances"
    return (f"[ \"$(cat {sysctl} 2>/dev/null || echo 0)\" -ge {INOTIFY_INSTANCES} ] || "
            f"sysctl -q -w fs.inotify.max_user_instances={INOTIFY_INSTANCES} || true")


def _dhcp_namespace_up(bridge: str, vlan: int, server_ip: str, prefixlen: int,
                       dnsmasq_range: str, router: Optional[str]) -> list:
    """Shell: namespace, veth and dnsmasq of VLAN ``vlan``; ``router=None`` sends no router option."""
    ns = naming.dhcp_namespace(vlan)
    outside, inside = naming.dhcp_veth(vlan)
    files = naming.dnsmasq_files(vlan)
    nsexec = ["ip", "netns", "exec", ns]
    dnsmasq = nsexec + [
        "dnsmasq", "--conf-file=/dev/null", "--port=0", "--no-resolv", "--no-hosts", "--no-ping",
        f"--interface={inside}", "--bind-interfaces", "--except-interface=lo",
        f"--dhcp-range={dnsmasq_range}",
        f"--dhcp-option=option:router,{router}" if router else "--dhcp-option=option:router",
        "--dhcp-authoritative", f"--dhcp-hostsdir={files['hostsdir']}",
        f"--dhcp-leasefile={files['leases']}", f"--pid-file={files['pid']}",
        f"--log-facility={files['log']}", "--log-dhcp"]
    return [
        f"mkdir -p {q(files['hostsdir'])}",
        join(["ip", "netns", "add", ns]),
        join(["ip", "link", "add", outside, "type", "veth", "peer", "name", inside,
              "address", naming.port_mac(server_ip)]),
        join(["ip", "link", "set", inside, "netns", ns]),
        join([*OVS, "--", "--if-exists", "del-port", bridge, outside,
              "--", "add-port", bridge, outside, f"tag={vlan}",
              "--", "set", "port", outside, f"external_ids:{naming.MARK}={naming.vlan_mark(vlan)}"]),
        join(["ip", "link", "set", outside, "up"]),
        join(nsexec + ["ip", "link", "set", "lo", "up"]),
        join(nsexec + ["ip", "addr", "add", f"{server_ip}/{prefixlen}", "dev", inside]),
        join(nsexec + ["ip", "link", "set", inside, "up"]),
        inotify_room(),
        join(dnsmasq),
        _dnsmasq_running(vlan) + " || { echo 'dnsmasq did not start' >&2; exit 4; }",
    ]


def _locked(lock: str, lines: list) -> str:
    """Shell: run ``lines`` in a subshell holding ``flock`` on a lock file of this system.

    Serialises scripts that share state on the node (iptables chains, the internet VLAN).
    """
    return "\n".join(["(", "flock 9", *lines, f") 9>{q(naming.STATE_DIR + '/' + lock)}"])


def _vlan_marker_up(vlan: int) -> str:
    return f"printf '%s\\n' {q(naming.MARK)} > {q(naming.vlan_marker_file(vlan))}"


def isolation_rules(internet_vlan: int, uplink: str, management=()) -> str:
    """Shell: the node's isolation (IPv4 and IPv6 chains ``CR-FORWARD``/``CR-INPUT``), loaded if not in place.

    Forwarding: only internet VLAN <-> uplink, never to ``management`` (the hosts' and the
    manager's addresses).  From any gateway port only ping to that port's own address and replies
    reach the node; over IPv6 nothing does.  See ``vm_firewall.node_policy``.
    """
    return _locked("iptables.lock", [vm_firewall.node_policy(internet_vlan, uplink, management)])


def isolation_teardown_if_unused() -> str:
    """Shell: remove the isolation chains once no VLAN of this system is left on the node."""
    state = q(naming.STATE_DIR)
    return _locked("iptables.lock", [
        f"if ! ls {state}/vlan*.owner >/dev/null 2>&1; then",
        remove_isolation_rules(),
        "fi",
    ])


def remove_isolation_rules() -> str:
    """Shell: unhook and delete the isolation chains of both families (idempotent)."""
    lines = []
    for tool in ("iptables", "ip6tables"):
        for chain, parent in ((naming.FORWARD_CHAIN, "FORWARD"), (naming.INPUT_CHAIN, "INPUT")):
            lines.append(f"while {tool} -w -D {parent} -j {chain} 2>/dev/null; do :; done; "
                         f"{tool} -w -F {chain} 2>/dev/null; {tool} -w -X {chain} 2>/dev/null; true")
        lines.append(f"rm -f {q(naming.STATE_DIR + '/policy-' + tool + '.sum')}")
    return "\n".join(lines)


def nat_rule_args(internet: dict) -> list:
    return ["POSTROUTING", "-s", str(internet["cidr"]), "-o", str(internet["uplink"]),
            "-m", "comment", "--comment", naming.NAT_COMMENT, "-j", "MASQUERADE"]


def nat_rule_up(internet: dict) -> str:
    args = nat_rule_args(internet)
    return (f"{join(['iptables', '-w', '-t', 'nat', '-C', *args])} 2>/dev/null || "
            f"{join(['iptables', '-w', '-t', 'nat', '-A', *args])}")


def nat_rule_down(internet: dict) -> str:
    return f"while {join(['iptables', '-w', '-t', 'nat', '-D', *nat_rule_args(internet)])} 2>/dev/null; do :; done"


def vlan_up_command(node: str, vlan: int, bridge: str, internet_vlan: int, uplink: str,
                    management=()) -> HostCommand:
    """Root script: gateway + fresh DHCP namespace for link VLAN ``vlan`` (idempotent).

    A link is an L2 segment: its DHCP sends no router option, so a VM's default
    route is the internet VLAN's (when it has one), never a link gateway that
    forwards nowhere.  The gateway ``.1`` still answers ping.
    """
    net = naming.link_network(vlan)
    dhcp_range = f"{net['dhcp_start']},{net['dhcp_end']},255.255.255.0,12h"
    script = "\n".join(["set -e", ovs_preflight(node), f"mkdir -p {q(naming.STATE_DIR)}",
                        _vlan_marker_up(vlan),
                        isolation_rules(internet_vlan, uplink, management),
                        *_gateway(bridge, vlan, net["gateway_ip"], net["prefixlen"]),
                        *_dhcp_namespace_down(bridge, vlan),
                        *_dhcp_namespace_up(bridge, vlan, net["dhcp_server_ip"], net["prefixlen"],
                                            dhcp_range, None)])
    return HostCommand(node, script, sudo=True, timeout=60, step=f"gateway and DHCP for VLAN {vlan}",
                       action="vlan_up", target=vlan)


def vlan_teardown(bridge: str, vlan: int) -> list:
    """Shell lines removing everything of one VLAN on the node (marker last; idempotent)."""
    return [*_dhcp_namespace_down(bridge, vlan),
            del_ports(bridge, [naming.gateway_port(vlan)]),
            f"rm -f {q(naming.vlan_marker_file(vlan))}"]


def vlan_down_command(node: str, vlan: int, bridge: str) -> HostCommand:
    """Root script: remove VLAN ``vlan``'s DHCP namespace, dnsmasq and gateway (idempotent)."""
    script = "\n".join([ovs_alive(), *vlan_teardown(bridge, vlan), isolation_teardown_if_unused(), "true"])
    return HostCommand(node, script, sudo=True, timeout=60, step=f"remove VLAN {vlan}",
                       action="vlan_down", target=vlan)


def internet_up_command(node: str, internet: dict, bridge: str, reservations: list,
                        management=()) -> HostCommand:
    """Root script: the shared internet VLAN (gateway, static-only DHCP, NAT), kept if running.

    ``reservations``: (vm_id, mac, ip) of the VMs of the slice being deployed.
    Runs under the node's ``vlan<V>.lock``, as does ``internet_release_command``.
    """
    vlan = int(internet["vlan"])
    net = ipaddress.IPv4Network(internet["cidr"])
    uplink = internet["uplink"]
    server_ip = str(net.broadcast_address - 1)
    dhcp_range = f"{net.network_address},static,{net.netmask},12h"
    setup = (_dhcp_namespace_down(bridge, vlan, keep_reservations=True)
             + _dhcp_namespace_up(bridge, vlan, server_ip, net.prefixlen, dhcp_range, internet["gateway"]))
    script = "\n".join([
        "set -e", ovs_preflight(node), f"mkdir -p {q(naming.STATE_DIR)}",
        _locked(f"vlan{vlan}.lock", [
            _vlan_marker_up(vlan),
            "sysctl -q -w net.ipv4.ip_forward=1",
            isolation_rules(vlan, uplink, management),
            nat_rule_up(internet),
            *_gateway(bridge, vlan, internet["gateway"], net.prefixlen),
            *reservation_lines(vlan, reservations),
            f"if ! {_dnsmasq_running(vlan)} || ! ip netns exec {q(naming.dhcp_namespace(vlan))} true 2>/dev/null; then",
            *setup,
            "else",
            vm_firewall.node_internet_macs(bridge, vm_firewall.internet_edge(internet)),
            "fi",
        ]),
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
    ns = naming.dhcp_namespace(vlan)
    _outside, inside = naming.dhcp_veth(vlan)
    lines = []
    for vm_id in vm_ids:
        f = q(f"{hostsdir}/vm{int(vm_id)}")
        lines.append(f"if [ -f {f} ]; then IFS=, read -r mac addr < {f} || true; "
                     f"ip netns exec {q(ns)} dhcp_release {q(inside)} \"$addr\" \"$mac\" 2>/dev/null || true; "
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
        isolation_teardown_if_unused(),
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
                out += [*vlan_teardown(ctx.config.bridge, k.vlan), isolation_teardown_if_unused()]
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


@register
class Gateway(_VlanKind):
    """``gw_vlan{V}``: an internal port of br-int with our external id; detail = its IPv4 address."""

    name = "gateway"
    label = "gateway port of VLAN"

    def scan(self, ctx, host):
        return ("{ " + marked_port_names(ctx.config.bridge) + "; "
                "ip -o -4 addr show 2>/dev/null | awk '$2 ~ /^gw_vlan/ {print \"A\", $2, $4}'; } "
                "| awk '$1 == \"P\" && $2 ~ /^gw_vlan[0-9]+$/ {p[$2] = 1} $1 == \"A\" {a[$2] = $3} "
                "END {for (n in p) print \"gateway\", substr(n, 8), (n in a ? a[n] : \"-\")}'")

    def expected_detail(self, view, vlan):
        inet = view.config.internet
        if vlan == int(inet["vlan"]):
            return f"{inet['gateway']}/{ipaddress.IPv4Network(inet['cidr']).prefixlen}"
        net = naming.link_network(vlan)
        return f"{net['gateway_ip']}/{net['prefixlen']}"


def marked_port_names(bridge: str) -> str:
    """Shell: ``P <port>`` for each port of the bridge that carries this system's external id."""
    return (f"ovs-vsctl --timeout=5 --format=csv --data=bare --no-headings --columns=name "
            f"find port external_ids:{naming.MARK}!=none 2>/dev/null | sed 's/^/P /'")


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
    """The chains ``CR-FORWARD`` and ``CR-INPUT``."""

    name = "isolation"
    label = "isolation rules"
    role = "node"

    def scan(self, ctx, host):
        chain = naming.FORWARD_CHAIN
        return "\n".join([  # a node without IPv6 has nothing to protect over IPv6
            f"iptables -w -S {chain} >/dev/null 2>&1 && echo 'isolation ipv4' || true",
            f"if [ -e /proc/net/if_inet6 ]; then ip6tables -w -S {chain} >/dev/null 2>&1; "
            f"else iptables -w -S {chain} >/dev/null 2>&1; fi && echo 'isolation ipv6' || true"])

    def parse(self, host, fields):
        return Found(Key(self.name, host, name=fields[0])) if fields else None

    def owned(self, view):
        if view.vlans(owned=True):
            yield from (Key(self.name, view.config.network_node, name=f) for f in ("ipv4", "ipv6"))

    def expected(self, view):
        node = view.config.network_node
        return {Key(self.name, node, name=f): "" for f in ("ipv4", "ipv6")} if view.vlans(owned=False) else {}

    def remove(self, ctx, host, keys):
        return [_locked("iptables.lock", [remove_isolation_rules()])]

    def describe(self, key):
        return f"isolation chains ({key.name})"


__all__ = ["OVS_DOWN_EXIT", "HostContext", "internet_release_command", "internet_up_command",
           "isolation_rules", "vlan_down_command", "vlan_up_command"]
