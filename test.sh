#!/usr/bin/env bash
# Every test: set-up as ./run.sh, then unit tests and the lab tests (which need
# root and bring the local lab up and down themselves).  Extra arguments go
# to pytest, e.g. ./test.sh tests/unit -k vlan
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$ROOT"
"$ROOT/setup.sh" --dev
export PYTHONDONTWRITEBYTECODE=1
if [ $# -gt 0 ]; then
  exec "$ROOT/.venv/bin/python" -m pytest "$@"
fi
"$ROOT/.venv/bin/ruff" check .
exec "$ROOT/.venv/bin/python" -m pytest -ra tests
