"""Names and addresses: every convention of Cloud Repositorio, stated once.

Read this first.  Every other module takes the names of things on the hosts
from the functions below, and the orphan cleanup recognises what this system
created by the same patterns, so nothing else on a host is ever touched.

IDs
    One counter in ``database.yaml`` (``next_vm_id``), starting at 1000, gives
    both slice IDs and VM IDs: the first slice is 1000, its first VM 1001.

Link VLANs and the slices' blocks (SPEC §3, §4.1, §16)
    Link VLANs are one cluster-wide resource, handed to links as they are made:
    a slice holds exactly the VLANs of its links (``vlan_pool_used``), never a
    VLAN it does not use.  Link VLANs are 100 .. 4094 except the internet VLAN
    (400) and ``reserved_vlans`` of the cluster config; no two links in the
    database share one, and a link takes its VLAN in the same database
    transaction that stores it (two menus never get the same VLAN).

    Each slice records a *block* of 20 VLANs (``vlan_pool_start`` ..
    ``vlan_pool_end``): the documented block ``100 + (slice_id % 100) * 20``
    .. ``+19`` when no other slice in the database records an overlapping block
    and it holds no reserved VLAN, else the first aligned block ``100 + k*20``
    that is free in that sense (k = 0 .. 198: 100-119 .. 4060-4079, less the
    block holding 400).  When all 198 are recorded the slice has no block:
    both fields are null.  A block is where the slice's links look first, not
    a reservation: the slice keeps only the VLANs its links take.

    A link takes the first VLAN of its slice's block that no link holds, so a
    slice's links take its block in order (the seeds' examples stay true:
    slice 1000's first link is VLAN 100).  When none is left there, or the
    slice has no block, it takes the free VLAN farthest from the start of any
    block (``link_vlan_order``): first the VLANs in no block (401-419,
    4080-4094, and the blocks that hold a reserved VLAN), then the 20th VLAN of
    every block (119, 139, ...), then the 19th, and so on, lowest first within
    each rank; so the first VLANs of every block stay free for the slice that
    records it.  The menu says when a link's VLAN is outside its slice's
    block.  A slice has at most 20 links; when no link VLAN is free at all,
    a new link is refused, saying how many links hold them.

Subnets (SPEC §4.2)
    Link VLAN V <= 255: ``192.168.V.0/24``.  V > 255: ``172.(16 + V // 256).(V % 256).0/24``,
    which maps 256..4095 one-to-one into 172.16.0.0/12.  Gateway ``.1`` (port
    ``gw_vlan{V}`` on the network node), DHCP server ``.254`` (inside
    ``ns-dhcp-vlan{V}``), DHCP range ``.10`` - ``.250``.
    Internet VLAN 400: ``10.60.7.0/24``, gateway ``10.60.7.1`` with NAT out of
    the uplink; each internet VM gets ``10.60.7.{100 + vm_id % 100}`` (the
    documented formula) or, when a live VM already holds it, the next free
    address from .100-.199 then .2-.99 and .200-.253, reserved by MAC in DHCP.

On a worker, per VM ``vm_id``
    overlay     ``~/vm_images/{vm_name}_img.qcow2`` (the documented path), or
                ``~/vm_images/{vm_name}.{vm_id}_img.qcow2`` when another VM on
                that worker already uses the documented one (or a file is in
                its way).  ``.`` is never in a name, so the fallback of one VM
                never equals another VM's file, whatever names and IDs are
                chosen (``r.1016_img.qcow2`` is not ``r_1016_img.qcow2``).
                Beside it the marker ``<overlay>.owner`` holding
                ``cloud-repositorio vm {vm_id}``: only overlays with a marker
                are this system's, and a VM's delete or rollback removes a
                file only when its marker names that VM.  Mode 0600 in a
                0700 folder: only the SSH user and root (QEMU) read disks.
                (Before: the fallback ``{vm_name}_{vm_id}_img.qcow2`` and the
                marker ``cloud-repositorio``; both are still recognised.)
    snapshots   ``~/vm_images/vm{vm_id}.{snapshot}.snap.qcow2``: a copy of the overlay
                (same backing file, 0600 like it), with the marker ``<file>.owner`` written
                before it and removed after it; ``<file>.part`` while a save or a
                restore copies it (``snapshot`` follows the slice/VM name rule)
    base image  ``~/vm_images/<basename of the flavor image>`` (never touched)
    QEMU        ``-name cr-vm{vm_id},process=cr-vm{vm_id}`` and
                ``-pidfile /run/cloud-repositorio/vm{vm_id}.pid``
    state files ``/run/cloud-repositorio/vm{vm_id}.{pid,serial,sock,qmp,seed.img,console.lock,lock}``:
                pid file, serial log (everything the guest printed since it
                started), serial console socket, QMP monitor socket, NoCloud
                seed disk, console lock (one console session at a time), the
                VM's lock (held by its start and its stop, so a stop waits for
                a start still running, e.g. one whose manager died); the
                folder is 0700 and the files 0600 (QEMU's own 0640, group root)
    TAPs        ``tap{vm_id}_{i}`` for interface ``eth{i}`` (15 chars at most), made
                before QEMU starts; on ``br-int`` with
                ``external_ids:cloud-repositorio=vm{vm_id}``, internet-VLAN TAPs
                ``protected`` (no frame between two of them)
    OpenFlow    the VM's rules on ``br-int`` (``vm_firewall``): cookie
                ``0x4352_0000_<vm_id as 32 bits>``; a worker's trunk filter of the
                internet VLAN: cookie ``0x4352_0001_<vlan>`` (the network node's VLAN
                flows: ``0x4352_0002_<vlan>``, below)
    VNC         TCP ``vnc_port`` = display ``vnc_port - 5900``; ports come from
                5901 up, unique among the VMs in the database; password = the
                VM's password
    captures    a packet capture on TAP ``t`` (``tap{vm_id}_{i}``): ``timeout ... tcpdump -i t -p ...``
                (its command line holds ``tcpdump -i t -p``) with the pid file
                ``/run/cloud-repositorio/capture-{t}.{n}.pid`` (``n``: the capturing
                shell's pid, so several captures of one TAP have their own)
    impairments a link's delay, jitter, loss and rate on the egress of each end's TAP
                (the frames going to the VM): the qdisc ``root netem`` of the TAP, or,
                where the kernel has no ``sch_netem``, the user-space relay
                ``netem_relay.py --dev t`` (pid file ``impair-{t}.pid``, program
                ``/run/cloud-repositorio/netem_relay.py``) fed by a ``clsact`` egress filter
                of the TAP that steals unmarked frames to the veth ``nx{vm_id}_{i}a``
                (peer ``nx{vm_id}_{i}b``); the relay sends with the mark ``0x4352``.
                Either way ``/run/cloud-repositorio/impair-{t}`` records what was applied

On the network node, once
    trunk       the veth pair ``cr-trunk`` (the node's kernel end: no address, no
                IPv6, the lower device of every gateway and DHCP server) /
                ``cr-trunk-br``, a port of the node bridge ``cr-node`` (Open vSwitch,
                ``fail_mode=secure``: nothing passes but by its flows), joined to
                ``br-int`` by the patch ports ``cr-node-patch`` / ``cr-int-patch``
                (on ``br-int``, no tag: every VLAN).  All marked ``cloud-repositorio=trunk``
                (alias, external_ids).  Made by the first VLAN set-up (under
                ``trunk.lock``), removed with the last.  The node's kernel has no
                802.1Q devices to rely on (the lab's has none at all), so the
                VLAN tags are taken off and put on by ``cr-node``'s flows
    gateways    the namespace ``ns-cr-gateways`` (``GATEWAY_NAMESPACE``), made with
                the trunk and removed with it: it holds every link VLAN's gateway,
                forwards nothing (``ip_forward=0``), has IPv6 switched off, and
                has its own ``CR-FORWARD``/``CR-INPUT`` chains.  ovs-vswitchd
                mirrors every route of its own namespace and re-reads them all at
                each change, so a gateway there would make every later VLAN cost
                more; only the internet VLAN's gateway (it routes to the uplink)
                stays in the node's own namespace

On the network node, per link VLAN V (and the internet VLAN)
    gateway     ``gw_vlan{V}``, a macvlan (mode private) of ``cr-trunk`` with the
                gateway's fixed MAC, alias ``cloud-repositorio=vlan{V}``, no IPv6
                address, in ``ns-cr-gateways`` (VLAN 400's: in the node's own
                namespace); no Open vSwitch port per VLAN (a VLAN costs the node
                netlink work and a few flows)
    VLAN flows  on ``cr-node``, cookie ``0x4352_0002_<V>``: VLAN V from ``br-int`` to
                the gateway's and the DHCP server's MACs leaves on the trunk
                untagged (its broadcasts as one copy to each of those MACs);
                frames from those two MACs get tag V.  Nothing else passes, so no
                frame crosses from one VLAN to another
    fixed MACs  a device of the node holding IPv4 address A.B.C.D (a gateway, a DHCP
                server) has MAC ``02:00:AA:BB:CC:DD`` (``port_mac``): locally
                administered, never a VM's ``52:54:00:...``, known to every worker
    DHCP        namespace ``ns-dhcp-vlan{V}`` holding ``dhcp{V}-i``, a macvlan
                (mode private) of ``cr-trunk``; dnsmasq started in it with
                ``nsenter --net`` (no mount namespace per VLAN), with
                ``/run/cloud-repositorio/dnsmasq-vlan{V}.{pid,leases,log}`` and
                reservations in ``dnsmasq-vlan{V}.hosts.d/vm{vm_id}``; the marker
                ``/run/cloud-repositorio/vlan{V}.owner`` says the VLAN is this system's
    old layout  before issue 19 the gateway was an OVS internal port ``gw_vlan{V}``
                and the DHCP namespace hung on a veth ``dhcp{V}-o`` on ``br-int``
                (both with ``external_ids:cloud-repositorio=vlan{V}``); a set-up or
                removal of VLAN V removes those ports, and the orphan scan finds them
    isolation   iptables and ip6tables chains ``CR-FORWARD`` (forwarding only
                VLAN 400 <-> uplink, nothing between gateways, nothing to the
                management addresses, nothing from the trunk itself) and ``CR-INPUT``
                (from a gateway only ping to its own address, and replies, reach the
                node itself; nothing at all over IPv6 or from the trunk itself),
                marked ``cr-policy-<hash>``; the same chains again inside
                ``ns-cr-gateways`` (checksums ``policy-gateways-<tool>.sum``)
    NAT         ``POSTROUTING -s <internet cidr> -o <uplink> -j MASQUERADE`` with
                the comment ``cloud-repositorio``
    locks       ``/run/cloud-repositorio/{iptables,trunk,vlan400}.lock`` (flock), each
                with ``{iptables,trunk,vlan400}.ensured``: ``<generation> <verified
                generation> <digest>`` of the last check made under that lock (scripts
                that waited for the lock while it was made skip theirs; removals delete it)

Everything above is what the orphan scan recognises; things that merely look
alike (a user's ``thesis_img.qcow2`` without a marker, a ``gw_vlan3999`` port
without the external id) are never touched.
"""
from __future__ import annotations

import ipaddress
import re
from typing import Iterable, Iterator, Optional

FIRST_ID = 1000
FIRST_VNC_PORT = 5901
VNC_BASE = 5900
POOL_SIZE = 20
POOL_BASE = 100
LINK_VLAN_FIRST = POOL_BASE       # link VLANs: 100 .. MAX_VLAN, less the reserved ones
MAX_LINKS = POOL_SIZE             # links of one slice
MAX_VLAN = 4094
INTERNET_VLAN = 400
STATE_DIR = "/run/cloud-repositorio"
MARK = "cloud-repositorio"          # OVS external_ids key, marker files, iptables comments
FLOW_COOKIE_PREFIX = 0x4352 << 48    # "CR": this system's OpenFlow rules
FLOW_COOKIE_VM, FLOW_COOKIE_TRUNK, FLOW_COOKIE_NODE_VLAN = 0, 1, 2  # bits 32..47: what the low 32 bits name
IMAGE_DIR = "~/vm_images"
IFNAMSIZ = 15

NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,31}")
NAME_RULE = "1-32 characters: a letter first, then letters, digits, '-' or '_'"
USERNAME_RE = re.compile(r"[a-z][a-z0-9_-]{1,31}")
USERNAME_RULE = "2-32 characters: a lowercase letter first, then lowercase letters, digits, '-' or '_'"


def valid_name(name: str) -> bool:
    """True when a slice or VM name is in the safe character set."""
    return isinstance(name, str) and bool(NAME_RE.fullmatch(name))


# --- VLANs and subnets ------------------------------------------------------

def documented_pool_start(slice_id: int) -> int:
    """The original formula: ``100 + (slice_id % 100) * 20``."""
    return POOL_BASE + (slice_id % 100) * POOL_SIZE


def lock_file(lock: str) -> str:
    """The network node's lock file ``lock`` (``trunk.lock``, ``iptables.lock``, ``vlan400.lock``)."""
    return f"{STATE_DIR}/{lock}"


def ensured_file(lock: str) -> str:
    """The record of the last check-and-make done under ``lock``: ``trunk.lock`` -> ``trunk.ensured``."""
    return f"{STATE_DIR}/{lock.removesuffix('.lock')}.ensured"


def _block_usable(start: int, reserved: set) -> bool:
    """True when the aligned block from ``start`` fits the VLAN range and holds no reserved VLAN."""
    end = start + POOL_SIZE - 1
    return end <= MAX_VLAN and not any(start <= v <= end for v in reserved)


def allocate_vlan_pool(slice_id: int, taken_pools: Iterable[tuple[int, int]],
                       reserved: Iterable[int] = (INTERNET_VLAN,)) -> Optional[int]:
    """First VLAN of the block a new slice records, or None when every block is recorded.

    The documented block is used when no slice records an overlapping block
    (``taken_pools``: (start, end) of the slices in the database) and it holds
    no reserved VLAN; otherwise the first such aligned block.
    """
    taken = list(taken_pools)
    reserved = set(reserved)

    def free(start: int) -> bool:
        end = start + POOL_SIZE - 1
        return _block_usable(start, reserved) and all(end < s or start > e for s, e in taken)

    preferred = documented_pool_start(slice_id)
    if free(preferred):
        return preferred
    for start in range(POOL_BASE, MAX_VLAN + 1, POOL_SIZE):
        if free(start):
            return start
    return None


def link_vlan_range(reserved: Iterable[int] = (INTERNET_VLAN,)) -> list:
    """Every VLAN a link may get (100 .. 4094 less the reserved ones), ascending."""
    reserved = set(reserved) | {INTERNET_VLAN}
    return [v for v in range(LINK_VLAN_FIRST, MAX_VLAN + 1) if v not in reserved]


def link_vlan_order(reserved: Iterable[int] = (INTERNET_VLAN,)) -> Iterator[int]:
    """The VLANs a link outside its slice's block may get, in the order they are tried.

    First those in no usable block (ascending), then the 20th VLAN of every
    block, then the 19th, ... (blocks ascending): the free VLAN farthest
    from the start of any block comes first.
    """
    reserved = set(reserved) | {INTERNET_VLAN}
    starts = [s for s in range(POOL_BASE, MAX_VLAN + 1, POOL_SIZE) if _block_usable(s, reserved)]
    in_blocks = {s + k for s in starts for k in range(POOL_SIZE)}
    yield from (v for v in link_vlan_range(reserved) if v not in in_blocks)
    for offset in range(POOL_SIZE - 1, -1, -1):
        yield from (s + offset for s in starts)


def allocate_link_vlan(pool_start: Optional[int], used: Iterable[int],
                       reserved: Iterable[int] = (INTERNET_VLAN,)) -> Optional[int]:
    """The VLAN of a new link: the first free one of its slice's block, else by ``link_vlan_order``.

    ``pool_start``: the slice's block (None: it has none); ``used``: every
    VLAN links of the database hold.  None when no link VLAN is free.
    """
    taken = set(used) | set(reserved) | {INTERNET_VLAN}
    if pool_start is not None:
        for vlan in range(pool_start, min(pool_start + POOL_SIZE, MAX_VLAN + 1)):
            if vlan not in taken:
                return vlan
    return next((v for v in link_vlan_order(reserved) if v not in taken), None)


def in_pool(vlan: int, pool_start: Optional[int]) -> bool:
    """True when ``vlan`` is in the block starting at ``pool_start`` (never when there is no block)."""
    return pool_start is not None and pool_start <= vlan < pool_start + POOL_SIZE


def link_subnet(vlan: int) -> ipaddress.IPv4Network:
    """The /24 of link VLAN ``vlan`` (unique for every VLAN 1..4094)."""
    if not 1 <= vlan <= MAX_VLAN:
        raise ValueError(f"VLAN {vlan} out of range")
    if vlan <= 255:
        return ipaddress.IPv4Network(f"192.168.{vlan}.0/24")
    return ipaddress.IPv4Network(f"172.{16 + vlan // 256}.{vlan % 256}.0/24")


def link_network(vlan: int) -> dict:
    """Gateway, DHCP server and range of a link VLAN, as plain strings."""
    net = link_subnet(vlan)
    base = net.network_address
    return {
        "vlan_id": vlan,
        "cidr": str(net),
        "gateway_ip": str(base + 1),
        "dhcp_server_ip": str(base + 254),
        "dhcp_start": str(base + 10),
        "dhcp_end": str(base + 250),
        "prefixlen": net.prefixlen,
    }


def internet_ip_candidates(vm_id: int, cidr: str, gateway: str) -> list[str]:
    """Addresses an internet VM may get, the documented one first."""
    net = ipaddress.IPv4Network(cidr)
    base = net.network_address
    documented = 100 + vm_id % 100
    order = [documented] + list(range(100, 200)) + list(range(2, 100)) + list(range(200, 254))
    seen, out = set(), []
    for host in order:
        if host in seen:
            continue
        seen.add(host)
        addr = base + host
        if addr in net and str(addr) != gateway and addr != net.broadcast_address:
            out.append(str(addr))
    return out


# --- Per-VM names on a worker -----------------------------------------------

def qemu_name(vm_id: int) -> str:
    return f"cr-vm{vm_id}"


def vm_pidfile(vm_id: int) -> str:
    return f"{STATE_DIR}/vm{vm_id}.pid"


def vm_serial_log(vm_id: int) -> str:
    return f"{STATE_DIR}/vm{vm_id}.serial"


def vm_serial_socket(vm_id: int) -> str:
    return f"{STATE_DIR}/vm{vm_id}.sock"


def vm_qmp_socket(vm_id: int) -> str:
    return f"{STATE_DIR}/vm{vm_id}.qmp"


def vm_seed_image(vm_id: int) -> str:
    return f"{STATE_DIR}/vm{vm_id}.seed.img"


def vm_console_lock(vm_id: int) -> str:
    return f"{STATE_DIR}/vm{vm_id}.console.lock"


def vm_lock(vm_id: int) -> str:
    return f"{STATE_DIR}/vm{vm_id}.lock"


def vm_state_files(vm_id: int) -> list[str]:
    """Every file of a VM in the state folder (see the table above); its lock last."""
    return [vm_pidfile(vm_id), vm_serial_log(vm_id), vm_serial_socket(vm_id), vm_qmp_socket(vm_id),
            vm_seed_image(vm_id), vm_console_lock(vm_id), vm_lock(vm_id)]


def vm_mark(vm_id: int) -> str:
    """The value of ``external_ids:cloud-repositorio`` on a VM's TAP ports."""
    return f"vm{vm_id}"


def flow_cookie(kind: int, ident: int) -> int:
    """An OpenFlow cookie of this system: the prefix, what it names, and that thing's number."""
    if not 0 <= int(ident) <= 0xFFFFFFFF:
        raise ValueError(f"ID {ident} does not fit a cookie")
    return FLOW_COOKIE_PREFIX | (kind << 32) | int(ident)


def vm_flow_cookie(vm_id: int) -> int:
    """The cookie of every OpenFlow rule of VM ``vm_id``."""
    return flow_cookie(FLOW_COOKIE_VM, vm_id)


def node_vlan_flow_cookie(vlan: int) -> int:
    """The cookie of the node bridge's flows of VLAN ``vlan``."""
    return flow_cookie(FLOW_COOKIE_NODE_VLAN, vlan)


def trunk_flow_cookie(vlan: int) -> int:
    """The cookie of a worker's trunk filter of internet VLAN ``vlan``."""
    return flow_cookie(FLOW_COOKIE_TRUNK, vlan)


def tap_name(vm_id: int, index: int) -> str:
    """TAP device of interface ``eth{index}`` of VM ``vm_id``."""
    name = f"tap{vm_id}_{index}"
    if len(name) > IFNAMSIZ:
        raise ValueError(f"interface name {name} is longer than {IFNAMSIZ} characters")
    return name


def tap_index(tap: str) -> Optional[tuple]:
    """(vm_id, interface index) of a TAP name of this system, or None."""
    m = TAP_RE.fullmatch(tap)
    return (int(m.group(1)), int(m.group(2))) if m else None


def capture_pidfile(tap: str, token: object) -> str:
    """The pid file of one capture on TAP ``tap`` (``token``: the capturing shell's pid)."""
    return f"{STATE_DIR}/capture-{tap}.{token}.pid"


def capture_pidfile_glob(tap: str) -> str:
    """The pid files of every capture on ``tap`` (a shell glob; the TAP name holds no glob character)."""
    return f"{STATE_DIR}/capture-{tap}.*.pid"


def capture_mark(tap: str) -> str:
    """What the command line of a capture on ``tap`` holds (``pid_guard``'s check)."""
    return f"tcpdump -i {tap} -p"


def impair_marker(tap: str) -> str:
    """The file recording the impairment applied to ``tap`` (its text: ``describe`` of it)."""
    return f"{STATE_DIR}/impair-{tap}"


def relay_pidfile(tap: str) -> str:
    return f"{STATE_DIR}/impair-{tap}.pid"


def relay_mark(tap: str) -> str:
    """What the command line of the user-space relay of ``tap`` holds."""
    return f"netem_relay.py --dev {tap} "


RELAY_PROGRAM = f"{STATE_DIR}/netem_relay.py"
RELAY_MARK = 0x4352  # the socket mark of frames the relay sends: the TAP's filter lets them through


def relay_veth(vm_id: int, index: int) -> tuple:
    """(end the TAP's filter redirects to, end the relay reads) of TAP ``tap{vm_id}_{index}``."""
    tap_name(vm_id, index)  # the same length limit
    return f"nx{vm_id}_{index}a", f"nx{vm_id}_{index}b"


OVERLAY_ID_SEPARATOR = "."  # never in a name (NAME_RE): a fallback overlay name is one VM's only


def overlay_path(vm_name: str, vm_id: Optional[int] = None) -> str:
    """The overlay of a VM: the documented path, or the ID-qualified fallback."""
    if vm_id is None:
        return f"{IMAGE_DIR}/{vm_name}_img.qcow2"
    return f"{IMAGE_DIR}/{vm_name}{OVERLAY_ID_SEPARATOR}{int(vm_id)}_img.qcow2"


def overlay_marker(overlay: str) -> str:
    """The marker file beside an overlay this system made."""
    return f"{overlay}.owner"


def snapshot_file(vm_id: int, snapshot: str, folder: str = IMAGE_DIR) -> str:
    """A VM's disk snapshot ``snapshot`` in ``folder`` (its overlay's folder): a copy of its overlay."""
    if not valid_name(snapshot):
        raise ValueError(f"invalid snapshot name {snapshot!r}")
    return f"{folder.rstrip('/')}/vm{int(vm_id)}.{snapshot}.snap.qcow2"


def snapshot_part(snapshot_path: str) -> str:
    """The file a save or a restore copies into before it is renamed into place."""
    return f"{snapshot_path}.part"


def overlay_marker_text(vm_id: int) -> str:
    """What the marker of VM ``vm_id``'s overlay holds (its delete checks it)."""
    return f"{MARK} vm {int(vm_id)}"


def vnc_display(vnc_port: int) -> int:
    return vnc_port - VNC_BASE


# --- Per-VLAN names on the network node -------------------------------------

NODE_TRUNK = "cr-trunk"            # the node's kernel end of its trunk: the lower device of every gateway
NODE_TRUNK_PORT = "cr-trunk-br"    # its peer, a port of the node bridge
NODE_BRIDGE = "cr-node"            # the node bridge: VLAN tags off and on, by flows only
NODE_PATCH = "cr-node-patch"       # the node bridge's patch port to br-int
NODE_PATCH_INT = "cr-int-patch"    # br-int's patch port to the node bridge (every VLAN)
TRUNK_MARK = "trunk"               # external_ids / alias value of the trunk
NETNS_DIR = "/run/netns"           # where ``ip netns`` keeps its namespaces
GATEWAY_NAMESPACE = "ns-cr-gateways"  # the node's namespace of every link VLAN's gateway


def gateway_port(vlan: int) -> str:
    """The gateway of VLAN ``vlan``: a macvlan of ``NODE_TRUNK``."""
    return f"gw_vlan{vlan}"


def port_mac(ip: str) -> str:
    """The fixed MAC of a network-node device holding IPv4 ``ip``: ``02:00:`` + the address bytes."""
    return "02:00:" + ":".join(f"{b:02x}" for b in ipaddress.IPv4Address(ip).packed)


def vlan_mark(vlan: int) -> str:
    """The value of this system's mark on a VLAN's objects (external_ids, aliases)."""
    return f"vlan{vlan}"


def device_alias(value: str) -> str:
    """The alias (``ip link set DEV alias``) that marks a network device of this system."""
    return f"{MARK}={value}"


def vlan_marker_file(vlan: int) -> str:
    return f"{STATE_DIR}/vlan{vlan}.owner"


def dhcp_namespace(vlan: int) -> str:
    return f"ns-dhcp-vlan{vlan}"


def netns_path(namespace: str) -> str:
    """The file ``ip netns`` binds a namespace to (``nsenter --net=`` enters it)."""
    return f"{NETNS_DIR}/{namespace}"


def dhcp_macvlan(vlan: int) -> str:
    """The DHCP server's device inside ``ns-dhcp-vlan{V}``: a macvlan of ``NODE_TRUNK``."""
    return f"dhcp{vlan}-i"


def legacy_dhcp_veth(vlan: int) -> str:
    """The outside end of a DHCP veth on br-int of the layout before issue 19 (removed when seen)."""
    return f"dhcp{vlan}-o"


def dnsmasq_files(vlan: int) -> dict:
    stem = f"{STATE_DIR}/dnsmasq-vlan{vlan}"
    return {"pid": f"{stem}.pid", "leases": f"{stem}.leases", "log": f"{stem}.log",
            "hostsdir": f"{stem}.hosts.d"}


FORWARD_CHAIN = "CR-FORWARD"
INPUT_CHAIN = "CR-INPUT"

NAT_COMMENT = MARK

# The forms the host scans recognise (use fullmatch).
TAP_RE = re.compile(r"tap(\d+)_(\d+)")
OVERLAY_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,31}(?:\.\d+|_\d+)?_img\.qcow2")
OVERLAY_GLOB = "*_img.qcow2"
VM_STATE_RE = re.compile(r"vm(\d+)\.(?:pid|serial|sock|qmp|seed\.img|console\.lock|lock)")
GATEWAY_RE = re.compile(r"gw_vlan(\d+)")
NETNS_RE = re.compile(r"ns-dhcp-vlan(\d+)")
DNSMASQ_PID_RE = re.compile(r"dnsmasq-vlan(\d+)\.pid")
RESERVATION_RE = re.compile(r"vm(\d+)")
CAPTURE_PID_RE = re.compile(r"capture-(tap\d+_\d+)\.(\d+)\.pid")
SNAPSHOT_MARKER_GLOB = "vm[0-9]*.snap.qcow2.owner"
SNAPSHOT_RE = re.compile(r"vm(\d+)\.([A-Za-z][A-Za-z0-9_-]{0,31})\.snap\.qcow2")
