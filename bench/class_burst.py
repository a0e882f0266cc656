#!/usr/bin/env python3
"""A class starting at once: N students press Deploy at the same moment (SPEC §12, §15).

Each student is its own process with a 2-VM slice designed beforehand (two
cirros VMs on a link, the first with internet).  Two ways, in one run:

* ``service``: each process is a menu client of one manager service (as a
  class on a shared manager host): it logs in, then calls ``deploy_slice``
  through the socket; the service holds one SSH connection per host;
* ``processes``: each process runs the use cases itself (its own SSH
  connections), as every menu did before the service.

All processes wait at a barrier, then call ``deploy_slice`` together.  For each N it reports: whether every deploy
succeeded, the slowest and the median time until ``deploy_slice`` returned,
whether the database lost anything (every slice running with a pid per VM),
when every NIC of every slice held its DHCP lease, and how busy the machine's
cores were from the barrier until the last deploy returned (the lab's hosts
and every guest share them: near 100 % means the burst is bound by this
machine's CPU, not by waiting).  Then it deletes every
slice and checks with the product's own scan that nothing is left.

Usage (as root; brings the lab up if needed):
    .venv/bin/python bench/class_burst.py [--sizes 1,5,10,20,40] [--modes service,processes] [--lease-wait 300]
"""
from __future__ import annotations

import argparse
import glob
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import tempfile
import time

from labbench import LAB, LAB_CONFIG, PhaseEnds, lab_api, lab_exec, lab_up

CPU_RATIO = 16.0
QEMU_NICE = None  # --qemu-nice: the guests' nice level for this run (None: the lab's own, 10)
LEASE_WAIT_S = 300
TRACE_DIR = None  # --trace: where each burst's service log is kept (service-N.log)


def make_api(db_path: str):
    from store.config import ClusterConfig
    config = ClusterConfig.load(LAB_CONFIG)
    # 40 one-vCPU guests on three lab "workers" that each see the machine's 2 cores: admission
    # would refuse them at the default 4 vCPUs per core (a class's real workers have the cores).
    config.raw["capacity"]["cpu_ratio"] = CPU_RATIO
    if QEMU_NICE is not None:
        config.raw["qemu_nice"] = QEMU_NICE
    return lab_api(db_path, config)


def student(db_path: str, user: str, sid: int, barrier, out, socket_path=None) -> None:
    if socket_path:
        from service.client import RemoteAPI
        api = RemoteAPI(socket_path)
        ok, info = api.authenticate(user, "student-pw")
        assert ok, info
    else:
        api = make_api(db_path)
    phases = PhaseEnds()
    barrier.wait()
    t0 = time.monotonic()
    ok, msg = api.deploy_slice(user, sid, progress=phases)
    out.put((user, ok, time.monotonic() - t0, msg, phases.ends))
    api.close() if socket_path else api.executor.close()


def start_service(tmp: str, db_path: str):
    """A manager service on the lab (this bench's config: the class-sized cpu_ratio) and its socket."""
    import subprocess

    import yaml
    with open(LAB_CONFIG) as f:
        cfg = yaml.safe_load(f)
    cfg.setdefault("capacity", {})["cpu_ratio"] = CPU_RATIO
    if QEMU_NICE is not None:
        cfg["qemu_nice"] = QEMU_NICE
    cfg["log_file"] = os.path.join(tmp, "service.log")
    cfg_path = os.path.join(tmp, "cluster.yaml")
    with open(cfg_path, "w") as f:
        yaml.safe_dump(cfg, f)
    sock = os.path.join(tmp, "manager.sock")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen([sys.executable, "-m", "service", "--config", cfg_path, "--db", db_path, "--socket", sock],
                            cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not os.path.exists(sock):
        assert proc.poll() is None and time.monotonic() < deadline, "the service did not start"
        time.sleep(0.05)
    return proc, sock


def sshd_log_sizes() -> dict:
    """Bytes in each lab host's sshd log now (lab/state/hosts/HOST/log/sshd.log)."""
    out = {}
    for log in glob.glob(os.path.join(LAB, "state", "hosts", "*", "log", "sshd.log")):
        out[log] = os.path.getsize(log)
    return out


def sshd_refusals(since: dict) -> int:
    """Lines the lab hosts' sshd logged since ``since`` where it refused or dropped a connection or session."""
    count = 0
    for log in sshd_log_sizes():
        with open(log, "rb") as f:
            f.seek(since.get(log, 0))
            for line in f.read().decode(errors="replace").splitlines():
                count += any(w in line for w in ("MaxStartups", "drop connection", "refused", "open failed",
                                                  "no more sessions"))
    return count


def cpu_ticks() -> tuple:
    """(busy, all) clock ticks of the whole machine so far (/proc/stat's first line)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]                   # idle + iowait
    return sum(fields) - idle, sum(fields)


def leased(vlans: set) -> set:
    text = lab_exec("netnode", "; ".join(f"cat /run/cloud-repositorio/dnsmasq-vlan{v}.leases 2>/dev/null"
                                         for v in sorted(vlans)) + "; true")
    return {line.split()[1].lower() for line in text.splitlines() if len(line.split()) >= 3}


def prepare(api, n: int) -> list:
    """N students, each with a designed 2-VM slice; [(user, slice_id, macs that should lease, vlans)]."""
    out = []
    for i in range(n):
        user = f"s{i:02d}"
        ok, msg = api.create_user("admin", user, "student-pw", 6)
        assert ok, msg
        ok, s = api.create_slice(user, "lab")
        assert ok, s
        ok_a, a = api.add_vm_to_slice(user, s["slice_id"], "a", "cirros", 1, True)
        ok_b, b = api.add_vm_to_slice(user, s["slice_id"], "b", "cirros", 1, False)
        assert ok_a and ok_b, (a, b)
        ok, link = api.create_link(user, s["slice_id"], a["vm_id"], "eth1", b["vm_id"], "eth1")
        assert ok, link
        nics = [(a, 0, "a internet"), (a, 1, "a link"), (b, 1, "b link")]
        macs = {vm["interfaces"][i]["mac"].lower(): f"{user}/{what}" for vm, i, what in nics}
        out.append((user, s["slice_id"], macs, {link["vlan_id"], 400}))
    return out


def burst(n: int, mode: str, lease_wait: float = LEASE_WAIT_S) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        db_path = os.path.join(tmp, "database.yaml")
        api = make_api(db_path)
        plan = prepare(api, n)
        service, sock = start_service(tmp, db_path) if mode == "service" else (None, None)
        ctx = mp.get_context("spawn")
        barrier, out = ctx.Barrier(n + 1), ctx.Queue()
        procs = [ctx.Process(target=student, args=(db_path, u, sid, barrier, out, sock)) for u, sid, _m, _v in plan]
        for p in procs:
            p.start()
        logs = sshd_log_sizes()
        barrier.wait()
        t0, ticks0 = time.monotonic(), cpu_ticks()
        results = [out.get(timeout=600) for _ in procs]
        ticks1 = cpu_ticks()
        busy = (ticks1[0] - ticks0[0]) / max(1, ticks1[1] - ticks0[1])
        refusals = sshd_refusals(logs)
        for p in procs:
            p.join()
        if service is not None:
            service.terminate()
            service.wait(120)
            if TRACE_DIR:
                shutil.copy(os.path.join(tmp, "service.log"), os.path.join(TRACE_DIR, f"service-{n}.log"))
        names = {m: name for _u, _s, ms, _v in plan for m, name in ms.items()}
        macs = set(names)
        vlans = {v for _u, _s, _m, vs in plan for v in vs}
        leases_s = None
        got: set = set()
        while time.monotonic() - t0 < lease_wait:
            got = macs & leased(vlans)
            if got == macs:
                leases_s = time.monotonic() - t0
                break
            time.sleep(1)
        data = api.db.load()
        lost = [sid for _u, sid, _m, _v in plan
                if data["slices"][str(sid)]["status"] != "running"
                or not all(vm.get("pid") for vm in data["slices"][str(sid)]["vms"])]
        times = [t for _u, ok, t, _m, _p in results]
        failed = [(u, m) for u, ok, _t, m, _p in results if not ok]
        phase_names = sorted({k for *_x, p in results for k in p})
        slowest_phases = {k: max(p.get(k, 0.0) for *_x, p in results) for k in phase_names}
        for user, sid, _m, _v in plan:
            api.delete_slice(user, sid)
        ok_scan, found = api.reconciler.survey()
        api.executor.close()
    return {"mode": mode, "n": n, "ok": not failed, "failed": failed[:3], "slowest": max(times),
            "median": statistics.median(times),
            "lost": lost, "leases_s": leases_s, "leased": f"{len(got)}/{len(macs)}",
            "unleased": sorted(names[m] for m in macs - got),
            "phases": slowest_phases, "sshd_refusals": refusals, "cpu_busy": busy,
            "left": len(found) if ok_scan else found}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1,5,10,20,40")
    ap.add_argument("--modes", default="service,processes")
    ap.add_argument("--lease-wait", type=float, default=LEASE_WAIT_S,
                    help="seconds after the burst to wait for every NIC's lease")
    ap.add_argument("--qemu-nice", type=int, default=None,
                    help="the guests' nice level for this run (the lab's: 10); the lab's workers and network "
                         "node share the machine's cores with every guest")
    ap.add_argument("--trace", metavar="DIR", default=None,
                    help="keep each burst's service log (every command's host, step, end and duration) in DIR")
    args = ap.parse_args()
    global QEMU_NICE, TRACE_DIR
    QEMU_NICE, TRACE_DIR = args.qemu_nice, args.trace
    if TRACE_DIR:
        os.makedirs(TRACE_DIR, exist_ok=True)
    lab_up()
    rows = []
    for mode in args.modes.split(","):
        for n in [int(x) for x in args.sizes.split(",")]:
            rows.append(burst(n, mode, args.lease_wait))
            print(f"  {mode}: {n} students measured", file=sys.stderr)
    print("\nA class deploying at once: N students, each its own menu process, 2-VM slices, one barrier")
    print(f"{'mode':>9} {'students':>8} {'all ok':>7} {'slowest s':>9} {'median s':>9} {'x one':>6} {'lost':>5} "
          f"{'all leased s':>12} {'leased':>7} {'left':>5} {'sshd refused':>12}  "
          "slowest phase ends (s after deploy began)")
    for r in rows:
        base = next(x["slowest"] for x in rows if x["mode"] == r["mode"])
        leases = f"{r['leases_s']:.0f}" if r["leases_s"] is not None else "never"
        print(f"{r['mode']:>9} {r['n']:>8} {str(r['ok']):>7} {r['slowest']:>9.2f} {r['median']:>9.2f} "
              f"{r['slowest'] / base:>6.2f} "
              f"{len(r['lost']):>5} {leases:>12} {r['leased']:>7} {r['left']!s:>5} "
              f"{r['sshd_refusals']:>12} {r['cpu_busy']:>8.0%}  "
              + ", ".join(f"{k} {v:.2f}" for k, v in r["phases"].items()))
        if r["unleased"]:
            shown = r["unleased"][:6]
            more = f" and {len(r['unleased']) - len(shown)} more" if len(r["unleased"]) > len(shown) else ""
            print(f"         no lease within the wait: {', '.join(shown)}{more}")
        for user, msg in r["failed"]:
            print(f"         {user}: {msg}")
    return 0 if all(r["ok"] and not r["lost"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
