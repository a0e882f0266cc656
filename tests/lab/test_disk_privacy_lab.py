"""Students' disks on the workers are readable only by the account that runs QEMU (issue 17 item 14).

A deployed VM's overlay, its marker, its seed disk (which holds its password) and its state files
are checked on its worker: modes, owners, and another local account of the worker (``nobody``,
through setpriv) trying to read them.  QEMU (root) still boots the VM from them.
"""
from __future__ import annotations

import time

from labtools import STATE, assert_clean, host_of, serial_log, sh


def mode_of(lab, host: str, path: str) -> tuple:
    out = sh(lab, host, f"stat -c '%a %U %G' {path}").split()
    assert len(out) == 3, f"{host}: no {path}"
    return int(out[0], 8), out[1], out[2]


def as_nobody(lab, host: str, cmd: str):
    return lab.exec(host, f"setpriv --reuid=65534 --regid=65534 --clear-groups -- {cmd}")


def test_disks_seeds_and_state_files_are_root_only(lab, api):
    ok, s = api.create_slice("admin", "priv")
    assert ok, s
    ok, vm = api.add_vm_to_slice("admin", s["slice_id"], "secret", "cirros", 1, True)
    assert ok, vm
    host = host_of(lab, vm["worker_ip"])
    mode, owner, _group = mode_of(lab, host, "/home/ubuntu/vm_images/secret_img.qcow2")
    assert mode == 0o600 and owner == "ubuntu", (oct(mode), owner)   # made so
    # as an older version left them: the VM's next start makes them private again
    sh(lab, host, "chmod 755 /home/ubuntu/vm_images && chmod 644 /home/ubuntu/vm_images/secret_img.qcow2")
    ok, msg = api.deploy_slice("admin", s["slice_id"])
    assert ok, msg
    images = "/home/ubuntu/vm_images"
    disk = f"{images}/secret_img.qcow2"
    vid = vm["vm_id"]

    mode, owner, _group = mode_of(lab, host, images)
    assert mode & 0o077 == 0, f"{images} is {oct(mode)}"
    for path in (disk, f"{disk}.owner"):
        mode, owner, _group = mode_of(lab, host, path)
        assert mode == 0o600 and owner == "ubuntu", (path, oct(mode), owner)
    mode, owner, _group = mode_of(lab, host, STATE)
    assert mode == 0o700 and owner == "root", (oct(mode), owner)
    for suffix in ("seed.img", "pid", "serial", "sock", "qmp", "lock"):
        mode, owner, group = mode_of(lab, host, f"{STATE}/vm{vid}.{suffix}")
        assert owner == "root" and mode & 0o007 == 0 and (mode & 0o070 == 0 or group == "root"), \
            (suffix, oct(mode), owner, group)

    # another account of the worker reads none of it
    for target in (disk, f"{STATE}/vm{vid}.seed.img", f"{STATE}/vm{vid}.serial"):
        res = as_nobody(lab, host, f"cat {target}")
        assert res.returncode != 0 and "Permission denied" in res.stderr, (target, res.returncode, res.stderr)
        assert not res.stdout
    res = as_nobody(lab, host, f"ls {images}")
    assert res.returncode != 0 and "Permission denied" in res.stderr, res
    assert as_nobody(lab, host, "true").returncode == 0  # the account itself works

    # while QEMU, as root, runs the VM from its disk
    deadline = time.monotonic() + 90
    while "LAB-READY" not in serial_log(lab, vm) and time.monotonic() < deadline:
        time.sleep(1)
    assert "LAB-READY" in serial_log(lab, vm), serial_log(lab, vm)[-2000:]
    ok, msg = api.delete_slice("admin", s["slice_id"])
    assert ok, msg
    assert_clean(lab)
