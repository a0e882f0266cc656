"""Menu option 18 (captures and link impairments) and the streams it shows or saves.

Prompts and rendering only: a capture is ``OrchestratorAPI.open_capture``
(a channel that carries summary lines or pcap bytes), an impairment is
``set_impairment`` / ``clear_impairment``.  A pcap file is written here,
by the menu's own process with its own permissions: a new file (never an
existing one, never through a symbolic link), mode 0600.  The channel is
bridged until the capture ends (its packet count or time limit), or
Ctrl-C / Ctrl-] stops it: the menu then sends EOF, the worker stops tcpdump,
and what it still had arrives before the channel closes.  Every line shown
is cleaned of control characters (a packet cannot drive the terminal).
"""
from __future__ import annotations

import os
import re
import select
import sys
import termios
import time
import tty
from typing import Callable, Optional

from menu.prompts import (
    ERR,
    OK,
    WARN,
    ask,
    ask_optional,
    ask_valid,
    parse_int,
    parse_number,
    result,
    say,
)
from topology import impairment
from usecases.captures import LIMITS

STOP_KEYS = (b"\x1d", b"\x03")  # Ctrl-], Ctrl-C (when the terminal does not turn it into SIGINT)
DRAIN_S = 5.0
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def clean(line: str) -> str:
    """A line safe for a terminal: control characters (escape sequences among them) shown as ``?``."""
    return _CONTROL.sub("?", line)


# --- rendering -----------------------------------------------------------------------------

def impairment_text(link: dict) -> str:
    """``, delay 100ms, loss 1%`` for View's link line ("" for a link without impairment)."""
    imp = impairment.normalised(link.get("impairment"))
    return f", impaired: {impairment.describe(imp)}" if imp else ""


def render_targets(s: dict) -> list:
    """The slice's links (with their impairments) and its VMs' NICs, to choose a capture or a link from."""
    lines = [f"\nSlice {s['slice_id']} ({s.get('name') or '-'}) [{s.get('status')}]:"]
    for link in s.get("links", []):
        imp = impairment.describe(link.get("impairment"))
        lines.append(f"  link {link['link_id']}: VM{link['vm1_id']}.{link['vm1_interface']} <-> "
                     f"VM{link['vm2_id']}.{link['vm2_interface']} (VLAN {link['vlan_id']}), impairment: {imp}")
    for vm in s.get("vms", []):
        nics = ", ".join(i["name"] for i in vm.get("interfaces", []))
        lines.append(f"  VM {vm['vm_id']} {vm['name']} ({vm.get('status')}): {nics}")
    return lines


def describe_session(session) -> str:
    where = f"link {session.link_id}, " if session.link_id is not None else ""
    flt = f", filter: {session.filter}" if session.filter else ""
    return (f"Capturing on {where}VM {session.vm_id} ({session.vm_name}) {session.interface} "
            f"({session.tap} on {session.worker}){flt}; at most {session.count} packets or {session.seconds} s")


# --- bridging a capture ----------------------------------------------------------------------

class _Keys:
    """The terminal in cbreak mode (Ctrl-C still interrupts) while a capture runs, restored after."""

    def __init__(self, fd: Optional[int]):
        self.fd, self.old = fd, None

    def __enter__(self):
        if self.fd is not None:
            self.old = termios.tcgetattr(self.fd)
            tty.setcbreak(self.fd)
        return self

    def __exit__(self, *exc):
        if self.old is not None:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self.old)

    def stop_pressed(self) -> bool:
        if self.fd is None:
            return False
        data = os.read(self.fd, 64)
        return not data or any(k in data for k in STOP_KEYS)


def _summary(err: bytes) -> list:
    """tcpdump's closing lines (how many packets it captured) from the worker's stderr."""
    return [clean(x) for x in err.decode(errors="replace").splitlines() if "packets" in x]


def stream(session, sink: Callable[[bytes], bool], keys_fd: Optional[int], err: bytearray) -> str:
    """Feed the channel's stdout to ``sink`` (False: enough) until the capture ends or is stopped;
    the worker's stderr goes to ``err``.

    Returns "ended" (its limit), "stopped" (a key, Ctrl-C, or the sink) or "lost" (no end in time).
    """
    channel, how = session.channel, "ended"
    stop_at: Optional[float] = None
    with _Keys(keys_fd) as keys:
        while True:
            try:
                watch = [channel] + ([keys.fd] if keys.fd is not None and stop_at is None else [])
                ready, _, _ = select.select(watch, [], [], 0.5)
                data = _pump(channel, err)
                if data is None:
                    break
                if data and not sink(data) and stop_at is None:
                    how, stop_at = "stopped", _stop(channel)
                if keys.fd is not None and keys.fd in ready and keys.stop_pressed() and stop_at is None:
                    how, stop_at = "stopped", _stop(channel)
            except KeyboardInterrupt:
                if stop_at is None:
                    how, stop_at = "stopped", _stop(channel)
            if stop_at is not None and time.monotonic() > stop_at:
                how = "lost"
                break
    return how


def _stop(channel) -> float:
    """Ask the worker to stop the capture (EOF on its stdin); the deadline for what it still sends."""
    try:
        channel.shutdown_write()
    except (OSError, EOFError):
        pass
    return time.monotonic() + DRAIN_S


def _pump(channel, err: bytearray) -> Optional[bytes]:
    """The stdout bytes the channel holds (its stderr into ``err``); None once it has ended."""
    try:
        while channel.recv_stderr_ready():
            err += channel.recv_stderr(65536)
        out = b""
        while channel.recv_ready():
            out += channel.recv(65536)
    except OSError:
        return None
    if not out and (channel.eof_received or channel.closed):
        return None
    return out


class LineSink:
    """Summary lines from bytes, each cleaned and printed whole."""

    def __init__(self, show: Callable[[str], None]):
        self.show, self.rest, self.lines = show, b"", 0

    def __call__(self, data: bytes) -> bool:
        parts = (self.rest + data).split(b"\n")
        self.rest = parts.pop()
        for raw in parts:
            self.show(clean(raw.decode(errors="replace").rstrip("\r")))
            self.lines += 1
        return True

    def flush(self) -> None:
        if self.rest:
            self.show(clean(self.rest.decode(errors="replace")))
            self.rest = b""


class FileSink:
    """Pcap bytes into an open file, up to ``limit`` bytes (then: enough)."""

    def __init__(self, fd: int, limit: int):
        self.fd, self.limit, self.written = fd, limit, 0

    def __call__(self, data: bytes) -> bool:
        room = self.limit - self.written
        chunk = data[:max(room, 0)]
        if chunk:
            os.write(self.fd, chunk)
            self.written += len(chunk)
        return self.written < self.limit


def create_new_file(path: str) -> tuple:
    """(True, (fd, absolute path)) of a new file made for writing (mode 0600), else (False, why)."""
    path = os.path.abspath(os.path.expanduser(path.strip()))
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except FileExistsError:
        return False, f"{path} already exists: choose another name (nothing is ever overwritten)"
    except OSError as e:
        return False, f"{path}: {e.strerror or e}"
    return True, (fd, path)


def run_live(session, show: Callable[[str], None], keys_fd: Optional[int]) -> tuple:
    """Show a text capture line by line: (how it ended, lines shown, tcpdump's summary)."""
    sink, err = LineSink(show), bytearray()
    if session.early:
        sink(session.early)
    how = stream(session, sink, keys_fd, err)
    sink.flush()
    session.channel.close()
    return how, sink.lines, _summary(bytes(err))


def run_pcap(session, fd: int, keys_fd: Optional[int]) -> tuple:
    """Save a pcap capture to ``fd``: (how it ended, bytes written, tcpdump's summary)."""
    sink, err = FileSink(fd, session.max_bytes), bytearray()
    if session.early:
        sink(session.early)
    how = stream(session, sink, keys_fd, err)
    session.channel.close()
    return how, sink.written, _summary(bytes(err))


def keys_fd() -> Optional[int]:
    """The terminal to read Ctrl-] from (None without one: Ctrl-C still stops)."""
    return sys.stdin.fileno() if sys.stdin.isatty() else None


# --- the menu ------------------------------------------------------------------------------

def tools_menu(cli) -> None:
    say("\n1. Capture packets (live, one line per packet)\n2. Capture packets to a pcap file (for Wireshark)"
        "\n3. Set or change a link's impairment (delay, jitter, loss, rate)\n4. Clear a link's impairment")
    choice = ask_valid("Choice (1-4): ", parse_int(1, 4), "Choose a number from 1 to 4")
    slice_id = ask_valid("Slice ID: ", parse_number, "Slice ID must be a number")
    ok, s = cli.api.get_slice(cli.username, slice_id)
    if not ok:
        return result(False, s)
    for line in render_targets(s):
        say(line)
    if choice <= 2:
        return capture(cli, slice_id, pcap=choice == 2)
    if not s.get("links"):
        return result(False, f"Slice {s['slice_id']} has no links")
    link_id = ask_valid("Link ID: ", parse_number, "Link ID must be a number")
    if choice == 4:
        ok, res = cli.api.clear_impairment(cli.username, slice_id, link_id, progress=_progress)
        return result(ok, res["message"] if ok else res)
    set_impairment(cli, slice_id, link_id)


def _progress(event: dict) -> None:
    if not event["ok"]:
        say(f"  {ERR} {event['host']} {event['step']}: {event['message']}")


def set_impairment(cli, slice_id: int, link_id: int) -> None:
    say("Each value holds for each direction of the link (a ping's round trip grows by twice the delay);"
        " empty: none.")
    delay = ask_optional("Delay (e.g. 100, 100ms, 0.5s): ", "")
    jitter = ask_optional("Jitter (e.g. 10ms, at most the delay): ", "") if delay not in ("", "0") else ""
    loss = ask_optional("Loss in % (e.g. 1.5): ", "")
    rate = ask_optional("Rate (e.g. 512kbit, 10mbit, 1gbit): ", "")
    ok, res = cli.api.set_impairment(cli.username, slice_id, link_id, delay, jitter, loss, rate, progress=_progress)
    result(ok, res["message"] if ok else res)


def capture(cli, slice_id: int, pcap: bool) -> None:
    default_count, max_count, default_seconds, max_seconds = LIMITS["pcap" if pcap else "text"]
    target = ask("Capture on (e.g. 'link 1', or a NIC: '1001 eth1'): ")
    flt = ask_optional("Filter (tcpdump syntax, e.g. 'icmp' or 'tcp port 80'; empty: every packet): ", "")
    count = ask_optional(f"Stop after how many packets? [{default_count}, at most {max_count}]: ", "")
    seconds = ask_optional(f"Stop after how many seconds? [{default_seconds}, at most {max_seconds}]: ", "")
    if not pcap:
        return _capture_live(cli, slice_id, target, flt, count, seconds)
    path = ask("Save to (a new file): ")
    ok, opened = create_new_file(path)
    if not ok:
        return result(False, opened)
    fd, path = opened
    try:
        ok, session = cli.api.open_capture(cli.username, slice_id, target, flt, count, seconds, mode="pcap")
        if not ok:
            os.unlink(path)
            return result(False, session)
        say(describe_session(session))
        say(f"Writing to {path}: Ctrl-C or Ctrl-] stops it.")
        how, size, summary = run_pcap(session, fd, keys_fd())
    finally:
        os.close(fd)
    for line in summary:
        say(f"  {line}")
    tail = " (stopped)" if how == "stopped" else "" if how == "ended" else f" {WARN} the worker stopped answering"
    say(f"\n{OK} Saved {size} bytes of pcap to {path}{tail}")


def _capture_live(cli, slice_id: int, target: str, flt: str, count: str, seconds: str) -> None:
    ok, session = cli.api.open_capture(cli.username, slice_id, target, flt, count, seconds, mode="text")
    if not ok:
        return result(False, session)
    say(describe_session(session))
    say("Ctrl-C or Ctrl-] returns to the menu.\n")
    how, lines, summary = run_live(session, say, keys_fd())
    for line in summary:
        say(f"  {line}")
    end = {"ended": "the capture ended", "stopped": "capture stopped", "lost": "the worker stopped answering"}[how]
    say(f"\n({end}: {lines} line(s))")
