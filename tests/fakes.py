"""A recording fake of the RemoteExecutor's transport, for fast unit tests.

It overrides only ``_exec`` and ``_put``: rendering, sudo, logging and
statistics are the real executor's, so tests read the exact command text
that would have gone to each host.
"""
from __future__ import annotations

import re
import threading

from config import ClusterConfig
from remote_executor import ExecutorError, RemoteExecutor

LAB_LIKE = {
    "workers": ["10.9.0.11", "10.9.0.12", "10.9.0.13"],
    "network_node": "10.9.0.10",
    "ssh": {"key_file": "/nonexistent/key", "known_hosts": "/nonexistent/known_hosts"},
    "flavor_images": {},
    "qemu_accel": "kvm:tcg",
    "internet": {"vlan": 400, "cidr": "10.60.7.0/24", "gateway": "10.60.7.1", "uplink": "uplink0"},
    "log_file": "/tmp/cloudrepo-unit-tests.log",
}


class FakeExecutor(RemoteExecutor):
    """Records (host, text) of every command; answers from rules."""

    def __init__(self, config=None, base_exists: bool = True):
        super().__init__(ClusterConfig.from_dict(config or LAB_LIKE))
        self.calls: list = []
        self.puts: list = []
        self.rules: list = []          # (host regex or None, text regex, (status, out, err))
        self.down_hosts: set = set()
        self.base_exists = base_exists
        self._calls_lock = threading.Lock()

    def on(self, pattern: str, status: int = 0, out: str = "", err: str = "", host: str = None) -> None:
        """Answer commands matching ``pattern`` (first matching rule wins)."""
        self.rules.insert(0, (host, re.compile(pattern, re.S), (status, out, err)))

    def texts(self, host: str = None) -> list:
        return [t for h, t in self.calls if host is None or h == host]

    def _exec(self, host, text, timeout):
        if host in self.down_hosts:
            raise ExecutorError(f"cannot connect to {host}:22: [Errno 113] No route to host")
        with self._calls_lock:
            self.calls.append((host, text))
        for h, rx, answer in self.rules:
            if (h is None or h == host) and rx.search(text):
                return answer
        if text == 'printf %s "$HOME"':
            return 0, "/home/ubuntu", ""
        if "echo exists || echo missing" in text:
            return 0, "exists\n" if self.base_exists else "missing\n", ""
        if "qemu-system-x86_64" in text and "-daemonize" in text:
            return 0, "4242\n", ""
        return 0, "", ""

    def _put(self, host, local_path, remote_path, timeout):
        if host in self.down_hosts:
            raise ExecutorError(f"cannot connect to {host}:22")
        self.puts.append((host, local_path, remote_path))
