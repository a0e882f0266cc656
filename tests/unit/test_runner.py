"""The one parallel runner: failures, teardown that visits every host, Ctrl-C injected at exact instants."""
from __future__ import annotations

import signal
import threading

import pytest
from fakes import FakeExecutor
from uhelpers import NODE, WORKERS, build_slice, make_api, ok

from hosts.hostcmd import HostCommand
from hosts.runner import Cancel, Runner, interrupts_cancel


def cmds(n, action="step"):
    return [HostCommand(WORKERS[i % 3], f"echo {i}", step=f"s{i}", action=action, target=i) for i in range(n)]


def test_all_results_in_order():
    ex = FakeExecutor()
    report = Runner(ex).run(cmds(5))
    assert report.ok and [r.target for r in report.results] == [0, 1, 2, 3, 4]


def test_making_stops_handing_out_after_a_failure():
    ex = FakeExecutor()
    ex.fail("step", target=0)
    report = Runner(ex, max_parallel=1).run(cmds(4))
    assert not report.ok and report.failed.target == 0
    assert [c.target for c in ex.commands] == [0]


def test_removing_visits_every_host_whatever_fails():
    ex = FakeExecutor()
    ex.down_hosts.add(WORKERS[0])
    report = Runner(ex, max_parallel=1).run(cmds(6), stop_on_failure=False)
    assert sorted(r.target for r in report.failures) == [0, 3]
    assert sorted(c.target for c in ex.commands) == [1, 2, 4, 5]  # every reachable host was visited


class Interrupting(Runner):
    """A runner whose seams deliver a real SIGINT at an exact instant (no os.kill + sleep)."""

    def __init__(self, executor, at: str, after: int = 1):
        super().__init__(executor, max_parallel=1)
        self.at, self.after, self.count = at, after, 0

    def _submit(self, pool, fn, *args):
        self.count += 1
        if self.at == "submit" and self.count == self.after:
            signal.raise_signal(signal.SIGINT)  # the handler runs before the next bytecode
        return super()._submit(pool, fn, *args)

    def _wait_all(self, futures, cancel):
        if self.at == "wait":
            signal.raise_signal(signal.SIGINT)
        return super()._wait_all(futures, cancel)

    def run(self, *a, **kw):
        if self.at == "raise-submit":
            real, calls = super()._submit, {"n": 0}

            def raising(pool, fn, *args):
                calls["n"] += 1
                if calls["n"] == self.after:
                    raise KeyboardInterrupt  # no handler installed: the interrupt arrives as an exception
                return real(pool, fn, *args)
            self._submit = raising
        try:
            return super().run(*a, **kw)
        finally:
            self.__dict__.pop("_submit", None)


@pytest.mark.parametrize("at", ["submit", "wait", "raise-submit"])
def test_an_interrupt_stops_the_phase_and_every_started_command_is_accounted_for(at):
    ex = FakeExecutor()
    cancel = Cancel()
    with interrupts_cancel(cancel):
        report = Interrupting(ex, at, after=2).run(cmds(5), cancel=cancel)
    assert report.interrupted and not report.ok
    started = {c.target for c in ex.commands}
    assert all(r is not None for i, r in enumerate(report.results) if i in started)
    assert len(started) < 5 if at != "wait" else True


def test_handler_is_restored():
    before = signal.getsignal(signal.SIGINT)
    with interrupts_cancel(Cancel()):
        assert signal.getsignal(signal.SIGINT) is not before
    assert signal.getsignal(signal.SIGINT) is before


class DeployInterrupted(Interrupting):
    """Interrupt the VM phase of a deploy (the 2nd phase that hands out start_vm commands)."""

    def run(self, cmds, **kw):
        self.count = 0
        armed = bool(cmds) and cmds[0].action == "start_vm"
        at = self.at
        if not armed:
            self.at = "none"
        try:
            return super().run(cmds, **kw)
        finally:
            self.at = at


@pytest.mark.parametrize("at", ["submit", "wait", "raise-submit"])
def test_ctrl_c_at_any_instant_of_a_deploy_leaves_nothing_made(tmp_path, at):
    api, db, ex = make_api(tmp_path)
    sid, _ = build_slice(api, vms=(("a", 1, True), ("b", 1, False), ("c", 1, False)),
                        links=((0, "eth1", 1, "eth1"),))
    api.services.runner = DeployInterrupted(ex, at, after=2)
    api.lifecycle.s.runner = api.services.runner
    res = api.deploy_slice("admin", sid)
    assert res[0] is False and "interrupted (Ctrl-C)" in res[1], res
    assert ex.made("vm") == set() and ex.made("vlan") == set(), ex.world
    s = db.get_slice(sid)
    assert s["status"] == "design" and "busy" not in s
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_the_plan_is_exactly_what_a_deploy_runs(tmp_path):
    api, _db, ex = make_api(tmp_path)
    sid, _ = build_slice(api, vms=(("a", 1, True), ("b", 2, False)), links=((0, "eth1", 1, "eth1"),))
    planned = ok(api.plan_deploy(None, sid))
    planned_texts = [(c.host, ex.render(c)) for c in planned]
    assert not [c for c in ex.commands if c.action in ("start_vm", "vlan_up", "internet_up")]  # a plan runs nothing
    ex.calls.clear()
    ok(api.deploy_slice("admin", sid))
    ran = [(h, t) for h, t in ex.calls if not t.startswith("printf %s")]  # everything but the connect checks
    assert sorted(ran) == sorted(planned_texts)
    assert all("~" not in t.split("sh -c", 1)[-1] for _h, t in ran if "qemu-system" in t)  # absolute paths only
    assert {h for h, _t in planned_texts} == {NODE, WORKERS[0], WORKERS[1]}


def test_the_menu_thread_is_not_needed_for_cancellation():
    # outside the main thread no handler can be installed: the runner still works, and nothing leaks
    out = {}

    def work():
        ex = FakeExecutor()
        out["report"] = Runner(ex).run(cmds(3))

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert out["report"].ok
