"""What runs on a worker for a VM: QEMU, its TAPs on br-int, its state files.

A VM is known on its worker only by its ID (see ``naming``): QEMU runs with
``-name cr-vm{id},process=cr-vm{id}`` and ``-pidfile``, is stopped by that
pid after checking the pid still is that VM, and its TAPs are
``tap{id}_{i}``.  Every guest NIC exists, in order (eth0, eth1, ...), each
on its own TAP; a TAP whose interface has a VLAN is on ``br-int`` with that
tag (and this system's external id), one without a VLAN is attached to
nothing.

The kinds of worker objects a VM has (``QEMU``, ``TAP``, ``OVS port``, state
files) are described below, each with its scan, parser and removal; the
launch script first removes the VM's leftovers with those same removals
(a crash never blocks a retry), then starts QEMU and wires the TAPs.
"""
from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from typing import Iterable, Optional

import naming
from hosts import capture, impairments, seed, vm_firewall
from hosts.hostcmd import HostCommand, home_path, join, link_exists, q, stop_by_pidfile, wait_gone
from hosts.resources import Found, HostContext, Key, Kind, int_or_none, register
from models import Flavor

STOP_WAIT_S = 5

OVS_DOWN_EXIT = 69


def qemu_value(text: str) -> str:
    """Escape a value inside a QEMU ``key=value,...`` option."""
    return str(text).replace(",", ",,")


def accel_args(accel: str) -> list:
    """``kvm``, ``tcg`` or ``kvm:tcg`` (try KVM, fall back to TCG)."""
    args = []
    for a in accel.split(":"):
        args += ["-accel", a]
    return args


OVS_RUNDIR = "/run/openvswitch"  # where the daemons keep their pid files (Debian, Ubuntu, the lab)


def ovs_daemons_up(daemons: tuple = ("ovsdb-server", "ovs-vswitchd")) -> str:
    """Shell test, with shell builtins only: each daemon's pid file names a live process of that name.

    Every script on a host begins with an Open vSwitch check; asking the daemons (``ovs-vsctl show``,
    ``ovs-appctl version``) costs two processes and a round trip to each, for every script of a
    class deploying at once.  When this cheaper test fails (a daemon gone, or pid files elsewhere),
    the scripts ask the daemons themselves.
    """
    tests = [f"read -r p < {OVS_RUNDIR}/{d}.pid && read -r c < /proc/$p/comm && [ \"$c\" = {d[:15]} ]"
             for d in daemons]
    return "{ " + " && ".join(tests) + "; } 2>/dev/null"


def ovs_preflight(host: str) -> str:
    """Shell: fail at once, saying so, when Open vSwitch (its database or its switch daemon) is down.

    Without this a dead ``ovs-vswitchd`` makes every ``ovs-vsctl add-port`` wait for the step's whole
    timeout, and the user reads "exit status 124".
    """
    msg = f"Open vSwitch is not running on {host}"
    return (f"{{ {ovs_daemons_up()} || {{ ovs-vsctl --timeout=5 show >/dev/null 2>&1 && "
            f"ovs-appctl -T 5 -t ovs-vswitchd version >/dev/null 2>&1; }}; }} || "
            f"{{ echo {q(msg)} >&2; exit {OVS_DOWN_EXIT}; }}")


def ovs_alive() -> str:
    """Shell: set ``ovs_ok`` to 1 when Open vSwitch answers (removals skip OVS calls otherwise)."""
    return (f"if {ovs_daemons_up(('ovsdb-server',))} || ovs-vsctl --timeout=5 show >/dev/null 2>&1; "
            "then ovs_ok=1; else ovs_ok=0; fi")


def qemu_argv(vm: dict, overlay_abs: str, accel: str) -> list:
    """The QEMU command line of a VM dict: its disk, its seed (read-only), a NIC per interface,
    VNC that asks for a password, the serial console on a socket (logged), QMP on a socket.

    ``-S``: the guest's CPU waits for QMP ``cont`` (``start_guest``), sent once the guest's
    scheduling group is niced and VNC has its password: a booting guest never competes at full
    weight with the scripts still deploying."""
    vm_id = int(vm["vm_id"])
    flavor = vm.get("flavor") or {}
    ram_mb = int(float(flavor.get("ram_gb", 0.5)) * 1024)
    cores = int(flavor.get("cores", 1))
    name = naming.qemu_name(vm_id)
    argv = ["qemu-system-x86_64", "-name", f"{name},process={name}", *accel_args(accel),
            "-m", str(ram_mb), "-smp", str(cores),
            "-smbios", f"type=1,serial={qemu_value(vm['name'])}",
            "-drive", f"file={qemu_value(overlay_abs)},if=virtio,format=qcow2",
            "-drive", f"file={naming.vm_seed_image(vm_id)},if=virtio,format=raw,readonly=on",
            "-nic", "none"]
    for idx, iface in enumerate(vm["interfaces"]):
        tap = naming.tap_name(vm_id, idx)
        argv += ["-netdev", f"tap,id=net{idx},ifname={tap},script=no,downscript=no",
                 "-device", f"virtio-net-pci,netdev=net{idx},mac={iface['mac']}"]
    sock, serial = naming.vm_serial_socket(vm_id), naming.vm_serial_log(vm_id)
    argv += ["-vnc", f":{naming.vnc_display(int(vm['vnc_port']))},password=on",
             "-chardev", f"socket,id=ser0,path={sock},server=on,wait=off,logfile={serial},logappend=on",
             "-serial", "chardev:ser0",
             "-qmp", f"unix:{naming.vm_qmp_socket(vm_id)},server=on,wait=off",
             "-S", "-daemonize", "-pidfile", naming.vm_pidfile(vm_id)]
    return argv


def _qemu_marker(vm_id: int) -> str:
    return f"-name {naming.qemu_name(vm_id)},"


# --- kinds -----------------------------------------------------------------------------

def _running_vms(view) -> Iterable[dict]:
    return view.running_vms()


def _vm_interfaces(vm: dict) -> list:
    return vm.get("interfaces") or []


@register
class QemuProcess(Kind):
    """A VM's QEMU process, recognised by its command line (``-name cr-vm{id},``)."""

    name = "qemu"
    label = "QEMU of VM"

    def scan(self, ctx: HostContext, host: str) -> str:
        return (f"pgrep -a -f -- {q(qemu_pattern())} "
                "| sed -n 's/^\\([0-9]*\\) .*-name cr-vm\\([0-9]*\\),.*/qemu \\2 \\1/p' || true")

    def parse(self, host, fields):
        vm_id = int_or_none(fields[0]) if fields else None
        return Found(Key(self.name, host, vm_id=vm_id), fields[1] if len(fields) > 1 else "") \
            if vm_id is not None else None

    def owned(self, view):
        return (Key(self.name, vm["worker_ip"], vm_id=int(vm["vm_id"])) for vm in view.all_vms())

    def expected(self, view):
        return {Key(self.name, vm["worker_ip"], vm_id=int(vm["vm_id"])): "" for vm in _running_vms(view)}

    def remove(self, ctx, host, keys):
        return [kill_vm_everywhere(k.vm_id) for k in keys]

    def describe(self, key):
        return f"QEMU of VM {key.vm_id}"


@register
class VMStateFiles(Kind):
    """A VM's files in the state folder (pid file, serial log and socket, monitor, seed, console lock)."""

    name = "vmfiles"
    label = "files of VM"

    def scan(self, ctx, host):
        return (f"for f in {q(naming.STATE_DIR)}/vm[0-9]*.*; do [ -e \"$f\" ] || continue; "
                "echo \"vmfiles ${f##*/}\"; done")

    def parse(self, host, fields):
        m = naming.VM_STATE_RE.fullmatch(fields[0]) if fields else None
        return Found(Key(self.name, host, vm_id=int(m.group(1)))) if m else None

    def owned(self, view):
        return (Key(self.name, vm["worker_ip"], vm_id=int(vm["vm_id"])) for vm in view.all_vms())

    def expected(self, view):
        return {Key(self.name, vm["worker_ip"], vm_id=int(vm["vm_id"])): "" for vm in _running_vms(view)}

    def remove(self, ctx, host, keys):
        return [remove_vm_files(k.vm_id) for k in keys]

    def describe(self, key):
        return f"state files of VM {key.vm_id}"


@register
class Tap(Kind):
    """A TAP device ``tap{vm_id}_{i}`` (made by QEMU)."""

    name = "tap"
    label = "TAP"

    def scan(self, ctx, host):
        return ("ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | sed 's/@.*//' "
                "| grep -E '^tap[0-9]+_[0-9]+$' | sed 's/^/tap /' || true")

    def parse(self, host, fields):
        m = naming.TAP_RE.fullmatch(fields[0]) if fields else None
        return Found(Key(self.name, host, vm_id=int(m.group(1)), name=fields[0])) if m else None

    def owned(self, view):
        for vm in view.all_vms():
            for i in range(max(len(_vm_interfaces(vm)), 1)):
                yield Key(self.name, vm["worker_ip"], vm_id=int(vm["vm_id"]), name=naming.tap_name(vm["vm_id"], i))

    def expected(self, view):
        return {Key(self.name, vm["worker_ip"], vm_id=int(vm["vm_id"]), name=naming.tap_name(vm["vm_id"], i)): ""
                for vm in _running_vms(view) for i in range(len(_vm_interfaces(vm)))}

    def remove(self, ctx, host, keys):
        return [f"ip link del {q(k.name)} 2>/dev/null || true" for k in keys]


@register
class TapPort(Kind):
    """A VM's TAP as a port of br-int (tag = the interface's VLAN), marked with this system's external id."""

    name = "port"
    label = "OVS port"

    def scan(self, ctx, host):
        return marked_ports_scan(ctx.config.bridge, "port", "tap")

    def parse(self, host, fields):
        m = naming.TAP_RE.fullmatch(fields[0]) if fields else None
        if not m:
            return None
        return Found(Key(self.name, host, vm_id=int(m.group(1)), name=fields[0]), fields[1] if len(fields) > 1 else "")

    def owned(self, view):
        return Tap.owned(self, view)

    def expected(self, view):
        out = {}
        for vm in _running_vms(view):
            for i, iface in enumerate(_vm_interfaces(vm)):
                if iface.get("vlan_id") is not None:
                    out[Key(self.name, vm["worker_ip"], vm_id=int(vm["vm_id"]),
                            name=naming.tap_name(vm["vm_id"], i))] = str(iface["vlan_id"])
        return out

    def remove(self, ctx, host, keys):
        return [del_ports(ctx.config.bridge, [k.name for k in keys])]

    def describe(self, key):
        return f"OVS port {key.name}"


def marked_ports_scan(bridge: str, kind_name: str, prefix: str) -> str:
    """Shell: ``<kind_name> <port> <tag|->`` for each port of ``bridge`` named ``prefix*`` with our mark."""
    return (f"ovs-vsctl --timeout=5 --format=csv --data=bare --no-headings --columns=name,tag,external_ids "
            f"find port external_ids:{naming.MARK}!=none 2>/dev/null "
            f"| awk -F, -v k={q(kind_name)} -v p={q(prefix)} "
            "'index($1, p) == 1 { t = ($2 == \"\") ? \"-\" : $2; print k, $1, t }' || true")


# --- scripts ------------------------------------------------------------------------------

def del_ports(bridge: str, ports: list) -> str:
    """Shell: remove ports from the bridge's database (skipped when it is down: ``ovs_ok=0``).

    ``--no-wait``: a dead ``ovs-vswitchd`` never makes a removal wait; it applies the change when it
    comes back.
    """
    argv = ["ovs-vsctl", "--timeout=5", "--no-wait"]
    for port in ports:
        argv += ["--", "--if-exists", "del-port", bridge, port]
    return f"[ \"${{ovs_ok:-1}}\" = 0 ] || {join(argv)} || true"


def kill_vm(vm_id: int, graceful: bool = True) -> str:
    """Shell: end the VM's QEMU (the pid file's process, checked against its command line).

    ``graceful``: QMP ``quit`` first, so QEMU writes its disks out (a guest's last writes may still
    sit in QEMU's qcow2 caches: a plain SIGKILL loses them) and exits; SIGKILL follows if it has
    not ended within 5 s.  Not graceful (the disk is about to be deleted): SIGKILL at once.
    """
    if not graceful:
        return stop_by_pidfile(naming.vm_pidfile(vm_id), _qemu_marker(vm_id), signal="KILL", wait_s=STOP_WAIT_S)
    qmp = naming.vm_qmp_socket(vm_id)
    quit_ = (f"{{ [ -S {q(qmp)} ] && printf '%s\\n' '{{\"execute\":\"qmp_capabilities\"}}' "
             f"'{{\"execute\":\"quit\"}}' | timeout 3 socat -t 3 - {q('UNIX-CONNECT:' + qmp)} >/dev/null 2>&1; }}")
    return stop_by_pidfile(naming.vm_pidfile(vm_id), _qemu_marker(vm_id), wait_s=STOP_WAIT_S, first=quit_)


def qemu_pattern(vm_id: Optional[int] = None) -> str:
    """``pgrep -f`` pattern of this system's QEMU processes (of one VM, or of any)."""
    vm = str(int(vm_id)) if vm_id is not None else "[0-9]+"
    return f"^qemu-system[^ ]* .*-name cr-vm{vm},.*-pidfile {naming.STATE_DIR}/vm"


def kill_vm_everywhere(vm_id: int) -> str:
    """Shell: SIGKILL every QEMU running as this VM, pid file or not (orphan cleanup); wait."""
    return (f"for pid in $(pgrep -f -- {q(qemu_pattern(vm_id))}); do kill -9 \"$pid\" 2>/dev/null; "
            f"{wait_gone(STOP_WAIT_S)}; done; " + kill_vm(vm_id, graceful=False))


def remove_vm_files(vm_id: int, keep_log: bool = False, keep_lock: bool = False) -> str:
    keep = {naming.vm_serial_log(vm_id)} if keep_log else set()
    if keep_lock:
        keep.add(naming.vm_lock(vm_id))
    return "rm -f " + " ".join(q(f) for f in naming.vm_state_files(vm_id) if f not in keep)


LOCK_FD = 8
LOCK_BUSY_EXIT = 9


def take_vm_lock(vm_id: int, wait_s: int) -> str:
    """Shell: hold the VM's lock (fd 8) until the script ends: its start and its stop never overlap,
    so a stop (a rollback after the manager died) waits for a start still running on the worker.
    Nothing the script leaves running may keep fd 8 (QEMU gets ``8>&-``)."""
    msg = f"VM {vm_id} is being started or stopped by another command on this worker"
    return (f"if [ -d {q(naming.STATE_DIR)} ]; then exec {LOCK_FD}>{q(naming.vm_lock(vm_id))}; "
            f"flock -w {int(wait_s)} {LOCK_FD} || {{ echo {q(msg)} >&2; exit {LOCK_BUSY_EXIT}; }}; fi")


def vm_teardown(vm: dict, bridge: str, tap_count: Optional[int] = None, keep_log: bool = False,
                rules: bool = True, graceful: bool = True, keep_lock: bool = False, ports: bool = True) -> list:
    """Shell lines that remove everything of a VM on its worker except its disk (idempotent).

    ``keep_log``: keep the serial log (a VM stopped or restarted keeps what it printed).
    ``rules=False`` (a relaunch): leave the VM's OpenFlow rules to the launch, which replaces them
    in one atomic bundle.  ``graceful``: see ``kill_vm``.  ``keep_lock``: the launch holds it.
    ``ports=False`` (a launch): the TAPs' OVS ports are removed only when a TAP is still there (a
    restart; a fresh deploy runs no ``ovs-vsctl`` for it).  Removing and re-adding a port in one
    transaction would keep its old OpenFlow port on the old TAP: Open vSwitch sees the same name.
    """
    vm_id = int(vm["vm_id"])
    count = tap_count if tap_count is not None else max(len(_vm_interfaces(vm)), 1)
    taps = [naming.tap_name(vm_id, i) for i in range(count)]
    lines = [kill_vm(vm_id, graceful)]
    if rules:
        lines.append(f"[ \"${{ovs_ok:-1}}\" = 0 ] || {vm_firewall.remove_vm_rules(bridge, vm_id)} || true")
    lines += [*capture.teardown_lines(vm_id, count), *impairments.teardown_lines(vm_id, count)]
    if ports:
        lines.append(del_ports(bridge, taps))
    else:   # a restart: its old ports go in a transaction of their own, before their TAPs do
        lines.append(f"if {' || '.join(link_exists(t) for t in taps)}; then {del_ports(bridge, taps)}; fi")
    lines += [f"if {link_exists(t)}; then ip link del {q(t)} 2>/dev/null || true; fi" for t in taps]
    if rules:
        lines.append(f"[ \"${{ovs_ok:-1}}\" = 0 ] || {{\n{vm_firewall.remove_trunk_rules_if_unused(bridge)}\n}}")
    return [*lines, remove_vm_files(vm_id, keep_log, keep_lock)]


PASSWORD_CHECK = ("IFS= read -r pw || true\n"
                  "case \"$pw\" in ''|*[!A-Za-z0-9]*) echo 'no usable VM password on stdin' >&2; exit 5;; esac")


def make_seed(vm: dict, internet_vlan: int) -> list:
    """Shell lines that write the VM's NoCloud seed disk (vfat ``cidata``, no mounts); needs ``$pw``.

    The script has removed the old seed disk (``vm_teardown``) and set umask 077: ``mkfs.vfat``
    makes it 0600.  The password goes in with ``printf`` (a shell builtin: no process)."""
    vm_id = int(vm["vm_id"])
    image = q(naming.vm_seed_image(vm_id))
    files = seed.seed_files(vm, Flavor.name_of(vm) or "", internet_vlan)
    lines = [f"d=$(mktemp -d {q(naming.STATE_DIR)}/seed.XXXXXX)"]
    for name, content in files.items():
        parts = content.split(seed.PASSWORD_TOKEN)
        fmt = "%s" + "%s%s" * (len(parts) - 1)
        args = [q(parts[0])] + [a for part in parts[1:] for a in ('"$pw"', q(part))]
        lines.append(f"printf '{fmt}' {' '.join(args)} > \"$d\"/{name}")
    lines += [f"mkfs.vfat -C -n cidata {image} 2048 >/dev/null 2>&1 || {{ rm -rf \"$d\"; "
              "echo 'cannot make the seed disk (mkfs.vfat)' >&2; exit 7; }",
              f"MTOOLS_SKIP_CHECK=1 mcopy -oi {image} " + " ".join(f"\"$d\"/{n}" for n in files) + " ::",
              "rm -rf \"$d\""]
    return lines


def start_guest(vm_id: int) -> str:
    """Shell: over QMP, give QEMU's VNC server the VM's password (``$pw``; until then it refuses
    everyone), then let the guest's CPU run (QEMU starts it stopped: ``-S``)."""
    qmp = q(f"UNIX-CONNECT:{naming.vm_qmp_socket(vm_id)}")
    req = ('{"execute":"qmp_capabilities"}\\n'
           '{"execute":"set_password","arguments":{"protocol":"vnc","password":"%s"}}\\n'
           '{"execute":"cont"}\\n')
    ok = "*'\"return\": {}'*" * 3
    return (f"resp=$(printf '{req}' \"$pw\" | socat -t 5 - {qmp} 2>&1) || true\n"
            f"case \"$resp\" in {ok}) ;; "
            "*) echo \"could not set the VNC password and start the guest: $resp\" >&2; exit 6;; esac")


@dataclass(frozen=True)
class LaunchSettings:
    """What a VM's start script needs from the cluster config (builders stay pure)."""

    bridge: str = "br-int"
    accel: str = "kvm:tcg"
    internet: dict = field(default_factory=lambda: {"vlan": naming.INTERNET_VLAN, "cidr": "10.60.7.0/24",
                                                    "gateway": "10.60.7.1", "uplink": "ens3"})
    network_node: str = ""
    nice: int = 0

    @classmethod
    def of(cls, config) -> LaunchSettings:
        return cls(config.bridge, config.qemu_accel, dict(config.internet), config.network_node,
                   int(config.setting("qemu_nice")))

    @property
    def edge(self) -> vm_firewall.InternetEdge:
        return vm_firewall.internet_edge(self.internet)


def ip_lines(commands: list) -> list:
    """Shell lines running ``ip`` commands (without the ``ip``): one ``ip -batch`` for several
    (a here-document: no process but ``ip``), the plain command for one.  The commands are not
    shell-quoted (a here-document is not parsed): only names of ``naming``'s own patterns go in."""
    if len(commands) <= 1:
        return [f"ip {c}" for c in commands]
    return ["ip -batch - <<'CR_IP'", *commands, "CR_IP"]


def make_taps(vm: dict) -> list:
    """Shell lines: every TAP of the VM made before QEMU (which attaches to them), still down."""
    vm_id = int(vm["vm_id"])
    return ip_lines([f"tuntap add dev {naming.tap_name(vm_id, i)} mode tap vnet_hdr"
                     for i in range(len(_vm_interfaces(vm)))])


def plug_ports(vm: dict, settings: LaunchSettings) -> list:
    """Shell lines: the VM's TAPs that have a VLAN on br-int (tag, our external id, internet ones
    ``protected``), then the VM's OpenFlow rules in one atomic bundle, with the worker's trunk filter
    (under the worker's trunk lock) when the VM has an internet port; idempotent.  Every earlier port
    of the VM's TAPs goes in the same transaction."""
    vm_id, bridge, edge = int(vm["vm_id"]), settings.bridge, settings.edge
    ovs = ["ovs-vsctl", "--timeout=10"]
    plugged = {port.tap for port in vm_firewall.ports_of(vm)}
    for i in range(len(_vm_interfaces(vm))):           # a port left by an earlier VM on a TAP with no VLAN now
        if naming.tap_name(vm_id, i) not in plugged:
            ovs += ["--", "--if-exists", "del-port", bridge, naming.tap_name(vm_id, i)]
    for port in vm_firewall.ports_of(vm):
        ovs += ["--", "--if-exists", "del-port", bridge, port.tap,
                "--", "add-port", bridge, port.tap, f"tag={port.vlan}",
                "--", "set", "port", port.tap, f"external_ids:{naming.MARK}={naming.vm_mark(vm_id)}",
                *vm_firewall.port_columns(port, edge)]
    trunk = vm["worker_ip"] != settings.network_node and any(p.vlan == edge.vlan for p in vm_firewall.ports_of(vm))
    rules = vm_firewall.vm_rules(bridge, vm, edge, trunk_filter=trunk)
    if trunk:
        rules = "\n".join(["(", "flock 9", rules, f") 9>{q(vm_firewall.TRUNK_LOCK)}"])
    return [join(ovs) if len(ovs) > 2 else ":", rules]


def up_taps(vm: dict) -> list:
    vm_id = int(vm["vm_id"])
    return ip_lines([f"link set {naming.tap_name(vm_id, i)} up" for i in range(len(_vm_interfaces(vm)))])


def impairment_lines(vm: dict, impairments_by_index: Optional[dict]) -> list:
    """Shell lines giving the VM's TAPs their links' impairments (none: no line at all)."""
    if not impairments_by_index:
        return []
    lines = impairments.program_lines()
    for index, imp in sorted(impairments_by_index.items()):
        lines += impairments.apply_lines(vm["worker_ip"], int(vm["vm_id"]), index, imp)
    return lines


def autogroup_nice(nice: int) -> list:
    """Shell lines: the started QEMU's scheduling group (``$pid``'s) at ``nice`` too (none at 0).

    Where the kernel groups processes by session (``CONFIG_SCHED_AUTOGROUP``, on by default), the
    CPU is shared fairly between sessions first and a nice level only counts inside one; QEMU's
    ``-daemonize`` starts a session of its own, so ``nice`` alone leaves every guest as strong as
    sshd or OVS.  A kernel without autogroups has no such file: nothing to do.
    """
    if not nice:
        return []
    group = '"/proc/$pid/autogroup"'
    return [f"if [ -f {group} ]; then {{ echo {int(nice)} > {group}; }} 2>/dev/null || true; fi"]


def launch_vm_command(vm: dict, home: str, settings: LaunchSettings, password: str,
                      impairments_by_index: Optional[dict] = None) -> HostCommand:
    """One root script on the VM's worker: clear leftovers, make the seed and the TAPs (on br-int with
    their rules, still down), start QEMU on them, give them their links' impairments
    (``impairments_by_index``: interface index -> impairment), bring them up, set the VNC password.

    The VM's password comes on stdin.  Prints the QEMU pid as its last line.  The guest runs at
    ``settings.nice`` (below the host's own daemons: sshd, OVS), its scheduling group too
    (``autogroup_nice``, before its CPU starts: ``start_guest``).  It holds the VM's lock throughout
    (``take_vm_lock``); what it makes is readable by root only (umask 077, the disk made 0600).
    """
    if not password:
        raise ValueError("a VM is launched with its password (the script reads it on stdin)")
    vm_id = int(vm["vm_id"])
    worker = vm["worker_ip"]
    overlay = home_path(vm["qcow_image"], home)
    pidfile = q(naming.vm_pidfile(vm_id))
    nice = ["nice", "-n", str(int(settings.nice))] if settings.nice else []
    script = "\n".join([
        PASSWORD_CHECK,
        "set -e",
        ovs_preflight(worker),
        f"[ -d {q(naming.STATE_DIR)} ] || mkdir -p {q(naming.STATE_DIR)}; chmod 700 {q(naming.STATE_DIR)}",
        "umask 077",
        take_vm_lock(vm_id, 30),
        f"test -f {q(overlay)} || {{ echo {q('overlay ' + overlay + ' is missing')} >&2; exit 2; }}",
        f"chmod 600 {q(overlay)} && chmod 700 {q(posixpath.dirname(overlay))}",  # disks made before too
        *vm_teardown(vm, settings.bridge, keep_log=True, rules=False, keep_lock=True, ports=False),
        *make_seed(vm, int(settings.internet["vlan"])),
        *make_taps(vm),
        # while QEMU starts: the TAPs stay down until both end; a failing script still waits for it (trap)
        "(", *plug_ports(vm, settings), ") & wiring=$!",
        "trap 'wait \"$wiring\" 2>/dev/null || true' EXIT",
        join(nice + qemu_argv(vm, overlay, settings.accel)) + f" {LOCK_FD}>&-",
        "wait \"$wiring\" || { echo 'could not put the VM on br-int with its rules' >&2; exit 8; }",
        *impairment_lines(vm, impairments_by_index),
        *up_taps(vm),
        f"pid=; {{ read -r pid < {pidfile}; }} 2>/dev/null || true",
        '[ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || { echo "QEMU exited right after starting" >&2; exit 3; }',
        *autogroup_nice(settings.nice),  # before the guest runs (-S): its CPU is low from its first instruction
        start_guest(vm_id),
        'echo "$pid"',
    ])
    return HostCommand(worker, script, sudo=True, timeout=60, step=f"start VM {vm_id} ({vm['name']})",
                       action="start_vm", target=vm_id, stdin=password)


def stop_vm_command(vm: dict, bridge: str, keep_log: bool = False, graceful: bool = False) -> HostCommand:
    """Root script: end the VM, remove its TAPs, rules and state files (idempotent; works with OVS down).

    ``keep_log``: a VM that is only stopped keeps its serial log.  ``graceful``: its disk is kept and
    must hold the guest's last writes (see ``kill_vm``); a delete or a rollback needs neither.
    """
    vm_id = int(vm["vm_id"])
    script = "\n".join([ovs_alive(), take_vm_lock(vm_id, 20),
                         *vm_teardown(vm, bridge, keep_log=keep_log, graceful=graceful)])
    return HostCommand(vm["worker_ip"], script, sudo=True, timeout=30,
                       step=f"stop VM {vm_id} ({vm['name']})", action="stop_vm", target=vm_id)


def wire_vm_command(vm: dict, settings: LaunchSettings) -> HostCommand:
    """Root script: put a running VM's TAPs back on br-int with their tags and rules (idempotent)."""
    vm_id = int(vm["vm_id"])
    script = "\n".join(["set -e", ovs_preflight(vm["worker_ip"]), *plug_ports(vm, settings), *up_taps(vm)])
    return HostCommand(vm["worker_ip"], script, sudo=True, timeout=30, step=f"wire VM {vm_id} ({vm['name']})",
                       action="wire_vm", target=vm_id)
