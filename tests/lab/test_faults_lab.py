"""Faults in the real lab: dead services, dead sessions, unreachable hosts (issue 8's defects).

Each test reproduces a defect found by an adversarial run and checks the fix from outside.
"""
from __future__ import annotations

import signal
import subprocess
import sys
import time

from labtools import LAB_DIR, assert_clean, host_of, kill_sshd, restart_sshd, sh

KILL_AT = """
import os, signal, sys
sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[1] + "/tests/lab")
from labtools import make_api
api = make_api(None, sys.argv[2])
def die(*_a, **_k):
    os.kill(os.getpid(), signal.SIGKILL)
target, user, sid = sys.argv[3], sys.argv[4], int(sys.argv[5])
if target == "delete":      # killed after marking the slice, before touching any host
    api.lifecycle._teardown = die
    api.delete_slice(user, sid)
elif target == "add":       # killed after the disk is made, before the VM is committed
    api.design._commit_vm = die
    api.add_vm_to_slice(user, sid, "half", "cirros", 1)
"""


def run_and_die(db_path, target: str, user: str, sid: int) -> int:
    root = str(LAB_DIR.parent)
    proc = subprocess.run([sys.executable, "-c", KILL_AT, root, str(db_path), target, user, str(sid)], timeout=120)
    return proc.returncode


def slice_with(api, name: str, n: int, internet: tuple = (), link: bool = True):
    ok, s = api.create_slice("admin", name)
    assert ok, s
    vms = [api.add_vm_to_slice("admin", s["slice_id"], f"{name}{i}", "cirros", 1, i in internet)[1]
           for i in range(n)]
    if link and n > 1:
        ok, msg = api.create_link("admin", s["slice_id"], vms[0]["vm_id"], "eth1", vms[1]["vm_id"], "eth1")
        assert ok, msg
    return s["slice_id"], vms


def qemu_running(lab, vm) -> bool:
    return f"cr-vm{vm['vm_id']}," in sh(lab, host_of(lab, vm["worker_ip"]), "pgrep -af '^qemu-system' || true")


def test_option_8_never_destroys_a_slice_whose_delete_session_died(lab, api):
    sid, vms = slice_with(api, "live", 2)
    ok, msg = api.deploy_slice("admin", sid)
    assert ok, msg
    api.executor.close()
    assert run_and_die(api.db.path, "delete", "admin", sid) == -signal.SIGKILL
    assert api.db.get_slice(sid)["status"] == "deleting"  # the dead session's mark, as the file says
    ok, orphans = api.find_orphans("admin")
    assert ok, orphans
    assert orphans == [], orphans
    assert all(qemu_running(lab, vm) for vm in vms)
    # the real status is shown and written back
    ok, s = api.get_slice("admin", sid)
    assert ok and s["status"] == "running" and "busy" not in s
    assert "status: running" in open(api.db.path).read()


def test_a_vm_half_added_by_a_dead_session_is_rolled_back(lab, api):
    sid, _vms = slice_with(api, "half", 1, link=False)
    api.executor.close()
    assert run_and_die(api.db.path, "add", "admin", sid) == -signal.SIGKILL
    s = api.db.get_slice(sid)
    half = next(vm for vm in s["vms"] if vm["name"] == "half")
    assert half["status"] == "pending" and api.db.get_user("admin")["used_vms"] == 2
    host = host_of(lab, half["worker_ip"])
    assert "half_img.qcow2" in sh(lab, host, "ls /home/ubuntu/vm_images")
    ok, orphans = api.find_orphans("admin")
    assert ok and [o.name for o in orphans if o.key.kind == "pending"], orphans  # option 8 lists it
    ok, s = api.get_slice("admin", sid)  # anyone touching the slice rolls it back
    assert ok and [vm["name"] for vm in s["vms"]] == ["half0"]
    assert api.db.get_user("admin")["used_vms"] == 1
    assert "half_img.qcow2" not in sh(lab, host, "ls /home/ubuntu/vm_images")
    ok, msg = api.deploy_slice("admin", sid)  # and the slice can be deployed again
    assert ok, msg


def test_rollback_visits_every_reachable_worker_when_one_dies_mid_deploy(lab, api):
    sid, vms = slice_with(api, "spread", 3)
    assert len({vm["worker_ip"] for vm in vms}) == 3
    dead = host_of(lab, vms[2]["worker_ip"])

    def kill_sshd_after_network(event):
        if event["phase"] == "network" and event["ok"] and not killed:
            killed.append(dead)
            kill_sshd(lab, dead)  # listener and every session

    killed: list = []
    try:
        ok, msg = api.deploy_slice("admin", sid, progress=kill_sshd_after_network)
        assert killed and not ok, msg
        for vm in vms[:2]:
            assert not qemu_running(lab, vm), f"VM {vm['vm_id']} left running on a reachable worker"
        assert api.db.get_slice(sid)["status"] == "design"
    finally:
        restart_sshd(lab, dead)
    api.executor.close()
    ok, msg = api.delete_slice("admin", sid)  # clears whatever the dead worker kept
    assert ok, msg
    assert_clean(lab)


def test_open_vswitch_down_on_the_network_node_fails_fast_and_leaks_nothing(lab, api):
    sid, _vms = slice_with(api, "ovs", 2, internet=(0,))
    sh(lab, "netnode", "ovs-appctl -t ovs-vswitchd exit")
    try:
        t0 = time.monotonic()
        ok, msg = api.deploy_slice("admin", sid)
        took = time.monotonic() - t0
        assert not ok
        assert "Open vSwitch is not running on 10.250.0.10" in msg, msg
        assert "124" not in msg
        print(f"deploy with ovs-vswitchd down failed in {took:.1f} s")
        assert "cloud-repositorio" not in sh(lab, "netnode", "iptables -t nat -S POSTROUTING")
        assert api.db.get_slice(sid)["status"] == "design"
    finally:
        sh(lab, "netnode", "ovs-vswitchd --pidfile --detach --log-file && ovs-vsctl --timeout=20 show >/dev/null")
    ok, orphans = api.find_orphans("admin")
    assert ok and orphans == [], orphans
    ok, msg = api.deploy_slice("admin", sid)
    assert ok, msg


def test_option_8_finds_rules_left_behind(lab, api):
    sh(lab, "netnode", "mkdir -p /run/cloud-repositorio && "
                       "iptables -w -t nat -A POSTROUTING -s 10.60.7.0/24 -o uplink0 "
                       "-m comment --comment cloud-repositorio -j MASQUERADE && "
                       "iptables -w -N CR-FORWARD && iptables -w -I FORWARD 1 -j CR-FORWARD && "
                       "iptables -w -N CR-INPUT && iptables -w -I INPUT 1 -j CR-INPUT")
    ok, orphans = api.find_orphans("admin")
    assert ok, orphans
    assert {o.key.kind for o in orphans} == {"nat", "isolation"}, orphans
    ok, msg = api.cleanup_orphans("admin", orphans)
    assert ok, msg
    assert "MASQUERADE" not in sh(lab, "netnode", "iptables -t nat -S POSTROUTING")
    assert "CR-" not in sh(lab, "netnode", "iptables -S")
