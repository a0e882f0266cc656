"""A hung network test must fail, never block a run.

``pytestmark = hang_limit(120)`` in a test module: with pytest-timeout
(requirements-dev.txt) that is its ``timeout`` mark, and a test running
longer fails.  Without the plugin the module also needs the fixture that
``hang_guard(120)`` returns: faulthandler then prints every thread's stack
and ends the run (exit status 1) when a test runs longer.
"""
from __future__ import annotations

import faulthandler
import importlib.util

import pytest

HAVE_PYTEST_TIMEOUT = importlib.util.find_spec("pytest_timeout") is not None


def hang_limit(seconds: float) -> list:
    """The marks limiting each test of a module to ``seconds``."""
    return [pytest.mark.timeout(seconds)] if HAVE_PYTEST_TIMEOUT else []


def hang_guard(seconds: float):
    """An autouse fixture ending a run whose test hangs longer than ``seconds`` (without pytest-timeout)."""

    @pytest.fixture(autouse=True, name="hang_guard")
    def guard():
        if HAVE_PYTEST_TIMEOUT:
            yield
            return
        faulthandler.dump_traceback_later(seconds, exit=True)
        try:
            yield
        finally:
            faulthandler.cancel_dump_traceback_later()

    return guard
