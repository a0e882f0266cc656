"""Script mode: the class tools without the menu, e.g. ``python3 cli.py roster import class.csv``.

Subcommands (``--config`` and ``--db`` may come before or after them)::

    overview [--csv]                                    every slice in one table
    roster import FILE [--topology FILE] [--slice-name NAME] [--passwords FILE]
    slice import FILE --owner USER [--name NAME]        a topology file as a new slice of USER
    slice template KIND N --owner USER --name NAME [--flavor F] [--internet WHICH]
    slice export ID [--dot] [--output FILE]             topology file (or DOT) on stdout or to a new file
    slice show ID                                       the slice's text diagram
    topology template KIND N [--flavor F] [--internet WHICH] [--name NAME] [--dot]
    topology check FILE                                 is it a valid topology file? (its diagram)
    capture SLICE TARGET [--filter EXPR] [--count N] [--seconds S] [--pcap FILE]
                                                        packets on "link N" or "VM_ID ethN": lines, or a pcap file
    link impair SLICE LINK [--delay D] [--jitter J] [--loss L] [--rate R] | --clear
    snapshot list|save|restore|delete ...               disk snapshots of VMs (see menu/snapshots_leases.py)
    lease show|set|reap ...                             slice leases (reap: the operator's, embedded mode)

Who may: every command that reads or changes slices or accounts logs in
first and then acts as that user, with the same checks as the menu (a
student exports only their own slices and captures or impairs only their
own links; rosters and the overview are an admin's).  The user is ``--user NAME`` (default: this Unix account's name);
the password is read from ``--password-file FILE`` (a file of this account's
that nobody else may read or write: mode 0600 or stricter), else asked on
the terminal, else the first line of standard input when it is piped.
Never from the environment.  ``topology template`` and ``topology check``
touch no database and need no login.

Output is plain text on stdout; errors go to stderr.  Exit status: 0 when it
all worked, 1 when something was refused or failed (for a roster: any
student's slice), 2 for a bad command line or a config/database that cannot
be used.  Never a traceback (unexpected errors: one line, details in the log).
"""
from __future__ import annotations

import argparse
import csv
import getpass
import io
import logging
import os
import pwd
import stat
import sys
from typing import Optional

from menu import classes as cli_classes
from menu import snapshots_leases
from menu.script_io import Failed, checked, out, safe
from topology import files as topology_file
from topology import model as topology
from topology import render as topology_render
from usecases import roster
from usecases.instructor import default_password_file

log = logging.getLogger("cloudrepo.commands")


def add_subcommands(parser: argparse.ArgumentParser) -> None:
    """The subcommands, on the menu's parser (no subcommand: the menu)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS, help="cluster config YAML")
    common.add_argument("--db", default=argparse.SUPPRESS, help="database YAML")
    common.add_argument("--socket", default=argparse.SUPPRESS, help="the manager service's socket")
    common.add_argument("--user", default=argparse.SUPPRESS, metavar="NAME",
                        help="the account to log in as (default: this Unix account's name)")
    common.add_argument("--password-file", default=argparse.SUPPRESS, metavar="FILE",
                        help="read the password from this file (yours, mode 0600); else the terminal or stdin")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("overview", parents=[common], help="every slice in one table (admin)")
    p.add_argument("--csv", action="store_true", help="CSV instead of a table")
    p.set_defaults(run=run_overview)

    rost = sub.add_parser("roster", help="class rosters (admin)").add_subparsers(dest="action", metavar="ACTION",
                                                                               required=True)
    p = rost.add_parser("import", parents=[common], help="accounts (and a slice each) from a YAML or CSV roster")
    p.add_argument("file", help="the roster: .csv, .yaml or .yml")
    p.add_argument("--topology", metavar="FILE", help="give every student a new slice from this topology file")
    p.add_argument("--slice-name", metavar="NAME", help="the slices' name (default: the topology file's name)")
    p.add_argument("--passwords", metavar="FILE", help="where generated passwords go (a new file, mode 0600; "
                                                       "default: ROSTER-passwords-TIME.txt beside the roster)")
    p.set_defaults(run=run_roster_import)

    sl = sub.add_parser("slice", help="one slice").add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sl.add_parser("import", parents=[common], help="a topology file as a new slice of a user")
    p.add_argument("file")
    p.add_argument("--owner", required=True, help="the user who gets the slice")
    p.add_argument("--name", help="the slice's name (default: the file's name)")
    p.set_defaults(run=run_slice_import)
    p = sl.add_parser("template", parents=[common], help="a linear, ring, star or mesh slice for a user")
    _template_arguments(p)
    p.add_argument("--owner", required=True, help="the user who gets the slice")
    p.add_argument("--name", required=True, help="the slice's name")
    p.set_defaults(run=run_slice_template)
    p = sl.add_parser("export", parents=[common], help="a slice's topology file (or Graphviz DOT)")
    p.add_argument("slice_id", metavar="ID")
    p.add_argument("--dot", action="store_true", help="Graphviz DOT instead of the topology file")
    p.add_argument("--output", "-o", metavar="FILE", help="write it to this new file (never overwritten)")
    p.set_defaults(run=run_slice_export)
    p = sl.add_parser("show", parents=[common], help="a slice's text diagram")
    p.add_argument("slice_id", metavar="ID")
    p.set_defaults(run=run_slice_show)

    _tools_subcommands(sub, common)

    top = sub.add_parser("topology", help="topology files (no database)").add_subparsers(
        dest="action", metavar="ACTION", required=True)
    p = top.add_parser("template", help="print a template as a topology file")
    _template_arguments(p)
    p.add_argument("--name", help="the suggested slice name written in the file")
    p.add_argument("--dot", action="store_true", help="Graphviz DOT instead of the topology file")
    p.set_defaults(run=run_topology_template, offline=True)
    p = top.add_parser("check", help="check a topology file; print its diagram")
    p.add_argument("file")
    p.set_defaults(run=run_topology_check, offline=True)

    snapshots_leases.add_subcommands(sub, common)


def _tools_subcommands(sub, common: argparse.ArgumentParser) -> None:
    """``capture`` and ``link impair`` (SPEC §17)."""
    p = sub.add_parser("capture", parents=[common], help="capture packets on a link or a VM's NIC")
    p.add_argument("slice_id", metavar="SLICE")
    p.add_argument("target", nargs="+", metavar="TARGET", help="'link N' or 'VM_ID ethN'")
    p.add_argument("--filter", default="", metavar="EXPR", help="a tcpdump filter, e.g. 'icmp'")
    p.add_argument("--count", metavar="N", help="stop after N packets")
    p.add_argument("--seconds", metavar="S", help="stop after S seconds")
    p.add_argument("--pcap", metavar="FILE", help="save the packets to this new pcap file instead of printing")
    p.set_defaults(run=run_capture)
    link = sub.add_parser("link", help="a link's impairment").add_subparsers(dest="action", metavar="ACTION",
                                                                           required=True)
    p = link.add_parser("impair", parents=[common], help="set, change or clear a link's delay, jitter, loss, rate")
    p.add_argument("slice_id", metavar="SLICE")
    p.add_argument("link_id", metavar="LINK")
    p.add_argument("--delay", help="each direction, e.g. 100ms")
    p.add_argument("--jitter", help="e.g. 10ms (at most the delay)")
    p.add_argument("--loss", help="percent, e.g. 1.5")
    p.add_argument("--rate", help="e.g. 512kbit, 10mbit")
    p.add_argument("--clear", action="store_true", help="remove the link's impairment")
    p.set_defaults(run=run_link_impair)


def _template_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", choices=topology.TEMPLATES)
    p.add_argument("vms", metavar="N", help="number of VMs")
    p.add_argument("--flavor", default="cirros", help="flavor of every VM (default cirros)")
    p.add_argument("--internet", default="none", metavar="WHICH",
                   help="VMs with internet: none (default), all, first, or numbers like 1,3")


def run(args: argparse.Namespace, api=None, user: Optional[str] = None) -> int:
    """Run the subcommand ``args`` names (as ``user``): its exit status; every failure is one line on stderr."""
    try:
        return args.run(args) if getattr(args, "offline", False) else args.run(args, api, user)
    except Failed as e:
        for line in str(e).split("\n"):
            print(f"error: {safe(line)}" if line and not line.startswith("  ") else safe(line), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - never a traceback
        log.exception("command %s failed", args.command)
        print(f"error: unexpected error: {safe(str(e))} (details in the log)", file=sys.stderr)
        return 1


def login(api, args) -> str:
    """Log in for a script: the user's name, or Failed with one line (nothing done)."""
    name = getattr(args, "user", None) or _unix_name()
    password = _password(args, name)
    ok, info = api.authenticate(name, password)
    if not ok:
        raise Failed(f"login as {name} refused: {info}")
    return info["username"]


def _unix_name() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        raise Failed("this Unix account has no name: log in with --user NAME") from None


def _password(args, name: str) -> str:
    path = getattr(args, "password_file", None)
    if path:
        return read_password_file(path)
    if sys.stdin is None or sys.stdin.closed:
        raise Failed("a password is needed: give --password-file FILE, or type it, or pipe it on stdin")
    if sys.stdin.isatty():
        try:
            return getpass.getpass(f"Password for {name}: ")
        except (EOFError, KeyboardInterrupt):
            raise Failed("no password given") from None
    line = sys.stdin.readline(MAX_PASSWORD + 2)
    if not line:
        raise Failed("a password is needed: give --password-file FILE, or type it, or pipe it on stdin")
    return line.rstrip("\r\n")


MAX_PASSWORD = 128


def read_password_file(path: str) -> str:
    """The first line of a password file that is this account's own and nobody else's (0600 or stricter)."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(os.path.expanduser(path), flags)
    except OSError as e:
        raise Failed(f"{path}: {e.strerror or e}") from None
    with os.fdopen(fd, encoding="utf-8", errors="replace") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise Failed(f"{path}: not a regular file")
        if st.st_uid != os.getuid():
            raise Failed(f"{path}: not your file: a password file must belong to you")
        if st.st_mode & 0o077:
            raise Failed(f"{path}: others may read or change it (mode {stat.S_IMODE(st.st_mode):04o}): "
                         "make it 0600 (chmod 600)")
        return f.readline(MAX_PASSWORD + 2).rstrip("\r\n")


def read_file(path: str, limit: int = topology_file.MAX_TEXT) -> str:
    ok, text = cli_classes.read_text_file(path, limit)
    if not ok:
        raise Failed(text)
    return text


# --- the subcommands ------------------------------------------------------------------------

def run_overview(args, api, user: str) -> int:
    rows = checked(api.overview(user))
    if args.csv:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["slice_id", "owner", "name", "status", "topology_type", "vms", "links", "workers",
                         "deployed_at", "running_seconds", "lease_end", "lease_seconds_left"])
        for r in rows:
            writer.writerow([r.slice_id, r.owner, r.name, r.status, r.topology_type, r.vms, r.links,
                             " ".join(r.workers), r.deployed_at or "",
                             "" if r.running_for is None else int(r.running_for), r.lease_end or "",
                             "" if r.lease_left is None else int(r.lease_left)])
        sys.stdout.write(safe(buf.getvalue()))
        return 0
    for line in cli_classes.render_overview(rows, checked(api.cluster_workers(user))):
        out(line)
    return 0


def run_roster_import(args, api, user: str) -> int:
    fmt = roster.format_of(args.file)
    if fmt is None:
        raise Failed("the roster file must end in .csv, .yaml or .yml")
    text = read_file(args.file, roster.MAX_TEXT)
    topology_text = read_file(args.topology) if args.topology else None
    password_file = args.passwords or default_password_file(args.file)
    ok, report = cli_classes.import_roster_with_file(api, user, password_file, text, fmt, topology_text,
                                                     args.slice_name, progress=lambda line: out(f"  {line}"))
    if isinstance(report, str):
        raise Failed(report)
    for line in cli_classes.render_roster_report(report):
        out(line)
    return 0 if ok else 1


def _made(s: dict) -> int:
    for line in cli_classes.render_built(s):
        out(line)
    return 0


def run_slice_import(args, api, user: str) -> int:
    text = read_file(args.file)
    return _made(checked(api.import_topology(user, text, args.name, owner=args.owner,
                                             progress=lambda line: out(f"  {line}"))))


def run_slice_template(args, api, user: str) -> int:
    return _made(checked(api.create_from_template(user, args.kind, args.vms, args.flavor,
                                                  args.internet, args.name, owner=args.owner,
                                                  progress=lambda line: out(f"  {line}"))))


def run_slice_export(args, api, user: str) -> int:
    text = checked(api.export_slice(user, args.slice_id, "dot" if args.dot else "yaml"))
    return _write_or_print(text, args.output)


def run_slice_show(args, api, user: str) -> int:
    s = checked(api.get_slice(user, args.slice_id))
    for line in topology_render.render_diagram(s):
        out(line)
    return 0


def run_plan(args, api, user: str) -> int:
    """``--plan SLICE_ID``: the exact text each host would get for a deploy of the slice (nothing runs)."""
    for step in checked(api.plan_text(user, args.plan)):
        out(f"# {step['host']}: {step['step']}")
        out(step["text"])
        out()
    return 0


def run_topology_template(args) -> int:
    ok, n = (True, int(args.vms)) if args.vms.isascii() and args.vms.isdigit() else (False, None)
    if not ok:
        raise Failed("the number of VMs must be a whole number")
    try:
        design = topology.build_template(args.kind, n, args.flavor, args.internet)
    except topology.TemplateError as e:
        raise Failed(str(e)) from None
    design.name = args.name
    problems = topology.validate(design)
    if problems:
        raise Failed("; ".join(str(p) for p in problems))
    if args.dot:
        return _write_or_print(topology_render.to_dot(design), None)
    return _write_or_print(topology_file.design_to_yaml(design, f"the {args.kind} template"), None)


def run_topology_check(args) -> int:
    design, problems = topology_file.parse_topology(read_file(args.file))
    if problems:
        raise Failed("\n".join([f"{args.file}: {topology.plural(len(problems), 'problem')}"] +
                               [f"  {p}" for p in problems]))
    for line in topology_render.render_diagram(design):
        out(line)
    return 0


def _write_or_print(text: str, output: Optional[str]) -> int:
    if not output:
        sys.stdout.write(safe(text))
        sys.stdout.flush()
        return 0
    ok, where = cli_classes.write_new_file(output, text)
    if not ok:
        raise Failed(where)
    out(f"written to {where}")
    return 0


def run_capture(args, api, user: str) -> int:
    from menu import tools

    fd, path = None, None
    if args.pcap:
        ok, opened = tools.create_new_file(args.pcap)
        if not ok:
            raise Failed(opened)
        fd, path = opened
    try:
        ok, session = api.open_capture(user, args.slice_id, " ".join(args.target), args.filter,
                                       args.count, args.seconds, mode="pcap" if fd is not None else "text")
        if not ok:
            if path:
                os.unlink(path)
            raise Failed(session)
        print(tools.describe_session(session), file=sys.stderr)
        if fd is None:
            how, _lines, summary = tools.run_live(session, out, None)
        else:
            how, size, summary = tools.run_pcap(session, fd, None)
            summary.append(f"{size} bytes written to {path}")
    finally:
        if fd is not None:
            os.close(fd)
    for line in summary:
        print(line, file=sys.stderr)
    return 0 if how != "lost" else 1


def run_link_impair(args, api, user: str) -> int:
    if args.clear:
        res = checked(api.clear_impairment(user, args.slice_id, args.link_id))
    else:
        res = checked(api.set_impairment(user, args.slice_id, args.link_id, args.delay, args.jitter, args.loss,
                                         args.rate))
    out(res["message"])
    return 0
