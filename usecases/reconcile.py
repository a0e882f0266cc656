"""What the hosts hold against what the database expects (Neutron's ``sync_state``).

``survey`` runs every kind's scan (``resources``) in one command per host,
in parallel, and parses the output into ``Found`` objects.  Then:

* orphans = found - owned: things this system made that no slice in the
  database may hold (whatever the slice's state: option 8 never removes
  anything of a slice still in the database), plus VMs left ``pending`` by a
  dead session;
* missing = expected - found (and found with the wrong detail): what a
  running slice should have and does not (status and repair use it).
"""
from __future__ import annotations

import copy
import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Optional

from hosts import kinds, resources
from hosts.hostcmd import HostCommand
from hosts.resources import ClusterView, Found, HostContext, Key
from usecases import sessions
from usecases.access import require_admin
from usecases.inventory import Inventory, settle_in
from usecases.services import Services

log = logging.getLogger("cloudrepo.reconcile")

DATABASE = "database"


@dataclass(frozen=True)
class Orphan:
    """Something this system made that no slice in the database holds."""

    host: str
    kind: str
    name: str
    key: Key


def roles_of(config, host: str) -> list:
    roles = []
    if host in config.workers:
        roles.append("worker")
    if host == config.network_node:
        roles.append("node")
    return roles


def scan_command(ctx: HostContext, host: str) -> HostCommand:
    """One root script printing every object of every kind this host may hold."""
    lines = [k.scan(ctx, host) for role in roles_of(ctx.config, host) for k in kinds.kinds(role)]
    return HostCommand(host, "\n".join([*lines, "true"]), sudo=True, timeout=60, step="scan",
                       action="scan", target=host)


def parse_scan(host: str, text: str) -> list:
    """The ``Found`` objects of a scan's output (unknown lines ignored)."""
    out = []
    for line in text.splitlines():
        words = line.split()
        if not words or words[0] not in resources.KINDS:
            continue
        found = kinds.kind(words[0]).parse(host, words[1:])
        if found is not None:
            out.append(found)
    return out


def cluster_view(config, data: dict) -> ClusterView:
    """The database's slices with stale marks resolved (on copies)."""
    slices = []
    for s in data["slices"].values():
        s = copy.deepcopy(s)
        sessions.normalise(s)
        slices.append(s)
    return ClusterView(config, slices)


def owned_keys(view: ClusterView) -> set:
    return {key for k in kinds.kinds() for key in k.owned(view)}


def expected_details(view: ClusterView) -> dict:
    out = {}
    for k in kinds.kinds():
        out.update(k.expected(view))
    return out


def orphans_of(found: Iterable[Found], owned: set) -> list:
    out, seen = [], set()
    for f in found:
        if f.key in owned or f.key in seen:
            continue
        seen.add(f.key)
        out.append(Orphan(f.key.host, f.key.kind, kinds.kind(f.key.kind).describe(f.key), f.key))
    return out


def pending_orphans(data: dict) -> list:
    """VMs left ``pending`` by a session that died (rolled back by the cleanup)."""
    out = []
    for s in data["slices"].values():
        for vm in sessions.dead_pending_vms(s):
            out.append(Orphan(DATABASE, "pending VM", f"VM {vm['vm_id']} ({vm.get('name')}) of slice "
                              f"{s['slice_id']}, left half-made by a session that died",
                              Key("pending", DATABASE, vm_id=int(vm["vm_id"]))))
    return out


# Script characters per removal command: quoted for ``sh -c`` and sudo, a script may grow several
# times over, and a command line longer than ``hostcmd.MAX_COMMAND_BYTES`` never runs.
REMOVAL_SCRIPT_BUDGET = 20_000
KEYS_PER_REMOVAL = 40


def _removal_chunks(ctx: HostContext, host: str, by_kind: dict) -> list:
    """(lines, key count) per group of at most ``KEYS_PER_REMOVAL`` keys of one kind, in kind order."""
    chunks = []
    for name in [k.name for k in kinds.kinds() if k.name in by_kind]:
        keys = sorted(by_kind[name])
        for i in range(0, len(keys), KEYS_PER_REMOVAL):
            group = keys[i:i + KEYS_PER_REMOVAL]
            chunks.append((kinds.kind(name).remove(ctx, host, group), len(group)))
    return chunks


def _removal_command(host: str, lines: list, count: int) -> HostCommand:
    return HostCommand(host, "\n".join([*lines, "true"]), sudo=True, timeout=120,
                       step=f"remove {count} orphan(s)", action="remove_orphans", target=host)


def removal_commands(ctx: HostContext, keys: list) -> list:
    """Root commands removing exactly ``keys`` (each kind's removal, deduplicated): one per host,
    or several when a host has more than ``REMOVAL_SCRIPT_BUDGET`` characters of script to run."""
    by_host: dict = defaultdict(lambda: defaultdict(list))
    for key in keys:
        by_host[key.host][key.kind].append(key)
    cmds = []
    for host, by_kind in by_host.items():
        lines: dict = {}  # the script's lines, in order, each once
        count = size = 0
        for chunk, n in _removal_chunks(ctx, host, by_kind):
            new = [line for line in dict.fromkeys(chunk) if line not in lines]
            if lines and size + sum(map(len, new)) > REMOVAL_SCRIPT_BUDGET:
                cmds.append(_removal_command(host, list(lines), count))
                lines, count, size, new = {}, 0, 0, list(dict.fromkeys(chunk))
            lines.update(dict.fromkeys(new))
            count += n
            size += sum(map(len, new))
        cmds.append(_removal_command(host, list(lines), count))
    return cmds


class Reconciler:
    """Orphans (option 8); status and repair build on the same survey."""

    def __init__(self, services: Services):
        self.s = services

    def survey(self, hosts: Optional[list] = None) -> tuple:
        """(True, [Found]) from every host, or (False, message) when a host cannot be scanned."""
        found = []
        for host, result in self.survey_each(hosts or self.s.config.hosts).items():
            if isinstance(result, str):
                return False, f"Cannot scan {host}: {result}"
            found += result
        return True, found

    def survey_each(self, hosts: list) -> dict:
        """host -> [Found], or the reason the host could not be scanned (a string)."""
        out: dict = {host: "interrupted" if res is None else res.message()
                     for host, res in self.s.connect_each(hosts).items() if res is None or not res.ok}
        reachable = [h for h in hosts if h not in out]
        ctx = self.s.host_context()
        report = self.s.runner.run([scan_command(ctx, h) for h in reachable], phase="scan", stop_on_failure=False)
        for host, res in zip(reachable, report.results):
            out[host] = parse_scan(host, res.stdout) if res is not None and res.ok else \
                (res.message() if res is not None else "not scanned")
        return {h: out[h] for h in hosts}

    def find_orphans(self, username: str) -> tuple:
        """Admin: everything on the hosts that this system made and no slice in the database holds."""
        err = require_admin(self.s.db.load(), username)
        if err:
            return False, err
        # what dead sessions left of their deploys, starts and stops is undone, stale marks resolved;
        # dead pending VMs are listed below
        Inventory(self.s).settle(reap=False)
        ok, found = self.survey()
        if not ok:
            return False, found
        data = self.s.db.load()  # after the scan: anything made meanwhile is known
        orphans = orphans_of(found, owned_keys(cluster_view(self.s.config, data)))
        return True, pending_orphans(data) + orphans

    def cleanup_orphans(self, username: str, orphans: list) -> tuple:
        """Admin: remove exactly the orphans listed (re-checked against the database first).

        Runs inside a database transaction, so no deploy can start using one of
        them between the check and the removal.
        """
        self.s.recover(None)
        with self.s.db.transaction() as data:
            err = require_admin(data, username)
            if err:
                return False, err
            reaped = settle_in(data, None)
            owned = owned_keys(cluster_view(self.s.config, data))
            keys = sorted({o.key for o in orphans if o.key.kind != "pending" and o.key not in owned})
            hosts = sorted({k.host for k in keys} | {vm["worker_ip"] for vm in reaped})
            ctx, failed = self.s.connect(hosts) if hosts else (self.s.host_context(), None)
            if failed is not None:
                return False, f"Cleanup impossible: cannot reach {failed.host}: {failed.message()}"
            cmds = removal_commands(ctx, keys)
            cmds += [self.s.deployment.delete_pending_vm_command(vm) for vm in reaped if vm.get("qcow_image")]
            report = self.s.runner.run(cmds, phase="cleanup", stop_on_failure=False)
        if report.failures:
            bad = report.failures[0]
            return False, f"Cleanup incomplete: step '{bad.step}' on {bad.host}: {bad.message()}"
        return True, f"Cleanup completed: {len(orphans)} item(s) removed"
