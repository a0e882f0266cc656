"""Privacy between tenants on the shared planes (SPEC §11): pure builders of the host-side rules.

Nothing here runs anything: every public function returns the exact POSIX ``sh`` script (or the
flow text) to run, every argument quoted with ``hostcmd.q``/``hostcmd.join``.

Workers' ``br-int`` (OpenFlow, next to the bridge's own ``priority=0 actions=NORMAL`` flow)
    Three layers keep the internet VLAN (400) from being a shared LAN:

    1. *At the source, per VM port* (``vm_rules``, cookie = the VM, see ``vm_cookie``):
       every VM port drops DHCP server replies (udp 67 -> 68) sent by the VM.  An internet-VLAN port
       also passes only frames with the VM's own MAC; ARP only with its own MAC and address and only
       about the gateway or the DHCP server; IPv4 only from its own address, unicast to the
       gateway's or the DHCP server's MAC, or a DHCP client broadcast (from 0.0.0.0 or its own
       address).  Everything else from that port (IPv6, other ethertypes, tagged frames) is dropped.
       So a VM cannot send another VM a single unicast frame, whatever the topology.
    2. *On one worker*: internet-VLAN TAPs are OVS ``protected`` ports (``port_columns``): nothing
       passes between two protected ports, broadcasts and floods included.
    3. *Across the trunk* (``worker_trunk_rules``, on every worker that does not hold the gateway):
       internet-VLAN frames that arrive tagged (only the trunk delivers tagged frames: an access
       port drops them) pass only from the gateway's or the DHCP server's MAC, so other workers'
       VMs' broadcasts (ARP, DHCP requests carrying host names) never reach a local VM.

    Layers 1-3 need the gateway's and the DHCP server's MACs on every worker: the network node
    gives them fixed, locally administered MACs derived from their addresses (``fixed_mac``),
    ``02:00:`` + the four IPv4 bytes, e.g. ``02:00:0a:3c:07:01`` for 10.60.7.1.  They can never
    equal a VM MAC (``52:54:00:...``).

    Link VLANs stay plain L2 (students set their own addresses, run routers, use IPv6): their
    ports only get the DHCP-server drop.  802.1Q frames sent by a VM never reach another VLAN:
    OVS's NORMAL action drops tagged frames received on an access port.

Network node (iptables and ip6tables)
    ``node_policy`` is the IPv4 policy of ``vlan_manager.isolation_rules`` tightened (ICMP only to
    the address of the gateway port it came in on; no forwarding to management networks) plus
    the same policy for IPv6 (nothing from a ``gw_vlan*`` port reaches the node or is forwarded).
    ``gateway_ipv6_off`` keeps the gateway ports from ever holding an IPv6 (link-local) address.

Rules live in ovs-vswitchd's memory: they are lost when it restarts, like any OpenFlow rule, and
disappear from a port when the port is deleted and re-added (a re-added TAP gets a new OpenFlow port
number; the old rules then match nothing).  The deploy step that (re)adds a TAP must therefore
(re)install its VM's rules, which ``vm_rules`` does idempotently; ``scan_rules`` +
``parse_rule_scan``/``stale_rule_vms`` let a status or repair pass find VMs whose rules are missing.

Where each builder is called (``edge = internet_edge(config.internet)``)
    worker, launching a VM: make the TAPs of connected NICs before QEMU (``ip tuntap add dev TAP
    mode tap vnet_hdr``), add them with ``tag=V`` + ``port_columns`` in one ``ovs-vsctl``, then run
    ``vm_rules(bridge, vm, edge, trunk_filter=worker != network node)`` (it may run in the
    background while QEMU starts), and set the TAPs up only after it succeeded: a TAP that is down
    passes no frame, so no frame leaves a VM before its rules exist;
    worker, stopping a VM: ``remove_vm_rules``; orphan scan: ``scan_rules`` -> ``parse_rule_scan``;
    network node: every gateway and DHCP server made with its ``fixed_mac`` (``vlan_manager``),
    ``node_internet_macs`` in every internet set-up (a running one may predate the fixed MACs:
    the trunk filter drops the frames of any other gateway MAC), ``gateway_ipv6_off`` between a
    gateway's creation and its link up, and ``node_policy`` in place of ``isolation_rules``
    (``management``: the workers, the network node, the manager).
"""
from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass
from typing import Iterable, Optional

import naming
from hosts.hostcmd import join, q
from hosts.resources import Found, Key, Kind, register

# --- cookies ------------------------------------------------------------------------------------

COOKIE_PREFIX = naming.FLOW_COOKIE_PREFIX   # cookies: see naming
COOKIE_PREFIX_MASK = 0xFFFF << 48
KIND_VM, KIND_TRUNK = naming.FLOW_COOKIE_VM, naming.FLOW_COOKIE_TRUNK
KIND_MASK = 0xFFFF << 32
ID_MASK = 0xFFFFFFFF
ALL_ONES = (1 << 64) - 1

# --- priorities (the bridge's own NORMAL flow is priority 0) ------------------------------------

PRIO_DHCP_SERVER_DROP = 200   # every VM port: udp 67 -> 68 from a VM
PRIO_PORT_ALLOW = 150         # internet port: what the VM may send
PRIO_PORT_DROP = 100          # internet port: everything else
PRIO_TRUNK_ALLOW = 60         # worker trunk: internet VLAN from the gateway's MACs
PRIO_TRUNK_DROP = 50          # worker trunk: the rest of the internet VLAN

BROADCAST_MAC = "ff:ff:ff:ff:ff:ff"
MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
OFCTL = ["ovs-ofctl", "-O", "OpenFlow14"]   # bundles (atomic flow transactions) need OpenFlow 1.4


vm_cookie = naming.vm_flow_cookie
trunk_cookie = naming.trunk_flow_cookie


def cookie_text(cookie: int) -> str:
    """A cookie as ovs-ofctl prints it (``0x`` + 16 hex digits)."""
    return f"0x{cookie:016x}"


def _cookie_match(cookie: int, mask: int = ALL_ONES) -> str:
    return f"cookie={cookie_text(cookie)}/{cookie_text(mask)}"


# --- addresses -----------------------------------------------------------------------------------

fixed_mac = naming.port_mac


def _mac(mac: str) -> str:
    mac = str(mac).lower()
    if not MAC_RE.fullmatch(mac):
        raise ValueError(f"not a MAC address: {mac!r}")
    return mac


def _ipv4(ip: str) -> str:
    try:
        return str(ipaddress.IPv4Address(ip))
    except (ipaddress.AddressValueError, ValueError) as e:
        raise ValueError(f"not an IPv4 address: {ip!r}") from e


@dataclass(frozen=True)
class InternetEdge:
    """The internet VLAN's gateway and DHCP server as the workers' rules see them."""

    vlan: int
    gateway_ip: str
    gateway_mac: str
    dhcp_ip: str
    dhcp_mac: str


def internet_edge(internet: dict) -> InternetEdge:
    """Gateway and DHCP server (address and fixed MAC) of the cluster config's ``internet`` section.

    The DHCP server holds the last address of the subnet (as ``vlan_manager.internet_up_command``).
    """
    net = ipaddress.IPv4Network(internet["cidr"])
    gateway = _ipv4(internet["gateway"])
    dhcp = str(net.broadcast_address - 1)
    return InternetEdge(int(internet["vlan"]), gateway, fixed_mac(gateway), dhcp, fixed_mac(dhcp))


@dataclass(frozen=True)
class PortSpec:
    """One VM NIC on ``br-int``: its TAP, MAC, VLAN and (internet VLAN only) its address."""

    tap: str
    mac: str
    vlan: int
    ip: Optional[str] = None


def ports_of(vm: dict) -> list:
    """The ``PortSpec`` of every NIC of a VM dict that is on ``br-int`` (an unconnected NIC is on nothing)."""
    vm_id = int(vm["vm_id"])
    ports = []
    for idx, iface in enumerate(vm.get("interfaces") or []):
        if iface.get("vlan_id") is None:
            continue
        ip = (iface.get("ip_config") or {}).get("ip")
        ports.append(PortSpec(naming.tap_name(vm_id, idx), _mac(iface["mac"]), int(iface["vlan_id"]), ip))
    return ports


# --- per-VM rules on a worker's br-int ---------------------------------------------------------

def _flow(cookie: int, priority: int, match: str, actions: str) -> str:
    return f"cookie={cookie_text(cookie)},priority={priority},{match},actions={actions}"


def port_flows(vm_id: int, port: PortSpec, edge: InternetEdge) -> list:
    """The OpenFlow rules (``ovs-ofctl`` flow syntax) of one VM port, in install order."""
    if not naming.TAP_RE.fullmatch(port.tap):
        raise ValueError(f"not a TAP of this system: {port.tap!r}")
    c = vm_cookie(vm_id)
    tap = port.tap
    flows = [_flow(c, PRIO_DHCP_SERVER_DROP, f"udp,in_port={tap},tp_src=67,tp_dst=68", "drop")]
    if port.vlan != edge.vlan:
        return flows
    if not port.ip:
        raise ValueError(f"{tap} is on the internet VLAN but has no address")
    mac, ip = _mac(port.mac), _ipv4(port.ip)
    src = f"in_port={tap},dl_src={mac}"
    dhcp_client = f"udp,{src},dl_dst={BROADCAST_MAC},nw_dst=255.255.255.255,tp_src=68,tp_dst=67"
    flows += [
        _flow(c, PRIO_PORT_ALLOW, f"{dhcp_client},nw_src=0.0.0.0", "NORMAL"),
        _flow(c, PRIO_PORT_ALLOW, f"{dhcp_client},nw_src={ip}", "NORMAL"),
        _flow(c, PRIO_PORT_ALLOW, f"arp,{src},arp_sha={mac},arp_spa={ip},arp_tpa={edge.gateway_ip}", "NORMAL"),
        _flow(c, PRIO_PORT_ALLOW, f"arp,{src},arp_sha={mac},arp_spa={ip},arp_tpa={edge.dhcp_ip}", "NORMAL"),
        _flow(c, PRIO_PORT_ALLOW, f"ip,{src},dl_dst={edge.gateway_mac},nw_src={ip}", "NORMAL"),
        _flow(c, PRIO_PORT_ALLOW, f"ip,{src},dl_dst={edge.dhcp_mac},nw_src={ip}", "NORMAL"),
        _flow(c, PRIO_PORT_DROP, f"in_port={tap}", "drop"),
    ]
    return flows


def vm_flows(vm: dict, edge: InternetEdge) -> list:
    """Every OpenFlow rule of a VM dict (all its ports on ``br-int``)."""
    vm_id = int(vm["vm_id"])
    return [f for port in ports_of(vm) for f in port_flows(vm_id, port, edge)]


def flow_bundle(bridge: str, lines: list) -> str:
    """Shell: apply flow mods (``add``/``delete`` lines) to ``bridge`` as one atomic OpenFlow 1.4 bundle."""
    return _bundle(bridge, lines)


def cookie_match(cookie: int, mask: int = ALL_ONES) -> str:
    """``cookie=C/MASK`` for ovs-ofctl matches (delete, dump)."""
    return _cookie_match(cookie, mask)


def _bundle(bridge: str, lines: list) -> str:
    """Shell: apply flow mods (``add``/``delete`` lines) as one atomic OpenFlow 1.4 bundle."""
    return f"printf '%s\\n' {' '.join(q(x) for x in lines)} | {join(OFCTL + ['--bundle', 'add-flows', bridge, '-'])}"


def vm_rules(bridge: str, vm: dict, edge: InternetEdge, trunk_filter: bool = False) -> str:
    """Root script: (re)install a VM's rules on a worker's ``br-int``, atomically and idempotently.

    Run it after the VM's TAPs were added to the bridge (the rules name the TAPs; ovs-ofctl turns
    names into the OpenFlow port numbers they have now) and before the TAPs are set up.  One
    bundle: delete the VM's rules (cookie), delete this system's VM rules left on the same
    ports by anyone, add the rules.  Nothing else on the bridge changes.  A VM with no port on
    the bridge gets ``:`` (nothing to do).

    ``trunk_filter=True`` (for a worker that does not hold the gateway) also (re)installs the
    worker's trunk filter in the same bundle when the VM has an internet port: one ``ovs-ofctl``
    call instead of two (``worker_trunk_rules`` does it alone).
    """
    vm_id = int(vm["vm_id"])
    ports = ports_of(vm)
    if not ports:
        return ":"
    lines = []
    if trunk_filter and any(p.vlan == edge.vlan for p in ports):
        lines += _trunk_lines(edge)
    lines += [f"delete {_cookie_match(vm_cookie(vm_id))}"]
    lines += [f"delete {_cookie_match(COOKIE_PREFIX, COOKIE_PREFIX_MASK | KIND_MASK)},in_port={p.tap}"
              for p in ports]
    lines += [f"add {f}" for f in vm_flows(vm, edge)]
    return _bundle(bridge, lines)


def port_columns(port: PortSpec, edge: InternetEdge) -> list:
    """Extra ``Port`` columns for ``ovs-vsctl add-port BRIDGE TAP tag=V ...``: internet TAPs are protected."""
    return ["protected=true"] if port.vlan == edge.vlan else []


def protect_ports(vm: dict, edge: InternetEdge) -> str:
    """Root script: mark a VM's internet-VLAN TAPs ``protected`` (when ``port_columns`` could not be used)."""
    argv = ["ovs-vsctl"]
    for port in ports_of(vm):
        if port_columns(port, edge):
            argv += ["--", "set", "port", port.tap, *port_columns(port, edge)]
    return join(argv) if len(argv) > 1 else ":"


def remove_vm_rules(bridge: str, vm_id: int) -> str:
    """Root script: delete every OpenFlow rule of VM ``vm_id`` from ``bridge`` (idempotent).

    Exits non-zero only when the switch does not answer.
    """
    return join(OFCTL + ["del-flows", bridge, _cookie_match(vm_cookie(vm_id))])


def scan_rules(bridge: str) -> str:
    """Root script: list this system's OpenFlow rules on ``bridge`` (ports by name) for ``parse_rule_scan``."""
    return join(OFCTL + ["--names", "--no-stats", "dump-flows", bridge,
                         _cookie_match(COOKIE_PREFIX, COOKIE_PREFIX_MASK)])


def _scan_entries(text: str) -> list:
    """(cookie, in_port or None) of each flow line of a ``scan_rules`` output."""
    out = []
    for line in text.splitlines():
        m = re.search(r"\bcookie=0x([0-9a-fA-F]+)", line)
        if not m:
            continue
        port = re.search(r"\bin_port=(\"[^\"]*\"|[^,\s]+)", line)
        out.append((int(m.group(1), 16), port.group(1).strip('"') if port else None))
    return out


def flow_key(line: str) -> Optional[tuple]:
    """``(cookie, priority, match fields, actions)`` of a flow, or None for a line without a cookie.

    Accepts both this module's flow text and ``scan_rules`` output lines (which order the match
    fields their own way and quote port names), so intended and installed rules compare equal.
    """
    text = line.strip()
    m = re.match(r"cookie=0x([0-9a-fA-F]+),\s*(.*?)[,\s]actions=(\S+)$", text)
    if not m:
        return None
    fields = {f.strip() for f in m.group(2).split(",") if f.strip()}
    prio = next((f for f in fields if f.startswith("priority=")), "priority=32768")
    fields.discard(prio)
    fields = frozenset(re.sub(r'^in_port="([^"]*)"$', r"in_port=\1", f) for f in fields)
    return int(m.group(1), 16), int(prio.split("=", 1)[1]), fields, m.group(3)


def _ids_of_kind(text: str, kind: int) -> set:
    return {c & ID_MASK for c, _ in _scan_entries(text)
            if c & COOKIE_PREFIX_MASK == COOKIE_PREFIX and (c & KIND_MASK) >> 32 == kind}


def parse_rule_scan(text: str) -> set:
    """VM IDs that hold rules, from a ``scan_rules`` output."""
    return _ids_of_kind(text, KIND_VM)


def parse_trunk_scan(text: str) -> set:
    """Internet VLANs whose trunk filter is installed, from a ``scan_rules`` output."""
    return _ids_of_kind(text, KIND_TRUNK)


def stale_rule_vms(text: str) -> set:
    """VM IDs with a rule on a port that no longer exists (ovs-ofctl prints its number, not a name).

    That VM's TAP was re-added without its rules being reinstalled: rerun ``vm_rules``.
    """
    return {c & ID_MASK for c, port in _scan_entries(text)
            if c & (COOKIE_PREFIX_MASK | KIND_MASK) == COOKIE_PREFIX and port is not None and port.isdigit()}


# --- trunk filter on workers ------------------------------------------------------------------------

def trunk_flows(edge: InternetEdge) -> list:
    """The rules of a worker's trunk filter for the internet VLAN."""
    c = trunk_cookie(edge.vlan)
    v = edge.vlan
    return [
        _flow(c, PRIO_TRUNK_ALLOW, f"dl_vlan={v},dl_src={edge.gateway_mac}", "NORMAL"),
        _flow(c, PRIO_TRUNK_ALLOW, f"dl_vlan={v},dl_src={edge.dhcp_mac}", "NORMAL"),
        _flow(c, PRIO_TRUNK_DROP, f"dl_vlan={v}", "drop"),
    ]


def worker_trunk_rules(bridge: str, edge: InternetEdge) -> str:
    """Root script: (re)install a worker's trunk filter for the internet VLAN (atomic, idempotent).

    Internet-VLAN frames that arrive tagged (from the trunk) pass only from the gateway's and the
    DHCP server's MACs.  Install it on every worker before its first internet VM starts; never on
    a host that holds the gateway itself (there the VMs' frames must reach it through the trunk).
    """
    return _bundle(bridge, _trunk_lines(edge))


def _trunk_lines(edge: InternetEdge) -> list:
    return [f"delete {_cookie_match(trunk_cookie(edge.vlan))}"] + [f"add {f}" for f in trunk_flows(edge)]


TRUNK_LOCK = f"{naming.STATE_DIR}/trunk.lock"


def install_trunk_rules_locked(bridge: str, edge: InternetEdge) -> str:
    """Root script: the worker's trunk filter, (re)installed under the worker's trunk lock.

    Run after the VM's internet TAP is on the bridge: a VM stopping at the same moment either
    sees that TAP and keeps the filter, or removes it before this reinstalls it.
    """
    return "\n".join(["(", "flock 9", worker_trunk_rules(bridge, edge), f") 9>{q(TRUNK_LOCK)}"])


def remove_trunk_rules_if_unused(bridge: str) -> str:
    """Root script: under the trunk lock, remove the worker's trunk filters once no internet TAP of
    this system is left on the bridge (internet TAPs are the protected ones)."""
    mask = COOKIE_PREFIX_MASK | KIND_MASK
    ports = join(["ovs-vsctl", "--timeout=5", "--bare", "--columns=name", "find", "port", "protected=true",
                  f"external_ids:{naming.MARK}!=none"])
    remove = join(OFCTL + ["del-flows", bridge, _cookie_match(COOKIE_PREFIX | (KIND_TRUNK << 32), mask)])
    return "\n".join(["(", "flock 9",
                      f"if [ -z \"$({ports} 2>/dev/null)\" ]; then {remove} 2>/dev/null || true; fi",
                      f") 9>{q(TRUNK_LOCK)}"])


def remove_worker_trunk_rules(bridge: str, edge: InternetEdge) -> str:
    """Root script: delete a worker's trunk filter for the internet VLAN (idempotent)."""
    return join(OFCTL + ["del-flows", bridge, _cookie_match(trunk_cookie(edge.vlan))])


# --- network node -----------------------------------------------------------------------------------

def node_internet_macs(edge: InternetEdge) -> str:
    """Root script: give a running internet DHCP server its fixed MAC (idempotent; the gateway gets
    its own at every set-up, see ``vlan_manager``)."""
    ns = naming.netns_path(naming.dhcp_namespace(edge.vlan))
    inside = naming.dhcp_macvlan(edge.vlan)
    return f"nsenter --net={q(ns)} ip link set dev {q(inside)} address {q(edge.dhcp_mac)} 2>/dev/null || true"


def gateway_ipv6_off(port: str) -> str:
    """Root script: no IPv6 on gateway port ``port`` (its link-local address goes, none comes).

    Run it after ``add-port`` and before ``ip link set PORT up``: a port gets its link-local
    address when it comes up.  On a port that is already up it removes the address.
    """
    if not re.fullmatch(r"gw_vlan\d+", port):
        raise ValueError(f"not a gateway port: {port!r}")
    return (f"if [ -e {q('/proc/sys/net/ipv6/conf/' + port)} ]; then "
            f"sysctl -q -w {q(f'net.ipv6.conf.{port}.disable_ipv6=1')}; fi")


def _cidrs(management: Iterable[str]) -> list:
    out = []
    for cidr in management:
        try:
            out.append(str(ipaddress.ip_network(str(cidr), strict=False)))
        except ValueError as e:
            raise ValueError(f"not an address or network: {cidr!r}") from e
    return out


def ipv4_isolation_rules(internet_vlan: int, uplink: str, management: Iterable[str] = ()) -> str:
    """``iptables-restore --noflush`` input: ``CR-FORWARD`` and ``CR-INPUT`` for IPv4.

    As ``vlan_manager.isolation_rules`` (forward only internet VLAN <-> uplink; from a gateway port
    only replies and ICMP reach the node), tightened: ICMP only echo requests to the address of
    the very port they came in on (not the node's management address, not another VLAN's
    gateway), and nothing from a gateway port is forwarded to ``management`` (the manager's,
    workers' and network node's addresses or networks, even when the uplink routes to them).
    """
    gw400 = naming.gateway_port(int(internet_vlan))
    fwd, inp = naming.FORWARD_CHAIN, naming.INPUT_CHAIN
    v4 = [c for c in _cidrs(management) if ipaddress.ip_network(c).version == 4]
    return "\n".join([
        "*filter",
        f":{fwd} - [0:0]",
        f":{inp} - [0:0]",
        f"-A {fwd} -i {naming.NODE_TRUNK} -j DROP",
        *[f"-A {fwd} -i gw_vlan+ -d {c} -j DROP" for c in v4],
        f"-A {fwd} -i {gw400} -o {uplink} -j ACCEPT",
        f"-A {fwd} -i {uplink} -o {gw400} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
        f"-A {fwd} -i gw_vlan+ -j DROP",
        f"-A {fwd} -o gw_vlan+ -j DROP",
        f"-A {inp} -i {naming.NODE_TRUNK} -j DROP",
        f"-A {inp} -i gw_vlan+ -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
        f"-A {inp} -i gw_vlan+ -p icmp --icmp-type echo-request "
        "-m addrtype --dst-type LOCAL --limit-iface-in -j ACCEPT",
        f"-A {inp} -i gw_vlan+ -j REJECT",
        "COMMIT",
        "",
    ])


def ipv6_isolation_rules() -> str:
    """``ip6tables-restore --noflush`` input: no IPv6 from a gateway port reaches the node or is forwarded."""
    fwd, inp = naming.FORWARD_CHAIN, naming.INPUT_CHAIN
    return "\n".join([
        "*filter",
        f":{fwd} - [0:0]",
        f":{inp} - [0:0]",
        f"-A {fwd} -i {naming.NODE_TRUNK} -j DROP",
        f"-A {fwd} -i gw_vlan+ -j DROP",
        f"-A {fwd} -o gw_vlan+ -j DROP",
        f"-A {inp} -i {naming.NODE_TRUNK} -j DROP",
        f"-A {inp} -i gw_vlan+ -j DROP",
        "COMMIT",
        "",
    ])


def policy_marker(rules: str) -> str:
    """The comment that marks a loaded policy: ``cr-policy-`` + 16 hex digits of its SHA-256."""
    return "cr-policy-" + hashlib.sha256(rules.encode()).hexdigest()[:16]


def _load_chains(tool: str, rules: str, enter: str = "", sums_name: str = "") -> list:
    """Shell: load ``rules`` (with its marker) and the jumps, unless exactly that is in place already.

    "In place" = the chains' rules and the jumps to them read back (``-save``) exactly as right
    after this system's last load (a checksum kept in the state directory) and carry this policy's
    marker.  Any change (a rule deleted by hand, another policy, a reboot) reloads.  The check is
    one ``-save``, much cheaper than a restore: the policy is re-applied by every gateway set-up,
    one after another under the node's lock.  ``enter`` (e.g. ``nsenter --net=PATH``) prefixes
    every command, to load the chains of another namespace; ``sums_name`` then names its checksum.
    """
    fwd, inp = naming.FORWARD_CHAIN, naming.INPUT_CHAIN
    marker = policy_marker(rules)
    marked = rules.replace("COMMIT\n", f"-A {inp} -m comment --comment {marker}\nCOMMIT\n")
    ours = f"^-A ({fwd}|{inp}) |^-A (FORWARD -j {fwd}|INPUT -j {inp})$"
    run = f"{enter} {tool}" if enter else tool
    state = f"{run}-save -t filter 2>/dev/null | grep -E -- {q(ours)} || true"  # "none" must not stop a set -e script
    sums = q(f"{naming.STATE_DIR}/policy-{sums_name}{tool}.sum")
    return [
        f"st=$({state})",
        f"if [ \"$(printf '%s' \"$st\" | sha256sum)\" != \"$(cat {sums} 2>/dev/null)\" ] || "
        f"! printf '%s' \"$st\" | grep -qF -- {q(marker)}; then",
        f"printf '%s' {q(marked)} | {run}-restore -w --noflush",
        f"{run} -w -C FORWARD -j {fwd} 2>/dev/null || {run} -w -I FORWARD 1 -j {fwd}",
        f"{run} -w -C INPUT -j {inp} 2>/dev/null || {run} -w -I INPUT 1 -j {inp}",
        f"st=$({state})",
        f"mkdir -p {q(naming.STATE_DIR)} && printf '%s' \"$st\" | sha256sum > {sums}",
        "fi",
    ]


def node_ipv6_policy(enter: str = "", sums_name: str = "") -> str:
    """Root script: load the IPv6 chains and their jumps (idempotent; nothing to do without IPv6)."""
    return "\n".join(["if [ -e /proc/net/if_inet6 ]; then",
                      *_load_chains("ip6tables", ipv6_isolation_rules(), enter, sums_name),
                      "fi"])


GATEWAYS_POLICY = "gateways-"  # the checksum files of the gateways namespace's chains: policy-gateways-<tool>.sum


def gateway_namespace_policy(internet_vlan: int, uplink: str, management: Iterable[str] = ()) -> str:
    """Root script: the same isolation chains inside the link gateways' namespace, if it exists.

    That namespace forwards nothing (``ip_forward=0``) and has no IPv6, so its ``CR-INPUT`` is what
    matters: from a gateway only ping to that gateway's own address, and replies.  The forwarding
    chain stays as a second wall.
    """
    path = naming.netns_path(naming.GATEWAY_NAMESPACE)
    enter = f"nsenter --net={q(path)}"
    return "\n".join([f"if [ -e {q(path)} ]; then",
                      *_load_chains("iptables", ipv4_isolation_rules(internet_vlan, uplink, management),
                                    enter, GATEWAYS_POLICY),
                      node_ipv6_policy(enter, GATEWAYS_POLICY),
                      "fi"])


def node_policy(internet_vlan: int, uplink: str, management: Iterable[str] = ()) -> str:
    """Root script: the network node's isolation for IPv4 and IPv6, replaced atomically, idempotent.

    Drop-in replacement for the body of ``vlan_manager.isolation_rules`` (run it under the same
    ``iptables.lock``).  Each family is reloaded only when its marker (``policy_marker``) or a
    jump is missing, so the many gateway set-ups of one deploy pay for one load.
    """
    return "\n".join([*_load_chains("iptables", ipv4_isolation_rules(internet_vlan, uplink, management)),
                      node_ipv6_policy()])


# --- kinds: the rules as host objects (scan, parser, owned/expected, removal) --------------------

def _flow_scan_lines(ctx, kind_name: str) -> str:
    """Shell: this system's flows on br-int, one ``<kind> <flow line>`` each (ports by name)."""
    return f"{scan_rules(ctx.config.bridge)} 2>/dev/null | grep -F cookie= | sed 's/^ */{kind_name} /' || true"


def _flow_of(fields: list) -> Optional[tuple]:
    """(cookie, in_port or None) of one scanned flow line (its words)."""
    entries = _scan_entries(" ".join(fields))
    return entries[0] if entries else None


@register
class VMFlows(Kind):
    """A VM's OpenFlow rules on its worker's br-int; detail ``stale`` when they name a port number
    (the TAP was re-added and the rules no longer match it)."""

    name = "flows"
    label = "OpenFlow rules of VM"

    def scan(self, ctx, host):
        return _flow_scan_lines(ctx, self.name)

    def parse(self, host, fields):
        flow = _flow_of(fields)
        if flow is None or flow[0] & (COOKIE_PREFIX_MASK | KIND_MASK) != COOKIE_PREFIX:
            return None
        cookie, port = flow
        stale = port is not None and port.isdigit()
        return Found(Key(self.name, host, vm_id=cookie & ID_MASK), "stale" if stale else "ok")

    def owned(self, view):
        return (Key(self.name, vm["worker_ip"], vm_id=int(vm["vm_id"])) for vm in view.all_vms())

    def expected(self, view):
        return {Key(self.name, vm["worker_ip"], vm_id=int(vm["vm_id"])): "ok"
                for vm in view.running_vms() if ports_of(vm)}

    def remove(self, ctx, host, keys):
        return [f"{remove_vm_rules(ctx.config.bridge, k.vm_id)} || true" for k in keys]

    def describe(self, key):
        return f"OpenFlow rules of VM {key.vm_id}"


@register
class TrunkFilter(Kind):
    """A worker's filter of the internet VLAN on its trunk (only the gateway's frames come in)."""

    name = "trunkfilter"
    label = "trunk filter of VLAN"

    def scan(self, ctx, host):
        return _flow_scan_lines(ctx, self.name)

    def parse(self, host, fields):
        flow = _flow_of(fields)
        if flow is None or flow[0] & (COOKIE_PREFIX_MASK | KIND_MASK) != COOKIE_PREFIX | (KIND_TRUNK << 32):
            return None
        return Found(Key(self.name, host, vlan=flow[0] & ID_MASK))

    def _keys(self, view, vms):
        vlan = int(view.config.internet["vlan"])
        return {Key(self.name, vm["worker_ip"], vlan=vlan) for vm in vms
                if vm["worker_ip"] != view.config.network_node
                and any(p.vlan == vlan for p in ports_of(vm))}

    def owned(self, view):
        return self._keys(view, view.all_vms())

    def expected(self, view):
        return {k: "" for k in self._keys(view, view.running_vms())}

    def remove(self, ctx, host, keys):
        edge = internet_edge(ctx.config.internet)
        return [f"{remove_worker_trunk_rules(ctx.config.bridge, edge)} || true" for _k in keys]

    def describe(self, key):
        return f"trunk filter of VLAN {key.vlan}"
