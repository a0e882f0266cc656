"""The one parallel runner: host commands of one phase, in parallel, with cancellation.

Every phase of every use case (connect, network, VMs, stop, teardown, scans,
cleanup) runs through ``Runner.run``.  Two modes:

* ``stop_on_failure=True`` (making things): after the first failure, or a
  cancellation, no further command is handed out; those under way finish.
* ``stop_on_failure=False`` (removing things): every command runs, whatever
  fails; the report lists each failure (teardown visits every host it can).
  Only an interrupt stops it.

Ctrl-C: while a use case holds ``interrupts_cancel(cancel)``, SIGINT does
not raise: it sets ``cancel`` (reason ``"interrupted"``), which the runner
checks before handing out each command and while waiting.  So an interrupt
at any instant (while commands are handed out or awaited) stops the phase
cleanly, with every started command finished and accounted for; the use
case then undoes what was made.  A ``KeyboardInterrupt`` that still reaches
the runner (no handler installed) is treated the same way.
"""
from __future__ import annotations

import contextlib
import contextvars
import signal
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

from hosts.hostcmd import CommandResult, HostCommand

Progress = Callable[[dict], None]


class Cancel:
    """A cancellation flag with a reason (``"failed"`` or ``"interrupted"``), shared by threads."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""

    def set(self, reason: str = "failed") -> None:
        if not self._event.is_set():
            self.reason = reason
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    @property
    def interrupted(self) -> bool:
        return self.is_set() and self.reason == "interrupted"


@dataclass
class StepReport:
    """What one phase did: a result per command (None: never handed out)."""

    results: list = field(default_factory=list)
    interrupted: bool = False

    @property
    def failures(self) -> list:
        return [r for r in self.results if r is not None and not r.ok and r.error != "cancelled"]

    @property
    def failed(self) -> Optional[CommandResult]:
        f = self.failures
        return f[0] if f else None

    @property
    def ok(self) -> bool:
        return not self.interrupted and not self.failures and all(r is not None for r in self.results)


class CallControl:
    """A caller's way to interrupt the call it made, from another thread (the manager service's Ctrl-C).

    Set as ``CALL_CONTROL`` in the context the use case runs in; every
    ``interrupts_cancel(cancel)`` of that call then attaches its ``cancel``,
    so ``interrupt()`` does what Ctrl-C does to the menu run on its own.  An
    interrupt that comes before a cancel attaches is kept for it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cancels: list = []
        self.interrupted = False

    def attach(self, cancel: Cancel) -> None:
        with self._lock:
            self._cancels.append(cancel)
            if self.interrupted:
                cancel.set("interrupted")

    def detach(self, cancel: Cancel) -> None:
        with self._lock:
            if cancel in self._cancels:
                self._cancels.remove(cancel)

    def interrupt(self) -> None:
        with self._lock:
            self.interrupted = True
            for cancel in self._cancels:
                cancel.set("interrupted")


CALL_CONTROL: contextvars.ContextVar = contextvars.ContextVar("cloudrepo_call_control", default=None)


@contextlib.contextmanager
def interrupts_cancel(cancel: Cancel) -> Iterator[None]:
    """While inside, Ctrl-C sets ``cancel`` instead of raising.

    In the main thread: SIGINT.  In a call of the manager service: the
    session's ``CallControl`` (its client pressed Ctrl-C).  Elsewhere nothing.
    """
    control = CALL_CONTROL.get()
    if control is not None:
        control.attach(cancel)
        try:
            yield
        finally:
            control.detach(cancel)
        return
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, lambda _sig, _frame: cancel.set("interrupted"))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


@contextlib.contextmanager
def interrupts_ignored() -> Iterator[None]:
    """While inside, Ctrl-C is ignored (undoing must not be interrupted; main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


class _Phase:
    """The state of one ``Runner.run``: results, the cancellation flag, progress events."""

    def __init__(self, executor, cmds: list, phase: str, progress: Optional[Progress], t0: float,
                 cancel: Cancel, stop_on_failure: bool):
        self.executor, self.cmds, self.phase, self.progress, self.t0 = executor, cmds, phase, progress, t0
        self.cancel, self.stop_on_failure = cancel, stop_on_failure
        self.report = StepReport(results=[None] * len(cmds))
        self.lock = threading.Lock()

    def stopped(self) -> bool:
        return self.cancel.interrupted or (self.stop_on_failure and self.cancel.is_set())

    def one(self, index: int, cmd: HostCommand) -> None:
        """Run one command (in a pool thread), unless the phase was stopped meanwhile."""
        if self.stopped():
            self.report.results[index] = CommandResult.failed(cmd, "cancelled")
            return
        res = self.executor.run(cmd)
        with self.lock:
            self.report.results[index] = res
        if not res.ok and self.stop_on_failure:
            self.cancel.set("failed")
        if self.progress:
            self.progress({"phase": self.phase, "host": cmd.host, "step": cmd.step, "ok": res.ok,
                           "duration": res.duration, "elapsed": time.monotonic() - self.t0,
                           "message": res.message(), "action": cmd.action, "target": cmd.target})

    def finish(self, futures: list) -> StepReport:
        """The report, with an internal error recorded for any command whose thread raised."""
        for index, f in enumerate(futures):
            exc = None if f.cancelled() else f.exception()
            if exc is not None and self.report.results[index] is None:
                self.report.results[index] = CommandResult.failed(self.cmds[index], f"internal error: {exc}")
        self.report.interrupted = self.cancel.interrupted
        return self.report


class Runner:
    """Runs ``HostCommand`` lists through one executor, in parallel."""

    max_parallel = 32  # commands of one phase in flight at once (1: one after another); the executor
    #                    also caps the sessions per host (remote_executor.MAX_SESSIONS_PER_HOST)

    def __init__(self, executor, max_parallel: Optional[int] = None):
        self.executor = executor
        if max_parallel is not None:
            self.max_parallel = max_parallel

    def run(self, cmds: list, *, phase: str = "", progress: Optional[Progress] = None,
            t0: Optional[float] = None, cancel: Optional[Cancel] = None,
            stop_on_failure: bool = True) -> StepReport:
        """Run ``cmds`` in parallel; see the module docstring for failures and Ctrl-C."""
        phase_run = _Phase(self.executor, cmds, phase, progress, time.monotonic() if t0 is None else t0,
                           cancel or Cancel(), stop_on_failure)
        if not cmds:
            return phase_run.report
        pool = ThreadPoolExecutor(max_workers=min(self.max_parallel, len(cmds)), thread_name_prefix=phase or "run")
        futures: list = []
        try:
            for index, cmd in enumerate(cmds):
                if phase_run.stopped():
                    break
                futures.append(self._submit(pool, phase_run.one, index, cmd))
            self._wait_all(futures, phase_run.cancel)
        except KeyboardInterrupt:
            phase_run.cancel.set("interrupted")
        finally:
            with interrupts_ignored():
                for f in futures:
                    f.cancel()
                wait(futures)
                pool.shutdown(wait=True)
        return phase_run.finish(futures)

    # Seams for tests: an interrupt can be injected exactly while submitting or waiting.

    def _submit(self, pool: ThreadPoolExecutor, fn, *args) -> Future:
        # the pool thread keeps the caller's context (who the work is for, on its log lines)
        return pool.submit(contextvars.copy_context().run, fn, *args)

    def _wait_all(self, futures: list, cancel: Cancel) -> None:
        pending = set(futures)
        while pending:
            _done, pending = wait(pending, timeout=0.1, return_when=FIRST_COMPLETED)
