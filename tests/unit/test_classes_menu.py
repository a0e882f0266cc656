"""Options 15 and 16 and View's pictures, in a real terminal (pexpect), the hosts answered by the FakeExecutor.

The menu is the real ``cli.py`` (``tests/fake_cli.py`` only swaps its transport
for the recording fake, whose world is written to a file at exit), so what is
checked is what a person sees and what the database then holds.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from fakes import LAB_LIKE
from menu_driver import CHOICE, REPO, MenuSession

from topology import files as tf

FAKE_CLI = REPO / "tests" / "fake_cli.py"


class Site:
    def __init__(self, tmp_path: Path):
        self.dir = tmp_path
        self.db = tmp_path / "database.yaml"
        shutil.copyfile(REPO / "database.yaml", self.db)
        self.cfg = tmp_path / "cluster.yaml"
        self.cfg.write_text(yaml.safe_dump(dict(LAB_LIKE, log_file=str(tmp_path / "menu.log"))))
        self.log = tmp_path / "menu.log"
        self.world = tmp_path / "world.json"

    def data(self) -> dict:
        return yaml.safe_load(self.db.read_text())

    def made(self, kind: str) -> list:
        return [w for w in json.loads(self.world.read_text()) if w[0] == kind]


@pytest.fixture
def site(tmp_path):
    return Site(tmp_path)


@pytest.fixture
def menu(site):
    menus = []

    def make(user: str, password: str, fail: str = "") -> MenuSession:
        m = MenuSession(site.cfg, site.db, site.log, cwd=site.dir, program=FAKE_CLI,
                        env={"FAKE_CLI_WORLD": str(site.world), "FAKE_CLI_FAIL": fail})
        menus.append(m)
        m.login(user, password)
        return m

    yield make
    for m in menus:
        if m.p.isalive():
            m.p.terminate(force=True)


def template(m: MenuSession, kind: str, vms: str, flavor: str, internet: str, name: str) -> str:
    m.send("15", "Choice (1-3): ")
    m.send("1", "Choose template (1-4): ")
    m.send(kind, "Number of VMs (")
    m.send(vms, "Choose flavor (1-2): ")
    m.send(flavor, "Internet for which VMs? (none, all, first, or numbers like 1,3): ")
    m.send(internet, "Slice name: ")
    return m.send(name)


def picture_rows(screen: str) -> list:
    """The link rows of the text diagram: '+--100--+' segments, as (left column, right column, label)."""
    lines = screen.split("\n")
    rows = []
    for line in lines:
        if "+" in line and set(line.strip()) <= set("+-|0123456789# "):
            ends = [i for i, ch in enumerate(line) if ch == "+"]
            rows += [(a, b, line[a + 1:b].strip("-")) for a, b in zip(ends[::2], ends[1::2])]
    return rows


def test_a_student_makes_a_ring_of_4_from_the_menu(site, menu):
    m = menu("student", "student")
    screen = template(m, "2", "4", "1", "first", "ring4")
    assert "Creating 4 VMs and their links (all or nothing; Ctrl-C undoes it)..." in screen
    assert "Slice created! ID: 1000 (ring4, ring: 4 VMs, 4 links, VLAN pool 100-119)" in screen
    for i in range(1, 5):
        assert f"   VM {1000 + i}: vm{i} (VNC: {5900 + i}, Worker: " in screen
    assert "internet (VLAN 400): vm1" in screen
    assert sorted(label for _, _, label in picture_rows(screen)) == ["100", "101", "102", "103"]
    assert "  VLAN 103  vm4 eth2 -- vm1 eth2" in screen
    assert "Deploy it with option 6." in screen
    view = m.send("5")
    assert "Slice ring4 (1000, ring, design): 4 VMs, 4 links" in view
    assert sorted(label for _, _, label in picture_rows(view)) == ["100", "101", "102", "103"]
    m.exit()
    s = site.data()["slices"]["1000"]
    assert (s["owner"], s["topology_type"], len(s["vms"]), len(s["links"])) == ("student", "ring", 4, 4)
    assert [x["vlan_id"] for x in s["links"]] == [100, 101, 102, 103]
    assert len(site.made("overlay")) == 4


def test_an_admin_makes_a_star_of_5_from_the_menu(site, menu):
    m = menu("admin", "admin")
    screen = template(m, "3", "5", "2", "none", "star5")
    assert "Slice created! ID: 1000 (star5, star: 5 VMs, 4 links, VLAN pool 100-119)" in screen
    assert "(no VM has internet)" in screen
    for k in range(1, 5):
        assert f"  VLAN {99 + k}  vm1 eth{k} -- vm{k + 1} eth1" in screen
    rows = picture_rows(screen)
    assert len(rows) == 4 and len({a for a, _, _ in rows}) == 1  # every link starts at the hub's column
    m.exit()
    s = site.data()["slices"]["1000"]
    assert s["topology_type"] == "star" and all(vm["flavor_name"] == "ubuntu" for vm in s["vms"])
    assert len(site.made("overlay")) == 5


def test_template_answers_are_checked_and_a_failure_makes_nothing(site, menu):
    m = menu("student", "student")
    m.send("15", "Choice (1-3): ")
    m.send("1", "Choose template (1-4): ")
    m.send("2", "Number of VMs (3-20): ")
    assert "Enter a number from 3 to 20" in m.send("2", "Number of VMs (3-20): ")
    m.send("7", "Choose flavor (1-2): ")
    m.send("1", "Internet for which VMs? ")
    assert "Answer none, all, first, or VM numbers from 1 to 7" in m.send("9", "Internet for which VMs? ")
    m.send("none", "Slice name: ")
    screen = m.send("big")
    assert "Error: Quota exceeded: 7 VMs needed, student uses 0 of 6" in screen
    m.exit()
    assert site.data()["slices"] == {} and site.made("overlay") == []


def test_an_overlay_failure_in_the_menu_leaves_nothing(site, menu):
    m = menu("admin", "admin", fail="create_overlay:vm3_img.qcow2")
    screen = template(m, "1", "4", "1", "none", "chain")
    assert "Error: VM vm3 could not be added" in screen and "Nothing was made" in screen
    m.exit()
    assert site.data()["slices"] == {} and site.made("overlay") == []
    assert site.data()["users"]["admin"]["used_vms"] == 0


def test_import_an_example_and_export_it_as_yaml_and_dot(site, menu):
    m = menu("admin", "admin")
    m.send("15", "Choice (1-3): ")
    screen = m.send("2", "Choose (1-6): ")
    assert "4. two-routers    4 VMs, 3 links (custom, example)" in screen
    assert "5. A file on this machine (its path)" in screen and "6. Paste a topology file here" in screen
    screen = m.send("4", "Slice name (Enter: two-routers): ")
    assert "Topology two-routers (custom): 4 VMs, 3 links" in screen  # the preview
    screen = m.send("")
    assert "Slice created! ID: 1000 (two-routers, imported: 4 VMs, 3 links, VLAN pool 100-119)" in screen
    screen = export(m, "1000", "1", "Enter: do not save): ")
    assert "topology_type: custom" in screen and "  - {vm1: h1, if1: eth1, vm2: r1, if2: eth1}" in screen
    assert "Written to" in m.send("mine.yaml")
    export(m, "1000", "1", "Enter: do not save): ")
    screen = m.send("mine.yaml")
    assert "mine.yaml already exists: choose another name (nothing is ever overwritten)" in screen
    screen = export(m, "1000", "2", "Enter: do not save): ")
    assert 'graph "two-routers" {' in screen
    assert "Draw it with: dot -Tpng" in m.send("mine.dot")
    m.exit()
    with open(REPO / "topologies" / "two-routers.yaml") as f:
        original = tf.parse_topology(f.read())[0]
    exported = tf.parse_topology((site.dir / "mine.yaml").read_text())[0]
    assert (exported.vms, exported.links) == (original.vms, original.links)
    assert (site.dir / "mine.dot").read_text().startswith('graph "two-routers" {')


def export(m: MenuSession, slice_id: str, kind: str, until: str = CHOICE) -> str:
    """Option 15, 3 (export) of ``slice_id``, format ``kind`` (1 YAML, 2 DOT); the screen up to ``until``."""
    m.send("15", "Choice (1-3): ")
    m.send("3", "Slice ID: ")
    m.send(slice_id, "Choice (1-2): ")
    return m.send(kind, until)


def test_a_student_exports_to_the_screen_and_imports_examples_or_pasted_text_only(site, menu):
    m = menu("student", "student")
    template(m, "1", "2", "1", "none", "pair")
    screen = export(m, "1000", "1")
    assert "name: pair" in screen and "Save it" not in screen
    assert "graph \"pair\" {" in export(m, "1000", "2")
    m.send("15", "Choice (1-3): ")
    screen = m.send("2", "Choose (1-5): ")
    assert "A file on this machine" not in screen and "5. Paste a topology file here" in screen
    m.send("")
    m.exit()


def test_a_pasted_bad_topology_is_refused_with_its_lines(site, menu):
    m = menu("student", "student")
    m.send("15", "Choice (1-3): ")
    m.send("2", "Choose (1-5): ")
    m.send("5", "a line holding only '.'")
    for line in ["vms:", "  - {name: a, flavor: tiny, data_interfaces: 1}", "  - {name: a, flavor: cirros, "
                 "data_interfaces: 1}", "links:", "  - {vm1: a, if1: eth0, vm2: zz, if2: eth1}"]:
        m.p.sendline(line)
    screen = m.send(".")
    assert "the pasted topology cannot be imported (4 problems; nothing was made):" in screen
    assert "  line 2: VM 'a': unknown flavor 'tiny' (cirros, ubuntu)" in screen
    assert "  line 3: VM 2: the name 'a' is already used by VM 1" in screen
    assert "  line 5: link 1: eth0 cannot be in a link" in screen
    assert "  line 5: link 1: VM 'zz' does not exist" in screen
    m.exit()
    assert site.data()["slices"] == {}


def test_a_file_path_that_cannot_be_read(site, menu):
    m = menu("admin", "admin")
    m.send("15", "Choice (1-3): ")
    m.send("2", "Choose (1-6): ")
    m.send("5", "Path of the topology file: ")
    assert f"{site.dir}/nope.yaml: no such file" in m.send(str(site.dir / "nope.yaml"))
    m.exit()


def test_instructor_tools_are_for_admins_roster_then_overview(site, menu):
    (site.dir / "class.csv").write_text("username,quota,password\nana,6,generate\nben,6,ben-secret\n")
    m = menu("admin", "admin")
    m.send("16", "Choice (1-2): ")
    m.send("2", "Roster file (.csv, .yaml or .yml): ")
    screen = m.send(str(site.dir / "class.csv"), "(y/n): ")
    assert "The roster lists 2 students." in screen
    m.send("y", "Choose (1-5): ")
    m.send("1", "Slice name for every student (Enter: lab-internet): ")
    screen = m.send("", "(y/n): ")
    assert f"New accounts' generated passwords go to {site.dir}/class-passwords-" in screen
    screen = m.send("y")
    assert "Roster imported:" in screen
    assert "  ana              account created, password: " in screen
    assert "  ben              account created; slice lab-internet (" in screen
    assert "2 account(s) created, 0 already existed; slices lab-internet: 2 made, 0 already there, 0 failed" in screen
    assert "(only you can read it); they are not shown again." in screen
    m.send("16", "Choice (1-2): ")
    screen = m.send("1")
    rows = [line.split() for line in screen.split("\n") if line.split()[:1] in (["1000"], ["1001"], ["1006"])]
    assert [row[1:8] for row in rows] == [["ana", "lab-internet", "design", "star", "5", "3", "1,2,3"],
                                          ["ben", "lab-internet", "design", "star", "5", "3", "1,2,3"]]
    assert "2 slices (0 running), 10 VMs, 2 owners" in screen
    m.exit()
    users = site.data()["users"]
    assert users["ana"]["used_vms"] == users["ben"]["used_vms"] == 5
    student = menu("student", "student")
    screen = student.send("16")
    assert "Invalid choice" in screen
    assert "15. Topology templates, import and export" in screen and "16." not in screen
    student.exit()


def test_a_bad_roster_in_the_menu_changes_nothing(site, menu):
    (site.dir / "class.yaml").write_text("students:\n  - {username: ana}\n  - {username: Ana}\n")
    before = site.db.read_bytes()
    m = menu("admin", "admin")
    m.send("16", "Choice (1-2): ")
    m.send("2", "Roster file (.csv, .yaml or .yml): ")
    screen = m.send(str(site.dir / "class.yaml"), CHOICE)
    assert "The roster cannot be imported (1 problem; nothing was changed):" in screen
    assert "  line 3: invalid username 'Ana'" in screen
    m.exit()
    data = yaml.safe_load(before)
    assert site.data()["users"].keys() == data["users"].keys()
