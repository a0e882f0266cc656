#!/usr/bin/env python3
"""What the privacy rules (vm_firewall, SPEC §11) cost a deploy, measured in the local lab.

Reference slice of bench/deploy.py: 6 cirros VMs over 3 workers, 5 links in a chain, internet on
vm1 and vm6 (12 NICs).  Runs alternate between two modes on the same lab:

* ``plain``: the product as it is;
* ``rules``: the product with vm_firewall's scripts in its host commands, exactly where the
  integration note puts them (protected internet TAPs, per-VM rules after add-port, the trunk
  filter on workers with internet VMs, rule removal at stop, the node's fixed MACs, IPv6 off on
  gateway ports, node_policy).  Until vm_launcher/vlan_manager call vm_firewall themselves this
  script adds them by wrapping those builders (``wire_rules``); once they do, run ``plain`` only.

For each run: deploy_slice until it returns, every NIC leased (from outside: the network node's
lease files), delete_slice.  Then, on a worker, the cost of one ``vm_firewall.vm_rules`` call for a
VM with an internet NIC and a link NIC (the only per-VM command the rules add), median of 20.

Usage (as root; the lab is brought up if needed):
    .venv/bin/python bench/privacy_cost.py [--runs 5]
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
from hostcmd import HostCommand, q  # noqa: E402
from orchestrator_api import OrchestratorAPI  # noqa: E402
from remote_executor import RemoteExecutor  # noqa: E402

LAB = os.path.join(ROOT, "lab")


def manager_address(node: str) -> str:
    out = subprocess.run(["ip", "-o", "route", "get", node], capture_output=True, text=True).stdout
    m = re.search(r"\bsrc (\S+)", out)
    return m.group(1) if m else node


def wire_rules(config: ClusterConfig) -> None:
    """Put vm_firewall's scripts into vm_launcher's and vlan_manager's commands (see the docstring)."""
    edge = fw.internet_edge(config.internet)
    management = [*config.workers, config.network_node, manager_address(config.network_node)]
    launch, stop = vm_launcher.launch_vm_command, vm_launcher.stop_vm_command
    gateway, dhcp_up = vlan_manager._gateway, vlan_manager._dhcp_namespace_up

    def launch_with_rules(vm, home, bridge, accel):
        cmd = launch(vm, home, bridge, accel)
        lines = cmd.script.split("\n")
        for p in fw.ports_of(vm):
            cols = " ".join(q(c) for c in fw.port_columns(p, edge))
            if cols:
                lines = [ln.replace(f"add-port {bridge} {p.tap} tag={p.vlan}",
                                    f"add-port {bridge} {p.tap} tag={p.vlan} {cols}", 1) for ln in lines]
        at = next(i for i, ln in enumerate(lines) if ln.startswith("ip link set tap"))
        extra = [fw.vm_rules(bridge, vm, edge)]
        if any(p.vlan == edge.vlan for p in fw.ports_of(vm)) and vm["worker_ip"] != config.network_node:
            extra.insert(0, fw.worker_trunk_rules(bridge, edge))
        lines[at:at] = extra
        return HostCommand(cmd.host, "\n".join(lines), cmd.sudo, cmd.timeout, cmd.step, cmd.action, cmd.target)

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


def one_run(config: ClusterConfig) -> dict:
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
    t = time.monotonic()
    ok, msg = api.deploy_slice("admin", sid)
    r["deploy_s"] = time.monotonic() - t
    assert ok, msg
    s = api.db.get_slice(sid)
    vlans = sorted({link["vlan_id"] for link in s["links"]}) + [config.internet_vlan]
    wanted = {i["mac"].lower() for vm in s["vms"] for i in vm["interfaces"] if i["vlan_id"] is not None}
    got: set = set()
    while time.monotonic() < t + 300 and got != wanted:
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


def rule_install_ms(config: ClusterConfig, host: str, vm: dict, n: int = 20) -> float:
    """Median wall time of one vm_rules bundle for ``vm``'s ports on lab host ``host`` (as root, inside it)."""
    edge = fw.internet_edge(config.internet)
    taps = [p.tap for p in fw.ports_of(vm)]
    make = "; ".join(f"ovs-vsctl --may-exist add-port br-int {t} -- set interface {t} type=internal" for t in taps)
    drop = "; ".join(f"ovs-vsctl --if-exists del-port br-int {t}" for t in taps)
    script = fw.vm_rules("br-int", vm, edge)
    out = lab_exec(host, f"{make}; for i in $(seq {n}); do s=$(date +%s%N); {script}; e=$(date +%s%N); "
                         f"echo $(( (e - s) / 1000 )); done; "
                         f"{fw.remove_vm_rules('br-int', int(vm['vm_id']))}; {drop}")
    return statistics.median(int(x) for x in out.split() if x.isdigit()) / 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--config", default=os.path.join(LAB, "cluster.yaml"))
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/privacy_cost.py drives the local lab: run it as root", file=sys.stderr)
        return 2
    subprocess.run([os.path.join(LAB, "up.sh")], check=True, stdout=subprocess.DEVNULL)
    config = ClusterConfig.load(args.config)
    saved = (vm_launcher.launch_vm_command, vm_launcher.stop_vm_command, vlan_manager._gateway,
             vlan_manager._dhcp_namespace_up, vlan_manager.isolation_rules)

    def plain() -> None:
        (vm_launcher.launch_vm_command, vm_launcher.stop_vm_command, vlan_manager._gateway,
         vlan_manager._dhcp_namespace_up, vlan_manager.isolation_rules) = saved

    results: dict = {"plain": [], "rules": []}
    for n in range(args.runs):
        for mode in ("plain", "rules"):
            plain()
            if mode == "rules":
                wire_rules(config)
            r = one_run(config)
            results[mode].append(r)
            print(f"run {n + 1} {mode:<5}: deploy {r['deploy_s']:.3f} s, leases {r['leases']}/{r['nics']} "
                  f"after {r['leases_s']:.1f} s, delete {r['delete_s']:.3f} s", flush=True)
    plain()
    with open(args.config) as f:
        hosts = {ip: name for name, ip in yaml.safe_load(f)["lab"]["hosts"].items()}
    vm = results["rules"][0]["vm"]
    ms = rule_install_ms(config, hosts[vm["worker_ip"]], vm)

    def med(mode: str, key: str) -> float:
        return statistics.median(r[key] for r in results[mode])

    print(f"\nMedian of {args.runs} run(s) per mode, reference slice (6 VMs / 3 workers / 5 links / 2 internet)")
    print(f"{'phase':<30} {'plain':>10} {'rules':>10} {'cost':>9}")
    for name, key in (("deploy_slice returns", "deploy_s"), ("every NIC leased", "leases_s"),
                      ("delete_slice", "delete_s")):
        p, w = med("plain", key), med("rules", key)
        print(f"{name:<30} {p:>9.3f}s {w:>9.3f}s {100 * (w - p) / p:>+8.1f}%")
    print(f"{'NICs leased':<30} {med('plain', 'leases'):>8.0f}/12 {med('rules', 'leases'):>8.0f}/12")
    print(f"one vm_rules bundle (internet + link NIC), on the worker: {ms:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
