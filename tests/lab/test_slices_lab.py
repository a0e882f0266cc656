"""Design, deploy and delete for real in the local lab, checked from outside the VMs.

Real SSH (paramiko, host keys checked), real OVS, QEMU, dnsmasq, iptables.
Each test uses its own database and leaves the hosts clean.
"""
from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
import textwrap
import time

from labtools import (
    STATE,
    assert_clean,
    console,
    forget_slice_by_hand,
    host_of,
    kill_manager_mid_deploy,
    leases,
    rfb_banner,
    serial_log,
    sh,
    wait_for_leases,
    wait_guest_configured,
)

import naming


def fetch_internet(lab) -> str:
    """Guest command: GET the internet host's page, up to 3 tries (the output is checked)."""
    return f"for i in 1 2 3; do wget -q -O - {lab['lab']['internet_http']} && break; sleep 1; done"


def mac(vm: dict, index: int) -> str:
    return vm["interfaces"][index]["mac"].lower()


def build_slice(api, user: str, name: str, n_vms: int, links: list, internet: tuple = ()) -> tuple:
    ok, s = api.create_slice(user, name)
    assert ok, s
    vms = []
    for i in range(n_vms):
        ok, vm = api.add_vm_to_slice(user, s["slice_id"], f"{name}v{i + 1}", "cirros", 2, i in internet)
        assert ok, vm
        vms.append(vm)
    out_links = []
    for a, ia, b, ib in links:
        ok, link = api.create_link(user, s["slice_id"], vms[a]["vm_id"], ia, vms[b]["vm_id"], ib)
        assert ok, link
        out_links.append(link)
    return s["slice_id"], vms, out_links


# --- design mode on real hosts -------------------------------------------------

def test_overlay_made_on_the_chosen_worker_base_copied_and_removed_on_delete(lab, api):
    # the base image is missing on worker1: it must be copied from the manager
    sh(lab, "worker1", "rm -f /home/ubuntu/vm_images/labvm.qcow2")
    ok, s = api.create_slice("admin", "design1")
    assert ok
    vms = [api.add_vm_to_slice("admin", s["slice_id"], f"d{i}", "cirros", 1)[1] for i in range(3)]
    assert [v["vm_id"] for v in vms] == [1001, 1002, 1003]
    assert [v["vnc_port"] for v in vms] == [5901, 5902, 5903]
    assert sorted(v["worker_ip"] for v in vms) == sorted(lab["workers"])
    base = os.path.getsize(str(lab["flavor_images"]["cirros"]))
    for vm in vms:
        host = host_of(lab, vm["worker_ip"])
        listing = sh(lab, host, "ls -l /home/ubuntu/vm_images")
        assert f"{vm['name']}_img.qcow2" in listing
        info = sh(lab, host, f"qemu-img info /home/ubuntu/vm_images/{vm['name']}_img.qcow2")
        assert "backing file: labvm.qcow2" in info
        others = [h for h in ("worker1", "worker2", "worker3") if h != host]
        for other in others:
            assert f"{vm['name']}_img.qcow2" not in sh(lab, other, "ls /home/ubuntu/vm_images")
    copied = sh(lab, "worker1", "stat -c %s /home/ubuntu/vm_images/labvm.qcow2").strip()
    assert int(copied) == base
    assert not sh(lab, "worker1", "ls /home/ubuntu/vm_images | grep part || true").strip()
    ok, msg = api.delete_slice("admin", s["slice_id"])
    assert ok, msg
    assert_clean(lab)


# --- deploy (a), (d) -------------------------------------------------------------

def test_deploy_three_workers_links_internet_vnc_then_delete_leaves_nothing(lab, api):
    sid, vms, links = build_slice(api, "admin", "web", 3,
                                  [(0, "eth1", 1, "eth1"), (1, "eth2", 2, "eth1")], internet=(0,))
    assert len({v["worker_ip"] for v in vms}) == 3
    events = []
    t0 = time.monotonic()
    ok, msg = api.deploy_slice("admin", sid, progress=events.append)
    took = time.monotonic() - t0
    assert ok, msg
    print(f"deploy_slice returned in {took:.2f} s")
    assert [e for e in events if e["phase"] == "network"] and all(e["ok"] for e in events)
    s = api.db.get_slice(sid)
    assert s["status"] == "running" and all(v["status"] == "running" and v["pid"] for v in s["vms"])

    v1, v2 = links[0]["vlan_id"], links[1]["vlan_id"]
    got = wait_for_leases(lab, {(v1, mac(vms[0], 1)), (v1, mac(vms[1], 1)),
                                (v2, mac(vms[1], 2)), (v2, mac(vms[2], 1)),
                                (400, mac(vms[0], 0))}, timeout=150)
    print(f"every NIC leased {time.monotonic() - t0:.1f} s after deploy started")
    wait_guest_configured(lab, [(vms[0], "eth1"), (vms[1], "eth1"), (vms[1], "eth2"), (vms[2], "eth1"),
                                (vms[0], "eth0")])
    for (vlan, _m), ip in got.items():
        if vlan != 400:
            assert ipaddress.ip_address(ip) in naming.link_subnet(vlan)
    # the internet VM holds exactly the address the database shows
    assert got[(400, mac(vms[0], 0))] == vms[0]["interfaces"][0]["ip_config"]["ip"]
    # across workers on link 1 and link 2
    rc, out = console(lab, vms[0], f"ping -c 5 -W 2 {got[(v1, mac(vms[1], 1))]}")
    assert rc == 0, out
    rc, out = console(lab, vms[2], f"ping -c 5 -W 2 {got[(v2, mac(vms[1], 2))]}")
    assert rc == 0, out
    # links are L2 segments: the only default route is the internet VLAN's
    rc, out = console(lab, vms[0], "ip route")
    assert "default via 10.60.7.1 dev eth0" in out and out.count("default") == 1, out
    rc, out = console(lab, vms[1], "ip route")
    assert rc == 0 and "default" not in out, out
    # internet through NAT: the internet host sees the network node's uplink address
    rc, out = console(lab, vms[0], fetch_internet(lab))
    assert rc == 0 and "you are 10.255.0.1" in out, out
    # a VM without internet cannot get out
    rc, out = console(lab, vms[1], f"ping -c 1 -W 2 {lab['lab']['internet_host']}")
    assert rc != 0, out
    for vm in vms:
        assert rfb_banner(vm["worker_ip"], vm["vnc_port"]).startswith(b"RFB ")
        assert f"LAB-NIC eth2 mac={mac(vm, 2)}" in serial_log(lab, vm)  # every NIC, in order

    ok, msg = api.deploy_slice("admin", sid)
    assert not ok and msg == "Slice already running"

    t0 = time.monotonic()
    ok, msg = api.delete_slice("admin", sid)
    print(f"delete_slice took {time.monotonic() - t0:.2f} s")
    assert ok, msg
    assert_clean(lab)
    assert api.db.get_user("admin")["used_vms"] == 0


# --- isolation (b) ---------------------------------------------------------------

def test_two_tenants_isolated_and_deleting_one_keeps_the_other_dhcp(lab, api):
    sid_a, a_vms, a_links = build_slice(api, "admin", "tenanta", 2, [(0, "eth1", 1, "eth1")])
    sid_b, b_vms, b_links = build_slice(api, "student", "tenantb", 2, [(0, "eth1", 1, "eth1")])
    va, vb = a_links[0]["vlan_id"], b_links[0]["vlan_id"]
    assert va != vb
    for user, sid in (("admin", sid_a), ("student", sid_b)):
        ok, msg = api.deploy_slice(user, sid)
        assert ok, msg
    got = wait_for_leases(lab, {(va, mac(a_vms[0], 1)), (va, mac(a_vms[1], 1)),
                                (vb, mac(b_vms[0], 1)), (vb, mac(b_vms[1], 1))}, timeout=150)
    a_ip = got[(va, mac(a_vms[1], 1))]
    wait_guest_configured(lab, [(v, "eth1") for v in a_vms + b_vms])
    # control: inside tenant B the link works
    rc, out = console(lab, b_vms[0], f"ping -c 5 -W 2 {got[(vb, mac(b_vms[1], 1))]}")
    assert rc == 0, out
    # L3: B cannot reach A's subnet through the network node's gateways
    rc, out = console(lab, b_vms[0], f"ping -c 2 -W 2 {a_ip}")
    assert rc != 0, out
    # L2: even with an address inside A's subnet, B's NIC does not reach A
    rc, out = console(lab, b_vms[0], f"ip addr add {naming.link_subnet(va).network_address + 77}/24 dev eth1 "
                                     f"&& ping -c 2 -W 2 {a_ip}")
    assert rc != 0, out
    pid_a = sh(lab, "netnode", f"cat {STATE}/dnsmasq-vlan{va}.pid").strip()
    ok, msg = api.delete_slice("student", sid_b)
    assert ok, msg
    assert sh(lab, "netnode", f"cat {STATE}/dnsmasq-vlan{va}.pid").strip() == pid_a
    assert sh(lab, "netnode", f"test -d /proc/{pid_a} && echo alive").strip() == "alive"
    assert mac(a_vms[0], 1) in leases(lab, va)
    ok, msg = api.delete_slice("admin", sid_a)
    assert ok, msg
    assert_clean(lab)


def test_shared_internet_vlan_outlives_one_slice_and_reused_addresses_lease_again(lab, api):
    sid_a, a_vms, _ = build_slice(api, "admin", "neta", 1, [], internet=(0,))
    sid_b, b_vms, _ = build_slice(api, "student", "netb", 1, [], internet=(0,))
    for user, sid in (("admin", sid_a), ("student", sid_b)):
        ok, msg = api.deploy_slice(user, sid)
        assert ok, msg
    a_ip = a_vms[0]["interfaces"][0]["ip_config"]["ip"]
    wait_for_leases(lab, {(400, mac(a_vms[0], 0)), (400, mac(b_vms[0], 0))})
    wait_guest_configured(lab, [(b_vms[0], "eth0")])
    pid = sh(lab, "netnode", f"cat {STATE}/dnsmasq-vlan400.pid").strip()
    ok, msg = api.delete_slice("admin", sid_a)
    assert ok, msg
    # B keeps its internet: same dnsmasq, gateway, NAT; A's lease is given back at once
    assert sh(lab, "netnode", f"cat {STATE}/dnsmasq-vlan400.pid").strip() == pid
    assert "gw_vlan400@cr-trunk:" in sh(lab, "netnode", "ip -o link show type macvlan")
    assert mac(a_vms[0], 0) not in leases(lab, 400)
    rc, out = console(lab, b_vms[0], fetch_internet(lab))
    assert rc == 0 and "you are 10.255.0.1" in out, out
    # a new VM that is given A's old address (1101 % 100 == 1001 % 100) gets it from DHCP
    with api.db.transaction() as data:
        data["next_vm_id"] = 1100
    sid_c, c_vms, _ = build_slice(api, "admin", "netc", 1, [], internet=(0,))
    assert c_vms[0]["vm_id"] == 1101 and c_vms[0]["interfaces"][0]["ip_config"]["ip"] == a_ip
    ok, msg = api.deploy_slice("admin", sid_c)
    assert ok, msg
    got = wait_for_leases(lab, {(400, mac(c_vms[0], 0))})
    assert got[(400, mac(c_vms[0], 0))] == a_ip
    for user, sid in (("student", sid_b), ("admin", sid_c)):
        ok, msg = api.delete_slice(user, sid)
        assert ok, msg
    # the last internet slice gone: the shared VLAN is removed too
    assert "gw_vlan400" not in sh(lab, "netnode", "ip -o link show")
    assert "MASQUERADE" not in sh(lab, "netnode", "iptables -t nat -S POSTROUTING")
    assert_clean(lab)


SERVE = ("import http.server, socketserver; socketserver.TCPServer.allow_reuse_address = True; "
         "http.server.HTTPServer(('0.0.0.0', 8081), http.server.SimpleHTTPRequestHandler).serve_forever()")


def test_vms_cannot_reach_the_network_node_itself(lab, api):
    sid, vms, links = build_slice(api, "admin", "probe", 2, [(0, "eth1", 1, "eth1")])
    ok, msg = api.deploy_slice("admin", sid)
    assert ok, msg
    vlan = links[0]["vlan_id"]
    got = wait_for_leases(lab, {(vlan, mac(vms[0], 1)), (vlan, mac(vms[1], 1))})
    wait_guest_configured(lab, [(vms[0], "eth1"), (vms[1], "eth1")])
    gateway = naming.link_network(vlan)["gateway_ip"]
    # the worst case: a service listening in the gateways' namespace itself (the node's own services are
    # in another namespace, which no gateway is in)
    enter = ["nsenter", f"--net=/run/netns/{naming.GATEWAY_NAMESPACE}"]
    server = subprocess.Popen([str(lab.root / "exec.sh"), "netnode", *enter, "python3", "-c", SERVE],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while "8081" not in sh(lab, "netnode", f"{' '.join(enter)} ss -ltn") and time.monotonic() < deadline:
            time.sleep(0.2)
        # control: that service answers on the gateway address (from inside that namespace)
        assert "200" in sh(lab, "netnode", f"{' '.join(enter)} python3 -c \"import urllib.request as u; "
                                           f"print(u.urlopen('http://{gateway}:8081/').status)\"")
        # control: from the VM, the peer's web server answers
        rc, out = console(lab, vms[0], f"wget -q -O - http://{got[(vlan, mac(vms[1], 1))]}/")
        assert rc == 0 and "<h1>" in out, out
        rc, out = console(lab, vms[0], f"ping -c 2 -W 2 {gateway}")
        assert rc == 0, out                                   # the gateway answers ping
        rc, out = console(lab, vms[0], f"wget -q -O - http://{gateway}:8081/ && echo REACHED")
        assert "REACHED" not in out, out                      # but no service of the node itself
    finally:
        server.kill()
        server.wait()


# --- rollback (c) ------------------------------------------------------------------

def test_qemu_failure_mid_deploy_rolls_back_everything_then_deploy_succeeds(lab, api):
    sid, vms, _links = build_slice(api, "admin", "rb", 3, [(0, "eth1", 1, "eth1"), (1, "eth2", 2, "eth1")],
                                   internet=(2,))
    victim = vms[2]
    host = host_of(lab, victim["worker_ip"])
    disk = f"/home/ubuntu/vm_images/{victim['name']}_img.qcow2"
    # QEMU cannot open a disk that is not a qcow2 image: the last VM fails to start
    sh(lab, host, f"cp {disk} {disk}.good && echo garbage > {disk}")
    try:
        ok, msg = api.deploy_slice("admin", sid)
        assert not ok
        assert f"start VM {victim['vm_id']}" in msg and victim["worker_ip"] in msg, msg
        assert "still in design" in msg
    finally:
        sh(lab, host, f"mv {disk}.good {disk}")
    s = api.db.get_slice(sid)
    assert s["status"] == "design" and "busy" not in s
    overlays = {f"{v['name']}_img.qcow2" for v in vms}
    assert_clean(lab, keep_overlays=overlays)
    ok, msg = api.deploy_slice("admin", sid)
    assert ok, msg
    ok, msg = api.delete_slice("admin", sid)
    assert ok, msg
    assert_clean(lab)


def test_unreachable_worker_fails_before_anything_is_made(lab, api):
    sid, vms, _ = build_slice(api, "admin", "down", 3, [(0, "eth1", 2, "eth1")])
    target = host_of(lab, vms[2]["worker_ip"])
    api.executor.close()  # a fresh connection is needed: as after a restart of the menu
    sh(lab, target, "ip link set eth0 down")
    try:
        ok, msg = api.deploy_slice("admin", sid)
    finally:
        sh(lab, target, "ip link set eth0 up")
    assert not ok
    assert vms[2]["worker_ip"] in msg and "connect" in msg, msg
    assert api.db.get_slice(sid)["status"] == "design"
    assert_clean(lab, keep_overlays={f"{v['name']}_img.qcow2" for v in vms})


# --- orphans (e) -------------------------------------------------------------------

CTRL_C = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[1] + "/tests/lab")
    from labtools import make_api
    api = make_api(None, sys.argv[2])
    sent = []
    def progress(event):
        if event["phase"] == "vms" and not sent:
            sent.append(1)
            os.kill(os.getpid(), signal.SIGINT)    # the user presses Ctrl-C mid-deploy
    print(api.deploy_slice("admin", int(sys.argv[3]), progress=progress))
""")


def test_ctrl_c_mid_deploy_undoes_everything(lab, api):
    sid, vms, _links = build_slice(api, "admin", "ctrlc", 3, [(0, "eth1", 1, "eth1"), (1, "eth2", 2, "eth1")],
                                   internet=(1,))
    api.executor.close()
    root = str(lab.root.parent)
    proc = subprocess.run([sys.executable, "-c", CTRL_C, root, str(api.db.path), str(sid)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "(False, 'Deploy interrupted (Ctrl-C)." in proc.stdout, proc.stdout
    s = api.db.get_slice(sid)
    assert s["status"] == "design" and "busy" not in s
    assert_clean(lab, keep_overlays={f"{v['name']}_img.qcow2" for v in vms})


def test_leftovers_of_a_killed_manager_never_block_the_next_deploy(lab, api):
    sid, vms, links = build_slice(api, "admin", "crash", 2, [(0, "eth1", 1, "eth1")], internet=(0,))
    api.executor.close()
    assert kill_manager_mid_deploy(api.db.path, "admin", sid) == -signal.SIGKILL
    vlan = links[0]["vlan_id"]
    old_dnsmasq = sh(lab, "netnode", f"cat {STATE}/dnsmasq-vlan{vlan}.pid").strip()
    assert old_dnsmasq, "the killed deploy should have left the VLAN's dnsmasq behind"
    ok, msg = api.deploy_slice("admin", sid)        # no cleanup in between
    assert ok, msg
    new_dnsmasq = sh(lab, "netnode", f"cat {STATE}/dnsmasq-vlan{vlan}.pid").strip()
    assert new_dnsmasq != old_dnsmasq
    assert sh(lab, "netnode", f"test -d /proc/{old_dnsmasq} && echo alive || echo gone").strip() == "gone"
    assert len(sh(lab, "netnode", "pgrep -x dnsmasq").split()) == 2          # VLAN and internet
    for vm in vms:
        running = sh(lab, host_of(lab, vm["worker_ip"]), "pgrep -af '^qemu-system' || true")
        assert running.count(f"cr-vm{vm['vm_id']},") == 1, running
    wait_for_leases(lab, {(vlan, mac(vms[0], 1)), (vlan, mac(vms[1], 1)), (400, mac(vms[0], 0))})
    ok, msg = api.delete_slice("admin", sid)
    assert ok, msg
    assert_clean(lab)


def test_orphans_of_a_killed_manager_are_found_and_only_they_are_removed(lab, api, tmp_path):
    sid, vms, links = build_slice(api, "admin", "orph", 2, [(0, "eth1", 1, "eth1")])
    keep_sid, keep_vms, _ = build_slice(api, "admin", "keep", 1, [])
    ok, msg = api.deploy_slice("admin", keep_sid)
    assert ok, msg
    # something that is not ours: it must survive the cleanup, even when its name looks like ours
    sh(lab, "worker1", "ip tuntap add mode tap name tapother && touch /home/ubuntu/vm_images/notes.txt "
                       "/home/ubuntu/vm_images/students_thesis_img.qcow2")
    sh(lab, "netnode", "ovs-vsctl add-port br-int gw_vlan3999 -- set interface gw_vlan3999 type=internal")
    api.executor.close()
    assert kill_manager_mid_deploy(api.db.path, "admin", sid) == -signal.SIGKILL
    assert api.db.get_slice(sid)["status"] == "deploying"  # the dead session's mark
    vm_ids, vlan = {vm["vm_id"] for vm in vms}, links[0]["vlan_id"]

    # the slice is still in the database: option 8 first rolls its dead deploy back (nothing of it is
    # left, nothing of it is an orphan), and its real status is written back
    ok, orphans = api.find_orphans("admin")
    assert ok, orphans
    assert not [o for o in orphans if o.key.vm_id in vm_ids or o.key.vlan == vlan], orphans
    assert api.db.get_slice(sid)["status"] == "design"
    assert f"ns-dhcp-vlan{vlan}" not in sh(lab, "netnode", "ip netns list")
    for vm in vms:
        assert f"cr-vm{vm['vm_id']}," not in sh(lab, host_of(lab, vm["worker_ip"]), "pgrep -af '^qemu-system' || true")

    # killed again, and this time an instructor removes the slice from database.yaml before anyone
    # reads it: what it left is no slice's, so option 8 lists it
    assert kill_manager_mid_deploy(api.db.path, "admin", sid) == -signal.SIGKILL
    forget_slice_by_hand(api.db, sid)
    ok, orphans = api.find_orphans("admin")
    assert ok, orphans
    kinds = {o.key.kind for o in orphans}
    assert {"qemu", "tap", "vmfiles", "overlay", "vlan", "gateway", "namespace", "dnsmasq"} <= kinds, orphans
    assert not [o for o in orphans if o.key.vm_id == keep_vms[0]["vm_id"]]
    assert not [o for o in orphans if "tapother" in o.name or "notes" in o.name or "thesis" in o.name
                or o.key.vlan == 3999]
    ok, msg = api.find_orphans("student")
    assert not ok and "admin" in msg

    ok, msg = api.cleanup_orphans("admin", orphans)
    assert ok, msg
    assert f"ns-dhcp-vlan{vlan}" not in sh(lab, "netnode", "ip netns list")
    for vm in vms:
        h = host_of(lab, vm["worker_ip"])
        assert f"cr-vm{vm['vm_id']}," not in sh(lab, h, "pgrep -af '^qemu-system' || true")
        assert os.path.basename(vm["qcow_image"]) not in sh(lab, h, "ls /home/ubuntu/vm_images")
    keep_host = host_of(lab, keep_vms[0]["worker_ip"])
    assert f"cr-vm{keep_vms[0]['vm_id']}," in sh(lab, keep_host, "pgrep -af '^qemu-system' || true")
    assert "tapother" in sh(lab, "worker1", "ip -o link show")
    assert "notes.txt" in sh(lab, "worker1", "ls /home/ubuntu/vm_images")
    assert "students_thesis_img.qcow2" in sh(lab, "worker1", "ls /home/ubuntu/vm_images")
    assert "gw_vlan3999" in sh(lab, "netnode", "ovs-vsctl list-ports br-int")
    sh(lab, "worker1", "ip link del tapother; rm -f /home/ubuntu/vm_images/notes.txt "
                       "/home/ubuntu/vm_images/students_thesis_img.qcow2")
    sh(lab, "netnode", "ovs-vsctl del-port br-int gw_vlan3999")
    ok, orphans = api.find_orphans("admin")
    assert ok and orphans == [], orphans
    ok, msg = api.delete_slice("admin", keep_sid)
    assert ok, msg
    assert_clean(lab)
