"""What every use case works with: the store, the config, the door to the hosts, the runner.

One ``Services`` value is made by ``OrchestratorAPI`` and handed to each
use-case module (accounts, design, lifecycle, reconcile, ...), so that they
share one executor (one SSH connection per host) and one runner.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

from database import Database
from deployment_api import DeploymentAPI
from hosts.hostcmd import CommandResult, HostCommand
from hosts.resources import HostContext
from hosts.runner import Cancel, Progress, Runner
from store.config import ClusterConfig
from usecases.capacity import Capacity
from usecases.vm_access import Credentials


def connect_command(host: str) -> HostCommand:
    """Reach a host and learn its facts (the SSH user's home directory)."""
    return HostCommand(host, 'printf %s "$HOME"', sudo=False, step="connect", action="connect", target=host)


@dataclass
class Services:
    db: Database
    config: ClusterConfig
    deployment: DeploymentAPI
    runner: Runner
    homes: dict = field(default_factory=dict)  # facts learnt at connect: host -> the SSH user's home
    credentials: Optional[Credentials] = None
    capacity: Optional[Capacity] = None
    recovery: Optional[object] = None  # usecases.recovery.Recovery, set by OrchestratorAPI
    recovery_failures: dict = field(default_factory=dict)  # slice key -> when its last recovery failed

    def __post_init__(self) -> None:
        if self.credentials is None:
            self.credentials = Credentials(self.db.path)
        if self.capacity is None:
            self.capacity = Capacity(self)

    @property
    def executor(self):
        return self.deployment.executor

    def recover(self, slice_ids=None, data: Optional[dict] = None) -> list:
        """Undo what dead sessions' deploys, starts and stops left on the hosts (of some slices, or all).

        Every reader and writer of a slice calls this first; returns the outcomes (none: nothing to do).
        """
        if self.recovery is None:
            return []
        return self.recovery.recover(slice_ids, data)

    def host_context(self) -> HostContext:
        """Config plus the facts known about hosts (their home directories, learnt at connect)."""
        return HostContext(self.config, dict(self.homes))

    def connect(self, hosts: list, progress: Optional[Progress] = None, t0: Optional[float] = None,
                cancel: Optional[Cancel] = None) -> tuple:
        """Reach every host in parallel and learn its facts: (HostContext, first failure or None)."""
        results = self.connect_each(hosts, progress, t0, cancel)
        failed = next((res for res in results.values() if res is not None and not res.ok), None)
        if failed is None and cancel is not None and cancel.interrupted:
            failed = CommandResult("-", "", -1, error="interrupted (Ctrl-C)", step="connect")
        return self.host_context(), failed

    def connect_each(self, hosts: list, progress: Optional[Progress] = None, t0: Optional[float] = None,
                     cancel: Optional[Cancel] = None) -> dict:
        """host -> its connect result (None: not tried, after Ctrl-C); facts of the reachable ones kept."""
        t0 = time.monotonic() if t0 is None else t0
        report = self.runner.run([connect_command(h) for h in hosts], phase="connect", t0=t0, cancel=cancel,
                                 stop_on_failure=False)
        dry = getattr(self.executor, "dry_run", False)
        out = {}
        for host, res in zip(hosts, report.results):
            out[host] = res
            if res is None:
                continue
            if res.ok and not dry and not res.stdout.startswith("/"):
                res.error = f"unexpected home directory {res.stdout!r} on {host}"
            if res.ok:
                self.homes[host] = res.stdout if not dry else "~"
            if progress:
                progress({"phase": "connect", "host": host, "step": "connect", "ok": res.ok,
                          "duration": res.duration, "elapsed": time.monotonic() - t0,
                          "message": res.message(), "action": "connect", "target": host})
        return out
