#!/usr/bin/env python3
"""Deploy benchmark in the local lab (SPEC §8): the reference slice, end to end.

Reference slice: 6 cirros VMs over 3 workers, 5 links in a chain
(vm1-vm2-...-vm6), internet on 2 VMs (vm1, vm6): 12 NICs that should get a
DHCP lease.  For each run it measures, with the real product over real SSH:

* design: create_slice + 6 add_vm_to_slice (overlays made on the workers)
* deploy: deploy_slice until it returns, and per phase (connect, network, vms)
* leases: until every one of the 12 NICs holds its lease (checked on the
  network node's lease files, from outside the VMs; guest boot under TCG)
* delete: delete_slice of the running slice
* SSH connections opened and commands run in each phase

Each run measures the project twice on the same lab, one right after the
other: as built (one reused SSH connection per host, the hosts' commands in
parallel) and as a baseline that keeps everything else but works like the
original did: one command at a time, a new SSH connection for every command.
The speed-up column is measured in this one run; the original's own figures
(SPEC §8, measured in a lab like this one) are printed beside them.

Usage (as root, the lab is brought up if needed):
    .venv/bin/python bench/deploy.py [--runs 3] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

from labbench import LAB, PhaseEnds, chain_slice, lab_api, lab_exec, lab_up

from remote_executor import RemoteExecutor  # noqa: E402
from store.config import ClusterConfig  # noqa: E402

# SPEC §8: the original, measured in a lab like this one (median of 3 runs)
ORIGINAL = {"design_s": 4.9, "deploy_s": 42.9, "delete_s": 9.1, "leases": 2}


def lease_table(vlans: list) -> dict:
    out = lab_exec("netnode", " ; ".join(
        f"cat /run/cloud-repositorio/dnsmasq-vlan{v}.leases 2>/dev/null" for v in vlans) + "; true")
    return {line.split()[1].lower() for line in out.splitlines() if len(line.split()) >= 3}


def snapshot(executor: RemoteExecutor) -> tuple:
    return executor.stats.connections, executor.stats.commands + executor.stats.files_copied


class OneConnectionPerCommand(RemoteExecutor):
    """Baseline transport: a new SSH connection for every command (as the original's ssh processes)."""

    def run(self, cmd):
        try:
            return super().run(cmd)
        finally:
            self.close()

    def put_file(self, *args, **kw):
        try:
            return super().put_file(*args, **kw)
        finally:
            self.close()


def one_run(config_path: str, baseline: bool = False) -> dict:
    config = ClusterConfig.load(config_path)
    executor = OneConnectionPerCommand(config) if baseline else RemoteExecutor(config)
    tmp = tempfile.mkdtemp(prefix="bench-")
    api = lab_api(os.path.join(tmp, "database.yaml"), config, executor)
    if baseline:
        api.runner.max_parallel = 1
    r: dict = {}
    c0 = snapshot(executor)
    t = time.monotonic()
    sid = chain_slice(api, "bench")
    r["design_s"] = time.monotonic() - t
    c1 = snapshot(executor)
    r["design_conn"], r["design_cmds"] = c1[0] - c0[0], c1[1] - c0[1]

    phases = PhaseEnds()
    executor.close()  # deploy starts like a fresh menu session: no open connection
    t = time.monotonic()
    ok, msg = api.deploy_slice("admin", sid, progress=phases)
    r["deploy_s"] = time.monotonic() - t
    assert ok, msg
    c2 = snapshot(executor)
    r["deploy_conn"], r["deploy_cmds"] = c2[0] - c1[0], c2[1] - c1[1]
    r["phases"] = {k: round(v, 3) for k, v in phases.ends.items()}

    s = api.db.get_slice(sid)
    vlans = sorted({link["vlan_id"] for link in s["links"]}) + [config.internet_vlan]
    wanted = {i["mac"].lower() for vm in s["vms"] for i in vm["interfaces"] if i["vlan_id"] is not None}
    deadline = t + 300
    got = set()
    while time.monotonic() < deadline:
        got = lease_table(vlans) & wanted
        if got == wanted:
            break
        time.sleep(0.5)
    r["leases_s"] = time.monotonic() - t
    r["leases"], r["nics"] = len(got), len(wanted)

    executor.close()
    c3 = snapshot(executor)
    t = time.monotonic()
    ok, msg = api.delete_slice("admin", sid)
    r["delete_s"] = time.monotonic() - t
    assert ok, msg
    c4 = snapshot(executor)
    r["delete_conn"], r["delete_cmds"] = c4[0] - c3[0], c4[1] - c3[1]
    r["failed_cmds"] = executor.stats.failures
    executor.close()
    return r


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--config", default=os.path.join(LAB, "cluster.yaml"))
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/deploy.py drives the local lab: run it as root", file=sys.stderr)
        return 2
    lab_up()
    runs, bases = [], []
    for n in range(args.runs):
        for baseline, store in ((True, bases), (False, runs)):
            r = one_run(args.config, baseline)
            store.append(r)
            print(f"run {n + 1} {'baseline' if baseline else 'project '}: design {r['design_s']:.2f} s, "
                  f"deploy {r['deploy_s']:.2f} s (phases {r['phases']}), leases {r['leases']}/{r['nics']} "
                  f"after {r['leases_s']:.1f} s, delete {r['delete_s']:.2f} s", flush=True)

    def med(key: str, rs: list = runs) -> float:
        return statistics.median(r[key] for r in rs)

    def cell(rs: list, phase: str) -> str:
        return (f"{med(phase + '_s', rs):.2f} s, {med(phase + '_conn', rs):.0f} conn, "
                f"{med(phase + '_cmds', rs):.0f} cmds")

    print(f"\nMedian of {len(runs)} run(s), reference slice: 6 VMs / 3 workers / 5 links / 2 internet")
    print(f"{'phase':<28} {'original (SPEC §8)':<26} {'baseline (this run)':<30} {'project (this run)':<30} "
          f"{'vs baseline':>11} {'vs original':>11}")
    for name, phase, orig in (("design (create + 6 adds)", "design", "4.9 s, 18 ssh processes"),
                              ("deploy_slice returns", "deploy", "42.9 s, 78 ssh processes"),
                              ("delete_slice", "delete", "9.1 s, 33 ssh processes")):
        ours = med(phase + "_s")
        print(f"{name:<28} {orig:<26} {cell(bases, phase):<30} {cell(runs, phase):<30} "
              f"{med(phase + '_s', bases) / ours:>10.1f}x {ORIGINAL[phase + '_s'] / ours:>10.1f}x")
    print(f"{'NICs that got a DHCP lease':<28} {'2 of 12':<26} {med('leases', bases):.0f} of {bases[0]['nics']:<25} "
          f"{med('leases'):.0f} of {runs[0]['nics']}")
    leased = f"{med('leases_s', bases):.1f} s"
    print(f"{'every NIC leased (TCG boot)':<28} {'-':<26} {leased:<30} {med('leases_s'):.1f} s")
    print(f"failed commands: {sum(r['failed_cmds'] for r in runs + bases)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"project": runs, "baseline": bases}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
