"""What every use case works with: the store, the config, the door to the hosts, the runner.

One ``Services`` value is made by ``OrchestratorAPI`` and handed to each
use-case module (accounts, design, lifecycle, reconcile, ...), so that they
share one executor (one SSH connection per host) and one runner.
"""
from __future__ import annotations

import dataclasses
import threading
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
    """Reach a host and learn its facts (the SSH user's home directory); a quick probe, never
    batched with the host's long scripts (``HostCommand.quick``)."""
    return HostCommand(host, 'printf %s "$HOME"', sudo=False, step="connect", action="connect", target=host,
                       quick=True)


@dataclass
class _Probe:
    done: threading.Event = field(default_factory=threading.Event)
    result: Optional[CommandResult] = None


class HostProbes:
    """The connect probes under way, one per host at most.

    A use case that must reach a host while another one's probe of it is under way waits for
    that probe's answer instead of sending its own: a class deploying at once asks every host
    the same question at the same moment.  Only a probe under way is shared; one that has
    answered is not reused (a host may go down between two deploys).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._under_way: dict = {}

    def claim(self, host: str) -> tuple:
        """(the probe of ``host`` under way, whether the caller must send it)."""
        with self._lock:
            probe = self._under_way.get(host)
            if probe is not None:
                return probe, False
            probe = self._under_way[host] = _Probe()
            return probe, True

    def finish(self, host: str, probe: _Probe, result: Optional[CommandResult]) -> None:
        """``probe`` answered ``result`` (None: it was not sent); whoever waits for it gets it."""
        with self._lock:
            if self._under_way.get(host) is probe:
                del self._under_way[host]
        probe.result = result
        probe.done.set()

    @staticmethod
    def wait(probe: _Probe, cancel: Optional[Cancel]) -> Optional[CommandResult]:
        """The probe's answer, a copy (None: it was not sent, or Ctrl-C came first)."""
        start = time.monotonic()
        while not probe.done.wait(0.05):
            if cancel is not None and cancel.interrupted:
                return None
        if probe.result is None:
            return None
        return dataclasses.replace(probe.result, duration=time.monotonic() - start)


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
    probes: HostProbes = field(default_factory=HostProbes)

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
        dry = getattr(self.executor, "dry_run", False)
        out = {}
        for host, res in self._probe(hosts, t0, cancel).items():
            out[host] = res
            if res is None:
                continue
            if res.ok:
                self.homes[host] = res.stdout if not dry else "~"
            if progress:
                progress({"phase": "connect", "host": host, "step": "connect", "ok": res.ok,
                          "duration": res.duration, "elapsed": time.monotonic() - t0,
                          "message": res.message(), "action": "connect", "target": host})
        return out

    def _probe(self, hosts: list, t0: float, cancel: Optional[Cancel]) -> dict:
        """host -> its connect result (None: not tried): this call's probes in parallel, and the
        answers of the probes other calls had under way (``HostProbes``)."""
        claims = {h: self.probes.claim(h) for h in hosts}
        mine = [h for h in hosts if claims[h][1]]
        results: dict = {}
        try:
            results.update(self._send_probes(mine, t0, cancel))
        finally:
            for h in mine:
                self.probes.finish(h, claims[h][0], results.get(h))
        for h in hosts:
            if h not in results:
                results[h] = self.probes.wait(claims[h][0], cancel)
        unanswered = [h for h in hosts if results[h] is None and not (cancel is not None and cancel.interrupted)]
        if unanswered:  # the other call's probe was not sent (its Ctrl-C): this call sends its own
            results.update(self._send_probes(unanswered, t0, cancel))
        return {h: results[h] for h in hosts}

    def _send_probes(self, hosts: list, t0: float, cancel: Optional[Cancel]) -> dict:
        """host -> its connect result, sent now in parallel (a home that is no path is a failure)."""
        if not hosts:
            return {}
        report = self.runner.run([connect_command(h) for h in hosts], phase="connect", t0=t0, cancel=cancel,
                                 stop_on_failure=False)
        dry = getattr(self.executor, "dry_run", False)
        for host, res in zip(hosts, report.results):
            if res is not None and res.ok and not dry and not res.stdout.startswith("/"):
                res.error = f"unexpected home directory {res.stdout!r} on {host}"
        return dict(zip(hosts, report.results))
