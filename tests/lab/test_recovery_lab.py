"""A manager SIGKILLed in the middle of a deploy, start or stop, for real (issue 17 item 1).

The deploy runs in a child process, killed at each phase (hooked on its progress events, or on a
timer once the first VM's script is on its way to the worker).  Then the next reader of the slice,
in this process, must roll back exactly what the deploy made: checked on the hosts (QEMU
processes, TAPs, OVS ports, OpenFlow rules, state files, gateways, namespaces, dnsmasq, the node's
files), the slice ``design`` with its disks, and a new deploy of it works.
"""
from __future__ import annotations

import signal
import time

import pytest
from labtools import (
    assert_clean,
    host_of,
    kill_manager_at,
    node_files,
    sh,
    vm_flows,
    wait_for_leases,
)

from usecases.lifecycle import hosts_of


def slice3(api, name: str):
    """Three VMs over the three workers, two links, internet on the first."""
    ok, s = api.create_slice("admin", name)
    assert ok, s
    vms = []
    for i in range(3):
        ok, vm = api.add_vm_to_slice("admin", s["slice_id"], f"{name}{i}", "cirros", 2, i == 0)
        assert ok, vm
        vms.append(vm)
    links = []
    for a, b in ((0, 1), (1, 2)):
        ok, link = api.create_link("admin", s["slice_id"], vms[a]["vm_id"], f"eth{1 + (a == 1)}",
                                   vms[b]["vm_id"], "eth1")
        assert ok, link
        links.append(link)
    assert len({vm["worker_ip"] for vm in vms}) == 3
    return s["slice_id"], vms, links


def overlays_of(vms) -> set:
    return {vm["qcow_image"].rsplit("/", 1)[1] for vm in vms}


def qemu_of(lab, vm) -> str:
    """The VM's QEMU process lines on its worker ("" when none)."""
    out = sh(lab, host_of(lab, vm["worker_ip"]), "pgrep -af '^qemu-system' || true")
    return "\n".join(line for line in out.splitlines() if f"-name cr-vm{vm['vm_id']}," in line)


def assert_nothing_of(lab, vms, links) -> None:
    """Nothing of the slice on any host but its disks (which are 0600 and still there)."""
    assert_clean(lab, keep_overlays=overlays_of(vms))
    for vm in vms:
        host = host_of(lab, vm["worker_ip"])
        assert not vm_flows(lab, host), f"{host}: OpenFlow rules left: {vm_flows(lab, host)}"
        name = vm["qcow_image"].rsplit("/", 1)[1]
        assert name in sh(lab, host, "ls /home/ubuntu/vm_images"), f"{host}: the disk {name} is gone"
    vlans = {link["vlan_id"] for link in links} | {400}
    left = [f for f in node_files(lab) if any(f"vlan{v}." in f for v in vlans) and not f.endswith(".lock")]
    assert not left, f"netnode: files left: {left}"
    nat = sh(lab, "netnode", "iptables -t nat -S POSTROUTING | grep cloud-repositorio || true").strip()
    assert not nat, f"netnode: NAT rule left: {nat}"  # its internet VM was the VLAN's last


def readers(api, sid):
    return {
        "View (list)": lambda: api.list_slices("admin"),
        "deploy": lambda: api.deploy_slice("admin", sid),
        "delete": lambda: api.delete_slice("admin", sid),
        "status": lambda: api.slice_status("admin", sid),
        "option 8": lambda: api.find_orphans("admin"),
        "service start": lambda: api.recover_interrupted(),
    }


CASES = [  # (where the deploy is killed, who reads the slice next)
    ("connect", "deploy"),
    ("network", "View (list)"),
    ("first", "option 8"),
    ("in_flight", "status"),
    ("in_flight", "delete"),
    ("network", "service start"),
]


@pytest.mark.parametrize("at,reader", CASES)
def test_the_next_reader_rolls_back_a_killed_deploy(lab, api, at, reader):
    sid, vms, links = slice3(api, f"k{CASES.index((at, reader))}")
    s = api.db.get_slice(sid)
    n = {"connect": len(hosts_of(s, api.config)), "network": len(links) + 1, "first": 0, "in_flight": 0.2}[at]
    api.executor.close()
    assert kill_manager_at(api.db.path, "deploy", at, "admin", sid, n) == -signal.SIGKILL
    assert api.db.get_slice(sid)["status"] == "deploying"  # the dead session's mark, as the file says
    if at == "network":
        netns = sh(lab, "netnode", "ip netns list")
        assert all(f"ns-dhcp-vlan{link['vlan_id']}" in netns for link in links), netns  # it made them
    readers(api, sid)[reader]()
    if reader == "delete":
        assert api.db.get_slice(sid) is None
        assert_clean(lab)
        return
    if reader == "deploy":  # the reader was a new deploy: it runs, once, on clean hosts
        s = api.db.get_slice(sid)
        assert s["status"] == "running"
        for vm in vms:
            assert qemu_of(lab, vm).count(f"cr-vm{vm['vm_id']},") == 1
        ok, msg = api.delete_slice("admin", sid)
        assert ok, msg
        assert_clean(lab)
        return
    s = api.db.get_slice(sid)
    assert s["status"] == "design" and "busy" not in s, s
    assert all(vm["status"] == "design" and vm["pid"] is None for vm in s["vms"])
    time.sleep(1)  # a start still on its way when the manager died would show by now
    assert_nothing_of(lab, vms, links)
    ok, msg = api.deploy_slice("admin", sid)
    assert ok, msg
    if at == "first":  # the redeployed slice works: every NIC leases
        wanted = {(link["vlan_id"], vm["interfaces"][int(iface[3:])]["mac"].lower())
                  for link in links for vm, iface in (
                      (next(v for v in vms if v["vm_id"] == link["vm1_id"]), link["vm1_interface"]),
                      (next(v for v in vms if v["vm_id"] == link["vm2_id"]), link["vm2_interface"]))}
        wanted.add((400, vms[0]["interfaces"][0]["mac"].lower()))
        wait_for_leases(lab, wanted)
    ok, msg = api.delete_slice("admin", sid)
    assert ok, msg
    assert_clean(lab)


def test_a_killed_start_ends_stopped_and_a_killed_stop_is_finished(lab, api):
    sid, vms, links = slice3(api, "ks")
    ok, msg = api.deploy_slice("admin", sid)
    assert ok, msg
    ok, msg = api.stop_vm("admin", sid)
    assert ok, msg
    api.executor.close()
    assert kill_manager_at(api.db.path, "start", "in_flight", "admin", sid, 0.2) == -signal.SIGKILL
    assert api.db.get_slice(sid)["status"] == "starting"
    ok, s = api.get_slice("admin", sid)
    assert ok and s["status"] == "stopped" and all(vm["status"] == "stopped" for vm in s["vms"]), s
    time.sleep(1)
    for vm in vms:
        assert not qemu_of(lab, vm), f"VM {vm['vm_id']} runs after its start was undone"
        host = host_of(lab, vm["worker_ip"])
        assert f"tap{vm['vm_id']}_" not in sh(lab, host, "ip -o link show")
    assert all(f"ns-dhcp-vlan{link['vlan_id']}" in sh(lab, "netnode", "ip netns list") for link in links)
    ok, msg = api.start_vm("admin", sid)  # and it starts again
    assert ok, msg
    assert all(qemu_of(lab, vm) for vm in vms)
    api.executor.close()
    assert kill_manager_at(api.db.path, "stop", "first", "admin", sid) == -signal.SIGKILL
    assert api.db.get_slice(sid)["status"] == "stopping"
    ok, report = api.slice_status("admin", sid)  # status reads it: the stop is finished first
    assert ok, report
    s = api.db.get_slice(sid)
    assert s["status"] == "stopped" and all(vm["status"] == "stopped" for vm in s["vms"]), s
    assert all(not qemu_of(lab, vm) for vm in vms)
    ok, msg = api.delete_slice("admin", sid)
    assert ok, msg
    assert_clean(lab)
