"""What the lab benchmarks share: paths, a command on a lab host, an API on the lab, the reference
slice, and the end of each deploy phase.

Import it first: it puts the repository on ``sys.path``.
"""
from __future__ import annotations

import os
import subprocess
import sys
from typing import Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
LAB = os.path.join(ROOT, "lab")
LAB_CONFIG = os.path.join(LAB, "cluster.yaml")


def lab_up(workers: Optional[int] = None) -> None:
    """Bring the lab up (``lab/up.sh``; with ``workers``: that many, as ``LAB_WORKERS``)."""
    env = dict(os.environ, LAB_WORKERS=str(workers)) if workers else None
    subprocess.run([os.path.join(LAB, "up.sh")], check=True, capture_output=True, env=env)


def lab_exec(host: str, cmd: str, timeout: float = 120) -> str:
    """Standard output of ``sh -c CMD`` on lab host ``host`` (run as root inside it)."""
    return subprocess.run([os.path.join(LAB, "exec.sh"), host, "sh", "-c", cmd],
                          capture_output=True, text=True, timeout=timeout).stdout


def lab_api(db_path: str, config=None, executor=None):
    """An ``OrchestratorAPI`` on the lab (its ``cluster.yaml`` unless ``config`` is given)."""
    from database import Database
    from deployment_api import DeploymentAPI
    from orchestrator_api import OrchestratorAPI
    from remote_executor import RemoteExecutor
    from store.config import ClusterConfig
    config = config or ClusterConfig.load(LAB_CONFIG)
    executor = executor or RemoteExecutor(config, batch_hosts={config.network_node})
    return OrchestratorAPI(Database(db_path), DeploymentAPI(executor), config)


def chain_slice(api, name: str, n_vms: int = 6, chain: int = 6, prefix: str = "b") -> int:
    """Design a slice of ``n_vms`` cirros VMs (2 data NICs each) in chains of ``chain`` linked
    eth2 -> eth1, internet on each chain's two ends; its ID.  The defaults are the reference
    slice of SPEC §8 (6 VMs, a chain of 5 links, 2 with internet)."""
    ok, s = api.create_slice("admin", name)
    assert ok, s
    sid, vms = s["slice_id"], []
    for i in range(n_vms):
        ok, vm = api.add_vm_to_slice("admin", sid, f"{prefix}{i + 1}", "cirros", 2, i % chain in (0, chain - 1))
        assert ok, vm
        vms.append(vm)
    for i in range(n_vms - 1):
        if (i + 1) % chain:
            ok, link = api.create_link("admin", sid, vms[i]["vm_id"], "eth2", vms[i + 1]["vm_id"], "eth1")
            assert ok, link
    return sid


class PhaseEnds:
    """A deploy's ``progress`` callback keeping when each phase last reported (s after the start)."""

    def __init__(self) -> None:
        self.ends: dict = {}

    def __call__(self, event: dict) -> None:
        phase = event["phase"]
        self.ends[phase] = max(self.ends.get(phase, 0.0), event["elapsed"])
