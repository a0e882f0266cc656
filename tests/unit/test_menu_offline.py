"""The text menu as a person uses it, in a real terminal, without any host.

Each test spawns the real ``cli.py`` under pexpect (a pseudo-terminal, so
``getpass`` really hides passwords), types numbers and reads the screen.  The
cluster config points at an unreachable host whose known_hosts file does not
exist, so nothing here can reach SSH: anything that would need a host fails
before a connection is attempted.  Database state that needs VMs is seeded
with the real ``OrchestratorAPI`` over the recording ``FakeExecutor``.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pexpect
import pytest
import yaml
from fakes import FakeExecutor
from menu_driver import CHOICE, CLI, PY, REPO, MenuSession
from service_driver import ServiceProcess

from database import Database
from deployment_api import DeploymentAPI
from orchestrator_api import OrchestratorAPI
from usecases import passwords

CANCELLED = "Cancelled: nothing changed."
MENU_COMMON = [
    "1. View quota and resources",
    "2. Create Slice",
    "3. Add VM to Slice",
    "4. Create Link between VMs",
    "5. View my Slices",
    "6. Deploy Slice",
    "7. Delete Slice",
    "8. Cleanup orphaned VMs",
    "9. Logout",
    "10. Change password",
]
NEW_OPTIONS = ["12. Open VM console", "13. Slice status and repair", "14. Start, stop or reboot VMs",
               "15. Topology templates, import and export"]
ADMIN_MENU = MENU_COMMON + ["11. Manage users"] + NEW_OPTIONS + [
    "16. Instructor tools (overview, class roster)", "17. Cluster view", "18. Capture and link impairments",
    "19. Snapshots and leases", "0. Exit"]
STUDENT_MENU = MENU_COMMON + NEW_OPTIONS + ["18. Capture and link impairments", "19. Snapshots and leases", "0. Exit"]
LEGACY_ADMIN_HASH = "8c6976e5b5410415bde908bd4dee15dfb167a9c873fc4bb8a81f6f2ab448a918"


@dataclass
class Site:
    dir: Path
    db: Path
    cfg: Path
    log: Path
    cfg_dict: dict
    socket: Path | None = None

    def db_bytes(self) -> bytes:
        return self.db.read_bytes()

    def first_read(self) -> bytes:
        """The database as any process that may write it leaves it at its first read (the shipped accounts'
        SHA-256 hashes wrapped in scrypt), whether or not a manager service already read it."""
        Database(str(self.db)).load()
        return self.db_bytes()

    def data(self) -> dict:
        return yaml.safe_load(self.db.read_text())

    @contextmanager
    def unchanged(self):
        """Check that the database holds the same bytes at the end of the block as at its start."""
        before = self.db_bytes()
        yield
        assert self.db_bytes() == before


class Menu(MenuSession):
    """The shared menu driver on a :class:`Site` (its config, database, log and folder).

    With a site whose ``socket`` is set, the menu is a client of a manager
    service running on that site's config and database (every test runs both ways).
    """

    def __init__(self, site: Site, timeout: float = 15):
        self.site = site
        super().__init__(site.cfg, site.db, site.log, cwd=site.dir, timeout=timeout, socket=site.socket)


def menu_items(screen: str) -> list:
    """The option lines of the last main menu drawn in ``screen``."""
    block = screen.rsplit("  MAIN MENU\n" + "=" * 50 + "\n", 1)[1].split("\nChoice: ", 1)[0]
    return [line for line in block.split("\n") if line.strip()]


@pytest.fixture(params=["embedded", "service"])
def site(request, tmp_path) -> Site:
    """A test site; with the "service" parameter its menus are clients of a manager service on it."""
    s = make_site(tmp_path)
    if request.param == "service":
        s.socket = tmp_path / "manager.sock"
        service = ServiceProcess(s.cfg, s.db, s.socket)
        request.addfinalizer(service.stop)
    return s


def make_site(tmp_path) -> Site:
    db = tmp_path / "database.yaml"
    shutil.copyfile(REPO / "database.yaml", db)
    cfg_dict = {
        "workers": ["127.0.0.1"],
        "network_node": "127.0.0.1",
        "ssh": {"port": 9, "key_file": str(tmp_path / "no_such_key"),
                "known_hosts": str(tmp_path / "no_such_known_hosts"), "accept_new_host_keys": False,
                "connect_timeout": 2, "command_timeout": 5},
        "flavor_images": {"cirros": str(tmp_path / "base.img"), "ubuntu": str(tmp_path / "base.img")},
        "log_file": str(tmp_path / "menu.log"),
    }
    cfg = tmp_path / "cluster.yaml"
    cfg.write_text(yaml.safe_dump(cfg_dict))
    return Site(tmp_path, db, cfg, tmp_path / "menu.log", cfg_dict)


@pytest.fixture
def spawn(site):
    children = []

    def make(**kw) -> Menu:
        m = Menu(site, **kw)
        children.append(m)
        return m

    yield make
    for m in children:
        if m.p.isalive():
            m.p.terminate(force=True)


def seed_api(site: Site) -> OrchestratorAPI:
    """The real orchestrator on the test database, over a fake transport (no host involved)."""
    ex = FakeExecutor(dict(site.cfg_dict))
    return OrchestratorAPI(Database(str(site.db)), DeploymentAPI(ex), ex.config)


def seed_slice_with_vms(site: Site, owner: str = "admin", names=("web", "db"), interfaces: int = 2,
                        slice_name: str = "seeded") -> int:
    api = seed_api(site)
    ok, s = api.create_slice(owner, slice_name)
    assert ok, s
    for name in names:
        ok, vm = api.add_vm_to_slice(owner, s["slice_id"], name, "cirros", interfaces, False)
        assert ok, vm
    return s["slice_id"]


def admin_menu(spawn) -> Menu:
    """A new menu with admin logged in, at the main menu."""
    m = spawn()
    m.login("admin", "admin")
    return m


def admin_with_slice(spawn, name: str) -> Menu:
    """A new menu with admin logged in, who has just made the slice ``name`` (ID 1000)."""
    m = admin_menu(spawn)
    create_slice(m, name)
    return m


def create_slice(m: Menu, name: str) -> str:
    """Option 2 with ``name``; the screen up to the next main menu."""
    m.send("2", "Slice name: ")
    return m.send(name)


def deploy_slice(m: Menu, answer: str, until=CHOICE, timeout: float = -1) -> str:
    """Option 6, answering ``answer`` to the slice ID; the screen up to ``until``."""
    m.send("6", "Slice ID to deploy: ")
    return m.send(answer, until, timeout)


def delete_slice(m: Menu, answer: str, until=CHOICE) -> str:
    """Option 7, answering ``answer`` to the slice ID; the screen up to ``until``."""
    m.send("7", "Slice ID: ")
    return m.send(answer, until)


def cancel(m: Menu, key: str) -> str:
    """Leave the current prompt by an empty answer, Ctrl-C or Ctrl-D; the screen up to the main menu."""
    if key == "empty":
        return m.send("")
    if key == "ctrl-c":
        return m.intr()
    return m.eof()


USER_ACTIONS = {  # option 11: the action's number and the prompt that follows the username
    "create": ("1", "Password (6+ characters): "),
    "quota": ("2", "New VM quota: "),
    "password": ("3", "New password (6+ characters): "),
}


def manage_user(m: Menu, action: str, user: str) -> str:
    """Option 11, ``action`` (see USER_ACTIONS) for ``user``; the screen up to the prompt after the username."""
    number, prompt = USER_ACTIONS[action]
    m.send("11", "Choice (1-5): ")
    m.send(number, "Username: ")
    return m.send(user, prompt)


def relogin(m: Menu, user: str, password: str, until=CHOICE) -> str:
    """Option 9 (logout), then ``user`` and ``password`` at the login screen; the screen up to ``until``."""
    m.send("9", "Username: ")
    return m.type_credentials(user, password, until)


# --- login --------------------------------------------------------------------------------


def test_login_screen_bad_password_hidden_retry_welcome_and_menu(spawn, site):
    m = spawn()
    screen = m.wait("Username: ")
    assert "=" * 50 + "\n  SLICE MANAGER - LOGIN\n" + "=" * 50 + "\n" in screen
    screen = m.type_credentials("admin", "Wr0ng-Secret-77", "Username: ")
    assert "Invalid credentials!" in screen
    assert "SLICE MANAGER - LOGIN" in screen, "a failed login must show the login screen again"
    screen = m.type_credentials("admin", "admin", CHOICE)
    assert "Welcome, admin!" in screen
    assert "default password" in screen and "change it" in screen
    assert menu_items(screen) == ADMIN_MENU
    # the typed passwords never reach the screen (no echo on a terminal)
    assert "Wr0ng-Secret-77" not in m.transcript
    assert "Password: admin" not in m.transcript
    screen = m.send("1")
    assert "Quota: 0/10 VMs used" in screen
    rest = m.exit()
    assert "Goodbye!" in rest


def test_unknown_user_and_empty_username_are_invalid_credentials(spawn):
    m = spawn()
    m.wait("Username: ")
    assert "Invalid credentials!" in m.type_credentials("nobody", "whatever", "Username: ")
    assert "Invalid credentials!" in m.type_credentials("", "", "Username: ")
    screen = m.type_credentials("student", "admin", "Username: ")
    assert "Invalid credentials!" in screen, "admin's password must not open student's account"
    m.eof(pexpect.EOF)
    m.finish(0)


@pytest.mark.parametrize("key", ["ctrl-c", "ctrl-d"])
@pytest.mark.parametrize("where", ["Username: ", "Password: "])
def test_leaving_at_the_login_screen_is_clean(spawn, site, key, where):
    before = site.first_read()
    m = spawn()
    m.wait("Username: ")
    if where == "Password: ":
        m.send("admin", "Password: ")
    if key == "ctrl-c":
        m.p.sendintr()
    else:
        m.p.sendeof()
    rest = m.finish(0)
    assert "Goodbye!" in rest
    assert site.db_bytes() == before


def test_student_menu_quota_and_refusals(spawn, site):
    slice_id = seed_slice_with_vms(site, owner="admin", names=("web",), interfaces=1)
    m = spawn()
    screen = m.login("student", "student")
    assert "Welcome, student!" in screen
    assert menu_items(screen) == STUDENT_MENU
    assert "11. Manage users" not in screen
    before = site.db_bytes()
    assert "Quota: 0/6 VMs used" in m.send("1")
    screen = m.send("11")
    assert "Invalid choice" in screen
    assert "Users:" not in screen
    screen = m.send("8")
    assert "Only an admin can clean up orphaned VMs." in screen
    assert "Scanning" not in screen
    # the admin's slice is invisible and untouchable for a student
    screen = m.send("5")
    assert "No Slices found." in screen
    assert f"Slice {slice_id}" not in screen
    screen = delete_slice(m, str(slice_id))
    assert "Slice not found or not authorized" in screen
    m.send("4", "Slice ID: ")
    assert "Slice not found" in m.send(str(slice_id))
    assert "Slice not found or not authorized" in deploy_slice(m, str(slice_id))
    assert site.db_bytes() == before
    m.exit()


# --- main menu: exit, logout, bad choices, Ctrl-C / Ctrl-D -----------------------------------


def test_zero_exits_with_status_0(spawn):
    m = admin_menu(spawn)
    rest = m.exit()
    assert "Goodbye!" in rest


def test_ctrl_d_at_main_menu_exits_with_status_0(spawn, site):
    m = admin_menu(spawn)
    assert "Slice created! ID: 1000" in create_slice(m, "keepme")
    before = site.db_bytes()
    m.p.sendeof()
    rest = m.finish(0)
    assert "Goodbye!" in rest
    assert site.db_bytes() == before
    assert "1000" in site.data()["slices"]


def test_ctrl_c_at_main_menu_neither_exits_nor_deletes(spawn, site):
    m = admin_menu(spawn)
    assert "Slice created! ID: 1000" in create_slice(m, "keepme")
    before = site.db_bytes()
    for _ in range(2):
        screen = m.intr()
        assert "nothing was changed" in screen
        assert "MAIN MENU" in screen
        assert m.p.isalive()
    assert site.db_bytes() == before
    screen = m.send("5")
    assert "Slice 1000 (keepme) [design]" in screen
    m.exit()
    assert site.data()["slices"]["1000"]["status"] == "design"


def test_ctrl_z_and_ctrl_backslash_never_leave_the_student_at_a_shell(spawn, site):
    """Issue 17 item 13: job control and quit are ignored while the menu runs (no shell as its account)."""
    m = admin_menu(spawn)
    for key in ("\x1a", "\x1c"):                # Ctrl-Z (SIGTSTP), Ctrl-\ (SIGQUIT)
        m.p.send(key)
        time.sleep(0.3)
        assert m.p.isalive()
        status = Path(f"/proc/{m.p.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        assert status != "T", "the menu was stopped"
        screen = m.send("")                       # the menu still reads its input
        assert "Invalid choice" in screen
    assert "Quota: 0/10 VMs used" in m.send("1")
    m.exit()


def test_a_huge_answer_is_refused_in_bounded_memory(site, tmp_path):
    """Issue 17 item 11: a line of 64 MiB at Username: is read in pieces, never held whole."""
    big = tmp_path / "big.txt"
    with open(big, "wb") as f:
        f.write(b"x" * (64 << 20) + b"\nadmin\nadmin\nadmin\n0\n")  # the long name, its password, a login
    where = ["--socket", str(site.socket)] if site.socket else ["--config", str(site.cfg), "--db", str(site.db)]
    # a parent that waits for the menu with wait4, to read the menu's own peak memory
    measure = ("import os, sys\npid = os.fork()\nif pid == 0:\n    os.execv(sys.argv[1], sys.argv[1:])\n"
               "_, _, usage = os.wait4(pid, 0)\nprint('MAXRSS', usage.ru_maxrss, file=sys.stderr)\n")
    with open(big, "rb") as stdin:
        proc = subprocess.run([PY, "-c", measure, PY, str(CLI)] + where, stdin=stdin, capture_output=True,
                              timeout=120)
    out, err = proc.stdout.decode(), proc.stderr.decode()
    assert "That answer is too long (at most 4096 characters)." in out
    assert "Invalid credentials!" in out and "Welcome, admin!" in out
    maxrss_kib = int(err.rsplit("MAXRSS ", 1)[1].split()[0])
    assert maxrss_kib < 64 * 1024, f"the menu grew to {maxrss_kib // 1024} MiB (the line is 64 MiB)"


BAD_CHOICES = ["abc", "42", "", "-1", "1 2", "99999999999999999999", "\u00e9", "1.5", "0x1", "one"]


def test_bad_main_menu_choices_are_refused_and_change_nothing(spawn, site):
    m = admin_menu(spawn)
    before = site.db_bytes()
    for choice in BAD_CHOICES:
        screen = m.send(choice)
        assert "Invalid choice: enter one of the numbers of the menu." in screen, (choice, screen)
        assert menu_items(screen) == ADMIN_MENU
    assert site.db_bytes() == before
    m.exit()


def test_logout_returns_to_login_screen(spawn):
    m = admin_menu(spawn)
    screen = m.send("9", "Username: ")
    assert "SLICE MANAGER - LOGIN" in screen
    assert m.p.isalive()
    screen = m.type_credentials("student", "student")
    assert "Welcome, student!" in screen
    assert "Quota: 0/6 VMs used" in m.send("1")
    m.send("9", "Username: ")
    m.p.sendeof()
    m.finish(0)


# --- slices ---------------------------------------------------------------------------------


def test_create_slice_and_view_it(spawn, site):
    m = admin_menu(spawn)
    assert "No Slices found." in m.send("5")
    screen = create_slice(m, "lab1")
    assert "Slice created! ID: 1000" in screen
    screen = m.send("5")
    assert "Slice 1000 (lab1) [design]: 0 VMs, 0 Links, VLAN pool: 100-119" in screen
    screen = m.send("1")
    assert "Quota: 0/10 VMs used" in screen
    assert "Slices: 1" in screen
    m.exit()
    data = site.data()
    assert data["slices"]["1000"]["owner"] == "admin"
    assert data["slices"]["1000"]["name"] == "lab1"
    assert data["users"]["admin"]["slices"] == [1000]
    assert data["next_vm_id"] == 1001


BAD_NAMES = ["a;rm -rf ~", "$(reboot)", "x y", "`id`", "a|b", "../etc", "-x", "1abc", "a" * 33, "na\u00efve",
             "a'b", 'a"b', "a&&b", "a>b", "a\\b"]


def test_slice_names_with_shell_metacharacters_are_refused(spawn, site):
    m = admin_menu(spawn)
    before = site.db_bytes()
    for name in BAD_NAMES:
        screen = create_slice(m, name)
        assert "Invalid slice name" in screen, (name, screen)
        assert "Slice created" not in screen
    assert site.db_bytes() == before
    assert "No Slices found." in m.send("5")
    m.exit()
    assert site.data()["slices"] == {}


def test_duplicate_slice_name_is_refused(spawn, site):
    m = admin_menu(spawn)
    assert "Slice created! ID: 1000" in create_slice(m, "twin")
    with site.unchanged():
        screen = create_slice(m, "twin")
        assert "already have a slice named twin" in screen
    m.exit()


@pytest.mark.parametrize("key", ["empty", "ctrl-c", "ctrl-d"])
def test_cancel_at_slice_name_prompt(spawn, site, key):
    m = admin_menu(spawn)
    before = site.db_bytes()
    m.send("2", "Slice name: ")
    screen = cancel(m, key)
    assert CANCELLED in screen
    assert site.db_bytes() == before
    assert "Quota: 0/10 VMs used" in m.send("1")
    m.exit()


# --- option 3: add VM, every prompt ---------------------------------------------------------------

ADD_PROMPTS = ["Slice ID: ", "VM name: ", "Choose flavor (1-2): ", "Number of data interfaces (eth1, eth2, ...): ",
               "Enable internet access (eth0 in VLAN 400)? (y/n): "]
GOOD_ANSWERS = ["1000", "vm1", "1", "1", "n"]


def _go_to(m: Menu, prompt_index: int, answers=GOOD_ANSWERS) -> None:
    """Choose 3 and give ``answers`` in order up to (not including) prompt ``prompt_index``."""
    m.send("3", ADD_PROMPTS[0])
    for i in range(prompt_index):
        m.send(answers[i], ADD_PROMPTS[i + 1])


def add_vm(m: Menu, answers, timeout: float = -1) -> str:
    """Choose 3 and give all ``answers`` (one a prompt of ADD_PROMPTS); the screen up to the main menu."""
    _go_to(m, len(ADD_PROMPTS) - 1, answers)
    return m.send(answers[-1], timeout=timeout)


@pytest.mark.parametrize("index", range(len(ADD_PROMPTS)))
@pytest.mark.parametrize("key", ["empty", "ctrl-c", "ctrl-d"])
def test_add_vm_cancel_at_every_prompt(spawn, site, index, key):
    m = admin_with_slice(spawn, "s1")
    before = site.db_bytes()
    _go_to(m, index)
    screen = cancel(m, key)
    assert CANCELLED in screen
    assert "Creating the VM disk" not in screen
    assert site.db_bytes() == before
    assert "Quota: 0/10 VMs used" in m.send("1")
    m.exit()


@pytest.mark.parametrize("index,bad,message", [
    (0, "abc", "Slice ID must be a number"),
    (0, "-5", "Slice ID must be a number"),
    (0, "\u00b2", "Slice ID must be a number"),          # superscript two: a digit to str.isdigit, not a number
    (0, "\u2460", "Slice ID must be a number"),          # circled one
    (0, "1\x002", "Slice ID must be a number"),          # a NUL inside the line
    (2, "3", "Choose 1 or 2"),
    (2, "\u0661", "Choose 1 or 2"),                      # Arabic-Indic one
    (2, "cirros", "Choose 1 or 2"),
    (3, "42", "Enter a number from 0 to 8"),
    (3, "abc", "Enter a number from 0 to 8"),
    (3, "-1", "Enter a number from 0 to 8"),
    (3, "\u0663", "Enter a number from 0 to 8"),         # Arabic-Indic three was accepted as 3
    (4, "maybe", "Answer y or n"),
])
def test_add_vm_bad_answers_are_refused_three_times_then_cancel(spawn, site, index, bad, message):
    m = admin_with_slice(spawn, "s1")
    before = site.db_bytes()
    _go_to(m, index)
    screen = m.send(bad, ADD_PROMPTS[index])
    assert message in screen, "a bad answer must be explained and the question asked again"
    screen = m.send(bad, ADD_PROMPTS[index])
    assert message in screen
    screen = m.send(bad)
    assert message in screen and CANCELLED in screen
    assert site.db_bytes() == before
    m.exit()


def test_add_vm_unknown_slice_and_bad_vm_names(spawn, site):
    m = admin_with_slice(spawn, "s1")
    before = site.db_bytes()
    m.send("3", "Slice ID: ")
    screen = m.send("42")
    assert "Slice not found or not authorized" in screen
    assert "VM name" not in screen
    for name in ["a;reboot", "$(id)", "x y", "v" * 40]:
        screen = add_vm(m, ["1000", name, "1", "1", "n"])
        assert "Invalid VM name" in screen
        assert "VM added" not in screen
    assert site.db_bytes() == before
    m.exit()


def test_add_vm_over_quota_is_refused(spawn, site):
    slice_id = seed_slice_with_vms(site, owner="student", names=[f"v{i}" for i in range(6)], interfaces=0,
                                   slice_name="full")
    m = spawn()
    m.login("student", "student")
    assert "Quota: 6/6 VMs used" in m.send("1")
    with site.unchanged():
        screen = add_vm(m, [str(slice_id), "extra", "1", "1", "n"])
        assert "Quota exceeded" in screen
    m.exit()


def test_add_vm_to_unreachable_worker_fails_cleanly(spawn, site):
    m = admin_with_slice(spawn, "s1")
    before = site.data()
    screen = add_vm(m, GOOD_ANSWERS, timeout=30)
    assert "Cannot place the VM: no worker can be reached (127.0.0.1: " in screen
    after = site.data()
    assert after["slices"]["1000"]["vms"] == []
    assert after["users"]["admin"]["used_vms"] == before["users"]["admin"]["used_vms"] == 0
    m.exit()


# --- option 4: links, option 5: topology -----------------------------------------------------------


def link_answers(m: Menu, vm1: str, if1: str, vm2: str, if2: str) -> str:
    """At option 4's 'First VM ID: ': answer the four questions; the screen up to the main menu."""
    m.send(vm1, "First VM interface (e.g., eth1): ")
    m.send(if1, "Second VM ID: ")
    m.send(vm2, "Second VM interface (e.g., eth1): ")
    return m.send(if2)


def _every_block_recorded(site: Site) -> None:
    """198 empty design slices of another user, one in each 20-VLAN block (SPEC §16)."""
    from models import Slice
    with Database(str(site.db)).transaction() as data:
        for k, start in enumerate(b for b in range(100, 4080, 20) if b != 400):
            sid = 5000 + k
            data["slices"][str(sid)] = Slice(sid, "student", name=f"b{k}", vlan_pool_start=start).to_dict()
            data["users"]["student"]["slices"].append(sid)
        data["next_vm_id"] = 6000


def test_link_outside_any_block_is_said_and_the_slice_shows_none(spawn, site):
    _every_block_recorded(site)
    m = admin_menu(spawn)
    screen = create_slice(m, "late")
    assert "Slice created! ID: 6000" in screen
    assert "VLAN pool: none (every block of 20 VLANs is held by a slice; its links get free VLANs elsewhere)" in screen
    api = seed_api(site)
    for name in ("web", "db"):
        assert api.add_vm_to_slice("admin", 6000, name, "cirros", 2, False)[0]
    m.send("4", "Slice ID: ")
    m.send("6000", "First VM ID: ")
    screen = link_answers(m, "6001", "eth1", "6002", "eth1")
    assert ("Link created! VLAN: 401\n   VLAN 401 is a free VLAN outside any slice's own block: this slice has "
            "none (every block of 20 VLANs is held by a slice)") in screen
    screen = m.send("5")
    assert "Slice 6000 (late) [design]: 2 VMs, 1 Links, VLAN pool: none (" in screen
    assert "(VLAN 401)" in screen


def test_link_listing_errors_and_topology_view(spawn, site):
    slice_id = seed_slice_with_vms(site, owner="admin", names=("web", "db"), interfaces=2)
    m = admin_menu(spawn)
    before = site.db_bytes()

    m.send("4", "Slice ID: ")
    screen = m.send("42")
    assert "Slice not found" in screen
    m.send("4", "Slice ID: ")
    screen = m.send("abc", "Slice ID: ")
    assert "Slice ID must be a number" in screen
    screen = m.send(str(slice_id), "First VM ID: ")
    assert ("\nAvailable VMs and interfaces:\n  VM 1001: web\n    - eth1 (unconnected)\n    - eth2 (unconnected)\n"
            "  VM 1002: db\n    - eth1 (unconnected)\n    - eth2 (unconnected)\n") in screen
    assert "eth0" not in screen
    screen = link_answers(m, "vm1", "eth1", "vm2", "eth1")
    assert "VM IDs must be numbers (e.g., 1025, not 'vm1')" in screen
    assert site.db_bytes() == before

    def link(a, ai, b, bi) -> str:
        m.send("4", "Slice ID: ")
        m.send(str(slice_id), "First VM ID: ")
        return link_answers(m, a, ai, b, bi)

    assert "eth0 is the management interface" in link("1001", "eth0", "1002", "eth1")
    assert "VM 1099 is not in slice" in link("1001", "eth1", "1099", "eth1")
    assert "has no interface 'eth7'" in link("1001", "eth7", "1002", "eth1")
    assert "two different interfaces" in link("1001", "eth1", "1001", "eth1")
    assert site.db_bytes() == before

    assert "Link created! VLAN: 100" in link("1001", "eth1", "1002", "eth1")
    assert "already connected to Link 1" in link("1001", "eth1", "1002", "eth2")
    assert "Link created! VLAN: 101" in link("1001", "eth2", "1002", "eth2")

    m.send("4", "Slice ID: ")
    screen = m.send(str(slice_id), "First VM ID: ")
    assert "    - eth1 (connected to Link 1)" in screen
    assert "    - eth2 (connected to Link 2)" in screen
    screen = m.intr()
    assert CANCELLED in screen

    screen = m.send("5")
    data = site.data()
    vms = {vm["vm_id"]: vm for vm in data["slices"][str(slice_id)]["vms"]}
    assert f"Slice {slice_id} (seeded) [design]: 2 VMs, 2 Links, VLAN pool: 100-119" in screen
    assert (f"  \u2514\u2500 VM 1001: web (VNC: 5901, Worker: {vms[1001]['worker_ip']}, Disk: 1GB)") in screen
    assert (f"  \u2514\u2500 VM 1002: db (VNC: 5902, Worker: {vms[1002]['worker_ip']}, Disk: 1GB)") in screen
    assert "      eth0: MAC 52:54:00:03:e9:00\n" in screen
    assert "      eth1: MAC 52:54:00:03:e9:01, VLAN: 100, Link: 1\n" in screen
    assert "      eth2: MAC 52:54:00:03:ea:02, VLAN: 101, Link: 2\n" in screen
    assert "  Link 1: VM1001.eth1 <-> VM1002.eth1 (VLAN 100)" in screen
    assert "  Link 2: VM1001.eth2 <-> VM1002.eth2 (VLAN 101)" in screen
    m.exit()


def test_deploy_to_unreachable_host_is_a_clear_error_and_slice_stays_design(spawn, site):
    slice_id = seed_slice_with_vms(site, owner="admin", names=("web",), interfaces=1)
    m = admin_menu(spawn)
    screen = deploy_slice(m, "abc", "Slice ID to deploy: ")
    assert "Slice ID must be a number" in screen
    screen = m.send("42")
    assert "Slice not found or not authorized" in screen
    screen = deploy_slice(m, str(slice_id), timeout=60)
    assert "Deploy failed at step 'connect' on 127.0.0.1" in screen
    assert "Slice deployed" not in screen
    assert site.data()["slices"][str(slice_id)]["status"] == "design"
    assert "Slice 1000 (seeded) [design]" in m.send("5")
    m.exit()


def test_deploy_failing_before_anything_was_created_does_not_claim_leftovers(spawn, site):
    slice_id = seed_slice_with_vms(site, owner="admin", names=("web",), interfaces=1)
    m = admin_menu(spawn)
    screen = deploy_slice(m, str(slice_id), timeout=60)
    assert "Deploy failed at step 'connect' on 127.0.0.1" in screen
    assert "could not be removed" not in screen, screen
    assert "still in design" in screen, screen
    m.exit()


def test_deploy_empty_slice_is_refused(spawn, site):
    m = admin_with_slice(spawn, "empty")
    with site.unchanged():
        screen = deploy_slice(m, "1000")
        assert "Slice has no VMs" in screen
    m.exit()


# --- option 7: delete ------------------------------------------------------------------------------


def test_delete_asks_confirmation_and_deletes(spawn, site):
    m = admin_with_slice(spawn, "gone")
    before = site.db_bytes()
    assert "Slice not found or not authorized" in delete_slice(m, "42")
    delete_slice(m, "1000", "? (y/n): ")
    screen = m.send("maybe", "? (y/n): ")
    assert "Answer y or n" in screen
    screen = m.send("n")
    assert CANCELLED in screen
    delete_slice(m, "1000", "? (y/n): ")
    assert CANCELLED in m.intr()
    delete_slice(m, "1000", "? (y/n): ")
    assert CANCELLED in m.eof()
    assert site.db_bytes() == before
    screen = delete_slice(m, "1000", "? (y/n): ")
    assert "Delete slice 1000 (gone, design, 0 VMs)" in screen
    screen = m.send("y")
    assert "Slice deleted" in screen
    assert "No Slices found." in m.send("5")
    m.exit()
    data = site.data()
    assert data["slices"] == {}
    assert data["users"]["admin"]["slices"] == []


def test_delete_with_unreachable_worker_keeps_the_slice(spawn, site):
    slice_id = seed_slice_with_vms(site, owner="admin", names=("web",), interfaces=1)
    m = admin_menu(spawn)
    before = site.data()
    delete_slice(m, str(slice_id), "? (y/n): ")
    screen = m.send("y", timeout=30)
    assert "Delete incomplete" in screen and "127.0.0.1" in screen
    assert "Slice deleted" not in screen
    after = site.data()
    assert after["slices"][str(slice_id)]["vms"] == before["slices"][str(slice_id)]["vms"]
    assert after["users"]["admin"]["used_vms"] == 1
    m.exit()


def test_cleanup_as_admin_with_unreachable_hosts_is_a_clear_error(spawn, site):
    m = admin_menu(spawn)
    with site.unchanged():
        screen = m.send("8", timeout=30)
        assert "Cannot scan" in screen
        assert "Cleanup completed" not in screen
    m.exit()


# --- users and passwords ---------------------------------------------------------------------------


def test_legacy_admin_hash_is_upgraded_to_scrypt_at_first_login(spawn, site):
    # the shipped file's bare SHA-256, or (a manager service read it already) that hash wrapped in scrypt
    assert passwords.is_legacy(site.data()["users"]["admin"]["password_hash"])
    m = admin_menu(spawn)
    m.exit()
    stored = site.data()["users"]["admin"]["password_hash"]
    assert stored.startswith("scrypt$")
    assert LEGACY_ADMIN_HASH not in site.db.read_text()
    assert site.data()["users"]["student"]["password_hash"] != stored  # untouched: student did not log in
    m2 = spawn()
    assert "Welcome, admin!" in m2.login("admin", "admin")
    m2.exit()
    assert site.data()["users"]["admin"]["password_hash"] == stored, "an scrypt hash is not rewritten at login"


def test_admin_creates_user_who_can_log_in(spawn, site):
    secret = "Kr4ken-Tide-51"
    m = admin_menu(spawn)
    manage_user(m, "create", "carol")
    m.send(secret, "VM quota: ")
    m.send("4", "Admin role? (y/n): ")
    screen = m.send("n")
    assert "User carol created (quota 4, role student)" in screen
    screen = m.send("11", "Choice (1-5): ")
    assert re.search(r"\n  carol +student +quota 0/4", screen), screen
    assert CANCELLED in m.intr()
    relogin(m, "carol", "wrong-pass", "Username: ")
    screen = m.type_credentials("carol", secret)
    assert "Welcome, carol!" in screen
    assert "default password" not in screen
    assert menu_items(screen) == STUDENT_MENU
    assert "Quota: 0/4 VMs used" in m.send("1")
    m.exit()
    assert secret not in m.transcript, "a typed password was echoed"
    carol = site.data()["users"]["carol"]
    assert carol["password_hash"].startswith("scrypt$")
    assert carol["quota_vms"] == 4 and carol.get("role", "student") == "student"
    assert secret not in site.db.read_text()


def test_admin_manage_users_refuses_bad_values(spawn, site):
    m = admin_menu(spawn)
    before = site.db_bytes()
    screen = m.send("11", "Choice (1-5): ")
    assert "Users:" in screen and "student" in screen
    assert "password_hash" not in screen and "scrypt$" not in screen
    screen = m.send("7", "Choice (1-5): ")
    assert "Choose a number from 1 to 5" in screen
    m.send("1", "Username: ")
    assert CANCELLED in m.intr()  # leave that round at its first prompt

    def create(name, password, quota="3", admin="n") -> str:
        manage_user(m, "create", name)
        m.send(password, "VM quota: ")
        m.send(quota, "Admin role? (y/n): ")
        return m.send(admin)

    assert "Invalid username" in create("Bad Name", "secret-123")
    assert "Invalid username" in create("x;rm", "secret-123")
    assert "already exists" in create("student", "secret-123")
    assert "at least 6 characters" in create("dave", "abc")
    # quota out of range / not a number: asked again, then cancelled
    manage_user(m, "create", "erin")
    m.send("secret-123", "VM quota: ")
    assert "Enter a number from 0 to 1000" in m.send("5000", "VM quota: ")
    assert "Enter a number from 0 to 1000" in m.send("abc", "VM quota: ")
    screen = m.send("-3")
    assert CANCELLED in screen
    # set quota: unknown user, bad numbers
    manage_user(m, "quota", "nobody")
    assert "User not found" in m.send("3")
    manage_user(m, "quota", "student")
    assert "Enter a number from 0 to 1000" in m.send("lots", "New VM quota: ")
    assert CANCELLED in m.eof()
    # reset password: unknown user, too short
    manage_user(m, "password", "nobody")
    assert "User not found" in m.send("secret-123")
    manage_user(m, "password", "student")
    assert "at least 6 characters" in m.send("abc")
    assert site.db_bytes() == before
    m.exit()
    assert set(site.data()["users"]) == {"admin", "student"}


def test_admin_resets_password_and_sets_quota(spawn, site):
    new = "Fresh-Pass-93"
    m = admin_menu(spawn)
    manage_user(m, "password", "student")
    assert "Password of student reset" in m.send(new)
    manage_user(m, "quota", "student")
    assert "Quota of student set to 3" in m.send("3")
    assert "Invalid credentials!" in relogin(m, "student", "student", "Username: ")
    screen = m.type_credentials("student", new)
    assert "Welcome, student!" in screen
    assert "Quota: 0/3 VMs used" in m.send("1")
    m.exit()
    assert new not in m.transcript
    student = site.data()["users"]["student"]
    assert student["password_hash"].startswith("scrypt$")
    assert student["quota_vms"] == 3


def test_set_quota_below_used_vms_is_refused(spawn, site):
    seed_slice_with_vms(site, owner="student", names=("a1", "a2"), interfaces=0, slice_name="two")
    m = admin_menu(spawn)
    with site.unchanged():
        manage_user(m, "quota", "student")
        assert "cannot go below" in m.send("1")
    m.exit()


def test_change_own_password(spawn, site):
    m = admin_menu(spawn)
    before = site.db_bytes()

    def change(old, new, again) -> str:
        m.send("10", "Current password: ")
        m.send(old, "New password (6+ characters): ")
        m.send(new, "New password again: ")
        return m.send(again)

    assert "Current password is wrong" in change("nope-nope", "Better-Pass-1", "Better-Pass-1")
    assert "The two new passwords differ" in change("admin", "Better-Pass-1", "Better-Pass-2")
    assert "at least 6 characters" in change("admin", "abc", "abc")
    m.send("10", "Current password: ")
    assert CANCELLED in m.intr()
    assert site.db_bytes() == before
    assert "Password changed" in change("admin", "Better-Pass-1", "Better-Pass-1")
    screen = relogin(m, "admin", "Better-Pass-1")
    assert "Welcome, admin!" in screen
    assert "default password" not in screen
    m.exit()
    assert "Better-Pass-1" not in m.transcript


@pytest.mark.parametrize("option", ["10", "11"])
def test_ctrl_d_at_a_password_prompt_in_the_menu_cancels(spawn, site, option):
    m = admin_menu(spawn)
    before = site.db_bytes()
    if option == "10":
        m.send("10", "Current password: ")
    else:
        manage_user(m, "create", "frank")
    screen = m.eof()
    assert CANCELLED in screen
    assert "Unexpected error" not in screen
    assert site.db_bytes() == before
    m.exit()


# --- no terminal: stdin piped ----------------------------------------------------------------------


def run_piped(site: Site, text: str, *extra) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("CLOUD_CONFIG", None)
    env.pop("CLOUD_DB", None)
    return subprocess.run([PY, str(CLI), "--config", str(site.cfg), "--db", str(site.db), *extra],
                          input=text, capture_output=True, text=True, timeout=60, env=env, cwd=str(site.dir))


def test_piped_stdin_reads_password_as_a_line(site):
    proc = run_piped(site, "admin\nadmin\n1\n0\n")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Welcome, admin!" in proc.stdout
    assert "Quota: 0/10 VMs used" in proc.stdout
    assert "Goodbye!" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr
    assert site.data()["users"]["admin"]["password_hash"].startswith("scrypt$")


def test_piped_stdin_full_session_and_early_end(site):
    proc = run_piped(site, "admin\nbad-pass\nadmin\nadmin\n2\npiped\n5\n9\nstudent\nstudent\n1\n")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "Invalid credentials!" in out
    assert "Slice created! ID: 1000" in out
    assert "Slice 1000 (piped) [design]" in out
    assert "Welcome, student!" in out and "Quota: 0/6 VMs used" in out
    assert "Goodbye!" in out, "end of input at the menu must leave cleanly"
    assert "Traceback" not in out
    assert "bad-pass" not in out


def test_piped_stdin_end_of_input_at_login(site):
    before = site.first_read()
    proc = run_piped(site, "admin\n")
    assert proc.returncode == 0
    assert "Traceback" not in proc.stdout + proc.stderr
    assert site.db_bytes() == before


# --- bad --config / --db: one line, status 2 -----------------------------------------------------------


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("kind", [
    "missing",
    "bad-yaml",
    "not-a-mapping", "directory", "workers-not-a-list", "no-workers", "bad-accel", "bad-port",
    "log-dir-impossible",
])
def test_bad_config_is_a_one_line_error_with_status_2(site, tmp_path, kind):
    cfg = {
        "missing": lambda: str(tmp_path / "nope.yaml"),
        "bad-yaml": lambda: _write(tmp_path / "c.yaml", "workers: [a\nssh: {\n"),
        "not-a-mapping": lambda: _write(tmp_path / "c.yaml", "- 1\n- 2\n"),
        "directory": lambda: str(tmp_path),
        "workers-not-a-list": lambda: _write(tmp_path / "c.yaml", "workers: 5\n"),
        "no-workers": lambda: _write(tmp_path / "c.yaml", "workers: []\n"),
        "bad-accel": lambda: _write(tmp_path / "c.yaml", "workers: [127.0.0.1]\nqemu_accel: xen\n"),
        "bad-port": lambda: _write(tmp_path / "c.yaml", "workers: [127.0.0.1]\nssh: {port: abc}\n"),
        "log-dir-impossible": lambda: _write(tmp_path / "c.yaml",
                                             "workers: [127.0.0.1]\nlog_file: /proc/no/such/dir/x.log\n"),
    }[kind]()
    before = site.db_bytes()
    env = dict(os.environ)
    env.pop("CLOUD_CONFIG", None)
    proc = subprocess.run([PY, str(CLI), "--config", cfg, "--db", str(site.db)], input="admin\nadmin\n0\n",
                          capture_output=True, text=True, timeout=60, env=env, cwd=str(tmp_path))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "Traceback" not in out
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected a one-line error, got:\n{out}"
    assert "Cannot start" in lines[0]
    assert "SLICE MANAGER" not in out
    assert site.db_bytes() == before


def test_db_in_missing_directory_is_a_one_line_error_with_status_2(site, tmp_path):
    proc = subprocess.run([PY, str(CLI), "--config", str(site.cfg), "--db", str(tmp_path / "no" / "db.yaml")],
                          input="admin\nadmin\n0\n", capture_output=True, text=True, timeout=60)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "Traceback" not in out
    assert len([line for line in out.splitlines() if line.strip()]) == 1, out
