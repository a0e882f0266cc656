"""Text from files and hand edits (issue 17 items 7 and 8): no control character reaches a terminal raw, a
refused file is described and never quoted, no unsalted hash and nothing more readable than the database.

Each test here failed before: names with escapes were read and printed raw, the roster's header was quoted
in full, the shipped hashes stayed unsalted until a login, the cache and lock files had the process's group
and 0644 whatever the database's mode was.
"""
from __future__ import annotations

import grp
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import yaml
from uhelpers import make_api, ok

import cli
from database import Database, DatabaseError
from menu import classes as cli_classes
from menu import commands
from menu.prompts import say
from store.config import ClusterConfig, ConfigError
from topology import files as topology_file
from topology import render as topology_render
from usecases import passwords, roster
from usecases.instructor import OverviewRow

ROOT = Path(__file__).resolve().parents[2]
RAW = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")     # a control character other than \n and \t

# what a hand edit could put in a name (YAML double-quoted escapes), and the raw characters they stand for
EVIL = {"title": ("\\e]2;owned\\a", "\x1b]2;owned\x07"), "clear": ("\\e[2J", "\x1b[2J"),
        "csi-c1": ("\\x9b6n", "\x9b6n"), "nul": ("a\\0b", "a\x00b"), "del": ("a\\x7fb", "a\x7fb")}

DB = """\
users:
  admin:
    username: admin
    password_hash: scrypt$16384$8$1$00$00
    quota_vms: 10
    used_vms: 1
    slices: [1000]
    role: admin
slices:
  '1000':
    slice_id: 1000
    owner: admin
    name: lab
    vms:
    - vm_id: 1001
      name: vm1
      interfaces: []
    links: []
next_vm_id: 1002
"""
PLACES = {   # (old text, new text with {evil}, line)
    "user name": ("  admin:\n    username: admin\n", '  "{evil}":\n    username: "{evil}"\n', 2),
    "slice name": ("    name: lab\n", '    name: "{evil}"\n', 13),
    "vm name": ("      name: vm1\n", '      name: "{evil}"\n', 16),
    "owner": ("    owner: admin\n", '    owner: "{evil}"\n', 12),
}


# --- item 7: the loader refuses control characters in names ------------------------------------

@pytest.mark.parametrize("place", sorted(PLACES))
@pytest.mark.parametrize("evil", sorted(EVIL))
def test_a_name_holding_a_control_character_is_refused_with_its_line(tmp_path, place, evil):
    old, new, line = PLACES[place]
    path = tmp_path / "database.yaml"
    text = DB.replace(old, new.format(evil=EVIL[evil][0]))
    path.write_text(text)
    with pytest.raises(DatabaseError) as e:
        Database(str(path)).load()
    message = str(e.value)
    assert f"line {line}:" in message and "control characters" in message, message
    assert not RAW.search(message), repr(message)          # the message itself shows it escaped
    assert path.read_text() == text


def test_the_store_never_saves_a_name_with_a_control_character(tmp_path):
    db = Database(str(tmp_path / "database.yaml"))
    before = Path(db.path).read_bytes()
    with pytest.raises(DatabaseError, match=r"slices.1000.name must be a name \(text\) or null without control"):
        with db.transaction() as data:
            data["slices"]["1000"] = {"slice_id": 1000, "owner": "student", "name": "lab\x1b[2J", "vms": []}
    assert Path(db.path).read_bytes() == before
    with db.transaction() as data:                         # a key the product does not know may hold anything
        data["note"] = "tab\there"
    assert Database(db.path).load()["note"] == "tab\there"


# --- item 7: what is rendered never holds a control character raw ------------------------------

def test_terminal_safe_escapes_controls_and_keeps_printable_unicode():
    from store.text import terminal_safe
    for _yaml, raw in EVIL.values():
        shown = terminal_safe(raw)
        assert not RAW.search(shown) and "\\x" in shown
    assert terminal_safe("\x1b]2;x\x07") == "\\x1b]2;x\\x07"
    assert terminal_safe("a\u202eb\u2028") == "a\\u202eb\\u2028"
    assert terminal_safe("naïve ✅ ─ 日本 ⚠️\n\tx") == "naïve ✅ ─ 日本 ⚠️\n\tx"
    assert terminal_safe("line\nbreak", keep="") == "line\\x0abreak"
    assert terminal_safe(terminal_safe("\x1b[2J")) == terminal_safe("\x1b[2J")


def _evil_slice(evil: str) -> dict:
    return {"slice_id": 1000, "owner": f"ana{evil}", "name": f"lab{evil}", "status": "design",
            "topology_type": f"custom{evil}", "vlan_pool_start": 100, "vlan_pool_end": 119,
            "vms": [{"vm_id": 1001, "name": f"web{evil}", "status": "design", "vnc_port": 5901,
                     "worker_ip": "10.0.10.1", "flavor": {"cores": 1, "ram_gb": 0.5, "disk_gb": 1, "image": "c"},
                     "interfaces": [{"name": "eth0", "mac": "52:54:00:03:e9:00", "vlan_id": None},
                                    {"name": "eth1", "mac": "52:54:00:03:e9:01", "vlan_id": 100, "link_id": 1}]},
                    {"vm_id": 1002, "name": f"db{evil}", "status": "design", "vnc_port": 5902,
                     "worker_ip": "10.0.10.2", "flavor": {"cores": 1, "ram_gb": 0.5, "disk_gb": 1, "image": "c"},
                     "interfaces": [{"name": "eth0", "mac": "52:54:00:03:ea:00", "vlan_id": None},
                                    {"name": "eth1", "mac": "52:54:00:03:ea:01", "vlan_id": 100, "link_id": 1}]}],
            "links": [{"link_id": 1, "vlan_id": 100, "vm1_id": 1001, "vm1_interface": "eth1", "vm2_id": 1002,
                       "vm2_interface": "eth1"}]}


@pytest.mark.parametrize("evil", sorted(EVIL))
def test_every_renderer_prints_names_escaped(evil):
    """Names that reach a renderer by any way (an older file, a future path) are printed escaped: the
    slice listing, the interfaces, the diagrams, the overview (menu and script mode)."""
    from menu.prompts import printable as terminal_safe  # the menu's name of the one function
    raw = EVIL[evil][1]
    s = _evil_slice(raw)
    row = OverviewRow(1000, s["owner"], s["name"], s["status"], s["topology_type"], 2, 1, ["10.0.10.1"],
                      None, None)
    out = io.StringIO()
    with redirect_stdout(out):
        for line in (cli.render_slices([s], show_owner=True) + cli.render_interfaces(s)
                     + cli_classes.render_diagrams([s]) + cli_classes.render_overview([row], ["10.0.10.1"])):
            say(line)
        for line in topology_render.render_diagram(s, charset="unicode"):
            commands.out(line)
    text = out.getvalue()
    assert not RAW.search(text), repr(text)
    assert terminal_safe(raw) in text                          # shown, escaped
    for line in topology_render.render_diagram(s):           # boxes measured on what is shown
        assert len(line) <= 80 and not RAW.search(line)
    table = cli_classes.render_overview([row], ["10.0.10.1"])[:3]     # columns measured on what is shown
    assert not RAW.search("".join(table)) and len(table[2].rstrip()) <= len(table[1])


def test_script_mode_output_of_a_file_with_escapes_is_escaped(tmp_path):
    topo = tmp_path / "t.yaml"
    topo.write_text('vms:\n  - {name: "a\\e]2;owned\\a", flavor: cirros, data_interfaces: 1}\n'
                    '  - {name: "b\\e[2J", flavor: "\\x9b6n", data_interfaces: 1}\nlinks: []\n')
    proc = subprocess.run([sys.executable, str(ROOT / "cli.py"), "topology", "check", str(topo)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "invalid name 'a\\x1b]2;owned\\x07'" in proc.stderr, proc.stderr
    assert not RAW.search(proc.stdout + proc.stderr), repr(proc.stderr)


# --- item 8: a refused file is described, never quoted ------------------------------------------

SHADOW = """\
root:$y$j9T$Qm3Zk1uXnF0cP9sJzY2vS.$Zx0Tq3C1b2n5m6v8LkJhGfDsAp9oIuYtReWq:19700:0:99999:7:::
daemon:*:19700:0:99999:7:::
bin:*:19700:0:99999:7:::
sys:*:19700:0:99999:7:::
ana:$6$saltsalt$hashhashhashhashhashhash:19701:0:99999:7:::
"""


def _shadow_texts() -> list:
    texts = [SHADOW]
    try:
        texts.append(Path("/etc/shadow").read_text())       # the real one, when this account may read it
    except (OSError, UnicodeDecodeError):
        pass
    return texts


def _no_line_of(text: str, shown: str) -> None:
    for line in text.splitlines():
        for piece in [line] + line.split(":"):
            if len(piece) >= 6:                              # not even a hash or salt on its own
                assert piece not in shown, (piece, shown)


@pytest.mark.parametrize("i", range(len(_shadow_texts())))
def test_a_password_file_given_as_a_roster_or_topology_prints_no_line_of_it(i):
    text = _shadow_texts()[i]
    shown = []
    for fmt in ("csv", "yaml"):
        students, problems = roster.parse_roster(text, fmt)
        assert not students and problems
        shown += [str(p) for p in problems]
    design, problems = topology_file.parse_topology(text)
    assert design is None and problems
    shown += [str(p) for p in problems]
    _no_line_of(text, "\n".join(shown))
    assert "column 1 is none of them" in "\n".join(shown)     # described instead


def test_a_password_file_given_as_the_cluster_config_or_database_prints_no_line_of_it(tmp_path):
    path = tmp_path / "shadow"
    for text in _shadow_texts():
        path.write_text(text)
        for load in (lambda: ClusterConfig.load(str(path)), lambda: Database(str(path)).load()):
            with pytest.raises((ConfigError, DatabaseError)) as e:
                load()
            _no_line_of(text, str(e.value))
        assert path.read_text() == text


def test_the_menus_roster_import_of_a_password_file_prints_no_line_of_it(tmp_path):
    """Option 16 as an admin runs it, on a copy of /etc/shadow named like a roster."""
    site = tmp_path / "site"
    site.mkdir()
    shutil.copyfile(ROOT / "database.yaml", site / "database.yaml")
    (site / "cluster.yaml").write_text(f"workers: [127.0.0.1]\nlog_file: {site / 'menu.log'}\n")
    for i, text in enumerate(_shadow_texts()):
        roster_file = site / f"class{i}.csv"
        roster_file.write_text(text)
        proc = subprocess.run([sys.executable, str(ROOT / "cli.py"), "--config", str(site / "cluster.yaml"),
                               "--db", str(site / "database.yaml")],
                              input=f"admin\nadmin\n16\n2\n{roster_file}\n0\n0\n", capture_output=True, text=True,
                              timeout=60)
        assert "The roster cannot be imported" in proc.stdout, proc.stdout[-2000:]
        _no_line_of(text, proc.stdout + proc.stderr)


def test_values_from_a_file_are_quoted_short_and_escaped():
    from store.text import excerpt
    assert excerpt("x" * 100) == "'" + "x" * 37 + "...'"
    assert excerpt("a\x1b[2Jb") == "'a\\x1b[2Jb'"
    assert excerpt(9) == "9"
    _students, problems = roster.parse_roster("username,quota\nalice," + "9" * 500 + "\n", "csv")
    assert len(str(problems[0])) < 140 and "..." in str(problems[0])


# --- item 8: no unsalted hash in the file once a process that may write it read it -------------

LEGACY = {name: hashlib.sha256(name.encode()).hexdigest() for name in ("admin", "student")}


def test_the_shipped_hashes_are_wrapped_at_the_first_read_and_still_log_in(tmp_path):
    path = tmp_path / "database.yaml"
    shutil.copyfile(ROOT / "database.yaml", path)
    assert LEGACY["admin"] in path.read_text()
    api, db, _ex = make_api(tmp_path, db_name="database.yaml")
    db.load()                                               # the first read: no login yet
    for name, legacy in LEGACY.items():
        for derived in (path, Path(db.cache_path)):
            assert legacy not in derived.read_text(), derived
        assert db.get_user(name)["password_hash"].startswith("sha256-scrypt$")
    assert api.authenticate("admin", "wrong")[0] is False
    info = ok(api.authenticate("admin", "admin"))
    assert info["default_password"] is True
    assert db.get_user("admin")["password_hash"].startswith("scrypt$")   # rehashed at the login, as before
    assert ok(api.authenticate("student", "student"))["username"] == "student"


def test_a_process_that_may_not_write_reads_bare_hashes_as_before(tmp_path, monkeypatch):
    import store.file
    path = tmp_path / "database.yaml"
    shutil.copyfile(ROOT / "database.yaml", path)
    before = path.read_bytes()
    monkeypatch.setattr(store.file.LockedFile, "may_write", lambda self: False)
    db = Database(str(path))
    assert db.get_user("admin")["password_hash"] == LEGACY["admin"]
    assert passwords.verify_password("admin", db.get_user("admin")["password_hash"])
    assert path.read_bytes() == before


def test_wrapped_hashes_verify_like_the_legacy_ones():
    wrapped = passwords.wrap_legacy(LEGACY["admin"])
    assert wrapped.startswith("sha256-scrypt$16384$8$1$") and LEGACY["admin"] not in wrapped
    assert passwords.verify_password("admin", wrapped) and not passwords.verify_password("Admin", wrapped)
    assert passwords.is_legacy(wrapped) and not passwords.is_bare_legacy(wrapped)
    assert passwords.verify_password("admin", LEGACY["admin"])       # what passwords.py accepted stays accepted


# --- item 8: nothing derived from the database is more readable than it -------------------------

def _other_group() -> int:
    for g in grp.getgrall():
        if g.gr_gid not in (0, os.getgid()):
            return g.gr_gid
    pytest.skip("no other group on this machine")


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o644])
def test_the_cache_the_lock_and_temporary_files_are_never_more_readable_than_the_database(tmp_path, monkeypatch,
                                                                                         mode):
    if os.geteuid() != 0:
        pytest.skip("giving a file another group needs root")
    import store.file
    path = tmp_path / "database.yaml"
    Database(str(path))
    os.unlink(str(path) + ".lock")
    os.unlink(str(path) + ".cache")
    group = _other_group()
    os.chown(path, -1, group)
    os.chmod(path, mode)
    seen = []
    real = store.file._exchange

    def watch(a, b):              # the temporary file, the instant before it becomes database.yaml
        st = os.stat(a)
        seen.append((st.st_mode & 0o777, st.st_gid))
        return real(a, b)

    monkeypatch.setattr(store.file, "_exchange", watch)
    db = Database(str(path))
    db.get_next_vm_id()
    assert seen == [(mode, group)]
    for derived in (db.cache_path, db.lock_path):
        st = os.stat(derived)
        assert st.st_mode & 0o777 & ~mode == 0 and st.st_gid == group, (derived, oct(st.st_mode), st.st_gid)
    st = os.stat(path)
    assert (st.st_mode & 0o777, st.st_gid) == (mode, group)          # the save kept them


def test_without_the_databases_group_derived_files_get_no_group_bits(tmp_path, monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("giving a file another group needs root")
    path = tmp_path / "database.yaml"
    Database(str(path))
    os.chown(path, -1, _other_group())
    os.chmod(path, 0o640)
    os.unlink(str(path) + ".cache")

    def refused(*_a):
        raise PermissionError("not a member of that group")

    monkeypatch.setattr(os, "fchown", refused)
    Database(str(path)).get_next_vm_id()
    assert os.stat(str(path) + ".cache").st_mode & 0o777 == 0o600
    assert os.stat(path).st_mode & 0o777 == 0o600                     # never readable by another group


def test_the_database_itself_stays_instructor_readable_yaml(tmp_path):
    db = Database(str(tmp_path / "database.yaml"))
    db.get_next_vm_id()
    assert yaml.safe_load(Path(db.path).read_text())["next_vm_id"] == 1001
