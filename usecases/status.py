"""What a slice really is on the hosts: each VM's state, each NIC's address, what is missing.

Built on ``reconcile``'s survey (the same scans as the orphan cleanup) plus
the network node's DHCP leases of the slice's VLANs.  ``SliceReport`` is
plain data: View, the menu's status table and repair all read it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import naming
from hosts import kinds, resources
from hosts.hostcmd import HostCommand, q
from usecases.lifecycle import hosts_of
from usecases.reconcile import Reconciler, cluster_view
from usecases.services import Services

VM_KINDS = ("qemu", "tap", "port", "vmfiles")


def leases_command(node: str, vlans: list) -> HostCommand:
    """Root script printing ``lease <vlan> <expiry> <mac> <ip> ...`` for each lease of ``vlans``."""
    lines = [f"f={q(naming.dnsmasq_files(int(v))['leases'])}; [ -f \"$f\" ] && sed 's/^/lease {int(v)} /' \"$f\""
             for v in sorted(set(vlans))]
    return HostCommand(node, "\n".join([*lines, "true"]), sudo=True, timeout=30, step="read leases",
                       action="leases", target=node)


def parse_leases(text: str) -> dict:
    """(vlan, mac) -> IP from ``leases_command``'s output."""
    out = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 5 and words[0] == "lease" and words[1].isdigit():
            out[(int(words[1]), words[3].lower())] = words[4]
    return out


@dataclass
class Check:
    """One expected object and what was found."""

    key: resources.Key
    label: str
    expected: str
    found: Optional[str]  # None: missing

    @property
    def ok(self) -> bool:
        return self.found is not None and (not self.expected or self.found == self.expected)

    @property
    def problem(self) -> str:
        if self.found is None:
            return "missing"
        return "" if self.ok else f"is {self.found}, should be {self.expected}"


@dataclass
class SliceReport:
    """A slice as the hosts hold it."""

    slice: dict
    reachable: dict = field(default_factory=dict)      # host -> True / error message
    checks: list = field(default_factory=list)         # Check of every expected object
    extra: list = field(default_factory=list)          # Found objects of this slice that should not exist
    leases: dict = field(default_factory=dict)         # (vlan, mac) -> ip

    def vm_state(self, vm: dict) -> str:
        """running, stopped, crashed (its QEMU is gone), unreachable, or design."""
        if vm.get("status") in ("design", "pending"):
            return vm["status"]
        if vm.get("status") == "stopped":
            return "stopped"
        if self.reachable.get(vm["worker_ip"]) is not True:
            return "unreachable"
        qemu = next((c for c in self.checks if c.key.kind == "qemu" and c.key.vm_id == int(vm["vm_id"])), None)
        return "running" if qemu is not None and qemu.found is not None else "crashed"

    def address(self, vm: dict, iface: dict, internet_vlan: int) -> Optional[str]:
        """A NIC's address: its ip_config on the internet VLAN, else its lease on its link VLAN."""
        if iface.get("vlan_id") == internet_vlan and iface.get("ip_config"):
            return iface["ip_config"]["ip"]
        if iface.get("vlan_id") is None:
            return None
        return self.leases.get((int(iface["vlan_id"]), iface["mac"].lower()))

    @property
    def problems(self) -> list:
        return [c for c in self.checks if not c.ok]


def slice_report(services: Services, s: dict, data: dict) -> SliceReport:
    """Survey the slice's hosts and compare with what the database expects of it."""
    return slice_reports(services, [s], data)[int(s["slice_id"])]


def slice_reports(services: Services, slices: list, data: dict) -> dict:
    """slice ID -> SliceReport, surveying the union of the slices' hosts once (in parallel)."""
    config = services.config
    hosts = sorted({h for s in slices for h in hosts_of(s, config)})
    reachable, found = {}, {}
    for host, items in Reconciler(services).survey_each(hosts).items():
        reachable[host] = True if not isinstance(items, str) else items
        if not isinstance(items, str):
            found.update({f.key: f.detail for f in items})
    vlans = sorted({int(link["vlan_id"]) for s in slices for link in s.get("links", [])})
    leases = {}
    if vlans and reachable.get(config.network_node) is True:
        res = services.executor.run(leases_command(config.network_node, vlans))
        if res.ok:
            leases = parse_leases(res.stdout)
    return {int(s["slice_id"]): _compare(config, s, data, reachable, found, leases) for s in slices}


def _compare(config, s: dict, data: dict, reachable: dict, found: dict, leases: dict) -> SliceReport:
    sid = str(s["slice_id"])
    report = SliceReport(s, {h: reachable.get(h, "not scanned") for h in hosts_of(s, config)})
    mine = cluster_view(config, {"slices": {sid: s}})
    others = cluster_view(config, {"slices": {k: v for k, v in data["slices"].items() if str(k) != sid}})
    expected = resources_expected(mine)
    for key, detail in sorted(expected.items()):
        if report.reachable.get(key.host) is True:
            report.checks.append(Check(key, kinds.kind(key.kind).describe(key), detail, found.get(key)))
    only_mine = resources_owned_by(mine) - resources_owned_by(others)
    report.extra = sorted(k for k in found if k in only_mine and k not in expected
                          and not kinds.kind(k.kind).transient)
    vlans = {int(link["vlan_id"]) for link in s.get("links", [])}
    report.leases = {k: ip for k, ip in leases.items() if k[0] in vlans}
    return report


def resources_expected(view) -> dict:
    out = {}
    for k in kinds.kinds():
        out.update(k.expected(view))
    return out


def resources_owned_by(view) -> set:
    return {key for k in kinds.kinds() for key in k.owned(view)}
