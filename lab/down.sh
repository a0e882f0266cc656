#!/bin/bash
# Tear the local lab down: kill every host's PID 1 (the kernel then kills all
# of that host's processes: sshd, OVS, qemu, dnsmasq...), stop the inet
# server, delete the crlab-* namespaces (which removes every lab veth,
# crlab-mgmt included) and remove the runtime state under lab/state/.
# Nothing outside lab/ remains. Idempotent: fine when nothing is up, and
# after a crash. Keeps the SSH keys (client key, host keys) and last logs.
set -euo pipefail

# shellcheck source=lab/common.sh
source "$(dirname "$(readlink -f "$0")")/common.sh"

[[ $EUID -eq 0 ]] || die "lab/down.sh must run as root"
t0=$(now_ms)
take_lock
lab_teardown
left="$(ip netns list | grep -c "^$NS_PREFIX" || true)"
((left == 0)) || die "namespaces left: $(ip netns list | grep "^$NS_PREFIX" | tr '\n' ' ')"
log "lab is down ($(($(now_ms) - t0)) ms)"
