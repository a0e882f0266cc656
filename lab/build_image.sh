#!/usr/bin/env bash
# apt: apt dpkg coreutils util-linux findutils mawk kmod cpio gzip fdisk mtools syslinux syslinux-common qemu-utils
#
# Build the tiny self-booting lab guest disk:  lab/build_image.sh [OUTDIR]   (default: <repo>/lab/image)
#
#   OUTDIR/labvm.qcow2   raw MBR disk -> qcow2; SeaBIOS -> syslinux -> kernel + initrd (use it as a backing file)
#   OUTDIR/vmlinuz, OUTDIR/initrd.gz   the same kernel/initramfs, for direct -kernel/-initrd boots
#   OUTDIR/cache/        downloaded .debs (kept, so re-builds do not download again)
#   OUTDIR/labvm.stamp   hash of the inputs; if it matches and the image exists, the script exits at once
#
# Only Debian packages are used: the kernel that linux-image-cloud-amd64 depends on (virtio only, boots
# ~2x faster under TCG than the generic one) and busybox-static, fetched with `apt-get download` and
# unpacked with `dpkg-deb -x` (nothing is installed). No mounts, no loop devices, root not required
# (as root a /dev/console node is added to the initramfs; without it the guest init re-opens it).
# Environment: KFLAVOUR=cloud-amd64 (or amd64 for the generic kernel with e1000/rtl8139 drivers),
#              LAB_EXTRA_MODULES="e1000 ..." (extra modules to load), LAB_CMDLINE_EXTRA="..."
set -euo pipefail

t0=$(date +%s.%N)
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SCRIPT="$SCRIPT_DIR/$(basename "${BASH_SOURCE[0]}")"
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
GUEST="$SCRIPT_DIR/guest"
OUTDIR=${1:-$REPO/lab/image}
KFLAVOUR=${KFLAVOUR:-cloud-amd64}
MODULES="virtio_pci virtio_net virtio_blk qemu_fw_cfg vfat nls_cp437 nls_ascii 8021q ${LAB_EXTRA_MODULES:-}"
# no_timer_check: on a host busy with many TCG guests the kernel's boot-time check of the
# IO-APIC timer can miss its deadline and panic ("IO-APIC + timer doesn't work"); cloud
# images boot with it for the same reason.
CMDLINE="no_timer_check console=tty0 console=ttyS0,115200 quiet ${LAB_CMDLINE_EXTRA:-}"
CMDLINE=${CMDLINE% }
IMAGE_NAME=labvm.qcow2

log() { echo "build_image: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

for tool in apt-get apt-cache dpkg-deb modinfo cpio gzip sfdisk mformat mcopy syslinux qemu-img sha256sum flock; do
    command -v "$tool" >/dev/null 2>&1 || die "missing tool '$tool' (see the '# apt:' line at the top)"
done
MBR_BIN=""
for f in /usr/lib/syslinux/mbr/mbr.bin /usr/lib/SYSLINUX/mbr.bin /usr/share/syslinux/mbr.bin; do
    [ -f "$f" ] && { MBR_BIN=$f; break; }
done
[ -n "$MBR_BIN" ] || die "syslinux mbr.bin not found (apt-get install syslinux-common)"
[ -x "$GUEST/init" ] || [ -f "$GUEST/init" ] || die "$GUEST/init missing"

mkdir -p "$OUTDIR/cache"
OUTDIR=$(cd "$OUTDIR" && pwd)
CACHE="$OUTDIR/cache"

# One build at a time per OUTDIR.
exec 9>"$OUTDIR/.build.lock"
flock 9

# ---- resolve inputs -------------------------------------------------------------------------------
# Debian's docker images disable apt's binary package cache (Dir::Cache::pkgcache ""), so every apt-cache
# call re-parses all package lists (~0.5 s each). A private cache file in OUTDIR/cache keeps the cache-hit
# path well under a second; apt re-validates it against the list files itself.
APT_OPTS=(-o "Dir::Cache::pkgcache=$CACHE/apt-pkgcache.bin" -o "Dir::Cache::srcpkgcache=")
KMETA="linux-image-$KFLAVOUR"
KPKG=$(apt-cache "${APT_OPTS[@]}" depends "$KMETA" 2>/dev/null | awk '/^ *Depends: linux-image-[0-9]/{print $2; exit}')
[ -n "$KPKG" ] || die "cannot resolve the kernel package from '$KMETA' (apt-get update?)"
candidate() { apt-cache "${APT_OPTS[@]}" policy "$1" 2>/dev/null | awk '/Candidate:/{print $2; exit}'; }
KVER_PKG=$(candidate "$KPKG")
BB_VER=$(candidate busybox-static)
[ -n "$KVER_PKG" ] && [ "$KVER_PKG" != "(none)" ] || die "no candidate version for $KPKG"
[ -n "$BB_VER" ] && [ "$BB_VER" != "(none)" ] || die "no candidate version for busybox-static"
HOST_VERS=$(dpkg-query -W -f='${Package}=${Version} ' syslinux syslinux-common mtools 2>/dev/null || true)

STAMP_DATA=$(
    echo "script $(sha256sum <"$SCRIPT" | cut -d' ' -f1)"
    (cd "$GUEST" && find . -type f | LC_ALL=C sort | while read -r f; do
        echo "guest $f $(sha256sum <"$f" | cut -d' ' -f1)"; done)
    echo "kernel $KPKG=$KVER_PKG"
    echo "busybox busybox-static=$BB_VER"
    echo "host $HOST_VERS"
    echo "modules $MODULES"
    echo "cmdline $CMDLINE"
)
STAMP_HASH=$(echo "$STAMP_DATA" | sha256sum | cut -d' ' -f1)
if [ -f "$OUTDIR/$IMAGE_NAME" ] && [ -f "$OUTDIR/labvm.stamp" ] \
    && [ "$(head -n1 "$OUTDIR/labvm.stamp")" = "$STAMP_HASH" ]; then
    log "up to date: $OUTDIR/$IMAGE_NAME ($KPKG $KVER_PKG, busybox $BB_VER)"
    exit 0
fi

log "building $OUTDIR/$IMAGE_NAME ($KPKG $KVER_PKG, busybox $BB_VER)"
# Leftovers of a killed build (we hold the lock, so nobody else is building here).
find "$OUTDIR" -maxdepth 1 -name '.build.?*' ! -name .build.lock -exec rm -rf {} +
WORK=$(mktemp -d "$OUTDIR/.build.XXXXXX")
chmod 755 "$WORK"   # so apt can download as _apt (sandboxed)
trap 'rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM HUP

# ---- fetch .debs (cached) -------------------------------------------------------------------------
fetch() { # pkg version -> prints path of the cached .deb
    local pkg=$1 ver=$2 file dl
    file="$CACHE/${pkg}_${ver//:/%3a}_amd64.deb"
    if [ ! -s "$file" ]; then
        dl=$(mktemp -d "$WORK/dl.XXXXXX")
        chown _apt "$dl" 2>/dev/null || true   # lets apt download sandboxed (no warning)
        (cd "$dl" && apt-get "${APT_OPTS[@]}" download -q "$pkg=$ver" >&2) || die "apt-get download $pkg=$ver failed"
        local got
        got=$(find "$dl" -maxdepth 1 -name '*.deb' | head -n1)
        [ -n "$got" ] || die "apt-get download $pkg produced no .deb"
        find "$CACHE" -maxdepth 1 -name "${pkg}_*.deb" -delete   # drop older versions
        mv "$got" "$file"
    fi
    echo "$file"
}
KDEB=$(fetch "$KPKG" "$KVER_PKG")
BBDEB=$(fetch busybox-static "$BB_VER")
dpkg-deb -x "$KDEB" "$WORK/kernel"
dpkg-deb -x "$BBDEB" "$WORK/busybox"

KREL=${KPKG#linux-image-}
VMLINUZ="$WORK/kernel/boot/vmlinuz-$KREL"
[ -f "$VMLINUZ" ] || VMLINUZ=$(find "$WORK/kernel/boot" -name 'vmlinuz-*' | head -n1)
[ -f "$VMLINUZ" ] || die "no vmlinuz in $KDEB"
MODDIR=$(find "$WORK/kernel" -maxdepth 4 -type d -path '*/lib/modules/*' -name "$KREL" | head -n1)
[ -n "$MODDIR" ] || MODDIR=$(find "$WORK/kernel" -maxdepth 4 -type d -path '*/lib/modules/*' | grep -E '/lib/modules/[^/]+$' | head -n1)
[ -d "$MODDIR" ] || die "no module directory in $KDEB"

# ---- initramfs ------------------------------------------------------------------------------------
ROOT="$WORK/root"
mkdir -p "$ROOT"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,run,tmp,root,www,lib/modules,var/run,var/log}
chmod 1777 "$ROOT/tmp"
cp "$WORK/busybox/bin/busybox" "$ROOT/bin/busybox"
for applet in $("$ROOT/bin/busybox" --list-full); do
    [ -e "$ROOT/$applet" ] || ln -s /bin/busybox "$ROOT/$applet"
done
ln -sf busybox "$ROOT/bin/sh"

# module name -> .ko path
declare -A KO=()
while IFS= read -r f; do
    n=$(basename "$f" .ko); n=${n//-/_}
    KO[$n]=$f
done < <(find "$MODDIR" -name '*.ko')
BUILTIN=$(sed -e 's|.*/||' -e 's|\.ko$||' -e 's|-|_|g' "$MODDIR/modules.builtin" 2>/dev/null || true)
declare -A SEEN=()
ORDER=()
visit() { # depth-first: dependencies first
    local m=${1//-/_} d deps
    [ -n "${SEEN[$m]:-}" ] && return 0
    SEEN[$m]=1
    if [ -z "${KO[$m]:-}" ]; then
        grep -qx "$m" <<<"$BUILTIN" && return 0
        die "kernel module '$m' not found in $KPKG"
    fi
    deps=$(modinfo -F depends "${KO[$m]}" | tr ',' ' ')
    for d in $deps; do visit "$d"; done
    ORDER+=("$m")
}
for m in $MODULES; do visit "$m"; done
: >"$ROOT/lib/modules/load.order"
for m in "${ORDER[@]}"; do
    cp "${KO[$m]}" "$ROOT/lib/modules/$m.ko"
    echo "$m" >>"$ROOT/lib/modules/load.order"
done
log "modules: ${ORDER[*]}"

install -m 0755 "$GUEST/init" "$ROOT/init"
install -m 0755 "$GUEST/udhcpc.script" "$ROOT/etc/udhcpc.script"
install -m 0644 "$GUEST/inittab" "$ROOT/etc/inittab"
install -m 0644 "$GUEST/profile" "$ROOT/etc/profile"
install -m 0755 "$GUEST/chpasswd" "$ROOT/usr/sbin/chpasswd"   # busybox-static has no chpasswd applet
for f in "$GUEST"/*; do   # anything else in lab/guest/ lands in /etc/lab/
    case "$(basename "$f")" in init|udhcpc.script|inittab|profile|chpasswd) ;; *)
        mkdir -p "$ROOT/etc/lab"; cp -a "$f" "$ROOT/etc/lab/" ;; esac
done
# root, and `cirros` (locked until the seed's user-data sets its password, as on CirrOS).
printf '%s\n' "root:x:0:0:root:/root:/bin/sh" "cirros:x:1000:1000:cirros:/home/cirros:/bin/sh" >"$ROOT/etc/passwd"
printf '%s\n' "root:x:0:" "cirros:x:1000:" >"$ROOT/etc/group"
printf '%s\n' "root:*:19000:0:99999:7:::" "cirros:!:19000:0:99999:7:::" >"$ROOT/etc/shadow"
chmod 600 "$ROOT/etc/shadow"
mkdir -p "$ROOT/home/cirros"
echo "$KPKG $KVER_PKG busybox-static $BB_VER" >"$ROOT/etc/lab-release"
if [ "$(id -u)" = 0 ]; then
    mknod -m 600 "$ROOT/dev/console" c 5 1
    mknod -m 666 "$ROOT/dev/null" c 1 3
fi
(cd "$ROOT" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) | gzip -9 >"$WORK/initrd.gz"

# ---- disk: MBR + one bootable FAT partition at 1 MiB + syslinux -----------------------------------
cat >"$WORK/syslinux.cfg" <<EOF
DEFAULT lab
PROMPT 0
TIMEOUT 0
LABEL lab
  LINUX /vmlinuz
  INITRD /initrd.gz
  APPEND $CMDLINE
EOF
cp "$VMLINUZ" "$WORK/vmlinuz"
payload=$(( $(stat -c %s "$WORK/vmlinuz") + $(stat -c %s "$WORK/initrd.gz") ))
part_mib=$(( (payload + 1048575) / 1048576 + 3 ))     # + room for FAT, ldlinux.*, cfg
[ "$part_mib" -ge 8 ] || part_mib=8
disk_mib=$(( part_mib + 1 ))
RAW="$WORK/disk.raw"
truncate -s "${disk_mib}M" "$RAW"
part_sectors=$(( part_mib * 2048 ))
printf 'label: dos\nunit: sectors\nstart=2048, size=%d, type=e, bootable\n' "$part_sectors" \
    | sfdisk --quiet --no-reread --no-tell-kernel "$RAW" >/dev/null
export MTOOLS_SKIP_CHECK=1
mformat -i "$RAW@@1M" -T "$part_sectors" -h 64 -s 32 -H 2048 -v LABVM ::
mcopy -i "$RAW@@1M" "$WORK/vmlinuz" "$WORK/initrd.gz" "$WORK/syslinux.cfg" ::
syslinux --offset 1048576 --install "$RAW"
dd if="$MBR_BIN" of="$RAW" bs=440 count=1 conv=notrunc status=none

qemu-img convert -q -f raw -O qcow2 "$RAW" "$WORK/$IMAGE_NAME"

# ---- publish atomically (image first, stamp last) -------------------------------------------------
mv -f "$WORK/vmlinuz" "$OUTDIR/vmlinuz"
mv -f "$WORK/initrd.gz" "$OUTDIR/initrd.gz"
mv -f "$WORK/$IMAGE_NAME" "$OUTDIR/$IMAGE_NAME"
{ echo "$STAMP_HASH"; echo "$STAMP_DATA"; } >"$WORK/labvm.stamp"
mv -f "$WORK/labvm.stamp" "$OUTDIR/labvm.stamp"

t1=$(date +%s.%N)
size=$(stat -c %s "$OUTDIR/$IMAGE_NAME")
log "done: $OUTDIR/$IMAGE_NAME ($(( size / 1024 )) KiB qcow2, ${disk_mib} MiB virtual," \
    "initrd $(( $(stat -c %s "$OUTDIR/initrd.gz") / 1024 )) KiB)"
awk -v a="$t0" -v b="$t1" 'BEGIN{printf "build_image: build time %.1f s\n", b - a}' >&2
