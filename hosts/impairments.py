"""Link impairments on the workers: delay, jitter, loss and rate on the egress of a link's TAPs.

Each end's TAP shapes the frames going to its VM, so both directions of a
link are impaired (``topology.impairment`` says what the values mean).  The
script for one TAP (``apply_lines``):

* removes what an earlier impairment left on it (idempotent);
* ``tc qdisc replace dev TAP root netem limit 1000 delay ... loss ... rate ...``;
* where the kernel has no ``sch_netem`` ("Specified qdisc kind is unknown"),
  the same impairment in user space instead: a veth pair ``nx{id}_{i}a/b``,
  the relay ``netem_relay.py`` (written to the state folder, run by
  ``python3``, detached, with a pid file) reading ``...b``, and a ``clsact``
  egress filter on the TAP (classic BPF: the frame's mark is 0) that steals
  the frames to ``...a``; the relay writes them back with a mark, so they pass
  the filter once, and captures on the TAP see them as they reach the VM;
* writes ``impair-TAP`` with what was applied (status reads it back).

The kind ``impair`` finds both forms (``tc qdisc show``; the relay's pid
file), compares what was applied with what the link holds, and removes it.
A TAP's removal (stop, delete) drops its qdisc and filter; ``teardown_lines``
ends the relay and removes its veth and the record.
"""
from __future__ import annotations

import os
from typing import Iterable, Optional

import naming
from hosts.hostcmd import HostCommand, join, q, stop_by_pidfile, wait_gone
from hosts.resources import Found, Key, Kind, register
from topology import impairment

NO_NETEM = "nknown"  # tc's "Specified qdisc kind is unknown" (and "Unknown qdisc")
IMPAIR_EXIT = 9
# Classic BPF for the TAP's egress filter: A = skb->mark; match (return -1) when it is 0, else no match.
STEAL_BPF = "4,32 0 0 4294963220,21 0 1 0,6 0 0 4294967295,6 0 0 0"


def relay_program() -> str:
    """The code of the user-space relay, without its docstring (sent in the scripts that may need it)."""
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "netem_relay.py"), encoding="utf-8") as f:
        text = f.read()
    head, _doc, body = text.split('"""', 2)
    return head + body.lstrip("\n")


def program_lines() -> list:
    """Shell: the function ``cr_relay_program`` that writes the relay's program (once per script).

    Scripts that may impair a TAP start with these lines; only the user-space branch calls it.
    """
    prog = naming.RELAY_PROGRAM
    return ["cr_relay_program() {",
            f"  [ -n \"${{relay_written:-}}\" ] || {{ printf '%s' {q(relay_program())} > {q(prog + '.new')} "
            f"&& chmod 700 {q(prog + '.new')} && mv -f {q(prog + '.new')} {q(prog)} && relay_written=1; }}",
            "}"]


def clear_lines(vm_id: int, index: int) -> list:
    """Shell lines removing any impairment of TAP ``tap{vm_id}_{index}`` (idempotent, TAP present or not)."""
    tap = naming.tap_name(vm_id, index)
    out_end, _in_end = naming.relay_veth(vm_id, index)
    return [f"tc qdisc del dev {q(tap)} clsact 2>/dev/null || true",
            stop_by_pidfile(naming.relay_pidfile(tap), naming.relay_mark(tap), wait_s=2),
            f"ip link del {q(out_end)} 2>/dev/null || true",
            f"tc qdisc show dev {q(tap)} root 2>/dev/null | grep -q '^qdisc netem ' "
            f"&& tc qdisc del dev {q(tap)} root 2>/dev/null || true",
            f"rm -f {q(naming.impair_marker(tap))}",
            drop_program_if_unused()]


def drop_program_if_unused() -> str:
    """Shell: remove the relay's program once no relay's pid file is left (builtins only otherwise)."""
    return (f"keep=; for f in {q(naming.STATE_DIR)}/impair-tap*.pid; do [ -e \"$f\" ] && keep=1; done; "
            f"[ -n \"$keep\" ] || rm -f {q(naming.RELAY_PROGRAM)}")


def teardown_lines(vm_id: int, count: int) -> list:
    """Shell lines ending the relays of a VM's TAPs and removing their veths, pid files and records (stop,
    delete: the TAPs' own removal drops their qdiscs and filters).  One loop over the VM's records and pid
    files: only shell builtins run when there is none (a VM without impairments stops as fast as before)."""
    if not count:
        return []
    glob = naming.impair_marker(naming.tap_name(vm_id, 0))[:-1] + "[0-9]*"  # the state folder needs no quotes
    wait = f"{wait_gone(2)}; kill -9 \"$pid\" 2>/dev/null || true; {wait_gone(2)}"
    return [f"found=; for f in {glob}; do [ -e \"$f\" ] || continue; found=1; t=${{f##*/impair-}}; t=${{t%.pid}}; "
            f"i=${{t#*_}}; pid=$(cat \"{naming.relay_pidfile('$t')}\" 2>/dev/null || true); "
            f"if [ -n \"$pid\" ] && tr '\\0' ' ' 2>/dev/null < /proc/$pid/cmdline | grep -q -- "
            f"\"{naming.relay_mark('$t')}\"; then kill -TERM \"$pid\" 2>/dev/null || true; {wait}; fi; "
            f"rm -f \"{naming.relay_pidfile('$t')}\" \"{naming.impair_marker('$t')}\"; "
            f"ip link del \"{naming.relay_veth(vm_id, '${i}')[0]}\" 2>/dev/null || true; done",
            f"[ -z \"$found\" ] || {{ {drop_program_if_unused()}; }}"]


def _relay_lines(worker: str, vm_id: int, index: int, imp: dict) -> list:
    tap = naming.tap_name(vm_id, index)
    out_end, in_end = naming.relay_veth(vm_id, index)
    pidfile = naming.relay_pidfile(tap)
    need = f"impairments need python3 on {worker} (its kernel has no sch_netem)"
    run = join(["python3", naming.RELAY_PROGRAM, "--dev", tap, "--via", in_end, *impairment.relay_args(imp),
                "--pidfile", pidfile])
    return [f"command -v python3 >/dev/null 2>&1 || {{ echo {q(need)} >&2; exit {IMPAIR_EXIT}; }}",
            "cr_relay_program",
            f"ip link add {q(out_end)} type veth peer name {q(in_end)}",
            *(f"sysctl -qw net.ipv6.conf.{d}.disable_ipv6=1 2>/dev/null || true" for d in (out_end, in_end)),
            f"ip link set {q(out_end)} up && ip link set {q(in_end)} up",
            # the relay writes its pid file once it runs; without it in 5 s the impairment fails (and is undone)
            f"rm -f {q(pidfile)}; err=$(mktemp); setsid {run} </dev/null >/dev/null 2>\"$err\" 8>&- 9>&- & relay=$!",
            f"n=0; while [ ! -s {q(pidfile)} ] && [ $n -lt 100 ] && kill -0 \"$relay\" 2>/dev/null; do sleep 0.05; "
            "n=$((n+1)); done",
            f"if [ ! -s {q(pidfile)} ]; then kill \"$relay\" 2>/dev/null || true; "
            f"echo \"the impairment relay of {tap} did not start: $(tail -n 1 \"$err\")\" >&2; rm -f \"$err\"; "
            f"exit {IMPAIR_EXIT}; fi; rm -f \"$err\"",
            f"tc qdisc add dev {q(tap)} clsact",
            join(["tc", "filter", "replace", "dev", tap, "egress", "pref", "1", "protocol", "all", "bpf",
                  "bytecode", STEAL_BPF, "action", "mirred", "egress", "redirect", "dev", out_end])]


def apply_lines(worker: str, vm_id: int, index: int, imp: Optional[dict]) -> list:
    """Shell lines giving TAP ``tap{vm_id}_{index}`` the impairment ``imp`` (None: clearing it)."""
    tap = naming.tap_name(vm_id, index)
    lines = clear_lines(vm_id, index)
    imp = impairment.normalised(imp)
    if imp is None:
        return lines
    netem = join(["tc", "qdisc", "replace", "dev", tap, "root", "netem", *impairment.netem_args(imp)])
    relay = "\n".join(_relay_lines(worker, vm_id, index, imp))
    return [*lines,
            f"if ! err=$({netem} 2>&1); then case \"$err\" in *{NO_NETEM}*)\n{relay}\n;; "
            f"*) echo \"cannot impair {tap}: $err\" >&2; exit {IMPAIR_EXIT};; esac; fi",
            f"printf '%s\\n' {q(impairment.describe(imp))} > {q(naming.impair_marker(tap))}"]


def impair_command(vm: dict, index: int, imp: Optional[dict]) -> HostCommand:
    """Root script on the VM's worker: set (or, ``imp`` None, clear) the impairment of one of its TAPs."""
    vm_id = int(vm["vm_id"])
    tap = naming.tap_name(vm_id, index)
    gone = f"{tap} does not exist (is VM {vm_id} running?)"
    state = q(naming.STATE_DIR)
    exists = f"ip link show dev {tap} >/dev/null 2>&1 || {{ echo {q(gone)} >&2; exit 76; }}"
    script = "\n".join(["set -e", *(program_lines() if imp else []), exists if imp else ":",
                         f"mkdir -p {state} && chmod 700 {state}",
                         *apply_lines(vm["worker_ip"], vm_id, index, imp)])
    what = f"impair {tap}" if imp else f"clear the impairment of {tap}"
    return HostCommand(vm["worker_ip"], script, sudo=True, timeout=30, step=f"{what} (VM {vm_id} {vm['name']})",
                       action="impair" if imp else "unimpair", target=tap)


# --- which TAP carries which impairment --------------------------------------------------

def link_ends(s: dict) -> Iterable[tuple]:
    """(link, vm dict, interface index) of both ends of every link of slice ``s``."""
    vms = {int(vm["vm_id"]): vm for vm in s.get("vms", [])}
    for link in s.get("links", []):
        for vm_key, if_key in (("vm1_id", "vm1_interface"), ("vm2_id", "vm2_interface")):
            vm = vms.get(int(link[vm_key]))
            if vm is not None:
                yield link, vm, int(str(link[if_key])[3:])


def impairments_of(s: Optional[dict], vm: dict) -> dict:
    """interface index -> impairment of the VM's TAPs on impaired links of ``s``."""
    if not s:
        return {}
    return {i: impairment.normalised(link["impairment"]) for link, end, i in link_ends(s)
            if int(end["vm_id"]) == int(vm["vm_id"]) and impairment.normalised(link.get("impairment"))}


# --- the kind -----------------------------------------------------------------------------

@register
class Impairment(Kind):
    """A TAP's impairment: its netem qdisc or its user-space relay, with the record of what was applied."""

    name = "impair"
    label = "impairment of"

    def scan(self, ctx, host):
        state = q(naming.STATE_DIR)
        relay = ("pid=$(cat \"$f.pid\" 2>/dev/null || true); if [ -n \"$pid\" ] && tr '\\0' ' ' "
                 "2>/dev/null < /proc/$pid/cmdline | grep -q -- \"netem_relay.py --dev $t \"; "
                 "then m=relay; else m=stale; fi")
        return ("netem=$(tc qdisc show 2>/dev/null | sed -n "
                "'s/^qdisc netem [0-9a-f]*: dev \\(tap[0-9]*_[0-9]*\\) root.*/\\1/p')\n"
                "for t in $netem; do f=" + state + "/impair-$t; "
                "echo \"impair $t netem $(head -c 200 \"$f\" 2>/dev/null | tr -cd 'A-Za-z0-9.,% ' || true)\"; done\n"
                # a record, or a relay's pid file without one (a script cut short): each TAP once
                f"seen=' '; for f in {state}/impair-tap*; do [ -f \"$f\" ] || continue; t=${{f##*/impair-}}; "
                "t=${t%.pid}; case \"$seen\" in *\" $t \"*) continue;; esac; seen=\"$seen$t \"; "
                "echo \"$netem\" | grep -qx -- \"$t\" && continue; f=${f%.pid}; "
                f"{relay}; echo \"impair $t $m $(head -c 200 \"$f\" 2>/dev/null | tr -cd 'A-Za-z0-9.,% ')\"; done")

    def parse(self, host, fields):
        ids = naming.tap_index(fields[0]) if fields else None
        if ids is None or len(fields) < 2:
            return None
        text = " ".join(fields[2:])
        detail = text if fields[1] in ("netem", "relay") and text else \
            "(not applied)" if fields[1] == "stale" else "(not recorded)"
        return Found(Key(self.name, host, vm_id=ids[0], name=fields[0]), detail)

    def owned(self, view):
        for vm in view.all_vms():
            for i in range(max(len(vm.get("interfaces") or []), 1)):
                yield Key(self.name, vm["worker_ip"], vm_id=int(vm["vm_id"]), name=naming.tap_name(vm["vm_id"], i))

    def expected(self, view):
        running = {int(vm["vm_id"]) for vm in view.running_vms()}
        out = {}
        for s in view.slices:
            if s.get("status") not in ("running", "stopped"):
                continue
            for link, vm, i in link_ends(s):
                imp = impairment.normalised(link.get("impairment"))
                if imp and int(vm["vm_id"]) in running:
                    key = Key(self.name, vm["worker_ip"], vm_id=int(vm["vm_id"]), name=naming.tap_name(vm["vm_id"], i))
                    out[key] = impairment.describe(imp)
        return out

    def remove(self, ctx, host, keys):
        taps = [naming.tap_index(k.name or "") for k in keys]
        return [line for ids in taps if ids for line in clear_lines(*ids)] or [":"]

    def describe(self, key):
        return f"impairment of {key.name}"
