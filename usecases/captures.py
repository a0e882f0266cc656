"""Packet captures on a link or a VM's NIC (SPEC §17): checked here, run by ``hosts.capture``.

Only the slice's owner or an admin captures, only on a running VM of a
running slice.  The filter is tcpdump's own expression language, checked
twice: here against a strict character set (no shell or terminal character
can pass: the words go to the worker as separate, quoted argv words) and on
the worker by ``tcpdump -d`` (its parser).  A packet count and a time limit
are always in force (defaults and maxima below).  The use case returns a
``CaptureSession``: the SSH channel whose stdout carries the summary lines
or the pcap bytes, and plain metadata; the menu reads it, writes any file
itself, and closes the channel to stop the capture.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from hosts import capture
from remote_executor import ExecutorError
from usecases.access import as_int, authorized_slice
from usecases.inventory import Inventory
from usecases.services import Services

MODES = ("text", "pcap")
LIMITS = {  # mode -> (default packets, max packets, default seconds, max seconds)
    "text": (50, 10_000, 60, 600),
    "pcap": (1000, 100_000, 60, 600),
}
MAX_PCAP_BYTES = 64 * 1024 * 1024  # the menu stops reading (and the capture) beyond this
MAX_FILTER = 300
FILTER_CHARS = "letters, digits, spaces and . : / _ - [ ] & | ! < > = ( ) + * % ^ ~"
_FILTER_RE = re.compile(r"[A-Za-z0-9 .:/_\-\[\]&|!<>=()+*%^~]*")
_TARGET_RE = re.compile(r"\s*(?:link[\s:]*(\d+)|(\d+)\s*[\s:.]\s*(eth\d+))\s*", re.IGNORECASE)


@dataclass
class CaptureSession:
    """An open capture: ``channel`` (paramiko) carries text lines or pcap bytes on its stdout."""

    channel: object
    slice_id: int
    vm_id: int
    vm_name: str
    interface: str
    tap: str
    worker: str
    link_id: Optional[int]
    filter: str
    count: int
    seconds: int
    mode: str
    max_bytes: int
    early: bytes = b""


def filter_words(expr) -> tuple:
    """(True, [words]) for a filter expression made of allowed characters, else (False, message)."""
    text = "" if expr is None else str(expr).strip()
    if len(text) > MAX_FILTER:
        return False, f"The filter is too long (at most {MAX_FILTER} characters)"
    if not _FILTER_RE.fullmatch(text):
        bad = next(ch for ch in text if not _FILTER_RE.fullmatch(ch))
        return False, (f"Not a capture filter: {bad!r} is not allowed (a tcpdump filter holds only "
                       f"{FILTER_CHARS}), e.g. 'icmp' or 'tcp port 80 and host 192.168.100.10'")
    words = text.split()
    if words and words[0].startswith("-"):
        return False, "Not a capture filter: it cannot start with '-'"
    return True, words


def limit(value, default: int, high: int, what: str) -> tuple:
    """(True, n) for empty (the default) or a whole number from 1 to ``high``."""
    if value is None or str(value).strip() == "":
        return True, default
    ok, n = as_int(value, what)
    if not ok or not 1 <= n <= high:
        return False, f"{what} must be a whole number from 1 to {high}"
    return True, n


def parse_target(target) -> tuple:
    """(True, ("link", id) or ("nic", vm_id, "ethN")) for ``link 2`` / ``1001 eth1`` (or ``1001:eth1``)."""
    m = _TARGET_RE.fullmatch(str(target or ""))
    if not m:
        return False, "Capture on 'link N' (a link of the slice) or 'VM_ID ethN' (a NIC of a VM), e.g. 'link 1'"
    if m.group(1):
        return True, ("link", int(m.group(1)))
    return True, ("nic", int(m.group(2)), m.group(3).lower())


class Captures:
    """``open`` a capture; returns ``(ok, CaptureSession or message)``."""

    def __init__(self, services: Services):
        self.s = services

    def _where(self, s: dict, target: tuple) -> tuple:
        """(True, (vm, interface index, link id)) of the NIC to capture on, else why not."""
        vms = {int(v["vm_id"]): v for v in s.get("vms", [])}
        if target[0] == "link":
            link = next((lk for lk in s.get("links", []) if int(lk["link_id"]) == target[1]), None)
            if link is None:
                return False, f"Link {target[1]} is not in slice {s['slice_id']}"
            ends = [(vms.get(int(link[v])), link[i]) for v, i in (("vm1_id", "vm1_interface"),
                                                                    ("vm2_id", "vm2_interface"))]
            ends = [(vm, i) for vm, i in ends if vm is not None and vm.get("status") != "stopped"]
            if not ends:
                return False, f"Both VMs of link {target[1]} are stopped: start one first"
            vm, ifname = ends[0]
            return True, (vm, int(ifname[3:]), int(link["link_id"]))
        vm = vms.get(target[1])
        if vm is None:
            return False, f"VM {target[1]} is not in slice {s['slice_id']}"
        iface = next((i for i in vm.get("interfaces", []) if i["name"] == target[2]), None)
        if iface is None:
            return False, f"VM {target[1]} has no interface {target[2]}"
        if vm.get("status") == "stopped":
            return False, f"VM {target[1]} is stopped: start it first"
        return True, (vm, int(target[2][3:]), iface.get("link_id"))

    def _checked(self, username, slice_id, target, filter_expr, count, seconds, mode) -> tuple:
        """Everything checked before any host is touched: (True, (slice, where, words, count, seconds))."""
        if mode not in MODES:
            return False, f"Capture mode must be one of {', '.join(MODES)}"
        checks = [parse_target(target), filter_words(filter_expr)]
        d_count, max_count, d_seconds, max_seconds = LIMITS[mode]
        checks += [limit(count, d_count, max_count, "The packet count"),
                   limit(seconds, d_seconds, max_seconds, "The time limit (seconds)")]
        bad = next((msg for ok, msg in checks if not ok), None)
        if bad:
            return False, bad
        if as_int(slice_id, "Slice ID")[0]:
            Inventory(self.s).settle([slice_id])
        ok, s = authorized_slice(self.s.db.load(), username, slice_id)
        if not ok:
            return False, s
        if s.get("status") != "running":
            return False, f"Slice {s['slice_id']} is {s.get('status')}: captures need a running slice"
        ok, where = self._where(s, checks[0][1])
        return (True, (s, where, checks[1][1], checks[2][1], checks[3][1])) if ok else (False, where)

    def open(self, username: str, slice_id, target, filter_expr="", count=None, seconds=None,
             mode: str = "text") -> tuple:
        """Start a capture; (True, CaptureSession) once tcpdump listens, else (False, message)."""
        ok, found = self._checked(username, slice_id, target, filter_expr, count, seconds, mode)
        if not ok:
            return False, found
        s, (vm, index, link_id), words, count, seconds = found
        cmd = capture.capture_command(vm, index, words, count, seconds, pcap=mode == "pcap")
        try:
            channel = self.s.executor.open_interactive(cmd)
        except ExecutorError as e:
            return False, f"Cannot reach {vm['worker_ip']}: {e}"
        started, status, detail = capture.wait_started(channel)
        if not started:
            channel.close()
            return False, capture.exit_reason(status, detail, vm["worker_ip"], int(vm["vm_id"]))
        return True, CaptureSession(channel, int(s["slice_id"]), int(vm["vm_id"]), vm["name"], f"eth{index}",
                                    cmd.target, vm["worker_ip"], link_id, " ".join(words), count, seconds, mode,
                                    MAX_PCAP_BYTES, detail)
