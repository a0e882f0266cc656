"""The documented menu flows against the real local lab, typed in a real terminal.

A person logs in as admin, builds a slice of two VMs joined by a link, reads
the topology, deploys it (real SSH, OVS, QEMU, dnsmasq in the lab), reads it
running, and deletes it.  Each test has its own copy of the shipped database
and deletes whatever it deployed, even when an assertion fails.
"""
from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest
import yaml
from conftest import ADD_VM_TIMEOUT, DEPLOY_TIMEOUT  # noqa: F401
from labtools import forget_slice_by_hand, host_footprint, host_of, kill_manager_mid_deploy, make_api, sh
from menu_driver import CHOICE


def qemu_of(lab, vm: dict) -> str:
    """The QEMU process line of ``vm`` on its worker ('' when none)."""
    lines = sh(lab, host_of(lab, vm["worker_ip"]), "pgrep -af qemu-system || true").splitlines()
    return "\n".join(line for line in lines if f"-name cr-vm{vm['vm_id']}," in line)


def data(db: Path) -> dict:
    return yaml.safe_load(db.read_text())


def test_documented_flow_design_deploy_view_delete(lab, site):
    db = site["db"]
    m = site["spawn"]()
    screen = m.login("admin", "admin")
    assert "Welcome, admin!" in screen

    m.send("2", "Slice name: ")
    screen = m.send("lab1")
    assert "Slice created! ID: 1000" in screen

    screen = m.add_vm(1000, "vm1")
    assert re.search(r"^\S* ?VM added! ID: 1001, VNC: 5901, Flavor: cirros$", screen, re.M), screen
    screen = m.add_vm(1000, "vm2")
    assert re.search(r"^\S* ?VM added! ID: 1002, VNC: 5902, Flavor: cirros$", screen, re.M), screen
    assert "Quota: 2/10 VMs used" in m.send("1")

    listing, screen = m.link(1000, "vm1", "eth1", "vm2", "eth1")
    assert ("\nAvailable VMs and interfaces:\n  VM 1001: vm1\n    - eth1 (unconnected)\n"
            "  VM 1002: vm2\n    - eth1 (unconnected)\n") in listing
    assert "VM IDs must be numbers (e.g., 1025, not 'vm1')" in screen
    assert data(db)["slices"]["1000"]["links"] == []

    _, screen = m.link(1000, "1001", "eth1", "1002", "eth1")
    assert re.search(r"^\S* ?Link created! VLAN: 100$", screen, re.M), screen

    vms = {vm["vm_id"]: vm for vm in data(db)["slices"]["1000"]["vms"]}
    assert set(vms) == {1001, 1002}
    for vm in vms.values():
        assert vm["worker_ip"] in lab["workers"]
    w1, w2 = vms[1001]["worker_ip"], vms[1002]["worker_ip"]

    screen = m.send("5")
    assert "Slice 1000 (lab1) [design]: 2 VMs, 1 Links, VLAN pool: 100-119" in screen
    assert f"  \u2514\u2500 VM 1001: vm1 (VNC: 5901, Worker: {w1}, Disk: 1GB)\n" in screen
    assert f"  \u2514\u2500 VM 1002: vm2 (VNC: 5902, Worker: {w2}, Disk: 1GB)\n" in screen
    assert "      eth0: MAC 52:54:00:03:e9:00\n" in screen
    assert "      eth1: MAC 52:54:00:03:e9:01, VLAN: 100, Link: 1\n" in screen
    assert "      eth1: MAC 52:54:00:03:ea:01, VLAN: 100, Link: 1\n" in screen
    assert "  Link 1: VM1001.eth1 <-> VM1002.eth1 (VLAN 100)\n" in screen

    try:
        m.send("6", "Slice ID to deploy: ")
        screen = m.send("1000", timeout=DEPLOY_TIMEOUT)
        assert "Slice deployed successfully" in screen, screen
        progress = screen.split("Slice deployed successfully")[0]
        for host in {w1, w2, lab["network_node"]}:
            assert re.search(rf"\[ *\d+\.\d\ds\] \S+ +\w+ +{re.escape(host)} ", progress), \
                f"no progress line names {host}:\n{progress}"
        assert f"VM 1001 vm1: VNC {w1}:5901 (display :1)" in screen
        assert f"VM 1002 vm2: VNC {w2}:5902 (display :2)" in screen
        stored = data(db)["slices"]["1000"]
        assert stored["status"] == "running"
        for vm in stored["vms"]:
            assert qemu_of(lab, vm), f"VM {vm['vm_id']} is not running on {vm['worker_ip']}"

        screen = m.send("5")
        assert "Slice 1000 (lab1) [running]: 2 VMs, 1 Links, VLAN pool: 100-119" in screen

        # Ctrl-C at the main menu (the original deleted the current slice): nothing happens
        before = db.read_bytes()
        screen = m.intr()
        assert "nothing was changed" in screen
        assert m.p.isalive()
        assert db.read_bytes() == before
        assert qemu_of(lab, vms[1001]) and qemu_of(lab, vms[1002])

        # a running slice cannot be changed: adding a VM or a link is refused, nothing is written
        before = db.read_bytes()
        m.send("3", "Slice ID: ")
        screen = m.send("1000")                         # refused at once, before any other question
        assert "running slice cannot be changed" in screen and "VM name" not in screen, screen
        m.send("4", "Slice ID: ")
        screen = m.send("1000")
        assert "running slice cannot be changed" in screen and "First VM ID" not in screen, screen
        assert db.read_bytes() == before
        assert "Quota: 2/10 VMs used" in m.send("1")

        # deploying again is refused
        m.send("6", "Slice ID to deploy: ")
        screen = m.send("1000", timeout=DEPLOY_TIMEOUT)
        assert "Slice already running" in screen
        assert db.read_bytes() == before
        assert qemu_of(lab, vms[1001]), "a refused second deploy must leave the running VMs alone"
    except BaseException:
        # the fixture deletes the slice through the API; the menu must not hold it meanwhile
        m.p.terminate(force=True)
        raise

    # delete through the menu, answering the confirmation
    m.send("7", "Slice ID: ")
    screen = m.send("1000", "? (y/n): ")
    assert "Delete slice 1000 (lab1, running, 2 VMs)" in screen
    screen = m.send("y", timeout=DEPLOY_TIMEOUT)
    assert re.search(r"^\S* ?Slice deleted$", screen, re.M), screen

    for vm in vms.values():
        assert not qemu_of(lab, vm), f"VM {vm['vm_id']} still runs after delete"
    after = data(db)
    assert after["slices"] == {}
    assert after["users"]["admin"]["used_vms"] == 0
    assert "No Slices found." in m.send("5")
    assert "Quota: 0/10 VMs used" in m.send("1")

    # deploying a deleted slice: a clear error, nothing created
    m.send("6", "Slice ID to deploy: ")
    screen = m.send("1000", timeout=DEPLOY_TIMEOUT)
    assert "Slice not found or not authorized" in screen
    assert "Slice deployed" not in screen
    assert data(db)["slices"] == {}
    m.exit()


def test_student_builds_and_deletes_a_design_slice(lab, site):
    """Overlays are made on the workers at add time and removed by delete, without a deploy."""
    m = site["spawn"]()
    assert "Welcome, student!" in m.login("student", "student")
    m.send("2", "Slice name: ")
    assert "Slice created! ID: 1000" in m.send("studio")
    screen = m.add_vm(1000, "solo", interfaces="0")
    assert "VM added! ID: 1001, VNC: 5901, Flavor: cirros" in screen
    vm = data(site["db"])["slices"]["1000"]["vms"][0]
    host = host_of(lab, vm["worker_ip"])
    overlay = os.path.basename(vm["qcow_image"])
    assert overlay in sh(lab, host, "ls /home/ubuntu/vm_images")
    assert "Quota: 1/6 VMs used" in m.send("1")
    m.send("7", "Slice ID: ")
    m.send("1000", "? (y/n): ")
    screen = m.send("y", timeout=DEPLOY_TIMEOUT)
    assert "Slice deleted" in screen
    assert overlay not in sh(lab, host, "ls /home/ubuntu/vm_images")
    assert "Quota: 0/6 VMs used" in m.send("1")
    m.exit()


def _lab_is_clean(lab) -> bool:
    fp = host_footprint(lab)
    workers_busy = any(fp[h]["qemu"] or fp[h]["taps"] or fp[h]["ports"] or fp[h]["overlays"]
                       for h in ("worker1", "worker2", "worker3"))
    n = fp["netnode"]
    return not (workers_busy or n["ports"] or n["links"] or n["dnsmasq"]
                or [x for x in n["netns"] if x.startswith("ns-dhcp")])


def test_cleanup_as_admin_on_a_clean_lab_finds_nothing(lab, site):
    if not _lab_is_clean(lab):
        pytest.skip("the lab holds another run's slices (concurrent lab tests): 'nothing to clean' cannot hold")
    m = site["spawn"]()
    m.login("admin", "admin")
    before = site["db"].read_bytes()
    m.p.sendline("8")
    found = m.p.expect_exact([CHOICE, "Are you sure? (yes/no): "], timeout=DEPLOY_TIMEOUT)
    screen = m.p.before.replace("\r\n", "\n")
    if found == 1:  # something appeared meanwhile: never remove it, just say no
        m.send("no")
    assert "Nothing to clean" in screen, screen
    assert "Cleanup completed" not in screen
    assert site["db"].read_bytes() == before
    m.exit()


def test_cleanup_menu_lists_orphans_of_a_killed_manager_and_removes_them(lab, site):
    if not _lab_is_clean(lab):
        pytest.skip("the lab holds another run's slices (concurrent lab tests)")
    api = make_api(lab, site["db"])
    ok, s = api.create_slice("student", "crash")
    assert ok, s
    vms = [api.add_vm_to_slice("student", s["slice_id"], f"c{i}", "cirros", 1)[1] for i in range(2)]
    ok, link = api.create_link("student", s["slice_id"], vms[0]["vm_id"], "eth1", vms[1]["vm_id"], "eth1")
    assert ok, link
    api.executor.close()
    assert kill_manager_mid_deploy(site["db"], "student", s["slice_id"]) == -signal.SIGKILL
    # an instructor removes the slice from database.yaml before anyone read it (a reader would
    # have rolled its dead deploy back): what it left on the hosts is no slice's
    forget_slice_by_hand(api.db, s["slice_id"])
    m = site["spawn"]()
    m.login("student", "student")
    assert "Only an admin can clean up orphaned VMs." in m.send("8")
    m.send("9", "Username: ")
    m.send("admin", "Password: ")
    m.send("admin")
    m.send("8", "Are you sure? (yes/no): ", timeout=DEPLOY_TIMEOUT)
    screen = m.p.before.replace("\r\n", "\n")
    assert "created by Cloud Repositorio that no slice owns" in screen, screen
    assert f"DHCP namespace of VLAN {link['vlan_id']}" in screen
    assert f"QEMU of VM {vms[0]['vm_id']}" in screen or f"QEMU of VM {vms[1]['vm_id']}" in screen, screen
    assert "overlay c0_img.qcow2" in screen  # the forgotten slice's disks are orphans too
    screen = m.send("yes", timeout=DEPLOY_TIMEOUT)
    assert "Cleanup completed" in screen, screen
    for vm in vms:
        assert not qemu_of(lab, vm)
    assert f"ns-dhcp-vlan{link['vlan_id']}" not in lab.exec("netnode", "ip netns list").stdout
    screen = m.send("8", timeout=DEPLOY_TIMEOUT)
    assert "Nothing to clean" in screen, screen
    m.exit()
    assert "Traceback" not in m.transcript
