#!/usr/bin/env python3
"""More workers: does a bigger slice over more workers deploy as fast? (SPEC §12)

Brings the lab up with 3 workers and deploys the reference slice (6 cirros
VMs, a chain of 5 links, internet on both ends), then with 8 workers
(``LAB_WORKERS``) and deploys a 24-VM slice of the same shape: four chains of
6 VMs (20 links: a slice's whole VLAN pool).  It prints the time until
``deploy_slice`` returns for each, side by side, with their ratio (median of
``--runs``).  Each slice is deleted after each run; the lab is left with 3
workers as it was found.

Usage (as root):  .venv/bin/python bench/workers.py [--runs 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

from labbench import chain_slice, lab_api, lab_up


def busy_cpu_s() -> float:
    """CPU seconds this machine has spent busy (every core, every host of the lab) since boot."""
    with open("/proc/stat", encoding="ascii") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def measure(n_vms: int, chain: int, runs: int) -> tuple:
    """(median s until deploy_slice returned, workers used, median busy CPU s meanwhile) over ``runs``."""
    times, cpu, workers = [], [], set()
    with tempfile.TemporaryDirectory() as tmp:
        api = lab_api(os.path.join(tmp, "db.yaml"))
        with api.db.transaction() as data:
            data["users"]["admin"]["quota_vms"] = 100
        for _ in range(runs):
            sid = chain_slice(api, f"w{n_vms}", n_vms, chain, prefix="v")
            workers = {vm["worker_ip"] for vm in api.db.get_slice(sid)["vms"]}
            c0, t0 = busy_cpu_s(), time.monotonic()
            ok, msg = api.deploy_slice("admin", sid)
            times.append(time.monotonic() - t0)
            cpu.append(busy_cpu_s() - c0)
            assert ok, msg
            ok, msg = api.delete_slice("admin", sid)
            assert ok, msg
        api.executor.close()
    return statistics.median(times), len(workers), statistics.median(cpu)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    rows = []
    try:
        for workers, n_vms in ((3, 6), (8, 24)):
            lab_up(workers)
            t, used, cpu = measure(n_vms, 6, args.runs)
            rows.append((workers, n_vms, used, t, cpu))
            print(f"  {n_vms} VMs over {workers} workers measured", file=sys.stderr)
    finally:
        lab_up(3)
    base = rows[0][3]
    print(f"\nDeploy of a bigger slice over more workers (median of {args.runs}; chains of 6 VMs)")
    cores = os.cpu_count() or 1
    print(f"{'workers':>7} {'VMs':>4} {'workers used':>12} {'deploy s':>9} {'x 6 over 3':>10} "
          f"{'busy CPU s':>10} {'CPU s / ' + str(cores) + ' cores':>14}")
    for workers, n_vms, used, t, cpu in rows:
        print(f"{workers:>7} {n_vms:>4} {used:>12} {t:>9.2f} {t / base:>10.2f} {cpu:>10.2f} {cpu / cores:>14.2f}")
    print("(every lab worker shares this machine's cores: when 'CPU s / cores' is close to 'deploy s',\n"
          " the deploy waited for CPU, which separate workers would each bring)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
