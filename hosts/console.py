"""A VM's serial console, carried over the SSH connection to its worker (SPEC §10).

Worker side (``console_command``): take the VM's console lock without
waiting (a second session is told "busy" at once), check the serial socket
exists, say so on stderr, then ``exec socat`` between the SSH channel and
QEMU's serial socket.  The lock is held by ``socat`` and released when it
ends, whatever ends it.  (paramiko cannot forward a unix socket itself,
issue 544; QEMU's socket serves one client and would make a second one
hang, so the lock is ours.)

Manager side (``bridge``): the terminal in raw mode, ``select`` over the
terminal and the channel, bytes copied both ways; Ctrl-] (0x1d) detaches,
and the terminal settings are restored in every case.
"""
from __future__ import annotations

import os
import select
import termios
import tty
from typing import Optional

import naming
from hosts.hostcmd import HostCommand, join, q

DETACH = b"\x1d"  # Ctrl-]
BUSY_EXIT = 75
NOT_RUNNING_EXIT = 76
ATTACHED = "cloud-repositorio: console attached"


def console_command(vm: dict) -> HostCommand:
    """Root script on the VM's worker: lock, check, then bridge stdin/stdout to the serial socket."""
    vm_id = int(vm["vm_id"])
    sock, lock = naming.vm_serial_socket(vm_id), naming.vm_console_lock(vm_id)
    script = "\n".join([
        f"exec 9>>{q(lock)}",
        f"flock -n 9 || {{ echo 'busy' >&2; exit {BUSY_EXIT}; }}",
        f"[ -S {q(sock)} ] || {{ echo 'not running' >&2; exit {NOT_RUNNING_EXIT}; }}",
        f"echo {q(ATTACHED)} >&2",
        "exec " + join(["socat", "-t", "1", "STDIO", f"UNIX-CONNECT:{sock}"]),
    ])
    return HostCommand(vm["worker_ip"], script, sudo=True, timeout=None, step=f"console of VM {vm_id}",
                       action="console", target=vm_id)


def boot_log_command(vm: dict, lines: int = 40) -> HostCommand:
    """Root script printing the last lines of what the VM printed on its serial console."""
    log = naming.vm_serial_log(int(vm["vm_id"]))
    script = f"[ -f {q(log)} ] || {{ echo 'no console log' >&2; exit 3; }}\ntail -n {int(lines)} {q(log)}"
    return HostCommand(vm["worker_ip"], script, sudo=True, timeout=20, step=f"boot log of VM {vm['vm_id']}",
                       action="boot_log", target=int(vm["vm_id"]))


def wait_attached(channel, timeout: float = 15) -> tuple:
    """Read the worker's stderr until it says attached, or the command ends.

    Returns (True, "", early guest output) or (False, reason, b"").
    """
    err, early = b"", b""
    channel.settimeout(timeout)
    while ATTACHED.encode() not in err:
        while channel.recv_stderr_ready():
            err += channel.recv_stderr(4096)
        while channel.recv_ready():
            early += channel.recv(65536)
        if ATTACHED.encode() in err:
            break
        if channel.exit_status_ready():
            status = channel.recv_exit_status()
            reason = {BUSY_EXIT: "busy", NOT_RUNNING_EXIT: "not running"}.get(status)
            return False, reason or err.decode(errors="replace").strip() or f"exit status {status}", b""
        r, _, _ = select.select([channel], [], [], timeout)
        if not r:
            return False, "the worker did not answer", b""
    return True, "", early


def bridge(channel, stdin_fd: int, stdout_fd: int, escape: bytes = DETACH) -> str:
    """Copy bytes between the terminal and the channel until Ctrl-] or the end: "detached" or "closed"."""
    old: Optional[list] = termios.tcgetattr(stdin_fd)
    try:
        tty.setraw(stdin_fd)
        channel.settimeout(0.0)
        while True:
            r, _, _ = select.select([stdin_fd, channel], [], [])
            if channel in r:
                data = _recv(channel)
                if data is None:
                    return "closed"
                if data:
                    os.write(stdout_fd, data)
            if stdin_fd in r:
                data = os.read(stdin_fd, 1024)
                if not data:
                    return "closed"
                if escape in data:
                    head = data.split(escape, 1)[0]
                    if head:
                        channel.sendall(head)
                    return "detached"
                channel.sendall(data)
    finally:
        termios.tcsetattr(stdin_fd, termios.TCSADRAIN, old)


def _recv(channel) -> Optional[bytes]:
    """Available bytes of the channel (stdout or stderr); None at its end."""
    out = b""
    try:
        while channel.recv_ready():
            out += channel.recv(65536)
        while channel.recv_stderr_ready():
            channel.recv_stderr(65536)  # socat's own messages are not the guest's screen
    except OSError:
        return None
    if not out and (channel.eof_received or channel.closed):
        return None
    return out
