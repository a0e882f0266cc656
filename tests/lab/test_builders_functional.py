"""Functional tier: each host builder against a real lab host (in the spirit of Neutron's functional tests).

For each kind of host object: run the script that makes it over real SSH, check the host from
outside (as root inside the host, not through the product), check the product's own scan finds
exactly it, run the removal script twice, and check nothing is left.  Every test starts with a
sweep that removes whatever this system left on the lab hosts (the product's own reconcile).
"""
from __future__ import annotations

import pytest
from labtools import LAB_DIR, sh

import naming
import vlan_manager
import vm_launcher
from database import Database
from deployment_api import DeploymentAPI
from hosts.hostcmd import HostCommand
from hosts.runner import Runner
from qcow_manager import overlay_create, overlay_delete
from remote_executor import RemoteExecutor
from store.config import ClusterConfig
from usecases import reconcile
from usecases.services import Services

VLAN = 3901          # far from the pools the other tests use
VM_ID = 99901


@pytest.fixture
def svc(lab, tmp_path):
    config = ClusterConfig.load(str(LAB_DIR / "cluster.yaml"))
    executor = RemoteExecutor(config)
    services = Services(Database(str(tmp_path / "db.yaml")), config, DeploymentAPI(executor), Runner(executor))
    _ctx, failed = services.connect(config.hosts)
    assert failed is None, failed.message()
    sweep(services)
    yield services
    sweep(services)
    executor.close()


def sweep(services) -> None:
    """Remove every object of this system on every lab host (the product's own scan and removals)."""
    ok, found = reconcile.Reconciler(services).survey()
    assert ok, found
    cmds = reconcile.removal_commands(services.host_context(), sorted({f.key for f in found}))
    report = services.runner.run(cmds, phase="sweep", stop_on_failure=False)
    assert not report.failures, [r.message() for r in report.failures]


def run(services, cmd: HostCommand):
    res = services.executor.run(cmd)
    assert res.ok, f"{cmd.step}: {res.message()}"
    return res


def found_keys(services, host: str) -> dict:
    res = run(services, reconcile.scan_command(services.host_context(), host))
    return {f.key: f.detail for f in reconcile.parse_scan(host, res.stdout)}


def node_links(lab) -> str:
    return sh(lab, "netnode", "ip -o -d link show")


def gateway_ns(lab, cmd: str) -> str:
    """``cmd`` run inside the link gateways' namespace on the network node."""
    return sh(lab, "netnode", f"ip netns exec {naming.GATEWAY_NAMESPACE} {cmd}")


def assert_node_empty(lab) -> None:
    """No gateway, trunk, namespace, dnsmasq, state file or chain of this system on the network node."""
    links = node_links(lab)
    assert "gw_vlan" not in links and naming.NODE_TRUNK not in links, links
    ports = sh(lab, "netnode", "ovs-vsctl list-ports br-int").split()
    assert not [p for p in ports if p.startswith(("gw_vlan", "dhcp", "cr-"))], ports
    assert naming.NODE_BRIDGE not in sh(lab, "netnode", "ovs-vsctl list-br").split()
    assert "ns-dhcp-vlan" not in sh(lab, "netnode", "ip netns list")
    assert naming.GATEWAY_NAMESPACE not in sh(lab, "netnode", "ip netns list")  # its gateways and chains with it
    assert sh(lab, "netnode", "pgrep -x dnsmasq || true").strip() == ""
    left = sh(lab, "netnode", f"ls {naming.STATE_DIR} | grep 'vlan' | grep -v '[.]lock$' || true").strip()
    assert left == "", left                                              # lock files stay, empty
    assert "CR-FORWARD" not in sh(lab, "netnode", "iptables -S FORWARD")  # the last VLAN took the chains along


def test_link_vlan_made_checked_removed_twice(lab, svc):
    node, cfg = svc.config.network_node, svc.config
    ports_before = sh(lab, "netnode", "ovs-vsctl list-ports br-int").split()
    run(svc, vlan_manager.vlan_up_command(node, VLAN, cfg.bridge, 400, cfg.internet["uplink"]))
    net = naming.link_network(VLAN)
    gw = naming.gateway_port(VLAN)
    # from outside: the gateway is a macvlan of the trunk in the gateways' namespace, with its fixed MAC,
    # its mark, its address, no IPv6; nothing of it in the node's own namespace (where ovs-vswitchd is)
    detail = gateway_ns(lab, f"ip -o -d link show dev {gw}")
    trunk_index = sh(lab, "netnode", f"cat /sys/class/net/{naming.NODE_TRUNK}/ifindex").strip()
    assert f"{gw}@if{trunk_index}:" in detail and "macvlan mode private " in detail, detail
    assert f"link/ether {naming.port_mac(net['gateway_ip'])} " in detail
    assert f"alias cloud-repositorio=vlan{VLAN}" in detail and "state UP" in detail
    assert f"{net['gateway_ip']}/24" in gateway_ns(lab, f"ip -o -4 addr show dev {gw}")
    assert gateway_ns(lab, "ip -6 -o addr show").strip() == ""
    assert gw not in node_links(lab) and net["gateway_ip"] not in sh(lab, "netnode", "ip -4 route show table all")
    assert gateway_ns(lab, "sysctl -n net.ipv4.ip_forward").strip() == "0"       # it routes nothing
    assert "-A CR-INPUT -i gw_vlan+ -j REJECT" in gateway_ns(lab, "iptables -S CR-INPUT")
    assert "-A INPUT -j CR-INPUT" in gateway_ns(lab, "iptables -S INPUT")
    # the trunk: a veth into the node bridge, patched to br-int (the only port this system adds there)
    assert "cr-trunk@cr-trunk-br:" in node_links(lab) and "alias cloud-repositorio=trunk" in node_links(lab)
    ports = sh(lab, "netnode", "ovs-vsctl list-ports br-int").split()
    assert set(ports) - set(ports_before) == {naming.NODE_PATCH_INT}
    assert sh(lab, "netnode", f"ovs-vsctl get port {naming.NODE_PATCH_INT} tag").strip() == "[]"  # every VLAN
    assert sh(lab, "netnode", f"ovs-vsctl get port {naming.NODE_PATCH_INT} external_ids:cloud-repositorio"
                              ).strip().strip('"') == "trunk"
    assert set(sh(lab, "netnode", f"ovs-vsctl list-ports {naming.NODE_BRIDGE}").split()) == {
        naming.NODE_TRUNK_PORT, naming.NODE_PATCH}
    assert sh(lab, "netnode", f"ovs-vsctl get bridge {naming.NODE_BRIDGE} fail_mode").strip() == "secure"
    flows = sh(lab, "netnode", f"ovs-ofctl -O OpenFlow14 --no-stats dump-flows {naming.NODE_BRIDGE}")
    mine = [ln for ln in flows.splitlines() if f"cookie=0x{naming.node_vlan_flow_cookie(VLAN):016x}" in ln]
    assert len(mine) == 5 and len([ln for ln in flows.splitlines() if "cookie=" in ln]) == 5, flows
    # the DHCP namespace holds a macvlan of the gateway and that VLAN's dnsmasq
    ns = naming.dhcp_namespace(VLAN)
    inner = sh(lab, "netnode", f"ip -n {ns} -o -d link show dev {naming.dhcp_macvlan(VLAN)}")
    assert "macvlan mode private" in inner and f"link/ether {naming.port_mac(net['dhcp_server_ip'])} " in inner
    assert f"{net['dhcp_server_ip']}/24" in sh(lab, "netnode", f"ip -n {ns} -o -4 addr show")
    pidfile = naming.dnsmasq_files(VLAN)["pid"]
    pid = sh(lab, "netnode", f"cat {pidfile}").strip()
    assert f"--pid-file={pidfile}" in sh(lab, "netnode", f"tr '\\0' ' ' < /proc/{pid}/cmdline")
    assert sh(lab, "netnode", f"readlink /proc/{pid}/ns/net").strip() == \
        sh(lab, "netnode", f"ip netns exec {ns} readlink /proc/self/ns/net").strip()
    assert sh(lab, "netnode", f"readlink /proc/{pid}/ns/mnt").strip() == \
        sh(lab, "netnode", "readlink /proc/self/ns/mnt").strip()              # no mount namespace per VLAN
    assert "CR-FORWARD" in sh(lab, "netnode", "iptables -S FORWARD")
    assert "-A CR-INPUT -i cr-trunk -j DROP" in sh(lab, "netnode", "iptables -S CR-INPUT")
    # the product's scan finds exactly this VLAN and the trunk, with the details status compares
    found = found_keys(svc, node)
    keys = {k: d for k, d in found.items() if k.vlan == VLAN}
    assert {k.kind: d for k, d in keys.items()} == {
        "vlan": "", "gateway": f"{net['gateway_ip']}/24", "vlanflows": "5", "namespace": "", "dnsmasq": "alive"}
    assert {k.kind: d for k, d in found.items() if k.kind == "trunk"} == {"trunk": "ok"}
    assert {k.name for k in found if k.kind == "isolation"} == {"ipv4", "ipv6", "gateways-ipv4", "gateways-ipv6"}
    # a second set-up changes nothing it need not (same trunk, a fresh dnsmasq)
    trunk_index = sh(lab, "netnode", "cat /sys/class/net/cr-trunk/ifindex").strip()
    run(svc, vlan_manager.vlan_up_command(node, VLAN, cfg.bridge, 400, cfg.internet["uplink"]))
    assert sh(lab, "netnode", "cat /sys/class/net/cr-trunk/ifindex").strip() == trunk_index
    assert sh(lab, "netnode", f"cat {pidfile}").strip() != pid
    # removed twice: the second run finds nothing to do and succeeds; the last VLAN takes the trunk along
    for _ in range(2):
        run(svc, vlan_manager.vlan_down_command(node, VLAN, cfg.bridge))
    assert_node_empty(lab)
    assert set(sh(lab, "netnode", "ovs-vsctl list-ports br-int").split()) == set(ports_before)
    assert found_keys(svc, node) == {}


def test_internet_vlan_reservation_nat_made_checked_removed_twice(lab, svc):
    node, cfg = svc.config.network_node, svc.config
    run(svc, vlan_manager.internet_up_command(node, cfg.internet, cfg.bridge,
                                              [(VM_ID, "52:54:00:86:1d:00", "10.60.7.199")]))
    hostsdir = naming.dnsmasq_files(400)["hostsdir"]
    assert sh(lab, "netnode", f"cat {hostsdir}/vm{VM_ID}").strip() == "52:54:00:86:1d:00,10.60.7.199"
    assert "--comment cloud-repositorio -j MASQUERADE" in sh(lab, "netnode", "iptables -t nat -S POSTROUTING")
    assert "gw_vlan400@cr-trunk:" in sh(lab, "netnode", "ip -o link show dev gw_vlan400")  # routes to the uplink
    assert "gw_vlan400" not in gateway_ns(lab, "ip -o link show")
    keys = found_keys(svc, node)
    assert ("reservation", VM_ID) in {(k.kind, k.vm_id) for k in keys}
    assert {k.kind for k in keys if k.vlan == 400} == {"vlan", "gateway", "vlanflows", "namespace", "dnsmasq"}
    assert any(k.kind == "nat" and k.name == "10.60.7.0/24" for k in keys)
    assert any(k.kind == "trunk" for k in keys)
    # a second deploy keeps the running DHCP server as it is
    pid = sh(lab, "netnode", f"cat {naming.dnsmasq_files(400)['pid']}").strip()
    run(svc, vlan_manager.internet_up_command(node, cfg.internet, cfg.bridge,
                                              [(VM_ID + 1, "52:54:00:86:1d:01", "10.60.7.198")]))
    assert sh(lab, "netnode", f"cat {naming.dnsmasq_files(400)['pid']}").strip() == pid
    for _ in range(2):
        run(svc, vlan_manager.internet_release_command(node, cfg.internet, cfg.bridge, [VM_ID, VM_ID + 1]))
    assert "MASQUERADE" not in sh(lab, "netnode", "iptables -t nat -S POSTROUTING")
    assert_node_empty(lab)
    assert found_keys(svc, node) == {}


def test_a_vlan_of_the_old_layout_is_found_and_its_set_up_replaces_it(lab, svc):
    """A node upgraded from the layout before issue 19: OVS ports gw_vlanV and dhcpV-o with the mark."""
    node, cfg = svc.config.network_node, svc.config
    old, gone = VLAN + 1, VLAN + 2
    for v in (old, gone):
        sh(lab, "netnode", f"ovs-vsctl add-port br-int gw_vlan{v} tag={v} -- set interface gw_vlan{v} type=internal "
                           f"-- set port gw_vlan{v} external_ids:cloud-repositorio=vlan{v} && "
                           f"ip link add dhcp{v}-o type veth peer name dhcp{v}-x && "
                           f"ovs-vsctl add-port br-int dhcp{v}-o tag={v} "
                           f"-- set port dhcp{v}-o external_ids:cloud-repositorio=vlan{v}")
    try:
        found = found_keys(svc, node)
        assert {(k.kind, k.vlan, k.name) for k in found if k.kind == "oldport"} == {
            ("oldport", v, n) for v in (old, gone) for n in (f"gw_vlan{v}", f"dhcp{v}-o")}
        assert not [k for k in found if k.kind == "gateway"]    # an OVS internal port is no gateway now
        run(svc, vlan_manager.vlan_up_command(node, old, cfg.bridge, 400, cfg.internet["uplink"]))
        ports = sh(lab, "netnode", "ovs-vsctl list-ports br-int").split()
        assert f"gw_vlan{old}" not in ports and f"dhcp{old}-o" not in ports and f"gw_vlan{gone}" in ports
        assert f"gw_vlan{old}@" in gateway_ns(lab, f"ip -o link show dev gw_vlan{old}")
        assert f"dhcp{old}-o" not in sh(lab, "netnode", "ip -o link show")
        found = found_keys(svc, node)
        assert {k.vlan for k in found if k.kind == "oldport"} == {gone}
        assert found[next(k for k in found if k.kind == "gateway")] == f"{naming.link_network(old)['gateway_ip']}/24"
    finally:
        sweep(svc)  # the old layout's orphans go with the product's own removal
    assert not [p for p in sh(lab, "netnode", "ovs-vsctl list-ports br-int").split() if p.startswith(("gw_", "dhcp"))]
    assert "dhcp" not in sh(lab, "netnode", "ip -o link show")
    assert_node_empty(lab)


def test_a_gateway_in_the_nodes_own_namespace_is_shown_and_its_set_up_moves_it(lab, svc):
    """A node upgraded from the trunk layout before ``ns-cr-gateways``: its link gateway, a macvlan of
    the trunk in the node's own namespace, is found as such, and the VLAN's set-up moves it."""
    node, cfg = svc.config.network_node, svc.config
    net, gw = naming.link_network(VLAN), naming.gateway_port(VLAN)
    run(svc, vlan_manager.vlan_up_command(node, VLAN, cfg.bridge, 400, cfg.internet["uplink"]))
    try:
        gateway_ns(lab, f"ip link del {gw}")
        sh(lab, "netnode", f"ip link add link {naming.NODE_TRUNK} name {gw} type macvlan mode private && "
                           f"ip link set {gw} alias cloud-repositorio=vlan{VLAN} && "
                           f"ip addr add {net['gateway_ip']}/24 dev {gw} && ip link set {gw} up")
        found = found_keys(svc, node)
        assert found[next(k for k in found if k.kind == "gateway")] == f"{net['gateway_ip']}/24 root"
        run(svc, vlan_manager.vlan_up_command(node, VLAN, cfg.bridge, 400, cfg.internet["uplink"]))
        assert gw not in node_links(lab)
        assert f"{net['gateway_ip']}/24" in gateway_ns(lab, f"ip -o -4 addr show dev {gw}")
        found = found_keys(svc, node)
        assert found[next(k for k in found if k.kind == "gateway")] == f"{net['gateway_ip']}/24"
    finally:
        sweep(svc)
    assert_node_empty(lab)


def test_vm_made_checked_removed_twice(lab, svc):
    worker = svc.config.workers[0]
    home = svc.homes[worker]
    image = "func_img.qcow2"
    base = svc.config.flavor_image("cirros", {})
    assert svc.deployment.qcow_manager.ensure_base_image(worker, base)
    run(svc, overlay_create(worker, svc.config.worker_image_dir, base.rsplit("/", 1)[-1], image))
    vm = {"vm_id": VM_ID, "name": "func", "worker_ip": worker, "vnc_port": 5999,
          "qcow_image": f"~/vm_images/{image}", "flavor": {"cores": 1, "ram_gb": 0.125},
          "interfaces": [{"name": "eth0", "mac": "52:54:00:86:1d:00", "vlan_id": None},
                         {"name": "eth1", "mac": "52:54:00:86:1d:01", "vlan_id": VLAN}]}
    launch = vm_launcher.launch_vm_command(vm, home, vm_launcher.LaunchSettings.of(svc.config), password="Func2345")
    pid = run(svc, launch).stdout.split()[-1]
    wname = next(n for n, ip in lab.hosts.items() if ip == worker)
    assert f"-name cr-vm{VM_ID},process=cr-vm{VM_ID}" in sh(lab, wname, f"tr '\\0' ' ' < /proc/{pid}/cmdline")
    assert sh(lab, wname, f"ovs-vsctl get port tap{VM_ID}_1 tag").strip() == str(VLAN)
    assert f"tap{VM_ID}_0" not in sh(lab, wname, "ovs-vsctl list-ports br-int")  # unconnected: on nothing
    assert f"tap{VM_ID}_0" in sh(lab, wname, "ip -o link show")
    keys = {k: d for k, d in found_keys(svc, worker).items() if k.vm_id == VM_ID or k.name == image}
    kinds = {(k.kind, k.name): d for k, d in keys.items()}
    assert kinds[("qemu", None)] == pid and kinds[("port", f"tap{VM_ID}_1")] == str(VLAN)
    assert {("tap", f"tap{VM_ID}_0"), ("tap", f"tap{VM_ID}_1"), ("vmfiles", None), ("overlay", image)} <= set(kinds)
    for _ in range(2):
        run(svc, vm_launcher.stop_vm_command(vm, svc.config.bridge))
    assert sh(lab, wname, f"test -d /proc/{pid} && echo alive || echo gone").strip() == "gone"
    assert f"tap{VM_ID}" not in sh(lab, wname, "ip -o link show")
    assert f"tap{VM_ID}" not in sh(lab, wname, "ovs-vsctl list-ports br-int")
    assert sh(lab, wname, f"ls {naming.STATE_DIR} | grep 'vm{VM_ID}[.]' || true").strip() == ""
    for _ in range(2):
        run(svc, overlay_delete(worker, f"~/vm_images/{image}"))
    assert image not in sh(lab, wname, "ls /home/ubuntu/vm_images")
    assert not [k for k in found_keys(svc, worker) if k.vm_id == VM_ID or k.name == image]


def test_a_look_alike_that_this_system_did_not_make_is_never_found(lab, svc):
    # a user's own *_img.qcow2 without a marker, a gw_vlan port and a namespace someone else made
    worker = svc.config.workers[0]
    wname = next(n for n, ip in lab.hosts.items() if ip == worker)
    sh(lab, wname, "touch /home/ubuntu/vm_images/students_thesis_img.qcow2")
    sh(lab, "netnode", "ovs-vsctl add-port br-int gw_vlan3999 -- set interface gw_vlan3999 type=internal;"
                       "ip netns add ns-dhcp-vlan3998; ip link add crlookalike type veth peer name crlookalike-p; "
                       "ip link add link crlookalike name gw_vlan3997 type macvlan mode private")
    try:
        assert not [k for k in found_keys(svc, worker) if k.name == "students_thesis_img.qcow2"]
        assert not [k for k in found_keys(svc, svc.config.network_node) if k.vlan in (3999, 3998, 3997)]
        sweep(svc)
        assert "gw_vlan3997@crlookalike:" in sh(lab, "netnode", "ip -o link show")
        assert "gw_vlan3999" in sh(lab, "netnode", "ovs-vsctl list-ports br-int")
    finally:
        sh(lab, wname, "rm -f /home/ubuntu/vm_images/students_thesis_img.qcow2")
        sh(lab, "netnode", "ovs-vsctl --if-exists del-port br-int gw_vlan3999; ip netns del ns-dhcp-vlan3998; "
                           "ip link del crlookalike")


TAP_VM = 99902  # a bare TAP tap99902_1 stands for a VM's NIC: impairments and captures need only the TAP


@pytest.fixture
def bare_tap(lab, svc):
    worker = svc.config.workers[0]
    wname = next(n for n, ip in lab.hosts.items() if ip == worker)
    tap = naming.tap_name(TAP_VM, 1)
    sh(lab, wname, f"ip tuntap add dev {tap} mode tap && ip link set {tap} up")
    yield worker, wname, tap
    sh(lab, wname, f"ip link del {tap} 2>/dev/null || true")


def test_impairment_made_checked_removed_twice(lab, svc, bare_tap):
    from hosts import impairments
    from topology import impairment

    worker, wname, tap = bare_tap
    vm = {"vm_id": TAP_VM, "name": "func", "worker_ip": worker}
    ok, imp = impairment.parse("100ms", "5ms", "1", "10mbit")
    assert ok, imp
    run(svc, impairments.impair_command(vm, 1, imp))
    # from outside: the kernel's netem, or the user-space relay (a clsact filter, its veth, its process)
    qdiscs = sh(lab, wname, f"tc qdisc show dev {tap}")
    if "netem" in qdiscs:
        assert "delay 100ms  5ms" in qdiscs and "loss 1%" in qdiscs and "rate 10Mbit" in qdiscs, qdiscs
    else:
        assert "clsact" in qdiscs and "mirred" in sh(lab, wname, f"tc filter show dev {tap} egress")
        out_end, in_end = naming.relay_veth(TAP_VM, 1)
        assert out_end in sh(lab, wname, "ip -o link show") and in_end in sh(lab, wname, "ip -o link show")
        pid = sh(lab, wname, f"cat {naming.relay_pidfile(tap)}").strip()
        cmdline = sh(lab, wname, f"tr '\\0' ' ' < /proc/{pid}/cmdline")
        assert f"netem_relay.py --dev {tap} --via {in_end} " in cmdline and "--delay-ms 100" in cmdline, cmdline
    assert sh(lab, wname, f"cat {naming.impair_marker(tap)}").strip() == "delay 100ms, jitter 5ms, loss 1%, rate 10mbit"
    # the product's scan finds exactly it, with what status compares
    keys = {k: d for k, d in found_keys(svc, worker).items() if k.kind == "impair"}
    assert {(k.name, d) for k, d in keys.items()} == {(tap, "delay 100ms, jitter 5ms, loss 1%, rate 10mbit")}
    # changed in place: one impairment, the new one
    run(svc, impairments.impair_command(vm, 1, impairment.parse("20ms", "", "", "")[1]))
    assert {d for k, d in found_keys(svc, worker).items() if k.kind == "impair"} == {"delay 20ms"}
    # removed twice by the kind's own removal (what the orphan clean-up runs)
    for _ in range(2):
        for cmd in reconcile.removal_commands(svc.host_context(), list(keys)):
            run(svc, cmd)
    assert "netem" not in sh(lab, wname, f"tc qdisc show dev {tap}")
    assert "clsact" not in sh(lab, wname, f"tc qdisc show dev {tap}")
    assert "nx99902" not in sh(lab, wname, "ip -o link show")
    assert sh(lab, wname, "pgrep -af '[n]etem_relay.py' || true").strip() == ""
    assert sh(lab, wname, f"ls {naming.STATE_DIR} | grep -e 'impair-' -e 'netem_relay' || true").strip() == ""
    assert not [k for k in found_keys(svc, worker) if k.kind == "impair"]


def test_capture_made_checked_removed_twice(lab, svc, bare_tap):
    from hosts import capture

    worker, wname, tap = bare_tap
    vm = {"vm_id": TAP_VM, "name": "func", "worker_ip": worker}
    channel = svc.executor.open_interactive(capture.capture_command(vm, 1, ["icmp"], 10, 300, pcap=False))
    try:
        started, _status, detail = capture.wait_started(channel)
        assert started, detail
        procs = sh(lab, wname, "pgrep -af '[t]cpdump -i tap' || true")
        assert f"tcpdump -i {tap} -p -n -c 10 -l -- icmp" in procs, procs   # never promiscuous (-p)
        assert "PROMISC" not in sh(lab, wname, f"ip link show dev {tap}")
        keys = [k for k in found_keys(svc, worker) if k.kind == "capture"]
        assert [k.name for k in keys] == [tap]
        for _ in range(2):
            for cmd in reconcile.removal_commands(svc.host_context(), keys):
                run(svc, cmd)
        assert sh(lab, wname, "pgrep -af '[t]cpdump -i tap' || true").strip() == ""
        assert sh(lab, wname, f"ls {naming.STATE_DIR} | grep capture- || true").strip() == ""
        assert not [k for k in found_keys(svc, worker) if k.kind == "capture"]
        channel.settimeout(10)
        assert channel.recv_exit_status() == 0          # the capture's own script ended with it
    finally:
        channel.close()
