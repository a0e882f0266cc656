"""Tools of a networking class on the lab (SPEC §17): captures and link impairments, checked for real.

One slice of two cirros VMs joined by one link, deployed once for the whole
module; the tests run in order on it and the last one deletes it.  Every
check is from outside (the capture's own output, the pcap bytes parsed
here, what the workers hold) or from inside the VMs (ping and a timed HTTP
transfer between them, typed on their serial consoles).
"""
from __future__ import annotations

import re
import select
import time

import pytest
from labtools import console, host_of, icmp_of, make_api, pcap_packets, sh, wait_for_leases, wait_guest_configured

import naming
from usecases.reconcile import Reconciler

USER = "student"


class Net:
    """The module's slice: API, IDs, the VMs' link addresses."""

    def __init__(self, api, sid, vms, link, addr):
        self.api, self.sid, self.vms, self.link, self.addr = api, sid, vms, link, addr

    def vm(self, i: int) -> dict:
        return next(v for v in self.api.db.get_slice(self.sid)["vms"] if v["vm_id"] == self.vms[i]["vm_id"])


@pytest.fixture(scope="module")
def net(lab, tmp_path_factory):
    api = make_api(lab, tmp_path_factory.mktemp("nettools") / "database.yaml")
    ok, s = api.create_slice(USER, "tools")
    assert ok, s
    sid = s["slice_id"]
    vms = []
    for i in range(2):
        ok, vm = api.add_vm_to_slice(USER, sid, f"tool{i}", "cirros", 1, False)
        assert ok, vm
        vms.append(vm)
    ok, link = api.create_link(USER, sid, vms[0]["vm_id"], "eth1", vms[1]["vm_id"], "eth1")
    assert ok, link
    ok, msg = api.deploy_slice(USER, sid)
    assert ok, msg
    net = Net(api, sid, vms, link, {})
    wait_ready(lab, net)
    yield net
    for s in api.db.all_slices().values():
        api.delete_slice(s["owner"], s["slice_id"])
    api.executor.close()


def wait_ready(lab, net: Net) -> None:
    vlan = net.link["vlan_id"]
    got = wait_for_leases(lab, {(vlan, vm["interfaces"][1]["mac"].lower()) for vm in net.vms}, timeout=180)
    net.addr = {vm["vm_id"]: got[(vlan, vm["interfaces"][1]["mac"].lower())] for vm in net.vms}
    wait_guest_configured(lab, [(vm, "eth1") for vm in net.vms], timeout=180)


def wait_reachable(lab, net: Net, timeout: float = 240) -> None:
    """Wait until VM 0 (booted again) pings VM 1 over the link."""
    deadline, out = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        rc, out = console(lab, net.vm(0), f"ping -c 1 -W 3 {net.addr[net.vms[1]['vm_id']]}", timeout=30)
        if rc == 0:
            return
        time.sleep(2)
    raise AssertionError(f"VM 0 never reached VM 1 again: {out}")


def in_vm(lab, net: Net, i: int, command: str, timeout: float = 60) -> str:
    rc, out = console(lab, net.vm(i), command, timeout=timeout)
    assert rc in (0, 1), f"{command}: rc={rc}\n{out}"
    return out


def ping(lab, net: Net, count: int = 5, interval: float = 0.2, timeout: float = 60) -> tuple:
    """(loss %, min, avg RTT in ms) of a ping from VM 0 to VM 1 over the link."""
    out = in_vm(lab, net, 0, f"ping -c {count} -i {interval} -W 2 {net.addr[net.vms[1]['vm_id']]}", timeout)
    loss = re.search(r"(\d+)% packet loss", out)
    rtt = re.search(r"min/avg/max = ([\d.]+)/([\d.]+)/", out)
    assert loss, out
    return int(loss.group(1)), (float(rtt.group(1)) if rtt else None), (float(rtt.group(2)) if rtt else None)


def read_until(channel, pattern: bytes, count: int, timeout: float = 60) -> bytes:
    """Bytes of the channel's stdout until ``pattern`` was seen ``count`` times (or the channel ends)."""
    data, deadline = b"", time.monotonic() + timeout
    while data.count(pattern) < count and time.monotonic() < deadline:
        r, _, _ = select.select([channel], [], [], 1)
        if r:
            chunk = channel.recv(65536)
            if not chunk:
                break
            data += chunk
    return data


def read_all(channel, timeout: float = 60) -> bytes:
    data, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        chunk = channel.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def footprint(lab, net: Net) -> dict:
    """What the workers hold of captures and impairments (processes, pid files, veths, qdiscs, filters)."""
    out = {}
    for host in ("worker1", "worker2", "worker3"):
        out[host] = {
            "procs": sh(lab, host, "pgrep -af '[t]cpdump -i tap|[n]etem_relay.py --dev' || true").strip(),
            "files": [f for f in sh(lab, host, f"ls {naming.STATE_DIR} 2>/dev/null || true").split()
                      if f.startswith(("capture-", "impair-", "netem_relay"))],
            "veths": re.findall(r"nx\d+_\d+[ab]", sh(lab, host, "ip -o link show")),
            "netem": sh(lab, host, "tc qdisc show | grep netem || true").strip(),
        }
    return out


def kinds_found(net: Net, *names: str) -> list:
    ok, found = Reconciler(net.api.services).survey()
    assert ok, found
    return [f for f in found if f.key.kind in names]


# --- captures ------------------------------------------------------------------------------

def test_a_live_capture_on_the_link_shows_the_ping_between_the_two_vms(lab, net):
    a, b = net.addr[net.vms[0]["vm_id"]], net.addr[net.vms[1]["vm_id"]]
    ok, session = net.api.open_capture(USER, net.sid, f"link {net.link['link_id']}", "icmp", count=20, seconds=120)
    assert ok, session
    assert session.tap == naming.tap_name(net.vms[0]["vm_id"], 1) and session.mode == "text"
    host = host_of(lab, session.worker)
    assert f"tcpdump -i {session.tap} -p" in sh(lab, host, "pgrep -af tcpdump")   # the capture runs there
    assert kinds_found(net, "capture")                                            # and is a host object
    loss, _min, _avg = ping(lab, net, count=3)
    assert loss == 0
    lines = (session.early + read_until(session.channel, b"ICMP echo reply", 3, timeout=30)).decode()
    session.channel.close()
    assert len(re.findall(rf"IP {re.escape(a)} > {re.escape(b)}: ICMP echo request", lines)) >= 3, lines
    assert len(re.findall(rf"IP {re.escape(b)} > {re.escape(a)}: ICMP echo reply", lines)) >= 3, lines
    deadline = time.monotonic() + 10
    while sh(lab, host, "pgrep -af '[t]cpdump -i tap' || true").strip() and time.monotonic() < deadline:
        time.sleep(0.2)  # closing the channel stops the capture on the worker
    assert footprint(lab, net)[host]["procs"] == "" and not footprint(lab, net)[host]["files"]
    assert kinds_found(net, "capture") == []


def test_a_pcap_capture_on_a_nic_returns_bytes_that_parse_as_pcap_with_the_pings(lab, net):
    b = net.addr[net.vms[1]["vm_id"]]
    ok, session = net.api.open_capture(USER, net.sid, f"{net.vms[1]['vm_id']} eth1", "icmp", count=4, seconds=120,
                                       mode="pcap")
    assert ok, session
    ping(lab, net, count=2)
    data = session.early + read_all(session.channel, timeout=60)   # 4 packets: tcpdump ends by itself
    assert session.channel.recv_exit_status() == 0
    session.channel.close()
    icmp = [icmp_of(f) for f in pcap_packets(data)]
    assert len(icmp) == 4 and all(icmp), icmp
    assert [t for t, _src, dst in icmp if dst == b] == [8, 8] and [t for t, src, _ in icmp if src == b] == [0, 0]


def test_bad_filters_and_other_students_are_refused_and_leave_nothing(lab, net):
    before = footprint(lab, net)
    ok, msg = net.api.open_capture(USER, net.sid, "link 1", "; rm -rf /")
    assert not ok and "not allowed" in msg
    ok, msg = net.api.open_capture(USER, net.sid, "link 1", "icmp and and")   # only tcpdump can tell
    assert not ok and msg.startswith("Not a capture filter:"), msg
    ok, msg = net.api.open_capture(USER, net.sid, "link 1", "$(reboot)")
    assert not ok and "not allowed" in msg
    net.api.create_user("admin", "eve", "evepass1")
    assert net.api.open_capture("eve", net.sid, "link 1") == (False, "Slice not found or not authorized")
    assert net.api.set_impairment("eve", net.sid, 1, delay="100") == (False, "Slice not found or not authorized")
    assert net.api.clear_impairment("eve", net.sid, 1) == (False, "Slice not found or not authorized")
    assert footprint(lab, net) == before


# --- impairments ---------------------------------------------------------------------------

def test_a_100ms_delay_shows_in_the_rtt_inside_the_vm_and_loss_in_the_ping_statistics(lab, net):
    loss, _mn, base = ping(lab, net, count=5)
    assert loss == 0
    ok, res = net.api.set_impairment(USER, net.sid, 1, delay="100ms")
    assert ok, res
    loss, mn, avg = ping(lab, net, count=5)
    # each direction is delayed: the round trip grows by twice the delay
    assert loss == 0 and mn >= 199 and avg >= base + 190, (mn, avg, base)
    report = net.api.slice_status(USER, net.sid)[1]
    imp = [c for c in report.checks if c.key.kind == "impair"]
    assert len(imp) == 2 and all(c.ok and c.found == "delay 100ms" for c in imp), imp
    ok, res = net.api.set_impairment(USER, net.sid, 1, loss="30%")      # changed: loss only
    assert ok, res
    loss, _mn, avg = ping(lab, net, count=40, interval=0.1, timeout=120)
    assert 15 <= loss <= 90, loss   # 30 % each way: about half of the round trips lost
    assert avg is None or avg < 150  # the delay was replaced
    ok, res = net.api.clear_impairment(USER, net.sid, 1)
    assert ok, res
    loss, _mn, avg = ping(lab, net, count=10, interval=0.1)
    assert loss == 0 and avg < 100
    fp = footprint(lab, net)
    assert all(not f["procs"] and not f["veths"] and not f["netem"] and not f["files"] for f in fp.values()), fp


def transfer_seconds(lab, net: Net, kib: int) -> float:
    """Seconds VM 0 takes to fetch ``kib`` KiB from VM 1's web server over the link."""
    out = in_vm(lab, net, 0, f"time wget -q -O /dev/null http://{net.addr[net.vms[1]['vm_id']]}:8080/blob{kib}",
                timeout=120)
    m = re.search(r"real\s+(\d+)m\s*([\d.]+)s", out)
    assert m and "wget" not in out.replace("time wget", ""), out
    return int(m.group(1)) * 60 + float(m.group(2))


def test_a_rate_caps_the_throughput_between_the_vms(lab, net):
    kib = 192
    in_vm(lab, net, 1, f"mkdir -p /tmp/www && dd if=/dev/zero of=/tmp/www/blob{kib} bs=1024 count={kib} "
                       "2>/dev/null; httpd -p 8080 -h /tmp/www; echo served")
    free = transfer_seconds(lab, net, kib)
    ok, res = net.api.set_impairment(USER, net.sid, 1, rate="512kbit")
    assert ok, res
    capped = transfer_seconds(lab, net, kib)
    floor = kib * 1024 * 8 / 512_000   # 3.1 s at 512 kbit/s
    assert capped >= 0.9 * floor and capped > 2 * free, (free, capped, floor)
    ok, res = net.api.clear_impairment(USER, net.sid, 1)
    assert ok, res


def test_impairments_come_back_after_stop_start_and_after_repair(lab, net):
    ok, res = net.api.set_impairment(USER, net.sid, 1, delay="100", jitter="5ms")
    assert ok, res
    ok, msg = net.api.stop_vm(USER, net.sid)
    assert ok, msg
    fp = footprint(lab, net)
    assert all(not f["procs"] and not f["veths"] and not f["files"] for f in fp.values()), fp
    assert net.api.db.get_slice(net.sid)["links"][0]["impairment"]["delay_ms"] == 100  # kept in the slice
    ok, msg = net.api.start_vm(USER, net.sid)
    assert ok, msg
    wait_reachable(lab, net)
    _loss, mn, _avg = ping(lab, net, count=5)
    assert mn >= 189, mn   # 2 x (100 - 5) at least
    # an operator (or a crash) removes one end's impairment: status says so, repair brings it back
    vm = net.vm(1)
    host, tap = host_of(lab, vm["worker_ip"]), naming.tap_name(vm["vm_id"], 1)
    sh(lab, host, f"tc qdisc del dev {tap} root 2>/dev/null; tc qdisc del dev {tap} clsact 2>/dev/null; "
                  f"kill $(cat {naming.relay_pidfile(tap)}) 2>/dev/null; true")
    report = net.api.slice_status(USER, net.sid)[1]
    bad = [c for c in report.problems if c.key.kind == "impair"]
    assert [c.key.name for c in bad] == [tap], [(c.label, c.problem) for c in report.problems]
    ok, outcome = net.api.repair_slice(USER, net.sid)
    assert ok, outcome
    assert not [c for c in net.api.slice_status(USER, net.sid)[1].problems if c.key.kind == "impair"]
    _loss, mn, _avg = ping(lab, net, count=5)
    assert mn >= 189, mn


def test_delete_leaves_no_capture_and_no_impairment(lab, net):
    ok, session = net.api.open_capture(USER, net.sid, "link 1", count=1000, seconds=600)   # still running
    assert ok, session
    ok, msg = net.api.delete_slice(USER, net.sid)
    assert ok, msg
    session.channel.close()
    fp = footprint(lab, net)
    assert all(not f["procs"] and not f["veths"] and not f["netem"] and not f["files"] for f in fp.values()), fp
    assert kinds_found(net, "capture", "impair") == []
