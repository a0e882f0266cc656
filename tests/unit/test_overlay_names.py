"""Overlay names and what may remove a disk (issue 17 item 9), and who may read one (item 14).

The removal scripts are run for real (sh, in a temporary home directory), so what they remove and
keep is what a worker's shell would do.
"""
from __future__ import annotations

import itertools
import os
import shutil
import stat
import subprocess

import pytest
from uhelpers import WORKERS, lab_config, make_api, ok

import naming
from deployment_api import DeploymentAPI
from hosts.resources import HostContext, Key
from qcow_manager import Overlay, overlay_create

ONE_WORKER = lab_config(workers=[WORKERS[0]])


def mark(vm_id) -> str:
    """What the marker beside VM ``vm_id``'s disk holds (naming.overlay_marker_text)."""
    return f"cloud-repositorio vm {vm_id}"


def run_sh(tmp_path, script: str) -> None:
    home = tmp_path / "home"
    subprocess.run(["sh", "-c", script], check=True, cwd=tmp_path,
                   env={"HOME": str(home), "PATH": os.environ["PATH"]})


def disk(tmp_path, name: str, marker: str = None):
    images = tmp_path / "home" / "vm_images"
    images.mkdir(parents=True, exist_ok=True)
    (images / name).write_text(f"the disk {name}")
    if marker is not None:
        (images / f"{name}.owner").write_text(marker + "\n")
    return images / name


def test_anas_r_1016_and_bens_r_with_id_1016_never_share_a_disk(tmp_path):
    api, db, ex = make_api(tmp_path, ONE_WORKER)
    ok(api.create_user("admin", "ana", "ana-password", 6))
    ok(api.create_user("admin", "ben", "ben-password", 6))
    ana_sid = ok(api.create_slice("ana", "lab"))["slice_id"]
    ana = ok(api.add_vm_to_slice("ana", ana_sid, "r_1016", "cirros", 0))
    first = ok(api.create_slice("ben", "first"))["slice_id"]
    ok(api.add_vm_to_slice("ben", first, "r", "cirros", 0))         # Ben's first r has the documented path
    ben_sid = ok(api.create_slice("ben", "lab"))["slice_id"]
    with db.transaction() as data:
        data["next_vm_id"] = 1016                                  # so his next VM gets ID 1016
    ben = ok(api.add_vm_to_slice("ben", ben_sid, "r", "cirros", 0))
    assert ben["vm_id"] == 1016 and ben["owner"] == "ben" and ana["owner"] == "ana"
    assert ana["qcow_image"] == "~/vm_images/r_1016_img.qcow2"
    assert ben["qcow_image"] == "~/vm_images/r.1016_img.qcow2" != ana["qcow_image"]


def test_no_fallback_name_equals_another_vms_whatever_names_and_ids():
    names = ["r", "r_1", "r_10", "r_1016", "r_1016_1", "a-1", "a", "x_2_3", "A" * 32, "b" * 27 + "_1016"]
    ids = [1, 10, 16, 101, 1016, 10161, 99999]
    files = {}
    for name, vm_id in itertools.product(names, ids):
        for path, ident in ((naming.overlay_path(name), None), (naming.overlay_path(name, vm_id), vm_id)):
            files.setdefault(os.path.basename(path), set()).add((name, ident))
    documented = {f for f, owners in files.items() if all(i is None for _n, i in owners)}
    for f, owners in files.items():
        assert naming.OVERLAY_RE.fullmatch(f), f
        if f not in documented:
            assert len(owners) == 1, (f, owners)   # one VM's fallback, nobody else's file
    assert "." not in "".join(names) and not any(naming.valid_name(n + ".1") for n in names)


def test_a_dead_add_never_removes_another_vms_disk(tmp_path):
    """Ben's add of VM 1016 dies; its record names a path where Ana's disk is: Ana's disk stays."""
    ana = disk(tmp_path, "r_1016_img.qcow2", mark(1001))
    bens = disk(tmp_path, "r.1016_img.qcow2", mark(1016))
    ben_vm = {"vm_id": 1016, "name": "r", "worker_ip": WORKERS[0], "qcow_image": "~/vm_images/r_1016_img.qcow2"}
    run_sh(tmp_path, DeploymentAPI.delete_pending_vm_command(ben_vm).script)
    assert ana.exists() and (tmp_path / "home/vm_images/r_1016_img.qcow2.owner").exists()
    assert not bens.exists() and not (tmp_path / "home/vm_images/r.1016_img.qcow2.owner").exists()


def test_the_reaper_of_a_dead_add_sends_only_marker_checked_removals(tmp_path):
    """End to end on the fake hosts: the add dies after its reservation; the next reader's cleanup
    script, run in a real shell beside another VM's disk at the same path, keeps that disk."""
    api, db, ex = make_api(tmp_path, ONE_WORKER)
    sid = ok(api.create_slice("admin", "s"))["slice_id"]

    class Killed(BaseException):
        pass

    def die(*_a, **_k):
        raise Killed

    api.design._make_disk_and_commit = die    # SIGKILL once the VM is reserved: no undo runs
    with pytest.raises(Killed):
        api.add_vm_to_slice("admin", sid, "r", "cirros", 0)
    del api.design._make_disk_and_commit
    with db.transaction() as data:
        vm = data["slices"][str(sid)]["vms"][0]
        vm["busy"].update(pid=999999, start="1")
        vm["qcow_image"] = "~/vm_images/victim_img.qcow2"   # whatever the record says
    ex.commands.clear()
    assert ok(api.get_slice("admin", sid))["vms"] == []
    (cmd,) = [c for c in ex.commands if c.action == "delete_overlay"]
    victim = disk(tmp_path, "victim_img.qcow2", mark(1000 + 7))
    legacy = disk(tmp_path, "r_img.qcow2", naming.MARK)       # a disk of before, marker naming no VM
    own = disk(tmp_path, f"r.{vm['vm_id']}_img.qcow2", mark(vm["vm_id"]))
    run_sh(tmp_path, cmd.script)
    assert victim.exists() and legacy.exists() and not own.exists()


def test_a_delete_removes_its_own_disk_and_a_disk_of_before_only(tmp_path):
    mine = disk(tmp_path, "a_img.qcow2", mark(1001))
    other = disk(tmp_path, "b_img.qcow2", mark(1002))
    old = disk(tmp_path, "c_img.qcow2", naming.MARK)
    unmarked = disk(tmp_path, "d_img.qcow2")
    for name, vm_id in (("a", 1001), ("b", 1001), ("c", 1003), ("d", 1004)):
        vm = {"vm_id": vm_id, "name": name, "worker_ip": "w", "qcow_image": f"~/vm_images/{name}_img.qcow2"}
        run_sh(tmp_path, DeploymentAPI.delete_vm_command(vm).script)
    assert not mine.exists() and other.exists() and not old.exists() and unmarked.exists()


def test_orphan_removal_removes_only_files_still_marked_by_this_system(tmp_path):
    marked = disk(tmp_path, "gone_img.qcow2", mark(1001))
    old = disk(tmp_path, "old_img.qcow2", naming.MARK)
    users = disk(tmp_path, "thesis_img.qcow2", "my own notes")
    bare = disk(tmp_path, "bare_img.qcow2")
    ctx = HostContext(lab_config_obj(), {"w": str(tmp_path / "home")})
    keys = [Key("overlay", "w", name=n) for n in ("gone_img.qcow2", "old_img.qcow2", "thesis_img.qcow2",
                                                  "bare_img.qcow2")]
    run_sh(tmp_path, "\n".join(Overlay().remove(ctx, "w", keys)))
    assert not marked.exists() and not old.exists() and users.exists() and bare.exists()


def lab_config_obj():
    from store.config import ClusterConfig
    return ClusterConfig.from_dict(lab_config())


@pytest.mark.skipif(not shutil.which("qemu-img"), reason="qemu-img is not installed")
def test_an_overlay_is_readable_by_its_owner_only(tmp_path):
    """Item 14: the overlay and its marker 0600, the image folder 0700 (made 0755 before, or older)."""
    images = tmp_path / "home" / "vm_images"
    images.mkdir(parents=True)
    images.chmod(0o755)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(images / "base.img"), "16M"], check=True)
    cmd = overlay_create("w", "~/vm_images", "base.img", "vm1_img.qcow2", mark(1001))
    run_sh(tmp_path, cmd.script)
    assert stat.S_IMODE(images.stat().st_mode) == 0o700
    assert stat.S_IMODE((images / "vm1_img.qcow2").stat().st_mode) == 0o600
    assert stat.S_IMODE((images / "vm1_img.qcow2.owner").stat().st_mode) == 0o600
    assert (images / "vm1_img.qcow2.owner").read_text() == "cloud-repositorio vm 1001\n"


def test_the_launch_makes_everything_of_the_vm_root_only_and_holds_its_lock():
    """Item 14: what QEMU and the launch make is 0600 (umask 077) in a 0700 state folder; the disk is
    made 0600 again (disks made before); the VM's lock is held by its start and its stop, never by QEMU."""
    from test_host_scripts import sample_vm

    import vm_launcher
    vm = sample_vm()
    launch = vm_launcher.launch_vm_command(vm, "/home/ubuntu", vm_launcher.LaunchSettings(network_node="n"),
                                           password="Abc23456").script.splitlines()
    qemu = next(i for i, line in enumerate(launch) if line.startswith("qemu-system-x86_64 "))
    umask = launch.index("umask 077")
    lock = next(i for i, line in enumerate(launch) if "flock -w" in line and "vm1001.lock" in line)
    folder = launch.index("[ -d /run/cloud-repositorio ] || mkdir -p /run/cloud-repositorio; "
                          "chmod 700 /run/cloud-repositorio")
    assert folder < umask < lock < qemu
    assert not any("chmod" in line and "seed.img" in line for line in launch)   # umask 077 makes it 0600
    assert "chmod 600 /home/ubuntu/vm_images/web-1_img.qcow2 && chmod 700 /home/ubuntu/vm_images" in launch[lock:qemu]
    assert launch[qemu].endswith(" 8>&-")           # QEMU (a daemon) never keeps the VM's lock
    assert not any("rm -f" in line and "vm1001.lock" in line for line in launch)
    stop = vm_launcher.stop_vm_command(vm, "br-int").script.splitlines()
    take = next(i for i, line in enumerate(stop) if "flock -w" in line and "vm1001.lock" in line)
    kill = next(i for i, line in enumerate(stop) if "vm1001.pid" in line)
    assert take < kill and "vm1001.lock" in stop[-1] and stop[-1].startswith("rm -f")
    assert naming.VM_STATE_RE.fullmatch("vm1001.lock")
