"""Captures and link impairments without hosts: values, exact scripts, kinds, use cases, ownership, streams."""
from __future__ import annotations

import os
import shlex
import subprocess

import pytest
from uhelpers import WORKERS, build_slice, make_api, ok, script_of

import naming
import vm_launcher
from hosts import capture, impairments
from hosts.resources import ClusterView, Key
from menu import tools
from topology import impairment
from usecases import captures
from usecases.status import SliceReport

IMP = {"delay_ms": 100, "jitter_ms": 10, "loss_pct": 2.5, "rate_kbit": 1000}


# --- values ----------------------------------------------------------------------------------

@pytest.mark.parametrize("delay, jitter, loss, rate, want", [
    ("100", "", "", "", {"delay_ms": 100, "jitter_ms": 0, "loss_pct": 0, "rate_kbit": 0}),
    ("100ms", "10 ms", "2.5%", "1mbit", IMP),
    ("0.5s", "250us", "0", "64000bit", {"delay_ms": 500, "jitter_ms": 0.25, "loss_pct": 0, "rate_kbit": 64}),
    ("", "", "100", "10GBIT", {"delay_ms": 0, "jitter_ms": 0, "loss_pct": 100, "rate_kbit": 10_000_000}),
    ("10000", "10000", "", "8kbit", {"delay_ms": 10000, "jitter_ms": 10000, "loss_pct": 0, "rate_kbit": 8}),
    (100, 5.5, 1, None, {"delay_ms": 100, "jitter_ms": 5.5, "loss_pct": 1, "rate_kbit": 0}),
])
def test_impairment_values_are_read_strictly(delay, jitter, loss, rate, want):
    assert impairment.parse(delay, jitter, loss, rate) == (True, want)


def test_all_zero_is_no_impairment():
    assert impairment.parse("0", "", "0%", "0") == (True, None)


@pytest.mark.parametrize("args, says", [
    (("-1",), "Delay must be a time from 0 to 10000 ms"),
    (("10001",), "Delay must be from 0 to 10000 ms"),
    (("100 sec",), "Delay must be a time"),
    (("1e3",), "Delay must be a time"),
    (("10", "20"), "Jitter (20 ms) cannot be more than the delay (10 ms)"),
    (("", "", "150%"), "Loss must be a percentage from 0 to 100"),
    (("", "", "-1"), "Loss must be a percentage"),
    (("", "", "", "10mbps"), "Rate must be from 8kbit to 10gbit with its unit"),
    (("", "", "", "100"), "Rate must be from 8kbit to 10gbit with its unit"),
    (("", "", "", "7kbit"), "Rate must be from 8kbit"),
    (("", "", "", "11gbit"), "Rate must be from 8kbit"),
    (("", "", "", "8500bit"), "Rate must be a whole number of kbit"),
    (("1;reboot",), "Delay must be a time"),
])
def test_bad_impairment_values_are_refused_with_a_message(args, says):
    ok_, msg = impairment.parse(*args)
    assert not ok_ and msg.startswith(says), msg


def test_describe_netem_and_relay_arguments():
    assert impairment.describe(IMP) == "delay 100ms, jitter 10ms, loss 2.5%, rate 1mbit"
    assert impairment.describe({"rate_kbit": 1500}) == "rate 1500kbit"
    assert impairment.describe(None) == "none"
    assert impairment.netem_args(IMP) == ["limit", "1000", "delay", "100ms", "10ms", "loss", "2.5%", "rate",
                                          "1000kbit"]
    assert impairment.netem_args({"loss_pct": 1}) == ["limit", "1000", "loss", "1%"]
    assert impairment.relay_args(IMP) == ["--delay-ms", "100", "--jitter-ms", "10", "--loss-pct", "2.5",
                                          "--rate-kbit", "1000", "--limit", "1000"]


# --- builders --------------------------------------------------------------------------------

VM = {"vm_id": 1001, "name": "a", "worker_ip": "10.9.0.11", "vnc_port": 5901, "qcow_image": "~/vm_images/a_img.qcow2",
      "flavor": {"cores": 1, "ram_gb": 0.5, "disk_gb": 1, "image": "/tmp/x.img"},
      "interfaces": [{"name": "eth0", "mac": "52:54:00:03:e9:00"}, {"name": "eth1", "mac": "52:54:00:03:e9:01"}]}


def test_impair_script_tries_netem_then_the_relay_on_the_tap():
    cmd = impairments.impair_command(VM, 1, IMP)
    lines = cmd.script.splitlines()
    assert cmd.host == "10.9.0.11" and cmd.action == "impair" and cmd.target == "tap1001_1" and cmd.sudo
    assert "if ! err=$(tc qdisc replace dev tap1001_1 root netem limit 1000 delay 100ms 10ms loss 2.5% " \
           "rate 1000kbit 2>&1); then case \"$err\" in *nknown*)" in lines
    assert "ip link add nx1001_1a type veth peer name nx1001_1b" in lines
    started = lines.index("rm -f /run/cloud-repositorio/impair-tap1001_1.pid; err=$(mktemp); setsid python3 "
                          "/run/cloud-repositorio/netem_relay.py --dev tap1001_1 --via nx1001_1b --delay-ms 100 "
                          "--jitter-ms 10 --loss-pct 2.5 --rate-kbit 1000 --limit 1000 --pidfile "
                          "/run/cloud-repositorio/impair-tap1001_1.pid </dev/null >/dev/null 2>\"$err\" 8>&- 9>&- "
                          "& relay=$!")
    # the filter that steals the TAP's frames comes only once the relay has written its pid file
    assert lines[started + 1] == ("n=0; while [ ! -s /run/cloud-repositorio/impair-tap1001_1.pid ] && [ $n -lt 100 ] "
                                  "&& kill -0 \"$relay\" 2>/dev/null; do sleep 0.05; n=$((n+1)); done")
    assert lines[started + 2].startswith("if [ ! -s /run/cloud-repositorio/impair-tap1001_1.pid ]; then kill ")
    assert "exit 9; fi" in lines[started + 2] and lines[started + 3] == "tc qdisc add dev tap1001_1 clsact"
    assert ("tc filter replace dev tap1001_1 egress pref 1 protocol all bpf bytecode "
            "'4,32 0 0 4294963220,21 0 1 0,6 0 0 4294967295,6 0 0 0' action mirred egress redirect dev nx1001_1a"
            ) in lines
    assert lines[-1] == "printf '%s\\n' 'delay 100ms, jitter 10ms, loss 2.5%, rate 1mbit' > " \
                        "/run/cloud-repositorio/impair-tap1001_1"
    # what an earlier impairment left goes first: filter, relay, veth, netem, record
    first = lines.index("tc qdisc del dev tap1001_1 clsact 2>/dev/null || true")
    assert first < lines.index("ip link del nx1001_1a 2>/dev/null || true") < len(lines) - 2


def test_clearing_removes_both_forms_and_never_kills_by_name():
    cmd = impairments.impair_command(VM, 1, None)
    assert cmd.action == "unimpair" and "netem limit" not in cmd.script and "python3" not in cmd.script
    assert "tc qdisc del dev tap1001_1 clsact" in cmd.script and "ip link del nx1001_1a" in cmd.script
    assert "grep -q -- 'netem_relay.py --dev tap1001_1 '" in cmd.script   # the pid file's process, checked
    assert "pkill" not in cmd.script and "killall" not in cmd.script


def test_the_launch_applies_impairments_before_the_taps_come_up_and_is_unchanged_without():
    settings = vm_launcher.LaunchSettings(network_node="n")
    plain = vm_launcher.launch_vm_command(VM, "/home/ubuntu", settings, "Abc23456").script
    assert "netem" not in plain.replace("netem_relay", "") and "cr_relay_program" not in plain
    impaired = vm_launcher.launch_vm_command(VM, "/home/ubuntu", settings, "Abc23456", {1: IMP}).script
    lines = impaired.splitlines()
    apply_at = next(i for i, ln in enumerate(lines) if ln.startswith("if ! err=$(tc qdisc replace dev tap1001_1"))
    assert apply_at < lines.index("link set tap1001_1 up") and "tap1001_0 root netem" not in impaired
    assert impaired.count("cr_relay_program() {") == 1
    # the start holds the VM's lock on fd 8 (and the trunk's on 9): a relay it leaves running must not keep
    # them, or every later stop of the VM waits 20 s and fails ("being started or stopped by another command")
    detached = [ln for ln in lines if "setsid " in ln]
    assert detached and all("8>&- 9>&-" in ln for ln in detached), detached


def test_stop_ends_captures_and_relays_with_builtins_only_when_there_are_none():
    script = vm_launcher.stop_vm_command(VM, "br-int").script
    cap, imp = capture.teardown_lines(1001, 2), impairments.teardown_lines(1001, 2)
    assert len(cap) == 1 and len(imp) == 2 and all(line in script for line in cap + imp)   # one loop each
    assert cap[0].startswith("for pf in /run/cloud-repositorio/capture-tap1001_[0-9]*.*.pid; do "
                             "[ -e \"$pf\" ] || continue; t=${pf##*/capture-}; t=${t%%.*}; ")
    assert imp[0].startswith("found=; for f in /run/cloud-repositorio/impair-tap1001_[0-9]*; do "
                             "[ -e \"$f\" ] || continue; found=1; ")
    assert imp[1].startswith("[ -z \"$found\" ] || { keep=; ")
    assert capture.teardown_lines(1001, 0) == impairments.teardown_lines(1001, 0) == []


def test_the_teardown_loops_end_only_the_vms_own_captures_and_relays(tmp_path):
    """The loops run for real (bash, the state folder moved to a temporary one): VM 1001's pid files and
    records go, its relay (by its command line) is ended, a process that is not its relay is left alone, and
    so is everything of VM 10010 (whose names start the same)."""
    state = tmp_path / "state"
    state.mkdir()
    relay = subprocess.Popen(["bash", "-c", "exec -a 'netem_relay.py --dev tap1001_1 --via x' sleep 30"])
    other = subprocess.Popen(["sleep", "30"])
    try:
        files = {"impair-tap1001_1": "delay 5ms\n", "impair-tap1001_1.pid": f"{relay.pid}\n",
                 "impair-tap1001_0.pid": f"{other.pid}\n", "capture-tap1001_0.77.pid": f"{other.pid}\n",
                 "impair-tap10010_1": "x\n", "impair-tap10010_1.pid": "1\n", "capture-tap10010_1.5.pid": "1\n",
                 "netem_relay.py": "#\n"}
        for name, text in files.items():
            (state / name).write_text(text)
        script = "\n".join(capture.teardown_lines(1001, 2) + impairments.teardown_lines(1001, 2))
        script = script.replace(naming.STATE_DIR, str(state)).replace("ip link del", ": ip link del")
        subprocess.run(["bash", "-c", script], check=True, timeout=30)
        assert sorted(p.name for p in state.iterdir()) == ["capture-tap10010_1.5.pid", "impair-tap10010_1",
                                                          "impair-tap10010_1.pid", "netem_relay.py"]
        assert relay.wait(5) is not None and other.poll() is None
    finally:
        for p in (relay, other):
            p.kill()
            p.wait()


def test_capture_script_runs_tcpdump_without_promiscuous_mode_with_each_filter_word_quoted():
    words = ["icmp", "and", "(", "host", "192.168.100.10", ")"]
    cmd = capture.capture_command(VM, 1, words, 20, 30, pcap=False)
    lines = cmd.script.splitlines()
    assert cmd.action == "capture" and cmd.target == "tap1001_1" and cmd.timeout is None
    assert "timeout -s INT -k 3 30 tcpdump -i tap1001_1 -p -n -c 20 -l -- icmp and '(' host 192.168.100.10 ')' " \
           "3<&- &" in lines
    assert "if ! err=$(tcpdump -d -i tap1001_1 -- icmp and '(' host 192.168.100.10 ')' 2>&1 >/dev/null); " \
           "then printf '%s\\n' \"$err\" | grep -v '^Warning' | tail -n 1 >&2; exit 77; fi" in lines
    assert "pf=/run/cloud-repositorio/capture-tap1001_1.\"$$\".pid" in lines
    pcap = capture.capture_command(VM, 1, [], 1000, 60, pcap=True).script
    assert "timeout -s INT -k 3 60 tcpdump -i tap1001_1 -p -n -c 1000 -w - -U 3<&- &" in pcap
    assert "tcpdump -d" not in pcap   # no filter: nothing to compile


# --- kinds ------------------------------------------------------------------------------------

def test_the_kinds_parse_their_scans():
    imp, cap = impairments.Impairment(), capture.Capture()
    assert imp.parse("w", "tap1001_1 netem delay 100ms, loss 1%".split()).detail == "delay 100ms, loss 1%"
    assert imp.parse("w", "tap1001_1 relay rate 1mbit".split()).key == Key("impair", "w", vm_id=1001,
                                                                           name="tap1001_1")
    assert imp.parse("w", ["tap1001_1", "stale", "delay", "5ms"]).detail == "(not applied)"
    assert imp.parse("w", ["tap1001_1", "netem"]).detail == "(not recorded)"
    assert imp.parse("w", ["eth0", "netem", "x"]) is None
    assert cap.parse("w", ["capture-tap1002_3.4711.pid"]).key == Key("capture", "w", vm_id=1002, name="tap1002_3")
    assert cap.parse("w", ["capture-tap1002_3.x.pid"]) is None and cap.transient


def test_expected_impairments_are_both_ends_of_running_vms():
    s = {"slice_id": 1, "status": "running", "vms": [dict(VM, status="running"),
                                                     dict(VM, vm_id=1002, worker_ip="10.9.0.12", status="stopped")],
         "links": [{"link_id": 1, "vlan_id": 100, "vm1_id": 1001, "vm1_interface": "eth1", "vm2_id": 1002,
                    "vm2_interface": "eth1", "impairment": IMP}]}
    view = ClusterView(None, [s])
    assert impairments.Impairment().expected(view) == {
        Key("impair", "10.9.0.11", vm_id=1001, name="tap1001_1"): "delay 100ms, jitter 10ms, loss 2.5%, rate 1mbit"}
    s["vms"][1]["status"] = "running"
    assert len(impairments.Impairment().expected(view)) == 2
    assert impairments.impairments_of(s, s["vms"][1]) == {1: IMP}


# --- capture filters and targets ----------------------------------------------------------------

@pytest.mark.parametrize("expr", ["icmp", "tcp port 80 and host 192.168.100.10", "tcp[tcpflags] & tcp-syn != 0",
                                  "ether host 52:54:00:03:e9:01 or (udp and not port 53)", "", "net 10.0.0.0/8"])
def test_tcpdump_filters_pass(expr):
    assert captures.filter_words(expr) == (True, expr.split())


@pytest.mark.parametrize("expr", ["; rm -rf /", "icmp; reboot", "$(reboot)", "`id`", "icmp' or '1", "a\nb",
                                  "host \x1b[2J", "-w /etc/passwd", "\\x41", "x" * 301])
def test_forged_filters_are_refused(expr):
    ok_, msg = captures.filter_words(expr)
    assert not ok_ and msg.startswith(("Not a capture filter", "The filter is too long")), msg


def test_targets_and_limits():
    assert captures.parse_target("link 2") == (True, ("link", 2))
    assert captures.parse_target("1001 eth1") == (True, ("nic", 1001, "eth1"))
    assert captures.parse_target("1001:ETH0") == (True, ("nic", 1001, "eth0"))
    assert not captures.parse_target("vm1 eth1; ls")[0]
    assert captures.limit("", 50, 10000, "n") == (True, 50)
    assert captures.limit("10001", 50, 10000, "The packet count")[1] == \
        "The packet count must be a whole number from 1 to 10000"
    assert not captures.limit("0", 50, 10000, "n")[0] and not captures.limit("-5", 50, 10000, "n")[0]


# --- use cases over the fake executor ------------------------------------------------------------

def running_slice(tmp_path, owner="student"):
    api, db, ex = make_api(tmp_path)
    sid, ids = build_slice(api, user=owner, links=((0, "eth1", 1, "eth1"),))
    ok(api.deploy_slice(owner, sid))
    return api, db, ex, sid, ids


def test_setting_an_impairment_applies_it_to_both_ends_and_stores_it(tmp_path):
    api, db, ex, sid, ids = running_slice(tmp_path)
    ex.commands.clear()
    res = ok(api.set_impairment("student", sid, 1, delay="100ms", loss="1"))
    assert res["text"] == "delay 100ms, loss 1%" and "applied on 2 TAP(s)" in res["message"]
    done = [(c.action, c.target, c.host) for c in ex.commands]
    assert sorted(done) == sorted([("impair", f"tap{ids[0]}_1", WORKERS[0]), ("impair", f"tap{ids[1]}_1",
                                                                              WORKERS[1])])
    link = db.get_slice(sid)["links"][0]
    assert link["impairment"] == {"delay_ms": 100, "jitter_ms": 0, "loss_pct": 1, "rate_kbit": 0}
    assert db.get_slice(sid)["status"] == "running" and "busy" not in db.get_slice(sid)
    ok(api.clear_impairment("student", sid, 1))
    assert "impairment" not in db.get_slice(sid)["links"][0]


def test_bad_input_changes_nothing_and_runs_nothing(tmp_path):
    api, db, ex, sid, _ids = running_slice(tmp_path)
    before, n = open(db.path, "rb").read(), len(ex.commands)
    for kw in ({"delay": "-1"}, {"loss": "150%"}, {"rate": "fast"}, {"delay": "5", "jitter": "6"}):
        ok_, msg = api.set_impairment("student", sid, 1, **kw)
        assert not ok_ and msg, kw
    assert api.set_impairment("student", sid, 9, delay="1") == (False, f"Link 9 is not in slice {sid}")
    assert api.set_impairment("student", sid, "x", delay="1") == (False, "Link ID must be a number")
    assert open(db.path, "rb").read() == before and len(ex.commands) == n


def test_a_failing_end_puts_both_ends_back_and_the_link_keeps_its_impairment(tmp_path):
    api, db, ex, sid, ids = running_slice(tmp_path)
    ok(api.set_impairment("student", sid, 1, delay="10"))
    ex.fail("impair", target=f"tap{ids[1]}_1", err="RTNETLINK answers: Operation not permitted", times=1)
    ex.commands.clear()
    ok_, msg = api.set_impairment("student", sid, 1, delay="200")
    assert not ok_ and msg.startswith("Link 1 not changed: step 'impair") and "it keeps delay 10ms" in msg
    assert db.get_slice(sid)["links"][0]["impairment"]["delay_ms"] == 10 and db.get_slice(sid)["status"] == "running"
    restored = [c for c in ex.commands if c.action == "impair" and "delay 10ms" in c.script]
    assert len(restored) == 2


def test_a_design_slice_stores_the_impairment_and_deploy_applies_it(tmp_path):
    api, db, ex = make_api(tmp_path)
    sid, ids = build_slice(api, user="student", links=((0, "eth1", 1, "eth1"),))
    n = len(ex.commands)
    res = ok(api.set_impairment("student", sid, 1, rate="10mbit"))
    assert "applied when the slice is deployed" in res["message"] and len(ex.commands) == n
    ok(api.deploy_slice("student", sid))
    launches = [script_of(t) for t, c in zip(ex.texts(), ex.commands) if c.action == "start_vm"]
    assert all("root netem limit 1000 rate 10000kbit" in s for s in launches) and len(launches) == 2


def test_stop_start_and_repair_give_the_taps_their_impairment_again(tmp_path):
    api, db, ex, sid, ids = running_slice(tmp_path)
    ok(api.set_impairment("student", sid, 1, delay="50"))
    ok(api.stop_vm("student", sid, ids[1]))
    ex.commands.clear()
    ok(api.start_vm("student", sid, ids[1]))
    start = next(c for c in ex.commands if c.action == "start_vm")
    assert f"dev tap{ids[1]}_1 root netem limit 1000 delay 50ms" in start.script
    s = db.get_slice(sid)
    report = SliceReport(s, {WORKERS[0]: True, WORKERS[1]: True})
    from usecases.operations import impairment_repairs
    from usecases.status import Check
    key = Key("impair", WORKERS[0], vm_id=ids[0], name=f"tap{ids[0]}_1")
    report.checks = [Check(key, "impairment of", "delay 50ms", None)]
    cmds = impairment_repairs(report, s["vms"][0])
    assert [(c.action, c.target) for c in cmds] == [("impair", f"tap{ids[0]}_1")] and "delay 50ms" in cmds[0].script
    report.checks, report.extra = [], [Key("impair", WORKERS[1], vm_id=ids[1], name=f"tap{ids[1]}_2")]
    assert [(c.action, c.target) for c in impairment_repairs(report, s["vms"][1])] == [("unimpair",
                                                                                          f"tap{ids[1]}_2")]


class FakeChannel:
    """Just enough of a paramiko channel: stdout and stderr chunks, then the end."""

    def __init__(self, out=(), err=b"", status=0, started=True):
        self.out, self.err = list(out), (b"tcpdump: listening on tap\n" if started else b"") + err
        self.status, self.closed, self.shut = status, False, False
        self._r, self._w = os.pipe()
        os.write(self._w, b"x")  # always readable: select never blocks

    def fileno(self):
        return self._r

    @property
    def eof_received(self):
        return not self.out

    def settimeout(self, _t):
        pass

    def recv_stderr_ready(self):
        return bool(self.err)

    def recv_stderr(self, n):
        data, self.err = self.err[:n], self.err[n:]
        return data

    def recv_ready(self):
        return bool(self.out)

    def recv(self, _n):
        return self.out.pop(0) if self.out else b""

    def exit_status_ready(self):
        return not self.out

    def recv_exit_status(self):
        return self.status

    def shutdown_write(self):
        self.shut = True

    def close(self):
        self.closed = True
        os.close(self._r)
        os.close(self._w)


def test_open_capture_checks_everything_then_opens_the_channel(tmp_path):
    api, db, ex, sid, ids = running_slice(tmp_path)
    opened = []

    def fake_open(cmd):
        opened.append(cmd)
        return FakeChannel([b"12:00:00.1 IP 192.168.100.10 > 192.168.100.11: ICMP echo request\n"])
    ex.open_interactive = fake_open
    session = ok(api.open_capture("student", sid, "link 1", "icmp", count=5, seconds=10))
    assert (session.vm_id, session.tap, session.link_id, session.count, session.seconds) == \
        (ids[0], f"tap{ids[0]}_1", 1, 5, 10)
    assert opened[0].host == WORKERS[0] and shlex.split("tcpdump -i x")[0] in opened[0].script
    assert ok(api.open_capture("admin", sid, f"{ids[1]} eth1")).tap == f"tap{ids[1]}_1"   # an admin may
    for user, args, says in [
        ("admin", ("link 1", "; rm -rf /"), "Not a capture filter: ';' is not allowed"),
        ("student", ("link 7",), f"Link 7 is not in slice {sid}"),
        ("student", (f"{ids[0]} eth5",), f"VM {ids[0]} has no interface eth5"),
        ("student", ("eth1",), "Capture on 'link N'"),
        ("student", ("link 1", "", 0), "The packet count must be a whole number from 1 to 10000"),
        ("student", ("link 1", "", 5, 601), "The time limit (seconds) must be a whole number from 1 to 600"),
    ]:
        ok_, msg = api.open_capture(user, sid, *args)
        assert not ok_ and msg.startswith(says), (args, msg)
    assert len(opened) == 2


def test_another_student_is_refused_on_every_path(tmp_path):
    api, db, ex, sid, ids = running_slice(tmp_path, owner="admin")
    ex.open_interactive = lambda cmd: pytest.fail("no channel for another student")
    ok(api.create_user("admin", "eve", "evepass1"))
    before, n = open(db.path, "rb").read(), len(ex.commands)
    refused = (False, "Slice not found or not authorized")
    assert api.open_capture("eve", sid, "link 1") == refused
    assert api.open_capture("eve", sid, f"{ids[0]} eth1", mode="pcap") == refused
    assert api.set_impairment("eve", sid, 1, delay="100") == refused
    assert api.clear_impairment("eve", sid, 1) == refused
    assert open(db.path, "rb").read() == before and len(ex.commands) == n


def test_a_capture_that_does_not_start_says_why(tmp_path):
    api, db, ex, sid, _ids = running_slice(tmp_path)
    ex.open_interactive = lambda cmd: FakeChannel(err=b"tcpdump: syntax error in filter expression\n", status=77,
                                                  started=False)
    assert api.open_capture("student", sid, "link 1", "icmp and and") == \
        (False, "Not a capture filter: tcpdump: syntax error in filter expression")
    ok(api.stop_vm("student", sid))
    assert api.open_capture("student", sid, "link 1")[1].startswith(f"Slice {sid} is stopped")


# --- the menu's side of a capture -------------------------------------------------------------

def test_live_lines_are_cleaned_of_terminal_escapes_and_pcap_bytes_go_to_a_new_file(tmp_path):
    chan = FakeChannel([b"IP a > b: ICMP echo\n", b"IP c > d: A? evil\x1b[2J\x07.com.\n partial"],
                       err=b"2 packets captured\n")
    session = captures.CaptureSession(chan, 1, 1001, "a", "eth1", "tap1001_1", "w", 1, "", 10, 10, "text", 100)
    shown = []
    how, lines, summary = tools.run_live(session, shown.append, None)
    assert shown == ["IP a > b: ICMP echo", "IP c > d: A? evil?[2J?.com.", " partial"] and how == "ended"
    assert summary == ["2 packets captured"] and chan.closed and lines == 2
    ok_, (fd, path) = tools.create_new_file(str(tmp_path / "x.pcap"))
    data = [b"\xd4\xc3\xb2\xa1" + b"\0" * 20, b"y" * 100]
    session = captures.CaptureSession(FakeChannel(data), 1, 1001, "a", "eth1", "t", "w", None, "", 1, 1, "pcap", 50)
    how, size, _summary = tools.run_pcap(session, fd, None)
    os.close(fd)
    assert (how, size) == ("stopped", 50) and session.channel.shut   # the byte limit stops the capture
    assert open(path, "rb").read() == (data[0] + data[1])[:50] and oct(os.stat(path).st_mode & 0o777) == "0o600"
    assert tools.create_new_file(path)[1].endswith("already exists: choose another name (nothing is ever "
                                                   "overwritten)")
    os.symlink(path, tmp_path / "link.pcap")
    assert not tools.create_new_file(str(tmp_path / "link.pcap"))[0]
    assert naming.capture_mark("tap1001_1") == "tcpdump -i tap1001_1 -p"


def test_the_relay_program_sent_to_the_workers_runs(tmp_path):
    """The program as the scripts write it (its docstring left out) starts, parses its arguments and says
    why it cannot run on a device that does not exist (the lab found it dying at once before)."""
    program = tmp_path / "netem_relay.py"
    program.write_text(impairments.relay_program())
    assert '"""' not in program.read_text().split("\n", 3)[1]
    proc = subprocess.run(["python3", str(program), "--dev", "nosuchdev0", "--via", "nosuchdev1", "--delay-ms", "5",
                           "--pidfile", str(tmp_path / "p.pid")], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("netem_relay nosuchdev0: ") and "No such device" in proc.stderr, proc.stderr


def test_the_relay_line_delays_paces_and_drops_like_netem():
    from hosts import netem_relay as relay

    line = relay.Line(delay_ms=100, jitter_ms=0, loss_pct=0, rate_kbit=0, limit=2)
    line.offer(b"\0" * 10 + b"a" * 100, now=1.0)
    line.offer(b"\0" * 10 + b"b" * 100, now=1.0)
    line.offer(b"\0" * 10 + b"c" * 100, now=1.0)                 # the queue holds 2: dropped, as netem's limit
    assert line.next_wait(1.05) == pytest.approx(0.05) and line.due(1.05) == []
    assert [f[10:11] for f in line.due(1.1)] == [b"a", b"b"] and line.next_wait(2.0) is None
    paced = relay.Line(0, 0, 0, rate_kbit=8, limit=10)            # 8 kbit/s: 1000 bytes take 1 s
    paced.offer(b"\0" * 10 + b"x" * 1000, now=0.0)
    paced.offer(b"\0" * 10 + b"y" * 1000, now=0.0)
    assert [due for due, _f in paced.queue] == [pytest.approx(1.0), pytest.approx(2.0)]
    lossy = relay.Line(0, 0, loss_pct=100, rate_kbit=0, limit=10)
    lossy.offer(b"z" * 20, now=0.0)
    assert not lossy.queue


def test_the_relay_survives_a_tap_that_is_down_and_ends_when_it_is_gone(monkeypatch):
    import errno

    from hosts import netem_relay as relay

    class Sock:
        def __init__(self, errs):
            self.errs, self.sent = list(errs), []

        def send(self, frame):
            if self.errs:
                raise OSError(self.errs.pop(0), "x")
            self.sent.append(frame)

        def recv(self, _n):
            if self.errs:
                raise OSError(self.errs.pop(0), "x")
            raise BlockingIOError

    monkeypatch.setattr(relay, "gone", lambda dev: dev == "gone0")
    tx = Sock([errno.ENETDOWN])                    # the TAP was still down when the socket was bound
    assert relay.transmit(tx, [b"1", b"2"], "tap1") and tx.sent == [b"2"]
    assert not relay.transmit(Sock([errno.ENODEV]), [b"1"], "tap1")
    assert not relay.transmit(Sock([errno.ENETDOWN]), [b"1"], "gone0")
    line = relay.Line(0, 0, 0, 0, 10)
    assert relay.receive(Sock([errno.ENETDOWN]), line, 0.0, "nx1b")
    assert not relay.receive(Sock([errno.ENETDOWN]), line, 0.0, "gone0")
