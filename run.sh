#!/usr/bin/env bash
# Open the Cloud Repositorio menu.  On a fresh machine: installs what is
# missing, brings the local lab up (when the config in use is the lab's),
# starts the manager service on it (lab/service.sh: the cloudrepo account
# holds the keys, the menu is its client), then opens the menu.
#   sudo ./run.sh              the lab, through the manager service
#   sudo ./run.sh --embedded   the lab, the menu running the use cases itself (no service)
#   CLOUD_CONFIG=cluster.yaml ./run.sh   a real cluster, embedded (see README for the service)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$ROOT"
"$ROOT/setup.sh"
CONFIG=${CLOUD_CONFIG:-$ROOT/lab/cluster.yaml}
EMBEDDED=0
if [ "${1:-}" = "--embedded" ]; then EMBEDDED=1; shift; fi
if [ "$CONFIG" != "$ROOT/lab/cluster.yaml" ]; then
  exec "$ROOT/.venv/bin/python" "$ROOT/cli.py" --config "$CONFIG" "$@"
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "The local lab needs root (network namespaces). Run: sudo ./run.sh" >&2
  exit 1
fi
"$ROOT/lab/service.sh" accounts   # before the lab's hosts copy the machine's accounts
"$ROOT/lab/up.sh"
if [ $EMBEDDED = 1 ]; then
  exec "$ROOT/.venv/bin/python" "$ROOT/cli.py" --config "$CONFIG" "$@"
fi
"$ROOT/lab/service.sh" start
exec "$ROOT/.venv/bin/python" "$ROOT/cli.py" --socket "${CLOUD_SOCKET:-/run/cloud-repositorio/manager.sock}" "$@"
