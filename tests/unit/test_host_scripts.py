"""Every host script the product can generate is valid POSIX sh (dash) and bash.

The scripts run under ``sudo -n timeout … sh -c`` on Debian/Ubuntu hosts, where sh is
dash; a syntax error there would only show on a real cluster.
"""
from __future__ import annotations

import shutil
import subprocess

import pytest
from fakes import FakeExecutor

import vlan_manager
import vm_launcher
from deployment_api import DeploymentAPI
from hosts import capture, impairments, kinds, resources
from hosts.resources import HostContext
from qcow_manager import base_image_check, overlay_create, overlay_delete
from usecases import reconcile

IMPAIRED = {"delay_ms": 100, "jitter_ms": 10, "loss_pct": 2.5, "rate_kbit": 1000}
SHELLS = [s for s in ("dash", "bash") if shutil.which(s)]


def _sample_keys(kind, config) -> list:
    host = config.network_node if kind.role == "node" else config.workers[0]
    return [resources.Key(kind.name, host, vm_id=1001, vlan=100, name="tap1001_0"),
            resources.Key(kind.name, host, vm_id=1002, vlan=400, name="odd name's_img.qcow2")]


def sample_vm(internet: bool = True) -> dict:
    api = DeploymentAPI(FakeExecutor())
    ifaces = [i.to_dict() for i in api.build_interfaces(1001, 3, internet)]
    ifaces[1]["vlan_id"], ifaces[1]["link_id"] = 100, 1
    return {"vm_id": 1001, "name": "web-1", "worker_ip": "10.9.0.11", "vnc_port": 5901,
            "qcow_image": "~/vm_images/web-1_img.qcow2", "interfaces": ifaces,
            "flavor": {"cores": 1, "ram_gb": 0.5, "disk_gb": 1, "image": "/tmp/x.img"}}


def all_commands() -> list:
    vm = sample_vm()
    inet = {"vlan": 400, "cidr": "10.60.7.0/24", "gateway": "10.60.7.1", "uplink": "ens3"}
    config = FakeExecutor().config
    ctx = HostContext(config, {h: "/home/ubuntu" for h in config.hosts})
    scans = [reconcile.scan_command(ctx, h) for h in (config.workers[0], config.network_node)]
    every_key = [key for k in kinds.kinds() for key in _sample_keys(k, config)]
    removals = reconcile.removal_commands(ctx, every_key)
    return scans + removals + [
        vm_launcher.launch_vm_command(vm, "/home/ubuntu", vm_launcher.LaunchSettings(network_node="n"),
                                      password="Abc23456"),
        vm_launcher.launch_vm_command(vm, "/home/ubuntu", vm_launcher.LaunchSettings(network_node="n"),
                                      password="Abc23456", impairments_by_index={1: IMPAIRED, 2: {"loss_pct": 1}}),
        vm_launcher.launch_vm_command(vm, "/home/ubuntu", vm_launcher.LaunchSettings(network_node="n", nice=10),
                                      password="Abc23456"),
        vm_launcher.stop_vm_command(vm, "br-int"),
        impairments.impair_command(vm, 1, IMPAIRED),
        impairments.impair_command(vm, 1, None),
        capture.capture_command(vm, 1, ["icmp", "and", "(", "host", "192.168.100.10", ")"], 10, 30, pcap=False),
        capture.capture_command(vm, 1, [], 1000, 60, pcap=True),
        vlan_manager.vlan_up_command("n", 100, "br-int", 400, "ens3"),
        vlan_manager.vlan_up_command("n", 4000, "br-int", 400, "ens3"),
        vlan_manager.vlan_down_command("n", 100, "br-int"),
        vlan_manager.internet_up_command("n", inet, "br-int", [(1001, "52:54:00:03:e9:00", "10.60.7.101")]),
        vlan_manager.internet_release_command("n", inet, "br-int", [1001]),
        vlan_manager.internet_release_command("n", inet, "br-int", []),
        base_image_check("w", "~/vm_images", "base.img"),
        overlay_create("w", "~/vm_images", "base.img", "web-1_img.qcow2"),
        overlay_delete("w", "~/vm_images/web-1_img.qcow2"),
    ]


@pytest.mark.skipif(not SHELLS, reason="no dash or bash to check syntax with")
@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("index", range(len(all_commands())))
def test_generated_script_parses(shell, index):
    cmd = all_commands()[index]
    executor = FakeExecutor()
    for text in (cmd.script, executor.render(cmd)):
        proc = subprocess.run([shell, "-n", "-c", text], capture_output=True, text=True)
        assert proc.returncode == 0, f"{cmd.step}: {proc.stderr}\n{text}"


def test_sudo_wraps_the_whole_script_once():
    cmd = vm_launcher.stop_vm_command(sample_vm(), "br-int")
    text = FakeExecutor().render(cmd)
    assert text.startswith("sudo -n timeout -k 2 27 sh -c '") and text.count("sudo") == 1
