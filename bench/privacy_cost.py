#!/usr/bin/env python3
"""What the privacy rules (SPEC §11, ``vm_firewall``) cost a deploy, measured in the local lab.

The reference slice of bench/deploy.py (6 cirros VMs over 3 workers, 5 links in a chain,
internet on the chain's ends) is deployed and deleted in two modes, alternating within each
round so that the machine's load drifts alike for both:

* ``rules``: the product as it is (protected internet TAPs, per-VM OpenFlow rules, the workers'
  trunk filter, the node's IPv4/IPv6 policy);
* ``no rules``: the same product with those builders replaced by no-ops (``:``), the node's
  policy left as the first mode loaded it.

It prints, per mode, the median time until ``deploy_slice`` returned, its network and VM phases,
and ``delete_slice``; and the difference in percent.

Usage (as root; the lab is brought up if needed):
    .venv/bin/python bench/privacy_cost.py [--runs 5]
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time

from labbench import PhaseEnds, chain_slice, lab_api, lab_up

from hosts import vm_firewall  # noqa: E402

RULE_BUILDERS = ("vm_rules", "install_trunk_rules_locked", "remove_vm_rules", "remove_trunk_rules_if_unused")


@contextlib.contextmanager
def without_rules():
    """The rule builders replaced by no-ops for the time of the block."""
    saved = {name: getattr(vm_firewall, name) for name in RULE_BUILDERS + ("port_columns",)}
    for name in RULE_BUILDERS:
        setattr(vm_firewall, name, lambda *a, **k: ":")
    vm_firewall.port_columns = lambda *a, **k: []
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(vm_firewall, name, fn)


def one_run(api) -> dict:
    sid = chain_slice(api, f"p{time.monotonic_ns() % 10**9}")
    phases = PhaseEnds()
    t0 = time.monotonic()
    ok, msg = api.deploy_slice("admin", sid, progress=phases)
    deploy = time.monotonic() - t0
    assert ok, msg
    t0 = time.monotonic()
    ok, msg = api.delete_slice("admin", sid)
    assert ok, msg
    ends = phases.ends
    return {"deploy": deploy, "network": ends.get("network", 0.0),
            "vms": ends.get("vms", 0.0) - ends.get("network", 0.0), "delete": time.monotonic() - t0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    lab_up()
    results = {"rules": [], "no rules": []}
    with tempfile.TemporaryDirectory() as tmp:
        api = lab_api(os.path.join(tmp, "db.yaml"))
        with api.db.transaction() as data:
            data["users"]["admin"]["quota_vms"] = 100
        one_run(api)  # warm-up: base images on the workers, the node's policy loaded
        for r in range(args.runs):
            order = ("rules", "no rules") if r % 2 == 0 else ("no rules", "rules")
            for mode in order:
                with without_rules() if mode == "no rules" else contextlib.nullcontext():
                    results[mode].append(one_run(api))
        api.executor.close()
    med = {m: {k: statistics.median(x[k] for x in rows) for k in rows[0]} for m, rows in results.items()}
    print(f"\nThe privacy rules' cost, reference slice, median of {args.runs} (modes alternating)")
    print(f"{'mode':<9} {'deploy s':>9} {'network s':>10} {'VMs s':>7} {'delete s':>9}")
    for mode, m in med.items():
        print(f"{mode:<9} {m['deploy']:>9.3f} {m['network']:>10.3f} {m['vms']:>7.3f} {m['delete']:>9.3f}")
    extra = (med["rules"]["deploy"] / med["no rules"]["deploy"] - 1) * 100
    print(f"the rules add {extra:+.1f} % to deploy_slice")
    return 0


if __name__ == "__main__":
    sys.exit(main())
