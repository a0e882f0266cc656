#!/bin/bash
# Run a command inside a lab host, from the machine's own namespace:
#   lab/exec.sh worker1 ovs-vsctl show
#   lab/exec.sh netnode ip netns list
# For netnode/worker1..3 the command enters all the host's namespaces
# (network, mount, UTS, PID), exactly as a process of that host sees the
# world (as root). For the bare namespaces (inet, sw) it uses ip netns exec.
set -euo pipefail

# shellcheck source=lab/common.sh
source "$(dirname "$(readlink -f "$0")")/common.sh"

(($# >= 2)) || die "usage: lab/exec.sh HOST COMMAND [ARG...]   (HOST: ${HOSTS[*]} inet sw)"
h=${1#"$NS_PREFIX"}
shift
case $h in
    inet | sw)
        [[ -e /run/netns/$NS_PREFIX$h ]] || die "namespace $NS_PREFIX$h does not exist (is the lab up?)"
        exec ip netns exec "$NS_PREFIX$h" "$@"
        ;;
    *)
        [[ -n ${HOST_IP[$h]:-} ]] || die "unknown host '$h' (hosts: ${HOSTS[*]} inet sw)"
        pid="$(host_init_pid "$h")"
        pid_in_netns "$pid" "$NS_PREFIX$h" || die "host $h is not running (is the lab up? run lab/up.sh)"
        exec nsenter -t "$pid" -n -m -u -p -- "$@"
        ;;
esac
