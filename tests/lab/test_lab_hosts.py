"""The local lab's hosts behave like separate machines (SPEC §6).

Everything the product relies on is checked the way the product uses it:
paramiko with host key checking ON against the lab's known_hosts, as user
ubuntu, with `sudo -n`. lab/exec.sh is used only to look at hosts from
outside. The last test (marked lab_last, sorted to the end of the session by
conftest.py) runs lab/down.sh and checks that nothing is left behind.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

paramiko = pytest.importorskip("paramiko")

# Same paths as conftest.py (not imported from it: several conftest.py files
# in one session cannot all be imported as "conftest").
REPO = Path(__file__).resolve().parents[2]
LAB_DIR = REPO / "lab"
UP = LAB_DIR / "up.sh"
DOWN = LAB_DIR / "down.sh"
CLUSTER_YAML = LAB_DIR / "cluster.yaml"
LAB_HOSTS = ("netnode", "worker1", "worker2", "worker3")

IMAGE = LAB_DIR / "image" / "labvm.qcow2"
STATE = LAB_DIR / "state"
WORKERS = ("worker1", "worker2", "worker3")


def ok(lab, host, cmd, timeout=60):
    """Run cmd over SSH on host; assert rc 0; return stdout."""
    rc, out, err = lab.run(host, cmd, timeout=timeout)
    assert rc == 0, f"{host}: {cmd!r} -> rc={rc}\nstdout: {out}\nstderr: {err}"
    return out


# --------------------------------------------------------------------------------------
# up.sh and the config it writes
# --------------------------------------------------------------------------------------


def test_up_is_idempotent_and_fast(lab):
    t0 = time.monotonic()
    proc = subprocess.run([str(UP)], capture_output=True, text=True, timeout=60)
    took = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "already up" in proc.stdout, proc.stdout
    print(f"\nlab/up.sh: first call in this session {lab.up_seconds:.2f} s, warm {took:.2f} s")
    assert took < 1.5, f"warm lab/up.sh took {took:.2f} s"


def test_cluster_yaml(lab):
    assert CLUSTER_YAML.read_text().startswith("# Written by lab/up.sh")
    assert lab["workers"] == ["10.250.0.11", "10.250.0.12", "10.250.0.13"]
    assert lab["network_node"] == "10.250.0.10"
    ssh = lab["ssh"]
    assert ssh["user"] == "ubuntu" and ssh["sudo"] is True
    assert ssh["accept_new_host_keys"] is False
    assert ssh["key_file"] == str(STATE / "ssh" / "id_ed25519")
    assert ssh["known_hosts"] == str(STATE / "ssh" / "known_hosts")
    assert lab["bridge"] == "br-int"
    assert lab["worker_image_dir"] == "~/vm_images"
    assert lab["flavor_images"] == {"cirros": str(IMAGE), "ubuntu": str(IMAGE.parent / "cloudvm.qcow2")}
    assert lab["qemu_nice"] == 10
    assert lab["qemu_accel"] == "kvm:tcg"
    assert lab["internet"] == {"vlan": 400, "cidr": "10.60.7.0/24", "gateway": "10.60.7.1", "uplink": "uplink0"}
    assert lab["lab"]["root"] == str(LAB_DIR)
    assert lab["lab"]["hosts"] == {
        "netnode": "10.250.0.10",
        "worker1": "10.250.0.11",
        "worker2": "10.250.0.12",
        "worker3": "10.250.0.13",
    }
    assert lab["lab"]["internet_host"] == "10.255.0.254"
    assert lab["lab"]["internet_http"] == "http://10.255.0.254:8080/"


# --------------------------------------------------------------------------------------
# SSH with host key checking
# --------------------------------------------------------------------------------------


def test_ssh_into_every_host_with_host_key_checking(lab):
    names = {}
    for host in LAB_HOSTS:
        names[host] = ok(lab, host, "hostname").strip()
        assert ok(lab, host, "id -un").strip() == "ubuntu"
    assert names == {h: h for h in LAB_HOSTS}


def test_unknown_host_key_is_refused(lab, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(paramiko.SSHException, match="not found in known_hosts"):
        lab.connect("worker1", known_hosts=str(empty))
    # A known_hosts that has worker2's key under worker1's address: refused too.
    keys = (STATE / "ssh" / "known_hosts").read_text().splitlines()
    w2_key = next(line for line in keys if line.startswith("10.250.0.12 ")).split(" ", 1)[1]
    wrong = tmp_path / "wrong_known_hosts"
    wrong.write_text(f"10.250.0.11 {w2_key}\n")
    with pytest.raises(paramiko.BadHostKeyException):
        lab.connect("worker1", known_hosts=str(wrong))


def test_openssh_client_config(lab):
    proc = subprocess.run(
        ["ssh", "-F", str(STATE / "ssh" / "config"), "-o", "BatchMode=yes", "worker2", "hostname"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "worker2"


def test_sudo_without_password(lab):
    for host in LAB_HOSTS:
        ok(lab, host, "sudo -n true")
        assert ok(lab, host, "sudo -n id -u").strip() == "0"
        ok(lab, host, "sudo -n ovs-vsctl br-exists br-int")


# --------------------------------------------------------------------------------------
# Each host is its own machine
# --------------------------------------------------------------------------------------


def test_each_host_has_its_own_ovs_database(lab):
    uuids = {h: ok(lab, h, "sudo -n ovs-vsctl get Open_vSwitch . _uuid").strip() for h in LAB_HOSTS}
    assert len(set(uuids.values())) == len(LAB_HOSTS), uuids
    for h in LAB_HOSTS:
        out = ok(lab, h, "sudo -n ovs-vsctl get Open_vSwitch . other_config:userspace-tso-enable")
        assert out.strip() == '"true"'
        assert ok(lab, h, "sudo -n ovs-vsctl list-ports br-int").split() == ["eth1"]
        assert ok(lab, h, "sudo -n ovs-vsctl get bridge br-int datapath_type").strip() == "netdev"
    br = "crlabt" + uuid.uuid4().hex[:6]
    ok(lab, "worker1", f"sudo -n ovs-vsctl add-br {br} -- set bridge {br} datapath_type=netdev")
    try:
        ok(lab, "worker1", f"sudo -n ovs-vsctl br-exists {br}")
        rc, _, _ = lab.run("worker2", f"sudo -n ovs-vsctl br-exists {br}")
        assert rc == 2, "a bridge added on worker1 is visible on worker2"
        assert br in ok(lab, "worker1", "sudo -n ovs-vsctl show")
        assert br not in ok(lab, "worker2", "sudo -n ovs-vsctl show")
    finally:
        lab.run("worker1", f"sudo -n ovs-vsctl --if-exists del-br {br}")


def test_each_host_has_its_own_home(lab):
    token = uuid.uuid4().hex
    ok(lab, "worker1", f"echo {token} > ~/x && test -d ~/vm_images")
    try:
        assert ok(lab, "worker1", "cat ~/x").strip() == token
        for other in ("worker2", "worker3", "netnode"):
            rc, _, _ = lab.run(other, "test -e ~/x")
            assert rc != 0, f"~/x written on worker1 is visible on {other}"
        # Nothing lands in the machine's own /home.
        assert not Path("/home/ubuntu/x").exists()
    finally:
        lab.run("worker1", "rm -f ~/x")


def test_each_host_has_its_own_ip_netns_list(lab):
    ns = "crlabt" + uuid.uuid4().hex[:6]
    ok(lab, "worker1", f"sudo -n ip netns add {ns}")
    try:
        assert ns in ok(lab, "worker1", "ip netns list")
        assert ns not in ok(lab, "worker2", "ip netns list")
        root = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert ns not in root
    finally:
        lab.run("worker1", f"sudo -n ip netns delete {ns}")


def test_each_host_has_its_own_processes_and_tmp(lab):
    for h in LAB_HOSTS:
        # PID namespace: the host's init is PID 1 and its sshd is the host's own.
        assert "sshd" in ok(lab, h, "ps -e -o comm=")
        assert ok(lab, h, "ps -o comm= -p 1").strip() in ("tini", "sleep", "bash")
    token = uuid.uuid4().hex
    ok(lab, "worker1", f"echo {token} > /tmp/crlab-{token}")
    try:
        rc, _, _ = lab.run("worker2", f"test -e /tmp/crlab-{token}")
        assert rc != 0
        assert not Path(f"/tmp/crlab-{token}").exists()
    finally:
        lab.run("worker1", f"rm -f /tmp/crlab-{token}")


def test_kvm_is_hidden(lab):
    if not Path("/dev/kvm").exists():
        pytest.skip("this machine has no /dev/kvm")
    # /dev/null (char 1:3) is bind-mounted over /dev/kvm inside the hosts.
    assert ok(lab, "worker1", "stat -L -c %t:%T /dev/kvm").strip() == "1:3"


# --------------------------------------------------------------------------------------
# Routing: nothing leaves the machine; the netnode reaches the stand-in internet
# --------------------------------------------------------------------------------------


def test_no_default_route_on_workers(lab):
    for h in WORKERS:
        assert ok(lab, h, "ip route show default").strip() == "", h
    assert "via 10.255.0.254 dev uplink0" in ok(lab, "netnode", "ip route show default")
    # The stand-in internet has no route back to the VMs' internet VLAN.
    proc = lab.exec("inet", "ip route get 10.60.7.5")
    assert proc.returncode != 0, proc.stdout
    assert lab.exec("inet", "ip route show default").stdout.strip() == ""


def test_netnode_reaches_the_internet_host(lab):
    ok(lab, "netnode", "ping -c 1 -W 2 10.255.0.254")
    body = ok(
        lab,
        "netnode",
        'python3 -c "import urllib.request as u; '
        "print(u.urlopen('http://10.255.0.254:8080/', timeout=5).read().decode(), end='')\"",
    )
    assert body == "you are 10.255.0.1\n"
    # Workers have no route there at all.
    rc, _, _ = lab.run("worker1", "ping -c 1 -W 1 10.255.0.254")
    assert rc != 0


# --------------------------------------------------------------------------------------
# VMs: boot, DHCP across the trunk, VLAN isolation, VNC
# --------------------------------------------------------------------------------------

DNSMASQ = (
    "dnsmasq --conf-file=/dev/null --port=0 --no-ping --interface=dhcp100-i --bind-interfaces"
    " --except-interface=lo --dhcp-range=192.168.100.10,192.168.100.250,255.255.255.0,1h"
    " --dhcp-option=option:router,192.168.100.1 --dhcp-leasefile=/run/t.leases --pid-file=/run/t.pid"
)

# name, host, vlan, mac, vnc display
VMS = [
    ("t1", "worker1", 100, "52:54:00:aa:00:01", 1),
    ("t2", "worker2", 100, "52:54:00:aa:00:02", 2),
    ("t3", "worker2", 101, "52:54:00:aa:00:03", 3),
]


def _setup_netnode(lab):
    ok(
        lab,
        "netnode",
        " && ".join(
            [
                "sudo -n ovs-vsctl --may-exist add-port br-int gw_vlan100 tag=100"
                " -- set interface gw_vlan100 type=internal",
                "sudo -n ip addr replace 192.168.100.1/24 dev gw_vlan100",
                "sudo -n ip link set gw_vlan100 up",
                "sudo -n ip netns add ns-dhcp-vlan100",
                "sudo -n ip link add dhcp100-o type veth peer name dhcp100-i",
                "sudo -n ovs-vsctl add-port br-int dhcp100-o tag=100",
                "sudo -n ip link set dhcp100-o up",
                "sudo -n ip link set dhcp100-i netns ns-dhcp-vlan100",
                "sudo -n ip netns exec ns-dhcp-vlan100 ip link set lo up",
                "sudo -n ip netns exec ns-dhcp-vlan100 ip addr add 192.168.100.254/24 dev dhcp100-i",
                "sudo -n ip netns exec ns-dhcp-vlan100 ip link set dhcp100-i up",
                f"sudo -n ip netns exec ns-dhcp-vlan100 {DNSMASQ}",
            ]
        ),
    )


def _cleanup_netnode(lab):
    lab.run(
        "netnode",
        "; ".join(
            [
                "sudo -n sh -c 'test -f /run/t.pid && kill $(cat /run/t.pid)'",
                "sudo -n ip netns delete ns-dhcp-vlan100",
                "sudo -n ovs-vsctl --if-exists del-port br-int dhcp100-o",
                "sudo -n ip link del dhcp100-o",
                "sudo -n ovs-vsctl --if-exists del-port br-int gw_vlan100",
                "sudo -n rm -f /run/t.pid /run/t.leases",
            ]
        ),
    )


def _start_vm(lab, name, host, vlan, mac, display):
    img = f"~/vm_images/{name}.qcow2"
    ok(lab, host, f"qemu-img create -q -f qcow2 -b ~/vm_images/labvm-base.qcow2 -F qcow2 {img}")
    ok(
        lab,
        host,
        (
            f"sudo -n qemu-system-x86_64 -name {name} -accel kvm -accel tcg -m 128 -smp 1"
            f" -drive file=$HOME/vm_images/{name}.qcow2,if=virtio,format=qcow2"
            f" -netdev tap,id=n0,ifname=tap{name},script=no,downscript=no"
            f" -device virtio-net-pci,netdev=n0,mac={mac}"
            f" -vnc :{display} -serial file:/run/{name}.serial -daemonize -pidfile /run/{name}.pid"
        ),
    )
    ok(lab, host, f"sudo -n ovs-vsctl add-port br-int tap{name} tag={vlan} && sudo -n ip link set tap{name} up")


def _cleanup_vm(lab, name, host, *_):
    lab.run(
        host,
        "; ".join(
            [
                f"sudo -n sh -c 'test -f /run/{name}.pid && kill $(cat /run/{name}.pid)'",
                f"sudo -n ovs-vsctl --if-exists del-port br-int tap{name}",
                f"sudo -n rm -f /run/{name}.pid /run/{name}.serial",
                f"rm -f ~/vm_images/{name}.qcow2",
            ]
        ),
    )


def _leases(lab):
    """MAC -> IP from the netnode's lease file, read from outside the VMs."""
    out = lab.exec("netnode", "cat /run/t.leases 2>/dev/null").stdout
    return {f[1]: f[2] for f in (line.split() for line in out.splitlines()) if len(f) >= 3}


def _rss_kib(lab, host, comms):
    out = lab.exec(host, f"ps -o rss=,comm= -C {','.join(comms)}").stdout
    return {c: sum(int(line.split()[0]) for line in out.splitlines() if line.split()[1] == c) for c in comms}


def test_vms_boot_get_dhcp_across_the_trunk_and_vlans_are_isolated(lab):
    if not IMAGE.exists():
        pytest.skip(f"no guest image at {IMAGE} (lab/build_image.sh builds it)")
    for host in ("worker1", "worker2"):
        sftp = lab.ssh(host).open_sftp()
        try:
            sftp.put(str(IMAGE), "vm_images/labvm-base.qcow2")
        finally:
            sftp.close()
    try:
        _setup_netnode(lab)
        started = {}
        for vm in VMS:
            _start_vm(lab, *vm)
            started[vm[0]] = time.monotonic()

        # DHCP leases for the two VLAN-100 VMs (one per worker), within 60 s.
        want = {VMS[0][3]: "t1", VMS[1][3]: "t2"}
        got_at = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(got_at) < len(want):
            leases = _leases(lab)
            for mac, name in want.items():
                if mac in leases and name not in got_at:
                    got_at[name] = time.monotonic() - started[name]
            time.sleep(0.2)
        leases = _leases(lab)
        assert set(want) <= set(leases), f"leases after 60 s: {leases}"
        print(f"\nboot-to-lease: {', '.join(f'{n} {t:.1f} s' for n, t in sorted(got_at.items()))}")
        for mac in want:
            assert leases[mac].startswith("192.168.100."), leases

        # The guest reports its lease on its serial console too.
        serial = lab.exec("worker1", "cat /run/t1.serial").stdout
        assert f"ip={leases[VMS[0][3]]}/" in serial, serial[-2000:]

        # The netnode's gateway reaches both VMs, with full-size frames too
        # (1472+28 = 1500-byte IP packets = 1518-byte tagged frames on the trunk).
        for mac in want:
            ok(lab, "netnode", f"ping -c 2 -W 2 {leases[mac]}")
            ok(lab, "netnode", f"ping -c 1 -W 2 -M do -s 1472 {leases[mac]}")

        # Isolation: t3 (VLAN 101) sends DHCP discovers that cross the trunk
        # (the netnode's OVS learns its MAC on VLAN 101) but never reach
        # VLAN 100: no lease from VLAN 100's dnsmasq, not seen on VLAN 100.
        t3_mac = VMS[2][3]
        deadline = time.monotonic() + 60
        fdb = ""
        while time.monotonic() < deadline:
            fdb = lab.exec("netnode", "ovs-appctl fdb/show br-int").stdout
            if re.search(rf"\s101\s+{t3_mac}\s", fdb):
                break
            time.sleep(0.5)
        assert re.search(rf"\s101\s+{t3_mac}\s", fdb), f"t3 never seen on VLAN 101:\n{fdb}"
        assert not re.search(rf"\s100\s+{t3_mac}\s", fdb), fdb
        assert t3_mac not in _leases(lab)
        neigh = lab.exec("netnode", "ip neigh show dev gw_vlan100").stdout
        assert t3_mac not in neigh

        # VNC answers on the management address, from the manager (root ns).
        with socket.create_connection(("10.250.0.11", 5901), timeout=5) as s:
            assert s.recv(12).startswith(b"RFB ")

        # Memory, for the report.
        for host in ("worker1", "worker2"):
            rss = _rss_kib(lab, host, ["qemu-system-x86"])
            n = len(lab.exec(host, "pgrep -x qemu-system-x86").stdout.split()) or 1
            print(f"{host}: {n} qemu, {rss['qemu-system-x86'] / n / 1024:.0f} MiB RSS each")
    finally:
        for vm in VMS:
            _cleanup_vm(lab, *vm)
        _cleanup_netnode(lab)
        for host in ("worker1", "worker2"):
            lab.run(host, "rm -f ~/vm_images/labvm-base.qcow2")
    for host in ("worker1", "worker2"):
        assert "qemu" not in lab.exec(host, "ps -e -o comm=").stdout
        assert "tap" not in ok(lab, host, "sudo -n ovs-vsctl list-ports br-int")
    assert "ns-dhcp-vlan100" not in ok(lab, "netnode", "ip netns list")


def test_host_daemon_memory(lab):
    for h in LAB_HOSTS:
        rss = _rss_kib(lab, h, ["sshd", "ovsdb-server", "ovs-vswitchd"])
        total = sum(rss.values())
        print(
            f"\n{h}: "
            + ", ".join(f"{k} {v / 1024:.1f} MiB" for k, v in rss.items())
            + f", total {total / 1024:.1f} MiB"
        )
        assert rss["ovs-vswitchd"] > 0 and rss["ovsdb-server"] > 0 and rss["sshd"] > 0


# --------------------------------------------------------------------------------------
# Teardown: must be the very last test of the session (conftest sorts it last)
# --------------------------------------------------------------------------------------


def _lab_processes(netns_inodes: set[str]) -> list[str]:
    """Processes that belong to the lab: in a (former) crlab netns, running
    from lab/state, or a lab launcher. Zombies are ignored (already dead)."""
    found = []
    state = str(STATE)
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            net = os.readlink(f"/proc/{pid}/ns/net")
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        if (
            net in netns_inodes
            or state in cmd
            or cwd.startswith(state)
            or str(LAB_DIR / "host_init.sh") in cmd
            or str(LAB_DIR / "inet_server.py") in cmd
        ):
            found.append(f"{pid}: {cmd.strip()}")
    return found


@pytest.mark.lab_last
def test_zz_down_leaves_nothing():
    if os.geteuid() != 0:
        pytest.skip("the local lab needs root")
    ip_forward = Path("/proc/sys/net/ipv4/ip_forward").read_text()
    netns_inodes = set()
    for ns in Path("/run/netns").glob("crlab-*") if Path("/run/netns").exists() else []:
        try:
            netns_inodes.add(f"net:[{os.stat(ns).st_ino}]")
        except OSError:
            pass

    # A lab built by a command run under a lock (`flock FILE lab/up.sh`) leaves the lock free: its
    # daemons inherit none of their caller's descriptors.
    subprocess.run([str(DOWN)], capture_output=True, timeout=120, check=True)
    lock = Path("/tmp") / f"crlab-test-{os.getpid()}.lock"
    try:
        proc = subprocess.run(["flock", str(lock), str(UP)], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        free = subprocess.run(["flock", "-n", str(lock), "true"], capture_output=True, timeout=10)
        assert free.returncode == 0, "a lab daemon still holds the lock its builder was run under"
    finally:
        lock.unlink(missing_ok=True)

    for attempt in (1, 2):  # twice: down.sh is idempotent
        t0 = time.monotonic()
        proc = subprocess.run([str(DOWN)], capture_output=True, text=True, timeout=120)
        print(f"\nlab/down.sh #{attempt}: {time.monotonic() - t0:.2f} s")
        assert proc.returncode == 0, proc.stdout + proc.stderr

    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "crlab-" not in netns, netns
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert "crlab-" not in links, links
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(STATE) not in mounts
    assert "crlab" not in mounts
    leftovers = _lab_processes(netns_inodes)
    for _ in range(50):  # the machine's init may take a moment to reap
        if not leftovers:
            break
        time.sleep(0.1)
        leftovers = _lab_processes(netns_inodes)
    assert not leftovers, "lab processes left:\n" + "\n".join(leftovers)
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text() == ip_forward
    for h in LAB_HOSTS:
        assert not (STATE / "hosts" / h / "run").exists()
        assert not (STATE / "hosts" / h / "home").exists()
