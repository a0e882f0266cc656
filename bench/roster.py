#!/usr/bin/env python3
"""Roster benchmark: the manager's own cost of a class import (accounts + a slice each), no host involved.

The hosts are answered by the recording FakeExecutor of the unit tests, so
what is measured is everything the manager does itself: reading the files,
hashing passwords (scrypt), the database transactions of every account, VM
and link, and the topology checks.  With real workers add each VM's overlay
(one ``qemu-img create`` over SSH).  For each class size it prints the
seconds, the seconds per student, the database transactions, the size the
database reached, and the seconds of a second run (which must change
nothing), so how the cost grows with the class can be read off the table.
It also checks what the class holds (SPEC §16): every student's slice made,
how many slices record a block of 20 VLANs and how many have none (beyond
the 198 blocks), the link VLANs (all distinct, never a reserved one) and
how many lie outside their slice's block.

Usage:
    python3 bench/roster.py [--sizes 5,30,100,220] [--topology topologies/ring4.yaml]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from fakes import FakeExecutor  # noqa: E402

import naming  # noqa: E402
from database import Database  # noqa: E402
from deployment_api import DeploymentAPI  # noqa: E402
from orchestrator_api import OrchestratorAPI  # noqa: E402


class CountingDatabase(Database):
    """A Database that counts its transactions (outermost ones: each is one read and one write)."""

    transactions = 0

    def transaction(self):
        if getattr(self._local, "data", None) is None:
            CountingDatabase.transactions += 1
        return super().transaction()


def one_class(size: int, topology: str, workdir: str) -> dict:
    db_path = os.path.join(workdir, f"db{size}.yaml")
    shutil.copyfile(os.path.join(ROOT, "database.yaml"), db_path)
    ex = FakeExecutor()
    # A class of 220 with 4 VMs each designs 440 GiB and 880 vCPUs of guests: more than the fake
    # workers' 16 GiB and 8 CPUs each at the default ratios (admission refuses the rest, as it should).
    ex.config.raw["capacity"].update(ram_ratio=64.0, cpu_ratio=64.0)
    api = OrchestratorAPI(CountingDatabase(db_path), DeploymentAPI(ex), ex.config)
    roster = "username,quota,password\n" + "".join(f"s{i:03d},6,generate\n" for i in range(size))
    CountingDatabase.transactions = 0
    t0 = time.perf_counter()
    ok, report = api.import_roster("admin", roster, "csv", topology, None, os.path.join(workdir, f"pw{size}"))
    took = time.perf_counter() - t0
    if not ok:
        failed = [s for s in report.students if s.slice != "made"]
        raise SystemExit(f"the import of {size} students failed for {len(failed)}: first: "
                         f"{failed[0].username}: {failed[0].message}" if failed else str(report))
    transactions = CountingDatabase.transactions
    held = class_vlans(Database(db_path).load(), ex.config.all_reserved_vlans)
    before = open(db_path, "rb").read()
    t0 = time.perf_counter()
    ok, _ = api.import_roster("admin", roster, "csv", topology, None, os.path.join(workdir, f"pw{size}b"))
    again = time.perf_counter() - t0
    if not ok or open(db_path, "rb").read() != before:
        raise SystemExit("the second run changed the database")
    return {"size": size, "seconds": took, "per_student": took / size, "transactions": transactions,
            "db_kib": len(before) / 1024, "again": again, **held}


def class_vlans(data: dict, reserved: list) -> dict:
    """What the class's slices hold: slices, with and without a block, link VLANs, outside their block."""
    slices = [s for s in data["slices"].values()]
    vlans = [(link["vlan_id"], s.get("vlan_pool_start")) for s in slices for link in s.get("links", [])]
    distinct = {v for v, _ in vlans}
    if len(distinct) != len(vlans) or distinct & set(reserved):
        raise SystemExit("two links share a VLAN, or a link holds a reserved VLAN")
    return {"slices": len(slices), "blocks": sum(1 for s in slices if s.get("vlan_pool_start") is not None),
            "vlans": len(vlans), "outside": sum(1 for v, start in vlans if not naming.in_pool(v, start))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="5,30,100,220", help="class sizes, comma separated")
    parser.add_argument("--topology", default=os.path.join(ROOT, "topologies", "ring4.yaml"))
    args = parser.parse_args()
    with open(args.topology) as f:
        topology = f.read()
    print(f"roster import with {os.path.basename(args.topology)} for each student (fake hosts)")
    print(f"{'students':>8} {'seconds':>8} {'s/student':>10} {'transactions':>13} {'database KiB':>13} "
          f"{'2nd run s':>10} {'slices':>7} {'w/ block':>9} {'no block':>9} {'link VLANs':>11} {'outside':>8}")
    with tempfile.TemporaryDirectory() as workdir:
        for size in (int(x) for x in args.sizes.split(",")):
            r = one_class(size, topology, workdir)
            print(f"{r['size']:>8} {r['seconds']:>8.1f} {r['per_student']:>10.2f} {r['transactions']:>13} "
                  f"{r['db_kib']:>13.0f} {r['again']:>10.2f} {r['slices']:>7} {r['blocks']:>9} "
                  f"{r['slices'] - r['blocks']:>9} {r['vlans']:>11} {r['outside']:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
