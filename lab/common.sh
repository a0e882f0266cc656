# Shared definitions for the lab scripts (sourced, not executed).
# shellcheck shell=bash

LAB_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
REPO_DIR="$(dirname "$LAB_DIR")"
STATE_DIR="$LAB_DIR/state"
SSH_DIR="$STATE_DIR/ssh"
IMAGE="$LAB_DIR/image/labvm.qcow2"          # the cirros flavor: busybox guest
CLOUD_IMAGE="$LAB_DIR/image/cloudvm.qcow2"  # the ubuntu flavor: Debian with cloud-init
CLUSTER_YAML="$LAB_DIR/cluster.yaml"

# Simulated hosts (each with its own net/mount/UTS/PID namespaces) and their
# management addresses. The switch (crlab-sw) and the internet stand-in
# (crlab-inet) are bare network namespaces.
#
# The number of workers is LAB_WORKERS (default 3, at most 40): worker<i> has 10.250.0.<10+i>.
# lab/up.sh records the running lab's count in lab/state/workers, so that lab/down.sh, lab/exec.sh
# and a later lab/up.sh without LAB_WORKERS see the hosts that really exist.
RUNNING_WORKERS=$(cat "$STATE_DIR/workers" 2>/dev/null || true)
export LAB_WORKERS=${LAB_WORKERS:-${RUNNING_WORKERS:-3}}
[[ $LAB_WORKERS =~ ^[0-9]+$ ]] && ((LAB_WORKERS >= 1 && LAB_WORKERS <= 40)) ||
    { printf '[lab] ERROR: LAB_WORKERS must be a number from 1 to 40, not %q\n' "$LAB_WORKERS" >&2; exit 1; }
# Hosts of the lab as wanted now; TEARDOWN_WORKERS also covers a running lab that has more.
TEARDOWN_WORKERS=$((LAB_WORKERS > ${RUNNING_WORKERS:-0} ? LAB_WORKERS : RUNNING_WORKERS))
HOSTS=(netnode)
declare -A HOST_IP=([netnode]=10.250.0.10)
for ((i = 1; i <= TEARDOWN_WORKERS; i++)); do
    HOST_IP[worker$i]=10.250.0.$((10 + i))
    ((i <= LAB_WORKERS)) && HOSTS+=("worker$i")
done
WORKERS=("${HOSTS[@]:1}")
NS_PREFIX=crlab-
SW_NS=crlab-sw
INET_NS=crlab-inet
ALL_NS=(crlab-sw crlab-netnode crlab-inet)
TEARDOWN_NS=("${ALL_NS[@]}")
for ((i = 1; i <= TEARDOWN_WORKERS; i++)); do
    ((i <= LAB_WORKERS)) && ALL_NS+=("crlab-worker$i")
    TEARDOWN_NS+=("crlab-worker$i")
done
MGMT_IF=crlab-mgmt          # veth in the machine's own namespace
MGMT_ADDR=10.250.0.1/24
UPLINK_ADDR=10.255.0.1/24    # netnode uplink0
INET_ADDR=10.255.0.254      # crlab-inet eth0
INET_PORT=8080
LAB_USER=ubuntu

# Commands the lab needs, and the Debian package that ships each one.
declare -A CMD_PKG=(
    [ip]=iproute2 [nsenter]=util-linux [unshare]=util-linux [flock]=util-linux
    [ovsdb-server]=openvswitch-switch [ovs-vswitchd]=openvswitch-switch
    [ovs-vsctl]=openvswitch-switch [ovsdb-tool]=openvswitch-common
    [sshd]=openssh-server [ssh-keygen]=openssh-client [ssh]=openssh-client
    [sudo]=sudo [tini]=tini [qemu-system-x86_64]=qemu-system-x86
    [qemu-img]=qemu-utils [dnsmasq]=dnsmasq [iptables]=iptables
    [python3]=python3 [tcpdump]=tcpdump
)

log() { printf '[lab] %s\n' "$*"; }
die() { printf '[lab] ERROR: %s\n' "$*" >&2; exit 1; }

# Milliseconds since the epoch, for the timing summary.
now_ms() { date +%s%3N; }

# Inside each host, lab/state is bind-mounted here (see host_init.sh), so
# the host's own configs (sshd_config) use this path, not the repo's.
HOST_STATE_MNT=/run/crlab

host_dir() { printf '%s/hosts/%s' "$STATE_DIR" "$1"; }

# PID (as seen from the root namespace) of a host's PID-1 init, or nothing.
host_init_pid() {
    local f
    f="$(host_dir "$1")/init.pid"
    [[ -s $f ]] && cat "$f"
    return 0
}

# True if PID is alive and lives in network namespace crlab-HOST.
pid_in_netns() {
    local pid=$1 ns=$2
    [[ -n $pid && -e /proc/$pid && -e /run/netns/$ns ]] || return 1
    [[ "$(stat -L -c %i "/proc/$pid/ns/net" 2>/dev/null)" == "$(stat -L -c %i "/run/netns/$ns")" ]]
}

# Run "$@" (exec) without any file descriptor above 2 that this script inherited: a long-lived
# daemon must not keep a caller's lock (e.g. `flock FILE lab/up.sh` hands FILE's descriptor to
# its command, and through it to every daemon the lab starts, which then hold the lock forever).
exec_without_inherited_fds() {
    local fd
    for fd in /proc/$BASHPID/fd/*; do
        fd=${fd##*/}
        [[ $fd =~ ^[0-9]+$ ]] && ((fd > 2)) && eval "exec $fd>&-" 2>/dev/null
    done
    exec "$@"
}

# Serialise up.sh/down.sh runs. The lock fd (9) must not leak into the
# long-lived daemons, so every background launch closes it (9>&-).
take_lock() {
    mkdir -p "$STATE_DIR"
    exec 9>"$STATE_DIR/lab.lock"
    flock -w 300 9 || die "another lab/up.sh or lab/down.sh holds $STATE_DIR/lab.lock"
}

# ---------------------------------------------------------------------------
# Teardown (used by down.sh, and by up.sh before rebuilding a stale lab).
# ---------------------------------------------------------------------------
lab_teardown() {
    local h pid ns pids=() i

    # 1. Kill each host's PID 1: the kernel then kills every process of that
    #    host's PID namespace (sshd, OVS, qemu, dnsmasq...).
    for h in "${!HOST_IP[@]}"; do
        pid="$(host_init_pid "$h")"
        if [[ -n $pid ]] && pid_in_netns "$pid" "crlab-$h"; then
            kill -KILL "$pid" 2>/dev/null || true
            pids+=("$pid")
        fi
    done
    # The inet host's HTTP server (a plain process in the root PID namespace).
    pid="$(cat "$STATE_DIR/inet/server.pid" 2>/dev/null || true)"
    if [[ -n $pid ]] && pid_in_netns "$pid" "$INET_NS"; then
        kill -KILL "$pid" 2>/dev/null || true
        pids+=("$pid")
    fi
    # 2. Anything else still living in a lab network namespace (after a crash
    #    the pid files may be stale): kill it by namespace, never by name.
    for ns in "${TEARDOWN_NS[@]}"; do
        [[ -e /run/netns/$ns ]] || continue
        for pid in $(ip netns pids "$ns" 2>/dev/null); do
            kill -KILL "$pid" 2>/dev/null || true
            pids+=("$pid")
        done
    done
    # 2b. Lab processes whose namespace was already deleted by hand: find the
    #     launchers by their exact command line (unshare ... lab/host_init.sh,
    #     which takes its PID-1 child along thanks to --kill-child, and
    #     python3 lab/inet_server.py). Nothing is matched by name alone.
    local argv
    for pid in $(ls /proc | grep -E '^[0-9]+$'); do
        mapfile -d "" -t argv 2>/dev/null <"/proc/$pid/cmdline" || continue
        ((${#argv[@]} >= 2)) || continue
        case "$(basename "${argv[0]}") ${argv[*]: -2}" in
            "unshare $LAB_DIR/host_init.sh "* | "python3 "*" $LAB_DIR/inet_server.py")
                kill -KILL "$pid" 2>/dev/null || true
                pids+=("$pid") ;;
        esac
    done
    # 3. Wait until they are gone (a killed PID 1 takes its namespace down
    #    asynchronously). A zombie counts as gone: the launchers' parent is
    #    the machine's init, which may take a second or so to reap them.
    for i in $(seq 1 200); do
        local alive=0 state
        for pid in "${pids[@]}"; do
            state="$(awk '{ print $3 }' "/proc/$pid/stat" 2>/dev/null)" || continue
            [[ -n $state && $state != Z ]] && alive=1 && break
        done
        ((alive)) || break
        sleep 0.05
    done
    # 4. Delete the namespaces; that removes every veth including crlab-mgmt.
    for ns in "${TEARDOWN_NS[@]}"; do
        [[ -e /run/netns/$ns ]] && ip netns delete "$ns" 2>/dev/null || true
    done
    ip link del "$MGMT_IF" 2>/dev/null || true
    # Undo the /run/netns mount (and dir) that the lab's first "ip netns add"
    # created, if nothing else uses it meanwhile.
    if [[ -f $STATE_DIR/run-netns-by-lab && -z "$(ip netns list 2>/dev/null)" ]]; then
        umount /run/netns 2>/dev/null || true
        if [[ "$(cat "$STATE_DIR/run-netns-by-lab")" == dir ]]; then
            rmdir /run/netns 2>/dev/null || true
        fi
        rm -f "$STATE_DIR/run-netns-by-lab"
    fi
    # 5. Runtime state. Keep the client key and the hosts' SSH host keys so the
    #    known_hosts entries stay valid across runs; keep the logs of the last run.
    for h in "${!HOST_IP[@]}"; do
        local d
        d="$(host_dir "$h")"
        [[ -d $d ]] || continue
        rm -rf "$d/run" "$d/tmp" "$d/home" "$d/etc-openvswitch" "$d/var-lib-openvswitch" \
            "$d/init.pid" "$d/unshare.pid" "$d/ready"
    done
    # lab/cluster.yaml stays: it is deterministic and other tools point at it.
    rm -f "$STATE_DIR/inet/server.pid" "$STATE_DIR/up" "$STATE_DIR/workers"
}
