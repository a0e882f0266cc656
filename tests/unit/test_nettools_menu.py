"""Option 18 (captures and link impairments) and the script mode's ``capture`` / ``link impair``, in a real
terminal (pexpect) or a pipe, the hosts answered by the FakeExecutor (``tests/fake_cli.py``).

Every test runs twice: the menu on its own (embedded), and the menu as a client of a manager service
(``tests/fake_service.py``) that runs the use cases and relays the capture's stream."""
from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys

import pytest
import yaml
from fakes import LAB_LIKE, PCAP_BYTES, FakeExecutor
from menu_driver import CHOICE, REPO, MenuSession
from service_driver import ServiceProcess

from database import Database
from deployment_api import DeploymentAPI
from orchestrator_api import OrchestratorAPI

FAKE_CLI = REPO / "tests" / "fake_cli.py"


@pytest.fixture(params=["embedded", "service"])
def site(request, tmp_path):
    db = tmp_path / "database.yaml"
    shutil.copyfile(REPO / "database.yaml", db)
    cfg = tmp_path / "cluster.yaml"
    cfg.write_text(yaml.safe_dump(dict(LAB_LIKE, log_file=str(tmp_path / "menu.log"))))
    api = OrchestratorAPI(Database(str(db)), DeploymentAPI(FakeExecutor()))
    sid = api.create_slice("student", "lab1")[1]["slice_id"]
    ids = [api.add_vm_to_slice("student", sid, f"v{i}", "cirros", 1)[1]["vm_id"] for i in range(2)]
    api.create_link("student", sid, ids[0], "eth1", ids[1], "eth1")
    assert api.deploy_slice("student", sid)[0]
    site = {"dir": tmp_path, "db": db, "cfg": cfg, "log": tmp_path / "menu.log", "sid": sid, "ids": ids,
            "mode": request.param, "services": []}
    yield site
    for service in site["services"]:
        service.stop()


def service_socket(site, env: dict = None):
    """The socket of the site's manager service (started on first use, with ``env``), or None when embedded."""
    if site["mode"] != "service":
        return None
    if not site["services"]:
        site["services"].append(ServiceProcess(site["cfg"], site["db"], site["dir"] / "manager.sock", fake=True,
                                               env=env))
    return site["services"][0].sock


@pytest.fixture
def menu(site):
    menus = []

    def make(user: str, password: str, env: dict = None) -> MenuSession:
        m = MenuSession(site["cfg"], site["db"], site["log"], cwd=site["dir"], program=FAKE_CLI, env=env or {},
                        socket=service_socket(site, env))
        menus.append(m)
        m.login(user, password)
        return m

    yield make
    for m in menus:
        if m.p.isalive():
            m.p.terminate(force=True)


def link_of(site) -> dict:
    return yaml.safe_load(site["db"].read_text())["slices"][str(site["sid"])]["links"][0]


def impair(m, sid, link, delay="", jitter="", loss="", rate="") -> str:
    m.send("18", "Choice (1-4): ")
    m.send("3", "Slice ID: ")
    m.send(str(sid), "Link ID: ")
    m.send(str(link), "Delay (e.g. 100, 100ms, 0.5s): ")
    if delay not in ("", "0"):
        m.send(delay, "Jitter (e.g. 10ms, at most the delay): ")
        m.send(jitter, "Loss in % (e.g. 1.5): ")
    else:
        m.send(delay, "Loss in % (e.g. 1.5): ")
    m.send(loss, "Rate (e.g. 512kbit, 10mbit, 1gbit): ")
    return m.send(rate)


def test_a_student_sets_changes_and_clears_an_impairment_from_the_menu(site, menu):
    m = menu("student", "student")
    before = site["db"].read_bytes()
    screen = impair(m, site["sid"], 1, delay="-1")
    assert "Error: Delay must be a time from 0 to 10000 ms, like 100, 100ms, 0.5s or 250us (not '-1')" in screen
    screen = impair(m, site["sid"], 1, loss="150%")
    assert "Error: Loss must be a percentage from 0 to 100, like 1 or 2.5% (not '150%')" in screen
    assert site["db"].read_bytes() == before     # refused: nothing changed
    screen = impair(m, site["sid"], 1, delay="100ms", jitter="10", loss="1", rate="10mbit")
    assert "Link 1: delay 100ms, jitter 10ms, loss 1%, rate 10mbit (applied on 2 TAP(s))" in screen
    assert link_of(site)["impairment"] == {"delay_ms": 100, "jitter_ms": 10, "loss_pct": 1, "rate_kbit": 10000}
    view = m.send("5")
    assert f"(VLAN {link_of(site)['vlan_id']}), impaired: delay 100ms, jitter 10ms, loss 1%, rate 10mbit" in view
    m.send("18", "Choice (1-4): ")
    m.send("4", "Slice ID: ")
    listing = m.send(str(site["sid"]), "Link ID: ")
    assert "link 1: VM" in listing and "impairment: delay 100ms, jitter 10ms, loss 1%, rate 10mbit" in listing
    assert "Link 1: none (applied on 2 TAP(s))" in m.send("1")
    assert "impairment" not in link_of(site)
    m.exit()


def test_another_student_is_refused_in_the_menu(site, menu):
    ok = OrchestratorAPI(Database(str(site["db"])), DeploymentAPI(FakeExecutor())).create_user(
        "admin", "eve", "evepass1")
    assert ok[0], ok
    m = menu("eve", "evepass1")
    m.send("18", "Choice (1-4): ")
    m.send("1", "Slice ID: ")
    assert "Error: Slice not found or not authorized" in m.send(str(site["sid"]))
    m.exit()


def test_a_live_capture_shows_the_packets_and_returns_to_the_menu(site, menu):
    m = menu("student", "student")
    m.send("18", "Choice (1-4): ")
    m.send("1", "Slice ID: ")
    m.send(str(site["sid"]), "Capture on (e.g. 'link 1', or a NIC: '1001 eth1'): ")
    m.send("link 1", "Filter (tcpdump syntax, e.g. 'icmp' or 'tcp port 80'; empty: every packet): ")
    m.send("icmp", "Stop after how many packets? [50, at most 10000]: ")
    m.send("", "Stop after how many seconds? [60, at most 600]: ")
    screen = m.send("")
    assert f"Capturing on link 1, VM {site['ids'][0]} (v0) eth1 (tap{site['ids'][0]}_1 on 10.9.0.11), " \
           "filter: icmp; at most 50 packets or 60 s" in screen
    assert "IP 192.168.100.10 > 192.168.100.11: ICMP echo request, id 7, seq 1, length 64" in screen
    assert "IP 192.168.100.11 > 192.168.100.10: ICMP echo reply, id 7, seq 1, length 64" in screen
    assert "  2 packets captured" in screen and "(the capture ended: 2 line(s))" in screen
    m.send("18", "Choice (1-4): ")
    m.send("1", "Slice ID: ")
    m.send(str(site["sid"]), "Capture on (e.g. 'link 1', or a NIC: '1001 eth1'): ")
    m.send("link 1", "Filter (tcpdump syntax, e.g. 'icmp' or 'tcp port 80'; empty: every packet): ")
    m.send("; rm -rf /", "Stop after how many packets? [50, at most 10000]: ")
    m.send("", "Stop after how many seconds? [60, at most 600]: ")
    assert "Error: Not a capture filter: ';' is not allowed" in m.send("")
    m.exit()


def test_ctrl_bracket_stops_a_running_capture(site, menu):
    m = menu("student", "student", env={"FAKE_CLI_CAPTURE": "hold"})
    m.send("18", "Choice (1-4): ")
    m.send("1", "Slice ID: ")
    m.send(str(site["sid"]), "Capture on (e.g. 'link 1', or a NIC: '1001 eth1'): ")
    m.send(f"{site['ids'][1]} eth1", "Filter (tcpdump syntax, e.g. 'icmp' or 'tcp port 80'; empty: every packet): ")
    m.send("", "Stop after how many packets? [50, at most 10000]: ")
    m.send("", "Stop after how many seconds? [60, at most 600]: ")
    m.send("", "ICMP echo reply")
    m.p.send("\x1d")
    screen = m.wait(CHOICE)
    assert "(capture stopped: 2 line(s))" in screen
    assert "Quota: 2/6 VMs used" in m.send("1")   # the terminal reads lines again
    m.exit()


def test_a_pcap_capture_is_written_to_a_new_file_never_over_an_old_one(site, menu):
    m = menu("student", "student")
    target = site["dir"] / "ping.pcap"

    def pcap(path: str) -> str:
        m.send("18", "Choice (1-4): ")
        m.send("2", "Slice ID: ")
        m.send(str(site["sid"]), "Capture on (e.g. 'link 1', or a NIC: '1001 eth1'): ")
        m.send("link 1", "Filter (tcpdump syntax, e.g. 'icmp' or 'tcp port 80'; empty: every packet): ")
        m.send("", "Stop after how many packets? [1000, at most 100000]: ")
        m.send("4", "Stop after how many seconds? [60, at most 600]: ")
        m.send("", "Save to (a new file): ")
        return m.send(path)

    screen = pcap(str(target))
    assert f"Saved {len(PCAP_BYTES)} bytes of pcap to {target}" in screen
    data = target.read_bytes()
    assert data == PCAP_BYTES and struct.unpack("<I", data[:4])[0] == 0xA1B2C3D4
    assert oct(os.stat(target).st_mode & 0o777) == "0o600"
    screen = pcap(str(target))
    assert f"Error: {target} already exists: choose another name (nothing is ever overwritten)" in screen
    assert target.read_bytes() == PCAP_BYTES
    m.exit()


def run_script(site, *args, user="student", password=None) -> subprocess.CompletedProcess:
    """``cli.py ARGS --user USER`` (the password piped), on the site's database or through its service."""
    sock = service_socket(site)
    where = ["--socket", str(sock)] if sock else ["--config", str(site["cfg"]), "--db", str(site["db"])]
    env = dict(os.environ)
    env.pop("CLOUD_CONFIG", None)
    env.pop("CLOUD_DB", None)
    proc = subprocess.run([sys.executable, str(FAKE_CLI), *where, *args, "--user", user], capture_output=True,
                          text=True, timeout=60, env=env, input=f"{password or user}\n")
    assert "Traceback" not in proc.stdout + proc.stderr
    return proc


def test_script_mode_capture_and_link_impair(site, tmp_path):
    sid = str(site["sid"])
    proc = run_script(site, "link", "impair", sid, "1", "--delay", "100ms")
    assert proc.returncode == 0 and proc.stdout == "Link 1: delay 100ms (applied on 2 TAP(s))\n", proc.stderr
    proc = run_script(site, "link", "impair", sid, "1", "--loss", "150%")
    assert proc.returncode == 1 and proc.stderr.startswith("error: Loss must be a percentage from 0 to 100")
    assert link_of(site)["impairment"]["delay_ms"] == 100
    proc = run_script(site, "link", "impair", sid, "1", "--clear", user="admin")
    assert proc.returncode == 0 and "impairment" not in link_of(site)
    proc = run_script(site, "capture", sid, "link", "1", "--filter", "icmp", "--count", "2")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [x.decode().strip() for x in
                                        __import__("fakes").PING_LINES], proc.stdout
    out = tmp_path / "c.pcap"
    proc = run_script(site, "capture", sid, f"{site['ids'][1]}", "eth1", "--pcap", str(out))
    assert proc.returncode == 0 and out.read_bytes() == PCAP_BYTES, proc.stderr
    proc = run_script(site, "capture", sid, "link", "1", "--filter", "$(reboot)")
    assert proc.returncode == 1 and "Not a capture filter: '$' is not allowed" in proc.stderr
    assert run_script(site, "capture", sid, "link", "1", user="nobody").stderr.startswith(
        "error: login as nobody refused: ")
    assert OrchestratorAPI(Database(str(site["db"])), DeploymentAPI(FakeExecutor())).create_user(
        "admin", "eve", "evepass1")[0]
    for args in (["capture", sid, "link", "1"], ["link", "impair", sid, "1", "--delay", "5"],
                 ["link", "impair", sid, "1", "--clear"]):
        proc = run_script(site, *args, user="eve", password="evepass1")
        assert proc.returncode == 1 and proc.stderr == "error: Slice not found or not authorized\n", proc.stderr
    assert "impairment" not in link_of(site)


def test_the_readmes_tool_commands_are_real_commands():
    """The ``python3 cli.py capture`` / ``link impair`` lines the README shows parse as script-mode commands."""
    import shlex

    from cli import make_parser

    text = (REPO / "README.md").read_text()
    section = text.split("## Tools of a networking class: captures and link impairments", 1)[1].split("\n## ", 1)[0]
    found = [shlex.split(line.strip()[2:])[2:] for line in section.splitlines()
             if line.strip().startswith("$ python3 cli.py ")]
    assert {tuple(w[:2]) if w[0] == "link" else (w[0],) for w in found} == {("capture",), ("link", "impair")}
    parser = make_parser()
    for words in found:
        assert parser.parse_args(words).run.__name__ in ("run_capture", "run_link_impair"), words
