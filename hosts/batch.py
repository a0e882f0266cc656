"""Commands for one host that arrive together run as one SSH session (issue 18: a class deploying at once).

When many deploys run at the same moment (a class pressing Deploy), the
network node gets dozens of scripts at once, more than one connection's
sessions (``MAX_SESSIONS_PER_HOST``).  Instead of queueing for a session
each, the commands that are waiting for one when it frees up go together:
one script starts them all in parallel on the host, each with its own
standard output, error and exit status, and prints them back one after
another, each behind a header giving its number, status and sizes, so every
command's result is exactly what it would have been alone.  A command that
finds a session free runs alone, as it always did: batching costs nothing
without contention.

Members keep their own rendered text (their ``sudo -n timeout ...``), so the
host still stops each one at its own time limit; the node's own locks
(``flock``) inside them serialise what must be serialised.  Commands with a
secret on standard input are never batched.
"""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from typing import Callable, Optional

from hosts.hostcmd import MAX_COMMAND_BYTES, q

MAX_MEMBERS = 64
_HEADER = re.compile(rb"@@CRB (\d+) (-?\d+) (\d+) (\d+)\n")
_ROOM = 4096  # bytes kept free under the command-line limit for the script around the members


@dataclass
class Pending:
    """One command waiting for its host: what to send, and (once run) what it gave."""

    text: str
    timeout: float
    done: threading.Event = field(default_factory=threading.Event)
    result: Optional[tuple] = None           # (status, stdout bytes, stderr bytes)
    error: Optional[BaseException] = None
    taken: bool = False


def batch_script(texts: list) -> str:
    """The one script that runs every text in parallel and prints each one's results behind a header."""
    lines = ["umask 077", 'd=$(mktemp -d "${TMPDIR:-/tmp}/cr-batch.XXXXXX") || exit 97',
             "trap 'rm -rf \"$d\"' EXIT"]
    for i, text in enumerate(texts):
        lines.append(f'{{ sh -c {q(text)} >"$d/{i}.o" 2>"$d/{i}.e" </dev/null; echo $? >"$d/{i}.s"; }} &')
    lines.append("wait")
    for i in range(len(texts)):
        lines.append(f'printf \'@@CRB %d %s %d %d\\n\' {i} "$(cat "$d/{i}.s")" "$(wc -c <"$d/{i}.o")" '
                     f'"$(wc -c <"$d/{i}.e")"; cat "$d/{i}.o" "$d/{i}.e"')
    return "\n".join(lines)


def split_results(out: bytes, count: int) -> list:
    """(status, stdout, stderr) of each member from the batch script's output; ValueError when damaged."""
    results, pos = [], 0
    for expected in range(count):
        m = _HEADER.match(out, pos)
        if m is None or int(m.group(1)) != expected:
            raise ValueError(f"the batch's output is damaged at member {expected}")
        n_out, n_err = int(m.group(3)), int(m.group(4))
        start = m.end()
        if start + n_out + n_err > len(out):
            raise ValueError(f"the batch's output of member {expected} is cut short")
        results.append((int(m.group(2)), out[start:start + n_out], out[start + n_out:start + n_out + n_err]))
        pos = start + n_out + n_err
    return results


class HostBatcher:
    """The queue of one host's waiting commands; whoever gets a session runs everything waiting."""

    def __init__(self, slot: threading.BoundedSemaphore,
                 run_raw: Callable[[str, float], tuple]):
        self.slot = slot
        self.run_raw = run_raw      # (text, timeout) -> (status, out bytes, err bytes), inside a session slot
        self.lock = threading.Lock()
        self.queue: list = []
        self.batches = 0            # scripts of two or more members run (for the benchmarks)

    def run(self, text: str, timeout: float) -> tuple:
        """Run ``text`` alone or with others that wait at the same time: (status, out bytes, err bytes)."""
        me = Pending(text, timeout)
        with self.lock:
            self.queue.append(me)
        while not me.done.is_set():
            if me.taken:        # in another thread's batch now: wait for it (a free slot would spin)
                me.done.wait()
                break
            if not self.slot.acquire(timeout=0.02):
                continue
            try:
                members = self._take()
                if members:
                    self._run(members)
            finally:
                self.slot.release()
        if me.error is not None:
            raise me.error
        return me.result

    def _take(self) -> list:
        with self.lock:
            members, size = [], 0
            for p in self.queue:
                cost = len(q(p.text).encode()) + 150
                if members and (len(members) >= MAX_MEMBERS or size + cost > MAX_COMMAND_BYTES - _ROOM):
                    break
                members.append(p)
                size += cost
            for p in members:
                p.taken = True
            self.queue = [p for p in self.queue if not p.taken]
        return members

    def _run(self, members: list) -> None:
        try:
            if len(members) == 1:
                members[0].result = self.run_raw(members[0].text, members[0].timeout)
                return
            self.batches += 1
            status, out, err = self.run_raw(batch_script([p.text for p in members]),
                                            max(p.timeout for p in members) + 5)
            try:
                for p, res in zip(members, split_results(out, len(members))):
                    p.result = res
            except ValueError as e:
                detail = err.decode(errors="replace").strip()[:200]
                raise OSError(f"{e} (exit status {status}{': ' + detail if detail else ''})") from None
        except BaseException as e:  # noqa: BLE001 - every member learns what happened to the batch
            for p in members:
                if p.result is None:
                    p.error = e
        finally:
            for p in members:
                p.done.set()
