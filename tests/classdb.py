"""A class-sized database in the documented shapes (SPEC §12), for store tests and bench/store.py.

``class_database(slices=198)`` builds what a full class leaves in
``database.yaml``: 200 users (2 default accounts and 198 students at their
quota), ``slices`` slices in distinct 20-VLAN blocks (every free block when
``slices=198``), about 6 VMs each (1,200 VMs in all at full size) with 2-4
interfaces, a chain of links plus a shortcut, internet on some VMs, deployed
slices with pids and networks, scrypt password hashes.  Deterministic.
"""
from __future__ import annotations

import hashlib
import random
from typing import Optional

import naming
from models import VM, Flavor, Interface, Link, Network, Slice, User

CLASS_USERS = 200
FREE_BLOCKS = 198          # 20-VLAN blocks 100..4079 without the one holding VLAN 400
FULL_CLASS_VMS = 1200
WORKERS = ("10.0.10.1", "10.0.10.2", "10.0.10.3")


def free_blocks(reserved=(naming.INTERNET_VLAN,)) -> list[int]:
    """First VLAN of every aligned 20-VLAN block that holds no reserved VLAN."""
    starts = range(naming.POOL_BASE, naming.MAX_VLAN - naming.POOL_SIZE + 2, naming.POOL_SIZE)
    return [b for b in starts if not any(b <= r < b + naming.POOL_SIZE for r in reserved)]


def _scrypt_like(rng: random.Random) -> str:
    """The stored form of a scrypt hash (made up: computing 200 real ones takes seconds)."""
    return f"scrypt$16384$8$1${rng.getrandbits(128):032x}${rng.getrandbits(256):064x}"


def _vm_sizes(slices: int) -> list[int]:
    """VMs per slice: 6 each, two slices of 12 at full size so the class holds 1,200 VMs."""
    sizes = [6] * slices
    for i in range(min(2, slices)):
        if slices == FREE_BLOCKS:
            sizes[i] = 12
    return sizes


def _vm(rng: random.Random, vm_id: int, index: int, owner: str, running: bool, internet: bool) -> VM:
    data_nics = rng.randint(1, 3)
    ifaces = []
    for i in range(data_nics + 1):
        mac = f"52:54:00:{(vm_id >> 8) & 0xFF:02x}:{vm_id & 0xFF:02x}:{i:02x}"
        ifaces.append(Interface(f"eth{i}", mac=mac))
    if internet:
        ifaces[0].vlan_id = naming.INTERNET_VLAN
        ifaces[0].ip_config = {"ip": f"10.60.7.{100 + vm_id % 100}", "cidr": "10.60.7.0/24",
                               "gateway": "10.60.7.1"}
    name = f"vm{index}"
    vm = VM(vm_id, name, owner, WORKERS[vm_id % len(WORKERS)], naming.FIRST_VNC_PORT + vm_id % 4000, ifaces,
            Flavor.get("cirros" if vm_id % 4 else "ubuntu"), f"~/vm_images/{name}_{vm_id}_img.qcow2")
    vm.status = "running" if running else "design"
    vm.pid = str(rng.randint(2000, 99999)) if running else None
    return vm


def _link_vms(s: Slice) -> None:
    """A chain vm1-vm2-...-vmN over free data NICs, plus one shortcut where NICs are left."""
    def free_nic(vm: VM) -> Optional[Interface]:
        return next((i for i in vm.interfaces[1:] if i.link_id is None), None)

    pairs = list(zip(s.vms, s.vms[1:])) + [(s.vms[0], s.vms[-1])]
    for a, b in pairs:
        ia, ib = free_nic(a), free_nic(b)
        if ia is None or ib is None or a is b:
            continue
        vlan = s.get_next_vlan()
        link = Link(len(s.links) + 1, vlan, a.vm_id, ia.name, b.vm_id, ib.name)
        for nic in (ia, ib):
            nic.vlan_id, nic.link_id = vlan, link.link_id
        s.links.append(link)
        if s.status == "running":
            net = Network.for_link_vlan(vlan)
            net.status = "running"
            s.networks.append(net)


def class_database(slices: int = FREE_BLOCKS, users: int = CLASS_USERS, seed: int = 12) -> dict:
    """The whole data dict (users, slices, next_vm_id) of a class with ``slices`` slices."""
    rng = random.Random(seed)
    blocks = free_blocks()[:slices]
    sizes = _vm_sizes(len(blocks))
    data_users = {
        "admin": User("admin", hashlib.sha256(b"admin").hexdigest(), 10, "admin").to_dict(),
        "student": User("student", hashlib.sha256(b"student").hexdigest(), 6).to_dict(),
    }
    for n in range(users - 2):
        name = f"s{n:03d}"
        u = User(name, _scrypt_like(rng), 12 if n < 2 and slices == FREE_BLOCKS else 6)
        data_users[name] = u.to_dict()
    students = [name for name in data_users if name not in ("admin", "student")]
    data_slices = {}
    next_id = naming.FIRST_ID
    for k, (block, size) in enumerate(zip(blocks, sizes)):
        owner = students[k % len(students)]
        sid, next_id = next_id, next_id + 1
        s = Slice(sid, owner, name=f"lab{k % 9 + 1}-{owner}", vlan_pool_start=block)
        s.status = "running" if k % 5 else "design"
        for index in range(1, size + 1):
            s.vms.append(_vm(rng, next_id, index, owner, s.status == "running", index in (1, size)))
            next_id += 1
        _link_vms(s)
        data_slices[str(sid)] = s.to_dict()
        user = data_users[owner]
        user["slices"].append(sid)
        user["used_vms"] += size
    return {"users": data_users, "slices": data_slices, "next_vm_id": next_id}
