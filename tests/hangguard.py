"""A hung network test must fail, never block a run.

``pytestmark = hang_limit(120)`` in a test module: with pytest-timeout
(requirements-dev.txt) that is its ``timeout`` mark, and a test running
longer fails.  Without the plugin, the fixture that ``hang_guard(120)``
returns (assigned in the same module) does the same with SIGALRM: the main
thread gets a test failure wherever it waits.
"""
from __future__ import annotations

import importlib.util
import signal

import pytest

HAVE_PYTEST_TIMEOUT = importlib.util.find_spec("pytest_timeout") is not None


def hang_limit(seconds: float) -> list:
    """The marks limiting each test of a module to ``seconds`` (with pytest-timeout)."""
    return [pytest.mark.timeout(seconds)] if HAVE_PYTEST_TIMEOUT else []


def hang_guard(seconds: float):
    """An autouse fixture failing a test that runs longer than ``seconds`` (without pytest-timeout)."""

    @pytest.fixture(autouse=True, name="hang_guard")
    def guard():
        if HAVE_PYTEST_TIMEOUT:
            yield
            return

        def hung(_signum, _frame):
            pytest.fail(f"Timeout: the test ran for more than {seconds:g} s", pytrace=True)

        previous = signal.signal(signal.SIGALRM, hung)
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)

    return guard
