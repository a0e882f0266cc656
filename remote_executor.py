"""The one door to the hosts: every host command of the product passes here.

* Commands are ``HostCommand`` values built by plain functions elsewhere
  (``qcow_manager``, ``vlan_manager``, ``vm_launcher``): a POSIX ``sh``
  script in which every argument went through ``q()``, and whether it needs
  root.  The executor adds ``sudo -n`` when the config says so.
* paramiko, one reused connection per host, TCP_NODELAY (without it every
  small command waits ~40 ms on Nagle), key authentication only, host keys
  checked against the config's known_hosts (unknown hosts refused unless
  ``accept_new_host_keys``), connect and command timeouts, never a prompt.
* Every command is logged to the log file with host, exit status and
  duration; nothing is printed to the screen.
* ``dry_run=True`` records the plan instead of running it.

Remote failures never raise: ``run()`` returns a ``CommandResult`` whose
``ok`` is False and whose ``error`` says what happened (host unreachable,
unknown host key, timeout, non-zero exit).

Reading a command's answer: an SSH server may send the exit status before the
command's last output (OpenSSH does, now and then, when the command ends
before sshd has forwarded what it printed).  So the executor reads stdout
*and* stderr to their end (EOF, which always follows the last data) and only
then takes the exit status; it sleeps in ``poll()`` on the channel between
packets, draining both streams so a command printing megabytes on both never
blocks.  At most ``MAX_SESSIONS_PER_HOST`` commands run at once on one
connection (OpenSSH refuses more sessions than its ``MaxSessions``, 10 by
default); the others wait for a free session, and a session the host still
refuses is asked for again for up to the connect timeout.  A quick probe
(``HostCommand.quick``) has ``QUICK_SESSIONS_PER_HOST`` sessions of its own.
"""
from __future__ import annotations

import contextvars
import logging
import math
import os
import select
import socket
import stat
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Optional, Union

from hosts.batch import HostBatcher
from hosts.hostcmd import MAX_COMMAND_BYTES, CommandResult, HostCommand, q
from store.config import ClusterConfig

__all__ = ["CommandResult", "ExecutorError", "HostCommand", "RemoteExecutor", "UnknownHostKeyError",
           "configure_logging"]

log = logging.getLogger("cloudrepo.remote")

# Sessions at once on one connection.  sshd refuses more than MaxSessions (10 by default), and
# counts a session until it has reaped its command, a little after the channel closed: headroom
# (with 8 + 1 at once, a class burst's worker logged "no more sessions").  Quick probes
# (``HostCommand.quick``) have one more session of their own, so that they never wait behind long
# scripts: 8 at most.
MAX_SESSIONS_PER_HOST = 7
QUICK_SESSIONS_PER_HOST = 1
_READ_CHUNK = 256 * 1024
# Longest sleep between two looks at a channel: a safety net, the channel's pipe wakes us.
_POLL_SLICE_S = 1.0
# How long a transport whose channel just closed without EOF may take to end its thread.
_CUT_GRACE_S = 0.5
_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(threadName)s] [%(actor)s] %(message)s"
# Who the work is done for, on every log line: the manager service sets it per call
# ("session=s3 user=ana uid=1001"), the menu run on its own sets it at login.
LOG_ACTOR: contextvars.ContextVar = contextvars.ContextVar("cloudrepo_log_actor", default="-")


class ExecutorError(Exception):
    """A host could not be reached (connection, host key, authentication)."""


class UnknownHostKeyError(ExecutorError):
    """The host's key is not in known_hosts and new host keys are not accepted."""

    def __init__(self, host: str, known_hosts: str):
        super().__init__(f"host {host} is not in {known_hosts}: refusing an unknown host key "
                         f"(set ssh.accept_new_host_keys to trust it)")
        self.host = host


@dataclass
class ExecutorStats:
    connections: int = 0
    commands: int = 0
    failures: int = 0
    files_copied: int = 0
    by_host: dict = field(default_factory=dict)


class _ActorFilter(logging.Filter):
    """Puts ``LOG_ACTOR`` (who the work is for) on every record as ``actor``."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.actor = LOG_ACTOR.get()
        return True


def configure_logging(log_file: str, level: int = logging.INFO, mode: int = 0o600) -> None:
    """Send this program's logs to ``log_file`` only (never the screen); paramiko's from WARNING up.

    A new log file is made with ``mode`` (only its owner reads it: it names hosts, steps and users).
    """
    os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
    if not os.path.exists(log_file):
        os.close(os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, mode))
    logging.basicConfig(filename=log_file, encoding="utf-8", level=level, format=_LOG_FORMAT, force=True)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_ActorFilter())
    logging.getLogger("paramiko").setLevel(logging.WARNING)


_KNOWN_HOSTS_LOCK = threading.Lock()


def _append_new_host_key(paramiko, known_hosts: str):
    """A policy that trusts a new host key and appends just that line to known_hosts.

    (paramiko's own ``save_host_keys`` rewrites the whole file, drops lines it
    does not understand, and races when several hosts connect at once.)
    """

    class AppendNewHostKey(paramiko.MissingHostKeyPolicy):
        def missing_host_key(self, client, hostname, key):
            client.get_host_keys().add(hostname, key.get_name(), key)
            line = f"{hostname} {key.get_name()} {key.get_base64()}\n"
            try:
                with _KNOWN_HOSTS_LOCK, open(known_hosts, "a+", encoding="ascii") as f:
                    if f.tell() > 0:
                        f.seek(f.tell() - 1)
                        if f.read(1) != "\n":
                            line = "\n" + line
                    f.write(line)
            except OSError as e:
                log.warning("could not record the new host key of %s in %s: %s", hostname, known_hosts, e)
            log.warning("accepted a NEW host key for %s (%s %s)", hostname, key.get_name(),
                        key.get_fingerprint().hex())

    return AppendNewHostKey()


def _reject_unknown_host_key(paramiko, host: str, known_hosts: str):
    """paramiko's RejectPolicy, raising ``UnknownHostKeyError`` (a message for people) instead."""

    class RejectUnknownHostKey(paramiko.RejectPolicy):
        def missing_host_key(self, client, hostname, key):
            log.warning("refused the unknown host key of %s (%s %s)", hostname, key.get_name(),
                        key.get_fingerprint().hex())
            raise UnknownHostKeyError(host, known_hosts)

    return RejectUnknownHostKey()


# --- the executor -------------------------------------------------------------

class RemoteExecutor:
    """Runs ``HostCommand`` values on the cluster's hosts over SSH."""

    def __init__(self, config: Union[ClusterConfig, str, dict, None] = None,
                 dry_run: bool = False, batch_hosts: Optional[set] = None):
        self.config = ClusterConfig.coerce(config)
        self.dry_run = dry_run
        # Hosts whose waiting commands go together in one session (hosts.batch); the product
        # sets the network node, where a class's concurrent deploys meet.
        self.batch_hosts = set(batch_hosts or ())
        self._batchers: dict = {}
        self.plan: list[HostCommand] = []
        self.stats = ExecutorStats()
        self._clients: dict = {}
        self._homes: dict = {}
        self._lock = threading.Lock()
        self._host_locks: dict = {}
        self._session_slots: dict = {}

    # public API ---------------------------------------------------------------

    def run(self, cmd: HostCommand) -> CommandResult:
        """Run one command; log host, status and duration."""
        timeout = self._timeout(cmd)
        text = self.render(cmd)
        start = time.monotonic()
        if self.dry_run:
            with self._lock:
                self.plan.append(cmd)
            result = CommandResult(cmd.host, text, 0, step=cmd.step, action=cmd.action, target=cmd.target)
        elif len(text.encode()) > MAX_COMMAND_BYTES:
            result = CommandResult.failed(cmd, f"step '{cmd.step or cmd.action}' is {len(text.encode())} bytes long: "
                                               f"more than one command line on {cmd.host} takes "
                                               f"({MAX_COMMAND_BYTES}); nothing was sent", text)
        else:
            try:
                status, out, err = self._transport(cmd, text, timeout)
                result = CommandResult(cmd.host, text, status, out, err, step=cmd.step,
                                       action=cmd.action, target=cmd.target)
            except TimeoutError:
                result = CommandResult.failed(cmd, f"timed out after {timeout:g} s on {cmd.host}", text)
            except ExecutorError as e:
                result = CommandResult.failed(cmd, str(e), text)
            except Exception as e:  # noqa: BLE001 - last resort: a failure is a result, never an exception
                result = CommandResult.failed(cmd, f"SSH session to {cmd.host} failed: {e or type(e).__name__}",
                                              text)
        result.duration = time.monotonic() - start
        self._count(result)
        level = logging.INFO if result.ok else logging.WARNING
        log.log(level, "host=%s step=%s exit=%s duration=%.3fs cmd=%s%s", cmd.host,
                cmd.step or "-", result.exit_status, result.duration, text,
                "" if result.ok else f" error={result.message()!r} stderr={result.stderr.strip()!r}")
        return result

    def execute(self, host: str, script: str, sudo: bool = True,
                timeout: Optional[float] = None, step: str = "") -> CommandResult:
        """Shorthand for ``run(HostCommand(...))``."""
        return self.run(HostCommand(host, script, sudo, timeout, step))


    def render(self, cmd: HostCommand) -> str:
        """The exact text sent to the host's shell.

        Root scripts run under ``timeout`` on the host too: when the manager
        gives up on a command, the host stops it as well (a hung ``ovs-vsctl``
        or a late QEMU start never outlives the deploy that rolled back).
        """
        if not cmd.sudo:
            return cmd.script
        host_limit = max(1, math.ceil(self._timeout(cmd)) - 3)  # the host gives up before the manager
        limit = f"timeout -k 2 {host_limit} sh -c {q(cmd.script)}"
        return f"sudo -n {limit}" if self.config.ssh.sudo else limit

    def render_interactive(self, cmd: HostCommand) -> str:
        """The text of a long-lived command (a console): root when needed, but no ``timeout``."""
        if not cmd.sudo:
            return cmd.script
        text = f"sh -c {q(cmd.script)}"
        return f"sudo -n {text}" if self.config.ssh.sudo else text

    def open_interactive(self, cmd: HostCommand):
        """Start ``cmd`` on its host and return its paramiko channel (the caller reads, writes and closes it).

        Raises ExecutorError when the host cannot be reached.
        """
        text = self.render_interactive(cmd)
        chan = self._open_channel(cmd.host)
        try:
            chan.exec_command(text)
        except Exception as e:  # noqa: BLE001 - paramiko raises SSHException, EOFError, OSError...
            chan.close()
            raise ExecutorError(f"SSH session to {cmd.host} failed: {e or type(e).__name__}") from e
        log.info("host=%s step=%s interactive cmd=%s", cmd.host, cmd.step or "-", text)
        return chan

    def _timeout(self, cmd: HostCommand) -> float:
        return cmd.timeout or self.config.ssh.command_timeout

    def check(self, host: str) -> CommandResult:
        """Reach ``host`` now (connect if needed, run one trivial command); caches its home."""
        res = self.run(HostCommand(host, 'printf %s "$HOME"', sudo=False, step="connect"))
        if res.ok and not self.dry_run:
            if not res.stdout.startswith("/"):
                res.error = f"unexpected home directory {res.stdout!r} on {host}"
            else:
                with self._lock:
                    self._homes[host] = res.stdout
        return res

    def home(self, host: str) -> str:
        """The SSH user's home directory on ``host`` (asked once, then cached)."""
        if self.dry_run:
            return "~"
        with self._lock:
            if host in self._homes:
                return self._homes[host]
        res = self.check(host)
        if not res.ok:
            raise ExecutorError(f"cannot find the home directory on {host}: {res.message()}")
        return res.stdout

    def put_file(self, host: str, local_path: str, remote_path: str,
                 timeout: Optional[float] = None) -> CommandResult:
        """Copy a manager file to a host atomically (temp name, then rename).

        ``remote_path`` may start with ``~/``.  A partial copy never stays
        under the final name.
        """
        timeout = timeout or self.config.copy_timeout
        start = time.monotonic()
        desc = f"sftp put {local_path} -> {host}:{remote_path}"
        if self.dry_run:
            with self._lock:
                self.plan.append(HostCommand(host, desc, sudo=False, step="copy"))
            result = CommandResult(host, desc, 0, step="copy")
        else:
            try:
                self._put(host, local_path, remote_path, timeout)
                result = CommandResult(host, desc, 0, step="copy")
            except TimeoutError:
                result = CommandResult(host, desc, -1, step="copy",
                                       error=f"copy to {host} timed out after {timeout:g} s")
            except (OSError, ExecutorError) as e:
                result = CommandResult(host, desc, -1, step="copy", error=f"copy to {host} failed: {e}")
            except Exception as e:  # noqa: BLE001 - paramiko's SSHException...: the connection is broken
                self._forget(host)
                result = CommandResult(host, desc, -1, step="copy", error=f"copy to {host} failed: {e}")
        result.duration = time.monotonic() - start
        self._count(result)
        if result.ok:
            with self._lock:
                self.stats.files_copied += 1
        log.log(logging.INFO if result.ok else logging.WARNING, "host=%s step=copy exit=%s duration=%.3fs %s %s",
                host, result.exit_status, result.duration, desc, result.error)
        return result

    def close(self) -> None:
        """Close every connection."""
        with self._lock:
            hosts = list(self._clients)
        for host in hosts:
            self._forget(host)

    def __enter__(self) -> RemoteExecutor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # internals (a fake executor in the tests overrides _transport and _put) ----

    def _transport(self, cmd: HostCommand, text: str, timeout: float) -> tuple:
        """Send ``text`` (the rendered ``cmd``) to its host: (exit status, stdout, stderr)."""
        if cmd.quick:
            return self._exec(cmd.host, text, timeout, stdin=cmd.stdin.encode(), lane="quick")
        if cmd.stdin:
            return self._exec(cmd.host, text, timeout, stdin=cmd.stdin.encode())
        if cmd.host in self.batch_hosts:
            return self._batched(cmd.host, text, timeout)
        return self._exec(cmd.host, text, timeout)

    def _batched(self, host: str, text: str, timeout: float) -> tuple:
        """Run ``text`` with whatever else waits for this host at the same moment (``hosts.batch``)."""
        slot = self._session_slot(host)
        with self._lock:
            batcher = self._batchers.get(host)
            if batcher is None:
                batcher = self._batchers[host] = HostBatcher(slot, lambda t, limit: self._exec_raw(host, t, limit))
        try:
            status, out, err = batcher.run(text, timeout)
        except (TimeoutError, ExecutorError) as e:
            raise type(e)(*e.args) from None  # each caller its own exception object
        except OSError as e:
            raise ExecutorError(f"SSH session to {host} failed: {e}") from None
        return status, out.decode(errors="replace"), err.decode(errors="replace")

    def batches(self) -> int:
        """How many scripts of two or more commands ran (per executor, all hosts)."""
        with self._lock:
            return sum(b.batches for b in self._batchers.values())

    def _forget(self, host: str, transport=None) -> None:
        """Drop a host's connection (only if it still is the one on ``transport``), to reconnect."""
        with self._lock:
            client = self._clients.get(host)
            if client is None or (transport is not None and client.get_transport() is not transport):
                return
            del self._clients[host]
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing a broken connection may fail in many ways
                pass

    def _count(self, result: CommandResult) -> None:
        with self._lock:
            self.stats.commands += 1
            self.stats.by_host[result.host] = self.stats.by_host.get(result.host, 0) + 1
            if not result.ok:
                self.stats.failures += 1

    def _host_lock(self, host: str) -> threading.Lock:
        with self._lock:
            return self._host_locks.setdefault(host, threading.Lock())

    def _session_slot(self, host: str, lane: str = "") -> threading.BoundedSemaphore:
        """One of the ``MAX_SESSIONS_PER_HOST`` sessions a host's connection may have open at once
        (``lane="quick"``: one of the ``QUICK_SESSIONS_PER_HOST`` that quick probes have besides)."""
        size = QUICK_SESSIONS_PER_HOST if lane else MAX_SESSIONS_PER_HOST
        with self._lock:
            return self._session_slots.setdefault((host, lane), threading.BoundedSemaphore(size))

    def _client(self, host: str):
        import paramiko  # imported here so that unit tests and dry runs need no SSH stack

        with self._host_lock(host):
            client = self._clients.get(host)
            if client is not None:
                transport = client.get_transport()
                if transport is not None and transport.is_active():
                    return client
                client.close()
            client = self._connect(paramiko, host)
            client.get_transport().set_keepalive(15)
            with self._lock:
                self.stats.connections += 1
                self._clients[host] = client
            log.info("host=%s connected as %s", host, self.config.ssh.user)
            return client

    def _connect(self, paramiko, host: str):
        """A new, authenticated SSHClient to ``host`` (ExecutorError with a clear message if not)."""
        client = self._client_checking_host_keys(paramiko, host)
        sock = self._tcp(host)
        try:
            pkey = self._key(paramiko)
            self._authenticate(paramiko, client, host, sock, pkey)
        except BaseException:
            self._discard(client, sock)
            raise
        return client

    def _client_checking_host_keys(self, paramiko, host: str):
        """An SSHClient that knows the recorded host keys and refuses (or records) unknown ones."""
        ssh = self.config.ssh
        client = paramiko.SSHClient()
        try:
            client.load_host_keys(ssh.known_hosts)
        except FileNotFoundError:
            if not ssh.accept_new_host_keys:
                raise ExecutorError(f"known_hosts file {ssh.known_hosts} not found: "
                                    f"cannot check the host key of {host}") from None
        except OSError as e:
            raise ExecutorError(f"cannot read known_hosts {ssh.known_hosts}: {e}") from e
        if ssh.accept_new_host_keys:
            client.set_missing_host_key_policy(_append_new_host_key(paramiko, ssh.known_hosts))
        else:
            client.set_missing_host_key_policy(_reject_unknown_host_key(paramiko, host, ssh.known_hosts))
        return client

    def _tcp(self, host: str) -> socket.socket:
        """A TCP connection to the host's sshd with TCP_NODELAY (without it every small command waits on Nagle)."""
        ssh = self.config.ssh
        try:
            sock = socket.create_connection((host, ssh.port), timeout=ssh.connect_timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        except OSError as e:
            raise ExecutorError(f"cannot connect to {host}:{ssh.port}: {e}") from e

    def _key(self, paramiko):
        # loaded here, not by connect(key_filename=): that one tries every key type and, when the
        # host refuses the key, reports the last type's parse error instead of the refusal
        try:
            return paramiko.PKey.from_path(self.config.ssh.key_file)
        except Exception as e:  # noqa: BLE001 - OSError, SSHException, UnknownKeyType...
            raise ExecutorError(f"cannot use the SSH key {self.config.ssh.key_file}: {e or type(e).__name__}") from e

    def _authenticate(self, paramiko, client, host: str, sock: socket.socket, pkey) -> None:
        ssh = self.config.ssh
        try:
            client.connect(host, port=ssh.port, username=ssh.user, pkey=pkey,
                           sock=sock, timeout=ssh.connect_timeout,
                           banner_timeout=ssh.connect_timeout, auth_timeout=ssh.connect_timeout,
                           allow_agent=False, look_for_keys=False)
        except (UnknownHostKeyError, ExecutorError):
            raise
        except paramiko.BadHostKeyException as e:
            raise ExecutorError(f"host key of {host} does not match {ssh.known_hosts} "
                                f"(possible man-in-the-middle): refusing to connect") from e
        except paramiko.AuthenticationException as e:
            raise ExecutorError(f"SSH to {ssh.user}@{host} failed: the host refused the key {ssh.key_file}") from e
        except (paramiko.SSHException, OSError) as e:
            raise ExecutorError(f"SSH to {ssh.user}@{host} failed: {e or type(e).__name__}") from e

    @staticmethod
    def _discard(client, sock: socket.socket) -> None:
        """Close a connection that failed half-way (its transport thread, then its socket)."""
        try:
            client.close()
        finally:
            sock.close()

    def _open_channel(self, host: str):
        """A new session channel on the host's connection (reconnecting once if it broke)."""
        import paramiko

        for attempt in (1, 2):
            client = self._client(host)
            transport = client.get_transport()
            try:
                if transport is None:   # closed by another thread in the meantime
                    raise paramiko.SSHException("the connection was closed")
                return self._open_session(host, transport)
            except (paramiko.SSHException, OSError, EOFError) as e:
                self._forget(host, transport)
                if attempt == 2:
                    raise ExecutorError(f"SSH session to {host} failed: {e or type(e).__name__}") from e
        raise AssertionError("unreachable")

    def _open_session(self, host: str, transport):
        """``transport.open_session()``, retried for a while when the host refuses a session.

        A refusal (sshd's MaxSessions, a session still closing) leaves the
        connection up; only a dead connection raises paramiko's exception.
        paramiko keeps one exception per connection, so with parallel opens
        its text may be another channel's: whether the connection is still
        up is what tells a refusal from a broken connection.
        """
        import paramiko

        timeout = self.config.ssh.connect_timeout
        deadline = time.monotonic() + timeout
        delay = 0.01
        while True:
            try:
                return transport.open_session(timeout=timeout)
            except (paramiko.SSHException, OSError, EOFError) as e:
                if not transport.is_active():
                    raise
                if time.monotonic() + delay > deadline:
                    detail = getattr(e, "text", None) or str(e) or type(e).__name__
                    raise ExecutorError(f"{host} refused a new SSH session: {detail}") from e
            log.debug("host=%s refused a session; retrying in %.2fs", host, delay)
            time.sleep(delay)
            delay = min(2 * delay, 1.0)

    def _exec(self, host: str, text: str, timeout: float, stdin: bytes = b"", lane: str = "") -> tuple:
        """Run ``text`` on ``host``: (exit status, stdout, stderr); TimeoutError, ExecutorError.

        ``stdin``: bytes for the command's standard input (a script reads them as a line).
        ``lane``: whose sessions it takes (``_session_slot``).
        """
        with self._session_slot(host, lane):
            status, out, err = self._exec_raw(host, text, timeout, stdin)
        return status, out.decode(errors="replace"), err.decode(errors="replace")

    def _exec_raw(self, host: str, text: str, timeout: float, stdin: bytes = b"") -> tuple:
        """``_exec`` in a session slot the caller holds: (exit status, stdout bytes, stderr bytes)."""
        chan = self._open_channel(host)
        transport = chan.get_transport()
        try:
            deadline = time.monotonic() + timeout
            # No EOF for the command's stdin: paramiko's shutdown_write() can send it after the
            # CLOSE of a command that already ended, and sshd then drops the whole connection
            # ("ieof packet referred to nonexistent channel", paramiko #1705).  A script that
            # reads stdin reads one line.
            chan.exec_command(text)
            if stdin:
                chan.sendall(stdin if stdin.endswith(b"\n") else stdin + b"\n")
            out, err = self._read_to_eof(chan, deadline)
            status = self._exit_status(host, chan, deadline)
        except (TimeoutError, ExecutorError):
            raise
        except Exception as e:  # noqa: BLE001 - paramiko raises SSHException, EOFError, OSError...
            if transport is None or not transport.is_active():   # else only this channel failed
                self._forget(host, transport)
            raise ExecutorError(f"SSH session to {host} failed: {e or type(e).__name__}") from e
        finally:
            chan.close()
        return status, out, err

    @staticmethod
    def _read_to_eof(chan, deadline: float) -> tuple:
        """Both outputs of a channel, read until their end (EOF or close): (stdout, stderr) bytes.

        Waits in poll() on the channel's pipe, which paramiko makes readable
        when either stream has data or has ended.  Each wake-up drains both
        streams, so the remote never blocks on a full window.  paramiko can
        drop a wake-up when data arrives on one stream while we empty the
        other (the streams share the pipe): the buffers themselves are looked
        at once more before sleeping.
        """
        chan.settimeout(0.0)  # recv raises socket.timeout at once when nothing is buffered
        open_streams = [(chan.recv, []), (chan.recv_stderr, [])]
        out_chunks, err_chunks = open_streams[0][1], open_streams[1][1]
        poller = select.poll()
        poller.register(chan.fileno(), select.POLLIN)
        while True:
            for stream in list(open_streams):
                if not _drain(*stream):
                    open_streams.remove(stream)
            if not open_streams:
                return b"".join(out_chunks), b"".join(err_chunks)
            if chan.recv_ready() or chan.recv_stderr_ready() or chan.eof_received or chan.closed:
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            poller.poll(math.ceil(min(remaining, _POLL_SLICE_S) * 1000))

    def _exit_status(self, host: str, chan, deadline: float) -> int:
        """The exit status of a channel whose outputs have ended (it may still be on its way).

        -1 when the host closed the session without one (a command killed by a
        signal).  A channel closed without EOF nor status was cut with its
        connection: ExecutorError, and the connection is forgotten.
        """
        while not chan.status_event.wait(min(max(deadline - time.monotonic(), 0), _POLL_SLICE_S)):
            if time.monotonic() >= deadline:
                raise TimeoutError
        status = chan.recv_exit_status()
        if status == -1 and not chan.eof_received:
            transport = chan.get_transport()
            transport.join(_CUT_GRACE_S)  # a dying transport ends its thread right after closing its channels
            if not transport.is_active():
                self._forget(host, transport)
                raise ExecutorError(f"SSH connection to {host} was lost during the command")
        return status

    def _put(self, host: str, local_path: str, remote_path: str, timeout: float) -> None:
        if not os.path.isfile(local_path):
            raise OSError(f"{local_path} does not exist on the manager")
        with self._session_slot(host):
            self._sftp_put(self._client(host), local_path, remote_path, timeout)

    def _sftp_put(self, client, local_path: str, remote_path: str, timeout: float) -> None:
        target = remote_path[2:] if remote_path.startswith("~/") else remote_path
        tmp = f"{target}.part-{uuid.uuid4().hex[:8]}"
        deadline = time.monotonic() + timeout

        def progress(_done: int, _total: int) -> None:
            if time.monotonic() > deadline:
                raise TimeoutError

        sftp = client.open_sftp()
        try:
            sftp.get_channel().settimeout(timeout)
            folder = os.path.dirname(target)
            if folder:
                self._sftp_makedirs(sftp, folder)
            try:
                sftp.put(local_path, tmp, callback=progress, confirm=True)
                sftp.posix_rename(tmp, target)
            except BaseException:
                try:
                    sftp.remove(tmp)
                except OSError:
                    pass
                raise
        finally:
            sftp.close()

    @staticmethod
    def _sftp_makedirs(sftp, folder: str) -> None:
        parts, path = folder.split("/"), ""
        for part in parts:
            path = f"{path}/{part}" if path or folder.startswith("/") else part
            if not part:
                continue
            try:
                if stat.S_ISDIR(sftp.stat(path).st_mode):
                    continue
            except FileNotFoundError:
                sftp.mkdir(path)


def _drain(read, chunks: list) -> bool:
    """Append to ``chunks`` what a non-blocking channel stream holds now; False once it has ended."""
    while True:
        try:
            data = read(_READ_CHUNK)
        except socket.timeout:
            return True
        if not data:
            return False
        chunks.append(data)
