"""A link's impairment: delay, jitter, loss and rate, as people type them and as a link stores them.

Stored on the link in ``database.yaml`` as ``impairment`` (absent: none)::

    impairment: {delay_ms: 100, jitter_ms: 10, loss_pct: 1.5, rate_kbit: 1000}

Each value holds for each direction of the link: the TAP of each end shapes
the frames going to its VM (like Mininet's ``TCLink`` and netem on both
ports), so a ping across the link has its round trip grown by twice the
delay, and each way loses ``loss_pct`` percent.

Accepted input (units parsed strictly, case-insensitive, a space before the
unit allowed): delay and jitter ``100``, ``100ms``, ``0.5s``, ``250us``
(milliseconds by default; 0 to 10000 ms; jitter no more than the delay);
loss ``1``, ``1.5%`` (0 to 100); rate ``512kbit``, ``10mbit``, ``1gbit``,
``64000bit`` (8 kbit to 10 gbit, a whole number of kbit; 0 or empty: no
limit).  Anything else is refused with a message saying what is accepted.
"""
from __future__ import annotations

import re
from typing import Optional

MAX_DELAY_MS = 10_000
MIN_RATE_KBIT = 8
MAX_RATE_KBIT = 10_000_000
FIELDS = ("delay_ms", "jitter_ms", "loss_pct", "rate_kbit")

_NUMBER = r"(\d{1,9}(?:\.\d{1,3})?)"
_TIME_RE = re.compile(_NUMBER + r"\s*(ms|s|us)?", re.IGNORECASE)
_LOSS_RE = re.compile(_NUMBER + r"\s*%?")
_RATE_RE = re.compile(_NUMBER + r"\s*(bit|kbit|mbit|gbit)?", re.IGNORECASE)
_TIME_UNIT = {"ms": 1.0, "s": 1000.0, "us": 0.001}
_RATE_UNIT = {"bit": 0.001, "kbit": 1, "mbit": 1000, "gbit": 1_000_000}


def _clean(value) -> str:
    return "" if value is None else str(value).strip()


def _round(x: float):
    """A stored number: an int when whole, else at most 3 decimals."""
    x = round(x, 3)
    return int(x) if x == int(x) else x


def parse_time(value, what: str) -> tuple:
    """(True, milliseconds) or (False, message) for a delay or jitter."""
    text = _clean(value)
    if not text:
        return True, 0
    m = _TIME_RE.fullmatch(text)
    if not m:
        return False, (f"{what} must be a time from 0 to {MAX_DELAY_MS} ms, like 100, 100ms, 0.5s or 250us "
                       f"(not {text!r})")
    ms = float(m.group(1)) * _TIME_UNIT[(m.group(2) or "ms").lower()]
    if ms > MAX_DELAY_MS:
        return False, f"{what} must be from 0 to {MAX_DELAY_MS} ms (not {text})"
    return True, _round(ms)


def parse_loss(value) -> tuple:
    """(True, percent) or (False, message)."""
    text = _clean(value)
    if not text:
        return True, 0
    m = _LOSS_RE.fullmatch(text)
    if not m or float(m.group(1)) > 100:
        return False, f"Loss must be a percentage from 0 to 100, like 1 or 2.5% (not {text!r})"
    return True, _round(float(m.group(1)))


def parse_rate(value) -> tuple:
    """(True, kbit/s, 0 for no limit) or (False, message)."""
    text = _clean(value)
    if text in ("", "0"):
        return True, 0
    m = _RATE_RE.fullmatch(text)
    rule = (f"Rate must be from {MIN_RATE_KBIT}kbit to 10gbit with its unit: bit, kbit, mbit or gbit, "
            f"like 512kbit or 10mbit (not {text!r})")
    if not m or not m.group(2):
        return False, rule
    kbit = float(m.group(1)) * _RATE_UNIT[m.group(2).lower()]
    if not MIN_RATE_KBIT <= kbit <= MAX_RATE_KBIT:
        return False, rule
    if abs(kbit - round(kbit)) > 1e-6:
        return False, f"Rate must be a whole number of kbit (not {text})"
    return True, int(round(kbit))


def parse(delay=None, jitter=None, loss=None, rate=None) -> tuple:
    """(True, impairment dict, or None when every value is 0) or (False, message): nothing is half-read."""
    checks = (parse_time(delay, "Delay"), parse_time(jitter, "Jitter"), parse_loss(loss), parse_rate(rate))
    bad = next((msg for ok, msg in checks if not ok), None)
    if bad:
        return False, bad
    imp = dict(zip(FIELDS, (v for _ok, v in checks)))
    if imp["jitter_ms"] > imp["delay_ms"]:
        return False, f"Jitter ({_num(imp['jitter_ms'])} ms) cannot be more than the delay ({_num(imp['delay_ms'])} ms)"
    return True, (imp if any(imp.values()) else None)


def normalised(imp: Optional[dict]) -> Optional[dict]:
    """A stored impairment with every field (missing ones 0), or None for none."""
    if not imp:
        return None
    out = {k: imp.get(k) or 0 for k in FIELDS}
    return out if any(out.values()) else None


def _num(x) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def rate_text(kbit: int) -> str:
    if kbit % 1_000_000 == 0:
        return f"{kbit // 1_000_000}gbit"
    if kbit % 1000 == 0:
        return f"{kbit // 1000}mbit"
    return f"{kbit}kbit"


def describe(imp: Optional[dict]) -> str:
    """``delay 100ms, jitter 10ms, loss 1.5%, rate 1mbit`` (only what is set), or ``none``."""
    imp = normalised(imp)
    if not imp:
        return "none"
    parts = []
    if imp["delay_ms"]:
        parts.append(f"delay {_num(imp['delay_ms'])}ms")
    if imp["jitter_ms"]:
        parts.append(f"jitter {_num(imp['jitter_ms'])}ms")
    if imp["loss_pct"]:
        parts.append(f"loss {_num(imp['loss_pct'])}%")
    if imp["rate_kbit"]:
        parts.append(f"rate {rate_text(int(imp['rate_kbit']))}")
    return ", ".join(parts)


def netem_args(imp: dict) -> list:
    """The words after ``tc qdisc replace dev TAP root netem``."""
    imp = normalised(imp) or {}
    args = ["limit", "1000"]
    if imp.get("delay_ms") or imp.get("jitter_ms"):
        args += ["delay", f"{_num(imp['delay_ms'])}ms"]
        if imp["jitter_ms"]:
            args.append(f"{_num(imp['jitter_ms'])}ms")
    if imp.get("loss_pct"):
        args += ["loss", f"{_num(imp['loss_pct'])}%"]
    if imp.get("rate_kbit"):
        args += ["rate", f"{int(imp['rate_kbit'])}kbit"]
    return args


def relay_args(imp: dict) -> list:
    """The relay's options for the same impairment (``hosts/netem_relay.py``)."""
    imp = normalised(imp) or {}
    return ["--delay-ms", _num(imp.get("delay_ms", 0)), "--jitter-ms", _num(imp.get("jitter_ms", 0)),
            "--loss-pct", _num(imp.get("loss_pct", 0)), "--rate-kbit", str(int(imp.get("rate_kbit", 0))),
            "--limit", "1000"]
