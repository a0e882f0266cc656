"""Operating a running cloud in the lab, checked from outside (SPEC §14): status, repair, stop/start,
reboot, the cluster view, capacity."""
from __future__ import annotations

import time

import yaml
from labtools import (
    LAB_DIR,
    assert_clean,
    console,
    host_of,
    kill_sshd,
    leases,
    restart_sshd,
    serial_log,
    sh,
    wait_serial,
)

import naming
from database import Database
from deployment_api import DeploymentAPI
from orchestrator_api import OrchestratorAPI
from remote_executor import RemoteExecutor
from store.config import ClusterConfig


def linked_slice(api, name: str, internet: bool = False):
    ok, s = api.create_slice("admin", name)
    assert ok, s
    vms = [api.add_vm_to_slice("admin", s["slice_id"], f"{name}{i}", "cirros", 1, internet and i == 0)[1]
           for i in range(2)]
    ok, link = api.create_link("admin", s["slice_id"], vms[0]["vm_id"], "eth1", vms[1]["vm_id"], "eth1")
    assert ok, link
    ok, msg = api.deploy_slice("admin", s["slice_id"])
    assert ok, msg
    return s["slice_id"], vms, link["vlan_id"]


def pid_of(lab, vm) -> str:
    return sh(lab, host_of(lab, vm["worker_ip"]), f"cat {naming.vm_pidfile(vm['vm_id'])} 2>/dev/null").strip()



def test_a_killed_vm_and_a_dead_dnsmasq_are_shown_and_repaired_without_touching_another_slice(lab, api):
    sid, vms, vlan = linked_slice(api, "rep")
    keep_sid, keep_vms, keep_vlan = linked_slice(api, "keep")
    keep_pids = [pid_of(lab, vm) for vm in keep_vms]
    keep_dnsmasq = sh(lab, "netnode", f"cat {naming.dnsmasq_files(keep_vlan)['pid']}").strip()
    victim = vms[1]
    old_pid = pid_of(lab, victim)
    before = len(serial_log(lab, victim))
    sh(lab, host_of(lab, victim["worker_ip"]), f"kill -9 {old_pid}")
    sh(lab, "netnode", f"kill -9 $(cat {naming.dnsmasq_files(vlan)['pid']})")
    ok, report = api.slice_status("admin", sid)
    assert ok, report
    missing = {(c.key.kind, c.key.vm_id, c.key.vlan) for c in report.problems}
    assert ("qemu", victim["vm_id"], None) in missing and ("dnsmasq", None, vlan) in missing, missing
    assert report.vm_state(next(v for v in report.slice["vms"] if v["vm_id"] == victim["vm_id"])) == "crashed"
    ok, outcome = api.repair_slice("admin", sid)
    assert ok, outcome
    assert {s.step for s in outcome.steps} == {f"gateway and DHCP for VLAN {vlan}",
                                               f"start VM {victim['vm_id']} ({victim['name']})"}
    new_pid = pid_of(lab, victim)
    assert new_pid and new_pid != old_pid
    wait_serial(lab, victim, "LAB-READY", after=before)  # it booted again, from its disk
    deadline = time.monotonic() + 120
    while victim["interfaces"][1]["mac"].lower() not in leases(lab, vlan) and time.monotonic() < deadline:
        time.sleep(1)
    assert victim["interfaces"][1]["mac"].lower() in leases(lab, vlan)  # a new lease from the new dnsmasq
    ok, report = api.slice_status("admin", sid)
    assert ok and report.problems == [], [(c.label, c.problem) for c in report.problems]
    assert [pid_of(lab, vm) for vm in keep_vms] == keep_pids  # the other slice was not touched
    assert sh(lab, "netnode", f"cat {naming.dnsmasq_files(keep_vlan)['pid']}").strip() == keep_dnsmasq
    for s in (sid, keep_sid):
        ok, msg = api.delete_slice("admin", s)
        assert ok, msg
    assert_clean(lab)


def test_stop_and_start_keep_the_disk_and_reboot_keeps_the_process(lab, api):
    sid, vms, _vlan = linked_slice(api, "life")
    vm = vms[0]
    mark = wait_serial(lab, vm, "LAB-READY")
    # write a file on the VM's disk (its FAT boot partition) through the console
    rc, out = console(lab, vm, "mkdir -p /mnt/d && mount -t vfat /dev/vda1 /mnt/d && echo kept-42 > /mnt/d/NOTE.TXT "
                               "&& sync && umount /mnt/d && echo written")
    assert rc == 0 and "written" in out, out
    host = host_of(lab, vm["worker_ip"])
    ok, msg = api.stop_vm("admin", sid, vm["vm_id"])
    assert ok, msg
    assert pid_of(lab, vm) == "" and f"cr-vm{vm['vm_id']}," not in sh(lab, host, "pgrep -af '^qemu-system' || true")
    assert api.db.get_slice(sid)["vms"][0]["status"] == "stopped"
    assert api.db.get_user("admin")["used_vms"] == 2  # the quota still counts it
    ok, msg = api.start_vm("admin", sid, vm["vm_id"])
    assert ok, msg
    mark = wait_serial(lab, vm, "LAB-READY", after=mark)
    rc, out = console(lab, vm, "mkdir -p /mnt/d && mount -t vfat -o ro /dev/vda1 /mnt/d && cat /mnt/d/NOTE.TXT; "
                               "umount /mnt/d")
    assert rc == 0 and "kept-42" in out, out
    pid = pid_of(lab, vm)
    ok, msg = api.reboot_vm("admin", sid, vm["vm_id"])
    assert ok, msg
    wait_serial(lab, vm, "LAB-READY", after=mark)
    assert pid_of(lab, vm) == pid  # same QEMU, the guest rebooted
    ok, msg = api.stop_vm("admin", sid)  # the whole slice
    assert ok, msg
    assert api.db.get_slice(sid)["status"] == "stopped"
    assert all(pid_of(lab, v) == "" for v in vms)
    ok, msg = api.start_vm("admin", sid)
    assert ok, msg
    assert api.db.get_slice(sid)["status"] == "running" and all(pid_of(lab, v) for v in vms)


def test_an_unreachable_worker_shows_in_the_cluster_view_and_in_status(lab, api):
    sid, vms, _vlan = linked_slice(api, "reach")
    dead = host_of(lab, vms[0]["worker_ip"])
    kill_sshd(lab, dead)
    try:
        api.executor.close()
        ok, view = api.cluster_view("admin")
        assert ok, view
        rows = {r["host"]: r for r in view["rows"]}
        assert rows[vms[0]["worker_ip"]]["reachable"] is False
        assert all(r["reachable"] for h, r in rows.items() if h != vms[0]["worker_ip"])
        up = rows[lab["network_node"]]
        assert up["memory_cap"] > 0 and up["disk_free_mib"] > 0
        ok, report = api.slice_status("admin", sid)
        assert ok and report.reachable[vms[0]["worker_ip"]] is not True
        assert report.vm_state(report.slice["vms"][0]) == "unreachable"
    finally:
        restart_sshd(lab, dead)


def test_with_small_capacity_a_slice_that_cannot_fit_is_refused_and_nothing_is_made(lab, tmp_path):
    config = yaml.safe_load((LAB_DIR / "cluster.yaml").read_text())
    config["capacity"] = {"hosts": {w: {"memory_mib": 512 + 1024} for w in config["workers"]}}
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(config))
    cfg = ClusterConfig.load(str(path))
    api = OrchestratorAPI(Database(str(tmp_path / "db.yaml")), DeploymentAPI(RemoteExecutor(cfg)), cfg)
    try:
        ok, s = api.create_slice("admin", "big")
        assert ok, s
        made = [api.add_vm_to_slice("admin", s["slice_id"], f"b{i}", "cirros", 0) for i in range(7)]
        assert [m[0] for m in made] == [True] * 6 + [False]
        assert made[6][1].startswith("No worker has room for this VM: not enough memory: needs 512 MiB, 0 MiB free")
        overlays = sum(sh(lab, h, "ls /home/ubuntu/vm_images").count("b6_img") for h in ("worker1", "worker2",
                                                                                          "worker3"))
        assert overlays == 0
        ok, msg = api.delete_slice("admin", s["slice_id"])
        assert ok, msg
    finally:
        api.executor.close()
    assert_clean(lab)

