"""VNC asks for the VM's password (SPEC §11): never 'None', a wrong password refused, the owner's opens it."""
from __future__ import annotations

import pytest
from labtools import make_api
from rfb import NONE, VNC_AUTH, security_types, try_password


@pytest.fixture
def api(lab, tmp_path):
    api = make_api(lab, tmp_path / "database.yaml")
    yield api
    for s in api.db.all_slices().values():
        api.delete_slice(s["owner"], s["slice_id"])
    api.executor.close()


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
