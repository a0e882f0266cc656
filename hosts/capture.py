"""Packet captures on a VM's TAP, carried over the SSH connection to its worker (SPEC §17).

Worker side (``capture_command``): check the TAP exists and the filter
compiles (``tcpdump -d``: tcpdump's own parser, on that TAP's link type),
then run ``timeout -s INT SECONDS tcpdump -i TAP -p -n -c COUNT ...`` in the
background with a pid file, and wait for it.  Its output is the channel's
stdout: one line per packet (``-l``), or the pcap stream (``-w - -U``:
each packet written as it comes).  ``-p``: the TAP is never put in
promiscuous mode, so capturing changes nothing of the traffic.  A watcher
reads the channel's stdin: when the menu closes the channel (or sends EOF,
or the connection dies) it stops tcpdump, which writes what it has and
says how many packets it saw.  ``timeout`` bounds it whatever happens.
The kind ``capture`` finds captures by their pid files (``naming``); the
VM's teardown stops them (``teardown_lines``).

Manager side (``wait_started``): read the worker's stderr until tcpdump
says ``listening on``, or the command ends (its exit status says why).
"""
from __future__ import annotations

import select
from typing import Optional

import naming
from hosts.hostcmd import HostCommand, join, q
from hosts.resources import Found, Key, Kind, register

NOT_RUNNING_EXIT = 76
BAD_FILTER_EXIT = 77
NO_TCPDUMP_EXIT = 78
LISTENING = b"listening on "


def _stop_lines(pidvar: str, tap_expr: str) -> str:
    """Shell: stop the capture whose pid is in ``$pidvar`` if its command line is a capture of ``tap_expr``."""
    return (f"if [ -n \"${pidvar}\" ] && tr '\\0' ' ' 2>/dev/null < /proc/${pidvar}/cmdline "
            f"| grep -q -- \"tcpdump -i {tap_expr} -p\"; then kill -INT \"${pidvar}\" 2>/dev/null || true; "
            f"n=0; while [ -d /proc/${pidvar} ] && [ $n -lt 40 ]; do sleep 0.05; n=$((n+1)); done; "
            f"kill -KILL -- \"-${pidvar}\" 2>/dev/null || kill -KILL \"${pidvar}\" 2>/dev/null || true; fi")


def stop_captures(tap: str) -> str:
    """Shell: stop every capture of ``tap`` (their pid files' processes, checked) and remove the pid files."""
    return (f"for pf in {q(naming.STATE_DIR)}/capture-{q(tap)}.*.pid; do [ -e \"$pf\" ] || continue; "
            f"cpid=$(cat \"$pf\" 2>/dev/null || true); {_stop_lines('cpid', tap)}; rm -f \"$pf\"; done")


def teardown_lines(vm_id: int, count: int) -> list:
    """Shell lines stopping the captures of a VM's TAPs (its stop and delete): one loop over their pid files,
    shell builtins only when there is none (a VM's stop costs what it did)."""
    if not count:
        return []
    glob = naming.capture_pidfile(naming.tap_name(vm_id, 0)[:-1] + "[0-9]*", "*")  # the state folder needs no quotes
    return [f"for pf in {glob}; do [ -e \"$pf\" ] || continue; t=${{pf##*/capture-}}; "
            f"t=${{t%%.*}}; cpid=$(cat \"$pf\" 2>/dev/null || true); {_stop_lines('cpid', '$t')}; rm -f \"$pf\"; done"]


def capture_command(vm: dict, index: int, words: list, count: int, seconds: int, pcap: bool) -> HostCommand:
    """Root script on the VM's worker capturing on TAP ``tap{vm_id}_{index}``.

    ``words``: the filter expression, one argv word each (already checked by the caller; tcpdump checks
    it again).  ``count`` packets or ``seconds``, whichever comes first.
    """
    vm_id, worker = int(vm["vm_id"]), vm["worker_ip"]
    tap = naming.tap_name(vm_id, index)
    before, after = naming.capture_pidfile(tap, "\0").split("\0")
    expr = (["--"] + list(words)) if words else []
    output = ["-w", "-", "-U"] if pcap else ["-l"]
    dump = ["timeout", "-s", "INT", "-k", "3", str(int(seconds)), "tcpdump", "-i", tap, "-p", "-n",
            "-c", str(int(count)), *output, *expr]
    check = join(["tcpdump", "-d", "-i", tap, *expr])
    state = q(naming.STATE_DIR)
    script = "\n".join([
        f"ip link show dev {q(tap)} >/dev/null 2>&1 || {{ echo 'not running' >&2; exit {NOT_RUNNING_EXIT}; }}",
        f"command -v tcpdump >/dev/null 2>&1 || {{ echo {q(f'tcpdump is not installed on {worker}')} >&2; "
        f"exit {NO_TCPDUMP_EXIT}; }}",
        f"if ! err=$({check} 2>&1 >/dev/null); then printf '%s\\n' \"$err\" | grep -v '^Warning' | tail -n 1 >&2; "
        f"exit {BAD_FILTER_EXIT}; fi" if words else ":",
        f"mkdir -p {state} && chmod 700 {state}",
        f"pf={q(before)}\"$$\"{q(after)}",
        "exec 3<&0",
        f"{join(dump)} 3<&- &",
        "cpid=$!",
        "echo \"$cpid\" > \"$pf\"",
        # the channel's end (EOF on stdin) stops the capture (shell builtins only: one process to kill after)
        "{ while read -r _ <&3; do :; done; [ -e \"$pf\" ] && kill -INT \"$cpid\"; } >/dev/null 2>&1 &",
        "watch=$!",
        "exec 3<&-",
        "rc=0; wait \"$cpid\" || rc=$?",
        "rm -f \"$pf\"",
        "kill -KILL \"$watch\" 2>/dev/null",
        "case \"$rc\" in 124|130) rc=0;; esac",
        "exit \"$rc\"",
    ])
    what = "pcap" if pcap else "packets"
    return HostCommand(worker, script, sudo=True, timeout=None, step=f"capture {what} on {tap} (VM {vm_id})",
                       action="capture", target=tap)


def wait_started(channel, timeout: float = 20) -> tuple:
    """Read the worker's stderr until tcpdump listens, or the command ends.

    Returns (True, "", stdout bytes already received) or (False, exit status, message).
    """
    err = b""
    channel.settimeout(timeout)
    while LISTENING not in err:
        while channel.recv_stderr_ready():
            err += channel.recv_stderr(4096)
        if LISTENING in err:
            break
        if channel.exit_status_ready():
            while channel.recv_stderr_ready():
                err += channel.recv_stderr(4096)
            status = channel.recv_exit_status()
            return False, status, err.decode(errors="replace").strip()
        r, _, _ = select.select([channel], [], [], timeout)
        if not r:
            return False, -1, "the worker did not answer"
    early = b""
    while channel.recv_ready():
        early += channel.recv(65536)
    return True, 0, early


# --- the kind -----------------------------------------------------------------------------

@register
class Capture(Kind):
    """A packet capture (tcpdump under timeout) on a VM's TAP, known by its pid file."""

    name = "capture"
    label = "capture on"
    transient = True  # never expected; a running one is no problem of its slice

    def scan(self, ctx, host):
        return (f"for pf in {q(naming.STATE_DIR)}/capture-tap*.pid; do [ -e \"$pf\" ] || continue; "
                "echo \"capture ${pf##*/}\"; done")

    def parse(self, host, fields):
        m = naming.CAPTURE_PID_RE.fullmatch(fields[0]) if fields else None
        ids = naming.tap_index(m.group(1)) if m else None
        return Found(Key(self.name, host, vm_id=ids[0], name=m.group(1))) if ids else None

    def owned(self, view):
        """Captures of a VM whose QEMU should run (they end by themselves within their time limit)."""
        for vm in view.running_vms():
            for i in range(len(vm.get("interfaces") or [])):
                yield Key(self.name, vm["worker_ip"], vm_id=int(vm["vm_id"]), name=naming.tap_name(vm["vm_id"], i))

    def remove(self, ctx, host, keys):
        return [stop_captures(k.name) for k in keys if naming.tap_index(k.name or "")] or [":"]

    def describe(self, key):
        return f"capture on {key.name}"


def exit_reason(status: int, text: str, worker: str, vm_id: int) -> Optional[str]:
    """The user's message for a capture that did not start."""
    if status == NOT_RUNNING_EXIT:
        return f"VM {vm_id} is not running on {worker} (see Slice status)"
    if status == BAD_FILTER_EXIT:
        return f"Not a capture filter: {text.splitlines()[-1] if text else 'tcpdump refused it'}"
    if status == NO_TCPDUMP_EXIT:
        return f"tcpdump is not installed on {worker}"
    return f"The capture could not start on {worker}: {text or f'exit status {status}'}"
