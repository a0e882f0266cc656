#!/usr/bin/env python3
"""Store benchmark (SPEC §12): database.yaml at class size, this store against the old way, one run.

For each database size (slices: 0, 50, 100, 198 = every free 20-VLAN block,
about 6 VMs each: 1,200 VMs at full size; always 200 users) it builds a
realistic database (tests/classdb.py) and measures, for this store
(``Database(path)``) and for the old way (``Database(path, fast=False)``:
parse the YAML on every read, ``yaml.dump`` on every save, no caches; the
shape checks run in both):

* edit read: the first read after the YAML changed (a hand edit: a full parse)
* cold read: ``load()`` by a new Database object (a new menu) after another process saved
* warm read: ``load()`` again in the same process; ``get_user``
* menu view: "View my Slices" as admin (every slice): ``list_slices`` + rendering
* one change: a transaction (read, change a quota, save): total, lock held (wall clock) and the
  CPU time used while holding it (what the wall time would be on an otherwise idle machine, minus fsync)
* load: the machine's 1-minute load average when the row started (others share it)
* 40 procs: that many processes (forked, started together) each make one
  change: wall time until all are done, the longest lock hold among them (wall, CPU),
  and whether any change was lost (each must find its quota +1 and a unique ID).

Times are medians of ``--repeat`` runs (the 40-process run is done once).
Usage:  .venv/bin/python bench/store.py [--sizes 0,50,100,198] [--repeat 5] [--procs 40] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

import yaml  # noqa: E402
from classdb import class_database  # noqa: E402

from database import Database  # noqa: E402

CTX = multiprocessing.get_context("fork")
IMPLS = (("new", True), ("old", False))


def median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def write_database(path: str, slices: int) -> None:
    """A class database with ``slices`` slices, saved by the store itself."""
    db = Database(path)
    with db.transaction() as data:
        data.clear()
        data.update(class_database(slices=slices))


def hand_edit(path: str, n: int) -> None:
    """An instructor's edit: one more comment line (new content, so nothing cached applies)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"# edited by hand ({n})\n")


def menu_view(path: str, fast: bool):
    """A callable doing the admin's "View my Slices": list every slice and render the table."""
    try:
        import cli
        from deployment_api import DeploymentAPI
        from orchestrator_api import OrchestratorAPI
        from remote_executor import RemoteExecutor
        from store.config import ClusterConfig
        api = OrchestratorAPI(Database(path, fast=fast), DeploymentAPI(RemoteExecutor(ClusterConfig.from_dict(None))))
        render = getattr(cli, "render_slices", None)
    except Exception as e:  # noqa: BLE001 - the menu modules are being restructured: report, go on
        print(f"(menu view not measured: {e})", file=sys.stderr)
        return None

    def view():
        ok, slices = api.list_slices("admin")
        assert ok, slices
        if render is not None:
            render(slices, True)
    return view


def one_change(db: Database, holds: list, cpu: list, user: str = "admin"):
    def change():
        with db.transaction() as data:
            data["users"][user]["quota_vms"] += 1
        holds.append(db.last_lock_held_s)
        cpu.append(db.last_lock_cpu_s)
    return change


def _changer(path: str, fast: bool, index: int, barrier, queue) -> None:
    db = Database(path, fast=fast)
    barrier.wait()
    with db.transaction() as data:
        data["users"][f"s{index:03d}"]["quota_vms"] += 1
        vm_id = data["next_vm_id"]
        data["next_vm_id"] = vm_id + 1
    queue.put((index, vm_id, db.last_lock_held_s, db.last_lock_cpu_s))


def concurrent_changes(path: str, fast: bool, procs: int) -> dict:
    """``procs`` processes change the database at once; wall time, longest hold, lost changes."""
    before = Database(path, fast=False).load()
    barrier, queue = CTX.Barrier(procs + 1), CTX.Queue()
    children = [CTX.Process(target=_changer, args=(path, fast, i, barrier, queue)) for i in range(procs)]
    for c in children:
        c.start()
    barrier.wait()
    started = time.perf_counter()
    results = [queue.get(timeout=600) for _ in children]
    wall = time.perf_counter() - started
    for c in children:
        c.join(timeout=60)
    after = Database(path, fast=False).load()   # read back independently of any cache
    ids = sorted(r[1] for r in results)
    kept = sum(after["users"][f"s{i:03d}"]["quota_vms"] == before["users"][f"s{i:03d}"]["quota_vms"] + 1
               for i in range(procs))
    ids_ok = ids == list(range(before["next_vm_id"], before["next_vm_id"] + procs))
    counter_ok = after["next_vm_id"] == before["next_vm_id"] + procs
    lost = procs - kept + (0 if ids_ok and counter_ok else 1)
    return {"wall_s": wall, "max_hold_s": max(r[2] for r in results), "max_hold_cpu_s": max(r[3] for r in results),
            "lost": lost,
            "exit_ok": all(c.exitcode == 0 for c in children)}


def measure(folder: str, slices: int, fast: bool, repeat: int, procs: int) -> dict:
    path = os.path.join(folder, f"db-{slices}-{int(fast)}.yaml")
    write_database(path, slices)
    if not fast:
        os.unlink(path + ".cache")
    row: dict = {"slices": slices, "impl": "new" if fast else "old", "load": os.getloadavg()[0],
                 "kb": os.path.getsize(path) / 1024}
    edits = iter(range(10 ** 6))

    def edit_then_read():
        hand_edit(path, next(edits))
        Database(path, fast=fast).load()
    row["edit_read_s"] = median_time(edit_then_read, repeat)
    Database(path, fast=fast).load()               # a save by another process leaves the cache behind
    row["cold_read_s"] = median_time(lambda: Database(path, fast=fast).load(), repeat)
    db = Database(path, fast=fast)
    db.load()
    row["warm_read_s"] = median_time(db.load, repeat)
    row["get_user_s"] = median_time(lambda: db.get_user("s001"), repeat)
    view = menu_view(path, fast)
    row["menu_view_s"] = median_time(view, repeat) if view else None
    holds: list = []
    cpu: list = []
    row["change_s"] = median_time(one_change(db, holds, cpu), repeat)
    row["hold_s"] = statistics.median(holds)
    row["hold_cpu_s"] = statistics.median(cpu)
    row.update({f"procs_{k}": v for k, v in concurrent_changes(path, fast, procs).items()})
    with open(path, encoding="utf-8") as f:
        yaml.safe_load(f)                          # still a valid YAML file
    return row


# (row key, title, decimals or None for text/integers)
COLUMNS = [("slices", "slices", None), ("impl", "impl", None), ("load", "load", 1), ("kb", "file KB", 0),
           ("edit_read_s", "edit read", 3), ("cold_read_s", "cold read", 3), ("warm_read_s", "warm read", 3),
           ("get_user_s", "get_user", 4), ("menu_view_s", "menu view", 3), ("change_s", "change", 3),
           ("hold_s", "held", 3), ("hold_cpu_s", "held cpu", 3), ("procs_wall_s", "procs", 2),
           ("procs_max_hold_s", "max held", 3), ("procs_max_hold_cpu_s", "max cpu", 3),
           ("procs_lost", "lost", None)]


def cell(value, decimals, width: int) -> str:
    if value is None:
        return "n/a".rjust(width)
    return (f"{value:.{decimals}f}" if decimals is not None else str(value)).rjust(width)


def print_table(rows: list, procs: int) -> None:
    titles = [title if key != "procs_wall_s" else f"{procs} procs" for key, title, _d in COLUMNS]
    widths = [max(len(t), 7) for t in titles]
    print(" | ".join(t.rjust(w) for t, w in zip(titles, widths)))
    print("-+-".join("-" * w for w in widths))
    by_size: dict = {}
    for row in rows:
        by_size.setdefault(row["slices"], {})[row["impl"]] = row
        print(" | ".join(cell(row.get(key), d, w) for (key, _t, d), w in zip(COLUMNS, widths)))
    print()
    print("old/new (same run):")
    for size, pair in by_size.items():
        if "new" in pair and "old" in pair:
            ratios = [f"{title} {pair['old'][key] / pair['new'][key]:.0f}x"
                      for key, title, _d in COLUMNS[4:-1]
                      if pair["new"].get(key) and pair["old"].get(key)]
            print(f"  {size:>3} slices: " + ", ".join(ratios))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="0,50,100,198", help="slice counts, comma-separated")
    parser.add_argument("--repeat", type=int, default=5, help="runs per timing (median)")
    parser.add_argument("--procs", type=int, default=40, help="processes changing at once")
    parser.add_argument("--impl", choices=("both", "new", "old"), default="both")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    impls = [(name, fast) for name, fast in IMPLS if args.impl in ("both", name)]
    print(f"# {platform.node()}: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}, "
          f"Python {platform.python_version()}, PyYAML {yaml.__version__} "
          f"(libyaml: {yaml.__with_libyaml__}); medians of {args.repeat}")
    folder = tempfile.mkdtemp(prefix="bench-store-")
    rows = []
    try:
        for size in sizes:
            for _name, fast in impls:
                rows.append(measure(folder, size, fast, args.repeat, args.procs))
                print(f"  measured {size} slices, {rows[-1]['impl']}", file=sys.stderr)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print_table(rows, args.procs)
    print(f"# load at the end {os.getloadavg()[0]:.2f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
