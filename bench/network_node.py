#!/usr/bin/env python3
"""Does the network node stay flat as the class grows? (SPEC §12, §16)

On the lab's network node, with the product's own builders (no VMs needed),
it fills the node with live slices' worth of link VLANs (gateway, namespace,
dnsmasq each) and internet reservations, and at each size measures a further
deploy's network phase: 5 link VLANs and the internet VLAN set up in
parallel, as ``deploy_slice`` does, then removed again (median of ``--runs``).
It also reports where any growth comes from: dnsmasq memory per VLAN (RSS
and PSS), the node's memory and kernel slab against the empty node, the
namespaces and mounts, the iptables rules, the OVS ports, and the time of
one change of each kind (an OVS port add, a VLAN's five flows, a macvlan, a
namespace, entering one with ``nsenter --net`` and with ``ip netns exec``,
an ``iptables-save``) and the routes ovs-vswitchd mirrors from its namespace
(``ovs/route/show``: it re-reads them all at each address change, which is why
the link gateways live in a namespace of their own).  Everything it made is removed at the end (and before it
starts), checked with the product's own scan.

Usage (as root; brings the lab up if needed):
    .venv/bin/python bench/network_node.py [--sizes 0,1,100,500,1000] [--runs 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from labbench import LAB_CONFIG, lab_exec, lab_up

import naming  # noqa: E402
import vlan_manager  # noqa: E402
from database import Database  # noqa: E402
from deployment_api import DeploymentAPI  # noqa: E402
from hosts import vm_firewall  # noqa: E402
from hosts.runner import Runner  # noqa: E402
from remote_executor import RemoteExecutor  # noqa: E402
from store.config import ClusterConfig  # noqa: E402
from usecases import reconcile  # noqa: E402
from usecases.services import Services  # noqa: E402

FILL_FIRST = 1000        # VLANs 1000.. hold the filling slices (5 per slice)
PROBE = [3900 + i for i in range(5)]  # the further deploy's link VLANs


def services(tmp: str) -> Services:
    config = ClusterConfig.load(LAB_CONFIG)
    ex = RemoteExecutor(config)
    svc = Services(Database(os.path.join(tmp, "db.yaml")), config, DeploymentAPI(ex), Runner(ex))
    _ctx, failed = svc.connect([config.network_node])
    if failed is not None:
        sys.exit(f"cannot reach the network node: {failed.message()}")
    return svc


def run(svc: Services, cmds: list) -> float:
    t0 = time.monotonic()
    report = svc.runner.run(cmds, phase="bench", stop_on_failure=False)
    if report.failures:
        sys.exit(f"failed: {report.failures[0].step}: {report.failures[0].message()}")
    return time.monotonic() - t0


def vlan_cmds(svc: Services, vlans: list, up: bool) -> list:
    c = svc.config
    node, inet = c.network_node, c.internet
    if up:
        return [vlan_manager.vlan_up_command(node, v, c.bridge, int(inet["vlan"]), inet["uplink"]) for v in vlans]
    return [vlan_manager.vlan_down_command(node, v, c.bridge) for v in vlans]


def reservation_cmd(svc: Services, first_vm: int, count: int, up: bool, first_ip: int = 2):
    c = svc.config
    if up:
        res = [(first_vm + i, f"52:54:00:{((first_vm + i) >> 8) & 255:02x}:{(first_vm + i) & 255:02x}:00",
                f"10.60.7.{first_ip + i % 240}") for i in range(count)]
        return vlan_manager.internet_up_command(c.network_node, c.internet, c.bridge, res)
    return vlan_manager.internet_release_command(c.network_node, c.internet, c.bridge,
                                                 [first_vm + i for i in range(count)])


def probe(svc: Services, runs: int) -> tuple:
    """(median s of the further deploy's network phase, median s of its removal)."""
    ups, downs = [], []
    for _ in range(runs):
        ups.append(run(svc, vlan_cmds(svc, PROBE, True) + [reservation_cmd(svc, 90000, 2, True, first_ip=250)]))
        downs.append(run(svc, vlan_cmds(svc, PROBE, False) + [reservation_cmd(svc, 90000, 2, False)]))
    return statistics.median(ups), statistics.median(downs)


def _ms(cmd: str, runs: int = 5) -> float:
    """Median milliseconds of ``cmd`` on the network node (each run one ``lab/exec.sh``, whose own cost
    is measured by ``true`` and taken off)."""
    times = []
    for _ in range(runs):
        t0 = time.monotonic()
        lab_exec("netnode", cmd)
        times.append((time.monotonic() - t0) * 1000)
    return statistics.median(times)


def _meminfo() -> dict:
    out = {}
    for line in lab_exec("netnode", "cat /proc/meminfo").splitlines():
        key, _, rest = line.partition(":")
        if rest.split():
            out[key] = int(rest.split()[0])
    return out


def _flow_add_ms() -> float:
    """Median ms of adding and deleting one VLAN's five flows on the node bridge (a bundle, as a set-up does)."""
    if "cr-node" not in lab_exec("netnode", "ovs-vsctl list-br"):
        return float("nan")
    flows = vlan_manager.node_vlan_flows(4094, "172.31.254.1", "172.31.254.254")
    bundle = vm_firewall.flow_bundle("cr-node", ["add " + f for f in flows])
    cookie = vm_firewall.cookie_match(naming.node_vlan_flow_cookie(4094))
    return _ms(f"{bundle} && ovs-ofctl -O OpenFlow14 del-flows cr-node {cookie}")


def node_facts() -> dict:
    """Where a VLAN's cost on the node goes: processes, memory, and the time of each kind of change."""
    rss = lab_exec("netnode", "ps -o rss= -C dnsmasq | awk '{s += $1; n++} END {print n + 0, s + 0}'").split()
    pss = lab_exec("netnode", "for p in $(pgrep -x dnsmasq); do awk '/^Pss:/ {print $2}' /proc/$p/smaps_rollup; "
                              "done 2>/dev/null | awk '{s += $1} END {print s + 0}'").split()
    mem = _meminfo()
    base = _ms("true")
    probe_ns = "ns-bench-probe"
    return {"dnsmasq": int(rss[0]), "dnsmasq_kib": int(rss[1]), "dnsmasq_pss_kib": int(pss[0]) if pss else 0,
            "mem_avail_kib": mem.get("MemAvailable", 0), "slab_kib": mem.get("Slab", 0),
            "rules": int(lab_exec("netnode", "iptables -S | wc -l; ").split()[0]),
            "netns": int(lab_exec("netnode", "ip netns list | wc -l").split()[0]),
            "mounts": int(lab_exec("netnode", "wc -l < /proc/self/mountinfo").split()[0]),
            "ports": int(lab_exec("netnode", "ovs-vsctl list-ports br-int | wc -l").split()[0]),
            "flows": int((lab_exec("netnode", "ovs-ofctl dump-flows cr-node 2>/dev/null | grep -c cookie=; true")
                          .split() or ["0"])[0]),
            "gateways": int((lab_exec("netnode", "{ ip -o link show type macvlan; nsenter "
                                        f"--net={naming.netns_path(naming.GATEWAY_NAMESPACE)} ip -o link show "
                                        "type macvlan 2>/dev/null; } | grep -c ' gw_vlan'; true")
                             .split() or ["0"])[0]),
            # ovs-vswitchd mirrors its namespace's routes and re-reads them all at each change
            "vsd_routes": int((lab_exec("netnode", "ovs-appctl ovs/route/show 2>/dev/null | grep -c dev; true")
                               .split() or ["0"])[0]),
            "flow_add_ms": _flow_add_ms() - base,
            "port_add_ms": _ms("ovs-vsctl add-port br-int benchprobe -- set interface benchprobe type=internal && "
                               "ovs-vsctl del-port br-int benchprobe") - base,
            "vlan_add_ms": _ms("ip link add benchlow type veth peer name benchlow-p; ip link add link benchlow "
                               "name benchmv type macvlan mode private; ip link del benchlow")
            - _ms("ip link add benchlow type veth peer name benchlow-p; ip link del benchlow"),
            "netns_add_ms": _ms(f"ip netns add {probe_ns} && ip netns del {probe_ns}") - base,
            "nsenter_ms": _ms(f"ip netns add {probe_ns}; nsenter --net=/run/netns/{probe_ns} true; "
                              f"ip netns del {probe_ns}") - _ms(f"ip netns add {probe_ns}; ip netns del {probe_ns}"),
            "netns_exec_ms": _ms(f"ip netns add {probe_ns}; ip netns exec {probe_ns} true; ip netns del {probe_ns}")
            - _ms(f"ip netns add {probe_ns}; ip netns del {probe_ns}"),
            "iptables_save_ms": _ms("iptables-save -t filter >/dev/null") - base}


def check_intact(size: int, slices: int, facts: dict) -> None:
    """Stop when the probes disturbed what the node holds: every filled VLAN's gateway (and the internet
    VLAN's while reservations are left), its five flows and dnsmasq, and the isolation chains."""
    want = size + (1 if slices else 0)
    got = (facts["gateways"], facts["flows"], facts["dnsmasq"])
    if got != (want, 5 * want, want) or (size and facts["rules"] <= 3):
        sys.exit(f"the node lost objects of VLANs still set up at {size} VLANs: gateways, flows, dnsmasq "
                 f"{got} (expected {(want, 5 * want, want)}), iptables -S lines {facts['rules']}")


def sweep(svc: Services) -> None:
    ok, found = reconcile.Reconciler(svc).survey([svc.config.network_node])
    if not ok:
        sys.exit(found)
    run(svc, reconcile.removal_commands(svc.host_context(), sorted({f.key for f in found})))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="0,1,100,500,1000", help="link VLANs on the node (100 live slices = 500)")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    lab_up()
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        svc = services(tmp)
        sweep(svc)
        rows, filled = [], 0
        try:
            for size in sizes:
                new = list(range(FILL_FIRST + filled, FILL_FIRST + size))
                t_fill = run(svc, vlan_cmds(svc, new, True)) if new else 0.0
                slices = size // 5
                if slices:
                    run(svc, [reservation_cmd(svc, 100000, slices, True)])
                filled = size
                up, down = probe(svc, args.runs)
                facts = node_facts()
                check_intact(size, slices, facts)
                rows.append((size, slices, t_fill, up, down, facts))
                print(f"  measured {size} VLANs", file=sys.stderr)
        finally:
            sweep(svc)
            left = node_facts()
            svc.executor.close()
    base, empty = rows[0][3], rows[0][5]
    warm = next((r for r in rows if r[0] > 0), rows[0])   # the trunk exists already: no port add in the phase
    print("\nNetwork node: a further deploy's network phase (5 link VLANs + internet), median of "
          f"{args.runs}, against the node's size (ratios against the first rows of this run: on the empty "
          "node the phase also makes the trunk, and its removal removes it)")
    print(f"{'link VLANs':>10} {'internet VMs':>12} {'fill s':>7} {'phase s':>8} {'x empty':>8} "
          f"{'x ' + str(warm[0]) + ' VLAN':>10} {'removal s':>9} {'x empty':>8}")
    for size, slices, t_fill, up, down, _f in rows:
        print(f"{size:>10} {slices:>12} {t_fill:>7.1f} {up:>8.3f} {up / base:>8.2f} {up / warm[3]:>10.2f} "
              f"{down:>9.3f} {down / rows[0][4]:>8.2f}")
    print("\nWhere the node's cost goes at each size (memory against the empty node; times of one change, ms)")
    print(f"{'link VLANs':>10} {'dnsmasq':>8} {'RSS KiB':>8} {'PSS KiB':>8} {'avail -MiB':>10} {'slab +MiB':>9} "
          f"{'netns':>6} {'mounts':>7} {'rules':>6} {'ports':>6} {'flows':>6} {'port add':>9} {'flows add':>9} "
          f"{'macvlan':>8} {'netns add':>9} {'nsenter':>8} {'netns exec':>10} {'ipt-save':>8} {'vsd routes':>10}")
    for size, _slices, _t, _up, _down, f in rows:
        n = f["dnsmasq"] or 1
        print(f"{size:>10} {f['dnsmasq']:>8} {f['dnsmasq_kib'] / n:>8.0f} {f['dnsmasq_pss_kib'] / n:>8.0f} "
              f"{(empty['mem_avail_kib'] - f['mem_avail_kib']) / 1024:>10.0f} "
              f"{(f['slab_kib'] - empty['slab_kib']) / 1024:>9.0f} {f['netns']:>6} {f['mounts']:>7} "
              f"{f['rules']:>6} {f['ports']:>6} {f['flows']:>6} {f['port_add_ms']:>9.1f} {f['flow_add_ms']:>9.1f} "
              f"{f['vlan_add_ms']:>8.1f} "
              f"{f['netns_add_ms']:>9.1f} {f['nsenter_ms']:>8.1f} {f['netns_exec_ms']:>10.1f} "
              f"{f['iptables_save_ms']:>8.1f} {f['vsd_routes']:>10}")
    print(f"\nleft after the bench: {left['dnsmasq']} dnsmasq, {left['netns']} namespaces, {left['ports']} ports "
          f"(the lab's own trunk port is one)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
