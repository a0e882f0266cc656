"""A real OpenSSH sshd for tests and benchmarks: root on 127.0.0.1, a free port, everything temporary.

The daemon runs in mount and PID namespaces of its own (``unshare``): a
private tmpfs on /run gives it the privilege-separation directory it needs
without touching the machine's /run, and killing ``unshare`` kills every
process of the daemon (``--kill-child``, and the kernel ends a PID namespace
with its first process).  ``unshare`` itself dies with the process that
started it (PR_SET_PDEATHSIG), so even a killed test run leaves no daemon.

Commands run as root with HOME set to a temporary, empty directory
(``SetEnv``): this machine's /root/.bashrc runs ``pyenv init`` (~100 ms a
command), which bash would read for every SSH command otherwise.
"""
from __future__ import annotations

import ctypes
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
from typing import Optional

SSHD = "/usr/sbin/sshd"
_PR_SET_PDEATHSIG = 1


def unavailable_reason() -> Optional[str]:
    """Why a real sshd cannot be started here (None: it can)."""
    if os.geteuid() != 0:
        return "starting a real sshd needs root"
    if not os.path.exists(SSHD):
        return f"no OpenSSH server ({SSHD} is missing)"
    for tool in ("ssh-keygen", "unshare"):
        if shutil.which(tool) is None:
            return f"{tool} is missing"
    return None


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _children(pid: int) -> list:
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def _descendants(pid: int) -> list:
    found = []
    for child in _children(pid):
        found.append(child)
        found.extend(_descendants(child))
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RealSSHD:
    """``/usr/sbin/sshd -D`` with a temporary host key, client key, authorized_keys and config."""

    user = "root"

    def __init__(self, directory: str, max_sessions: Optional[int] = None):
        self.directory = str(directory)
        self.home = os.path.join(self.directory, "home")
        self.key_file = os.path.join(self.directory, "id_ed25519")
        self.known_hosts = os.path.join(self.directory, "known_hosts")
        self.log_file = os.path.join(self.directory, "sshd.log")
        self.max_sessions = max_sessions
        self.port = 0
        self._proc: Optional[subprocess.Popen] = None

    def start(self) -> RealSSHD:
        """Write the files, start the daemon, wait until it accepts connections."""
        os.makedirs(self.home, mode=0o700, exist_ok=True)
        host_key = os.path.join(self.directory, "ssh_host_ed25519_key")
        for path in (host_key, self.key_file):
            if not os.path.exists(path):
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "executor-test",
                                "-f", path], check=True)
        shutil.copyfile(self.key_file + ".pub", os.path.join(self.directory, "authorized_keys"))
        for _attempt in range(3):   # the free port may be taken between our look and sshd's bind
            self.port = _free_port()
            with open(host_key + ".pub", encoding="ascii") as f:
                kind, b64 = f.read().split()[:2]
            with open(self.known_hosts, "w", encoding="ascii") as f:
                f.write(f"[127.0.0.1]:{self.port} {kind} {b64}\n")
            config = os.path.join(self.directory, "sshd_config")
            with open(config, "w", encoding="ascii") as f:
                f.write(self._config(host_key))
            if self._launch(config):
                return self
        raise RuntimeError(f"sshd did not start; last lines of {self.log_file}:\n{self._log_tail()}")

    def ssh_settings(self, **overrides) -> dict:
        """The ``ssh`` section of a cluster config that reaches this daemon."""
        settings = {"user": self.user, "port": self.port, "key_file": self.key_file,
                    "known_hosts": self.known_hosts, "accept_new_host_keys": False,
                    "connect_timeout": 10, "command_timeout": 60, "sudo": False}
        settings.update(overrides)
        return settings

    def connection_processes(self) -> list:
        """The pids below the listening daemon: its connections and the commands they run."""
        listener = _children(self._proc.pid) if self._proc is not None else []
        return [pid for top in listener for pid in _descendants(top)]

    def command_lines(self) -> list:
        """The command lines of ``connection_processes()``."""
        lines = []
        for pid in self.connection_processes():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    lines.append(f.read().replace(b"\0", b" ").decode(errors="replace").strip())
            except OSError:
                pass
        return lines

    def kill_connections(self) -> int:
        """SIGKILL every connection of the daemon and everything it runs; how many processes."""
        victims = self.connection_processes()
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return len(victims)

    def stop(self) -> None:
        """Kill the daemon and every process it started."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(10)
            self._proc = None

    def __enter__(self) -> RealSSHD:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _config(self, host_key: str) -> str:
        lines = [
            "ListenAddress 127.0.0.1", f"Port {self.port}", f"HostKey {host_key}", "PidFile none",
            f"AuthorizedKeysFile {os.path.join(self.directory, 'authorized_keys')}",
            "StrictModes no",                  # the temporary files live under world-writable /tmp
            "UsePAM no", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes", "PermitRootLogin prohibit-password", "AllowUsers root",
            f"SetEnv HOME={self.home}", "UseDNS no", "PrintMotd no", "PrintLastLog no",
            "Subsystem sftp internal-sftp", "LogLevel ERROR",
        ]
        if self.max_sessions is not None:
            lines.append(f"MaxSessions {self.max_sessions}")
        return "\n".join(lines) + "\n"

    def _launch(self, config: str) -> bool:
        inner = ("mount -t tmpfs -o mode=0755 tmpfs /run && mkdir -m 0755 /run/sshd && "
                 f"exec {shlex.quote(SSHD)} -D -e -f {shlex.quote(config)}")
        with open(self.log_file, "ab") as log:
            self._proc = subprocess.Popen(
                ["unshare", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc",
                 "--propagation", "private", "sh", "-c", inner],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._proc = None
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(4) == b"SSH-":
                        return True
            except OSError:
                time.sleep(0.05)
        self.stop()
        return False

    def _log_tail(self) -> str:
        try:
            with open(self.log_file, encoding="utf-8", errors="replace") as f:
                return "".join(f.readlines()[-20:])
        except OSError:
            return "(no log)"
