"""Disk snapshots and slice leases in the lab (SPEC §17), checked from outside and from inside the VMs.

* a file written in a VM (through its serial console) after a snapshot is gone after the restore, the
  VM running again, and a file written before it is still there; the save only paused the VM;
* the snapshot builders on a real worker: made, found by the product's scan, removed twice, nothing left;
* deleting the slice removes its snapshots (nothing left on the worker);
* an expired slice is stopped, then deleted by ``reap_leases`` after the grace period, nothing left.
"""
from __future__ import annotations

import time

from labtools import assert_clean, console, host_of, sh, wait_serial
from test_builders_functional import VM_ID, found_keys, run, svc  # noqa: F401 - svc is a fixture

import naming
from hosts import snapshots
from qcow_manager import overlay_create
from usecases import leases

IMAGES = "/home/ubuntu/vm_images"
MOUNT = "mkdir -p /mnt/d && mount -t vfat /dev/vda1 /mnt/d"


def deployed(api, name: str, owner: str = "admin"):
    ok, s = api.create_slice(owner, name)
    assert ok, s
    vms = [api.add_vm_to_slice(owner, s["slice_id"], f"{name}{i}", "cirros", 1)[1] for i in range(2)]
    ok, link = api.create_link(owner, s["slice_id"], vms[0]["vm_id"], "eth1", vms[1]["vm_id"], "eth1")
    assert ok, link
    ok, msg = api.deploy_slice(owner, s["slice_id"])
    assert ok, msg
    return s["slice_id"], vms



def pid_of(lab, vm) -> str:
    return sh(lab, host_of(lab, vm["worker_ip"]), f"cat {naming.vm_pidfile(vm['vm_id'])} 2>/dev/null").strip()


def snapshot_files(lab, vm) -> list:
    return sorted(f for f in sh(lab, host_of(lab, vm["worker_ip"]), f"ls {IMAGES}").split()
                  if f.startswith(f"vm{vm['vm_id']}."))


def in_vm(lab, vm, command: str) -> str:
    rc, out = console(lab, vm, command)
    assert rc == 0, out
    return out


def test_a_file_written_after_a_snapshot_is_gone_after_restore_and_the_vm_runs_again(lab, api):
    sid, vms = deployed(api, "snap")
    vm = vms[0]
    mark = wait_serial(lab, vm, "LAB-READY")
    assert "written" in in_vm(lab, vm, f"{MOUNT} && echo before-1 > /mnt/d/BEFORE.TXT && sync && umount /mnt/d "
                                       "&& echo written")
    pid = pid_of(lab, vm)
    ok, msg = api.save_snapshot("admin", sid, vm["vm_id"], "base")
    assert ok and "paused for the copy" in msg, msg
    assert pid_of(lab, vm) == pid  # paused and resumed: the same QEMU, the guest did not reboot
    assert "alive-after-save" in in_vm(lab, vm, "echo alive-after-save")
    stored = api.db.get_slice(sid)["vms"][0]["snapshots"]
    assert [s["name"] for s in stored] == ["base"]
    host = host_of(lab, vm["worker_ip"])
    path = f"{IMAGES}/vm{vm['vm_id']}.base.snap.qcow2"
    assert snapshot_files(lab, vm) == [f"vm{vm['vm_id']}.base.snap.qcow2", f"vm{vm['vm_id']}.base.snap.qcow2.owner"]
    assert int(sh(lab, host, f"stat -c %s {path}")) == stored[0]["size_bytes"] > 0
    backing = api.config.flavor_image("cirros", {}).rsplit("/", 1)[1]  # a copy of the overlay over the base
    assert f"backing file: {backing}" in sh(lab, host, f"qemu-img info -U {path}")
    base_sum = sh(lab, host, f"sha256sum {IMAGES}/{backing}")
    ok, listing = api.list_snapshots("admin", sid)
    assert ok and listing.vms[0].snapshots[0].name == "base" and listing.used_bytes == stored[0]["size_bytes"]

    assert "written" in in_vm(lab, vm, f"{MOUNT} && echo after-2 > /mnt/d/AFTER.TXT && sync && umount /mnt/d "
                                       "&& echo written")
    ok, msg = api.restore_snapshot("admin", sid, vm["vm_id"], "base")
    assert ok and "running again" in msg, msg
    new_pid = pid_of(lab, vm)
    assert new_pid and new_pid != pid
    assert api.db.get_slice(sid)["vms"][0]["status"] == "running" and api.db.get_slice(sid)["status"] == "running"
    wait_serial(lab, vm, "LAB-READY", after=mark)  # it booted again, from the restored disk
    out = in_vm(lab, vm, f"{MOUNT} -o ro && ls /mnt/d; cat /mnt/d/BEFORE.TXT; umount /mnt/d")
    assert "before-1" in out and "AFTER.TXT" not in out, out
    assert pid_of(lab, vms[1])  # the other VM of the slice was not touched
    assert sh(lab, host, f"sha256sum {IMAGES}/{backing}") == base_sum  # the base image untouched

    ok, msg = api.delete_slice("admin", sid)
    assert ok, msg
    assert snapshot_files(lab, vm) == []  # the snapshots went with their VM
    assert_clean(lab)


def test_a_stopped_vm_is_snapshotted_as_it_is_and_stays_stopped_after_a_restore(lab, api):
    sid, vms = deployed(api, "cold")
    vm = vms[1]
    wait_serial(lab, vm, "LAB-READY")
    ok, msg = api.stop_vm("admin", sid, vm["vm_id"])
    assert ok, msg
    ok, msg = api.save_snapshot("admin", sid, vm["vm_id"], "cold1")
    assert ok and "paused" not in msg, msg
    ok, msg = api.restore_snapshot("admin", sid, vm["vm_id"], "cold1")
    assert ok and "stays stopped" in msg, msg
    assert pid_of(lab, vm) == "" and api.db.get_slice(sid)["vms"][1]["status"] == "stopped"
    ok, msg = api.delete_snapshot("admin", sid, vm["vm_id"], "cold1")
    assert ok, msg
    assert snapshot_files(lab, vm) == []
    assert api.db.get_slice(sid)["vms"][1]["snapshots"] == []
    ok, msg = api.delete_slice("admin", sid)
    assert ok, msg
    assert_clean(lab)


def test_snapshot_builders_made_found_removed_twice_nothing_left(lab, svc):  # noqa: F811 - the fixture
    worker = svc.config.workers[0]
    wname = host_of(lab, worker)
    home = svc.homes[worker]
    image = "snapfunc_img.qcow2"
    base = svc.config.flavor_image("cirros", {})
    assert svc.deployment.qcow_manager.ensure_base_image(worker, base)
    run(svc, overlay_create(worker, svc.config.worker_image_dir, base.rsplit("/", 1)[-1], image))
    vm = {"vm_id": VM_ID, "name": "snapfunc", "worker_ip": worker, "qcow_image": f"~/vm_images/{image}"}
    try:
        res = run(svc, snapshots.save_command(vm, home, "one", 10**9))
        size = int(res.stdout.split()[-1])
        path = f"{IMAGES}/vm{VM_ID}.one.snap.qcow2"
        assert sh(lab, wname, f"stat -c '%s %U %a' {path} {path}.owner").split()[:6] == \
            [str(size), "ubuntu", "600", sh(lab, wname, f"stat -c %s {path}.owner").strip(), "ubuntu", "600"]
        assert sh(lab, wname, f"cat {path}.owner").strip() == f"cloud-repositorio vm {VM_ID} snapshot one"
        assert found_keys(svc, worker).get(_key(worker, "one")) == str(size)
        # refused without changing anything: the name taken, then a quota that cannot hold it
        again = svc.executor.run(snapshots.save_command(vm, home, "one", 10**9))
        assert again.exit_status == snapshots.SNAPSHOT_EXISTS
        full = svc.executor.run(snapshots.save_command(vm, home, "two", 10))
        assert full.exit_status == snapshots.NO_ROOM and full.stdout.split() == ["need", str(size)]
        assert sh(lab, wname, f"ls {IMAGES} | grep -c 'vm{VM_ID}[.]' || true").strip() == "2"
        sh(lab, wname, f"echo scribble >> {IMAGES}/{image}")
        run(svc, snapshots.restore_command(vm, home, "one"))
        assert sh(lab, wname, f"cmp {path} {IMAGES}/{image} && echo same").strip() == "same"
        for _ in range(2):
            run(svc, snapshots.delete_command(vm, home, "one"))
        assert sh(lab, wname, f"ls {IMAGES} | grep 'vm{VM_ID}[.]' || true").strip() == ""
        assert _key(worker, "one") not in found_keys(svc, worker)
        run(svc, snapshots.save_command(vm, home, "three", 10**9))
        for _ in range(2):
            run(svc, snapshots.purge_command(worker, "~/vm_images", [VM_ID]))
        assert sh(lab, wname, f"ls {IMAGES} | grep 'vm{VM_ID}[.]' || true").strip() == ""
        assert not [k for k in found_keys(svc, worker) if k.kind == "snapshot"]
    finally:
        sh(lab, wname, f"rm -f {IMAGES}/{image} {IMAGES}/{image}.owner {IMAGES}/vm{VM_ID}.*")


def _key(worker: str, name: str):
    from hosts.resources import Key

    return Key("snapshot", worker, vm_id=VM_ID, name=name)


def test_an_expired_slice_is_stopped_then_deleted_by_reap_leases_with_nothing_left(lab, api):
    ok, msg = api.set_max_lease("admin", "student", 3)
    assert ok, msg
    sid, vms = deployed(api, "lease", owner="student")
    s = api.db.get_slice(sid)
    end = leases.parse_stamp(s["lease_end"])
    assert abs(end - (time.time() + 3 * leases.DAY)) < 120  # a new slice gets the owner's maximum
    ok, msg = api.set_lease("student", sid, 4)
    assert not ok and "beyond your maximum" in msg
    wait_serial(lab, vms[0], "LAB-READY")
    ok, report = api.reap_leases()
    assert ok and report == []  # nothing has ended
    with api.db.transaction() as data:  # the clock moves on: the lease ended an hour ago
        data["slices"][str(sid)]["lease_end"] = leases.stamp(time.time() - 3600)
    ok, report = api.reap_leases()
    assert ok and [(o.slice_id, o.action) for o in report] == [(sid, "stopped")], report
    s = api.db.get_slice(sid)
    assert s["status"] == "stopped" and all(vm["status"] == "stopped" for vm in s["vms"])
    assert all(pid_of(lab, vm) == "" for vm in vms)
    for vm in vms:  # no QEMU left, the disks kept through the grace period
        host = host_of(lab, vm["worker_ip"])
        assert f"cr-vm{vm['vm_id']}," not in sh(lab, host, "pgrep -af '^qemu-system' || true")
        assert vm["qcow_image"].rsplit("/", 1)[1] in sh(lab, host, f"ls {IMAGES}")
    ok, msg = api.start_vm("student", sid)
    assert not ok and "lease" in msg and "ended" in msg
    ok, msg = api.set_lease("student", sid, 1)
    assert not ok and "ask an admin" in msg
    ok, warnings = api.lease_warnings("student")
    assert ok and [w.slice_id for w in warnings] == [sid] and warnings[0].ended
    ok, report = api.reap_leases()
    assert ok and report == []  # stopped already; the grace period has not ended
    grace = float(api.config.setting("leases.grace_hours")) * 3600
    ok, report = api.reap_leases(now=time.time() + grace)
    assert ok and [(o.slice_id, o.action) for o in report] == [(sid, "deleted")], report
    assert api.db.get_slice(sid) is None and sid not in api.db.get_user("student")["slices"]
    assert api.db.get_user("student")["used_vms"] == 0
    assert_clean(lab)
