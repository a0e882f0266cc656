#!/usr/bin/env python3
"""Executor benchmark: short commands on one reused SSH connection, as a deploy sends them.

For 1, 4 and 12 commands in parallel (threads of this process, one connection)
it runs N commands ``printf %s WORD`` and measures:

* ms per command: wall time of the batch / N (throughput), and the median
  and 95th percentile of each command's own duration (latency);
* CPU seconds used by this process (the manager), in total and per command;
* failed commands (an error result) and lost outputs (a success whose
  stdout is not WORD: the bug of an exit status read before the output).

Then 12 commands ``sleep 2`` at once: the CPU this process burns while its
threads only wait.

Two executors are measured one right after the other on the same server:
"as built" (RemoteExecutor: poll() on the channel, reads both streams to EOF,
at most MAX_SESSIONS_PER_HOST sessions at once) and "before" (the same class
with the read loop it had before: 2 ms polling that stops once the exit
status is in, stdin EOF after exec, no session limit).

Targets:
  --target inproc  (default) the in-process paramiko server of the tests, run
                   in a child process so that its CPU is not counted;
                   --order mixed makes it send every other exit status first
  --target sshd    a real OpenSSH sshd started for the run (root; tests/realsshd.py),
                   with --max-sessions N (default 100, as in the lab)
  --config FILE --host H   any host of a cluster config (e.g. lab/cluster.yaml)

Usage:
    .venv/bin/python bench/executor.py [--target inproc|sshd] [--commands 600]
        [--parallel 1,4,12] [--order normal|mixed] [--json out.json]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from hosts.hostcmd import HostCommand  # noqa: E402
from remote_executor import ExecutorError, RemoteExecutor, configure_logging  # noqa: E402
from store.config import ClusterConfig  # noqa: E402


class PollingExecutor(RemoteExecutor):
    """The executor's read loop before this change (baseline): 2 ms polling, stops at exit_status_ready()."""

    def _exec(self, host: str, text: str, timeout: float) -> tuple:
        import socket

        chan = self._open_channel(host)
        deadline = time.monotonic() + timeout
        out, err = [], []
        try:
            chan.settimeout(0.2)
            chan.exec_command(text)
            chan.shutdown_write()
            while True:
                got = False
                while chan.recv_ready():
                    out.append(chan.recv(65536))
                    got = True
                while chan.recv_stderr_ready():
                    err.append(chan.recv_stderr(65536))
                    got = True
                if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError
                if not got:
                    time.sleep(0.002)
            status = chan.recv_exit_status()
        except (socket.timeout, TimeoutError):
            raise TimeoutError from None
        except Exception as e:  # noqa: BLE001 - as the original
            self._forget(host, chan.get_transport())
            raise ExecutorError(f"SSH session to {host} failed: {e or type(e).__name__}") from e
        finally:
            chan.close()
        return status, b"".join(out).decode(errors="replace"), b"".join(err).decode(errors="replace")


IMPLEMENTATIONS = {"as built": RemoteExecutor, "before": PollingExecutor}


@contextlib.contextmanager
def inproc_server(order: str):
    """(host, config dict) of the in-process test server, run in a child process."""
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "sshserver.py"), order],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        info = json.loads(proc.stdout.readline())
        yield info["host"], {"workers": [info["host"]], "network_node": info["host"], "ssh": info["ssh"],
                             "log_file": os.path.join(info["directory"], "bench.log")}
    finally:
        proc.stdin.close()
        proc.wait(10)


@contextlib.contextmanager
def real_sshd(max_sessions: int):
    from realsshd import RealSSHD, unavailable_reason

    reason = unavailable_reason()
    if reason:
        sys.exit(f"cannot start a real sshd: {reason}")
    with tempfile.TemporaryDirectory(prefix="bench-sshd-") as d, RealSSHD(d, max_sessions=max_sessions) as sshd:
        yield "127.0.0.1", {"workers": ["127.0.0.1"], "network_node": "127.0.0.1",
                            "ssh": sshd.ssh_settings(), "log_file": os.path.join(d, "bench.log")}


@contextlib.contextmanager
def configured_host(path: str, host: str):
    config = ClusterConfig.load(path)
    yield host, config


def short_commands(executor: RemoteExecutor, host: str, parallel: int, n: int, tag: str) -> dict:
    words = [f"{tag}{i}" for i in range(n)]
    cmds = [HostCommand(host, f"printf %s {w}", sudo=False, timeout=60) for w in words]
    cpu0, t0 = time.process_time(), time.monotonic()
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        results = list(pool.map(executor.run, cmds))
    wall, cpu = time.monotonic() - t0, time.process_time() - cpu0
    durations = sorted(r.duration for r in results)
    return {
        "threads": parallel, "commands": n,
        "ms_per_command": 1000 * wall / n,
        "median_ms": 1000 * statistics.median(durations),
        "p95_ms": 1000 * durations[int(0.95 * (n - 1))],
        "cpu_s": cpu, "cpu_ms_per_command": 1000 * cpu / n,
        "failed": sum(1 for r in results if not r.ok),
        "lost": sum(1 for r, w in zip(results, words) if r.ok and r.stdout != w),
    }


def waiting_commands(executor: RemoteExecutor, host: str, parallel: int, seconds: float) -> dict:
    cmds = [HostCommand(host, f"sleep {seconds:g}", sudo=False, timeout=60) for _ in range(parallel)]
    cpu0, t0 = time.process_time(), time.monotonic()
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        results = list(pool.map(executor.run, cmds))
    return {"threads": parallel, "wall_s": time.monotonic() - t0, "cpu_s": time.process_time() - cpu0,
            "failed": sum(1 for r in results if not r.ok)}


def measure(host: str, cfg, args) -> dict:
    report = {"short": [], "waiting": []}
    for name, cls in IMPLEMENTATIONS.items():
        for parallel in args.parallel:
            with cls(cfg) as ex:
                check = ex.check(host)
                if not check.ok:
                    sys.exit(f"cannot reach {host}: {check.message()}")
                row = short_commands(ex, host, parallel, args.commands, tag=f"w{parallel}x")
                report["short"].append({"impl": name, **row, "connections": ex.stats.connections})
        with cls(cfg) as ex:
            ex.check(host)
            report["waiting"].append({"impl": name, **waiting_commands(ex, host, 12, args.wait)})
    return report


def print_tables(report: dict, title: str) -> None:
    print(f"\n{title}")
    head = (f"{'executor':<9} {'threads':>7} {'cmds':>5} {'ms/cmd':>7} {'median ms':>9} {'p95 ms':>7} "
            f"{'CPU s':>6} {'CPU ms/cmd':>10} {'failed':>6} {'lost':>5} {'conns':>5}")
    print(head)
    print("-" * len(head))
    for r in report["short"]:
        print(f"{r['impl']:<9} {r['threads']:>7} {r['commands']:>5} {r['ms_per_command']:>7.2f} "
              f"{r['median_ms']:>9.2f} {r['p95_ms']:>7.2f} {r['cpu_s']:>6.2f} {r['cpu_ms_per_command']:>10.2f} "
              f"{r['failed']:>6} {r['lost']:>5} {r['connections']:>5}")
    print(f"\n{'executor':<9} {'threads':>7} {'waiting':>8} {'wall s':>7} {'CPU s':>6} {'failed':>6}")
    for r in report["waiting"]:
        print(f"{r['impl']:<9} {r['threads']:>7} {'sleep':>8} {r['wall_s']:>7.2f} {r['cpu_s']:>6.3f} {r['failed']:>6}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=["inproc", "sshd"], default="inproc")
    parser.add_argument("--config", help="a cluster config; with --host: measure that host instead")
    parser.add_argument("--host")
    parser.add_argument("--commands", type=int, default=600, help="commands per row (default 600)")
    parser.add_argument("--parallel", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 12])
    parser.add_argument("--order", choices=["normal", "mixed"], default="normal",
                        help="inproc: mixed sends every other exit status before the output")
    parser.add_argument("--max-sessions", type=int, default=100, help="sshd: its MaxSessions (default 100)")
    parser.add_argument("--wait", type=float, default=2.0, help="seconds of the waiting commands (default 2)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    if args.config:
        if not args.host:
            parser.error("--config needs --host")
        target, title = configured_host(args.config, args.host), f"host {args.host} of {args.config}"
    elif args.target == "sshd":
        target, title = real_sshd(args.max_sessions), f"real OpenSSH sshd on 127.0.0.1 (MaxSessions " \
                                                      f"{args.max_sessions})"
    else:
        target, title = inproc_server(args.order), f"in-process paramiko server ({args.order} order)"
    log_file = os.path.join(tempfile.gettempdir(), "bench-executor.log")
    configure_logging(log_file)
    with target as (host, config):
        report = measure(host, config, args)
    report["target"] = title
    print_tables(report, title)
    print(f"\n(every command is in {log_file})")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
