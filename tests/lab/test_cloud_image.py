"""Guest images with a NoCloud seed, booted under TCG exactly as the product attaches the seed (SPEC §10).

* The cloud image (lab/build_cloud_image.sh, the lab's `ubuntu` flavor): cloud-init reads the seed;
  we log in on the serial console with the seed's password (lab/vm_console.py --login), find the
  seed's host name, every NIC configured by MAC (the NICs are plugged in the opposite order to the
  names the seed gives them, so only MAC matching + set-name gets them right), a DHCP lease on each,
  and a default route only through the NIC the seed lets give routes.
* The busybox image (lab/build_image.sh, the `cirros` flavor) behaves like CirrOS 0.6: host name
  from the JSON meta-data, a `#!` user-data runs (and sets the `cirros` password), `#cloud-config`
  does not.

Needs root (a private network namespace with two bridges, taps and a dnsmasq, all removed at the end)
but not the lab. A missing image is built first (cached builds return at once); set
CLOUD_TEST_IMAGE_DIR to use another image directory than lab/image. Run with ``pytest -s`` to see the
measured boot times.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LAB = REPO / "lab"
CONSOLE = LAB / "vm_console.py"
IMAGE_DIR = Path(os.environ.get("CLOUD_TEST_IMAGE_DIR") or LAB / "image")
QEMU = shutil.which("qemu-system-x86_64")
LOGIN_TIMEOUT = float(os.environ.get("CLOUD_TEST_LOGIN_TIMEOUT", "400"))
NS = f"cimgtest-{os.getpid()}"
NETS = {"br0": "10.231.0", "br1": "10.231.1"}  # br0 plays the internet VLAN, br1 a slice link
CLOUD = {"name": "cloudvm-t1", "password": "Seed-pw 9f3k", "macs": ["52:54:00:c1:00:00", "52:54:00:c1:00:01"]}
TOOLS = ("ip", "dnsmasq", "mkfs.vfat", "mcopy", "qemu-img")

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespace, taps, image build)"),
    pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 missing (apt-get install qemu-system-x86)"),
    pytest.mark.skipif(
        any(shutil.which(t) is None for t in TOOLS), reason=f"needs {', '.join(TOOLS)} (see lab/packages.txt)"
    ),
]

METRICS: dict[str, str] = {}


# ---- helpers ---------------------------------------------------------------------------------------
def sh(*argv: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=check)


def netns(*argv: str, **kw) -> subprocess.CompletedProcess:
    return sh("ip", "netns", "exec", NS, *argv, **kw)


def make_seed(path: Path, meta_data: dict, user_data: str, network_config: str) -> Path:
    """The NoCloud seed as the product makes it: vfat labelled cidata, no mounting."""
    files = path.parent / f"{path.stem}.d"
    files.mkdir()
    (files / "meta-data").write_text(json.dumps(meta_data))
    (files / "user-data").write_text(user_data)
    (files / "network-config").write_text(network_config)
    sh("mkfs.vfat", "-C", "-n", "cidata", str(path), "2048")
    sh("mcopy", "-oi", str(path), *(str(files / f) for f in ("meta-data", "user-data", "network-config")), "::")
    return path


def cloud_network_config(macs: list[str]) -> str:
    """network-config v2: eth0 (internet NIC) gives routes, eth1 does not; every NIC matched by MAC."""
    return (
        "version: 2\n"
        "ethernets:\n"
        f"  eth0:\n    match: {{macaddress: '{macs[0]}'}}\n    set-name: eth0\n"
        "    dhcp4: true\n    optional: true\n"
        f"  eth1:\n    match: {{macaddress: '{macs[1]}'}}\n    set-name: eth1\n"
        "    dhcp4: true\n    dhcp4-overrides: {use-routes: false}\n    optional: true\n"
    )


def qemu_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class VM:
    """One QEMU guest in the test namespace: overlay, seed, serial socket + log."""

    def __init__(self, workdir: Path, name: str, image: Path, seed: Path, mem: int, nics: list[tuple[str, str]]):
        self.dir = workdir / name
        self.dir.mkdir()
        self.name = name
        self.sock = self.dir / "serial.sock"
        self.log = self.dir / "serial.log"
        overlay = self.dir / "disk.qcow2"
        sh("qemu-img", "create", "-q", "-f", "qcow2", "-b", str(image), "-F", "qcow2", str(overlay))
        cmd = [
            QEMU, "-name", name, "-accel", "tcg", "-m", str(mem), "-smp", "1",
            "-smbios", "type=1,serial=smbios-fallback",
            "-drive", f"file={overlay},if=virtio,format=qcow2",
            "-drive", f"file={seed},if=virtio,format=raw,readonly=on",
            "-chardev", f"socket,id=ser0,path={self.sock},server=on,wait=off,logfile={self.log}",
            "-serial", "chardev:ser0", "-display", "none", "-monitor", "none",
            "-daemonize", "-pidfile", str(self.dir / "qemu.pid"),
        ]  # fmt: skip
        if not nics:
            cmd += ["-nic", "none"]
        for i, (tap, mac) in enumerate(nics):
            cmd += ["-netdev", f"tap,id=n{i},ifname={tap},script=no,downscript=no",
                    "-device", f"virtio-net-pci,netdev=n{i},mac={mac}"]  # fmt: skip
        self.t0 = time.monotonic()
        netns(*cmd)
        self.pid = int((self.dir / "qemu.pid").read_text())

    def serial(self) -> str:
        try:
            return self.log.read_bytes().decode("utf-8", "replace").replace("\r", "")
        except FileNotFoundError:
            return ""

    def wait_for(self, pattern: str, timeout: float) -> float:
        """Seconds from QEMU start until ``pattern`` (regex, multiline) shows in the serial log."""
        rx = re.compile(pattern, re.MULTILINE)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if rx.search(self.serial()):
                return time.monotonic() - self.t0
            assert alive(self.pid), f"{self.name}: qemu died; serial log:\n{self.serial()[-3000:]}"
            time.sleep(0.2)
        pytest.fail(f"{self.name}: no {pattern!r} after {timeout:g} s; serial log:\n{self.serial()[-3000:]}")

    def console(self, command: str, *extra: str, timeout: float = 60) -> tuple[int, str]:
        cp = subprocess.run(
            [sys.executable, str(CONSOLE), str(self.sock), command, "--timeout", str(timeout), *extra],
            capture_output=True,
            text=True,
            timeout=timeout + 30,
        )
        return cp.returncode, cp.stdout + cp.stderr

    def stop(self) -> None:
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        end = time.monotonic() + 10
        while alive(self.pid) and time.monotonic() < end:
            time.sleep(0.1)
        if alive(self.pid):
            os.kill(self.pid, signal.SIGKILL)


# ---- fixtures --------------------------------------------------------------------------------------
def build(script: str) -> None:
    cp = subprocess.run([str(LAB / script), str(IMAGE_DIR)], capture_output=True, text=True, timeout=1800)
    assert cp.returncode == 0, f"{script} failed:\n{cp.stdout}\n{cp.stderr}"


@pytest.fixture(scope="module")
def images() -> dict[str, Path]:
    build("build_image.sh")
    build("build_cloud_image.sh")
    return {"cirros": IMAGE_DIR / "labvm.qcow2", "ubuntu": IMAGE_DIR / "cloudvm.qcow2"}


@pytest.fixture(scope="module")
def workdir():
    d = Path(tempfile.mkdtemp(prefix="cloudimg-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)
        if METRICS:
            print("\ncloud image metrics:")
            for k, v in METRICS.items():
                print(f"  {k}: {v}")


@pytest.fixture(scope="module")
def net(workdir):
    """A private namespace: bridges br0/br1, each with its own dnsmasq (as each product VLAN has); taps
    are added per VM."""
    sh("ip", "netns", "add", NS)
    servers: list[subprocess.Popen] = []
    leases = []
    try:
        netns("ip", "link", "set", "lo", "up")
        for br, prefix in NETS.items():
            netns("ip", "link", "add", br, "type", "bridge")
            netns("ip", "addr", "add", f"{prefix}.1/24", "dev", br)
            netns("ip", "link", "set", br, "up")
            leases.append(workdir / f"dnsmasq-{br}.leases")
            servers.append(subprocess.Popen(
                ["ip", "netns", "exec", NS, "dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts",
                 "--port=0", "--bind-interfaces", f"--interface={br}", "--except-interface=lo", "--user=root",
                 f"--dhcp-range={prefix}.50,{prefix}.99,255.255.255.0,1h", f"--dhcp-leasefile={leases[-1]}",
                 "--pid-file"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))  # fmt: skip
        yield {"leases": leases, "taps": []}
    finally:
        for server in servers:
            server.terminate()
            server.wait(10)
        sh("ip", "netns", "del", NS, check=False)


def add_tap(net: dict, bridge: str) -> str:
    tap = f"ct{len(net['taps'])}"
    netns("ip", "tuntap", "add", "dev", tap, "mode", "tap")
    netns("ip", "link", "set", tap, "master", bridge)
    netns("ip", "link", "set", tap, "up")
    net["taps"].append(tap)
    return tap


def dhcp_leases(net: dict) -> dict[str, tuple[str, str]]:
    """MAC -> (IP, host name) from the test dnsmasq's lease file."""
    out = {}
    text = "".join(f.read_text() for f in net["leases"] if f.exists())
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 4:
            out[parts[1].lower()] = (parts[2], parts[3])
    return out


@pytest.fixture(scope="module")
def cloud_vm(images, workdir, net):
    """The cloud image with its seed, booting (not waited for: other tests run meanwhile)."""
    macs = CLOUD["macs"]
    user_data = (
        "#cloud-config\n"
        "chpasswd:\n  expire: false\n"
        f"  users:\n    - {{name: ubuntu, password: {json.dumps(CLOUD['password'])}, type: text}}\n"
        "ssh_pwauth: true\n"
    )
    seed = make_seed(
        workdir / "cloud-seed.img",
        {"instance-id": "cr-vm1001", "local-hostname": CLOUD["name"]},
        user_data,
        cloud_network_config(macs),
    )
    # Plugged in the opposite order: the kernel calls the eth1 MAC eth0 until cloud-init renames it.
    nics = [(add_tap(net, "br1"), macs[1]), (add_tap(net, "br0"), macs[0])]
    vm = VM(workdir, CLOUD["name"], images["ubuntu"], seed, 512, nics)
    try:
        yield vm
    finally:
        vm.stop()


def boot_busybox(images, workdir, net, name: str, user_data: str, mac: str) -> VM:
    seed = make_seed(
        workdir / f"{name}-seed.img",
        {"instance-id": f"cr-{name}", "local-hostname": name},
        user_data,
        "version: 2\nethernets:\n"
        f"  eth0:\n    match: {{macaddress: '{mac}'}}\n    set-name: eth0\n    dhcp4: true\n    optional: true\n",
    )
    return VM(workdir, name, images["cirros"], seed, 128, [(add_tap(net, "br0"), mac)])


# ---- the busybox (cirros) guest --------------------------------------------------------------------
def test_busybox_seed_hostname_and_script_user_data(images, workdir, net, cloud_vm):
    # (cloud_vm is requested so that the slow cloud guest boots while this test runs.)
    password = "Cirros pw-7"
    script = f"#!/bin/sh\necho 'cirros:{password}' | chpasswd\necho userdata-on-$(hostname)\nexit 3\n"
    mac = "52:54:00:c1:00:10"
    vm = boot_busybox(images, workdir, net, "cirros-t1", script, mac)
    try:
        METRICS["busybox: qemu start -> LAB-READY"] = f"{vm.wait_for(r'^LAB-READY$', 120):.1f} s"
        log = vm.serial()
        assert re.search(r"^LAB-SEED dev=/dev/vdb instance-id=cr-cirros-t1$", log, re.MULTILINE), log
        assert re.search(r"^LAB-USERDATA-BEGIN\nuserdata-on-cirros-t1\nLAB-USERDATA rc=3$", log, re.MULTILINE), log
        vm.wait_for(r"^LAB-DHCP eth0 ip=10\.231\.0\.\d+/24", 60)
        rc, out = vm.console("hostname; cat /etc/hostname")
        assert (rc, out) == (0, "cirros-t1\ncirros-t1\n"), out
        # The stored hash is the password's (recomputed with its own salt).
        check = (
            "h=$(awk -F: '$1 == \"cirros\" {print $2}' /etc/shadow); s=$(echo \"$h\" | cut -d'$' -f3); "
            f"[ \"$(mkpasswd -m sha512 -S \"$s\" '{password}')\" = \"$h\" ] && echo match; "
            "ls -ld /home/cirros | awk '{print $3}'"
        )
        rc, out = vm.console(check)
        assert (rc, out) == (0, "match\ncirros\n"), out
        # dnsmasq saw the seed's name in the DHCP request.
        assert dhcp_leases(net).get(mac, ("", ""))[1] == "cirros-t1", dhcp_leases(net)
    finally:
        vm.stop()


def test_busybox_ignores_cloud_config_user_data(images, workdir, net):
    vm = boot_busybox(images, workdir, net, "cirros-t2", "#cloud-config\nruncmd: [touch, /ran]\n", "52:54:00:c1:00:11")
    try:
        vm.wait_for(r"^LAB-READY$", 120)
        log = vm.serial()
        assert "LAB-USERDATA skipped (not a #! script)" in log, log
        assert "LAB-USERDATA-BEGIN" not in log
        rc, out = vm.console("hostname; grep -c '^cirros:!:' /etc/shadow")
        assert (rc, out) == (0, "cirros-t2\n1\n"), out  # still locked
    finally:
        vm.stop()


# ---- the cloud (ubuntu) guest ----------------------------------------------------------------------
def test_cloud_login_prompt_with_seed_hostname(cloud_vm):
    took = cloud_vm.wait_for(rf"^{re.escape(CLOUD['name'])} login: ", LOGIN_TIMEOUT)
    METRICS["cloud: qemu start -> login prompt (wall)"] = f"{took:.1f} s"
    METRICS["cloud: qemu CPU time until then"] = f"{qemu_cpu_seconds(cloud_vm.pid):.1f} s"


def test_cloud_login_with_seed_password(cloud_vm):
    cloud_vm.wait_for(rf"^{re.escape(CLOUD['name'])} login: ", LOGIN_TIMEOUT)
    t0 = time.monotonic()
    rc, out = cloud_vm.console("hostname; id -un", "--login", "ubuntu", "--password", CLOUD["password"])
    METRICS["cloud: vm_console --login + command"] = f"{time.monotonic() - t0:.1f} s"
    assert (rc, out) == (0, f"{CLOUD['name']}\nubuntu\n"), out
    rc, out = cloud_vm.console("id -u", "--login", "ubuntu", "--password", CLOUD["password"], "--sudo")
    assert (rc, out) == (0, "0\n"), out
    # cloud-init took everything from the seed disk.
    rc, out = cloud_vm.console(
        "cloud-init status --wait --long; cat /var/lib/cloud/data/instance-id",
        "--login", "ubuntu", "--password", CLOUD["password"], "--sudo", timeout=120,
    )  # fmt: skip
    assert rc == 0 and re.search(r"^status: done$", out, re.MULTILINE), out
    assert "DataSourceNoCloud [seed=/dev/vdb]" in out and out.endswith("\ncr-vm1001\n"), out


def test_cloud_login_refuses_a_wrong_password(cloud_vm):
    cloud_vm.wait_for(rf"^{re.escape(CLOUD['name'])} login: ", LOGIN_TIMEOUT)
    rc, out = cloud_vm.console("id", "--login", "ubuntu", "--password", "not-the-seed-password")
    assert rc == 126 and "refused" in out, out


def test_cloud_nics_configured_by_mac(cloud_vm, net):
    cloud_vm.wait_for(rf"^{re.escape(CLOUD['name'])} login: ", LOGIN_TIMEOUT)
    macs = CLOUD["macs"]
    login = ("--login", "ubuntu", "--password", CLOUD["password"])
    # Wait (in the guest) until both NICs hold a DHCP address, then look at links, addresses and routes.
    probe = (
        "for i in $(seq 60); do [ $(ip -4 -o addr show scope global | wc -l) -ge 2 ] && break; sleep 1; done; "
        "ip -o link show eth0; ip -o link show eth1; ip -4 -o addr show scope global; ip -4 route show default"
    )
    rc, out = cloud_vm.console(probe, *login, timeout=120)
    assert rc == 0, out
    link = dict(re.findall(r"^\d+: (eth\d): .* link/ether (\S+)", out, re.MULTILINE))
    assert link == {"eth0": macs[0], "eth1": macs[1]}, out
    assert re.search(r"^\d+: eth0: <[^>]*\bUP\b", out, re.MULTILINE), out
    assert re.search(r"^\d+: eth1: <[^>]*\bUP\b", out, re.MULTILINE), out
    addrs = dict(re.findall(r"^\d+: (eth\d)\s+inet (\S+)", out, re.MULTILINE))
    assert addrs.get("eth0", "").startswith(NETS["br0"] + "."), out
    assert addrs.get("eth1", "").startswith(NETS["br1"] + "."), out
    defaults = [line.split() for line in out.splitlines() if line.startswith("default")]
    assert len(defaults) == 1 and defaults[0][:5] == ["default", "via", f"{NETS['br0']}.1", "dev", "eth0"], out
    # Seen from outside: both leases, with the seed's host name.
    leases = dhcp_leases(net)
    assert leases.get(macs[0], ("", ""))[0] == addrs["eth0"].split("/")[0], leases
    assert leases.get(macs[1], ("", ""))[0] == addrs["eth1"].split("/")[0], leases
    assert {leases[m][1] for m in macs} == {CLOUD["name"]}, leases
