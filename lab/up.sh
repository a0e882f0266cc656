#!/bin/bash
# Bring the local lab up: a real multi-host cluster on this machine, made of
# Linux namespaces (see SPEC §6). Idempotent: if the lab is already up and
# healthy it says so and exits; if it is half up or stale (e.g. after a
# crash) it is torn down and rebuilt. Writes lab/cluster.yaml.
#
#   crlab-sw       switch: bridge "mgmt" (10.250.0.0/24) and bridge "trunk" (802.1Q)
#   crlab-netnode  10.250.0.10, uplink0 10.255.0.1/24 -> crlab-inet
#   crlab-worker1..N  10.250.0.11..  (N = LAB_WORKERS, default 3)
#   crlab-inet     10.255.0.254, lab/inet_server.py on :8080
#   root namespace crlab-mgmt 10.250.0.1/24 (the manager)
set -euo pipefail

# shellcheck source=lab/common.sh
source "$(dirname "$(readlink -f "$0")")/common.sh"

T_START=$(now_ms)
elapsed() { printf '%d.%03d s' $((($(now_ms) - T_START) / 1000)) $((($(now_ms) - T_START) % 1000)); }

# --- preconditions -------------------------------------------------------------
[[ $EUID -eq 0 ]] || die "lab/up.sh must run as root (it creates namespaces and interfaces)"

check_commands() {
    local cmd missing_pkgs=()
    for cmd in "${!CMD_PKG[@]}"; do
        command -v "$cmd" >/dev/null 2>&1 || [[ -x /usr/sbin/$cmd ]] || missing_pkgs+=("${CMD_PKG[$cmd]}")
    done
    if ((${#missing_pkgs[@]})); then
        local uniq
        uniq="$(printf '%s\n' "${missing_pkgs[@]}" | sort -u | tr '\n' ' ')"
        printf '[lab] ERROR: missing packages: %s\n' "$uniq" >&2
        printf '[lab] install them with: apt-get install -y --no-install-recommends $(cat %s)\n' \
            "$LAB_DIR/packages.txt" >&2
        exit 1
    fi
}
check_commands

take_lock

# --- guest image (built by lab/build_image.sh, never here) ------------------------
ensure_image() {
    if [[ ! -f $IMAGE && -x $LAB_DIR/build_image.sh ]]; then
        log "guest image $IMAGE missing: running lab/build_image.sh"
        if ! "$LAB_DIR/build_image.sh" 9>&-; then
            log "WARNING: lab/build_image.sh failed; the lab comes up without a guest image"
        fi
    elif [[ ! -f $IMAGE ]]; then
        log "WARNING: no guest image at $IMAGE (and no lab/build_image.sh); VMs cannot boot"
    fi
}
ensure_image

# --- health check: is everything already up? ---------------------------------------
# Cheap checks: namespaces, init PIDs, the daemons' state, the sshd ports and
# the inet server, then one SSH login per host as the product does (the lab's
# key, host key checked, sudo -n), all hosts in parallel. Prints the first
# problem found.
lab_health() {
    local ns h pid ip
    [[ -f $STATE_DIR/up && -f $CLUSTER_YAML ]] || { echo "not up"; return 1; }
    [[ ${RUNNING_WORKERS:-} == "$LAB_WORKERS" ]] || { echo "$LAB_WORKERS workers wanted, ${RUNNING_WORKERS:-none} running"; return 1; }
    for ns in "${ALL_NS[@]}"; do
        [[ -e /run/netns/$ns ]] || { echo "namespace $ns missing"; return 1; }
    done
    ip -br addr show dev "$MGMT_IF" 2>/dev/null | grep -q "${MGMT_ADDR%/*}/" ||
        { echo "$MGMT_IF missing"; return 1; }
    pid="$(cat "$STATE_DIR/inet/server.pid" 2>/dev/null || true)"
    pid_in_netns "$pid" "$INET_NS" || { echo "inet server not running"; return 1; }
    for h in "${HOSTS[@]}"; do
        pid="$(host_init_pid "$h")"
        pid_in_netns "$pid" "crlab-$h" || { echo "$h: init not running"; return 1; }
        [[ -f $(host_dir "$h")/ready ]] || { echo "$h: not ready"; return 1; }
    done
    # One nsenter per host, in parallel: ovsdb + br-int + ovs-vswitchd answer,
    # and sshd accepts a TCP connection on the management address.
    local pids=() rc=0
    for h in "${HOSTS[@]}"; do
        ip=${HOST_IP[$h]}
        nsenter -t "$(host_init_pid "$h")" -n -m -u -p -- sh -c "
            ovs-vsctl --timeout=2 br-exists br-int &&
            ovs-appctl -T 2 -t ovs-vswitchd version >/dev/null &&
            timeout 2 bash -c 'exec 3<>/dev/tcp/$ip/22'" >/dev/null 2>&1 9>&- &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
    ((rc == 0)) || { echo "a host's OVS or sshd does not answer"; return 1; }
    # A host whose sshd answers may still refuse the login (its accounts gone, a
    # broken sudoers): log in as the product does.
    local -A login=()
    for h in "${HOSTS[@]}"; do
        ssh -F "$SSH_DIR/config" -o BatchMode=yes -o ConnectTimeout=5 "$h" sudo -n true \
            </dev/null >/dev/null 2>&1 9>&- &
        login[$h]=$!
    done
    for h in "${HOSTS[@]}"; do
        if ! wait "${login[$h]}"; then
            ((rc)) || echo "$h refuses the lab's SSH login (key or sudo)"
            rc=1
        fi
    done
    return $rc
}

# The lab's cluster config (deterministic; rewritten on every run so it follows the scripts).
write_cluster_yaml() {
    cat >"$CLUSTER_YAML.tmp" <<EOF
# Written by lab/up.sh: the local lab's cluster config (same format as a real cluster's).
workers: [$(for h in "${WORKERS[@]}"; do printf '%s' "${sep:-}${HOST_IP[$h]}"; sep=", "; done)]
network_node: ${HOST_IP[netnode]}
ssh: {user: $LAB_USER, key_file: $SSH_DIR/id_ed25519, known_hosts: $SSH_DIR/known_hosts, accept_new_host_keys: false, sudo: true, connect_timeout: 5, command_timeout: 60}
bridge: br-int
worker_image_dir: ~/vm_images
flavor_images: {cirros: $IMAGE, ubuntu: $CLOUD_IMAGE}
copy_timeout: 300
qemu_accel: "kvm:tcg"
qemu_nice: 10
management_networks: [10.250.0.0/24]
internet: {vlan: 400, cidr: 10.60.7.0/24, gateway: 10.60.7.1, uplink: uplink0}
lab:
  root: $LAB_DIR
  hosts: {$(for h in "${HOSTS[@]}"; do printf '%s' "${sep2:-}$h: ${HOST_IP[$h]}"; sep2=", "; done)}
  internet_host: $INET_ADDR
  internet_http: http://$INET_ADDR:$INET_PORT/
EOF
    mv "$CLUSTER_YAML.tmp" "$CLUSTER_YAML"
}

if reason="$(lab_health)"; then
    write_cluster_yaml
    log "lab is already up and healthy ($(elapsed)); config: $CLUSTER_YAML"
    exit 0
fi
log "lab not healthy ($reason): (re)building"

# --- teardown of anything stale ------------------------------------------------------
T0=$(now_ms)
lab_teardown
T_TEARDOWN=$(($(now_ms) - T0))

# --- state: keys, accounts, per-host dirs and configs ----------------------------------
T0=$(now_ms)
mkdir -p "$SSH_DIR" "$STATE_DIR/etc" "$STATE_DIR/inet"
chmod 700 "$SSH_DIR"
[[ -f $SSH_DIR/id_ed25519 ]] ||
    ssh-keygen -q -t ed25519 -N '' -C "crlab-client" -f "$SSH_DIR/id_ed25519"

# The "ubuntu" account inside the hosts: the machine's own uid if it has an
# ubuntu user, else the first uid >= 2000 that is free as both uid and gid.
# The hosts see generated passwd/group/shadow files (bind-mounted); the
# machine's own files are never modified.
lab_uid="$(awk -F: -v u="$LAB_USER" '$1 == u { print $3 }' /etc/passwd)"
lab_gid="$(awk -F: -v u="$LAB_USER" '$1 == u { print $4 }' /etc/passwd)"
if [[ -z $lab_uid ]]; then
    lab_uid=2000
    while awk -F: -v id="$lab_uid" '$3 == id { f = 1 } END { exit !f }' /etc/passwd /etc/group; do
        lab_uid=$((lab_uid + 1))
    done
    lab_gid=$lab_uid
fi
{
    grep -v "^$LAB_USER:" /etc/passwd
    echo "$LAB_USER:x:$lab_uid:$lab_gid:crlab user:/home/$LAB_USER:/bin/bash"
} >"$STATE_DIR/etc/passwd"
{
    grep -v "^$LAB_USER:" /etc/group
    echo "$LAB_USER:x:$lab_gid:"
} >"$STATE_DIR/etc/group"
# No password hashes are copied: every account gets "*" (no password login;
# key login still works with UsePAM no). A nonzero last-change date, or PAM's
# account check (run by sudo) demands a password change.
awk -F: '{ print $1 ":*:19000:0:99999:7:::" }' "$STATE_DIR/etc/passwd" >"$STATE_DIR/etc/shadow"
chown root:"$(getent group shadow >/dev/null && echo shadow || echo root)" "$STATE_DIR/etc/shadow"
chmod 0640 "$STATE_DIR/etc/shadow"
cat >"$STATE_DIR/etc/sudoers" <<EOF
# Written by lab/up.sh; bind-mounted over /etc/sudoers inside the lab hosts.
Defaults	env_reset
Defaults	secure_path="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
root	ALL=(ALL:ALL) ALL
$LAB_USER	ALL=(ALL) NOPASSWD:ALL
EOF
chown root:root "$STATE_DIR/etc/sudoers"
chmod 0440 "$STATE_DIR/etc/sudoers"

etc_hosts_lines="$(for h in "${HOSTS[@]}"; do printf '%s\t%s\n' "${HOST_IP[$h]}" "$h"; done)"
for h in "${HOSTS[@]}"; do
    d="$(host_dir "$h")"
    mkdir -p "$d"/{run,tmp,etc-openvswitch,var-lib-openvswitch,etc,log/var-log/openvswitch}
    chmod 1777 "$d/tmp"
    # The machine's logs must not leak in, and sshd only appends to existing files.
    touch "$d/log/var-log/wtmp" "$d/log/var-log/btmp" "$d/log/var-log/lastlog"
    printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n%s\n' "$h" "$etc_hosts_lines" >"$d/etc/hosts"
    echo "$h" >"$d/etc/hostname"

    # Home: ~ubuntu with the lab client key and a neutral shell setup (this
    # machine's root dotfiles run pyenv init, ~100 ms per SSH command).
    home="$d/home/$LAB_USER"
    mkdir -p "$home/.ssh" "$home/vm_images"
    cp "$SSH_DIR/id_ed25519.pub" "$home/.ssh/authorized_keys"
    printf '# lab host %s: intentionally minimal\n' "$h" >"$home/.bashrc"
    printf '# lab host %s: intentionally minimal\n[ -f ~/.bashrc ] && . ~/.bashrc\n' "$h" >"$home/.profile"
    chmod 700 "$home/.ssh"
    chmod 600 "$home/.ssh/authorized_keys"
    chmod 755 "$d/home" "$home"
    chown -R "$lab_uid:$lab_gid" "$home"

    [[ -f $d/ssh_host_ed25519_key ]] ||
        ssh-keygen -q -t ed25519 -N '' -C "crlab-$h" -f "$d/ssh_host_ed25519_key"
    cat >"$d/sshd_config" <<EOF
# Written by lab/up.sh for lab host $h (paths as seen inside the host).
ListenAddress ${HOST_IP[$h]}
HostKey $HOST_STATE_MNT/hosts/$h/ssh_host_ed25519_key
PidFile /run/sshd.pid
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin no
AuthorizedKeysFile .ssh/authorized_keys
# MaxStartups and MaxSessions stay OpenSSH's defaults (10:30:100, 10), as on a real cluster's hosts:
# the product must live within them (one connection per host, 8 sessions on it).
Subsystem sftp internal-sftp
UseDNS no
LogLevel VERBOSE
PrintMotd no
PrintLastLog no
X11Forwarding no
EOF
done
T_STATE=$(($(now_ms) - T0))

# --- network ---------------------------------------------------------------------------
T0=$(now_ms)
# On a machine where nobody used "ip netns" yet, the first "ip netns add"
# creates /run/netns and makes it a mount point; remember that, so that
# lab/down.sh can undo it and leave no mount behind.
if ! mountpoint -q /run/netns 2>/dev/null; then
    [[ -d /run/netns ]] && echo mount >"$STATE_DIR/run-netns-by-lab" || echo dir >"$STATE_DIR/run-netns-by-lab"
fi
for ns in "${ALL_NS[@]}"; do
    ip netns add "$ns"
    ip -n "$ns" link set lo up
done
# Switch: management bridge and an 802.1Q trunk bridge. VLAN filtering stays
# off (the default; this kernel lacks VLAN filtering anyway) so the trunk
# passes tagged frames untouched (1518-byte frames included:
# the kernel allows MTU + VLAN_HLEN on veths and bridges).
ip -n "$SW_NS" link add mgmt type bridge
ip -n "$SW_NS" link add trunk type bridge
ip -n "$SW_NS" link set mgmt up
ip -n "$SW_NS" link set trunk up
# The manager (this machine's own namespace). Adding the address only adds
# the connected 10.250.0.0/24 route; nothing else in the root ns changes.
ip link add "$MGMT_IF" type veth peer name m-root netns "$SW_NS"
ip -n "$SW_NS" link set m-root master mgmt up
ip addr add "$MGMT_ADDR" dev "$MGMT_IF"
ip link set "$MGMT_IF" up
for h in "${HOSTS[@]}"; do
    ns="crlab-$h"
    ip -n "$SW_NS" link add "m-$h" mtu 1500 type veth peer name eth0 netns "$ns" mtu 1500
    ip -n "$SW_NS" link add "t-$h" mtu 1500 type veth peer name eth1 netns "$ns" mtu 1500
    ip -n "$SW_NS" link set "m-$h" master mgmt up
    ip -n "$SW_NS" link set "t-$h" master trunk up
    ip -n "$ns" addr add "${HOST_IP[$h]}/24" dev eth0
    ip -n "$ns" link set eth0 up
done
# Uplink netnode <-> stand-in internet. Only the netnode gets a default route
# (to crlab-inet, which routes nowhere); crlab-inet has no route to the VMs'
# 10.60.7.0/24, so VMs reach it only through the netnode's NAT.
ip -n crlab-netnode link add uplink0 type veth peer name eth0 netns "$INET_NS"
ip -n crlab-netnode addr add "$UPLINK_ADDR" dev uplink0
ip -n crlab-netnode link set uplink0 up
ip -n "$INET_NS" addr add "$INET_ADDR/24" dev eth0
ip -n "$INET_NS" link set eth0 up
ip -n crlab-netnode route add default via "$INET_ADDR"
T_NET=$(($(now_ms) - T0))

# --- daemons -------------------------------------------------------------------------
T0=$(now_ms)
# The stand-in internet's web server: a plain process in crlab-inet. setsid +
# redirections detach it from our caller (a pytest capturing our output would
# otherwise wait for it forever) and from the caller's Ctrl-C.
(exec_without_inherited_fds ip netns exec "$INET_NS" setsid /usr/bin/python3 -u "$LAB_DIR/inet_server.py") \
    </dev/null >>"$STATE_DIR/inet/server.log" 2>&1 &
echo $! >"$STATE_DIR/inet/server.pid"

for h in "${HOSTS[@]}"; do
    d="$(host_dir "$h")"
    : >"$d/log/init.log"
    (exec_without_inherited_fds setsid nsenter --net="/run/netns/crlab-$h" \
        unshare --mount --uts --pid --fork --kill-child --mount-proc --propagation private \
        "$LAB_DIR/host_init.sh" "$h") </dev/null >>"$d/log/init.log" 2>&1 &
    echo $! >"$d/unshare.pid"
done

# The PID 1 of each host is unshare's only child; record it as init.pid.
wait_until() { # TIMEOUT_S WHAT COMMAND...: poll every 20 ms
    local deadline=$(($(now_ms) + $1 * 1000)) what=$2
    shift 2
    until "$@"; do
        (($(now_ms) < deadline)) || { log "timed out waiting for $what"; return 1; }
        sleep 0.02
    done
}
child_of() { # PID -> prints its first child
    local c
    c="$(cat "/proc/$1/task/$1/children" 2>/dev/null)" || return 1
    [[ -n ${c// /} ]] && echo "${c%% *}"
}
host_failed() {
    local h=$1
    log "host $h failed to start; last lines of $(host_dir "$h")/log/init.log:"
    tail -n 20 "$(host_dir "$h")/log/init.log" >&2 || true
    exit 1
}
for h in "${HOSTS[@]}"; do
    d="$(host_dir "$h")"
    wait_until 5 "$h init" child_of "$(cat "$d/unshare.pid")" >/dev/null || host_failed "$h"
    child_of "$(cat "$d/unshare.pid")" >"$d/init.pid"
done

# Ready = OVS (ovsdb-server, ovs-vswitchd, br-int) and sshd started; then
# sshd must accept TCP on the management address from the root namespace.
host_ready() {
    local h=$1 d
    d="$(host_dir "$h")"
    [[ -f $d/ready ]] && return 0
    [[ -e /proc/$(cat "$d/init.pid") ]] || host_failed "$h"
    return 1
}
declare -A T_HOST
for h in "${HOSTS[@]}"; do
    wait_until 30 "$h to be ready" host_ready "$h" || host_failed "$h"
    wait_until 10 "$h sshd" timeout 1 bash -c "exec 3<>/dev/tcp/${HOST_IP[$h]}/22" 2>/dev/null ||
        host_failed "$h"
    T_HOST[$h]=$(($(now_ms) - T0))
done
wait_until 10 "inet server" ip netns exec "$INET_NS" \
    timeout 1 bash -c "exec 3<>/dev/tcp/$INET_ADDR/$INET_PORT" 2>/dev/null || {
    tail -n 20 "$STATE_DIR/inet/server.log" >&2
    exit 1
}
T_DAEMONS=$(($(now_ms) - T0))

# --- client side: known_hosts, ssh config, cluster.yaml -----------------------------------
{
    for h in "${HOSTS[@]}"; do
        printf '%s %s\n' "${HOST_IP[$h]}" "$(cut -d' ' -f1,2 "$(host_dir "$h")/ssh_host_ed25519_key.pub")"
    done
} >"$SSH_DIR/known_hosts"
{
    echo "# Written by lab/up.sh: ssh -F $SSH_DIR/config worker1"
    for h in "${HOSTS[@]}"; do
        cat <<EOF
Host $h
    HostName ${HOST_IP[$h]}
EOF
    done
    cat <<EOF
Host *
    User $LAB_USER
    IdentityFile $SSH_DIR/id_ed25519
    IdentitiesOnly yes
    UserKnownHostsFile $SSH_DIR/known_hosts
    StrictHostKeyChecking yes
    GlobalKnownHostsFile /dev/null
    ConnectTimeout 5
EOF
} >"$SSH_DIR/config"

write_cluster_yaml
echo "$LAB_WORKERS" >"$STATE_DIR/workers"
touch "$STATE_DIR/up"

# --- summary -----------------------------------------------------------------------------
log "lab is up in $(elapsed): teardown ${T_TEARDOWN} ms, state ${T_STATE} ms, network ${T_NET} ms, daemons ${T_DAEMONS} ms"
for h in "${HOSTS[@]}"; do
    log "  $h  ${HOST_IP[$h]}  ssh+ovs ready after ${T_HOST[$h]} ms  (init pid $(cat "$(host_dir "$h")/init.pid"))"
done
log "  inet  $INET_ADDR  http://$INET_ADDR:$INET_PORT/ (via netnode uplink0 ${UPLINK_ADDR%/*})"
[[ -f $IMAGE ]] && log "  guest image: $IMAGE" || log "  guest image: MISSING ($IMAGE)"
log "  config: $CLUSTER_YAML    ssh: ssh -F $SSH_DIR/config worker1    exec: lab/exec.sh worker1 CMD"
