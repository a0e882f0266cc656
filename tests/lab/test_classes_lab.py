"""Classes in the local lab: topology files, templates and rosters on real hosts (SPEC §13).

Real SSH, OVS, QEMU and dnsmasq.  An imported slice is deployed and every
one of its links carries traffic between the VMs (pings from inside the
guests, over their serial consoles, to the addresses their peers leased on
that link's VLAN); templates and rosters make real overlays on the workers,
and a failed template leaves nothing on any host.  Each test has its own
database (the ``site`` fixture deletes every slice afterwards).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import ADD_VM_TIMEOUT
from labtools import assert_clean, console, host_of, make_api, sh, wait_for_leases, wait_guest_configured

from topology import files as tf

REPO = Path(__file__).resolve().parents[2]
CLI = REPO / "cli.py"
RING4 = REPO / "topologies" / "ring4.yaml"
TEMPLATE_TIMEOUT = 120


def cli(site, *args, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python3 cli.py --config <lab config> --db <test database> --user admin ARGS`` (password piped)."""
    env = {k: v for k, v in os.environ.items() if k not in ("CLOUD_CONFIG", "CLOUD_DB")}
    proc = subprocess.run([sys.executable, str(CLI), "--config", str(site["cfg"]), "--db", str(site["db"]),
                           "--user", "admin"] + list(args), capture_output=True, text=True, timeout=timeout,
                          env=env, input="admin\n")
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    return proc


def overlays(lab) -> dict:
    """Worker name -> sorted overlay files (``*_img.qcow2``) in its image folder."""
    return {h: sorted(f for f in sh(lab, h, "ls /home/ubuntu/vm_images 2>/dev/null || true").split()
                      if f.endswith("_img.qcow2")) for h in ("worker1", "worker2", "worker3")}


def mac(vm: dict, ifname: str) -> str:
    return next(i["mac"].lower() for i in vm["interfaces"] if i["name"] == ifname)


def test_an_imported_slice_deploys_and_every_link_carries_traffic(lab, site):
    proc = cli(site, "slice", "import", str(RING4), "--owner", "student", "--name", "ring")
    assert proc.returncode == 0, proc.stderr
    assert "Slice created! ID: 1000 (ring, ring: 4 VMs, 4 links, VLAN pool 100-119)" in proc.stdout
    api = make_api(lab, site["db"])
    try:
        s = api.db.get_slice(1000)
        vms = {vm["vm_id"]: vm for vm in s["vms"]}
        assert len({vm["worker_ip"] for vm in vms.values()}) == 3
        for vm in vms.values():  # each overlay is on its own worker
            assert os.path.basename(vm["qcow_image"]) in overlays(lab)[host_of(lab, vm["worker_ip"])]

        ok, msg = api.deploy_slice("student", 1000)
        assert ok, msg
        s = api.db.get_slice(1000)
        assert s["status"] == "running" and s["deployed_at"]
        wanted = {(x["vlan_id"], mac(vms[x[f"vm{e}_id"]], x[f"vm{e}_interface"])) for x in s["links"] for e in (1, 2)}
        got = wait_for_leases(lab, wanted, timeout=150)
        wait_guest_configured(lab, [(vms[x[f"vm{e}_id"]], x[f"vm{e}_interface"]) for x in s["links"] for e in (1, 2)])
        for x in s["links"]:  # every link, in both directions, from inside the guests
            for a, b in ((1, 2), (2, 1)):
                src, dst = vms[x[f"vm{a}_id"]], vms[x[f"vm{b}_id"]]
                peer = got[(x["vlan_id"], mac(dst, x[f"vm{b}_interface"]))]
                rc, out = console(lab, src, f"ping -c 3 -W 2 {peer}")
                assert rc == 0, f"link {x['link_id']} (VLAN {x['vlan_id']}) {src['name']} -> {dst['name']}: {out}"

        # the running slice exports as the file it came from, and shows in the overview
        proc = cli(site, "slice", "export", "1000")
        assert proc.returncode == 0, proc.stderr
        design, original = tf.parse_topology(proc.stdout)[0], tf.parse_topology(RING4.read_text())[0]
        assert (design.vms, design.links) == (original.vms, original.links)
        proc = cli(site, "overview")
        row = next(line.split() for line in proc.stdout.split("\n") if line.startswith("1000 "))
        assert row[1:8] == ["student", "ring", "running", "ring", "4", "4", "1,2,3"]
        assert row[8] == s["deployed_at"][5:10]

        ok, msg = api.delete_slice("student", 1000)
        assert ok, msg
        assert_clean(lab)
    finally:
        api.executor.close()


def test_the_menu_makes_a_ring_of_4_on_the_workers(lab, site):
    before = overlays(lab)
    m = site["spawn"]()
    m.login("student", "student")
    m.send("15", "Choice (1-3): ")
    m.send("1", "Choose template (1-4): ")
    m.send("2", "Number of VMs (3-20): ")
    m.send("4", "Choose flavor (1-2): ")
    m.send("1", "Internet for which VMs? ")
    m.send("first", "Slice name: ")
    screen = m.send("ring4", timeout=TEMPLATE_TIMEOUT)
    assert "Slice created! ID: 1000 (ring4, ring: 4 VMs, 4 links, VLAN pool 100-119)" in screen, screen
    assert "  VLAN 103  vm4 eth2 -- vm1 eth2" in screen
    m.exit()
    s = yaml.safe_load(Path(site["db"]).read_text())["slices"]["1000"]
    after = overlays(lab)
    for vm in s["vms"]:
        host = host_of(lab, vm["worker_ip"])
        assert os.path.basename(vm["qcow_image"]) in set(after[host]) - set(before[host])


def test_a_roster_with_a_topology_makes_accounts_and_slices_once(lab, site, tmp_path):
    (tmp_path / "class.csv").write_text("username,quota,password\nana,4,generate\nben,4,generate\ncleo,4,cleo-pw-1\n")
    pair = tmp_path / "pair.yaml"
    proc = cli(site, "topology", "template", "linear", "2", "--name", "pair")
    pair.write_text(proc.stdout)
    proc = cli(site, "roster", "import", str(tmp_path / "class.csv"), "--topology", str(pair), "--passwords",
               str(tmp_path / "pw.txt"), timeout=ADD_VM_TIMEOUT * 6)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 account(s) created, 0 already existed; slices pair: 3 made, 0 already there, 0 failed" in proc.stdout
    assert oct(os.stat(tmp_path / "pw.txt").st_mode & 0o777) == "0o600"
    data = yaml.safe_load(Path(site["db"]).read_text())
    assert sorted(s["owner"] for s in data["slices"].values()) == ["ana", "ben", "cleo"]
    made = overlays(lab)
    assert sum(len(files) for files in made.values()) == 6
    before = Path(site["db"]).read_bytes()
    proc = cli(site, "roster", "import", str(tmp_path / "class.csv"), "--topology", str(pair), "--passwords",
               str(tmp_path / "pw2.txt"))
    assert proc.returncode == 0 and "slices pair: 0 made, 3 already there, 0 failed" in proc.stdout
    assert Path(site["db"]).read_bytes() == before and overlays(lab) == made


def test_a_template_that_fails_on_one_worker_leaves_nothing(lab, site):
    api = make_api(lab, site["db"])
    target = "worker3"  # its image folder belongs to root: the VMs' account can neither chmod nor write it
    sh(lab, target, "mkdir -p /home/ubuntu/vm_images && chown root:root /home/ubuntu/vm_images"
                    " && chmod 0755 /home/ubuntu/vm_images")
    try:
        ok, msg = api.create_from_template("admin", "linear", 3, "cirros", "none", "chain")
    finally:
        sh(lab, target, "chown ubuntu:ubuntu /home/ubuntu/vm_images && chmod 0700 /home/ubuntu/vm_images")
        api.executor.close()
    assert not ok and "VM vm3 could not be added" in msg and "Nothing was made" in msg, msg
    assert api.db.all_slices() == {} and api.db.get_user("admin")["used_vms"] == 0
    assert_clean(lab)
