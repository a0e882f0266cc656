"""Run the manager service: ``python3 -m service --config CLUSTER.yaml --db DATABASE.yaml [--socket PATH]``.

Run it as the service's own account (e.g. ``cloudrepo``), the only one that
can read the SSH key, the site key and the log and write the database; see
the README's "The manager service" for the accounts, file modes and a
systemd unit.  At start it rolls back what a killed predecessor left
half-made; then it serves menus until SIGTERM or SIGINT, when it stops
accepting, interrupts running calls (a deploy rolls back) and waits for them.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from service.client import DEFAULT_SOCKET  # noqa: E402
from service.server import ManagerService  # noqa: E402

log = logging.getLogger("cloudrepo.service")
STOP_GRACE_S = 120.0
HOUSEKEEPING_S = 60.0


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python3 -m service", description="The Cloud Repositorio manager service")
    p.add_argument("--config", default=os.environ.get("CLOUD_CONFIG") or os.path.join(HERE, "cluster.yaml"))
    p.add_argument("--db", default=os.environ.get("CLOUD_DB") or os.path.join(HERE, "database.yaml"))
    p.add_argument("--socket", default=DEFAULT_SOCKET, help=f"where menus connect (default {DEFAULT_SOCKET})")
    p.add_argument("--socket-mode", default="0666", help="the socket's mode (default 0666: every local account)")
    p.add_argument("--socket-group", help="the socket's group (with --socket-mode 0660: only its members)")
    p.add_argument("--allowed-group", help="only members of this group may use the service (checked per caller)")
    p.add_argument("--ready-file", help="write this file once the socket answers (for scripts that start it)")
    return p


def build(config_path: str, db_path: str):
    from cli import build as build_api

    return build_api(config_path, db_path)


class Housekeeping(threading.Thread):
    """What only a long-running service can do: periodic work (expired leases), every minute."""

    def __init__(self, api, stopping: threading.Event):
        super().__init__(name="housekeeping", daemon=True)
        self.api, self.stopping = api, stopping

    def run(self) -> None:
        while not self.stopping.wait(HOUSEKEEPING_S):
            reap = getattr(self.api, "reap_leases", None)
            if reap is None:
                continue
            try:
                reap()
            except Exception:  # noqa: BLE001 - the service goes on; the log says why
                log.exception("lease housekeeping failed")


def recover(api) -> None:
    """Roll back what a killed service left half-made (its marks name a process that is gone)."""
    recover_fn = getattr(api, "recover_interrupted", None)
    if recover_fn is None:
        return
    try:
        ok, outcomes = recover_fn()
        log.info("recovery at start: %s", outcomes if ok else f"failed: {outcomes}")
    except Exception:  # noqa: BLE001
        log.exception("recovery at start failed")


def limit_malloc_arenas(count: int = 2) -> None:
    """Keep glibc's malloc to ``count`` arenas (its default: 8 per core, each kept by the thread that used it).

    Every login hashes with scrypt (16 MiB) in a thread of its own; with the default arenas the
    service kept ~10 MiB per connected menu (233 MiB for 20 idle menus); with two, 47 MiB for 200
    (bench/service_cost.py).  Set before the first thread starts; elsewhere than glibc, nothing.
    """
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").mallopt(-8, count)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass


def main(argv=None) -> int:
    limit_malloc_arenas()
    args = make_parser().parse_args(argv)
    os.umask(0o027)  # what the service writes is its own (and the instructors' group's), never everyone's
    try:
        api, executor = build(args.config, args.db)
        service = ManagerService(api, args.socket, socket_mode=int(args.socket_mode, 8),
                                 socket_group=args.socket_group, allowed_group=args.allowed_group)
        service.bind()
    except Exception as e:  # noqa: BLE001 - one line, no traceback
        print(f"cloud-repositorio service: cannot start: {e}", file=sys.stderr)
        return 2
    stopping = threading.Event()

    def stop(_sig, _frame) -> None:
        stopping.set()
        threading.Thread(target=service.stop, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("manager service started (pid %d, uid %d), config %s, database %s", os.getpid(), os.getuid(),
             args.config, args.db)
    recover(api)
    Housekeeping(api, stopping).start()
    if args.ready_file:
        with open(args.ready_file, "w") as f:
            f.write(f"{os.getpid()}\n")
    try:
        service.serve_forever()
    finally:
        service.interrupt_calls()
        deadline = time.monotonic() + STOP_GRACE_S
        while service.running_calls() and time.monotonic() < deadline:
            time.sleep(0.1)
        executor.close()
        log.info("manager service stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
