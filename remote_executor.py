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
"""
from __future__ import annotations

import logging
import math
import os
import socket
import stat
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable, Optional, Union

from config import ClusterConfig
from hostcmd import CommandResult, HostCommand, q

__all__ = ["CommandResult", "ExecutorError", "HostCommand", "RemoteExecutor", "configure_logging"]

log = logging.getLogger("cloudrepo.remote")


class ExecutorError(Exception):
    """A host could not be reached (connection, host key, authentication)."""


@dataclass
class ExecutorStats:
    connections: int = 0
    commands: int = 0
    failures: int = 0
    files_copied: int = 0
    by_host: dict = field(default_factory=dict)


def configure_logging(log_file: str, level: int = logging.INFO) -> None:
    """Send this program's logs to ``log_file`` only (never the screen)."""
    os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.FileHandler(log_file, encoding="utf-8")
    handler.setFormatter(logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
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


# --- the executor -------------------------------------------------------------

class RemoteExecutor:
    """Runs ``HostCommand`` values on the cluster's hosts over SSH."""

    def __init__(self, config: Union[ClusterConfig, str, dict, None] = None,
                 dry_run: bool = False):
        self.config = ClusterConfig.coerce(config)
        self.dry_run = dry_run
        self.plan: list[HostCommand] = []
        self.stats = ExecutorStats()
        self._clients: dict = {}
        self._homes: dict = {}
        self._lock = threading.Lock()
        self._host_locks: dict = {}

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

    def run_all(self, cmds: Iterable[HostCommand], parallel: bool = True) -> list:
        """Run commands (in parallel across and within hosts); results in order."""
        cmds = list(cmds)
        if not parallel or len(cmds) < 2:
            return [self.run(c) for c in cmds]
        with ThreadPoolExecutor(max_workers=min(16, len(cmds))) as pool:
            return list(pool.map(self.run, cmds))

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
        return self._exec(cmd.host, text, timeout)

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

    def _client(self, host: str):
        import paramiko  # imported here so that unit tests and dry runs need no SSH stack

        with self._host_lock(host):
            client = self._clients.get(host)
            if client is not None:
                transport = client.get_transport()
                if transport is not None and transport.is_active():
                    return client
                client.close()
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
                client.set_missing_host_key_policy(paramiko.RejectPolicy())
            try:
                sock = socket.create_connection((host, ssh.port), timeout=ssh.connect_timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError as e:
                raise ExecutorError(f"cannot connect to {host}:{ssh.port}: {e}") from e
            try:
                client.connect(host, port=ssh.port, username=ssh.user, key_filename=ssh.key_file,
                               sock=sock, timeout=ssh.connect_timeout,
                               banner_timeout=ssh.connect_timeout, auth_timeout=ssh.connect_timeout,
                               allow_agent=False, look_for_keys=False)
            except paramiko.BadHostKeyException as e:
                sock.close()
                raise ExecutorError(f"host key of {host} does not match {ssh.known_hosts} "
                                    f"(possible man-in-the-middle): refusing to connect") from e
            except paramiko.SSHException as e:
                sock.close()
                if "not found in known_hosts" in str(e):
                    raise ExecutorError(f"host {host} is not in {ssh.known_hosts}: refusing an "
                                        f"unknown host key (set ssh.accept_new_host_keys to trust it)") from e
                raise ExecutorError(f"SSH to {ssh.user}@{host} failed: {e}") from e
            except OSError as e:
                sock.close()
                raise ExecutorError(f"SSH to {ssh.user}@{host} failed: {e}") from e
            transport = client.get_transport()
            transport.set_keepalive(15)
            with self._lock:
                self.stats.connections += 1
                self._clients[host] = client
            log.info("host=%s connected as %s", host, ssh.user)
            return client

    def _open_channel(self, host: str):
        import paramiko

        for attempt in (1, 2):
            client = self._client(host)
            try:
                return client.get_transport().open_session(timeout=self.config.ssh.connect_timeout)
            except (paramiko.SSHException, OSError, EOFError, AttributeError) as e:
                with self._lock:
                    if self._clients.get(host) is client:
                        del self._clients[host]
                client.close()
                if attempt == 2:
                    raise ExecutorError(f"SSH session to {host} failed: {e}") from e
        raise AssertionError("unreachable")

    def _exec(self, host: str, text: str, timeout: float) -> tuple:
        chan = self._open_channel(host)
        deadline = time.monotonic() + timeout
        out, err = [], []
        try:
            chan.settimeout(0.2)
            chan.exec_command(text)
            chan.shutdown_write()
            while True:
                got = False
                while chan.recv_ready():
                    out.append(chan.recv(65536))
                    got = True
                while chan.recv_stderr_ready():
                    err.append(chan.recv_stderr(65536))
                    got = True
                if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError
                if not got:
                    time.sleep(0.002)
            status = chan.recv_exit_status()
        except (socket.timeout, TimeoutError):
            raise TimeoutError from None
        except Exception as e:  # noqa: BLE001 - paramiko raises SSHException, EOFError, OSError...
            self._forget(host, chan.get_transport())
            raise ExecutorError(f"SSH session to {host} failed: {e or type(e).__name__}") from e
        finally:
            chan.close()
        return status, b"".join(out).decode(errors="replace"), b"".join(err).decode(errors="replace")

    def _put(self, host: str, local_path: str, remote_path: str, timeout: float) -> None:
        if not os.path.isfile(local_path):
            raise OSError(f"{local_path} does not exist on the manager")
        client = self._client(host)
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
