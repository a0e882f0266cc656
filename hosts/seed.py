"""NoCloud seeds: what a guest is told at first boot (SPEC §10).

Every VM gets a small vfat disk labelled lowercase ``cidata`` (made on its
worker without mounting: ``mkfs.vfat`` + ``mcopy``), attached read-only:

* ``meta-data``: JSON (cloud-init and CirrOS 0.6 both read it):
  ``instance-id`` and ``local-hostname`` = the VM's name;
* ``user-data``: for cloud-init guests a ``#cloud-config`` that gives the
  flavor's default user the VM's password, no expiry, password login on;
  for CirrOS (which runs user-data only when it is a ``#!`` script) a shell
  script that sets the ``cirros`` user's password;
* ``network-config`` (v2): every NIC matched by its MAC with DHCP; only the
  internet NIC (eth0 on the internet VLAN) may install routes, so a VM's
  default route is always the internet one.  Every NIC is ``optional`` (an
  unconnected NIC never makes the guest wait for the network).

The password never appears in a command line or a log: the launch script
reads it from its standard input (``@PASSWORD@`` below is replaced there).
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import yaml

PASSWORD_TOKEN = "@PASSWORD@"


@dataclass(frozen=True)
class GuestProfile:
    """How a flavor's guest is configured: its default user and the kind of user-data it runs."""

    user: str
    userdata: str  # "cloud-config" or "script"


GUESTS = {
    "cirros": GuestProfile("cirros", "script"),
    "ubuntu": GuestProfile("ubuntu", "cloud-config"),
}
DEFAULT_GUEST = GuestProfile("ubuntu", "cloud-config")


def guest_profile(flavor_name: str) -> GuestProfile:
    return GUESTS.get(flavor_name or "", DEFAULT_GUEST)


def meta_data(vm: dict) -> str:
    return json.dumps({"instance-id": f"cr-vm{int(vm['vm_id'])}", "local-hostname": vm["name"]}) + "\n"


def user_data(profile: GuestProfile) -> str:
    """User-data with ``@PASSWORD@`` where the VM's password goes."""
    if profile.userdata == "script":
        return "\n".join([
            "#!/bin/sh",
            "# Cloud Repositorio: the console password of this VM",
            f"echo '{profile.user}:{PASSWORD_TOKEN}' | chpasswd",
            "",
        ])
    config = {
        "ssh_pwauth": True,
        "chpasswd": {"expire": False, "users": [{"name": profile.user, "password": PASSWORD_TOKEN, "type": "text"}]},
    }
    return "#cloud-config\n" + yaml.safe_dump(config, sort_keys=False, default_flow_style=False)


def network_config(vm: dict, internet_vlan: int) -> str:
    """network-config v2: DHCP on every NIC, matched by MAC; routes only from the internet NIC."""
    ethernets = {}
    for i, iface in enumerate(vm.get("interfaces") or []):
        internet = iface.get("vlan_id") == internet_vlan
        nic = {"match": {"macaddress": iface["mac"].lower()}, "set-name": f"eth{i}", "dhcp4": True,
               "optional": True}
        if not internet:
            nic["dhcp4-overrides"] = {"use-routes": False, "use-dns": False}
        ethernets[f"eth{i}"] = nic
    return yaml.safe_dump({"version": 2, "ethernets": ethernets}, sort_keys=False, default_flow_style=False)


def seed_files(vm: dict, flavor_name: str, internet_vlan: int) -> dict:
    """File name -> content of a VM's seed (the password still as ``@PASSWORD@``)."""
    return {"meta-data": meta_data(vm), "user-data": user_data(guest_profile(flavor_name)),
            "network-config": network_config(vm, internet_vlan)}
