#!/bin/bash
# The manager service on the lab machine, as a real install would run it (README, "The manager service"):
#   lab/service.sh start    accounts, state, then the service as the cloudrepo account (idempotent)
#   lab/service.sh stop     SIGTERM, wait (running deploys roll back), socket removed
#   lab/service.sh status   does the socket answer?
#
# Accounts (made once, before the lab binds its hosts' /etc): the system account cloudrepo (the
# service) and the group cloudrepo-instructors (who may read database.yaml). State: lab/state/service
# (cloudrepo:cloudrepo-instructors, 2750): database.yaml (0640), its site key (0600), a copy of the
# lab's SSH key and known_hosts (0600/0644), the log (0600), the service's cluster.yaml. The socket:
# /run/cloud-repositorio/manager.sock (0666: any local account may run the menu; it must log in).
set -euo pipefail
umask 027
LAB_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
REPO_DIR="$(dirname "$LAB_DIR")"
STATE="$LAB_DIR/state/service"
SOCKET_DIR=/run/cloud-repositorio
SOCKET=${CLOUD_SOCKET:-$SOCKET_DIR/manager.sock}
ACCOUNT=cloudrepo
INSTRUCTORS=cloudrepo-instructors
PID_FILE="$STATE/service.pid"
PY="$REPO_DIR/.venv/bin/python"
# shellcheck source=lab/common.sh
source "$LAB_DIR/common.sh"

log() { printf '[service] %s\n' "$*"; }
die() { printf '[service] ERROR: %s\n' "$*" >&2; exit 1; }
[[ $EUID -eq 0 ]] || die "lab/service.sh must run as root (it makes the service's account and starts it)"

answers() {
    "$PY" - "$SOCKET" <<'EOF' 2>/dev/null
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(2)
s.connect(sys.argv[1])
EOF
}

accounts() {
    getent group "$INSTRUCTORS" >/dev/null || groupadd --system "$INSTRUCTORS"
    if ! getent passwd "$ACCOUNT" >/dev/null; then
        useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin \
            --comment "Cloud Repositorio manager service" "$ACCOUNT"
    fi
}

# The service must read the code, its virtualenv and the base images; nothing else of the repo.
check_reachable() {
    local p
    for p in "$REPO_DIR/cli.py" "$PY" "$REPO_DIR/lab/image/labvm.qcow2"; do
        [[ -e $p ]] || continue
        runuser -u "$ACCOUNT" -- test -r "$p" ||
            die "the $ACCOUNT account cannot read $p: put the checkout where every account may read it (e.g. /opt or /srv), or run the menu embedded: sudo ./run.sh --embedded"
    done
}

state() {
    [[ -f $LAB_DIR/cluster.yaml && -f $LAB_DIR/state/ssh/id_ed25519 ]] || die "bring the lab up first (lab/up.sh)"
    install -d -m 2750 -o "$ACCOUNT" -g "$INSTRUCTORS" "$STATE" "$STATE/log"
    install -d -m 0700 -o "$ACCOUNT" -g "$INSTRUCTORS" "$STATE/ssh"
    install -m 0600 -o "$ACCOUNT" -g "$INSTRUCTORS" "$LAB_DIR/state/ssh/id_ed25519" "$STATE/ssh/id_ed25519"
    install -m 0644 -o "$ACCOUNT" -g "$INSTRUCTORS" "$LAB_DIR/state/ssh/known_hosts" "$STATE/ssh/known_hosts"
    if [[ ! -f $STATE/database.yaml ]]; then
        install -m 0640 -o "$ACCOUNT" -g "$INSTRUCTORS" "$REPO_DIR/database.yaml" "$STATE/database.yaml"
    fi
    # The lab's config, with the service's own copies of the key and its own log.
    "$PY" - "$LAB_DIR/cluster.yaml" "$STATE" >"$STATE/cluster.yaml.tmp" <<'EOF'
import sys, yaml
cfg = yaml.safe_load(open(sys.argv[1]))
state = sys.argv[2]
cfg["ssh"].update(key_file=f"{state}/ssh/id_ed25519", known_hosts=f"{state}/ssh/known_hosts")
cfg["log_file"] = f"{state}/log/cloud-repositorio.log"
print("# Written by lab/service.sh: the lab's cluster.yaml with the service's key, known_hosts and log.")
print(yaml.safe_dump(cfg, sort_keys=False), end="")
EOF
    chown "$ACCOUNT:$INSTRUCTORS" "$STATE/cluster.yaml.tmp"
    chmod 0640 "$STATE/cluster.yaml.tmp"
    mv "$STATE/cluster.yaml.tmp" "$STATE/cluster.yaml"
    install -d -m 0755 -o "$ACCOUNT" -g "$ACCOUNT" "$SOCKET_DIR"
}

start() {
    if answers; then
        log "already running on $SOCKET"
        return 0
    fi
    accounts
    check_reachable
    state
    rm -f "$STATE/ready"
    cd "$REPO_DIR"
    (exec_without_inherited_fds setsid setpriv --reuid="$ACCOUNT" --regid="$ACCOUNT" --init-groups -- env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin PYTHONDONTWRITEBYTECODE=1 \
        "$PY" -m service --config "$STATE/cluster.yaml" --db "$STATE/database.yaml" --socket "$SOCKET" \
        --ready-file "$STATE/ready") </dev/null >>"$STATE/log/service.out" 2>&1 &
    local pid=$! i
    echo "$pid" >"$PID_FILE"
    for i in $(seq 1 300); do
        answers && { log "running as $ACCOUNT (pid $pid) on $SOCKET"; return 0; }
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    tail -n 20 "$STATE/log/service.out" >&2 || true
    die "the service did not start (log: $STATE/log/service.out)"
}

stop() {
    local pid
    pid="$(cat "$PID_FILE" 2>/dev/null || true)"
    if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for _ in $(seq 1 1200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        log "stopped (pid $pid)"
    fi
    rm -f "$PID_FILE"
    [[ -S $SOCKET ]] && ! answers && rm -f "$SOCKET"
    return 0
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    restart) stop; start ;;
    status) if answers; then log "running on $SOCKET"; else log "not running"; exit 3; fi ;;
    accounts) accounts ;;
    *) echo "usage: lab/service.sh start|stop|restart|status" >&2; exit 2 ;;
esac
