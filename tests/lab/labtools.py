"""Helpers for lab tests: the product wired to the lab, and looks at hosts from outside."""
from __future__ import annotations

import re
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import naming
from database import Database
from deployment_api import DeploymentAPI
from orchestrator_api import OrchestratorAPI
from remote_executor import RemoteExecutor
from store.config import ClusterConfig

LAB_DIR = Path(__file__).resolve().parents[2] / "lab"
STATE = "/run/cloud-repositorio"
GATEWAYS = naming.GATEWAY_NAMESPACE  # the network node's namespace of the link gateways


def make_api(lab, db_path) -> OrchestratorAPI:
    """The real product against the lab: real SSH, real hosts."""
    config = ClusterConfig.load(str(LAB_DIR / "cluster.yaml"))
    executor = RemoteExecutor(config, batch_hosts={config.network_node})
    return OrchestratorAPI(Database(str(db_path)), DeploymentAPI(executor), config)


def host_of(lab, ip: str) -> str:
    """Lab host name (worker1...) of a management IP."""
    return next(name for name, addr in lab.hosts.items() if addr == ip)


def sh(lab, host: str, cmd: str, timeout: float = 60) -> str:
    """Run a shell command as root inside a lab host; return stdout."""
    return lab.exec(host, cmd, timeout=timeout).stdout


def console(lab, vm: dict, command: str, timeout: float = 30) -> tuple:
    """Run a command inside a VM through its serial console on its worker."""
    # The worker's /run is lab/state/hosts/<host>/run seen from here (the repo itself may be
    # invisible inside a host when it lives under /tmp or /home).
    host = host_of(lab, vm["worker_ip"])
    sock = LAB_DIR / "state" / "hosts" / host / "run" / "cloud-repositorio" / f"vm{vm['vm_id']}.sock"
    proc = subprocess.run([sys.executable, str(LAB_DIR / "vm_console.py"), str(sock), command,
                           "--timeout", str(timeout)], capture_output=True, text=True, timeout=timeout + 15)
    return proc.returncode, proc.stdout + proc.stderr


def console_ok(lab, vm, cmd: str, timeout: float = 40) -> str:
    """Run ``cmd`` in the VM's console; it must succeed (its output)."""
    rc, out = console(lab, vm, cmd, timeout=timeout)
    assert rc == 0, f"{vm['name']}: {cmd!r} failed:\n{out}"
    return out


def console_fails(lab, vm, cmd: str, timeout: float = 40) -> str:
    """Run ``cmd`` in the VM's console; it must fail (its output)."""
    rc, out = console(lab, vm, cmd, timeout=timeout)
    assert rc != 0, f"{vm['name']}: {cmd!r} should have failed:\n{out}"
    return out


def leases(lab, vlan: int) -> dict:
    """MAC -> IP from VLAN ``vlan``'s dnsmasq lease file on the network node."""
    text = sh(lab, "netnode", f"cat {STATE}/dnsmasq-vlan{vlan}.leases 2>/dev/null || true")
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3:
            out[parts[1].lower()] = parts[2]
    return out


KILLER = """
import os, signal, sys
sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[1] + "/tests/lab")
from labtools import make_api
api = make_api(None, sys.argv[2])
def progress(event):
    if event["phase"] == "vms":
        os.kill(os.getpid(), signal.SIGKILL)   # the manager dies in the middle of the deploy
api.deploy_slice(sys.argv[3], int(sys.argv[4]), progress=progress)
"""


def kill_manager_mid_deploy(db_path, owner: str, slice_id: int) -> int:
    """Deploy in another process that is SIGKILLed once VMs start; returns its exit status."""
    root = str(LAB_DIR.parent)
    proc = subprocess.run([sys.executable, "-c", KILLER, root, str(db_path), owner, str(slice_id)], timeout=120)
    return proc.returncode


KILL_AT = """
import os, signal, sys, threading
sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[1] + "/tests/lab")
from labtools import make_api
api = make_api(None, sys.argv[2])
op, at, user, sid = sys.argv[3], sys.argv[4], sys.argv[5], int(sys.argv[6])
counts = {}
def die():
    os.kill(os.getpid(), signal.SIGKILL)
def progress(event):
    phase = event["phase"]
    counts[phase] = counts.get(phase, 0) + 1
    if at == "connect" and phase == "connect" and counts[phase] == int(sys.argv[7]):
        die()  # every host reached, nothing made yet
    if at == "network" and phase == "network" and counts[phase] == int(sys.argv[7]):
        die()  # every VLAN made, no VM started
    if at == "first" and phase in ("vms", "start", "stop"):
        die()  # one VM done, the others on their way
real_run = api.executor.run
def run(cmd):
    if at == "in_flight" and cmd.action in ("start_vm", "stop_vm") and not counts.get("timer"):
        counts["timer"] = 1   # killed while the first scripts run on the workers
        threading.Timer(float(sys.argv[7]), die).start()
        real_run(cmd)
        die()  # a fast host finished before the timer: killed before its answer is recorded
    return real_run(cmd)
api.executor.run = run
if op == "deploy":
    api.deploy_slice(user, sid, progress=progress)
elif op == "start":
    api.start_vm(user, sid, progress=progress)
elif op == "stop":
    api.stop_vm(user, sid, progress=progress)
print("not killed")
"""


def kill_manager_at(db_path, op: str, at: str, user: str, slice_id: int, arg: float = 0) -> int:
    """Run a deploy, start or stop of the slice in another process, SIGKILLed at ``at``: ``connect`` (the
    ``arg``-th connect event), ``network`` (the ``arg``-th network event), ``first`` (the first VM done) or
    ``in_flight`` (``arg`` seconds after the first VM's script was handed out, or as soon as that script
    returns, whichever comes first: never after its answer is recorded).  Returns its exit status."""
    root = str(LAB_DIR.parent)
    proc = subprocess.run([sys.executable, "-c", KILL_AT, root, str(db_path), op, at, user, str(slice_id), str(arg)],
                          timeout=180)
    return proc.returncode


def wait_for_leases(lab, wanted: dict, timeout: float = 120) -> dict:
    """Wait until every (vlan, mac) in ``wanted`` holds a lease; return (vlan, mac) -> IP."""
    deadline = time.monotonic() + timeout
    got: dict = {}
    while time.monotonic() < deadline:
        for vlan in {v for v, _ in wanted}:
            table = leases(lab, vlan)
            for v, mac in wanted:
                if v == vlan and mac in table:
                    got[(v, mac)] = table[mac]
        if len(got) == len(wanted):
            return got
        time.sleep(1)
    missing = [k for k in wanted if k not in got]
    raise AssertionError(f"no DHCP lease within {timeout} s for {missing}; got {got}")


def wait_guest_configured(lab, vms_ifaces: list, timeout: float = 60) -> None:
    """Wait until each (vm, iface) printed its ``LAB-DHCP <iface> ip=`` line (address applied)."""
    deadline = time.monotonic() + timeout
    pending = list(vms_ifaces)
    while pending and time.monotonic() < deadline:
        pending = [(vm, i) for vm, i in pending if f"LAB-DHCP {i} ip=" not in serial_log(lab, vm)]
        if pending:
            time.sleep(0.5)
    assert not pending, f"guests never applied their lease: {[(v['name'], i) for v, i in pending]}"


def serial_log(lab, vm: dict) -> str:
    return sh(lab, host_of(lab, vm["worker_ip"]), f"cat {STATE}/vm{vm['vm_id']}.serial 2>/dev/null || true")


def wait_serial(lab, vm, text: str, after: int = 0, timeout: float = 180) -> int:
    """Wait until the VM's console log shows ``text`` past offset ``after``; return the log's length."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = serial_log(lab, vm)
        if text in log[after:]:
            return len(log)
        time.sleep(1)
    raise AssertionError(f"VM {vm['vm_id']} never printed {text!r} after offset {after}")


def rfb_banner(ip: str, port: int, timeout: float = 10) -> bytes:
    with socket.create_connection((ip, port), timeout=timeout) as s:
        s.settimeout(timeout)
        return s.recv(12)


def host_footprint(lab) -> dict:
    """What this system's naming finds on every lab host (for "nothing left" checks)."""
    out = {}
    for host in ("worker1", "worker2", "worker3"):
        out[host] = {
            "qemu": sh(lab, host, "pgrep -af '^qemu-system' || true").strip(),
            "taps": re.findall(r"tap\d+_\d+", sh(lab, host, "ip -o link show")),
            "ports": [p for p in sh(lab, host, "ovs-vsctl list-ports br-int").split() if p.startswith("tap")],
            "pidfiles": sh(lab, host, f"ls {STATE} 2>/dev/null || true").split(),
            "overlays": [f for f in sh(lab, host, "ls /home/ubuntu/vm_images 2>/dev/null || true").split()
                         if f.endswith("_img.qcow2")],
        }
    out["netnode"] = {
        "ports": [p for p in sh(lab, "netnode", "ovs-vsctl list-ports br-int").split()
                  if p.startswith(("gw_vlan", "dhcp", "cr-trunk"))],
        "links": re.findall(r"^\d+: (gw_vlan\d+|cr-trunk|cr-trunk-br)[@:]",
                            sh(lab, "netnode", "ip -o link show") + node_gateways(lab), flags=re.M),
        "netns": sh(lab, "netnode", "ip netns list").split(),
        "dnsmasq": sh(lab, "netnode", "pgrep -a dnsmasq || true").strip(),
    }
    return out


def node_gateways(lab) -> str:
    """``ip -o link show type macvlan`` in the link gateways' namespace on the network node ('' without it)."""
    return sh(lab, "netnode", f"ip netns exec {GATEWAYS} ip -o link show type macvlan 2>/dev/null || true")


def node_files(lab) -> list:
    """This system's per-VLAN files on the network node (markers, dnsmasq pid/lease/log files)."""
    return [f for f in sh(lab, "netnode", f"ls {STATE} 2>/dev/null || true").split()
            if f.startswith(("vlan", "dnsmasq-vlan"))]


def vm_flows(lab, host: str) -> list:
    """OpenFlow rules of this system's VMs on a worker's br-int (cookie 0x4352_0000_<vm id>)."""
    out = sh(lab, host, "ovs-ofctl -O OpenFlow14 dump-flows br-int 2>/dev/null || true")
    return [line for line in out.splitlines() if "cookie=0x43520000" in line]


def assert_clean(lab, keep_overlays: set = frozenset()) -> None:
    """Nothing of any slice on any host (overlays in ``keep_overlays`` excepted)."""
    fp = host_footprint(lab)
    for host in ("worker1", "worker2", "worker3"):
        f = fp[host]
        assert not f["qemu"], f"{host}: QEMU still running: {f['qemu']}"
        assert not f["taps"], f"{host}: TAPs left: {f['taps']}"
        assert not f["ports"], f"{host}: OVS ports left: {f['ports']}"
        assert not [p for p in f["pidfiles"] if p.startswith("vm")], f"{host}: files left: {f['pidfiles']}"
        left = set(f["overlays"]) - set(keep_overlays)
        assert not left, f"{host}: overlays left: {left}"
    n = fp["netnode"]
    assert not n["ports"], f"netnode: ports left: {n['ports']}"
    assert not n["links"], f"netnode: gateways or trunk left: {n['links']}"
    assert not [x for x in n["netns"] if x.startswith(("ns-dhcp", GATEWAYS))], f"netnode: namespaces left: {n['netns']}"
    assert not n["dnsmasq"], f"netnode: dnsmasq left: {n['dnsmasq']}"


def forget_slice_by_hand(db, sid: int) -> None:
    """An instructor removes a slice from database.yaml by hand (its things on the hosts stay)."""
    with db.transaction() as data:
        s = data["slices"].pop(str(sid))
        user = data["users"][s["owner"]]
        user["slices"] = [x for x in user["slices"] if int(x) != sid]
        user["used_vms"] -= len(s["vms"])


def kill_sshd(lab, host: str) -> None:
    """Make a host unreachable over SSH: its sshd and every session killed, until connections are refused."""
    probe = f"timeout 1 bash -c 'exec 3<>/dev/tcp/{lab.hosts[host]}/22'"
    for _ in range(100):
        sh(lab, host, "kill -9 $(pgrep -x sshd) 2>/dev/null; true")
        if lab.exec(host, probe).returncode != 0:
            return
        time.sleep(0.1)
    raise AssertionError(f"sshd of {host} keeps answering")


def restart_sshd(lab, host: str) -> None:
    """Start a host's sshd again (as lab/host_init.sh does) and wait until it answers."""
    sh(lab, host, f"/usr/sbin/sshd -f /run/crlab/hosts/{host}/sshd_config -E /run/crlab/hosts/{host}/log/sshd.log")
    probe = f"timeout 1 bash -c 'exec 3<>/dev/tcp/{lab.hosts[host]}/22'"
    for _ in range(100):
        if lab.exec(host, probe).returncode == 0:
            return
        time.sleep(0.1)
    raise AssertionError(f"sshd of {host} did not come back")


# --- captures (SPEC §17) ---------------------------------------------------------------------

def pcap_packets(data: bytes) -> list:
    """The frames of a pcap stream (little- or big-endian, µs or ns), checking its structure."""
    magic = data[:4]
    order = {b"\xd4\xc3\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">", b"\x4d\x3c\xb2\xa1": "<",
             b"\xa1\xb2\x3c\x4d": ">"}.get(magic)
    assert order, f"not a pcap stream: {data[:24]!r}"
    _major, _minor, _zone, _sig, _snap, linktype = struct.unpack(order + "HHiIII", data[4:24])
    assert linktype == 1, linktype  # Ethernet
    frames, off = [], 24
    while off + 16 <= len(data):
        _sec, _frac, incl, _orig = struct.unpack(order + "IIII", data[off:off + 16])
        frames.append(data[off + 16:off + 16 + incl])
        off += 16 + incl
    assert off == len(data), "the pcap stream ends inside a record"
    return frames


def icmp_of(frame: bytes):
    """(ICMP type, source IP, destination IP) of an IPv4 ICMP Ethernet frame, else None."""
    if len(frame) < 34 or frame[12:14] != b"\x08\x00" or frame[23] != 1:
        return None
    ihl = (frame[14] & 0x0F) * 4
    return frame[14 + ihl], ".".join(map(str, frame[26:30])), ".".join(map(str, frame[30:34]))
