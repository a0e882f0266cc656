"""VNC asks for the VM's password (SPEC §11): never 'None', a wrong password refused, the owner's opens it."""
from __future__ import annotations

from rfb import NONE, VNC_AUTH, security_types, try_password


def test_vnc_needs_the_vms_password(lab, api):
    ok, s = api.create_slice("student", "vnc")
    assert ok, s
    ok, vm = api.add_vm_to_slice("student", s["slice_id"], "screen", "cirros", 0)
    assert ok, vm
    ok, msg = api.deploy_slice("student", s["slice_id"])
    assert ok, msg
    host, port = vm["worker_ip"], vm["vnc_port"]
    offered = security_types(host, port)
    assert NONE not in offered and VNC_AUTH in offered, offered
    password = api.services.credentials.password(vm["vm_id"])
    assert try_password(host, port, "wrongpw1") == (False, "Authentication failed")
    ok, desktop = try_password(host, port, password)
    assert ok, desktop
    assert "cr-vm" in desktop
