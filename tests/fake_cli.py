"""``cli.py`` with the recording FakeExecutor as its transport: the real menu and script mode, no host.

Tests run it exactly like ``cli.py`` (same arguments, in a terminal or not);
only ``cli.build`` is replaced, so every use case runs for real against the
database and the fake answers for the hosts.  Environment:

    FAKE_CLI_WORLD=PATH      at exit, write what the fake hosts hold (JSON list of [kind, host, id])
    FAKE_CLI_FAIL=ACTION[:TARGET],...   those steps fail (e.g. create_overlay:vm3_img.qcow2)
"""
from __future__ import annotations

import atexit
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]

import yaml  # noqa: E402
from fakes import FakeExecutor  # noqa: E402

import cli  # noqa: E402


def fake_build(config_path: str, db_path: str, dry_run: bool = False):
    from database import Database
    from deployment_api import DeploymentAPI
    from orchestrator_api import OrchestratorAPI
    from remote_executor import configure_logging

    with open(config_path) as f:
        config = yaml.safe_load(f) or {}
    executor = FakeExecutor(config)
    configure_logging(executor.config.log_file)
    for rule in filter(None, os.environ.get("FAKE_CLI_FAIL", "").split(",")):
        action, _, target = rule.partition(":")
        if target:
            executor.fail(action, target=target)
        else:
            executor.fail(action)
    world = os.environ.get("FAKE_CLI_WORLD")
    if world:
        atexit.register(lambda: _dump(executor, world))
    db = Database(db_path)
    db.load()
    return OrchestratorAPI(db, DeploymentAPI(executor), executor.config), executor


def _dump(executor: FakeExecutor, path: str) -> None:
    with open(path, "w") as f:
        json.dump(sorted(list(w) for w in executor.made()), f)


if __name__ == "__main__":
    cli.build = fake_build
    sys.exit(cli.main())
