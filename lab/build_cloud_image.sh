#!/usr/bin/env bash
# apt: mmdebstrap apt tar e2fsprogs fdisk mtools syslinux syslinux-common qemu-utils coreutils util-linux
#
# Build the lab's `ubuntu` flavor, a real cloud-init guest:  lab/build_cloud_image.sh [OUTDIR]   (as root)
#
#   OUTDIR/cloudvm.qcow2     Debian bookworm cloud image (2 GiB virtual): MBR, FAT boot partition with
#                            syslinux + kernel + Debian initramfs, ext4 root labelled `cloudroot`
#   OUTDIR/cloudvm.packages  the installed packages (name=version), for the record
#   OUTDIR/cloudvm.stamp     hash of the inputs; if it matches and the image exists, the script exits at once
#   OUTDIR/cache/cloud/      debs/ (every .deb used, kept so a rebuild downloads no package again; apt
#                            still fetches the package lists), rootfs.tar (the root file system, reused
#                            while the package set and versions are the same), mmdebstrap.log
#
# Only Debian packages from the machine's own apt sources (its bookworm suites, as `apt-get indextargets`
# reports them) are used, installed by mmdebstrap into a tarball. The disk is assembled without mounts or
# loop devices: `mkfs.ext4 -d` fills the root partition in place (-E offset), mtools fill the FAT one.
#
# The guest: systemd, cloud-init 22.4 with datasource_list [NoCloud, None] (a vfat/iso `cidata` seed),
# default user `ubuntu` (sudo without password; no password until the seed sets one), networking by
# systemd-networkd (cloud-init's networkd renderer: network-config v2 `match: macaddress` + `set-name`,
# `dhcp4-overrides`), systemd-resolved, openssh-server (ed25519 host key made at first boot), a serial
# getty on ttyS0 that starts once cloud-init has applied the seed (so the login prompt means the seed's
# password works). Kernel command line: no_timer_check console=tty0 console=ttyS0,115200 net.ifnames=0 (NICs are ethN).
# Environment: CLOUD_DISK_MIB (virtual disk size, default 2048).
set -euo pipefail

t0=$(date +%s.%N)
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SCRIPT="$SCRIPT_DIR/$(basename "${BASH_SOURCE[0]}")"
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
OUTDIR=${1:-$REPO/lab/image}
SUITE=bookworm
IMAGE_NAME=cloudvm.qcow2
DISK_MIB=${CLOUD_DISK_MIB:-2048}
ROOT_LABEL=cloudroot
# no_timer_check: on a host busy with many TCG guests the kernel's boot-time check of the
# IO-APIC timer can miss its deadline and panic ("IO-APIC + timer doesn't work"); cloud
# images boot with it for the same reason.
CMDLINE="root=LABEL=$ROOT_LABEL rw no_timer_check console=tty0 console=ttyS0,115200 net.ifnames=0"
# What the image holds. No ifupdown/netplan: cloud-init then renders for systemd-networkd (part of systemd).
PACKAGES=(
    linux-image-cloud-amd64 initramfs-tools systemd-sysv udev systemd-resolved cloud-init
    sudo netbase iproute2 iputils-ping openssh-server e2fsprogs procps less nano
)

log() { echo "build_cloud_image: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (mmdebstrap installs packages as root into a temporary directory)"
for tool in mmdebstrap apt-get apt-cache dpkg-query tar mkfs.ext4 sfdisk mformat mcopy syslinux qemu-img \
    sha256sum flock base64; do
    command -v "$tool" >/dev/null 2>&1 || die "missing tool '$tool' (see the '# apt:' line at the top)"
done
MBR_BIN=""
for f in /usr/lib/syslinux/mbr/mbr.bin /usr/lib/SYSLINUX/mbr.bin /usr/share/syslinux/mbr.bin; do
    [ -f "$f" ] && { MBR_BIN=$f; break; }
done
[ -n "$MBR_BIN" ] || die "syslinux mbr.bin not found (apt-get install syslinux-common)"
[[ $DISK_MIB =~ ^[0-9]+$ ]] && [ "$DISK_MIB" -ge 1024 ] || die "CLOUD_DISK_MIB must be a number >= 1024"

mkdir -p "$OUTDIR/cache/cloud/debs"
OUTDIR=$(cd "$OUTDIR" && pwd)
CACHE="$OUTDIR/cache/cloud"
DEBS="$CACHE/debs"

# One build at a time per OUTDIR (its own lock: lab/build_image.sh may build the small image meanwhile).
exec 9>"$OUTDIR/.cloudbuild.lock"
flock 9

# ---- resolve inputs -------------------------------------------------------------------------------
APT_OPTS=(-o "Dir::Cache::pkgcache=$CACHE/apt-pkgcache.bin" -o "Dir::Cache::srcpkgcache=")

# The machine's configured mirror(s) for the suite, as one-line sources for the image.
sources_list() {
    apt-get "${APT_OPTS[@]}" indextargets --format '$(REPO_URI) $(RELEASE) $(COMPONENT)' \
        'Created-By: Packages' 2>/dev/null \
        | awk -v s="$SUITE" '$2 == s || $2 == s "-updates" || $2 == s "-security" {
              key = $1 " " $2; if (!(key in comps)) order[n++] = key
              if (index(" " comps[key] " ", " " $3 " ") == 0) comps[key] = comps[key] " " $3 }
          END { for (i = 0; i < n; i++) print "deb " order[i] comps[order[i]] }'
}
SOURCES=$(sources_list)
[ -n "$SOURCES" ] || die "the machine's apt sources have no '$SUITE' suite (or run apt-get update)"

candidate() { apt-cache "${APT_OPTS[@]}" policy "$1" 2>/dev/null | awk '/Candidate:/{print $2; exit}'; }
KPKG=$(apt-cache "${APT_OPTS[@]}" depends linux-image-cloud-amd64 2>/dev/null \
    | awk '/^ *Depends: linux-image-[0-9]/{print $2; exit}')
[ -n "$KPKG" ] || die "cannot resolve the kernel package of linux-image-cloud-amd64 (apt-get update?)"
VERSIONS=""
for p in "${PACKAGES[@]}" "$KPKG"; do
    v=$(candidate "$p")
    [ -n "$v" ] && [ "$v" != "(none)" ] || die "no candidate version for $p (apt-get update?)"
    VERSIONS+="$p=$v "
done

# Files written into the root file system while mmdebstrap installs (before the kernel, so its
# postinst builds the initramfs with them) and after (units); changing them rebuilds the tarball.
INITRAMFS_CONF='# Lab cloud image: only what a virtio disk boot needs (a smaller initramfs loads faster under TCG).
MODULES=list
RESUME=none
COMPRESS=zstd
'
INITRAMFS_HOOK='#!/bin/sh
# Lab cloud image: the root disk is virtio-blk (ext4 is built into the cloud kernel).
[ "$1" = prereqs ] && exit 0
. /usr/share/initramfs-tools/hook-functions
for m in virtio_pci virtio_blk; do force_load "$m"; done
'
put_file() { # hook that writes base64 content to "$1/path" with a mode (stable text: part of the cache key)
    printf 'mkdir -p "$1%s" && echo %s | base64 -d >"$1%s" && chmod %s "$1%s"' \
        "$(dirname "$2")" "$(printf '%s' "$1" | base64 -w0)" "$2" "$3" "$2"
}
MM_ARGS=(
    --variant=apt --format=tar --aptopt='APT::Install-Recommends "false"'
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*'
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright'
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias'
    --include="$(IFS=,; echo "${PACKAGES[*]}")"
    --skip=essential/unlink
    --setup-hook='mkdir -p "$1/var/cache/apt/archives"'
    --setup-hook="sync-in $DEBS /var/cache/apt/archives"
    --essential-hook="$(put_file "$INITRAMFS_CONF" /etc/initramfs-tools/conf.d/lab-cloud 0644)"
    --essential-hook="$(put_file "$INITRAMFS_HOOK" /etc/initramfs-tools/hooks/lab-cloud 0755)"
    --customize-hook='chroot "$1" systemctl enable -q systemd-networkd.service systemd-resolved.service'
    --customize-hook='chroot "$1" apt-get autoclean -qq'
    --customize-hook="sync-out /var/cache/apt/archives $DEBS"
)
MM_VERSION=$(dpkg-query -W -f='${Version}' mmdebstrap 2>/dev/null || mmdebstrap --version)
TAR_KEY=$(printf '%s\n' "mmdebstrap $MM_VERSION" "${MM_ARGS[@]//"$DEBS"/@DEBS@}" "$SUITE" "$SOURCES" \
    "$VERSIONS" | sha256sum | cut -d' ' -f1)
HOST_VERS=$(dpkg-query -W -f='${Package}=${Version} ' syslinux syslinux-common mtools e2fsprogs fdisk \
    qemu-utils 2>/dev/null || true)

STAMP_DATA=$(
    echo "script $(sha256sum <"$SCRIPT" | cut -d' ' -f1)"
    echo "rootfs $TAR_KEY"
    echo "packages $VERSIONS"
    echo "host $HOST_VERS"
    echo "disk $DISK_MIB MiB"
)
STAMP_HASH=$(echo "$STAMP_DATA" | sha256sum | cut -d' ' -f1)
if [ -f "$OUTDIR/$IMAGE_NAME" ] && [ -f "$OUTDIR/cloudvm.stamp" ] \
    && [ "$(head -n1 "$OUTDIR/cloudvm.stamp")" = "$STAMP_HASH" ]; then
    log "up to date: $OUTDIR/$IMAGE_NAME ($KPKG, $(candidate cloud-init | sed 's/^/cloud-init /'))"
    exit 0
fi

log "building $OUTDIR/$IMAGE_NAME ($KPKG)"
find "$OUTDIR" -maxdepth 1 -name '.cloudbuild.?*' ! -name .cloudbuild.lock -exec rm -rf {} +
WORK=$(mktemp -d "$OUTDIR/.cloudbuild.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM HUP

# ---- root file system tarball (cached by TAR_KEY) ------------------------------------------------
TARBALL="$CACHE/rootfs.tar"
if [ -f "$TARBALL" ] && [ "$(cat "$CACHE/rootfs.key" 2>/dev/null)" = "$TAR_KEY" ]; then
    log "root file system: cached $TARBALL"
else
    rm -f "$CACHE/rootfs.key"
    echo "$SOURCES" >"$WORK/sources.list"
    log "root file system: mmdebstrap $SUITE (${#PACKAGES[@]} packages + dependencies; debs cached in $DEBS)"
    tm=$(date +%s)
    mmdebstrap "${MM_ARGS[@]}" "$SUITE" "$WORK/rootfs.tar" "$WORK/sources.list" >"$CACHE/mmdebstrap.log" 2>&1 \
        || { tail -n 30 "$CACHE/mmdebstrap.log" >&2; die "mmdebstrap failed"; }
    log "root file system: $(( $(stat -c %s "$WORK/rootfs.tar") / 1048576 )) MiB tarball in $(( $(date +%s) - tm )) s"
    mv -f "$WORK/rootfs.tar" "$TARBALL"
    echo "$TAR_KEY" >"$CACHE/rootfs.key"
fi

ROOT="$WORK/root"
mkdir "$ROOT"
tar -C "$ROOT" --numeric-owner --xattrs --xattrs-include='*' -xpf "$TARBALL"

# ---- configuration on top of the packages --------------------------------------------------------
write() { # path mode: stdin -> ROOT/path
    mkdir -p "$(dirname "$ROOT$1")"
    cat >"$ROOT$1"
    chmod "$2" "$ROOT$1"
}
write /etc/cloud/cloud.cfg.d/90_lab.cfg 0644 <<'EOF'
# Lab "ubuntu" flavor (lab/build_cloud_image.sh): configured by a NoCloud seed (vfat/iso labelled cidata),
# only the modules a lab VM needs, so the boot stays short under TCG (no locale generation, no apt).
datasource_list: [ NoCloud, None ]
manage_etc_hosts: true
ssh_genkeytypes: [ed25519]
ssh_deletekeys: true
system_info:
  default_user:
    name: ubuntu
    gecos: Ubuntu
    lock_passwd: true
    groups: [adm, sudo]
    sudo: ["ALL=(ALL) NOPASSWD:ALL"]
    shell: /bin/bash
  network:
    renderers: [networkd]
cloud_init_modules:
  - migrator
  - seed_random
  - bootcmd
  - write-files
  - set_hostname
  - update_hostname
  - update_etc_hosts
  - users-groups
  - ssh
cloud_config_modules:
  - set-passwords
  - timezone
  - runcmd
cloud_final_modules:
  - write-files-deferred
  - scripts-vendor
  - scripts-per-once
  - scripts-per-boot
  - scripts-per-instance
  - scripts-user
  - ssh-authkey-fingerprints
  - keys-to-console
  - final-message
  - power-state-change
EOF
for unit in serial-getty@ getty@; do
    write "/etc/systemd/system/${unit}.service.d/10-after-cloud-init.conf" 0644 <<'EOF'
# Lab cloud image: the login prompt appears once cloud-init has applied the seed (user, password).
[Unit]
After=cloud-config.service
EOF
done
write /etc/ssh/sshd_config.d/10-lab.conf 0644 <<'EOF'
# Lab cloud image: cloud-init makes only an ed25519 host key at first boot.
HostKey /etc/ssh/ssh_host_ed25519_key
EOF
write /etc/fstab 0644 <<EOF
LABEL=$ROOT_LABEL / ext4 rw,noatime,errors=remount-ro 0 0
EOF
# Per-VM identity comes at first boot: no host keys, machine id, host name or resolver copied from here.
rm -f "$ROOT"/etc/ssh/ssh_host_*
: >"$ROOT/etc/machine-id"
echo localhost >"$ROOT/etc/hostname"
ln -sfn ../run/systemd/resolve/stub-resolv.conf "$ROOT/etc/resolv.conf"
write /etc/modprobe.d/lab-cloud.conf 0644 <<'EOF'
# Lab cloud image: drivers udev would load for QEMU's emulated CPU/board that a lab VM never uses
# (under TCG every module load costs boot time).
blacklist kvm
blacklist kvm_amd
blacklist kvm_intel
blacklist powernow_k8
blacklist pcspkr
EOF
# No interactive first-boot wizard on the console, no waiting for every NIC to get a lease (every NIC
# is `optional` in the seed; cloud-init 22.4's networkd renderer ignores that key), no e2scrub at boot.
for unit in systemd-firstboot.service systemd-networkd-wait-online.service e2scrub_reap.service; do
    ln -sfn /dev/null "$ROOT/etc/systemd/system/$unit"
done

dpkg-query --admindir="$ROOT/var/lib/dpkg" -W -f='${Package}=${Version}\n' | LC_ALL=C sort >"$WORK/cloudvm.packages"
KREL=${KPKG#linux-image-}
VMLINUZ="$ROOT/boot/vmlinuz-$KREL"
INITRD="$ROOT/boot/initrd.img-$KREL"
[ -f "$VMLINUZ" ] && [ -f "$INITRD" ] || die "no kernel/initramfs for $KREL in the root file system"

# ---- disk: MBR, FAT boot partition (syslinux) at 1 MiB, ext4 root after it -------------------------
cat >"$WORK/syslinux.cfg" <<EOF
DEFAULT cloud
PROMPT 0
TIMEOUT 0
LABEL cloud
  LINUX /vmlinuz
  INITRD /initrd.img
  APPEND $CMDLINE
EOF
cp "$VMLINUZ" "$WORK/vmlinuz"
cp "$INITRD" "$WORK/initrd.img"
payload=$(( $(stat -c %s "$WORK/vmlinuz") + $(stat -c %s "$INITRD") ))
boot_mib=$(( (payload + 1048575) / 1048576 + 8 ))   # + room for FAT, ldlinux.*, cfg
root_start_mib=$(( 1 + boot_mib ))
root_mib=$(( DISK_MIB - root_start_mib ))
RAW="$WORK/disk.raw"
truncate -s "${DISK_MIB}M" "$RAW"
printf 'label: dos\nunit: sectors\nstart=2048, size=%d, type=c, bootable\nstart=%d, size=%d, type=83\n' \
    $(( boot_mib * 2048 )) $(( root_start_mib * 2048 )) $(( root_mib * 2048 )) \
    | sfdisk --quiet --no-reread --no-tell-kernel "$RAW" >/dev/null
export MTOOLS_SKIP_CHECK=1
mformat -i "$RAW@@1M" -T $(( boot_mib * 2048 )) -h 64 -s 32 -H 2048 -v CLOUDBOOT ::
mcopy -i "$RAW@@1M" "$WORK/vmlinuz" "$WORK/initrd.img" "$WORK/syslinux.cfg" ::
syslinux --offset 1048576 --install "$RAW"
dd if="$MBR_BIN" of="$RAW" bs=440 count=1 conv=notrunc status=none
mkfs.ext4 -q -F -L "$ROOT_LABEL" -d "$ROOT" -E offset=$(( root_start_mib * 1048576 )) "$RAW" "${root_mib}M" \
    || die "mkfs.ext4 -d failed"
rm -rf "$ROOT" "$WORK/vmlinuz"

qemu-img convert -q -f raw -O qcow2 "$RAW" "$WORK/$IMAGE_NAME"
rm -f "$RAW"

# ---- publish atomically (image first, stamp last) -------------------------------------------------
mv -f "$WORK/cloudvm.packages" "$OUTDIR/cloudvm.packages"
mv -f "$WORK/$IMAGE_NAME" "$OUTDIR/$IMAGE_NAME"
{ echo "$STAMP_HASH"; echo "$STAMP_DATA"; } >"$WORK/cloudvm.stamp"
mv -f "$WORK/cloudvm.stamp" "$OUTDIR/cloudvm.stamp"

t1=$(date +%s.%N)
log "done: $OUTDIR/$IMAGE_NAME ($(( $(stat -c %s "$OUTDIR/$IMAGE_NAME") / 1048576 )) MiB qcow2, $DISK_MIB MiB virtual," \
    "$(wc -l <"$OUTDIR/cloudvm.packages") packages, initrd $(( $(stat -c %s "$WORK/initrd.img") / 1024 )) KiB)"
awk -v a="$t0" -v b="$t1" 'BEGIN{printf "build_cloud_image: build time %.1f s\n", b - a}' >&2
