#!/usr/bin/env python3
"""Boot time of the lab guest images under TCG with a NoCloud seed (SPEC §10), as the product boots them.

For each run: a fresh qcow2 overlay on the image, a vfat `cidata` seed (made with mkfs.vfat + mcopy),
QEMU -accel tcg -smp 1 (-m 512 for the cloud image, 128 for the busybox one), no NIC, serial console on
a unix socket that this script reads, timestamping each line. It prints, per run, the seconds from
QEMU start to: the kernel's first line, the kernel starting /init, systemd's welcome (cloud image),
and the login prompt (cloud) or LAB-READY (busybox); and the CPU seconds QEMU used until then (less
sensitive than wall time to other work on a shared machine).

Usage (as root; build the images first, e.g. ./setup.sh):
    python3 bench/cloud_image_boot.py [--image cloud|cirros|PATH.qcow2] [--runs 3] [--append-log FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMAGES = {"cloud": REPO / "lab" / "image" / "cloudvm.qcow2", "cirros": REPO / "lab" / "image" / "labvm.qcow2"}
MARKS = {
    "kernel": re.compile(rb"Linux version "),
    "/init": re.compile(rb"Run /init as init process"),
    "systemd": re.compile(rb"Welcome to "),
}
CLOUD_USER_DATA = (
    "#cloud-config\nchpasswd:\n  expire: false\n  users:\n    - {name: ubuntu, password: bench-pw, type: text}\n"
    "ssh_pwauth: true\n"
)
CIRROS_USER_DATA = "#!/bin/sh\necho 'cirros:bench-pw' | chpasswd\n"


def make_seed(d: Path, cloud: bool) -> Path:
    (d / "meta-data").write_text(json.dumps({"instance-id": "cr-vm9001", "local-hostname": "benchvm"}))
    (d / "user-data").write_text(CLOUD_USER_DATA if cloud else CIRROS_USER_DATA)
    (d / "network-config").write_text("version: 2\nethernets: {}\n")
    seed = d / "seed.img"
    subprocess.run(["mkfs.vfat", "-C", "-n", "cidata", str(seed), "2048"], check=True, capture_output=True)
    subprocess.run(["mcopy", "-oi", str(seed), str(d / "meta-data"), str(d / "user-data"),
                    str(d / "network-config"), "::"], check=True)  # fmt: skip
    return seed


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def boot_once(image: Path, cloud: bool, timeout: float, log_to: Path | None) -> dict:
    with tempfile.TemporaryDirectory(prefix="bootbench-") as tmp:
        d = Path(tmp)
        seed = make_seed(d, cloud)
        overlay, sock = d / "disk.qcow2", d / "serial.sock"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(image), "-F", "qcow2", str(overlay)],
                       check=True)  # fmt: skip
        cmd = [
            "qemu-system-x86_64", "-accel", "tcg", "-m", "512" if cloud else "128", "-smp", "1",
            "-drive", f"file={overlay},if=virtio,format=qcow2",
            "-drive", f"file={seed},if=virtio,format=raw,readonly=on",
            "-nic", "none", "-display", "none", "-monitor", "none",
            "-chardev", f"socket,id=ser0,path={sock},server=on,wait=on", "-serial", "chardev:ser0",
        ]  # fmt: skip
        done = re.compile(rb"login: $" if cloud else rb"^LAB-READY\r?$", re.MULTILINE)
        qemu = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            t0 = time.monotonic()
            while not sock.exists():
                if qemu.poll() is not None:
                    raise RuntimeError("qemu exited at start")
                time.sleep(0.01)
            con = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            con.connect(str(sock))  # QEMU starts the guest once we are connected (wait=on)
            con.settimeout(1.0)
            buf, seen = b"", {}
            while True:
                if time.monotonic() - t0 > timeout:
                    raise RuntimeError(f"no login/ready after {timeout:g} s")
                try:
                    data = con.recv(65536)
                except socket.timeout:
                    continue
                if not data:
                    raise RuntimeError("serial console closed")
                buf += data
                now = time.monotonic() - t0
                for name, rx in MARKS.items():
                    if name not in seen and rx.search(buf):
                        seen[name] = now
                if done.search(buf[-200:] if cloud else buf):
                    seen["ready"] = now
                    seen["cpu"] = cpu_seconds(qemu.pid)
                    break
            con.close()
            if log_to:
                log_to.write_bytes(buf)
            return seen
        finally:
            qemu.terminate()
            qemu.wait(10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image", default="cloud", help="cloud, cirros or a qcow2 path (default cloud)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--cirros", action="store_true", help="PATH is a busybox (cirros) image")
    ap.add_argument("--append-log", type=Path, help="write the last run's serial output here")
    args = ap.parse_args()
    image = IMAGES.get(args.image, Path(args.image))
    cloud = not (args.image == "cirros" or args.cirros)
    if os.geteuid() != 0:
        print("run as root", file=sys.stderr)
        return 2
    if not image.is_file():
        print(f"no image {image} (build it: lab/build_cloud_image.sh / lab/build_image.sh)", file=sys.stderr)
        return 2
    what = "login prompt" if cloud else "LAB-READY"
    cols = ["kernel", "/init", "systemd", "ready", "cpu"]
    print(f"image: {image} ({'cloud-init' if cloud else 'busybox'}), TCG, -smp 1; seconds from QEMU start")
    print(f"{'run':>4} {'kernel':>8} {'/init':>8} {'systemd':>8} {what:>13} {'qemu CPU s':>11}")
    rows = []
    for i in range(1, args.runs + 1):
        r = boot_once(image, cloud, args.timeout, args.append_log)
        rows.append(r)
        print(f"{i:>4} " + " ".join(f"{r[c]:>{w}.1f}" if c in r else f"{'-':>{w}}"
                                    for c, w in zip(cols, (8, 8, 8, 13, 11))))  # fmt: skip
    if len(rows) > 1:
        print(f"{'med':>4} " + " ".join(
            f"{statistics.median(r[c] for r in rows):>{w}.1f}" if all(c in r for r in rows) else f"{'-':>{w}}"
            for c, w in zip(cols, (8, 8, 8, 13, 11))))  # fmt: skip
    with open("/proc/loadavg") as f:
        print(f"host load average at the end: {f.read().split()[0]} (2 cores shared: wall times vary with it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
