"""What runs on the network node: per-VLAN gateways and DHCP, internet NAT, isolation.

Per link VLAN V (names in ``naming``): the OVS internal port ``gw_vlan{V}``
(tag V) holds the gateway ``.1``; namespace ``ns-dhcp-vlan{V}`` holds one end
of the veth ``dhcp{V}-o``/``dhcp{V}-i`` and its own dnsmasq, with its own
pid, lease and log files, stopped by that pid (after checking the pid is
that VLAN's dnsmasq).  Nothing here ever touches another VLAN.

The internet VLAN (400) is shared: ``gw_vlan400`` with 10.60.7.1, a dnsmasq
that answers only reserved MACs (one file per VM in its hosts directory, so
each VM gets exactly the ``ip_config`` address the database shows), and
MASQUERADE out of the uplink.  ``internet_up`` keeps a running setup as it
is, so deploying a slice never disturbs another slice's internet VMs.

L3 isolation: the network node forwards only between the internet VLAN and
the uplink.  The chain ``CR-FORWARD`` (jumped to first from FORWARD, replaced
atomically with ``iptables-restore --noflush``) accepts VLAN 400 -> uplink
and the replies, and drops everything else that enters or leaves a
``gw_vlan*`` port, so no VM reaches another slice's subnets through the
gateways.
"""
from __future__ import annotations

import ipaddress
from typing import Optional

import naming
from hostcmd import HostCommand, join, q
from remote_executor import RemoteExecutor


def _stop_dnsmasq(vlan: int) -> str:
    """Shell: stop VLAN ``vlan``'s dnsmasq by its pid file, only if it is that dnsmasq."""
    files = naming.dnsmasq_files(vlan)
    pidfile = q(files["pid"])
    marker = q(f"--pid-file={files['pid']}")
    return (f"if [ -f {pidfile} ]; then pid=$(cat {pidfile}); "
            f"if [ -n \"$pid\" ] && tr '\\0' ' ' 2>/dev/null < /proc/$pid/cmdline | grep -q -- {marker}; then "
            "kill \"$pid\" 2>/dev/null || true; "
            "n=0; while [ -d /proc/$pid ] && [ $n -lt 100 ]; do sleep 0.05; n=$((n+1)); done; "
            "kill -9 \"$pid\" 2>/dev/null || true; fi; rm -f " + pidfile + "; fi")


def _dnsmasq_running(vlan: int) -> str:
    """Shell test: VLAN ``vlan``'s dnsmasq is alive."""
    files = naming.dnsmasq_files(vlan)
    pidfile = q(files["pid"])
    marker = q(f"--pid-file={files['pid']}")
    return (f"{{ [ -f {pidfile} ] && pid=$(cat {pidfile}) && [ -n \"$pid\" ] && "
            f"tr '\\0' ' ' 2>/dev/null < /proc/$pid/cmdline | grep -q -- {marker}; }}")


def _gateway(bridge: str, vlan: int, gateway_ip: str, prefixlen: int) -> list:
    gw = naming.gateway_port(vlan)
    return [
        join(["ovs-vsctl", "--may-exist", "add-port", bridge, gw, "--", "set", "interface", gw,
              "type=internal", "--", "set", "port", gw, f"tag={vlan}"]),
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
        join(["ovs-vsctl", "--if-exists", "del-port", bridge, outside]),
        f"ip link del {q(outside)} 2>/dev/null || true",
        f"rm -rf {q(files['leases'])} {q(files['log'])}{hostsdir}",
    ]


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
        join(["ip", "link", "add", outside, "type", "veth", "peer", "name", inside]),
        join(["ip", "link", "set", inside, "netns", ns]),
        join(["ovs-vsctl", "--", "--if-exists", "del-port", bridge, outside,
              "--", "add-port", bridge, outside, f"tag={vlan}"]),
        join(["ip", "link", "set", outside, "up"]),
        join(nsexec + ["ip", "link", "set", "lo", "up"]),
        join(nsexec + ["ip", "addr", "add", f"{server_ip}/{prefixlen}", "dev", inside]),
        join(nsexec + ["ip", "link", "set", inside, "up"]),
        join(dnsmasq),
        _dnsmasq_running(vlan) + " || { echo 'dnsmasq did not start' >&2; exit 4; }",
    ]


def _locked(lock: str, lines: list) -> str:
    """Shell: run ``lines`` in a subshell holding ``flock`` on a lock file of this system.

    Serialises scripts that share state on the node (iptables chains, the internet VLAN).
    """
    return "\n".join(["(", "flock 9", *lines, f") 9>{q(naming.STATE_DIR + '/' + lock)}"])


def isolation_rules(internet_vlan: int, uplink: str) -> str:
    """Shell: (re)load ``CR-FORWARD`` and ``CR-INPUT`` atomically and jump to them.

    Forwarding: only internet VLAN <-> uplink.  Input from any gateway port:
    only ICMP (VMs may ping their gateway) and replies, so VMs never reach the
    network node's own services.
    """
    gw400 = naming.gateway_port(internet_vlan)
    fwd, inp = naming.FORWARD_CHAIN, naming.INPUT_CHAIN
    rules = "\n".join([
        "*filter",
        f":{fwd} - [0:0]",
        f":{inp} - [0:0]",
        f"-A {fwd} -i {gw400} -o {uplink} -j ACCEPT",
        f"-A {fwd} -i {uplink} -o {gw400} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
        f"-A {fwd} -i gw_vlan+ -j DROP",
        f"-A {fwd} -o gw_vlan+ -j DROP",
        f"-A {inp} -i gw_vlan+ -p icmp -j ACCEPT",
        f"-A {inp} -i gw_vlan+ -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
        f"-A {inp} -i gw_vlan+ -j REJECT",
        "COMMIT",
        "",
    ])
    return _locked("iptables.lock", [
        f"printf '%s' {q(rules)} | iptables-restore -w --noflush",
        f"iptables -w -C FORWARD -j {fwd} 2>/dev/null || iptables -w -I FORWARD 1 -j {fwd}",
        f"iptables -w -C INPUT -j {inp} 2>/dev/null || iptables -w -I INPUT 1 -j {inp}",
    ])


def vlan_up_command(node: str, vlan: int, bridge: str, internet_vlan: int, uplink: str) -> HostCommand:
    """Root script: gateway + fresh DHCP namespace for link VLAN ``vlan`` (idempotent).

    A link is an L2 segment: its DHCP sends no router option, so a VM's default
    route is the internet VLAN's (when it has one), never a link gateway that
    forwards nowhere.  The gateway ``.1`` still answers ping.
    """
    net = naming.link_network(vlan)
    dhcp_range = f"{net['dhcp_start']},{net['dhcp_end']},255.255.255.0,12h"
    script = "\n".join(["set -e", f"mkdir -p {q(naming.STATE_DIR)}",
                        isolation_rules(internet_vlan, uplink),
                        *_gateway(bridge, vlan, net["gateway_ip"], net["prefixlen"]),
                        *_dhcp_namespace_down(bridge, vlan),
                        *_dhcp_namespace_up(bridge, vlan, net["dhcp_server_ip"], net["prefixlen"],
                                            dhcp_range, None)])
    return HostCommand(node, script, sudo=True, timeout=60, step=f"gateway and DHCP for VLAN {vlan}")


def vlan_down_command(node: str, vlan: int, bridge: str) -> HostCommand:
    """Root script: remove VLAN ``vlan``'s DHCP namespace, dnsmasq and gateway (idempotent)."""
    script = "\n".join([*_dhcp_namespace_down(bridge, vlan),
                        join(["ovs-vsctl", "--if-exists", "del-port", bridge, naming.gateway_port(vlan)]),
                        "true"])
    return HostCommand(node, script, sudo=True, timeout=60, step=f"remove VLAN {vlan}")


def internet_up_command(node: str, internet: dict, bridge: str, reservations: list) -> HostCommand:
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
        "set -e", f"mkdir -p {q(naming.STATE_DIR)}",
        _locked(f"vlan{vlan}.lock", [
            "sysctl -q -w net.ipv4.ip_forward=1",
            isolation_rules(vlan, uplink),
            f"iptables -w -t nat -C POSTROUTING -s {q(str(net))} -o {q(uplink)} -j MASQUERADE 2>/dev/null || "
            f"iptables -w -t nat -A POSTROUTING -s {q(str(net))} -o {q(uplink)} -j MASQUERADE",
            *_gateway(bridge, vlan, internet["gateway"], net.prefixlen),
            *reservation_lines(vlan, reservations),
            f"if ! {_dnsmasq_running(vlan)} || ! ip netns exec {q(naming.dhcp_namespace(vlan))} true 2>/dev/null; then",
            *setup,
            "fi",
        ]),
    ])
    return HostCommand(node, script, sudo=True, timeout=60, step=f"internet VLAN {vlan} (gateway, DHCP, NAT)")


def reservation_lines(vlan: int, reservations: list) -> list:
    """Shell: one dnsmasq hosts file per VM (read by dnsmasq through inotify)."""
    hostsdir = naming.dnsmasq_files(vlan)["hostsdir"]
    lines = [f"mkdir -p {q(hostsdir)}"]
    for vm_id, mac, ip in reservations:
        path = f"{hostsdir}/vm{int(vm_id)}"
        lines.append(f"printf '%s\\n' {q(f'{mac},{ip}')} > {q(path)}.tmp && mv {q(path)}.tmp {q(path)}")
    return lines


def internet_release_command(node: str, internet: dict, bridge: str, vm_ids: list) -> HostCommand:
    """Root script: release VMs' reservations and leases; remove the internet VLAN once none is left.

    The node decides "last user" itself, under the same lock as ``internet_up_command``:
    a deploy that starts meanwhile either sees the VLAN torn down and makes it
    again, or has written its reservations first and keeps it.
    """
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
    teardown = _dhcp_namespace_down(bridge, vlan) + [
        join(["ovs-vsctl", "--if-exists", "del-port", bridge, naming.gateway_port(vlan)]),
        f"iptables -w -t nat -D POSTROUTING -s {q(str(internet['cidr']))} -o {q(internet['uplink'])} "
        "-j MASQUERADE 2>/dev/null || true"]
    script = "\n".join([
        f"mkdir -p {q(naming.STATE_DIR)}",
        _locked(f"vlan{vlan}.lock", [
            *lines,
            f"if [ -z \"$(ls -A {q(hostsdir)} 2>/dev/null)\" ]; then",
            *teardown,
            "else",
            f"{_dnsmasq_running(vlan)} && kill -HUP \"$pid\" || true",
            "fi",
        ]),
        "true",
    ])
    return HostCommand(node, script, sudo=True, timeout=60, step=f"release internet VLAN {vlan}")


def scan_network_node_command(node: str, bridge: str) -> HostCommand:
    """Root script listing gateways, DHCP namespaces, veths and dnsmasq pid files.

    Output lines: ``gw <vlan>``, ``ns <vlan>``, ``veth <vlan>``, ``dnsmasq <vlan> <pid|->``,
    ``reservation <vlan> <vm_id>``.
    """
    state = q(naming.STATE_DIR)
    script = "\n".join([
        f"ovs-vsctl list-ports {q(bridge)} 2>/dev/null | sed -n 's/^gw_vlan\\([0-9]*\\)$/gw \\1/p'",
        f"ovs-vsctl list-ports {q(bridge)} 2>/dev/null | sed -n 's/^dhcp\\([0-9]*\\)-o$/veth \\1/p'",
        "ip netns list 2>/dev/null | awk '{print $1}' | sed -n 's/^ns-dhcp-vlan\\([0-9]*\\)$/ns \\1/p'",
        f"for f in {state}/dnsmasq-vlan*.pid; do [ -f \"$f\" ] || continue; b=${{f##*/}}; v=${{b#dnsmasq-vlan}}; "
        "v=${v%.pid}; p=$(cat \"$f\" 2>/dev/null); [ -d /proc/\"$p\" ] || p=-; echo \"dnsmasq $v $p\"; done",
        f"for f in {state}/dnsmasq-vlan*.hosts.d/vm*; do [ -f \"$f\" ] || continue; d=${{f%/*}}; d=${{d##*/}}; "
        "v=${d#dnsmasq-vlan}; v=${v%.hosts.d}; echo \"reservation $v ${f##*/vm}\"; done",
        "true",
    ])
    return HostCommand(node, script, sudo=True, timeout=30, step="scan network node")


class VLANManager:
    """Builds and runs the network node's commands for a cluster config."""

    def __init__(self, remote_executor: RemoteExecutor, network_node_ip: Optional[str] = None):
        self.executor = remote_executor
        config = remote_executor.config
        self.node = network_node_ip or config.network_node
        self.bridge = config.bridge
        self.internet = dict(config.internet)

    def up_command(self, vlan: int) -> HostCommand:
        return vlan_up_command(self.node, vlan, self.bridge, int(self.internet["vlan"]),
                               self.internet["uplink"])

    def down_command(self, vlan: int) -> HostCommand:
        return vlan_down_command(self.node, vlan, self.bridge)

    def internet_up(self, reservations: list) -> HostCommand:
        return internet_up_command(self.node, self.internet, self.bridge, reservations)

    def internet_release(self, vm_ids: list) -> HostCommand:
        return internet_release_command(self.node, self.internet, self.bridge, vm_ids)

    def scan_command(self) -> HostCommand:
        return scan_network_node_command(self.node, self.bridge)
