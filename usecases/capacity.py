"""Capacity and admission: does a VM fit on a worker (SPEC §14)?

Each worker's capacity is what it reports (``/proc/meminfo``, ``nproc``)
unless the config overrides it, minus the memory kept for the host itself,
times the overcommit ratios of the config::

    capacity:
      cpu_ratio: 4.0              # vCPUs per host CPU
      ram_ratio: 1.0              # guest memory per MiB of host memory
      reserved_memory_mib: 512    # kept for the host itself
      hosts: {10.0.10.1: {memory_mib: 16384, vcpus: 8}}   # instead of what the host reports

A worker's *allocation* is the sum of the flavors of the VMs the database
places on it that are not stopped (design VMs count: they will run there),
plus the stopped VMs a start was admitted for (listed in its slice's
``starting`` mark): admission and that reservation are one database
transaction, so two starts at once never both take the last room.
A request that fits nowhere is refused before anything is made, naming the
short resource and by how much; one that would not fit even on an empty
worker is refused as one that can never fit (Emulab's distinction between a
temporary shortage and an impossible request).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

import vm_launcher
from hosts.hostcmd import HostCommand, q
from store.config import DEFAULTS as CONFIG_DEFAULTS

DEFAULTS = CONFIG_DEFAULTS["capacity"]


@dataclass(frozen=True)
class Need:
    memory_mib: int
    vcpus: int

    @classmethod
    def of(cls, vm: dict) -> Need:
        flavor = vm.get("flavor") or {}
        return cls(int(float(flavor.get("ram_gb", 0.5)) * 1024), int(flavor.get("cores", 1)))

    def __add__(self, other: Need) -> Need:
        return Need(self.memory_mib + other.memory_mib, self.vcpus + other.vcpus)


ZERO = Need(0, 0)


@dataclass(frozen=True)
class HostFacts:
    """What a host reports about itself."""

    memory_mib: int
    cpus: int
    disk_free_mib: Optional[int] = None
    vms_running: int = 0


def facts_command(host: str, image_dir: str) -> HostCommand:
    """Root script: memory, CPUs, free disk in the image folder, QEMU processes of this system."""
    script = "\n".join([
        "awk '/^MemTotal:/ {print \"mem_kib\", $2}' /proc/meminfo",
        "echo \"cpus $(nproc)\"",
        f"df -Pk {q(image_dir)} 2>/dev/null | awk 'NR == 2 {{print \"disk_free_kib\", $4}}'",
        f"echo \"qemu $(pgrep -c -f -- {q(vm_launcher.qemu_pattern())} || true)\"",
    ])
    return HostCommand(host, script, sudo=True, timeout=20, step="read capacity", action="host_facts", target=host)


def parse_facts(text: str) -> Optional[HostFacts]:
    values = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) == 2 and words[1].isdigit():
            values[words[0]] = int(words[1])
    if "mem_kib" not in values or "cpus" not in values:
        return None
    disk = values.get("disk_free_kib")
    return HostFacts(values["mem_kib"] // 1024, values["cpus"], disk // 1024 if disk is not None else None,
                     values.get("qemu", 0))


def settings(raw: Optional[dict]) -> dict:
    out = dict(DEFAULTS)
    out.update({k: v for k, v in (raw or {}).items() if v is not None})
    return out


def capacity_of(host: str, facts: HostFacts, raw: Optional[dict]) -> Need:
    """What a worker may hold: reported (or configured) size, minus the host's own memory, times the ratios."""
    cfg = settings(raw)
    override = (cfg.get("hosts") or {}).get(host) or {}
    memory = int(override.get("memory_mib", facts.memory_mib))
    cpus = int(override.get("vcpus", facts.cpus))
    usable = max(0, memory - int(cfg["reserved_memory_mib"]))
    return Need(int(usable * float(cfg["ram_ratio"])), int(cpus * float(cfg["cpu_ratio"])))


def counts(vm: dict, slice_status: str) -> bool:
    """Does this VM hold its worker's capacity (it runs, or will when its slice is deployed)?"""
    return vm.get("status") != "stopped" and slice_status != "stopped"


def starting_vm_ids(s: dict) -> set:
    """The VMs a start of this slice was admitted for (they hold their workers' capacity already)."""
    busy = s.get("busy")
    ids = busy.get("vms") if s.get("status") == "starting" and isinstance(busy, dict) else None
    return {x for x in ids if isinstance(x, int)} if isinstance(ids, list) else set()


def allocations(slices: Iterable[dict], exclude_slice: Optional[int] = None) -> dict:
    """worker -> Need of the VMs placed there that count (``exclude_slice``'s VMs left out)."""
    out: dict = {}
    for s in slices:
        if exclude_slice is not None and int(s["slice_id"]) == int(exclude_slice):
            continue
        starting = starting_vm_ids(s)
        for vm in s.get("vms", []):
            if counts(vm, s.get("status", "design")) or vm.get("vm_id") in starting:
                out[vm.get("worker_ip")] = out.get(vm.get("worker_ip"), ZERO) + Need.of(vm)
    return out


def fits(need: Need, used: Need, cap: Need) -> bool:
    return used.memory_mib + need.memory_mib <= cap.memory_mib and used.vcpus + need.vcpus <= cap.vcpus


def shortage(need: Need, used: dict, caps: dict) -> str:
    """Why ``need`` fits on none of the workers ``caps`` (worker -> capacity), for people."""
    if not caps:
        return "No worker can be reached to place the VM"
    biggest_mem = max(c.memory_mib for c in caps.values())
    biggest_cpu = max(c.vcpus for c in caps.values())
    if need.memory_mib > biggest_mem:
        return (f"needs {need.memory_mib} MiB of memory, but the largest worker has {biggest_mem} MiB in all: "
                "it can never fit")
    if need.vcpus > biggest_cpu:
        return f"needs {need.vcpus} vCPUs, but the largest worker has {biggest_cpu} in all: it can never fit"
    free = {w: Need(c.memory_mib - used.get(w, ZERO).memory_mib, c.vcpus - used.get(w, ZERO).vcpus)
            for w, c in caps.items()}
    best_mem = max(f.memory_mib for f in free.values())
    if need.memory_mib > best_mem:
        return (f"not enough memory: needs {need.memory_mib} MiB, {max(best_mem, 0)} MiB free on the best worker "
                f"(short by {need.memory_mib - max(best_mem, 0)} MiB)")
    best_cpu = max(f.vcpus for f in free.values() if f.memory_mib >= need.memory_mib)
    return (f"not enough vCPUs: needs {need.vcpus}, {max(best_cpu, 0)} free on the best worker "
            f"(short by {need.vcpus - max(best_cpu, 0)})")


def place(need: Need, workers: list, used: dict, caps: dict, vm_counts: dict) -> tuple:
    """(True, worker) with room for ``need`` (fewest VMs first, config order on ties), else (False, why)."""
    candidates = [w for w in workers if w in caps and fits(need, used.get(w, ZERO), caps[w])]
    if not candidates:
        return False, shortage(need, used, caps)
    return True, min(candidates, key=lambda w: (vm_counts.get(w, 0), workers.index(w)))


def check_slice(vms: list, used: dict, caps: dict) -> Optional[str]:
    """None when ``vms`` (on their workers) fit with ``used``; else why not, naming the worker."""
    extra: dict = {}
    for vm in vms:
        extra[vm["worker_ip"]] = extra.get(vm["worker_ip"], ZERO) + Need.of(vm)
    for worker, need in sorted(extra.items()):
        cap = caps.get(worker)
        if cap is None:
            continue  # facts unknown (unreachable): the deploy's connect step reports it
        have = used.get(worker, ZERO)
        if not fits(need, have, cap):
            if need.memory_mib + have.memory_mib > cap.memory_mib:
                return (f"not enough memory on {worker}: needs {need.memory_mib} MiB, "
                        f"{max(cap.memory_mib - have.memory_mib, 0)} MiB free")
            return (f"not enough vCPUs on {worker}: needs {need.vcpus}, "
                    f"{max(cap.vcpus - have.vcpus, 0)} free")
    return None


class Capacity:
    """Workers' facts (read once per session, over SSH) and what they may hold."""

    def __init__(self, services):
        self.s = services
        self.facts: dict = {}  # host -> HostFacts

    @property
    def raw(self) -> dict:
        return (self.s.config.raw or {}).get("capacity") or {}

    def read(self, hosts: list, refresh: bool = False) -> dict:
        """host -> HostFacts, or the reason it could not be read (a string)."""
        wanted = [h for h in hosts if refresh or h not in self.facts]
        out = {}
        if wanted:
            ctx = self.s.host_context()
            report = self.s.runner.run([facts_command(h, ctx.image_dir(h)) for h in wanted], phase="capacity",
                                       stop_on_failure=False)
            for host, res in zip(wanted, report.results):
                facts = parse_facts(res.stdout) if res is not None and res.ok else None
                if facts is not None:
                    self.facts[host] = facts
                else:
                    out[host] = res.message() if res is not None else "not read"
        out.update({h: self.facts[h] for h in hosts if h in self.facts})
        return {h: out[h] for h in hosts if h in out}

    def capacities(self, workers: list) -> tuple:
        """(worker -> capacity for the workers whose facts could be read, worker -> why not for the others)."""
        facts = self.read(workers)
        caps = {w: capacity_of(w, f, self.raw) for w, f in facts.items() if isinstance(f, HostFacts)}
        return caps, {w: f for w, f in facts.items() if not isinstance(f, HostFacts)}
