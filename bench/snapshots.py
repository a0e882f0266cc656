#!/usr/bin/env python3
"""What a disk snapshot costs, against the size of the VM's overlay, measured in the local lab.

On one lab worker, an overlay over the lab's base image is filled with N MiB of guest data
(``qemu-io``, as a guest's writes would), then, per size, median of ``--runs``:

* ``save``: the product's ``hosts.snapshots.save_command`` (a copy of the overlay; no VM runs);
* ``restore``: ``restore_command`` (a copy back over the overlay, then a rename);
* ``internal -c`` / ``internal -a``: ``qemu-img snapshot -c`` / ``-a`` on the same overlay, the
  alternative this project did not take (it needs the VM shut down: the image's write lock);
* the snapshot's size as the product charges it (the copy's bytes) and the overlay's growth that
  an internal snapshot causes once the guest rewrites the same data (what it would really hold).

Then one running VM (a real slice through ``OrchestratorAPI``): the wall time of ``save_snapshot``
(the guest is paused only for the copy) and of ``restore_snapshot`` (stop, copy, start).

Usage (as root; the lab is brought up if needed):
    .venv/bin/python bench/snapshots.py [--sizes 0,64,256] [--runs 3]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

from labbench import lab_api, lab_exec, lab_up

from hosts import snapshots  # noqa: E402

VM_ID = 99951
IMAGES = "/home/ubuntu/vm_images"


def timed(api, cmd) -> float:
    t0 = time.monotonic()
    res = api.executor.run(cmd)
    assert res.ok, f"{cmd.step}: {res.message()}"
    return time.monotonic() - t0


def host_timed(host: str, cmd: str) -> float:
    out = lab_exec(host, f"s=$(date +%s.%N); {cmd} >/dev/null 2>&1 || echo FAILED; e=$(date +%s.%N); "
                         "echo \"$s $e\"", timeout=600).split()
    assert "FAILED" not in out, cmd
    return float(out[-1]) - float(out[-2])


def per_size(api, worker: str, host: str, home: str, base: str, mib: int, runs: int) -> dict:
    image = f"bench{VM_ID}_img.qcow2"
    overlay = f"{IMAGES}/{image}"
    vm = {"vm_id": VM_ID, "name": "bench", "worker_ip": worker, "qcow_image": f"~/vm_images/{image}"}
    # the overlay is given room for the data (the lab's base image is only ~19 MiB big: a flavor's disk is larger)
    made = lab_exec(host, f"cd {IMAGES} && rm -f {image} vm{VM_ID}.* && qemu-img create -q -f qcow2 -b {base} "
                          f"-F qcow2 {image} {max(1024, 2 * mib)}M && chown ubuntu: {image}"
                          + (f" && qemu-io -f qcow2 -c 'write -P 0xab 0 {mib}M' {image} | grep -q '^wrote'"
                             if mib else "") + " && echo made", timeout=600)
    assert "made" in made.split(), f"could not make an overlay with {mib} MiB of data on {host}"
    row = {"save": [], "restore": [], "internal -c": [], "internal -a": []}
    size = 0
    for i in range(runs):
        row["save"].append(timed(api, snapshots.save_command(vm, home, f"r{i}", 10**12)))
        size = int(lab_exec(host, f"stat -c %s {IMAGES}/vm{VM_ID}.r{i}.snap.qcow2"))
        row["restore"].append(timed(api, snapshots.restore_command(vm, home, f"r{i}")))
        api.executor.run(snapshots.delete_command(vm, home, f"r{i}"))
        row["internal -c"].append(host_timed(host, f"qemu-img snapshot -c s{i} {overlay}"))
        row["internal -a"].append(host_timed(host, f"qemu-img snapshot -a s{i} {overlay}"))
    before = int(lab_exec(host, f"stat -c %s {overlay}"))
    if mib:  # the guest rewrites its data: clusters an internal snapshot still holds are copied
        out = lab_exec(host, f"qemu-io -f qcow2 -c 'write -P 0xcd 0 {mib}M' {overlay}", timeout=600)
        assert out.startswith("wrote"), out
    growth = int(lab_exec(host, f"stat -c %s {overlay}")) - before
    lab_exec(host, f"rm -f {overlay} {IMAGES}/vm{VM_ID}.*")
    out = {k: statistics.median(v) for k, v in row.items()}
    out.update(copy_mib=size / 2**20, internal_growth_mib=growth / 2**20)
    return out


def running_vm(api) -> dict:
    ok, s = api.create_slice("admin", "benchsnap")
    assert ok, s
    ok, vm = api.add_vm_to_slice("admin", s["slice_id"], "bsnap", "cirros", 0)
    assert ok, vm
    ok, msg = api.deploy_slice("admin", s["slice_id"])
    assert ok, msg
    try:
        time.sleep(5)
        t0 = time.monotonic()
        ok, msg = api.save_snapshot("admin", s["slice_id"], vm["vm_id"], "b1")
        save = time.monotonic() - t0
        assert ok, msg
        t0 = time.monotonic()
        ok, msg = api.restore_snapshot("admin", s["slice_id"], vm["vm_id"], "b1")
        restore = time.monotonic() - t0
        assert ok, msg
        size = api.db.get_slice(s["slice_id"])["vms"][0]["snapshots"][0]["size_bytes"]
    finally:
        api.delete_slice("admin", s["slice_id"])
    return {"save": save, "restore": restore, "copy_mib": size / 2**20}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="0,64,256", help="MiB of guest data in the overlay (comma separated)")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    lab_up()
    with tempfile.TemporaryDirectory() as tmp:
        api = lab_api(f"{tmp}/db.yaml")
        worker = api.config.workers[0]
        ctx, failed = api.services.connect([worker])
        assert failed is None, failed.message()
        base = api.config.flavor_image("cirros", {})
        assert api.deployment.qcow_manager.ensure_base_image(worker, base)
        host = "worker1"
        sizes = [int(x) for x in args.sizes.split(",")]
        rows = {n: per_size(api, worker, host, ctx.home(worker), base.rsplit("/", 1)[1], n, args.runs)
                for n in sizes}
        print(f"Snapshot of an overlay on {host} (median of {args.runs}); seconds, sizes in MiB")
        print(f"{'guest data':>10} {'copy':>8} {'save':>8} {'restore':>8} {'internal -c':>12} {'internal -a':>12} "
              f"{'internal holds':>15}")
        for n, r in rows.items():
            print(f"{n:>10} {r['copy_mib']:>8.1f} {r['save']:>8.3f} {r['restore']:>8.3f} {r['internal -c']:>12.3f} "
                  f"{r['internal -a']:>12.3f} {r['internal_growth_mib']:>15.1f}")
        if len(sizes) > 1:
            lo, hi = rows[sizes[0]], rows[sizes[-1]]
            print(f"save at {sizes[-1]} MiB / at {sizes[0]} MiB: {hi['save'] / lo['save']:.1f}x; "
                  f"save / internal -c at {sizes[-1]} MiB: {hi['save'] / hi['internal -c']:.1f}x")
        vm = running_vm(api)
        print(f"A running cirros VM through the API: save_snapshot {vm['save']:.2f} s (the guest paused for the "
              f"copy of {vm['copy_mib']:.1f} MiB, not rebooted), restore_snapshot {vm['restore']:.2f} s "
              "(stop, copy, start)")
        api.executor.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
