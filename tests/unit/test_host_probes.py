"""Connect probes shared by concurrent use cases (issue 18): a class deploying at once asks each
host once, not once per student; a probe whose sender gave up (Ctrl-C) is sent again by a waiter."""
from __future__ import annotations

import threading
from types import SimpleNamespace

from hosts.hostcmd import CommandResult
from hosts.runner import Cancel
from usecases.services import Services


class SlowRunner:
    """Answers connect probes after ``release`` is set; counts each host asked."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.asked: list = []
        self._lock = threading.Lock()

    def run(self, cmds, phase, t0, cancel=None, stop_on_failure=True):
        with self._lock:
            self.asked += [c.host for c in cmds]
        assert all(c.quick for c in cmds)
        self.release.wait(10)
        if cancel is not None and cancel.interrupted:
            return SimpleNamespace(results=[None for _c in cmds])
        return SimpleNamespace(results=[CommandResult(c.host, c.script, 0, stdout=f"/home/{c.host}")
                                        for c in cmds])


def services(runner) -> Services:
    deployment = SimpleNamespace(executor=SimpleNamespace(dry_run=False))
    return Services(db=None, config=None, deployment=deployment, runner=runner, credentials=object())


def in_threads(fns) -> list:
    out = [None] * len(fns)

    def one(i):
        out[i] = fns[i]()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(fns))]
    for t in threads:
        t.start()
    return threads, out


def test_concurrent_connects_share_one_probe_per_host():
    runner = SlowRunner()
    svc = services(runner)
    threads, out = in_threads([lambda: svc.connect_each(["w1", "net"]) for _ in range(6)])
    while len(runner.asked) < 2:
        threading.Event().wait(0.01)
    threading.Event().wait(0.1)          # the other five are waiting for those two probes by now
    runner.release.set()
    for t in threads:
        t.join(10)
    assert sorted(runner.asked) == ["net", "w1"]
    assert all(r["w1"].ok and r["net"].stdout == "/home/net" for r in out)
    assert len({id(r["w1"]) for r in out}) == 6          # each caller its own copy
    assert svc.homes == {"w1": "/home/w1", "net": "/home/net"}


def test_an_answered_probe_is_not_reused():
    runner = SlowRunner()
    runner.release.set()
    svc = services(runner)
    svc.connect_each(["w1"])
    svc.connect_each(["w1"])
    assert runner.asked == ["w1", "w1"]


def test_a_waiter_sends_its_own_probe_when_the_sender_was_interrupted():
    runner = SlowRunner()
    svc = services(runner)
    cancel = Cancel()
    threads, out = in_threads([lambda: svc.connect_each(["w1"], cancel=cancel)])
    while not runner.asked:
        threading.Event().wait(0.01)
    waiter_threads, waiter_out = in_threads([lambda: svc.connect_each(["w1"])])
    threading.Event().wait(0.1)
    cancel.set("interrupted")
    runner.release.set()
    for t in threads + waiter_threads:
        t.join(10)
    assert out[0]["w1"] is None
    assert waiter_out[0]["w1"].ok
    assert runner.asked == ["w1", "w1"]
