"""Script mode: ``python3 cli.py roster import FILE``, ``slice export ID``, ``overview``, ... as a script runs them.

Each test runs the program in a process of its own and checks its exit
status, its plain output and what the database then holds.  Commands that
make VMs run through ``tests/fake_cli.py`` (the real cli.py, the fake hosts);
those that only read the database run the real ``cli.py`` itself.
"""
from __future__ import annotations

import os
import shlex
import shutil
import stat
import subprocess
import sys

import pytest
import yaml
from fakes import LAB_LIKE
from menu_driver import REPO

from cli import make_parser
from database import Database
from topology import files as tf
from topology import model as t
from usecases.accounts import Accounts
from usecases.services import Services

CLI = REPO / "cli.py"
FAKE_CLI = REPO / "tests" / "fake_cli.py"
RING4 = REPO / "topologies" / "ring4.yaml"


@pytest.fixture
def site(tmp_path):
    db = tmp_path / "database.yaml"
    shutil.copyfile(REPO / "database.yaml", db)
    cfg = tmp_path / "cluster.yaml"
    cfg.write_text(yaml.safe_dump(dict(LAB_LIKE, log_file=str(tmp_path / "cli.log"))))
    for user in ("admin", "student"):  # their first login upgrades the shipped hashes: done here, once
        assert Accounts(Services(Database(str(db)), None, None, None)).authenticate(user, user)[0]
    return tmp_path


def run(site, *args, program=CLI, fake=False, where="before", user="admin", password=None,
        stdin=None) -> subprocess.CompletedProcess:
    """``cli.py --config --db ARGS --user USER`` with the password piped (the options after the subcommand
    when ``where`` says so)."""
    options = ["--config", str(site / "cluster.yaml"), "--db", str(site / "database.yaml")]
    if user is not None:
        options += ["--user", user]
    argv = options + list(args) if where == "before" else list(args) + options
    env = dict(os.environ)
    env.pop("CLOUD_CONFIG", None)
    env.pop("CLOUD_DB", None)
    proc = subprocess.run([sys.executable, str(FAKE_CLI if fake else program)] + argv, capture_output=True,
                          text=True, timeout=300, cwd=site, env=env,
                          input=stdin if stdin is not None else f"{password or user}\n")
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    return proc


def data(site) -> dict:
    return yaml.safe_load((site / "database.yaml").read_text())


def test_topology_template_and_check_need_no_database(tmp_path):
    proc = subprocess.run([sys.executable, str(CLI), "--db", str(tmp_path / "missing" / "db.yaml"), "topology",
                           "template", "ring", "4", "--internet", "first", "--name", "ring4"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr == ""
    design = tf.parse_topology(proc.stdout)[0]
    assert design == t.Design(t.ring(4, internet="first").vms, t.ring(4, internet="first").links, "ring", "ring4")
    (tmp_path / "ring4.yaml").write_text(proc.stdout)
    proc = subprocess.run([sys.executable, str(CLI), "topology", "check", str(tmp_path / "ring4.yaml")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("Topology ring4 (ring): 4 VMs, 4 links\n")
    proc = subprocess.run([sys.executable, str(CLI), "topology", "template", "star", "3", "--dot"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("graph ") and proc.stdout.count(" -- n") == 2


@pytest.mark.parametrize("args,error", [
    (["topology", "template", "ring", "2"], "error: A ring needs at least 3 VMs\n"),
    (["topology", "template", "mesh", "x"], "error: the number of VMs must be a whole number\n"),
    (["topology", "check", "/nonexistent.yaml"], "error: /nonexistent.yaml: no such file\n"),
])
def test_offline_commands_fail_with_one_line_and_status_1(args, error):
    proc = subprocess.run([sys.executable, str(CLI)] + args, capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout, proc.stderr) == (1, "", error)


def test_topology_check_names_every_bad_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(RING4.read_text().replace("flavor: cirros, data_interfaces: 2, internet: true",
                                             "flavor: tiny, data_interfaces: 2, internet: true")
                   .replace("if1: eth2, vm2: vm4", "if1: eth0, vm2: vm4"))
    proc = subprocess.run([sys.executable, str(CLI), "topology", "check", str(bad)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.split("\n")[:3] == [
        f"error: {bad}: 2 problems", "  line 14: VM 'vm1': unknown flavor 'tiny' (cirros, ubuntu)",
        "  line 21: link 3: eth0 cannot be in a link (links join data interfaces eth1 and above)"]


def test_roster_import_with_a_topology_then_again(site):
    (site / "class.csv").write_text("username,quota,password\n" +
                                    "".join(f"st{i},6,generate\n" for i in range(1, 6)))
    proc = run(site, "roster", "import", str(site / "class.csv"), "--topology", str(RING4), fake=True)
    assert proc.returncode == 0, proc.stderr
    assert "5 account(s) created, 0 already existed; slices ring4: 5 made, 0 already there, 0 failed" in proc.stdout
    files = [f for f in os.listdir(site) if f.startswith("class-passwords-")]
    assert len(files) == 1 and stat.S_IMODE(os.stat(site / files[0]).st_mode) == 0o600
    for i in range(1, 6):
        line = next(x for x in proc.stdout.split("\n") if x.startswith(f"  st{i} ") and "password: " in x)
        assert line.split("password: ")[1].split(";")[0] in (site / files[0]).read_text()
    before = (site / "database.yaml").read_bytes()
    again = run(site, "roster", "import", str(site / "class.csv"), "--topology", str(RING4), fake=True)
    assert again.returncode == 0, again.stderr
    assert "0 account(s) created, 5 already existed; slices ring4: 0 made, 5 already there, 0 failed" in again.stdout
    assert "password" not in again.stdout.replace("passwords", "")
    assert (site / "database.yaml").read_bytes() == before


def test_a_bad_roster_exits_1_and_changes_nothing(site):
    (site / "class.yaml").write_text("- {username: ana}\n- {username: ana}\n- {username: bo, quota: -3}\n")
    before = (site / "database.yaml").read_bytes()
    proc = run(site, "roster", "import", str(site / "class.yaml"))
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.split("\n")[:3] == ["error: The roster has 2 problems; nothing was made:",
                                           "  line 2: ana is listed twice (first on line 1)",
                                           "  line 3: bo: quota must be a whole number from 0 to 1000, not -3"]
    assert (site / "database.yaml").read_bytes() == before
    proc = run(site, "roster", "import", str(site / "class.txt"))
    assert (proc.returncode, proc.stderr) == (1, "error: the roster file must end in .csv, .yaml or .yml\n")


def test_a_roster_with_a_failing_slice_exits_1(site):
    (site / "class.csv").write_text("username\nana\n")
    env_fail = {"FAKE_CLI_FAIL": "create_overlay"}
    proc = subprocess.run([sys.executable, str(FAKE_CLI), "--config", str(site / "cluster.yaml"), "--db",
                           str(site / "database.yaml"), "roster", "import", str(site / "class.csv"), "--topology",
                           str(RING4), "--passwords", str(site / "pw.txt"), "--user", "admin"], capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, **env_fail), input="admin\n")
    assert proc.returncode == 1 and "slices ring4: 0 made, 0 already there, 1 failed" in proc.stdout
    assert "Traceback" not in proc.stderr and data(site)["users"]["ana"]["slices"] == []


def test_slice_import_export_show_and_overview(site):
    proc = run(site, "slice", "import", str(RING4), "--owner", "student", fake=True)
    assert proc.returncode == 0, proc.stderr
    assert "Slice created! ID: 1000 (ring4, ring: 4 VMs, 4 links, VLAN pool 100-119)" in proc.stdout
    assert data(site)["slices"]["1000"]["owner"] == "student"

    proc = run(site, "slice", "export", "1000", where="after")  # the real cli.py; options after the command
    assert proc.returncode == 0 and proc.stderr == ""
    design = tf.parse_topology(proc.stdout)[0]
    original = tf.parse_topology(RING4.read_text())[0]
    assert (design.vms, design.links, design.name) == (original.vms, original.links, "ring4")

    proc = run(site, "slice", "export", "1000", "--dot", "--output", str(site / "ring.dot"))
    assert proc.returncode == 0 and proc.stdout == f"written to {site / 'ring.dot'}\n"
    assert (site / "ring.dot").read_text().count(" -- n") == 4
    proc = run(site, "slice", "export", "1000", "--dot", "--output", str(site / "ring.dot"))
    assert proc.returncode == 1 and "already exists" in proc.stderr

    proc = run(site, "slice", "show", "1000")
    assert proc.returncode == 0 and proc.stdout.startswith("Slice ring4 (1000, ring, design): 4 VMs, 4 links\n")
    assert "  VLAN 103  vm4 eth2 -- vm1 eth2" in proc.stdout

    proc = run(site, "overview")
    assert proc.returncode == 0
    lines = proc.stdout.split("\n")
    assert lines[0].split()[:3] == ["ID", "Owner", "Slice"]
    assert lines[2].split() == ["1000", "student", "ring4", "design", "ring", "4", "4", "1,2,3", "-"]
    proc = run(site, "overview", "--csv")
    assert proc.stdout.split("\n")[1] == "1000,student,ring4,design,ring,4,4,10.9.0.11 10.9.0.12 10.9.0.13,,,,"


def test_slice_template_for_a_user(site):
    proc = run(site, "slice", "template", "star", "5", "--owner", "student", "--name", "s5", "--internet", "first",
               fake=True)
    assert proc.returncode == 0, proc.stderr
    s = data(site)["slices"]["1000"]
    assert (s["owner"], s["name"], s["topology_type"], len(s["vms"]), len(s["links"])) == ("student", "s5", "star",
                                                                                          5, 4)
    proc = run(site, "slice", "template", "star", "5", "--owner", "student", "--name", "s6", fake=True)
    assert (proc.returncode, proc.stderr) == (1, "error: Quota exceeded: 5 VMs needed, student uses 5 of 6\n")


@pytest.mark.parametrize("args,error", [
    (["slice", "export", "1000"], "error: Slice not found or not authorized\n"),
    (["slice", "import", "/nonexistent.yaml", "--owner", "student"], "error: /nonexistent.yaml: no such file\n"),
    (["slice", "import", str(RING4), "--owner", "nobody"], "error: User not found\n"),
    (["overview", "--user", "student"], "error: Only an admin can do this\n"),
    (["roster", "import", "class.csv", "--user", "student"], "error: Only an admin can do this\n"),
    (["slice", "import", str(RING4), "--owner", "admin", "--user", "student"],
     "error: Only an admin can make a slice for another user\n"),
    (["slice", "export", "1000", "--user", "student", "--password-file", "/nonexistent"],
     "error: /nonexistent: No such file or directory\n"),
])
def test_refusals_are_one_line_on_stderr_with_status_1(site, args, error):
    (site / "class.csv").write_text("username\nana\n")
    before = (site / "database.yaml").read_bytes()
    user = args[args.index("--user") + 1] if "--user" in args else "admin"
    proc = run(site, *args, password=user)
    assert (proc.returncode, proc.stdout, proc.stderr) == (1, "", error)
    assert (site / "database.yaml").read_bytes() == before


def test_a_database_that_cannot_be_used_is_status_2(site):
    (site / "database.yaml").write_text("users: [\n")
    proc = run(site, "overview")
    assert proc.returncode == 2 and proc.stdout == "" and proc.stderr.startswith("error: cannot start: ")


def test_bad_command_lines_are_usage_errors(site):
    proc = run(site, "slice", "import", str(RING4))
    assert proc.returncode == 2 and "the following arguments are required: --owner" in proc.stderr
    proc = run(site, "roster")
    assert proc.returncode == 2 and "usage:" in proc.stderr


def readme_commands() -> list:
    """The ``python3 cli.py ...`` lines of the README's instructor workflow (up to a redirection or &&)."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Classes: templates, topology files, rosters", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    out = []
    for line in block.split("\n"):
        line = line.split(" #", 1)[0].strip()
        if line.startswith("python3 cli.py "):
            words = shlex.split(line)
            cut = next((i for i, w in enumerate(words) if w in (">", "&&", "|")), len(words))
            out.append(words[2:cut])
    return out


def test_the_readme_workflow_is_made_of_real_commands():
    found = readme_commands()
    assert [w[:2] for w in found] == [["topology", "template"], ["topology", "check"], ["roster", "import"],
                                      ["overview"], ["overview", "--csv"], ["slice", "export"],
                                      ["slice", "export"], ["slice", "show"]]
    parser = make_parser()
    for words in found:
        args = parser.parse_args(words)
        assert callable(args.run), words


def test_every_script_command_logs_in_first(site):
    """Issue 17 item 2: no login, a wrong password, stdin closed: refused with one line, nothing done."""
    (site / "class.csv").write_text("username,quota\nmallory,1000\n")
    before = (site / "database.yaml").read_bytes()
    for args in (["roster", "import", "class.csv"], ["overview"], ["slice", "export", "1000"],
                 ["slice", "template", "ring", "3", "--owner", "admin", "--name", "x"]):
        proc = run(site, *args, password="wrong")
        assert (proc.returncode, proc.stdout) == (1, ""), proc
        assert proc.stderr == "error: login as admin refused: Invalid credentials!\n"
        proc = run(site, *args, stdin="")
        assert proc.returncode == 1 and proc.stderr.startswith("error: a password is needed"), proc
    env = dict(os.environ, CLOUD_PASSWORD="admin", PASSWORD="admin")
    proc = subprocess.run([sys.executable, str(CLI), "--config", str(site / "cluster.yaml"), "--db",
                           str(site / "database.yaml"), "--user", "admin", "overview"], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 1 and "a password is needed" in proc.stderr
    proc = subprocess.run([sys.executable, str(CLI), "--config", str(site / "cluster.yaml"), "--db",
                           str(site / "database.yaml"), "--plan", "1000", "--user", "student"], input="nope\n",
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "refused" in proc.stderr
    assert (site / "database.yaml").read_bytes() == before


def test_a_password_file_must_be_yours_and_private(site):
    pw = site / "pw"
    pw.write_text("admin\n")
    pw.chmod(0o644)
    proc = run(site, "overview", "--password-file", str(pw), stdin="")
    assert proc.returncode == 1 and "others may read or change it (mode 0644)" in proc.stderr
    pw.chmod(0o600)
    proc = run(site, "overview", "--password-file", str(pw), stdin="")
    assert proc.returncode == 0, proc.stderr
    link = site / "pwlink"
    link.symlink_to(pw)
    proc = run(site, "overview", "--password-file", str(link), stdin="")
    assert proc.returncode == 1 and "error: " in proc.stderr


def test_a_student_scripts_only_their_own_slices(site):
    proc = run(site, "slice", "template", "ring", "3", "--owner", "admin", "--name", "adm", fake=True)
    assert proc.returncode == 0, proc.stderr
    for args in (["slice", "export", "1000"], ["slice", "show", "1000"]):
        proc = run(site, *args, user="student")
        assert (proc.returncode, proc.stderr) == (1, "error: Slice not found or not authorized\n")
    proc = run(site, "slice", "template", "ring", "3", "--owner", "student", "--name", "mine", fake=True,
               user="student")
    assert proc.returncode == 0, proc.stderr
    assert run(site, "slice", "export", "1004", user="student").returncode == 0
