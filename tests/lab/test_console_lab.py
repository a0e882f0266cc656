"""Students use what they deploy: the console from the menu, access details, the seed (SPEC §10).

Typed in a real terminal (pexpect) against the lab, checked from outside where it matters.
"""
from __future__ import annotations

import re
import subprocess
import sys
import time

from labtools import host_of, make_api, sh, wait_for_leases
from menu_driver import CLI

import naming

DETACH = "\x1d"


def deployed(lab, site, flavor: str = "cirros", user: str = "student", name: str = "use"):
    """A running slice of two linked VMs (the first with internet), made through the API."""
    api = make_api(lab, site["db"])
    ok, s = api.create_slice(user, name)
    assert ok, s
    vms = [api.add_vm_to_slice(user, s["slice_id"], f"{name}{i}", flavor, 1, i == 0)[1] for i in range(2)]
    ok, link = api.create_link(user, s["slice_id"], vms[0]["vm_id"], "eth1", vms[1]["vm_id"], "eth1")
    assert ok, link
    ok, msg = api.deploy_slice(user, s["slice_id"])
    assert ok, msg
    return api, s["slice_id"], vms, link


def open_console(m, slice_id, vm_id):
    m.send("12", "Slice ID: ")
    m.send(str(slice_id), "VM ID: ")
    m.send(str(vm_id), "Choice (1-2): ")
    return m.send("1", "Ctrl-] returns to the menu.", timeout=30)


def shell_answer(m, command: str, pattern: str, timeout: float = 60) -> str:
    """Type a command in the console until ``pattern`` shows (the guest may still be booting)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m.p.send(command + "\r")
        try:
            m.p.expect(pattern, timeout=5)
            return m.p.match.group(0)
        except Exception:  # noqa: BLE001 - pexpect.TIMEOUT: not there yet
            continue
    raise AssertionError(f"no {pattern!r} in the console; screen ends with {m.transcript[-2000:]!r}")


def test_console_of_a_cirros_vm_through_the_menu(lab, site):
    api, sid, vms, _link = deployed(lab, site)
    m = site["spawn"]()
    m.login("student", "student")
    screen = open_console(m, sid, vms[1]["vm_id"])
    password = api.services.credentials.password(vms[1]["vm_id"])
    assert f"Log in as user: cirros password: {password}" in screen
    # the guest answers: its host name is the VM's name (the seed's local-hostname)
    assert shell_answer(m, "hostname", r"use1\r?\n")
    m.p.send(DETACH)
    screen = m.wait("\nChoice: ")
    assert "(console detached)" in screen
    # the terminal is usable again: the menu reads a normal line
    assert "Quota: 2/6 VMs used" in m.send("1")
    # the boot log: everything the VM printed is kept on its worker
    m.send("12", "Slice ID: ")
    m.send(str(sid), "VM ID: ")
    m.send(str(vms[1]["vm_id"]), "Choice (1-2): ")
    screen = m.send("2")
    assert "--- last lines printed by VM" in screen and "LAB-" in screen
    m.exit()


def test_a_second_session_on_the_same_console_is_told_busy_at_once(lab, site):
    api, sid, vms, _link = deployed(lab, site)
    first = site["spawn"]()
    first.login("student", "student")
    open_console(first, sid, vms[0]["vm_id"])
    second = site["spawn"]()
    second.login("admin", "admin")
    second.send("12", "Slice ID: ")
    second.send(str(sid), "VM ID: ")
    second.send(str(vms[0]["vm_id"]), "Choice (1-2): ")
    screen = second.send("1", timeout=15)
    assert f"The console of VM {vms[0]['vm_id']} is busy" in screen
    first.p.send(DETACH)
    first.wait("\nChoice: ")
    screen = second.send("12", "Slice ID: ")
    second.send(str(sid), "VM ID: ")
    second.send(str(vms[0]["vm_id"]), "Choice (1-2): ")
    screen = second.send("1", "Ctrl-] returns to the menu.", timeout=30)  # free again once detached
    assert "Log in as user: cirros" in screen
    second.p.send(DETACH)
    second.wait("\nChoice: ")
    first.exit()
    second.exit()


def test_another_student_is_refused_and_no_terminal_is_said(lab, site, tmp_path):
    api, sid, vms, _link = deployed(lab, site, user="admin", name="adm")
    m = site["spawn"]()
    m.login("student", "student")
    m.send("12", "Slice ID: ")
    m.send(str(sid), "VM ID: ")
    m.send(str(vms[0]["vm_id"]), "Choice (1-2): ")
    assert "Slice not found or not authorized" in m.send("1")
    m.exit()
    piped = subprocess.run([sys.executable, str(CLI), "--config", str(site["cfg"]), "--db", str(site["db"])],
                           input="admin\nadmin\n12\n0\n", capture_output=True, text=True, timeout=60)
    assert "The console needs a terminal" in piped.stdout, piped.stdout


def test_view_shows_state_login_vnc_and_real_addresses(lab, site):
    api, sid, vms, link = deployed(lab, site)
    vlan = link["vlan_id"]
    got = wait_for_leases(lab, {(vlan, vm["interfaces"][1]["mac"].lower()) for vm in vms})
    m = site["spawn"]()
    m.login("student", "student")
    screen = m.send("5", timeout=30)
    for vm in vms:
        pw = api.services.credentials.password(vm["vm_id"])
        assert f"VM {vm['vm_id']} {vm['name']}: running on {vm['worker_ip']}, user: cirros password: {pw}" in screen
        assert f"VNC {vm['worker_ip']}:{vm['vnc_port']} (same password)" in screen
        ip = got[(vlan, vm["interfaces"][1]["mac"].lower())]
        assert f"eth1 (Link 1, VLAN {vlan}): {ip}" in screen
    inet = vms[0]["interfaces"][0]["ip_config"]["ip"]
    assert f"eth0 (internet, VLAN 400): {inet}" in screen
    # a crashed VM is shown as such
    host = host_of(lab, vms[1]["worker_ip"])
    sh(lab, host, f"kill -9 $(cat {naming.vm_pidfile(vms[1]['vm_id'])})")
    screen = m.send("5", timeout=30)
    assert f"VM {vms[1]['vm_id']} {vms[1]['name']}: crashed on" in screen
    m.exit()


def test_the_seed_is_made_with_the_vm_and_gone_after_delete(lab, site):
    api, sid, vms, _link = deployed(lab, site)
    for vm in vms:
        host = host_of(lab, vm["worker_ip"])
        seed = naming.vm_seed_image(vm["vm_id"])
        assert sh(lab, host, f"stat -c %a {seed}").strip() == "600"
        label = sh(lab, host, f"blkid -o value -s LABEL {seed} || file -s {seed}")
        assert "cidata" in label, label
        meta = sh(lab, host, f"MTOOLS_SKIP_CHECK=1 mtype -i {seed} ::meta-data")
        assert f'"local-hostname": "{vm["name"]}"' in meta
        assert re.search(r"password", sh(lab, host, f"MTOOLS_SKIP_CHECK=1 mtype -i {seed} ::user-data"))
    ok, msg = api.delete_slice("student", sid)
    assert ok, msg
    for vm in vms:
        host = host_of(lab, vm["worker_ip"])
        assert sh(lab, host, f"ls {naming.vm_seed_image(vm['vm_id'])} 2>/dev/null || true").strip() == ""



def test_log_in_to_a_real_cloud_init_guest_through_the_menu(lab, site):
    """The ubuntu flavor boots a Debian cloud-init guest: the seed's password and host name work."""
    api = make_api(lab, site["db"])
    ok, s = api.create_slice("student", "cloud")
    assert ok, s
    sid = s["slice_id"]
    ok, real = api.add_vm_to_slice("student", sid, "deb1", "ubuntu", 1, False)
    assert ok, real
    ok, small = api.add_vm_to_slice("student", sid, "peer", "cirros", 1, False)
    assert ok, small
    ok, link = api.create_link("student", sid, real["vm_id"], "eth1", small["vm_id"], "eth1")
    assert ok, link
    ok, msg = api.deploy_slice("student", sid)
    assert ok, msg
    vlan = link["vlan_id"]
    leased = wait_for_leases(lab, {(vlan, real["interfaces"][1]["mac"].lower())}, timeout=400)
    ip = leased[(vlan, real["interfaces"][1]["mac"].lower())]
    m = site["spawn"]()
    m.login("student", "student")
    view = m.send("5", timeout=60)
    assert f"eth1 (Link 1, VLAN {vlan}): {ip}" in view
    screen = open_console(m, sid, real["vm_id"])
    password = api.services.credentials.password(real["vm_id"])
    assert f"Log in as user: ubuntu password: {password}" in screen
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline:  # the login prompt shows once cloud-init has set the password
        m.p.send("\r")
        try:
            m.p.expect("deb1 login: ", timeout=10)
            break
        except Exception:  # noqa: BLE001 - pexpect.TIMEOUT: still booting
            continue
    m.p.send("ubuntu\r")
    m.p.expect("Password: ", timeout=30)
    m.p.send(password + "\r")
    m.p.expect(r"ubuntu@deb1:~\$ ", timeout=60)
    assert shell_answer(m, "hostname", r"[\r\n]deb1\r?\n")
    assert shell_answer(m, "ip -4 -o addr show dev eth1", re.escape(f"inet {ip}/24"))
    m.p.send("exit\r")
    m.p.send(DETACH)
    screen = m.wait("\nChoice: ")
    assert "(console detached)" in screen
    print("console session:\n" + m.transcript[-3000:])
    m.exit()
