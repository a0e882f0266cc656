"""``python3 -m service`` with the recording FakeExecutor as its transport (see ``tests/fake_cli.py``)."""
from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]

import fake_cli  # noqa: E402

import service.__main__ as service_main  # noqa: E402

if __name__ == "__main__":
    service_main.build = fake_cli.fake_build
    sys.exit(service_main.main())
