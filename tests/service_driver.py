"""A manager service in a process of its own, for the tests (``python3 -m service`` on a test site).

``ServiceProcess(config, db, socket)`` starts it and waits until its socket
answers; ``stop()`` sends SIGTERM and waits; ``kill()`` sends SIGKILL.
``program`` may be ``tests/fake_service.py`` (the same service over the fake
hosts of ``tests/fake_cli.py``).
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FAKE_SERVICE = REPO / "tests" / "fake_service.py"


def answers(path: Path) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


class ServiceProcess:
    def __init__(self, config: Path, db: Path, sock: Path, *, fake: bool = False, env: dict | None = None,
                 user: str | None = None, extra: list | None = None, log: Path | None = None):
        self.sock = sock
        argv = [sys.executable, str(FAKE_SERVICE)] if fake else [sys.executable, "-m", "service"]
        argv += ["--config", str(config), "--db", str(db), "--socket", str(sock)] + list(extra or [])
        if user:  # setpriv execs the service itself (no parent in between): signals reach it
            argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--"] + argv
        self.out = open(log or (sock.parent / f"{sock.name}.out"), "ab")
        self.proc = subprocess.Popen(argv, cwd=str(REPO), stdin=subprocess.DEVNULL, stdout=self.out,
                                     stderr=subprocess.STDOUT, env=dict(os.environ, **(env or {})),
                                     start_new_session=True)
        deadline = time.monotonic() + 30
        while not answers(sock):
            if self.proc.poll() is not None:
                raise RuntimeError(f"the service exited with {self.proc.returncode}: "
                                   f"{Path(self.out.name).read_text()[-2000:]}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError("the service did not answer in 30 s")
            time.sleep(0.05)

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return -9
        finally:
            self.out.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.out.close()
