#!/usr/bin/env python3
"""What the privacy rules (vm_firewall, SPEC §11) cost a deploy, measured in the local lab.

Reference slice of bench/deploy.py: 6 cirros VMs over 3 workers, 5 links in a chain, internet on
vm1 and vm6 (12 NICs).  Each round runs three deploys on the same lab, one per mode, and costs are
paired within a round (the machine's load drifts between rounds):

* ``plain``: the product as it is (QEMU first, then its TAPs on the bridge);
* ``early``: the launch reordered as the integration note proposes (``early_launch_command``: TAPs
  made, bridged and set up before QEMU starts), no rules;
* ``rules``: ``early`` plus every vm_firewall script where the integration note puts it (protected
  internet TAPs, per-VM rules with the trunk filter before QEMU starts, rule removal at stop, the
  node's fixed MACs, IPv6 off on gateway ports, node_policy).
Until vm_launcher/vlan_manager do this themselves, this script does it by replacing those builders
(``wire``); once they do, its ``plain`` mode is the product with rules.

For each run: deploy_slice until it returns, every NIC leased (from outside: the network node's
lease files), delete_slice.  ``plain``/``early`` runs start with no trunk filter on the workers (a filter left
by a ``rules`` run would drop the randomly-MACed gateway's frames); ``rules`` runs start with the node's
policy loaded, as on a node that runs the rules (the other modes replace it; its one-time load is
timed apart).  Then, on a worker, the time of
each command the rules add (median of 15).

Usage (as root; the lab is brought up if needed):
    .venv/bin/python bench/privacy_cost.py [--runs 5] [--modes plain,early,rules] [--no-leases]
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Optional

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import naming  # noqa: E402
import vlan_manager  # noqa: E402
import vm_firewall as fw  # noqa: E402
import vm_launcher  # noqa: E402
from config import ClusterConfig  # noqa: E402
from database import Database  # noqa: E402
from deployment_api import DeploymentAPI  # noqa: E402
from hostcmd import HostCommand, home_path, join, q  # noqa: E402
from orchestrator_api import OrchestratorAPI  # noqa: E402
from remote_executor import RemoteExecutor  # noqa: E402

LAB = os.path.join(ROOT, "lab")


def manager_address(node: str) -> str:
    out = subprocess.run(["ip", "-o", "route", "get", node], capture_output=True, text=True).stdout
    m = re.search(r"\bsrc (\S+)", out)
    return m.group(1) if m else node


def early_launch_command(vm: dict, home: str, bridge: str, accel: str,
                         edge: Optional[fw.InternetEdge] = None, trunk_filter: bool = False) -> HostCommand:
    """vm_launcher's launch, reordered as the integration note proposes: the TAPs of connected NICs
    are made (persistent, ``ip tuntap``) and put on the bridge *before* QEMU starts, so that no OVS
    command competes with booting guests for the CPU.  With ``edge``, their rules are installed while
    QEMU starts, and the TAPs are set up (a down TAP passes no frame) only once the rules are in.
    QEMU attaches to the existing TAPs."""
    vm_id = int(vm["vm_id"])
    overlay = home_path(vm["qcow_image"], home)
    ifaces = vm["interfaces"]
    wired = [(naming.tap_name(vm_id, i), int(f["vlan_id"])) for i, f in enumerate(ifaces)
             if f.get("vlan_id") is not None]
    loose = [naming.tap_name(vm_id, i) for i, f in enumerate(ifaces) if f.get("vlan_id") is None]
    ports = {p.tap: p for p in fw.ports_of(vm)}
    ovs = ["ovs-vsctl"]
    for tap, vlan in wired:
        cols = fw.port_columns(ports[tap], edge) if edge else []
        ovs += ["--", "--if-exists", "del-port", bridge, tap, "--", "add-port", bridge, tap, f"tag={vlan}", *cols]
    pidfile = q(naming.vm_pidfile(vm_id))
    lines = [
        "set -e",
        f"mkdir -p {q(naming.STATE_DIR)}",
        f"test -f {q(overlay)} || {{ echo {q('overlay ' + overlay + ' is missing')} >&2; exit 2; }}",
        vm_launcher._kill_vm_by_pidfile(vm_id),
        vm_launcher._remove_taps(vm_id, len(ifaces), bridge),
        f"rm -f {q(naming.vm_serial_socket(vm_id))} {q(naming.vm_serial_log(vm_id))}",
        *[join(["ip", "tuntap", "add", "dev", tap, "mode", "tap", "vnet_hdr"]) for tap, _ in wired],
        join(ovs) if wired else ":",
    ]
    if edge:   # the rules go in while QEMU starts; the TAPs come up (and pass frames) only once they are in
        lines += [f"{{ {fw.vm_rules(bridge, vm, edge, trunk_filter)}; }} & rules=$!",
                  join(vm_launcher.qemu_argv(vm, overlay, accel)) + ' || { wait "$rules"; exit 3; }',
                  'wait "$rules" || { echo "OpenFlow rules not installed" >&2; exit 5; }',
                  *[join(["ip", "link", "set", tap, "up"]) for tap, _ in wired]]
    else:
        lines += [*[join(["ip", "link", "set", tap, "up"]) for tap, _ in wired],
                  join(vm_launcher.qemu_argv(vm, overlay, accel))]
    lines += [
        *[join(["ip", "link", "set", tap, "up"]) for tap in loose],
        f"pid=$(cat {pidfile})",
        'kill -0 "$pid" 2>/dev/null || { echo "QEMU exited right after starting" >&2; exit 3; }',
        'echo "$pid"',
    ]
    return HostCommand(vm["worker_ip"], "\n".join(lines), sudo=True, timeout=60,
                       step=f"start VM {vm_id} ({vm['name']})")


def management_of(config: ClusterConfig) -> list:
    """What VMs must not reach: every worker, the network node, the manager."""
    return [*config.workers, config.network_node, manager_address(config.network_node)]


def preload_node_policy(config: ClusterConfig) -> None:
    """Load the rules' node policy outside the timed deploy: a node running the rules has it already
    (it is loaded once per node and policy change); the ``plain``/``early`` runs replaced it."""
    lab_exec("netnode", vlan_manager._locked("iptables.lock", [
        f"mkdir -p {q(naming.STATE_DIR)}", fw.node_policy(config.internet_vlan, config.internet["uplink"],
                                                          management_of(config))]))


def wire(config: ClusterConfig, mode: str) -> None:
    """``early``: the reordered launch only; ``rules``: reordered launch + every vm_firewall script."""
    vm_launcher.launch_vm_command = lambda vm, home, bridge, accel: early_launch_command(vm, home, bridge, accel)
    if mode != "rules":
        return
    edge = fw.internet_edge(config.internet)
    management = management_of(config)
    stop = vm_launcher.stop_vm_command
    gateway, dhcp_up = vlan_manager._gateway, vlan_manager._dhcp_namespace_up

    def launch_with_rules(vm, home, bridge, accel):
        return early_launch_command(vm, home, bridge, accel, edge, trunk_filter=vm["worker_ip"] != config.network_node)

    def stop_with_rules(vm, bridge):
        cmd = stop(vm, bridge)
        script = cmd.script + "\n" + fw.remove_vm_rules(bridge, int(vm["vm_id"]))
        return HostCommand(cmd.host, script, cmd.sudo, cmd.timeout, cmd.step, cmd.action, cmd.target)

    def gateway_with_rules(bridge, vlan, gateway_ip, prefixlen):
        lines = gateway(bridge, vlan, gateway_ip, prefixlen)
        if vlan == edge.vlan:
            cols = " ".join(q(c) for c in fw.gateway_port_columns(edge))
            lines[0] = lines[0].replace("type=internal", f"type=internal {cols}", 1)
        return [lines[0], fw.gateway_ipv6_off(naming.gateway_port(vlan)), *lines[1:]]

    def dhcp_up_with_rules(bridge, vlan, server_ip, prefixlen, rng, router):
        lines = dhcp_up(bridge, vlan, server_ip, prefixlen, rng, router)
        if vlan == edge.vlan:
            inside = naming.dhcp_veth(vlan)[1]
            peer = " ".join(fw.dhcp_veth_peer_args(edge))
            lines = [ln.replace(f"peer name {inside}", f"peer name {inside} {peer}") for ln in lines]
        return lines

    internet_up = vlan_manager.internet_up_command

    def internet_up_with_rules(node, internet, bridge, reservations):
        cmd = internet_up(node, internet, bridge, reservations)   # a running setup may predate the fixed MACs
        script = cmd.script + "\n" + fw.node_internet_macs(bridge, edge)
        return HostCommand(cmd.host, script, cmd.sudo, cmd.timeout, cmd.step, cmd.action, cmd.target)

    vlan_manager.internet_up_command = internet_up_with_rules
    vm_launcher.launch_vm_command = launch_with_rules
    vm_launcher.stop_vm_command = stop_with_rules
    vlan_manager._gateway = gateway_with_rules
    vlan_manager._dhcp_namespace_up = dhcp_up_with_rules
    vlan_manager.isolation_rules = lambda internet_vlan, uplink: vlan_manager._locked(
        "iptables.lock", [fw.node_policy(internet_vlan, uplink, management)])


def lab_exec(host: str, cmd: str) -> str:
    return subprocess.run([os.path.join(LAB, "exec.sh"), host, "sh", "-c", cmd],
                          capture_output=True, text=True, timeout=60).stdout


def leased_macs(vlans: list) -> set:
    out = lab_exec("netnode", " ; ".join(
        f"cat {naming.STATE_DIR}/dnsmasq-vlan{v}.leases 2>/dev/null" for v in vlans) + "; true")
    return {line.split()[1].lower() for line in out.splitlines() if len(line.split()) >= 3}


def one_run(config: ClusterConfig, wait_leases: bool = True) -> dict:
    executor = RemoteExecutor(config)
    api = OrchestratorAPI(Database(os.path.join(tempfile.mkdtemp(prefix="bench-"), "db.yaml")),
                          DeploymentAPI(executor), config)
    ok, s = api.create_slice("admin", "pcost")
    assert ok, s
    sid = s["slice_id"]
    vms = []
    for i in range(6):
        ok, vm = api.add_vm_to_slice("admin", sid, f"p{i + 1}", "cirros", 2, i in (0, 5))
        assert ok, vm
        vms.append(vm)
    for i in range(5):
        ok, link = api.create_link("admin", sid, vms[i]["vm_id"], "eth2", vms[i + 1]["vm_id"], "eth1")
        assert ok, link
    executor.close()
    r: dict = {}
    phases: dict = {}

    def progress(e: dict) -> None:
        phases[e["phase"]] = max(phases.get(e["phase"], 0.0), e["elapsed"])

    t = time.monotonic()
    ok, msg = api.deploy_slice("admin", sid, progress=progress)
    r["deploy_s"] = time.monotonic() - t
    r["network_s"] = phases.get("network", 0.0)
    r["vms_s"] = phases.get("vms", 0.0) - r["network_s"]
    assert ok, msg
    s = api.db.get_slice(sid)
    vlans = sorted({link["vlan_id"] for link in s["links"]}) + [config.internet_vlan]
    wanted = {i["mac"].lower() for vm in s["vms"] for i in vm["interfaces"] if i["vlan_id"] is not None}
    got: set = set()
    while wait_leases and time.monotonic() < t + 300 and got != wanted:
        got = leased_macs(vlans) & wanted
        time.sleep(0.5)
    r["leases_s"], r["leases"], r["nics"] = time.monotonic() - t, len(got), len(wanted)
    r["vm"] = s["vms"][0]
    executor.close()
    t = time.monotonic()
    ok, msg = api.delete_slice("admin", sid)
    r["delete_s"] = time.monotonic() - t
    assert ok, msg
    executor.close()
    return r


def command_ms(host: str, vm: dict, edge: fw.InternetEdge, n: int = 15) -> dict:
    """Median wall time (ms) of each command the rules add, on lab host ``host`` (as root, inside it)."""
    taps = [p.tap for p in fw.ports_of(vm)]
    make = "; ".join(f"ovs-vsctl --may-exist add-port br-int {t} -- set interface {t} type=internal" for t in taps)
    drop = "; ".join(f"ovs-vsctl --if-exists del-port br-int {t}" for t in taps)
    out = {}
    for name, script in (("vm_rules (1 internet + 1 link NIC)", fw.vm_rules("br-int", vm, edge)),
                         ("remove_vm_rules", fw.remove_vm_rules("br-int", int(vm["vm_id"]))),
                         ("worker_trunk_rules", fw.worker_trunk_rules("br-int", edge)),
                         ("protect_ports", fw.protect_ports(vm, edge))):
        text = lab_exec(host, f"{make}; for i in $(seq {n}); do s=$(date +%s%N); {script} >/dev/null; "
                              "e=$(date +%s%N); echo $(( (e - s) / 1000 )); done; "
                              f"{fw.remove_vm_rules('br-int', int(vm['vm_id']))}; {drop}")
        out[name] = statistics.median(int(x) for x in text.split() if x.isdigit()) / 1000
    return out


def node_command_ms(config: ClusterConfig, n: int = 11) -> dict:
    """Median wall time (ms) on the network node of the policy today's product loads at every gateway
    set-up, of node_policy when it is in place (the steady state), and of its load (after a change)."""
    policy = fw.node_policy(config.internet_vlan, config.internet["uplink"], management_of(config))
    old = vlan_manager.isolation_rules(config.internet_vlan, config.internet["uplink"])
    out = {}
    for name, setup, script in (
            ("isolation_rules of today (every time)", ":", old),
            ("node_policy, in place", ":", policy),
            ("node_policy, load (v4 + v6)", f"rm -f {q(naming.STATE_DIR)}/policy-*.sum", policy)):
        text = lab_exec("netnode", f"mkdir -p {q(naming.STATE_DIR)}; ( {policy} ) >/dev/null 2>&1; "
                                   f"for i in $(seq {n}); do {setup}; s=$(date +%s%N); ( {script} ) >/dev/null 2>&1; "
                                   "e=$(date +%s%N); echo $(( (e - s) / 1000 )); done")
        out[name] = statistics.median(int(x) for x in text.split() if x.isdigit()) / 1000
    return out


def clear_trunk_filters(config: ClusterConfig, hosts: dict) -> None:
    """Before a ``plain`` run: no trunk filter may stay behind (it needs the node's fixed MACs)."""
    edge = fw.internet_edge(config.internet)
    for worker in config.workers:
        lab_exec(hosts[worker], fw.remove_worker_trunk_rules("br-int", edge))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="rounds (each: one deploy per mode)")
    parser.add_argument("--modes", default="plain,early,rules", help="comma-separated, from plain,early,rules")
    parser.add_argument("--no-leases", action="store_true",
                        help="do not wait for the 12 leases (shorter runs, for more rounds)")
    parser.add_argument("--config", default=os.path.join(LAB, "cluster.yaml"))
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/privacy_cost.py drives the local lab: run it as root", file=sys.stderr)
        return 2
    subprocess.run([os.path.join(LAB, "up.sh")], check=True, stdout=subprocess.DEVNULL)
    config = ClusterConfig.load(args.config)
    saved = (vm_launcher.launch_vm_command, vm_launcher.stop_vm_command, vlan_manager._gateway,
             vlan_manager._dhcp_namespace_up, vlan_manager.isolation_rules, vlan_manager.internet_up_command)

    def plain() -> None:
        (vm_launcher.launch_vm_command, vm_launcher.stop_vm_command, vlan_manager._gateway,
         vlan_manager._dhcp_namespace_up, vlan_manager.isolation_rules, vlan_manager.internet_up_command) = saved

    with open(args.config) as f:
        hosts = {ip: name for name, ip in yaml.safe_load(f)["lab"]["hosts"].items()}
    modes = tuple(m for m in args.modes.split(",") if m in ("plain", "early", "rules"))
    if "rules" not in modes or len(modes) < 2:
        parser.error("--modes needs rules and plain or early")
    results: dict = {m: [] for m in modes}
    for n in range(args.runs):
        for mode in (modes if n % 2 == 0 else modes[::-1]):   # ABBA order: drift cancels out
            plain()
            if mode == "plain":
                clear_trunk_filters(config, hosts)
            else:
                wire(config, mode)
            if mode == "early":
                clear_trunk_filters(config, hosts)
            if mode == "rules":
                preload_node_policy(config)
            r = one_run(config, wait_leases=not args.no_leases)
            results[mode].append(r)
            print(f"run {n + 1} {mode:<5}: deploy {r['deploy_s']:.3f} s (network {r['network_s']:.3f} s, "
                  f"VMs {r['vms_s']:.3f} s), leases {r['leases']}/{r['nics']} after {r['leases_s']:.1f} s, "
                  f"delete {r['delete_s']:.3f} s", flush=True)
    plain()
    vm = results["rules"][0]["vm"]
    ms = command_ms(hosts[vm["worker_ip"]], vm, fw.internet_edge(config.internet))
    node_ms = node_command_ms(config)
    clear_trunk_filters(config, hosts)

    def med(mode: str, key: str) -> float:
        return statistics.median(r[key] for r in results[mode])

    def paired(mode: str, key: str, base: str) -> float:
        """Median over rounds of (mode - base): the machine's load drifts between rounds."""
        return statistics.median(r[key] - p[key] for r, p in zip(results[mode], results[base]))

    print(f"\nMedian of {args.runs} round(s), reference slice (6 VMs / 3 workers / 5 links / 2 internet);"
          " costs paired within a round")
    bases = [b for b in ("early", "plain") if b in modes]
    print(f"{'phase':<22} " + " ".join(f"{m:>8}" for m in modes) + "".join(f"{'rules vs ' + b:>24}" for b in bases))
    keys = [("deploy_slice returns", "deploy_s"), ("  network phase", "network_s"), ("  VMs phase", "vms_s"),
            ("delete_slice", "delete_s")]
    if not args.no_leases:
        keys.insert(3, ("every NIC leased", "leases_s"))
    for name, key in keys:
        cells = [f"{1000 * paired('rules', key, b):>+10.0f} ms {100 * paired('rules', key, b) / med(b, key):>+7.1f}%"
                 for b in bases]
        print(f"{name:<22} " + " ".join(f"{med(m, key):>7.3f}s" for m in modes) + "".join(f"{c:>24}" for c in cells))
    if not args.no_leases:
        print(f"{'NICs leased':<22} " + " ".join(f"{med(m, 'leases'):>5.0f}/12" for m in modes))
    print("\nOne command on a worker (median of 15), what each VM launch / stop adds:")
    for name, value in ms.items():
        print(f"  {name:<36} {value:6.1f} ms")
    print("On the network node (median of 11), at each gateway set-up (serialised by the node's lock):")
    for name, value in node_ms.items():
        print(f"  {name:<36} {value:6.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
