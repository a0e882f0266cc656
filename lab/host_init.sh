#!/bin/bash
# PID 1 of one simulated lab host. Started by lab/up.sh as
#   nsenter --net=/run/netns/crlab-H unshare --mount --uts --pid --fork \
#       --kill-child --mount-proc --propagation private lab/host_init.sh H
# so it already runs in the host's network namespace, with its own mount, UTS
# and PID namespaces. It gives the host its private directories, starts the
# host's daemons (ovsdb-server, ovs-vswitchd, sshd), writes a ready marker and
# then stays as a zombie-reaping init. Killing it (from the root namespace)
# makes the kernel kill every process of the host.
set -euo pipefail

# shellcheck source=lab/common.sh
source "$(dirname "$(readlink -f "$0")")/common.sh"

H=${1:?usage: host_init.sh HOST}
D="$(host_dir "$H")"
[[ $$ -eq 1 ]] || die "host_init.sh must run as PID 1 of a new PID namespace (use lab/up.sh)"
[[ -n ${HOST_IP[$H]:-} ]] || die "unknown host $H"

log "$H: init starting ($(date -Is))"

# --- private filesystem view -------------------------------------------------
# mount -n: no libmount bookkeeping (it would create /run/mount/ in the
# machine's real /run before ours is mounted).
# A fresh sysfs shows this network namespace's interfaces (OVS and ip read it).
mount -n -t sysfs sysfs /sys
bind() { mount -n --bind "$1" "$2"; }
bind "$D/run" /run
# The repo may live under a directory that is about to be shadowed (CI clones
# into /tmp, users clone into /home): from here on, reach the lab state
# through a fixed path inside the host's own /run.
mkdir -p "$HOST_STATE_MNT"
bind "$STATE_DIR" "$HOST_STATE_MNT"
STATE_DIR=$HOST_STATE_MNT
D=$STATE_DIR/hosts/$H
bind "$D/tmp" /tmp
bind "$D/home" /home
bind "$D/var-lib-openvswitch" /var/lib/openvswitch
# The whole of /var/log, so that sshd's wtmp/lastlog records and the OVS logs
# (/var/log/openvswitch) stay inside the lab instead of the machine's /var/log.
bind "$D/log/var-log" /var/log
# A private /etc. The machine's tools (useradd, userdel, groupadd, passwd...)
# replace /etc/passwd, /etc/group and /etc/shadow by rename, and a rename over
# a file that is a mount point in another mount namespace detaches that mount:
# with the lab's accounts bind-mounted file by file, one useradd on the machine
# made every host forget its "ubuntu" user and refuse the SSH key. So /etc
# itself is the host's own: a tmpfs holding, for each entry of the machine's
# /etc, a symlink into a read-only bind mount of the machine's /etc directory
# (renames inside a directory never detach it; a symlink of the machine's is
# copied as it is), and real files for what the host has of its own.
MACHINE_ETC=/run/crlab-machine-etc
mkdir -p "$MACHINE_ETC"
bind /etc "$MACHINE_ETC"
mount -n -o remount,bind,ro "$MACHINE_ETC"
mount -n -t tmpfs -o mode=0755,size=16m crlab-etc /etc
for f in "$MACHINE_ETC"/* "$MACHINE_ETC"/.[!.]*; do
    [[ -e $f || -L $f ]] || continue
    if [[ -L $f ]]; then
        ln -s "$(readlink "$f")" "/etc/${f##*/}"
    else
        ln -s "$f" "/etc/${f##*/}"
    fi
done
for f in passwd group shadow sudoers; do
    rm -f "/etc/$f"
    cp -p "$STATE_DIR/etc/$f" "/etc/$f"
done
for f in hosts hostname; do
    rm -f "/etc/$f"
    cp "$D/etc/$f" "/etc/$f"
done
rm -f /etc/openvswitch
mkdir /etc/openvswitch
bind "$D/etc-openvswitch" /etc/openvswitch
# KVM is unusable on these machines (PVM host): QEMU hangs in a guest that
# never runs. With /dev/null in its place, "-accel kvm -accel tcg" falls back
# to TCG at once and "-enable-kvm" fails fast instead of hanging.
if [[ -e /dev/kvm && ${LAB_HIDE_KVM:-1} == 1 ]]; then
    bind /dev/null /dev/kvm
fi
hostname "$H"
mkdir -p /run/openvswitch /run/sshd /run/lock /run/user
chmod 0755 /run/sshd
chmod 1777 /run/lock

# --- Open vSwitch (userspace datapath) ----------------------------------------
if [[ ! -s /etc/openvswitch/conf.db ]]; then
    ovsdb-tool create /etc/openvswitch/conf.db /usr/share/openvswitch/vswitch.ovsschema
fi
ovsdb-server /etc/openvswitch/conf.db \
    --remote=punix:/run/openvswitch/db.sock \
    --remote=db:Open_vSwitch,Open_vSwitch,manager_options \
    --pidfile --detach --log-file
ovs-vsctl --no-wait init
# Must be set before ovs-vswitchd starts: without it the userspace datapath
# forwards CHECKSUM_PARTIAL packets with bad L4 checksums (no DHCP, no TCP).
ovs-vsctl --no-wait set Open_vSwitch . other_config:userspace-tso-enable=true \
    external_ids:hostname="$H" external_ids:system-id="crlab-$H"
ovs-vswitchd --pidfile --detach --log-file
# No kernel OVS module here: bridges need datapath_type=netdev (without it
# add-br "succeeds" with a broken bridge). This waits for ovs-vswitchd.
ovs-vsctl --timeout=20 --may-exist add-br br-int -- set bridge br-int datapath_type=netdev
ovs-vsctl --timeout=20 --may-exist add-port br-int eth1
ip link set eth1 up
ip link set br-int up

# --- sshd ---------------------------------------------------------------------
/usr/sbin/sshd -f "$D/sshd_config" -E "$D/log/sshd.log"

log "$H: ready ($(date -Is))"
touch "$D/ready"

# --- stay as init ------------------------------------------------------------
# tini reaps every orphan (qemu -daemonize, dnsmasq, detached daemons).
exec tini -s -- sleep infinity
