"""An in-process SSH server whose commands do what a test says (paramiko, 127.0.0.1, a free port).

It has its own host key, accepts one client key (public-key authentication
only) and writes the client's key file and a known_hosts file naming it, so
that a ``RemoteExecutor`` connects to it exactly as to a real host::

    server = SSHServer(tmp_path, handler=answer(lambda cmd: (0, "out", "")))
    ex = RemoteExecutor(lab_config(ssh=server.ssh_settings()))

Every exec request runs ``handler(chan, command)`` in its own thread, once
the reply to the request has gone out (a channel closed before it would make
paramiko's client report "Channel closed.").  The handlers below
script the cases a real sshd only shows now and then: the exit status sent
before the output, several MiB on both streams, a command that never ends, a
connection that breaks mid-command.

``python tests/sshserver.py`` serves in a process of its own and prints its
settings as one JSON line (bench/executor.py measures the client alone so).
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
from typing import Callable, Optional

import paramiko
from paramiko.common import MSG_CHANNEL_FAILURE, MSG_CHANNEL_SUCCESS

Handler = Callable[[paramiko.Channel, str], None]


# --- handlers -------------------------------------------------------------------------

def send_reply(chan: paramiko.Channel, status: int, out: bytes = b"", err: bytes = b"",
               status_first: bool = False, pause: float = 0.0) -> None:
    """Send a command's outputs and exit status, then close the channel.

    Normal order (OpenSSH's usual one): data, EOF, exit status, close.  With
    ``status_first`` the exit status goes first and the data ``pause`` s
    later, which OpenSSH also does when the command exits before sshd has
    forwarded its last output.
    """
    if status_first:
        chan.send_exit_status(status)
        time.sleep(pause)
    if out:
        chan.sendall(out)
    if err:
        chan.sendall_stderr(err)
    chan.shutdown_write()
    if not status_first:
        chan.send_exit_status(status)
    chan.close()


def answer(reply: Callable[[str], tuple], status_first: Callable[[str], bool] = lambda cmd: False,
           pause: float = 0.02) -> Handler:
    """A handler answering ``reply(command) -> (status, stdout, stderr)`` (text or bytes)."""

    def handle(chan: paramiko.Channel, command: str) -> None:
        status, out, err = reply(command)
        send_reply(chan, status, _bytes(out), _bytes(err), status_first(command), pause)

    return handle


def shell(home: str) -> Handler:
    """A handler running the command with ``sh -c`` on this machine, HOME set to ``home``."""

    def reply(command: str) -> tuple:
        env = {"HOME": home, "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}
        done = subprocess.run(["sh", "-c", command], capture_output=True, env=env, cwd=home, timeout=60)
        return done.returncode, done.stdout, done.stderr

    return answer(reply)


def pattern(size: int, tag: bytes) -> bytes:
    """``size`` bytes of a pattern that shows any lost, doubled or swapped block."""
    line_no, lines = 0, []
    total = 0
    while total < size:
        line = tag + b" %09d\n" % line_no
        lines.append(line)
        total += len(line)
        line_no += 1
    return b"".join(lines)[:size]


def flood(out_size: int, err_size: int, chunk: int = 32 * 1024, status: int = 0) -> Handler:
    """A handler sending ``pattern(out_size, b"out")`` and ``pattern(err_size, b"err")`` interleaved.

    The server blocks when the client's channel window is full, as a remote
    command blocks on a full pipe: a client that drains one stream only
    never gets the end of either.
    """
    out, err = pattern(out_size, b"out"), pattern(err_size, b"err")

    def handle(chan: paramiko.Channel, command: str) -> None:
        for start in range(0, max(out_size, err_size), chunk):
            if start < out_size:
                chan.sendall(out[start:start + chunk])
            if start < err_size:
                chan.sendall_stderr(err[start:start + chunk])
        send_reply(chan, status)

    return handle


def hang(server: SSHServer) -> Handler:
    """A handler that never answers (until the client closes the channel or the server stops)."""

    def handle(chan: paramiko.Channel, command: str) -> None:
        while not chan.closed and not server.stopped.wait(0.05):
            pass

    return handle


def drop_connection(partial_output: bytes = b"partial") -> Handler:
    """A handler that sends some output, then breaks the whole SSH connection."""

    def handle(chan: paramiko.Channel, command: str) -> None:
        chan.sendall(partial_output)
        time.sleep(0.05)
        chan.get_transport().close()

    return handle


def route(default: Handler, **by_prefix: Handler) -> Handler:
    """A handler choosing, by the command's first word, among ``by_prefix`` (else ``default``)."""

    def handle(chan: paramiko.Channel, command: str) -> None:
        first = command.split(" ", 1)[0]
        (by_prefix.get(first) or default)(chan, command)

    return handle


def _bytes(value) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


# --- the server -----------------------------------------------------------------------

class _ServerTransport(paramiko.Transport):
    """A server transport that tells when the reply to a channel request has been sent."""

    def __init__(self, sock: socket.socket):
        super().__init__(sock)
        self._replied: dict = {}      # the client's channel id -> Event
        self._replied_lock = threading.Lock()

    def reply_sent(self, chan: paramiko.Channel) -> threading.Event:
        """Set once the reply to ``chan``'s pending request has gone out."""
        with self._replied_lock:
            return self._replied.setdefault(chan.remote_chanid, threading.Event())

    def forget_reply(self, chan: paramiko.Channel) -> None:
        with self._replied_lock:
            self._replied.pop(chan.remote_chanid, None)

    def _send_user_message(self, data) -> None:
        super()._send_user_message(data)
        raw = data.asbytes()
        if raw[:1] in (bytes([MSG_CHANNEL_SUCCESS]), bytes([MSG_CHANNEL_FAILURE])):
            (recipient,) = struct.unpack(">I", raw[1:5])
            with self._replied_lock:
                event = self._replied.get(recipient)
            if event is not None:
                event.set()


class _Interface(paramiko.ServerInterface):
    def __init__(self, server: SSHServer):
        self.server = server

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        accepted = self.server.authorized_key
        if username == self.server.user and key.get_base64() == accepted.get_base64():
            return paramiko.AUTH_SUCCESSFUL
        return paramiko.AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind != "session":
            return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED
        return paramiko.OPEN_SUCCEEDED if self.server._session_opened() else paramiko.OPEN_FAILED_CONNECT_FAILED

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        text = command.decode(errors="replace")
        channel.get_transport().reply_sent(channel)    # before the reply can go out
        threading.Thread(target=self.server._run_command, args=(channel, text),
                         name="sshserver-cmd", daemon=True).start()
        return True


class SSHServer:
    """A threaded SSH server on 127.0.0.1 (see the module's docstring)."""

    user = "tester"

    def __init__(self, directory: str, handler: Optional[Handler] = None):
        self.directory = str(directory)
        self.home = os.path.join(self.directory, "home")
        os.makedirs(self.home, exist_ok=True)
        self.host_key = paramiko.ECDSAKey.generate()
        self.client_key = paramiko.ECDSAKey.generate()
        self.authorized_key: paramiko.PKey = self.client_key
        self.key_file = os.path.join(self.directory, "id_ecdsa")
        self.client_key.write_private_key_file(self.key_file)
        self.handler: Handler = handler or shell(self.home)
        self.stopped = threading.Event()
        self.connections = 0
        self.commands: list = []
        self.max_sessions: Optional[int] = None   # refuse more sessions at once (sshd's MaxSessions)
        self.sessions = 0                          # sessions open now, and the most at once
        self.peak_sessions = 0
        self.refused_sessions = 0
        self._lock = threading.Lock()
        self._transports: list = []
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.port = self._listener.getsockname()[1]
        self.known_hosts = os.path.join(self.directory, "known_hosts")
        self.write_known_hosts(self.host_key)
        self._acceptor = threading.Thread(target=self._accept_loop, name="sshserver-accept", daemon=True)
        self._acceptor.start()

    def ssh_settings(self, **overrides) -> dict:
        """The ``ssh`` section of a cluster config that reaches this server."""
        settings = {"user": self.user, "port": self.port, "key_file": self.key_file,
                    "known_hosts": self.known_hosts, "accept_new_host_keys": False,
                    "connect_timeout": 10, "command_timeout": 60, "sudo": False}
        settings.update(overrides)
        return settings

    def write_known_hosts(self, *keys: paramiko.PKey) -> None:
        """known_hosts naming ``keys`` (none: an empty file) for this server's address."""
        with open(self.known_hosts, "w", encoding="ascii") as f:
            for key in keys:
                f.write(f"[127.0.0.1]:{self.port} {key.get_name()} {key.get_base64()}\n")

    def drop_connections(self) -> None:
        """Break every open connection (as a rebooted host or a cut cable would)."""
        with self._lock:
            transports, self._transports = self._transports, []
        for t in transports:
            t.close()

    def close(self) -> None:
        """Stop listening and break every connection."""
        self.stopped.set()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)   # wakes the accept() of the other thread
        except OSError:
            pass
        self._listener.close()
        self.drop_connections()
        self._acceptor.join(5)

    def __enter__(self) -> SSHServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _accept_loop(self) -> None:
        while not self.stopped.is_set():
            try:
                sock, _addr = self._listener.accept()
            except OSError:
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._serve, args=(sock,), name="sshserver-conn", daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        transport = _ServerTransport(sock)
        transport.add_server_key(self.host_key)
        with self._lock:
            self.connections += 1
            self._transports.append(transport)
        try:
            transport.start_server(server=_Interface(self))
        except (paramiko.SSHException, EOFError, OSError):
            transport.close()

    def _session_opened(self) -> bool:
        with self._lock:
            if self.max_sessions is not None and self.sessions >= self.max_sessions:
                self.refused_sessions += 1
                return False
            self.sessions += 1
            self.peak_sessions = max(self.peak_sessions, self.sessions)
            return True

    def _run_command(self, chan: paramiko.Channel, command: str) -> None:
        with self._lock:
            self.commands.append(command)
        transport = chan.get_transport()
        ended = threading.Event()
        close = chan.close

        def end_session() -> None:
            # The session ends for the count before the client can see its channel close; counted
            # after, a client that opens its next session at once would be seen above its limit.
            if not ended.is_set():
                ended.set()
                with self._lock:
                    self.sessions -= 1

        def close_and_count() -> None:
            end_session()
            close()

        chan.close = close_and_count
        try:
            transport.reply_sent(chan).wait(30)
            transport.forget_reply(chan)
            self.handler(chan, command)
        except (OSError, EOFError, paramiko.SSHException):
            pass                          # the client went away (timed out, closed the channel)
        except Exception:                 # a broken handler: answer at once rather than let a test hang
            with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
                send_reply(chan, 255, err=traceback.format_exc().encode())
        finally:
            end_session()


def _serve_forever() -> None:
    """Serve in this process: print the settings as JSON, run until stdin closes.

    ``printf %s WORD`` answers WORD (``"$HOME"``: its home), ``sleep N`` answers after N s.  Argument
    ``mixed``: every other answer sends its exit status first (else: OpenSSH's
    usual order).
    """
    import tempfile

    directory = tempfile.mkdtemp(prefix="sshserver-")
    mixed = len(sys.argv) > 1 and sys.argv[1] == "mixed"
    counter = iter(range(1 << 62))
    server = SSHServer(directory)

    def sleeper(chan: paramiko.Channel, command: str) -> None:
        time.sleep(float(command.split()[1]))
        send_reply(chan, 0)

    def printf(command: str) -> tuple:
        word = command.split(" ", 2)[-1]
        return 0, server.home if word == '"$HOME"' else word, ""

    echo = answer(printf, status_first=lambda cmd: mixed and next(counter) % 2 == 1, pause=0.0)
    server.handler = route(echo, sleep=sleeper)
    print(json.dumps({"host": "127.0.0.1", "ssh": server.ssh_settings(), "directory": directory}), flush=True)
    sys.stdin.read()
    server.close()


if __name__ == "__main__":
    _serve_forever()
