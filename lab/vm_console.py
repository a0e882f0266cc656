#!/usr/bin/env python3
"""Run one shell command in a lab guest through its QEMU serial unix socket.

    python3 lab/vm_console.py SOCKET 'command' [--timeout S] [--login USER --password PW] [--sudo]

QEMU must expose the guest's ttyS0 as a unix socket server, e.g.
    -chardev socket,id=ser0,path=DIR/vm.sock,server=on,wait=off,logfile=DIR/vm.serial -serial chardev:ser0

The command's output is printed (CRLF -> LF, terminal junk such as the busybox ``ESC[6n`` removed) and
the script exits with the command's exit code. Other exit codes: 124 = timeout (the command is then
interrupted with Ctrl-C), 125 = cannot connect / no shell answered.

How it copes with the serial shell: it first syncs (Ctrl-U, then ``echo`` of a nonce marker, repeated
until the shell answers), then types ``echo BEGIN; cmd; echo RC=$?`` where the markers are split with
``""`` in the typed text, so the terminal echo of the typed line (which wraps at 80 columns and is
mixed with escape sequences) can never match them; only the real output between the markers is kept.
Commands longer than ~700 bytes are sent as base64 chunks into a file in the guest and sourced.

With ``--login USER`` (a guest with a getty on its serial port, such as the lab's cloud image) it first
logs in: it presses Enter until a ``login:`` prompt (or an already open shell) is the last thing on the
console, types USER, waits for ``Password:``, types the password (``--password``, or the environment
variable VM_CONSOLE_PASSWORD so it stays out of the process list), waits for the shell, runs the command
as above and logs out again. ``--sudo`` runs the command through ``sudo sh -c`` (typing the password if
sudo asks for it). A refused login exits with 126.
Python 3 standard library only.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import select
import socket
import sys
import time

ANSI_RE = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][0-9A-Za-z]|\x1b[=>78]")
LONG_CMD = 700  # bytes; busybox line editing truncates very long lines
CHUNK = 400
LOGIN_FAILED = 126
PROMPT_LOGIN = re.compile(rb"login: *$")
PROMPT_PASSWORD = re.compile(rb"[Pp]assword: *$")
PROMPT_SHELL = re.compile(rb"[$#] *$")
LOGIN_REFUSED = re.compile(rb"Login incorrect|Authentication failure|Permission denied")


class ConsoleError(Exception):
    pass


class LoginError(ConsoleError):
    pass


class Console:
    def __init__(self, path: str, deadline: float):
        self.deadline = deadline
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            self.sock.connect(path)
        except OSError as e:
            raise ConsoleError(f"cannot connect to {path}: {e}") from e
        self.sock.setblocking(False)
        self.buf = b""

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            _, w, _ = select.select([], [self.sock], [], max(0.0, self.deadline - time.monotonic()))
            if not w:
                raise TimeoutError
            n = self.sock.send(view)
            view = view[n:]

    def read_some(self, until: float) -> bool:
        """Append available bytes to self.buf; False on timeout or EOF."""
        wait = min(until, self.deadline) - time.monotonic()
        if wait <= 0:
            return False
        r, _, _ = select.select([self.sock], [], [], wait)
        if not r:
            return False
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return True
        if not data:
            raise ConsoleError("connection closed by QEMU")
        self.buf += data
        return True

    def wait_for(self, pattern: re.Pattern[bytes], until: float) -> re.Match[bytes] | None:
        while True:
            m = pattern.search(self.buf)
            if m:
                return m
            if not self.read_some(until) and time.monotonic() >= min(until, self.deadline):
                return None

    def drain(self, quiet_for: float = 0.15) -> None:
        while self.read_some(time.monotonic() + quiet_for):
            pass

    def settle(self, quiet_for: float, at_most: float) -> bytes:
        """Read until the guest is quiet for ``quiet_for`` s (or ``at_most`` s passed); the cleaned tail."""
        until = min(time.monotonic() + at_most, self.deadline)
        while time.monotonic() < until and self.read_some(min(until, time.monotonic() + quiet_for)):
            pass
        return ANSI_RE.sub(b"", self.buf[-400:]).replace(b"\r", b"").rstrip(b"\n")

    def wait_prompt(self, prompts: tuple[re.Pattern[bytes], ...], at_most: float) -> re.Pattern[bytes] | None:
        """Wait until the console's last line matches one of ``prompts`` (or LOGIN_REFUSED appears)."""
        until = min(time.monotonic() + at_most, self.deadline)
        while True:
            tail = self.settle(0.3, max(0.0, until - time.monotonic()))
            if LOGIN_REFUSED.search(tail):
                return LOGIN_REFUSED
            for prompt in prompts:
                if prompt.search(tail):
                    return prompt
            if time.monotonic() >= until:
                return None


def login(con: Console, user: str, password: str) -> None:
    """Log in on the console's getty as ``user`` (a shell left open there is logged out first)."""
    open_shells = 0
    while time.monotonic() < con.deadline:
        con.buf = b""
        con.send(b"\r")
        seen = con.wait_prompt((PROMPT_LOGIN, PROMPT_PASSWORD, PROMPT_SHELL), 3.0)
        if seen is PROMPT_SHELL:
            open_shells += 1
            if open_shells > 2:
                raise LoginError("the console keeps a shell open (no getty to log in on)")
            logout(con)
            continue
        if seen is PROMPT_PASSWORD:  # a half-finished login: Enter gives a fresh login prompt
            continue
        if seen is not PROMPT_LOGIN:
            continue  # still booting (or output going on): press Enter again
        con.buf = b""
        con.send(user.encode() + b"\r")
        if con.wait_prompt((PROMPT_PASSWORD,), 15.0) is not PROMPT_PASSWORD:
            continue
        con.buf = b""
        con.send(password.encode() + b"\r")
        seen = con.wait_prompt((PROMPT_SHELL, PROMPT_LOGIN), 30.0)
        if seen is PROMPT_SHELL:
            return
        if seen in (LOGIN_REFUSED, PROMPT_LOGIN):
            raise LoginError(f"login as {user!r} refused")
    raise TimeoutError


def marker(word: str, nonce: str) -> tuple[str, bytes]:
    """Typed form (quotes split the word, so the echo never matches) and the output form."""
    return f'"__LAB{word}_"{nonce}__', f"__LAB{word}_{nonce}__".encode()


def build_line(cmd: str, nonce: str) -> list[bytes]:
    begin_typed, _ = marker("BEGIN", nonce)
    rc_typed = f'"__LABRC_$?_"{nonce}__'
    cmd = cmd.strip("\n")
    data = cmd.encode()
    if len(data) <= LONG_CMD and b"\n" not in data:
        # One typed line only: anything typed while the command runs would be echoed into its output.
        quoted = "'" + cmd.replace("'", "'\\''") + "'"
        return [f"echo {begin_typed}; eval {quoted}; echo {rc_typed}\n".encode()]
    # Long or multi-line command: ship it as base64 chunks and source it in the current shell.
    path = f"/tmp/.vmc_{nonce}"
    enc = base64.b64encode(data).decode()
    lines = [f": >{path}.b64\n".encode()]
    for i in range(0, len(enc), CHUNK):
        lines.append(f"echo {enc[i : i + CHUNK]} >>{path}.b64\n".encode())
    lines.append(
        f"base64 -d {path}.b64 >{path}; rm -f {path}.b64; echo {begin_typed}; . {path}; "
        f"echo {rc_typed}; rm -f {path}\n".encode()
    )
    return lines


def clean(raw: bytes) -> str:
    out = ANSI_RE.sub(b"", raw).replace(b"\r\n", b"\n").replace(b"\r", b"")
    return out.decode("utf-8", errors="replace")


def sudo_command(cmd: str, nonce: str) -> tuple[str, bytes]:
    """``cmd`` run by ``sudo sh -c`` with a prompt marker of its own, and that marker's output form."""
    typed, shown = marker("SUDO", nonce)
    quoted = "'" + cmd.replace("'", "'\\''") + "'"
    return f"sudo -p {typed} sh -c {quoted}", shown


def run(
    path: str,
    cmd: str,
    timeout: float,
    out=sys.stdout,
    user: str | None = None,
    password: str = "",
    sudo: bool = False,
) -> int:
    deadline = time.monotonic() + timeout
    con = Console(path, deadline)
    logged_in = False
    try:
        if user:
            login(con, user, password)
            logged_in = True
        nonce = os.urandom(6).hex()
        # 1) sync: make sure a shell reads our input and the line buffer is empty.
        sync_typed, sync_out = marker("SYNC", nonce)
        sync_re = re.compile(re.escape(sync_out) + rb"\r?\n")
        con.drain()
        while True:
            con.buf = b""
            con.send(b"\x15echo " + sync_typed.encode() + b"\n")
            if con.wait_for(sync_re, time.monotonic() + 2.0):
                break
            if time.monotonic() >= deadline:
                raise ConsoleError("no answer from the guest shell")
            # Maybe something is still running: interrupt it and retry.
            con.send(b"\x03")
        con.drain(0.1)  # prompt (and its ESC[6n) after the sync echo
        # 2) the command itself, between unique markers.
        nonce2 = os.urandom(6).hex()
        _, begin_out = marker("BEGIN", nonce2)
        sudo_prompt = None
        if sudo:
            cmd, sudo_prompt = sudo_command(cmd, nonce2)
        con.buf = b""
        for line in build_line(cmd, nonce2):
            con.send(line)
        begin_re = re.compile(re.escape(begin_out) + rb"\r?\n")
        rc_re = re.compile(rb"__LABRC_(\d+)_" + re.escape(nonce2.encode()) + rb"__")
        m_begin = con.wait_for(begin_re, deadline)
        start = m_begin.end() if m_begin else None
        m_rc = None
        if m_begin:
            while True:
                if sudo_prompt and sudo_prompt in con.buf[start:]:
                    at = con.buf.index(sudo_prompt, start)
                    con.buf = con.buf[:at] + con.buf[at + len(sudo_prompt) :]
                    con.send(password.encode() + b"\r")
                m_rc = rc_re.search(con.buf, start)
                if m_rc or not con.read_some(deadline):
                    if not m_rc and time.monotonic() < deadline:
                        continue
                    break
        if not m_rc:
            if start is not None:
                out.write(clean(con.buf[start:]))
                out.flush()
            con.send(b"\x03")
            print(f"vm_console: timeout after {timeout:g} s", file=sys.stderr)
            return 124
        out.write(clean(con.buf[start : m_rc.start()]))
        out.flush()
        return int(m_rc.group(1))
    except TimeoutError:
        print(f"vm_console: timeout after {timeout:g} s", file=sys.stderr)
        return 124
    finally:
        if logged_in:
            logout(con)
        con.close()


def logout(con: Console, wait: float = 10.0) -> None:
    """Log out and wait (up to ``wait`` s) for the getty's login prompt (best effort)."""
    con.deadline = max(con.deadline, time.monotonic() + wait)
    try:
        con.send(b"\x03")  # the tty flushes its input on ^C: type the rest after it
        con.drain(0.5)
        con.buf = b""
        con.send(b"\x15exit\r")
        con.wait_prompt((PROMPT_LOGIN,), wait)
    except (OSError, TimeoutError, ConsoleError):
        pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Run a command on a lab VM's serial console.")
    ap.add_argument("socket", help="QEMU serial chardev unix socket")
    ap.add_argument("command", help="shell command to run in the guest")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds (default 30)")
    ap.add_argument("--login", metavar="USER", help="log in on the console's getty first (and out at the end)")
    ap.add_argument("--password", help="password for --login and sudo (default: $VM_CONSOLE_PASSWORD)")
    ap.add_argument("--sudo", action="store_true", help="run the command as root through sudo")
    args = ap.parse_args(argv)
    password = args.password if args.password is not None else os.environ.get("VM_CONSOLE_PASSWORD", "")
    if args.login and not password:
        ap.error("--login needs --password or VM_CONSOLE_PASSWORD")
    try:
        return run(args.socket, args.command, args.timeout, user=args.login, password=password, sudo=args.sudo)
    except LoginError as e:
        print(f"vm_console: {e}", file=sys.stderr)
        return LOGIN_FAILED
    except ConsoleError as e:
        print(f"vm_console: {e}", file=sys.stderr)
        return 125


if __name__ == "__main__":
    sys.exit(main())
