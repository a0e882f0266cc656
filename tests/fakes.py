"""A recording fake of the RemoteExecutor's transport, for fast unit tests.

It overrides only ``_transport`` and ``_put``: rendering, sudo, logging and
statistics are the real executor's, so tests can still read the exact text
that would have gone to each host (``calls``).  Answers are chosen by the
*step* a command belongs to (its ``action``, ``target`` and host), never by
fragments of shell text.

The fake also keeps a small model of what exists on the hosts (``world``):
each successful command applies its effect (``start_vm`` makes a VM,
``stop_vm`` removes it, ``vlan_up``/``vlan_down``, reservations, overlays),
so a test can check that nothing made is left after a rollback, and scans
report the world in the format of the real scans.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Optional

from remote_executor import ExecutorError, RemoteExecutor
from store.config import ClusterConfig

LAB_LIKE = {
    "workers": ["10.9.0.11", "10.9.0.12", "10.9.0.13"],
    "network_node": "10.9.0.10",
    "ssh": {"key_file": "/nonexistent/key", "known_hosts": "/nonexistent/known_hosts"},
    "flavor_images": {},
    "qemu_accel": "kvm:tcg",
    "internet": {"vlan": 400, "cidr": "10.60.7.0/24", "gateway": "10.60.7.1", "uplink": "uplink0"},
    "log_file": "/tmp/cloudrepo-unit-tests.log",
}

ANY = object()


@dataclass
class Rule:
    action: str
    target: object
    host: Optional[str]
    answer: tuple  # (status, stdout, stderr)
    times: Optional[int] = None  # None: always; n: the next n matching commands

    def matches(self, cmd) -> bool:
        return (cmd.action == self.action and (self.target is ANY or cmd.target == self.target)
                and (self.host is None or cmd.host == self.host) and self.times != 0)


class FakeExecutor(RemoteExecutor):
    """Records every command; answers from rules keyed on the step; models what exists."""

    def __init__(self, config=None, base_exists: bool = True):
        super().__init__(ClusterConfig.from_dict(config or LAB_LIKE))
        self.calls: list = []          # (host, text) in order
        self.commands: list = []       # HostCommand in order
        self.rules: list = []
        self.down_hosts: set = set()
        self.base_exists = base_exists
        self.puts: list = []
        self.world: set = set()        # ("vm"|"vlan"|"reservation"|"overlay", host, id)
        self.hooks: dict = {}          # action -> callable(cmd) run before answering (e.g. inject Ctrl-C)
        self._calls_lock = threading.Lock()

    # --- configuring answers -------------------------------------------------------------

    def answer(self, action: str, target=ANY, host: Optional[str] = None, status: int = 0, out: str = "",
               err: str = "", times: Optional[int] = None) -> None:
        """Commands of ``action`` (and ``target``/``host`` if given) get this answer (newest rule first)."""
        self.rules.insert(0, Rule(action, target, host, (status, out, err), times))

    def fail(self, action: str, target=ANY, host: Optional[str] = None, status: int = 1, err: str = "failed",
             times: Optional[int] = None) -> None:
        self.answer(action, target, host, status, "", err, times)

    def actions(self, host: Optional[str] = None) -> list:
        return [(c.action, c.target) for c in self.commands if host is None or c.host == host]

    def texts(self, host: str = None) -> list:
        return [t for h, t in self.calls if host is None or h == host]

    # --- the transport -------------------------------------------------------------------

    def _transport(self, cmd, text, timeout):
        if cmd.host in self.down_hosts:
            raise ExecutorError(f"cannot connect to {cmd.host}:22: [Errno 113] No route to host")
        with self._calls_lock:
            self.calls.append((cmd.host, text))
            self.commands.append(cmd)
        hook = self.hooks.get(cmd.action)
        if hook:
            hook(cmd)
        with self._calls_lock:
            rule = next((r for r in self.rules if r.matches(cmd)), None)
            if rule is not None and rule.times is not None:
                rule.times -= 1
        answer = rule.answer if rule else self._default(cmd)
        if answer[0] == 0:
            with self._calls_lock:
                self._apply(cmd)
        return answer

    def _default(self, cmd) -> tuple:
        if cmd.action == "connect":
            return 0, "/home/ubuntu", ""
        if cmd.action == "check_base_image":
            return 0, "exists\n" if self.base_exists else "missing\n", ""
        if cmd.action == "start_vm":
            return 0, "4242\n", ""
        if cmd.action == "scan":
            return 0, self.scan_output(cmd.host), ""
        if cmd.action == "host_facts":
            return 0, f"mem_kib {16 * 1024 * 1024}\ncpus 8\ndisk_free_kib {100 * 1024 * 1024}\nqemu 0\n", ""
        return 0, "", ""

    def _apply(self, cmd) -> None:
        """What a successful command changed on its host."""
        a, t, h = cmd.action, cmd.target, cmd.host
        if a == "start_vm":
            self.world.add(("vm", h, t))
        elif a == "stop_vm":
            self.world.discard(("vm", h, t))
        elif a in ("vlan_up", "internet_up"):
            self.world.add(("vlan", h, t))
        elif a == "vlan_down":
            self.world.discard(("vlan", h, t))
        elif a == "internet_release":
            self.world.discard(("vlan", h, t))
        elif a == "create_overlay":
            self.world.add(("overlay", h, t))
        elif a == "delete_overlay":
            self.world.discard(("overlay", h, t))

    def made(self, kind: Optional[str] = None) -> set:
        """What the world holds (of one kind)."""
        return {w for w in self.world if kind is None or w[0] == kind}

    def scan_output(self, host: str) -> str:
        lines = []
        for kind, h, ident in sorted(self.world, key=str):
            if h != host:
                continue
            if kind == "vm":
                lines += [f"qemu {ident} 4242", f"tap tap{ident}_0", f"vmfiles vm{ident}.pid"]
            elif kind == "vlan":
                lines += [f"vlan {ident}", f"gateway {ident} -", f"namespace {ident}", f"dnsmasq {ident} alive",
                          f"vlanflows {ident} 5"]
            elif kind == "overlay":
                lines.append(f"overlay {ident}")
        if any(kind == "vlan" and h == host for kind, h, _ident in self.world):
            lines.append("trunk cr-trunk ok")   # the node's one trunk, made with its first VLAN
        return "\n".join(lines) + "\n"

    def open_interactive(self, cmd):
        """A capture gets a fake channel (pcap bytes or two ping lines); anything else cannot be opened here."""
        import os

        if cmd.host in self.down_hosts or cmd.action != "capture":
            raise ExecutorError(f"cannot connect to {cmd.host}:22")
        with self._calls_lock:
            self.calls.append((cmd.host, self.render_interactive(cmd)))
            self.commands.append(cmd)
        out = [PCAP_BYTES] if " -w - " in cmd.script else list(PING_LINES)
        return FakeCaptureChannel(out, hold=os.environ.get("FAKE_CLI_CAPTURE") == "hold")

    def _put(self, host, local_path, remote_path, timeout):
        if host in self.down_hosts:
            raise ExecutorError(f"cannot connect to {host}:22")
        self.puts.append((host, local_path, remote_path))


PING_LINES = [b"12:00:00.000001 IP 192.168.100.10 > 192.168.100.11: ICMP echo request, id 7, seq 1, length 64\n",
              b"12:00:00.000412 IP 192.168.100.11 > 192.168.100.10: ICMP echo reply, id 7, seq 1, length 64\n"]
PCAP_BYTES = (bytes.fromhex("d4c3b2a1020004000000000000000000ffff000001000000")
              + bytes.fromhex("01000000020000000e0000000e000000") + b"\x52\x54\x00\x03\xe9\x01" * 2 + b"\x08\x00")


class FakeCaptureChannel:
    """What a capture's SSH channel gives the menu: tcpdump's "listening" line, its output, its summary.

    ``hold``: the capture runs until the menu sends EOF (``shutdown_write``), as a real one does.
    """

    def __init__(self, out: list, hold: bool = False):
        import os

        self.out, self.hold, self.closed, self.shut, self.summary_sent = list(out), hold, False, False, False
        self.err = b"tcpdump: listening on tap1001_1, link-type EN10MB (Ethernet), snapshot length 262144 bytes\n"
        self._r, self._w = os.pipe()
        os.write(self._w, b"x")  # always readable: select never waits

    def fileno(self):
        return self._r

    @property
    def eof_received(self) -> bool:
        return not self.out and (self.shut or not self.hold)

    def _ended(self) -> None:
        if self.eof_received and not self.summary_sent:
            self.summary_sent = True
            self.err += b"2 packets captured\n2 packets received by filter\n0 packets dropped by kernel\n"

    def settimeout(self, _t):
        pass

    def recv_stderr_ready(self) -> bool:
        self._ended()
        return bool(self.err)

    def recv_stderr(self, n: int) -> bytes:
        data, self.err = self.err[:n], self.err[n:]
        return data

    def recv_ready(self) -> bool:
        return bool(self.out)

    def recv(self, _n: int) -> bytes:
        return self.out.pop(0) if self.out else b""

    def exit_status_ready(self) -> bool:
        return self.eof_received

    def recv_exit_status(self) -> int:
        return 0

    def shutdown_write(self) -> None:
        self.shut = True

    def close(self) -> None:
        import os

        if not self.closed:
            self.closed = True
            os.close(self._r)
            os.close(self._w)
