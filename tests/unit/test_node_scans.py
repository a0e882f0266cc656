"""The network node's scans run for real (sh, awk, sed) on the output of ``ip``, ``ovs-vsctl`` and
``ovs-ofctl`` as this kernel and Open vSwitch print it (fake commands on PATH replay captured text)."""
from __future__ import annotations

import os
import shutil
import subprocess
import textwrap

import pytest
from fakes import FakeExecutor

import naming
from hosts import kinds
from hosts.resources import HostContext

pytestmark = pytest.mark.skipif(not shutil.which("awk") or not shutil.which("sed"), reason="needs awk and sed")

MACVLANS = (
    "4: gw_vlan401@cr-trunk: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state UP mode DEFAULT "
    "group default qlen 1000\\    link/ether 02:00:ac:11:91:01 brd ff:ff:ff:ff:ff:ff promiscuity 0  allmulti 0 "
    "minmtu 68 maxmtu 65535 \\    macvlan mode private bcqueuelen 1000 usedbcqueuelen 1000 addrgenmode eui64 "
    "numtxqueues 1 numrxqueues 1 gso_max_size 65536 gso_max_segs 65535 \\    alias cloud-repositorio=vlan401\n"
    "5: gw_vlan402@cr-trunk: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 state UP\\    link/ether "
    "02:00:ac:11:92:01 brd ff:ff:ff:ff:ff:ff \\    macvlan mode private \\    alias cloud-repositorio=vlan402\n"
    # look-alikes: another lower device, no alias, another VLAN's alias, not a gw_vlan name
    "6: gw_vlan3997@crlookalike: <BROADCAST> mtu 1500 \\    macvlan mode private "
    "\\    alias cloud-repositorio=vlan3997\n"
    "7: gw_vlan3996@cr-trunk: <BROADCAST> mtu 1500 \\    macvlan mode private\n"
    "8: gw_vlan3995@cr-trunk: <BROADCAST> mtu 1500 \\    macvlan mode private \\    alias cloud-repositorio=vlan3994\n"
    "9: mine@cr-trunk: <BROADCAST> mtu 1500 \\    macvlan mode private \\    alias cloud-repositorio=vlan1\n")
ADDRS = ("4: gw_vlan401    inet 172.17.145.1/24 scope global gw_vlan401\\       valid_lft forever\n"
         "3: eth0    inet 10.250.0.10/24 scope global eth0\\       valid_lft forever\n")
FLOWS = (' cookie=0x4352000200000191, priority=100,in_port="cr-node-patch",dl_vlan=401,dl_dst=02:00:ac:11:91:01 '
         'actions=strip_vlan,output:"cr-trunk-br"\n') * 5 + (
         ' cookie=0x4352000200000f3d, priority=100,in_port="cr-trunk-br",dl_src=02:00:ac:1f:3d:01 '
         'actions=mod_vlan_vid:3901,output:"cr-node-patch"\n') * 2


def fake_bin(tmp_path, scripts: dict) -> str:
    """A directory of executables named after commands, each printing its canned answer."""
    d = tmp_path / "bin"
    d.mkdir(exist_ok=True)
    for name, body in scripts.items():
        path = d / name
        path.write_text("#!/bin/sh\n" + textwrap.dedent(body))
        path.chmod(0o755)
    return str(d)


def scan(tmp_path, kind_name: str, scripts: dict) -> dict:
    ctx = HostContext(FakeExecutor().config, {})
    kind = kinds.kind(kind_name)
    env = dict(os.environ, PATH=fake_bin(tmp_path, scripts) + os.pathsep + os.environ["PATH"])
    out = subprocess.run(["sh", "-c", kind.scan(ctx, "n")], capture_output=True, text=True, env=env, timeout=20)
    assert out.returncode == 0, out.stderr
    found = {}
    for line in out.stdout.splitlines():
        words = line.split()
        assert words[0] == kind_name, line
        f = kind.parse("n", words[1:])
        if f is not None:
            found[f.key] = f.detail
    return found


# inside ns-cr-gateways: a link VLAN's gateway shows its lower device (in the node's namespace) by index
NS_MACVLANS = (
    "2: gw_vlan401@if4: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state UP mode DEFAULT "
    "group default qlen 1000\\    link/ether 02:00:ac:11:91:01 brd ff:ff:ff:ff:ff:ff link-netnsid 0 "
    "promiscuity 0 \\    macvlan mode private bcqueuelen 1000 \\    alias cloud-repositorio=vlan401\n"
    "3: gw_vlan403@if4: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 state UP\\    link/ether "
    "02:00:ac:11:93:01 brd ff:ff:ff:ff:ff:ff link-netnsid 0 \\    macvlan mode private \\    "
    "alias cloud-repositorio=vlan403\n"
    "4: gw_vlan3994@if4: <BROADCAST> mtu 1500 \\    macvlan mode private \\    alias cloud-repositorio=vlan3993\n")
NS_ADDRS = ("2: gw_vlan401    inet 172.17.145.1/24 scope global gw_vlan401\\       valid_lft forever\n"
            "3: gw_vlan403    inet 172.17.147.1/24 scope global gw_vlan403\\       valid_lft forever\n")
ROOT_INTERNET = ("10: gw_vlan400@cr-trunk: <UP> mtu 1500 \\    macvlan mode private \\    "
                 "alias cloud-repositorio=vlan400\n")


def _ip_script(macvlans: str = MACVLANS, ns_macvlans: str = "") -> dict:
    """Fake ``ip`` (the gateways' namespace's answers when run by the fake ``nsenter``, which fails
    when there is no such namespace) and ``nsenter``."""
    nsenter = 'shift; IN_NS=1 exec "$@"\n' if ns_macvlans else "exit 1\n"
    return {"ip": f"""\
        if [ -n "$IN_NS" ]; then macvlans={_sq(ns_macvlans)}; addrs={_sq(NS_ADDRS)}
        else macvlans={_sq(macvlans)}; addrs={_sq(ADDRS)}; fi
        case "$*" in
          *"type macvlan"*) printf '%s' "$macvlans" ;;
          *"-4 addr show"*) printf '%s' "$addrs" ;;
        esac
        """, "nsenter": nsenter}


def _sq(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def test_the_gateway_scan_finds_only_marked_macvlans_of_the_trunk(tmp_path):
    """Link gateways in the node's own namespace (the layout before ``ns-cr-gateways``) say ``root``."""
    found = scan(tmp_path, "gateway", _ip_script())
    assert {(k.vlan, d) for k, d in found.items()} == {(401, "172.17.145.1/24 root"), (402, "- root")}


def test_the_gateway_scan_reads_the_gateways_namespace_first(tmp_path):
    found = scan(tmp_path, "gateway", _ip_script(MACVLANS + ROOT_INTERNET, NS_MACVLANS))
    assert {(k.vlan, d) for k, d in found.items()} == {
        (401, "172.17.145.1/24"),  # in the namespace: what is expected (its old copy in root is not read)
        (403, "172.17.147.1/24"),
        (402, "- root"),           # only in root: a repair moves it
        (400, "-")}                # the internet VLAN's gateway belongs in root


def test_the_vlan_flows_scan_counts_each_vlans_flows(tmp_path):
    found = scan(tmp_path, "vlanflows", {"ovs-ofctl": f"printf '%s' {_sq(FLOWS)}\n"})
    assert {(k.vlan, d) for k, d in found.items()} == {(401, "5"), (3901, "2")}


@pytest.mark.parametrize("patch_bridge,detail", [("br-int", "ok"), ("", "detached")])
def test_the_trunk_scan_says_whether_it_is_attached(tmp_path, patch_bridge, detail):
    scripts = {
        "ip": f"printf '%s\\n' {_sq('3: cr-trunk@cr-trunk-br: <UP> mtu 1500 alias cloud-repositorio=trunk')}\n",
        "ovs-vsctl": f"""\
            case "$*" in
              *"port-to-br {naming.NODE_TRUNK_PORT}"*) echo {naming.NODE_BRIDGE} ;;
              *"port-to-br {naming.NODE_PATCH_INT}"*) [ -n "{patch_bridge}" ] && echo {patch_bridge} || exit 1 ;;
            esac
            """}
    found = scan(tmp_path, "trunk", scripts)
    assert {(k.name, d) for k, d in found.items()} == {("cr-trunk", detail)}


def test_an_unmarked_trunk_is_not_ours(tmp_path):
    scripts = {"ip": "printf '%s\\n' '3: cr-trunk@cr-trunk-br: <UP> mtu 1500'\n", "ovs-vsctl": "echo br-int\n"}
    assert scan(tmp_path, "trunk", scripts) == {}


def _churn(state: str, seconds: float) -> subprocess.Popen:
    """Other VLANs' markers made and removed as fast as the shell can, as parallel set-ups and removals do."""
    loop = (f"end=$(($(date +%s) + {int(seconds) + 1})); while [ $(date +%s) -lt $end ]; do "
            f"for v in 1 2 3 4 5 6 7 8; do : > {state}/vlan$v.owner; done; "
            f"for v in 1 2 3 4 5 6 7 8; do rm -f {state}/vlan$v.owner; done; done")
    return subprocess.Popen(["sh", "-c", loop])


def test_a_vlan_marker_is_seen_while_other_vlans_come_and_go(tmp_path):
    import vlan_manager
    state = str(tmp_path)
    check = vlan_manager.any_vlan_marker(state)
    assert subprocess.run(["sh", "-c", check]).returncode == 1            # no marker: the node is unused
    (tmp_path / "vlan4000.owner").write_text("cloud-repositorio\n")
    assert subprocess.run(["sh", "-c", check]).returncode == 0
    # VLAN 4000 stays the whole time: the trunk and the chains must stay too, however the other
    # markers change under the glob (``ls DIR/vlan*.owner`` fails when one named file vanishes)
    churn = _churn(state, 3)
    try:
        misses = sum(subprocess.run(["sh", "-c", f"for i in $(seq 100); do {check} || echo miss; done"],
                                    capture_output=True, text=True).stdout.count("miss") for _ in range(3))
    finally:
        churn.wait()
    assert misses == 0


def test_teardowns_if_unused_test_the_markers_without_ls():
    import vlan_manager
    for script in (vlan_manager.trunk_teardown_if_unused("br-int"), vlan_manager.isolation_teardown_if_unused()):
        assert vlan_manager.any_vlan_marker() in script and "ls " not in script
