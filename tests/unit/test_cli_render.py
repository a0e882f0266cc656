"""cli.py rendering: the documented formats of options 4 and 5."""
from __future__ import annotations

import copy

from test_models import SEED_001_SLICE
from uhelpers import build_slice, make_api, ok

from cli import render_interfaces, render_slices

WIDE = "=" * 70


def _sample():
    s = copy.deepcopy(SEED_001_SLICE)
    s["status"] = "design"
    s["name"] = "lab1"
    for vm in s["vms"]:
        vm["status"] = "design"
        vm["pid"] = None
    s["vms"][0]["interfaces"][0].update(vlan_id=None, ip_config=None)
    s["vms"][1]["interfaces"].append({"name": "eth2", "vlan_id": None, "mac": "52:54:00:03:ea:02",
                                      "ip_config": None, "link_id": None})
    return s


def test_render_slices_documented_lines():
    lines = render_slices([_sample()], show_owner=False)
    assert lines == [
        "\n" + WIDE,
        "Slice 1000 (lab1) [design]: 2 VMs, 1 Links, VLAN pool: 100-119",
        "  \u2514\u2500 VM 1001: vm1 (VNC: 5901, Worker: 10.0.10.1, Disk: 1GB)",
        "      eth0: MAC 52:54:00:03:e9:00",
        "      eth1: MAC 52:54:00:03:e9:01, VLAN: 100, Link: 1",
        "  \u2514\u2500 VM 1002: vm2 (VNC: 5902, Worker: 10.0.10.2, Disk: 1GB)",
        "      eth0: MAC 52:54:00:03:ea:00",
        "      eth1: MAC 52:54:00:03:ea:01, VLAN: 100, Link: 1",
        "      eth2: MAC 52:54:00:03:ea:02, unconnected",
        "  Link 1: VM1001.eth1 <-> VM1002.eth1 (VLAN 100)",
        WIDE,
    ]


def test_render_slices_seed_example_without_name_with_owner():
    lines = render_slices([copy.deepcopy(SEED_001_SLICE)], show_owner=True)
    assert lines[1] == "Slice 1000 [running]: 2 VMs, 1 Links, VLAN pool: 100-119, owner: admin"
    assert lines[2] == "  \u2514\u2500 VM 1001: vm1 (VNC: 5901, Worker: 10.0.10.1, Disk: 1GB)"
    assert lines[3].startswith("      eth0: MAC 52:54:00:03:e9:00, VLAN: 400")
    assert "Link" not in lines[3] and "unconnected" not in lines[3]


def test_render_slices_empty():
    assert render_slices([], show_owner=False) == ["\nNo Slices found."]


def test_render_interfaces_seed_listing():
    s = {"vms": [
        {"vm_id": 1001, "name": "web", "interfaces": [
            {"name": "eth0", "vlan_id": None, "link_id": None},
            {"name": "eth1", "vlan_id": None, "link_id": None}]},
        {"vm_id": 1002, "name": "db", "interfaces": [
            {"name": "eth0", "vlan_id": 400, "link_id": None},
            {"name": "eth1", "vlan_id": None, "link_id": None}]}]}
    assert render_interfaces(s) == [
        "\nAvailable VMs and interfaces:",
        "  VM 1001: web",
        "    - eth1 (unconnected)",
        "  VM 1002: db",
        "    - eth1 (unconnected)",
    ]


def test_render_interfaces_connected():
    lines = render_interfaces(_sample())
    assert lines == [
        "\nAvailable VMs and interfaces:",
        "  VM 1001: vm1",
        "    - eth1 (connected to Link 1)",
        "  VM 1002: vm2",
        "    - eth1 (connected to Link 1)",
        "    - eth2 (unconnected)",
    ]


def test_render_of_a_real_designed_slice(tmp_path):
    api, _db, _ex = make_api(tmp_path)
    sid, _ids = build_slice(api, name="lab1", vms=(("vm1", 1, False), ("vm2", 1, False)),
                            links=((0, "eth1", 1, "eth1"),))
    slices = ok(api.list_slices("admin"))
    lines = render_slices(slices, show_owner=False)
    assert lines[1] == "Slice 1000 (lab1) [design]: 2 VMs, 1 Links, VLAN pool: 100-119"
    assert lines[2] == "  \u2514\u2500 VM 1001: vm1 (VNC: 5901, Worker: 10.9.0.11, Disk: 1GB)"
    assert lines[4] == "      eth1: MAC 52:54:00:03:e9:01, VLAN: 100, Link: 1"
    assert lines[5] == "  \u2514\u2500 VM 1002: vm2 (VNC: 5902, Worker: 10.9.0.12, Disk: 1GB)"


def test_the_boot_log_reaches_the_terminal_escaped(monkeypatch, capsys):
    """Issue 17 item 12: ESC[6n in a VM's boot log would make the terminal type into the menu."""
    import io

    import cli

    class Api:
        def boot_log(self, username, slice_id, vm_id, lines=40):
            return True, "login: \x1b[6n\x1b]2;owned\x07 done\r\n\x9b2J\x00end"

    answers = io.StringIO("1000\n1001\n2\n")
    answers.isatty = lambda: True
    monkeypatch.setattr("sys.stdin", answers)
    menu = cli.CLI(Api())
    menu.user = {"username": "ana", "role": "student"}
    menu.open_console()
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x9b" not in out and "\x07" not in out and "\x00" not in out
    assert "login: \\x1b[6n\\x1b]2;owned\\x07 done" in out and "\\x9b2J\\x00end" in out
