"""Lab guest image: build (and cache hit), boot one VM under TCG, check the serial protocol and console.

Needs root, qemu-system-x86_64, qemu-img and apt (Debian). Everything happens in a temporary directory
that is removed at the end (set LAB_TEST_IMAGE_DIR to reuse an image/.deb cache between runs).
Run with ``pytest -s tests/lab/test_image.py`` to see the measured numbers.
"""

from __future__ import annotations

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
BUILD = REPO / "lab" / "build_image.sh"
CONSOLE = REPO / "lab" / "vm_console.py"
QEMU = shutil.which("qemu-system-x86_64")
QEMU_IMG = shutil.which("qemu-img")
MACS = ["52:54:00:03:e9:00", "52:54:00:03:e9:01"]
HOSTNAME = "labtest"
BOOT_TIMEOUT = float(os.environ.get("LAB_TEST_BOOT_TIMEOUT", "90"))

pytestmark = [
    pytest.mark.skipif(
        not hasattr(os, "geteuid") or os.geteuid() != 0,
        reason="lab image test needs root (apt-get download, QEMU lab)",
    ),
    pytest.mark.skipif(
        QEMU is None or QEMU_IMG is None,
        reason="qemu-system-x86_64 / qemu-img not installed (apt-get install qemu-system-x86 qemu-utils)",
    ),
    pytest.mark.skipif(shutil.which("apt-get") is None, reason="apt-get missing (Debian host needed)"),
]

METRICS: dict[str, str] = {}


def _run_build(outdir: Path) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.monotonic()
    cp = subprocess.run(
        ["bash", str(BUILD), str(outdir)],
        check=False,
        capture_output=True,
        text=True,
        timeout=900,
    )
    return time.monotonic() - t0, cp


@pytest.fixture(scope="module")
def workdir():
    d = Path(tempfile.mkdtemp(prefix="labimg-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)
        if METRICS:
            print("\nlab image metrics:")
            for k, v in METRICS.items():
                print(f"  {k}: {v}")


@pytest.fixture(scope="module")
def image(workdir):
    outdir = Path(os.environ.get("LAB_TEST_IMAGE_DIR") or workdir / "image")
    elapsed, cp = _run_build(outdir)
    assert cp.returncode == 0, f"build failed:\n{cp.stdout}\n{cp.stderr}"
    img = outdir / "labvm.qcow2"
    assert img.is_file()
    METRICS["build time (this run)"] = f"{elapsed:.1f} s"
    METRICS["image size (qcow2)"] = f"{img.stat().st_size / 2**20:.1f} MiB"
    return img


def test_build_and_cache(image):
    info = subprocess.run(
        [QEMU_IMG, "info", str(image)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "file format: qcow2" in info
    elapsed, cp = _run_build(image.parent)
    assert cp.returncode == 0, cp.stderr
    assert "up to date" in cp.stderr
    METRICS["cache hit"] = f"{elapsed:.2f} s"
    assert elapsed < 2.0, f"cache hit took {elapsed:.2f} s"
    leftovers = [p for p in image.parent.glob(".build.*") if p.name != ".build.lock"]
    assert not leftovers, f"temporary build files left behind: {leftovers}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in _proc_state(pid)


def _proc_state(pid: int) -> str:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("State:"):
                return line.lower()
    except OSError:
        pass
    return ""


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@pytest.fixture(scope="module")
def vm(image, workdir):
    d = workdir / "vm"
    d.mkdir()
    overlay, sock, log, pidfile = (
        d / "ov.qcow2",
        d / "s.sock",
        d / "serial.log",
        d / "qemu.pid",
    )
    subprocess.run(
        [
            QEMU_IMG,
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            str(image),
            "-F",
            "qcow2",
            str(overlay),
        ],
        check=True,
    )
    cmd = [
        QEMU, "-name", "labtest", "-accel", "tcg", "-m", "128", "-smp", "1",
        "-smbios", f"type=1,serial={HOSTNAME}",
        "-drive", f"file={overlay},if=virtio,format=qcow2",
        "-netdev", "user,id=n0,restrict=on",
        "-device", f"virtio-net-pci,netdev=n0,mac={MACS[0]}",
        "-netdev", "user,id=n1,restrict=on,net=10.0.3.0/24",
        "-device", f"virtio-net-pci,netdev=n1,mac={MACS[1]}",
        "-fw_cfg", "name=opt/lab/init,string=echo fwcfg-says-$(hostname); exit 5",
        "-chardev", f"socket,id=ser0,path={sock},server=on,wait=off,logfile={log}",
        "-serial", "chardev:ser0",
        "-display", "none", "-vnc", "none", "-monitor", "none",
        "-daemonize", "-pidfile", str(pidfile),
    ]  # fmt: skip
    t0 = time.monotonic()
    cp = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=60)
    assert cp.returncode == 0, f"qemu failed to start: {cp.stderr}"
    pid = int(pidfile.read_text().strip())
    state = {"pid": pid, "t0": t0, "log": log, "sock": sock, "dir": d}
    try:
        yield state
    finally:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        end = time.monotonic() + 10
        while _pid_alive(pid) and time.monotonic() < end:
            time.sleep(0.1)
        if _pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


def _serial(vm) -> str:
    try:
        return vm["log"].read_bytes().decode("utf-8", "replace").replace("\r", "")
    except FileNotFoundError:
        return ""


def _wait_line(vm, pattern: str, timeout: float = BOOT_TIMEOUT) -> float:
    """Wait for a regex (multiline) in the serial log; return seconds since QEMU was started."""
    rx = re.compile(pattern, re.MULTILINE)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if rx.search(_serial(vm)):
            return time.monotonic() - vm["t0"]
        assert _pid_alive(vm["pid"]), f"qemu died; serial log:\n{_serial(vm)}"
        time.sleep(0.1)
    pytest.fail(f"timeout waiting for {pattern!r}; serial log:\n{_serial(vm)}")


def _console(vm, command: str, timeout: float = 30) -> tuple[int, str]:
    cp = subprocess.run(
        [
            sys.executable,
            str(CONSOLE),
            str(vm["sock"]),
            command,
            "--timeout",
            str(timeout),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout + 15,
    )
    return cp.returncode, cp.stdout + cp.stderr


def test_boot_serial_protocol(vm):
    t_ready = _wait_line(vm, r"^LAB-READY$")
    t_lease = _wait_line(vm, r"^LAB-DHCP eth0 ip=\S+")
    METRICS["qemu start -> LAB-READY"] = f"{t_ready:.1f} s"
    METRICS["qemu start -> LAB-DHCP eth0"] = f"{t_lease:.1f} s"
    _wait_line(vm, r"^LAB-DHCP eth1 ip=\S+")
    METRICS["qemu RSS (-m 128, TCG)"] = f"{_rss_mib(vm['pid']):.0f} MiB"
    log = _serial(vm)
    assert re.search(r"^LAB-BOOT$", log, re.MULTILINE)
    assert re.findall(r"^LAB-NIC (eth\d+) mac=(\S+)$", log, re.MULTILINE) == [
        ("eth0", MACS[0]),
        ("eth1", MACS[1]),
    ]
    assert re.search(r"^LAB-DHCP eth0 ip=10\.0\.2\.15/24 router=\S* ", log, re.MULTILINE), log
    assert re.search(r"^LAB-DHCP eth1 ip=10\.0\.3\.15/24 router=\S* ", log, re.MULTILINE), log
    # fw_cfg opt/lab/init ran before LAB-READY, between the markers, with its exit code.
    assert re.search(
        rf"^LAB-FWCFG-BEGIN\nfwcfg-says-{HOSTNAME}\nLAB-FWCFG-END rc=5\n(.*\n)*LAB-READY$",
        log,
        re.MULTILINE,
    ), log


def test_console_commands(vm):
    _wait_line(vm, r"^LAB-DHCP eth1 ip=\S+")
    rc, out = _console(vm, "ip -o addr")
    assert rc == 0, out
    assert re.search(r"^\d+: eth0\s+inet 10\.0\.2\.15/24 ", out, re.MULTILINE), out
    assert re.search(r"^\d+: eth1\s+inet 10\.0\.3\.15/24 ", out, re.MULTILINE), out
    assert re.search(r"^\d+: lo\s+inet 127\.0\.0\.1/8 ", out, re.MULTILINE), out
    assert "__LAB" not in out and "\x1b" not in out, out

    rc, out = _console(vm, "hostname; wget -q -O - http://127.0.0.1/")
    assert (rc, out) == (0, f"{HOSTNAME}\n<h1>{HOSTNAME}</h1>\n")

    rc, out = _console(vm, "echo 'quote'\"d\"; (exit 7)")
    assert (rc, out) == (7, "quoted\n")

    long_cmd = "echo " + "x" * 1500 + " | wc -c"  # longer than busybox line editing allows
    rc, out = _console(vm, long_cmd)
    assert (rc, out.strip()) == (0, "1501"), out

    rc, out = _console(vm, "ping -c 1 -W 2 10.0.2.15 >/dev/null")
    assert rc == 0, out


def test_udhcpc_default_route_only_once(vm):
    """The lease script installs a router as default route only while there is none."""
    _wait_line(vm, r"^LAB-DHCP eth1 ip=\S+")
    script = (
        "ip route del default 2>/dev/null; "
        "interface=eth1 ip=10.0.3.15 mask=24 router='10.0.3.2 10.0.3.3' /etc/udhcpc.script renew; "
        "interface=eth0 ip=10.0.2.15 mask=24 router=10.0.2.2 /etc/udhcpc.script renew; "
        "ip route show default; ip route del default"
    )
    rc, out = _console(vm, script)
    assert rc == 0, out
    routes = [line.split() for line in out.splitlines() if line.startswith("default")]
    assert len(routes) == 1 and routes[0][:5] == [
        "default",
        "via",
        "10.0.3.2",
        "dev",
        "eth1",
    ], out
