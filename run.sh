#!/usr/bin/env bash
# Open the Cloud Repositorio menu.  On a fresh machine: installs what is
# missing, brings the local lab up (when the config in use is the lab's),
# then starts the menu.  For a real cluster: CLOUD_CONFIG=cluster.yaml ./run.sh
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$ROOT"
"$ROOT/setup.sh"
CONFIG=${CLOUD_CONFIG:-$ROOT/lab/cluster.yaml}
if [ "$CONFIG" = "$ROOT/lab/cluster.yaml" ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "The local lab needs root (network namespaces). Run: sudo ./run.sh" >&2
    exit 1
  fi
  "$ROOT/lab/up.sh"
fi
exec "$ROOT/.venv/bin/python" "$ROOT/cli.py" --config "$CONFIG" "$@"
