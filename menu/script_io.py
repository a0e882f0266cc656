"""What every script-mode command shares: its output lines and its one-line refusals.

A command prints with ``out`` (never a control character raw), turns a use case's
``(ok, payload)`` into its payload with ``checked`` (or ``Failed``, which
``menu.commands.run`` reports on stderr with exit status 1).
"""
from __future__ import annotations

import sys

from menu.prompts import printable


class Failed(Exception):
    """A refusal or failure to report on stderr (exit status 1)."""


def safe(text: str) -> str:
    """A line with no control character left raw (a message may quote what a file or a user gave)."""
    return printable(text)


def out(text: str = "") -> None:
    """One line of a command's output, never a control character raw (``store.text.terminal_safe``)."""
    sys.stdout.write(safe(text) + "\n")
    sys.stdout.flush()


def checked(pair: tuple):
    """The payload of a use case's ``(ok, payload)``; ``Failed(payload)`` when not ok."""
    ok, payload = pair
    if not ok:
        raise Failed(payload)
    return payload
