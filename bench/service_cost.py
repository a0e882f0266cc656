#!/usr/bin/env python3
"""What the manager service costs (SPEC §15): the reference slice through it, and idle menus.

1. The reference slice of SPEC §8 (6 cirros VMs, a chain of 5 links, 2 with
   internet) deployed and deleted ``--runs`` times, alternately by the use
   cases run in this process (the embedded menu) and through a manager
   service (a menu client logged in over the socket): ``deploy_slice`` until
   it returns, and delete.
2. The service's memory (VmRSS, and its threads) with 0 / 50 / 200 menus
   connected, logged in and idle.

Usage (as root; brings the lab up if needed):
    .venv/bin/python bench/service_cost.py [--runs 3] [--idle 0,50,200]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from labbench import LAB_CONFIG, ROOT, chain_slice, lab_api, lab_up


def start_service(tmp: str, db_path: str) -> tuple:
    import yaml
    with open(LAB_CONFIG) as f:
        cfg = yaml.safe_load(f)
    cfg["log_file"] = os.path.join(tmp, "service.log")
    cfg_path = os.path.join(tmp, "cluster.yaml")
    with open(cfg_path, "w") as f:
        yaml.safe_dump(cfg, f)
    sock = os.path.join(tmp, "manager.sock")
    proc = subprocess.Popen([sys.executable, "-m", "service", "--config", cfg_path, "--db", db_path,
                             "--socket", sock], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not os.path.exists(sock):
        assert proc.poll() is None and time.monotonic() < deadline, "the service did not start"
        time.sleep(0.05)
    return proc, sock


def status_of(pid: int) -> dict:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


def reference_runs(runs: int) -> dict:
    from service.client import RemoteAPI

    times: dict = {"embedded": ([], []), "service": ([], [])}
    with tempfile.TemporaryDirectory() as tmp:
        db_path = os.path.join(tmp, "database.yaml")
        shutil.copyfile(os.path.join(ROOT, "database.yaml"), db_path)
        api = lab_api(db_path)
        assert api.authenticate("admin", "admin")[0]
        proc, sock = start_service(tmp, db_path)
        client = RemoteAPI(sock)
        assert client.authenticate("admin", "admin")[0]
        try:
            for i in range(runs):
                for mode, target in (("embedded", api), ("service", client)):
                    sid = chain_slice(api, f"ref{mode[0]}{i}")
                    t0 = time.monotonic()
                    ok, msg = target.deploy_slice("admin", sid)
                    deploy = time.monotonic() - t0
                    assert ok, msg
                    t0 = time.monotonic()
                    ok, msg = target.delete_slice("admin", sid)
                    assert ok, msg
                    times[mode][0].append(deploy)
                    times[mode][1].append(time.monotonic() - t0)
        finally:
            client.close()
            proc.terminate()
            proc.wait(60)
            api.executor.close()
    return {m: (statistics.median(d), statistics.median(r)) for m, (d, r) in times.items()}


def idle_menus(sizes: list) -> list:
    from service.client import RemoteAPI

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        db_path = os.path.join(tmp, "database.yaml")
        shutil.copyfile(os.path.join(ROOT, "database.yaml"), db_path)
        api = lab_api(db_path)
        assert api.authenticate("admin", "admin")[0]
        api.executor.close()
        proc, sock = start_service(tmp, db_path)
        clients: list = []
        try:
            for n in sizes:
                while len(clients) < n:
                    c = RemoteAPI(sock)
                    assert c.authenticate("admin", "admin")[0]
                    clients.append(c)
                time.sleep(1.0)
                st = status_of(proc.pid)
                t0 = time.monotonic()
                assert clients[0].get_quota("admin")[0] if clients else True
                answer = time.monotonic() - t0
                rows.append((n, int(st["VmRSS"].split()[0]) / 1024, int(st["Threads"]), answer))
        finally:
            for c in clients:
                c.close()
            proc.terminate()
            proc.wait(60)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--idle", default="0,50,200")
    args = ap.parse_args()
    lab_up()
    ref = reference_runs(args.runs)
    idle = idle_menus([int(x) for x in args.idle.split(",")])
    print(f"\nThe reference slice (6 VMs, 5 links, 2 with internet), median of {args.runs}")
    print(f"{'menu':>10} {'deploy_slice s':>15} {'delete s':>9}")
    for mode, (deploy, delete) in ref.items():
        print(f"{mode:>10} {deploy:>15.3f} {delete:>9.3f}")
    ratio = [ref['service'][i] / ref['embedded'][i] for i in (0, 1)]
    print(f"{'ratio':>10} {ratio[0]:>15.2f} {ratio[1]:>9.2f}"
          "   (service / embedded)")
    print("\nThe service with idle menus connected and logged in")
    print(f"{'menus':>6} {'RSS MiB':>8} {'threads':>8} {'one call s':>11}")
    for n, rss, threads, answer in idle:
        print(f"{n:>6} {rss:>8.1f} {threads:>8} {answer:>11.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
