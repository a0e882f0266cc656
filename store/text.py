"""Text from files, shown on terminals: no control character ever reaches a screen raw.

Names in ``database.yaml`` (user, slice and VM names, anything the menu
shows as a name) hold no control character: the store refuses a file that
has one, with its line (``has_control``).  Whatever is printed anyway (a
message quoting a file, a VM's boot log, a name from an older file) goes
through ``terminal_safe`` first: C0 controls (NUL, ESC, CR...), DEL, C1
controls (``\\x9b`` is a one-byte CSI on many terminals) and the other
characters Python does not call printable (line separators, bidi overrides,
zero-width characters) are shown escaped (``\\x1b``, ``\\u202e``); printable
Unicode (accents, box drawing, emoji) is kept.  So a name like
``\\x1b]2;owned\\x07`` can neither retitle the window, clear the screen nor
make the terminal type into the menu.

A refused file is described, never quoted: ``excerpt`` gives at most a short
escaped piece of it (``EXCERPT`` characters), and ``word`` shows a key only
when it looks like one (a typo like ``quotaa``), so a file that is not what
was asked for (``/etc/shadow`` given as a roster) prints none of its lines.
"""
from __future__ import annotations

import re
from typing import Any, Optional

EXCERPT = 40
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_WORD = re.compile(r"[A-Za-z0-9_.-]{1,24}")


def has_control(text: str) -> bool:
    """True when ``text`` holds a C0 control (tabs and newlines too), DEL or a C1 control."""
    return _CONTROL.search(text) is not None


def _escaped(c: str) -> str:
    code = ord(c)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def terminal_safe(text: Any, keep: str = "\n\t") -> str:
    """``text`` with every control or non-printable character escaped (those in ``keep`` stay).

    Idempotent (an escape is printable text), and the same object back when
    nothing needed escaping (the common case costs one ``isprintable``)."""
    text = text if isinstance(text, str) else str(text)
    if text.isprintable():
        return text
    return "".join(c if c in keep or c.isprintable() else _escaped(c) for c in text)


def clip(value: Any, limit: int = EXCERPT) -> str:
    """``value`` as one short line: escaped, at most ``limit`` characters (``...`` where it was cut)."""
    text = terminal_safe(value if isinstance(value, str) else repr(value), keep="")
    return text if len(text) <= limit else text[:limit - 3] + "..."


def excerpt(value: Any, limit: int = EXCERPT) -> str:
    """A short, escaped piece of what a file said: a text quoted (``'root:x:0...'``), anything else as Python
    spells it (``9``, ``None``); at most ``limit`` characters of it."""
    if not isinstance(value, str):
        return clip(value, limit)
    return "'" + clip(value, limit).replace("'", "\\'") + "'"


def word(value: Any) -> Optional[str]:
    """``value`` quoted when it looks like a key or column name someone meant to type, else None."""
    if isinstance(value, str) and _WORD.fullmatch(value):
        return repr(value)
    return None
