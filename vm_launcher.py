"""What runs on a worker for a VM: TAPs on br-int, QEMU, and their removal.

A VM is known on its worker only by its ID (see ``naming``): QEMU runs with
``-name cr-vm{id},process=cr-vm{id}`` and ``-pidfile``, is stopped by that
pid after checking the pid still is that VM, and its TAPs are
``tap{id}_{i}``.  Every guest NIC exists, in order (eth0, eth1, ...), each
on its own TAP; a TAP whose interface has a VLAN is on ``br-int`` with that
tag, one without a VLAN is attached to nothing.

Launching is one SSH command that first removes leftovers of the same VM ID
(from a crash), so a retry is always possible.
"""
from __future__ import annotations

from typing import Optional

import naming
from hostcmd import HostCommand, home_path, join, q
from remote_executor import RemoteExecutor

STOP_WAIT_S = 5


def qemu_value(text: str) -> str:
    """Escape a value inside a QEMU ``key=value,...`` option."""
    return str(text).replace(",", ",,")


def accel_args(accel: str) -> list:
    """``kvm``, ``tcg`` or ``kvm:tcg`` (try KVM, fall back to TCG)."""
    args = []
    for a in accel.split(":"):
        args += ["-accel", a]
    return args


def qemu_argv(vm: dict, overlay_abs: str, accel: str) -> list:
    """The QEMU command line of a VM dict."""
    vm_id = int(vm["vm_id"])
    flavor = vm.get("flavor") or {}
    ram_mb = int(float(flavor.get("ram_gb", 0.5)) * 1024)
    cores = int(flavor.get("cores", 1))
    name = naming.qemu_name(vm_id)
    argv = ["qemu-system-x86_64", "-name", f"{name},process={name}", *accel_args(accel),
            "-m", str(ram_mb), "-smp", str(cores),
            "-smbios", f"type=1,serial={qemu_value(vm['name'])}",
            "-drive", f"file={qemu_value(overlay_abs)},if=virtio,format=qcow2",
            "-nic", "none"]
    for idx, iface in enumerate(vm["interfaces"]):
        tap = naming.tap_name(vm_id, idx)
        argv += ["-netdev", f"tap,id=net{idx},ifname={tap},script=no,downscript=no",
                 "-device", f"virtio-net-pci,netdev=net{idx},mac={iface['mac']}"]
    sock, serial = naming.vm_serial_socket(vm_id), naming.vm_serial_log(vm_id)
    argv += ["-vnc", f":{naming.vnc_display(int(vm['vnc_port']))}",
             "-chardev", f"socket,id=ser0,path={sock},server=on,wait=off,logfile={serial}",
             "-serial", "chardev:ser0",
             "-daemonize", "-pidfile", naming.vm_pidfile(vm_id)]
    return argv


def _kill_vm_by_pidfile(vm_id: int) -> str:
    """Shell: SIGKILL the VM's QEMU if the pid file still names that VM; wait until gone."""
    pidfile = q(naming.vm_pidfile(vm_id))
    marker = q(f"-name {naming.qemu_name(vm_id)},")
    return (f"if [ -f {pidfile} ]; then pid=$(cat {pidfile}); "
            f"if [ -n \"$pid\" ] && tr '\\0' ' ' 2>/dev/null < /proc/$pid/cmdline | grep -q -- {marker}; then "
            f"kill -9 \"$pid\" 2>/dev/null || true; n=0; while [ -d /proc/$pid ] && [ $n -lt {STOP_WAIT_S * 20} ]; do "
            f"sleep 0.05; n=$((n+1)); done; fi; rm -f {pidfile}; fi")


def _remove_taps(vm_id: int, count: int, bridge: str) -> str:
    taps = [naming.tap_name(vm_id, i) for i in range(count)]
    ovs = ["ovs-vsctl"]
    for tap in taps:
        ovs += ["--", "--if-exists", "del-port", bridge, tap]
    dels = "; ".join(f"{{ ip link del {q(t)} 2>/dev/null || true; }}" for t in taps)
    return f"{{ {join(ovs)} || true; }}; {dels}"


def launch_vm_command(vm: dict, home: str, bridge: str, accel: str) -> HostCommand:
    """One root script on the VM's worker: clear leftovers, start QEMU, wire the TAPs.

    Prints the QEMU pid as its last line.
    """
    vm_id = int(vm["vm_id"])
    overlay = home_path(vm["qcow_image"], home)
    ifaces = vm["interfaces"]
    ovs = ["ovs-vsctl"]
    for idx, iface in enumerate(ifaces):
        if iface.get("vlan_id") is not None:
            tap = naming.tap_name(vm_id, idx)
            ovs += ["--", "--if-exists", "del-port", bridge, tap,
                    "--", "add-port", bridge, tap, f"tag={int(iface['vlan_id'])}"]
    ups = "\n".join(f"ip link set {q(naming.tap_name(vm_id, i))} up" for i in range(len(ifaces)))
    pidfile = q(naming.vm_pidfile(vm_id))
    script = "\n".join([
        "set -e",
        f"mkdir -p {q(naming.STATE_DIR)}",
        f"test -f {q(overlay)} || {{ echo {q('overlay ' + overlay + ' is missing')} >&2; exit 2; }}",
        _kill_vm_by_pidfile(vm_id),
        _remove_taps(vm_id, len(ifaces), bridge),
        f"rm -f {q(naming.vm_serial_socket(vm_id))} {q(naming.vm_serial_log(vm_id))}",
        join(qemu_argv(vm, overlay, accel)),
        join(ovs) if len(ovs) > 1 else ":",
        ups,
        f"pid=$(cat {pidfile})",
        'kill -0 "$pid" 2>/dev/null || { echo "QEMU exited right after starting" >&2; exit 3; }',
        'echo "$pid"',
    ])
    return HostCommand(vm["worker_ip"], script, sudo=True, timeout=60,
                       step=f"start VM {vm_id} ({vm['name']})")


def stop_vm_command(vm: dict, bridge: str) -> HostCommand:
    """Root script: kill the VM by its pid file, remove its TAPs and console files."""
    vm_id = int(vm["vm_id"])
    script = "\n".join([
        _kill_vm_by_pidfile(vm_id),
        _remove_taps(vm_id, len(vm.get("interfaces") or []) or 1, bridge),
        f"rm -f {q(naming.vm_serial_socket(vm_id))} {q(naming.vm_serial_log(vm_id))}",
    ])
    return HostCommand(vm["worker_ip"], script, sudo=True, timeout=30,
                       step=f"stop VM {vm_id} ({vm['name']})")


def kill_orphan_qemu_command(worker: str, vm_id: int) -> HostCommand:
    """Root script: SIGKILL every QEMU that runs as ``cr-vm{vm_id}`` (pid file or not)."""
    marker = q(f"-name {naming.qemu_name(vm_id)},")
    script = ("for d in /proc/[0-9]*; do c=$(tr '\\0' ' ' 2>/dev/null < $d/cmdline) || continue; "
              f"case \"$c\" in qemu-system*) echo \"$c\" | grep -q -- {marker} && kill -9 ${{d#/proc/}};; esac; "
              "done; true")
    return HostCommand(worker, script, sudo=True, timeout=30, step=f"kill orphan QEMU of VM {vm_id}")


def scan_worker_command(worker: str, bridge: str, image_dir: str) -> HostCommand:
    """Root script listing what this system may have left on a worker.

    Output lines: ``pidfile <vm_id> <pid|->``, ``qemu <pid> <vm_id>``,
    ``tap <name>``, ``port <name>``, ``overlay <file>``.
    """
    state = q(naming.STATE_DIR)
    images = q(image_dir)
    script = "\n".join([
        f"for f in {state}/vm*.pid; do [ -f \"$f\" ] || continue; b=${{f##*/}}; id=${{b#vm}}; id=${{id%.pid}}; "
        "p=$(cat \"$f\" 2>/dev/null); [ -d /proc/\"$p\" ] || p=-; echo \"pidfile $id $p\"; done",
        "for d in /proc/[0-9]*; do c=$(tr '\\0' ' ' 2>/dev/null < $d/cmdline) || continue; "
        "case \"$c\" in qemu-system*'-name cr-vm'*) id=${c#*-name cr-vm}; id=${id%%,*}; "
        "echo \"qemu ${d#/proc/} $id\";; esac; done",
        "ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' | grep -E '^tap[0-9]+_[0-9]+$' "
        "| sed 's/^/tap /' || true",
        f"ovs-vsctl list-ports {q(bridge)} 2>/dev/null | grep -E '^tap[0-9]+_[0-9]+$' | sed 's/^/port /' || true",
        f"for f in {images}/*_img.qcow2; do [ -f \"$f\" ] && echo \"overlay ${{f##*/}}\"; done; true",
    ])
    return HostCommand(worker, script, sudo=True, timeout=30, step="scan worker")


class VMLauncher:
    """Starts and stops a slice's VMs on their workers."""

    def __init__(self, remote_executor: RemoteExecutor, bridge: Optional[str] = None,
                 accel: Optional[str] = None):
        self.executor = remote_executor
        config = remote_executor.config
        self.bridge = bridge or config.bridge
        self.accel = accel or config.qemu_accel
        self.image_dir = config.worker_image_dir

    def launch_command(self, vm: dict) -> HostCommand:
        return launch_vm_command(vm, self.executor.home(vm["worker_ip"]), self.bridge, self.accel)

    def stop_command(self, vm: dict) -> HostCommand:
        return stop_vm_command(vm, self.bridge)

    def kill_orphan_qemu_command(self, worker: str, vm_id: int) -> HostCommand:
        return kill_orphan_qemu_command(worker, vm_id)

    def scan_command(self, worker: str) -> HostCommand:
        return scan_worker_command(worker, self.bridge, home_path(self.image_dir, self.executor.home(worker)))
