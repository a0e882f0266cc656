"""Host commands as values: what to run on which host, and how to quote it.

Pure: no I/O, no SSH.  Every builder (``qcow_manager``, ``vm_launcher``,
``vlan_manager``, ...) returns ``HostCommand`` values made with the helpers
below; ``remote_executor`` runs them.  A command carries, besides its
script, the *action* it performs and its *target* (a VM ID, a VLAN...), so
that progress lines, logs and the tests' fake executor can tell steps apart
without reading shell text.

Shell conventions of every script:
* POSIX ``sh`` (dash on Debian/Ubuntu); every argument goes through ``q()``
  or ``join()``.
* A process this system started is recognised by its pid file *and* its
  command line (``pid_guard``), never by name alone.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Optional, Sequence


def q(arg: object) -> str:
    """Quote one argument for a POSIX shell."""
    return shlex.quote(str(arg))


def join(argv: Sequence[object]) -> str:
    """One shell command from an argv list, every word quoted."""
    return shlex.join(str(a) for a in argv)


def chain(*parts: str) -> str:
    """Join shell commands so that the first failure stops the script."""
    return " && ".join(p for p in parts if p)


def home_path(path: str, home: str) -> str:
    """Resolve a leading ``~/`` against a host's home directory."""
    if path == "~":
        return home
    if path.startswith("~/"):
        return home.rstrip("/") + "/" + path[2:]
    return path


def shell_path(path: str) -> str:
    """Quote a path for a shell, keeping a leading ``~/`` live (``"$HOME"/...``)."""
    if path.startswith("~/"):
        return f'"$HOME"/{q(path[2:])}'
    return q(path)


def pid_guard(pidfile: str, marker: str, then: str, otherwise: str = ":") -> str:
    """Shell: if ``pidfile`` names a live process whose command line contains ``marker``, run ``then``.

    Inside ``then`` the pid is ``$pid``.  This is the one check that a pid file
    still belongs to the process this system started (a recycled pid, or a
    stale file, never gets a signal).  The pid file is read by the shell (``read``): no process
    is started for a pid file that is not there.
    """
    return (f"pid=; {{ read -r pid < {q(pidfile)}; }} 2>/dev/null || true; "
            f"if [ -n \"$pid\" ] && tr '\\0' ' ' 2>/dev/null < /proc/$pid/cmdline | grep -q -- {q(marker)}; "
            f"then {then}; else {otherwise}; fi")


def link_exists(dev: str) -> str:
    """Shell test, no process started: network device ``dev`` exists in the shell's network namespace.

    Every device has an entry in ``/proc/sys/net/ipv4/conf`` (procfs answers for the reader's own
    namespace; ``/sys`` would answer for the namespace it was mounted in)."""
    return f"[ -e {q('/proc/sys/net/ipv4/conf/' + dev)} ]"


def wait_gone(wait_s: float) -> str:
    """Shell: wait up to ``wait_s`` seconds for process ``$pid`` to end."""
    return f"n=0; while [ -d /proc/$pid ] && [ $n -lt {int(wait_s * 20)} ]; do sleep 0.05; n=$((n+1)); done"


def stop_by_pidfile(pidfile: str, marker: str, signal: str = "TERM", wait_s: float = 5, first: str = "") -> str:
    """Shell: stop the guarded process of ``pidfile`` (``first``, or ``signal``; then KILL), wait, remove the file."""
    ask = first or f"kill -{signal} \"$pid\" 2>/dev/null || true"
    then = f"{ask}; {wait_gone(wait_s)}; kill -9 \"$pid\" 2>/dev/null || true; {wait_gone(2)}"
    return f"{pid_guard(pidfile, marker, then)}; rm -f {q(pidfile)}"


# sshd hands a command line to the login shell as one argument, and Linux refuses an argument over
# 128 KiB (MAX_ARG_STRLEN): a longer command never runs (the connection is reset).
MAX_COMMAND_BYTES = 128 * 1024 - 1


@dataclass(frozen=True)
class HostCommand:
    """What to run on which host.

    ``step`` names it for people (progress lines, logs); ``action`` and
    ``target`` name it for programs (e.g. ``"start_vm"``, ``1001``).
    ``stdin`` is sent to the script's standard input and appears in no log
    and no command line (the script reads it with ``IFS= read -r``).
    ``quick``: a probe that takes milliseconds (the connect check): never
    batched with the host's long scripts, it runs in a session of its own.
    """

    host: str
    script: str
    sudo: bool = True
    timeout: Optional[float] = None
    step: str = ""
    action: str = ""
    target: object = None
    stdin: str = field(default="", repr=False)  # a line the script reads first (secrets): never logged
    quick: bool = False

    def __repr__(self) -> str:
        return f"HostCommand(host={self.host!r}, step={self.step!r}, action={self.action!r}, target={self.target!r})"


@dataclass
class CommandResult:
    """What a host answered to one command (never an exception)."""

    host: str
    script: str
    exit_status: int
    stdout: str = ""
    stderr: str = ""
    duration: float = 0.0
    error: str = ""
    step: str = ""
    action: str = ""
    target: object = None

    @property
    def ok(self) -> bool:
        return self.exit_status == 0 and not self.error

    def message(self) -> str:
        """A one-line reason for a failure, fit for a user."""
        if self.ok:
            return "ok"
        if self.error:
            return self.error
        detail = (self.stderr.strip() or self.stdout.strip()).splitlines()
        tail = detail[-1] if detail else ""
        return f"exit status {self.exit_status}" + (f": {tail}" if tail else "")

    @classmethod
    def failed(cls, cmd: HostCommand, error: str, text: str = "") -> CommandResult:
        """A result for ``cmd`` that never reached the host (cancelled, unreachable...)."""
        return cls(cmd.host, text or cmd.script, -1, error=error, step=cmd.step,
                   action=cmd.action, target=cmd.target)
