"""One ``cli.py`` in a pseudo-terminal: the pexpect driver shared by the offline and the lab menu tests.

The menu runs as a person runs it: ``TERM=dumb``, unbuffered, and without ``CLOUD_CONFIG`` /
``CLOUD_DB`` in its environment, so only the ``--config`` and ``--db`` given here count.
"""
from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import pexpect

REPO = Path(__file__).resolve().parents[1]
CLI = REPO / "cli.py"
PY = sys.executable
CHOICE = "\nChoice: "


class MenuSession:
    """One cli.py in a pseudo-terminal, with the full transcript of its screen."""

    def __init__(self, config: Path, db: Path, log: Path, *, cwd: Path | None = None, timeout: float = 20,
                 program: Path = CLI, env: dict | None = None, socket: Path | None = None,
                 argv: list | None = None):
        self.log = log
        self.buf = io.StringIO()
        env = dict(os.environ, TERM="dumb", PYTHONUNBUFFERED="1", **(env or {}))
        env.pop("CLOUD_CONFIG", None)
        env.pop("CLOUD_DB", None)
        where = ["--socket", str(socket)] if socket is not None else ["--config", str(config), "--db", str(db)]
        self.p = pexpect.spawn(argv[0] if argv else PY, (argv[1:] if argv else []) + [str(program)] + where,
                               env=env,
                               cwd=str(cwd if cwd is not None else db.parent), encoding="utf-8",
                               codec_errors="replace", timeout=timeout, dimensions=(60, 200))
        self.p.logfile_read = self.buf

    @property
    def transcript(self) -> str:
        return self.buf.getvalue().replace("\r\n", "\n")

    def wait(self, pattern, timeout: float = -1) -> str:
        """Wait for ``pattern`` (exact text, or pexpect.EOF); return the screen since the last wait."""
        try:
            if isinstance(pattern, str):
                self.p.expect_exact(pattern, timeout=timeout)
            else:
                self.p.expect(pattern, timeout=timeout)
        except (pexpect.TIMEOUT, pexpect.EOF) as e:
            raise AssertionError(f"waited for {pattern!r}, got {type(e).__name__}; screen ends with:\n"
                                 f"{self.transcript[-3000:]}") from None
        after = self.p.after if isinstance(self.p.after, str) else ""
        return (self.p.before + after).replace("\r\n", "\n")

    def send(self, line: str, until=CHOICE, timeout: float = -1) -> str:
        self.p.sendline(line)
        return self.wait(until, timeout)

    def intr(self, until=CHOICE) -> str:
        """Ctrl-C, then wait for ``until``."""
        self.p.sendintr()
        return self.wait(until)

    def eof(self, until=CHOICE) -> str:
        """Ctrl-D, then wait for ``until``."""
        self.p.sendeof()
        return self.wait(until)

    def type_credentials(self, user: str, password: str, until=CHOICE) -> str:
        """At the login screen's 'Username: ': type ``user`` and ``password``; the screen up to ``until``."""
        self.send(user, "Password: ")
        return self.send(password, until)

    def login(self, user: str, password: str) -> str:
        self.wait("Username: ")
        return self.type_credentials(user, password)

    def finish(self, status: int = 0) -> str:
        """Wait for the program to end; check its status and that no traceback ever showed."""
        rest = "" if self.p.eof() else self.wait(pexpect.EOF)
        self.p.close()
        assert self.p.exitstatus == status, f"exit status {self.p.exitstatus} (signal {self.p.signalstatus})"
        self.assert_no_traceback()
        return rest

    def assert_no_traceback(self) -> None:
        """No traceback and no 'Unexpected error' on the screen, no traceback in the log file."""
        assert "Traceback" not in self.transcript, self.transcript
        assert "Unexpected error" not in self.transcript, self.transcript
        log = self.log.read_text() if self.log.exists() else ""
        assert "Traceback" not in log, f"the log holds a traceback (an unexpected error):\n{log[-3000:]}"

    def exit(self) -> str:
        """Choose 0 and check the program ends with status 0 and no traceback."""
        rest = self.send("0", pexpect.EOF)
        self.finish(0)
        return rest
