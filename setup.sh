#!/usr/bin/env bash
# Shared set-up of ./run.sh and ./test.sh: system packages (apt, only what is
# missing, --no-install-recommends), a virtualenv in .venv with
# requirements.txt (and requirements-dev.txt with --dev), and the guest image.
# Idempotent and quiet when everything is already there.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DEV=0
[ "${1:-}" = "--dev" ] && DEV=1

missing=()
while read -r pkg; do
  [ -z "$pkg" ] || [ "${pkg#\#}" != "$pkg" ] && continue
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done < <(cat "$ROOT/lab/packages.txt"; echo tmux; echo python3-venv)

if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "Missing system packages: ${missing[*]}" >&2
    echo "Install them as root: apt-get install --no-install-recommends ${missing[*]}" >&2
    exit 1
  fi
  echo "Installing system packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The system's python3 where there is one: the manager service runs the virtualenv as its own
# account, which cannot use an interpreter under another account's home (e.g. root's pyenv).
if [ -z "${PYTHON:-}" ] && [ -x /usr/bin/python3 ]; then PY=/usr/bin/python3; else PY=${PYTHON:-python3}; fi
want_home=$(dirname "$(command -v "$PY")")
if [ -f "$ROOT/.venv/pyvenv.cfg" ] && ! grep -qx "home = $want_home" "$ROOT/.venv/pyvenv.cfg"; then
  echo "Recreating virtualenv .venv with $PY"
  rm -rf "$ROOT/.venv"
fi
if [ ! -x "$ROOT/.venv/bin/python" ]; then
  echo "Creating virtualenv .venv"
  "$PY" -m venv "$ROOT/.venv"
fi
req="$ROOT/requirements.txt"
[ $DEV = 1 ] && req="$ROOT/requirements-dev.txt"
stamp="$ROOT/.venv/.stamp-$(basename "$req")"
want=$(cat "$ROOT/requirements.txt" "$req" | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "Installing Python packages from $(basename "$req")"
  "$ROOT/.venv/bin/pip" install -q --disable-pip-version-check -r "$req"
  echo "$want" > "$stamp"
fi

# Guest images (lab/image/): the small busybox one, then the cloud-init one (a few minutes the first
# time, then cached). Their "up to date" lines are not shown; anything else (building, errors) is.
if [ "$(id -u)" -eq 0 ]; then
  "$ROOT/lab/build_image.sh" 2> >(grep -v '^build_image: up to date: ' >&2) >/dev/null
  "$ROOT/lab/build_cloud_image.sh" 2> >(grep -v '^build_cloud_image: up to date: ' >&2) >/dev/null
fi
