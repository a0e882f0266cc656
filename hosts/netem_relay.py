#!/usr/bin/env python3
"""A link impairment in user space, for workers whose kernel has no ``sch_netem`` (standard library only).

Cloud Repositorio shapes a TAP's egress (the frames going to the VM) with
``tc qdisc replace dev TAP root netem ...``.  Where the kernel lacks netem,
the impairment script instead steals the TAP's egress with ``tc`` (a
``clsact`` egress filter: ``mirred egress redirect`` to one end of a veth
pair) and starts this program, which reads those frames from the other end
of the pair, drops ``--loss-pct`` percent of them at random, holds each for
``--delay-ms`` plus or minus up to ``--jitter-ms`` (uniformly, like netem;
frames keep their order), paces them at ``--rate-kbit`` (serialisation time,
a queue of ``--limit`` frames, like netem's ``rate`` and ``limit``) and
writes them to the TAP with ``PACKET_QDISC_BYPASS`` (so they skip the
filter that stole them).  Both sockets use ``PACKET_VNET_HDR``, so large
(GSO) frames and partial checksums pass unchanged.

It writes its pid file once both sockets are open (the script that starts it
waits for that), runs until SIGTERM/SIGINT or until the TAP disappears (the
VM stopped), and removes its pid file when it ends.  It is started and
stopped only by ``hosts.impairments``; its command line and pid file are
named in ``naming`` (``relay_pidfile``), so the orphan scan finds it.
"""
from __future__ import annotations

import argparse
import collections
import errno
import os
import random
import select
import signal
import socket
import sys
import time

SOL_PACKET = 263
PACKET_VNET_HDR = 15
SO_MARK = 36
RELAY_MARK = 0x4352  # "CR": the mark of frames this relay sends (naming.RELAY_MARK)
ETH_P_ALL = 0x0003
VNET_HDR_LEN = 10
MAX_FRAME = 65536 + VNET_HDR_LEN + 64
DESCRIPTION = "A link impairment in user space (delay, jitter, loss, rate) between a veth and a TAP."


def packet_socket(dev: str, mark: int = 0) -> socket.socket:
    """A raw packet socket on ``dev`` that reads and writes frames with their virtio-net header;
    frames it sends carry ``mark`` (the TAP's filter lets marked frames through)."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
    if mark:
        s.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)
    s.bind((dev, ETH_P_ALL))
    s.setblocking(False)
    return s


class Line:
    """The impairment: which frames are lost, when each of the others leaves."""

    def __init__(self, delay_ms: float, jitter_ms: float, loss_pct: float, rate_kbit: int, limit: int):
        self.delay = delay_ms / 1000.0
        self.jitter = jitter_ms / 1000.0
        self.loss = loss_pct / 100.0
        self.rate = rate_kbit * 1000.0  # bits per second, 0: unlimited
        self.limit = limit
        self.queue: collections.deque = collections.deque()  # (due, frame), due never decreasing
        self.last_due = 0.0
        self.rng = random.SystemRandom()

    def offer(self, frame: bytes, now: float) -> None:
        """A frame arrived: drop it (loss, full queue) or schedule it."""
        if self.loss and self.rng.random() < self.loss:
            return
        if len(self.queue) >= self.limit:
            return
        due = now + self.delay
        if self.jitter:
            due += self.rng.uniform(-self.jitter, self.jitter)
        due = max(due, now, self.last_due)
        if self.rate:
            due = max(due, self.last_due) + (len(frame) - VNET_HDR_LEN) * 8 / self.rate
        self.last_due = due
        self.queue.append((due, frame))

    def next_wait(self, now: float):
        """Seconds until the next frame is due (None: nothing queued)."""
        return max(0.0, self.queue[0][0] - now) if self.queue else None

    def due(self, now: float) -> list:
        out = []
        while self.queue and self.queue[0][0] <= now:
            out.append(self.queue.popleft()[1])
        return out


def announce(pidfile: str) -> None:
    """Write this process's pid to ``pidfile`` (atomically): the impairment script waits for it, so a relay
    that cannot run is known at once and the TAP's frames are never stolen into nothing."""
    tmp = f"{pidfile}.{os.getpid()}.new"
    with open(tmp, "w") as f:
        f.write(f"{os.getpid()}\n")
    os.replace(tmp, pidfile)


def gone(dev: str) -> bool:
    """Whether the device no longer exists (the VM stopped, the veth removed)."""
    try:
        socket.if_nametoindex(dev)
        return False
    except OSError:
        return True


def receive(rx: socket.socket, line: Line, now: float, via: str) -> bool:
    """Take the frames waiting on ``rx`` into the line; False once the veth is gone."""
    for _ in range(256):
        try:
            line.offer(rx.recv(MAX_FRAME), now)
        except BlockingIOError:
            return True
        except OSError as e:
            # ENETDOWN is reported once when the device goes down (or was down at bind): not an end
            return e.errno == errno.ENETDOWN and not gone(via)
    return True


def transmit(tx: socket.socket, frames: list, dev: str) -> bool:
    """Write the due frames to the TAP; False once the TAP is gone."""
    for frame in frames:
        try:
            tx.send(frame)
        except BlockingIOError:
            pass  # the TAP's queue is full (the VM is not reading): the frame is lost, as on a wire
        except OSError as e:
            if e.errno in (errno.ENXIO, errno.ENODEV) or gone(dev):
                return False
            # ENETDOWN (the TAP was still down when this socket was bound, or is down a moment), EMSGSIZE
            # (a frame the TAP cannot take): this frame is lost
    return True


def run(args) -> int:
    rx = packet_socket(args.via)
    tx = packet_socket(args.dev, mark=RELAY_MARK)
    announce(args.pidfile)
    line = Line(args.delay_ms, args.jitter_ms, args.loss_pct, args.rate_kbit, args.limit)
    while True:
        now = time.monotonic()
        ready, _, _ = select.select([rx], [], [], line.next_wait(now))
        if ready and not receive(rx, line, time.monotonic(), args.via):
            return 0
        if not transmit(tx, line.due(time.monotonic()), args.dev):
            return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=DESCRIPTION)  # the docstring is not sent to the workers
    p.add_argument("--dev", required=True, help="the TAP the frames go to")
    p.add_argument("--via", required=True, help="the veth end the stolen frames arrive on")
    p.add_argument("--delay-ms", type=float, default=0.0)
    p.add_argument("--jitter-ms", type=float, default=0.0)
    p.add_argument("--loss-pct", type=float, default=0.0)
    p.add_argument("--rate-kbit", type=int, default=0)
    p.add_argument("--limit", type=int, default=1000)
    p.add_argument("--pidfile", required=True)
    args = p.parse_args(argv)

    def stop(_sig, _frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        return run(args)
    except OSError as e:
        print(f"netem_relay {args.dev}: {e}", file=sys.stderr)
        return 1
    finally:
        try:
            with open(args.pidfile) as f:
                mine = f.read().strip() == str(os.getpid())
            if mine:
                os.unlink(args.pidfile)
        except OSError:
            pass


if __name__ == "__main__":
    sys.exit(main())
