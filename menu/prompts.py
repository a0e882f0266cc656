"""Prompts and output of the text menu: one line at a time, cancellable, never a traceback.

Shared by ``cli.py`` (the main menu and its options) and ``cli_classes.py``
(templates, topology files, instructor tools).  ``ask`` cancels the option
on an empty answer, Ctrl-C or Ctrl-D (raising ``Cancel``); ``ask_valid``
re-asks up to three times; ``say`` prints one whole line at a time (deploy
progress comes from several threads).
"""
from __future__ import annotations

import getpass
import sys
import threading
from typing import Callable, Optional

from models import Flavor
from store.text import terminal_safe

LINE = "=" * 50
WIDE = "=" * 70
OK, ERR, WARN = "\u2705", "\u274c", "\u26a0\ufe0f"
CANCELLED = "Cancelled: nothing changed."


class Cancel(Exception):
    """The user cancelled the current option (empty answer, Ctrl-C or Ctrl-D)."""


_OUT = threading.Lock()


def say(text: str = "") -> None:
    """Print one whole line (deploy progress comes from several threads), never a control character raw.

    Everything the menu renders ends here, so whatever a name, a file or a
    host said reaches the terminal escaped (``store.text.terminal_safe``)."""
    with _OUT:
        sys.stdout.write(terminal_safe(text) + "\n")
        sys.stdout.flush()


MAX_ANSWER = 4096  # characters of one answer; the rest of a longer line is read and dropped


def read_line(prompt: str) -> str:
    """Show ``prompt`` and read one line of at most ``MAX_ANSWER`` characters (EOFError at the end of input).

    Not ``input()``: its C line reader stops at a NUL byte and then waits for
    more, so a line holding a NUL got no reaction at all.  A longer line is
    refused (read to its end in bounded pieces, never held whole): the answer
    is empty, which cancels or is refused like any empty answer.
    """
    with _OUT:
        sys.stdout.write(prompt)
        sys.stdout.flush()
    line = sys.stdin.readline(MAX_ANSWER + 1)
    if not line:
        raise EOFError
    if len(line) > MAX_ANSWER and not line.endswith("\n"):
        while True:
            rest = sys.stdin.readline(65536)
            if not rest or rest.endswith("\n"):
                break
        say(f"{ERR} That answer is too long (at most {MAX_ANSWER} characters).")
        return ""
    return line.rstrip("\r\n")


def printable(text: str) -> str:
    """``text`` with every control character shown escaped (``\\x1b``), never sent raw to a terminal.

    Tabs and newlines stay; ESC, the other C0 and C1 controls and DEL would
    let what a VM or a hand-edited file prints move the cursor, retitle the
    window or make the terminal type into the menu.  The one function for
    this is ``store.text.terminal_safe``; this is its name in the menu.
    """
    return terminal_safe(text)


def ask(prompt: str) -> str:
    """One answer; Ctrl-C / Ctrl-D / an empty answer cancel the option."""
    try:
        answer = read_line(prompt)
    except (EOFError, KeyboardInterrupt):
        say()
        raise Cancel() from None
    answer = answer.strip()
    if not answer:
        raise Cancel()
    return answer


def ask_valid(prompt: str, parse: Callable[[str], Optional[object]], error: str, tries: int = 3):
    """Ask until ``parse`` accepts the answer (returns non-None); give up after ``tries``."""
    for _ in range(tries):
        value = parse(ask(prompt))
        if value is not None:
            return value
        say(f"{ERR} {error}")
    raise Cancel()


def ask_secret(prompt: str) -> str:
    """A password: hidden on a terminal, read as a line when stdin is piped."""
    try:
        if sys.stdin.isatty():
            return getpass.getpass(prompt)
        return read_line(prompt)
    except (EOFError, KeyboardInterrupt):
        say()
        raise Cancel() from None


def is_number(text: str) -> bool:
    """Only ASCII digits make a number (not '²', '①' or '٣')."""
    return text.isascii() and text.isdigit()


def parse_int(lo: int, hi: int) -> Callable[[str], Optional[int]]:
    def parse(text: str) -> Optional[int]:
        return int(text) if is_number(text) and lo <= int(text) <= hi else None
    return parse


def parse_number(text: str) -> Optional[int]:
    return int(text) if is_number(text) else None


def parse_yes_no(text: str) -> Optional[bool]:
    return {"y": True, "yes": True, "n": False, "no": False}.get(text.lower())


def result(ok: bool, message: str) -> None:
    say(f"\n{OK} {message}" if ok else f"\n{ERR} Error: {message}")


def choose_message(n: int) -> str:
    return "Choose 1 or 2" if n == 2 else f"Choose a number from 1 to {n}"


def parse_choice(options: list) -> Callable[[str], Optional[str]]:
    """Parse a 1-based number into one of ``options``."""
    def parse(text: str) -> Optional[str]:
        return options[int(text) - 1] if is_number(text) and 1 <= int(text) <= len(options) else None
    return parse


def ask_optional(prompt: str, default: str) -> str:
    """One answer, or ``default`` for an empty one; Ctrl-C / Ctrl-D cancel the option."""
    try:
        answer = read_line(prompt)
    except (EOFError, KeyboardInterrupt):
        say()
        raise Cancel() from None
    return answer.strip() or default


def render_flavors() -> list:
    """The numbered flavor list of Add VM, from ``Flavor.FLAVORS``."""
    lines = []
    for n, (name, spec) in enumerate(Flavor.FLAVORS.items(), start=1):
        cores = spec["cores"]
        lines.append(f"{n}. {name} ({cores} core{'s' if cores != 1 else ''}, {spec['ram_gb']}GB RAM, "
                     f"{spec['disk_gb']}GB disk)")
    return lines


def pool_text(s: dict) -> str:
    """A slice's VLAN block as the menu shows it: ``100-119``, or ``none`` when it has no block."""
    start, end = s.get("vlan_pool_start"), s.get("vlan_pool_end")
    if start is None or end is None:
        return "none (every block of 20 VLANs is held by a slice; its links get free VLANs elsewhere)"
    return f"{start}-{end}"


def link_vlan_note(s: dict, vlan: int) -> Optional[str]:
    """The line after ``Link created! VLAN: N`` when N is outside the slice's block (None when inside)."""
    start = s.get("vlan_pool_start")
    if start is not None and int(start) <= int(vlan) <= int(s.get("vlan_pool_end") or start):
        return None
    if start is None:
        return (f"   VLAN {vlan} is a free VLAN outside any slice's own block: this slice has none "
                "(every block of 20 VLANs is held by a slice)")
    return (f"   VLAN {vlan} is outside the slice's VLAN pool {start}-{s.get('vlan_pool_end')} "
            "(its VLANs there are held by other links)")
