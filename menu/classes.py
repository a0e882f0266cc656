"""Menu options 15 (topology templates, import and export) and 16 (instructor tools), and their rendering.

Prompts and rendering only: every action is one ``OrchestratorAPI`` call
(``create_from_template``, ``import_topology``, ``export_slice``,
``import_roster``, ``overview``).  The render functions are shared with the
script mode (``commands.py``).

Files on the manager are read and written by the menu's own process, and
only their content goes to the use cases.  Through the manager service that
process runs as the user's own Unix account, so every user names their own
files; run on its own (embedded) it holds the database and the SSH key to
every host, so only an admin names paths there, and a student imports an
example or pasted text and copies an export from the screen.
"""
from __future__ import annotations

import os
from typing import Optional

from hosts.runner import interrupts_ignored
from menu.prompts import (
    ERR,
    OK,
    WARN,
    Cancel,
    ask,
    ask_optional,
    ask_valid,
    choose_message,
    parse_choice,
    parse_int,
    parse_number,
    parse_yes_no,
    pool_text,
    read_line,
    render_flavors,
    result,
    say,
)
from models import Flavor
from store.text import terminal_safe
from topology import files as topology_file
from topology import model as topology
from topology import render as topology_render
from usecases import roster
from usecases.instructor import default_password_file, open_secret_file, write_password_file

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES_DIR = os.path.join(HERE, "topologies")
MAX_PASTE_LINES = 5000

TEMPLATE_HELP = {
    "linear": "a chain: each VM joined to the next",
    "ring": "a chain closed by a link from the last VM to the first",
    "star": "vm1 in the middle, joined to every other VM",
    "mesh": "every VM joined to every other VM (full mesh)",
}


# --- files on the manager ----------------------------------------------------------------

def read_text_file(path: str, limit: int = topology_file.MAX_TEXT) -> tuple:
    """(True, text) of a regular UTF-8 file of at most ``limit`` bytes, else (False, why)."""
    path = os.path.expanduser(path.strip())
    try:
        if not os.path.isfile(path):
            return False, f"{path}: no such file" if not os.path.exists(path) else f"{path}: not a regular file"
        if os.path.getsize(path) > limit:
            return False, f"{path}: too large (at most {limit} bytes)"
        with open(path, encoding="utf-8") as f:
            return True, f.read(limit + 1)
    except UnicodeDecodeError:
        return False, f"{path}: not a text file (UTF-8)"
    except OSError as e:
        return False, f"{path}: {e.strerror or e}"


def write_new_file(path: str, text: str) -> tuple:
    """(True, absolute path) after writing ``text`` to a file that did not exist; never overwrites."""
    path = os.path.expanduser(path.strip())
    try:
        with open(path, "x", encoding="utf-8") as f:
            f.write(text)
    except FileExistsError:
        return False, f"{path} already exists: choose another name (nothing is ever overwritten)"
    except OSError as e:
        return False, f"{path}: {e.strerror or e}"
    return True, os.path.abspath(path)


def example_topologies() -> list:
    """[(name, path, design)] of the valid example topology files shipped in topologies/."""
    out = []
    for entry in sorted(os.listdir(EXAMPLES_DIR)) if os.path.isdir(EXAMPLES_DIR) else []:
        path = os.path.join(EXAMPLES_DIR, entry)
        if entry.endswith(".yaml"):
            ok, text = read_text_file(path)
            design = topology_file.parse_topology(text)[0] if ok else None
            if design is not None:
                out.append((entry[:-5], path, design))
    return out


# --- rendering ---------------------------------------------------------------------------

def render_diagrams(slices: list, width: int = 80) -> list:
    """The text diagram of each slice (option 5 shows them under the slices' details)."""
    lines = []
    for s in slices:
        lines += [""] + topology_render.render_diagram(s, width=width)
    return lines


def render_built(s: dict) -> list:
    """A slice just made from a template or a file: its VMs, links with VLANs, and its picture."""
    lines = [f"Slice created! ID: {s['slice_id']} ({s.get('name')}, {s.get('topology_type')}: "
             f"{topology.plural(len(s.get('vms', [])), 'VM')}, {topology.plural(len(s.get('links', [])), 'link')}, "
             f"VLAN pool {pool_text(s)})"]
    for vm in s.get("vms", []):
        lines.append(f"   VM {vm['vm_id']}: {vm['name']} (VNC: {vm.get('vnc_port')}, Worker: {vm.get('worker_ip')})")
    return lines + [""] + topology_render.render_diagram(s)


def render_problems(message: str) -> list:
    return message.split("\n")


def age_text(seconds: Optional[float]) -> str:
    """``3d 4h``, ``2h 05m``, ``7m``."""
    if seconds is None:
        return ""
    minutes = int(seconds // 60)
    days, rest = divmod(minutes, 24 * 60)
    hours, mins = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    return f"{hours}h {mins:02d}m" if hours else f"{mins}m"


def lease_cell(row) -> str:
    """What is left of the slice's lease (``6d 23h``), ``ENDED``, or ``-`` (no lease); the end is in the CSV."""
    if not getattr(row, "lease_end", None):
        return "-"
    left = row.lease_left if row.lease_left is not None else 0
    return age_text(left) if left > 0 else "ENDED"


def render_overview(rows: list, workers: list) -> list:
    """The instructor's table of every slice; workers by their number in the config (legend below).

    Names are escaped (``terminal_safe``) before the columns are measured."""
    if not rows:
        return ["No slices."]
    number = {ip: str(i) for i, ip in enumerate(workers, 1)}
    leases = any(getattr(r, "lease_end", None) for r in rows)  # the Lease column once a slice has a lease
    table = [("ID", "Owner", "Slice", "Status", "Type", "VMs", "Links", "Workers", "Deployed since")
             + (("Lease",) if leases else ())]
    for r in rows:
        since = f"{r.deployed_at[5:16]} ({age_text(r.running_for)})" if r.deployed_at else "-"  # MM-DD HH:MM
        table.append((str(r.slice_id), *(terminal_safe(str(v), keep="") for v in (r.owner, r.name, r.status,
                                                                                  r.topology_type)),
                      str(r.vms), str(r.links), ",".join(number.get(w, w) for w in r.workers) or "-", since)
                     + ((lease_cell(r),) if leases else ()))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    right = {0, 5, 6}
    lines = ["  ".join(cell.rjust(w) if i in right else cell.ljust(w)
                       for i, (cell, w) in enumerate(zip(row, widths))).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    running = sum(r.status == "running" for r in rows)
    lines.append("")
    lines.append(f"{topology.plural(len(rows), 'slice')} ({running} running), "
                 f"{topology.plural(sum(r.vms for r in rows), 'VM')}, "
                 f"{topology.plural(len({r.owner for r in rows}), 'owner')}")
    used = sorted({w for r in rows for w in r.workers}, key=lambda w: (w not in number, int(number.get(w, 0)), w))
    if used:
        lines.append("Workers: " + ", ".join(f"{number[w]} = {w}" for w in used if w in number))
    return lines


def render_roster_report(report, shown_passwords: bool = True) -> list:
    """What a roster import did, student by student; generated passwords shown once."""
    lines = []
    for o in report.students:
        account = "account created" if o.account == "created" else \
            f"account exists (not changed, quota {o.quota})" if o.account == "exists" else \
            "account missing (deleted while the import ran)"
        text = f"  {o.username:<16} {account}"
        if o.password and shown_passwords:
            text += f", password: {o.password}"
        if o.slice:
            text += f"; {o.message}"
        lines.append(text)
    made = report.count(account="created")
    lines.append("")
    summary = f"{made} account(s) created, {report.count(account='exists')} already existed"
    if report.slice_name:
        summary += (f"; slices {report.slice_name}: {report.count(slice='made')} made, "
                    f"{report.count(slice='exists')} already there, {report.count(slice='failed')} failed")
    lines.append(summary)
    if report.password_file:
        lines.append(f"Generated passwords are in {report.password_file} (only you can read it); "
                     "they are not shown again.")
    if report.count(slice="failed"):
        lines.append("Fix what failed and run the same roster again: what is already made is left as it is.")
    return lines


def import_roster_with_file(api, username: str, password_file: str, *args, progress=None) -> tuple:
    """``api.import_roster``, the generated passwords written by this process to a new 0600 file.

    The file is made first (so a file that cannot be made changes nothing), with
    this process's own rights — the manager service never writes a path a
    client names; it returns the passwords in the report.  No generated
    password: the file is removed again.
    """
    try:
        fd = open_secret_file(os.path.expanduser(password_file))
    except OSError as e:
        return False, f"Cannot create the password file {password_file}: {e.strerror or e} (nothing was changed)"
    try:
        ok, report = api.import_roster(username, *args, progress=progress)
    except BaseException:
        os.close(fd)
        os.unlink(os.path.expanduser(password_file))
        raise
    with interrupts_ignored():
        written = write_password_file(fd, report.students if not isinstance(report, str) else [])
        if written:
            report.password_file = os.path.abspath(os.path.expanduser(password_file))
        else:
            os.unlink(os.path.expanduser(password_file))
    return ok, report


# --- asking for a topology -----------------------------------------------------------------

def read_pasted() -> str:
    """Lines typed or pasted until a line holding only '.'."""
    say("Paste the topology file, then a line holding only '.' (Ctrl-C cancels):")
    lines = []
    while len(lines) < MAX_PASTE_LINES:
        try:
            line = read_line("")
        except (EOFError, KeyboardInterrupt):
            say()
            raise Cancel() from None
        if line.strip() == ".":
            return "\n".join(lines) + "\n"
        lines.append(line)
    raise Cancel()


def choose_topology(files: bool, paste: bool = True) -> tuple:
    """Ask for a topology: an example, a file (``files``: admins only), or pasted text.  (text, where from)."""
    examples = example_topologies()
    say("\nTopology files:")
    for i, (name, _path, design) in enumerate(examples, 1):
        say(f"{i}. {name:<14} {topology.plural(len(design.vms), 'VM')}, "
            f"{topology.plural(len(design.links), 'link')} ({design.topology_type}, example)")
    choices = ["example"] * len(examples) + (["file"] if files else []) + (["paste"] if paste else [])
    for i, choice in enumerate(choices[len(examples):], len(examples) + 1):
        say(f"{i}. A file on this machine (its path)" if choice == "file" else f"{i}. Paste a topology file here")
    n = ask_valid(f"Choose (1-{len(choices)}): ", parse_int(1, len(choices)), choose_message(len(choices)))
    if choices[n - 1] == "example":
        _name, path, _design = examples[n - 1]
    elif choices[n - 1] == "paste":
        return read_pasted(), "the pasted topology"
    else:
        path = ask("Path of the topology file: ")
    ok, text = read_text_file(path)
    if not ok:
        say(f"\n{ERR} {text}")
        raise Cancel()
    return text, path


def parse_internet(kind: str, n: int):
    def parse(text: str) -> Optional[str]:
        try:
            topology.build_template(kind, n, "cirros", text)
        except topology.TemplateError:
            return None
        return text
    return parse


# --- option 15 ---------------------------------------------------------------------------

def topology_menu(cli) -> None:
    """Option 15: make a slice from a template, import a topology file, export a slice."""
    say("\n1. Create a slice from a template (linear, ring, star, full mesh)")
    say("2. Import a topology file into a new slice")
    say("3. Export a slice (topology file or Graphviz DOT)")
    choice = ask_valid("Choice (1-3): ", parse_int(1, 3), "Choose 1, 2 or 3")
    (from_template, import_file, export_slice)[choice - 1](cli)


def progress_line(text: str) -> None:
    say(f"   {text}")


def from_template(cli) -> None:
    say("\nTemplates:")
    for i, kind in enumerate(topology.TEMPLATES, 1):
        low, high = topology.template_sizes(kind)
        say(f"{i}. {kind:<7} {TEMPLATE_HELP[kind]} ({low}-{high} VMs)")
    kind = ask_valid(f"Choose template (1-{len(topology.TEMPLATES)}): ", parse_choice(list(topology.TEMPLATES)),
                     choose_message(len(topology.TEMPLATES)))
    low, high = topology.template_sizes(kind)
    n = ask_valid(f"Number of VMs ({low}-{high}): ", parse_int(low, high), f"Enter a number from {low} to {high}")
    say("\nAvailable flavors:")
    names = Flavor.names()
    for line in render_flavors():
        say(line)
    flavor = ask_valid(f"Choose flavor (1-{len(names)}): ", parse_choice(names), choose_message(len(names)))
    internet = ask_valid("Internet for which VMs? (none, all, first, or numbers like 1,3): ",
                         parse_internet(kind, n), f"Answer none, all, first, or VM numbers from 1 to {n}")
    name = ask("Slice name: ")
    say(f"Creating {topology.plural(n, 'VM')} and their links (all or nothing; Ctrl-C undoes it)...")
    ok, s = cli.api.create_from_template(cli.username, kind, n, flavor, internet, name, progress=progress_line)
    show_built(ok, s)


def show_built(ok: bool, s) -> None:
    if not ok:
        say()
        for i, line in enumerate(render_problems(s)):
            say(f"{ERR} Error: {line}" if i == 0 else line)
        return
    lines = render_built(s)
    say(f"\n{OK} {lines[0]}")
    for line in lines[1:]:
        say(line)
    say("Deploy it with option 6.")


def names_files(cli) -> bool:
    """May this user name files on the manager?  Through the manager service the menu runs as the user's
    own account, so everyone may (their files, their rights); run on its own it holds every key, so only
    an admin may."""
    return bool(getattr(cli.api, "remote", False)) or cli.is_admin


def import_file(cli) -> None:
    text, where = choose_topology(files=names_files(cli))
    design, problems = topology_file.parse_topology(text)
    if problems:
        say(f"\n{ERR} {where} cannot be imported ({topology.plural(len(problems), 'problem')}; nothing was made):")
        for p in problems:
            say(f"  {p}")
        return
    say("")
    for line in topology_render.render_diagram(design):
        say(line)
    if design.name:
        name = ask_optional(f"\nSlice name (Enter: {design.name}): ", design.name)
    else:
        name = ask("\nSlice name: ")
    say(f"Creating {topology.plural(len(design.vms), 'VM')} and {topology.plural(len(design.links), 'link')} "
        "(all or nothing; Ctrl-C undoes it)...")
    ok, s = cli.api.import_topology(cli.username, text, name, progress=progress_line)
    show_built(ok, s)


def export_slice(cli) -> None:
    slice_id = ask_valid("\nSlice ID: ", parse_number, "Slice ID must be a number")
    say("1. Its topology file (YAML)\n2. Its Graphviz graph (DOT), for a picture in a report")
    fmt = ("yaml", "dot")[ask_valid("Choice (1-2): ", parse_int(1, 2), "Choose 1 or 2") - 1]
    ok, text = cli.api.export_slice(cli.username, slice_id, fmt)
    if not ok:
        return result(False, text)
    say("")
    for line in text.rstrip("\n").split("\n"):
        say(line)
    if not names_files(cli):  # a student copies it from the screen: the menu's files are not theirs
        return
    target = ask_optional("\nSave it to a new file? (its path; Enter: do not save): ", "")
    if not target:
        return
    ok, where = write_new_file(target, text)
    result(ok, f"Written to {where}" if ok else where)
    if ok and fmt == "dot":
        say(f"   Draw it with: dot -Tpng {where} -o {os.path.splitext(where)[0]}.png")


# --- option 16 ---------------------------------------------------------------------------

def instructor_menu(cli) -> None:
    """Option 16 (admin): the overview of every slice, or a class roster."""
    if not cli.is_admin:
        say(f"\n{ERR} Only an admin can use the instructor tools.")
        return
    say("\n1. Overview of every slice")
    say("2. Import a class roster (accounts, and a slice from a topology for each student)")
    if ask_valid("Choice (1-2): ", parse_int(1, 2), "Choose 1 or 2") == 1:
        return show_overview(cli)
    roster_import(cli)


def show_overview(cli) -> None:
    ok, rows = cli.api.overview(cli.username)
    if not ok:
        return result(False, rows)
    say("")
    for line in render_overview(rows, cli.api.cluster_workers(cli.username)[1]):
        say(line)


def roster_import(cli) -> None:
    path = ask("\nRoster file (.csv, .yaml or .yml): ")
    fmt = roster.format_of(path)
    if fmt is None:
        return result(False, "The roster file must end in .csv, .yaml or .yml")
    ok, text = read_text_file(path, roster.MAX_TEXT)
    if not ok:
        return result(False, text)
    students, problems = roster.parse_roster(text, fmt)
    if problems:
        say(f"\n{ERR} The roster cannot be imported ({topology.plural(len(problems), 'problem')}; "
            "nothing was changed):")
        for p in problems:
            say(f"  {p}")
        return
    say(f"\nThe roster lists {topology.plural(len(students), 'student')}.")
    topology_text, slice_name = None, None
    if ask_valid("Give every student a new slice from a topology file? (y/n): ", parse_yes_no, "Answer y or n"):
        topology_text, _where = choose_topology(files=True, paste=False)
        design, problems = topology_file.parse_topology(topology_text)
        if problems:
            say(f"\n{ERR} The topology cannot be used ({topology.plural(len(problems), 'problem')}):")
            for p in problems:
                say(f"  {p}")
            return
        slice_name = ask_optional(f"Slice name for every student (Enter: {design.name}): ", design.name or "") \
            if design.name else ask("Slice name for every student: ")
    password_file = default_password_file(os.path.expanduser(path))
    if not ask_valid(f"Go ahead? New accounts' generated passwords go to {password_file} (y/n): ",
                     parse_yes_no, "Answer y or n"):
        raise Cancel()
    ok, report = import_roster_with_file(cli.api, cli.username, password_file, text, fmt, topology_text,
                                         slice_name, progress=progress_line)
    if isinstance(report, str):
        say()
        for i, line in enumerate(render_problems(report)):
            say(f"{ERR} Error: {line}" if i == 0 else line)
        return
    say(f"\n{OK} Roster imported:" if ok else f"\n{WARN}  Roster imported, with failures:")
    for line in render_roster_report(report):
        say(line)
