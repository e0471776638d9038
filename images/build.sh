#!/usr/bin/env bash
# Build the kit's SD-card image: Debian bookworm arm64 for Raspberry Pi 4/5, reproducibly,
# from Debian's archive only (debootstrap + qemu-user-static, no loop devices).
#
#   images/build.sh [--out DIR] [--keep-rootfs] [--dry-run] [--mirror URL] [--from N]
#
# --dry-run prints every step and command it would run, checks the tools, touches nothing.
# --from N resumes a failed build at step N (>= 5 reuses the rootfs left in --out).
# The layout (partitions, labels, sizes) is images/assemble.sh's; see images/README.md.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
OUT=/tmp/kitimage
MIRROR=http://deb.debian.org/debian
SUITE=bookworm
DRY_RUN=0
KEEP_ROOTFS=0
FROM=1
DATA_MIB=64
KIT_UID=990

# Build tools on the host (installed with apt when missing; not needed by CI).
HOST_PACKAGES=(debootstrap qemu-user-static binfmt-support mtools dosfstools parted e2fsprogs
    zstd python3 python3-venv git)
HOST_TOOLS=(debootstrap qemu-aarch64-static update-binfmts mcopy mkfs.vfat parted mkfs.ext4
    zstd python3 git sha256sum)
# Inside the image. Pi boot files from Debian's raspi-firmware + linux-image-arm64.
IMAGE_PACKAGES=(systemd systemd-sysv systemd-resolved systemd-timesyncd- udev dbus polkitd kmod
    linux-image-arm64 raspi-firmware firmware-brcm80211 wireless-regdb iw initramfs-tools
    python3 python3-venv ca-certificates
    hostapd dnsmasq gpsd chrony openssh-server nftables ppp ffmpeg
    cloud-guest-utils fdisk e2fsprogs dosfstools iproute2 procps less nano-)

say() { printf '\033[1m== %s\033[0m\n' "$*" >&2; }
die() { printf '错误 / error: %s\n' "$*" >&2; exit 1; }
usage() {
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --keep-rootfs) KEEP_ROOTFS=1 ;;
        --out) [ $# -ge 2 ] || die "--out needs a folder"; OUT=$2; shift ;;
        --mirror) [ $# -ge 2 ] || die "--mirror needs a URL"; MIRROR=$2; shift ;;
        --from) [[ "${2:-}" =~ ^([1-9]|10)$ ]] || die "--from needs a step number 1-10"; FROM=$2; shift ;;
        -h|--help) usage ;;
        *) printf '错误 / error: unknown option %s\n' "$1" >&2; usage ;;
    esac
    shift
done
case "$OUT" in /*) ;; *) OUT=$(pwd)/$OUT ;; esac
case "$OUT/" in "$REPO"/*) die "--out $OUT is inside the repository; build outside it (default /tmp/kitimage)" ;; esac

ROOT=$OUT/rootfs
BOOT=$OUT/boot
DATA=$OUT/data
WHEELS=$OUT/wheels
IMAGE=$OUT/kit-$SUITE-arm64.img
STEPS=10
STEP=0

step() { STEP=$((STEP + 1)); say "[$STEP/$STEPS] $*"; }

# Every command that changes anything goes through run (printed; skipped in a dry run).
run() {
    printf '  + %s\n' "$*" >&2
    [ "$DRY_RUN" -eq 1 ] || "$@"
}
# A command inside the image (arm64 binaries through qemu-user via binfmt).
in_root() {
    run chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8 \
        DEBIAN_FRONTEND=noninteractive SOURCE_DATE_EPOCH="$SOURCE_DATE_EPOCH" "$@"
}
# Write stdin to a file (a dry run shows the file's name only).
write() {
    printf '  + write %s\n' "$1" >&2
    if [ "$DRY_RUN" -eq 1 ]; then cat >/dev/null; else cat >"$1"; fi
}

MOUNTED=()
mount_chroot() {
    local m
    for m in proc sys dev dev/pts; do
        case "$m" in
            proc) run mount -t proc proc "$ROOT/proc" ;;
            sys) run mount -t sysfs sys "$ROOT/sys" ;;
            *) run mount --bind "/$m" "$ROOT/$m" ;;
        esac
        MOUNTED=("$ROOT/$m" "${MOUNTED[@]}")
    done
}
unmount_chroot() {
    local m
    for m in "${MOUNTED[@]}"; do
        [ "$DRY_RUN" -eq 1 ] || umount -l "$m" 2>/dev/null || true
    done
    MOUNTED=()
}
trap unmount_chroot EXIT

check_host() {
    step "检查构建环境 / checking the build host"
    [ "$(uname -m)" = x86_64 ] || [ "$(uname -m)" = aarch64 ] || die "unsupported host $(uname -m)"
    if [ "$DRY_RUN" -eq 0 ] && [ "$(id -u)" -ne 0 ]; then
        die "run as root: debootstrap, chroot and file ownership inside the image need it"
    fi
    [ -x "$HERE/assemble.sh" ] \
        || printf '  ! images/assemble.sh not found: the build stops before the image file\n' >&2
    local missing=() tool
    for tool in "${HOST_TOOLS[@]}"; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        printf '  ! missing tools: %s (installed from apt next)\n' "${missing[*]}" >&2
        run apt-get install -y -qq --no-install-recommends "${HOST_PACKAGES[@]}"
    else
        printf '  tools ok: %s\n' "${HOST_TOOLS[*]}" >&2
    fi
    SOURCE_DATE_EPOCH=$(git -C "$REPO" log -1 --format=%ct)
    export SOURCE_DATE_EPOCH
    printf '  SOURCE_DATE_EPOCH=%s (%s)\n' "$SOURCE_DATE_EPOCH" \
        "$(date -u -d "@$SOURCE_DATE_EPOCH" +%FT%TZ)" >&2
    # qemu-user for the arm64 chroot.
    if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
        run mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    fi
    run update-binfmts --enable qemu-aarch64
    if [ -e "$ROOT" ] || [ -e "$IMAGE" ]; then
        printf '  earlier build in %s is replaced\n' "$OUT" >&2
    fi
}

build_wheels() {
    step "构建套件 wheel / the kit's wheel and its arm64 dependencies"
    run rm -rf "$WHEELS"
    run mkdir -p "$WHEELS"
    run "$REPO/.venv/bin/pip" wheel --no-deps -q -w "$WHEELS" "$REPO"
    # Dependencies as binary wheels for the image's CPython 3.11 on aarch64, pinned as in
    # pyproject.toml ([project] dependencies + the `pi` extra).
    local reqs
    reqs=$("$REPO/.venv/bin/python" - "$REPO/pyproject.toml" <<'EOF'
import sys, tomllib
p = tomllib.load(open(sys.argv[1], "rb"))["project"]
extras = p["optional-dependencies"]
deps = list(p["dependencies"])
for name in ("mesh", "drivers", "media"):  # what `pi` pulls in
    deps += extras[name]
print("\n".join(d.split(";")[0].strip() for d in deps))
EOF
)
    # pip does not widen --platform to older manylinux tags itself: bookworm's glibc 2.36
    # runs every manylinux_2_17 … 2_36 wheel.
    local platforms=(--platform manylinux2014_aarch64) v
    for v in $(seq 17 36); do platforms+=(--platform "manylinux_2_${v}_aarch64"); done
    # shellcheck disable=SC2086  # one requirement per word
    run "$REPO/.venv/bin/pip" download -q --only-binary=:all: "${platforms[@]}" \
        --python-version 3.11 --implementation cp --abi cp311 -d "$WHEELS" $reqs
}

bootstrap() {
    step "debootstrap $SUITE arm64 (first stage on the host, second under qemu)"
    run rm -rf "$ROOT"
    run mkdir -p "$ROOT"
    run debootstrap --arch=arm64 --foreign --variant=minbase \
        --components=main,non-free-firmware "$SUITE" "$ROOT" "$MIRROR"
    run chroot "$ROOT" /debootstrap/debootstrap --second-stage
}

install_packages() {
    step "安装系统软件包 / Debian packages in the image (kernel, Pi firmware, services)"
    write "$ROOT/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main non-free-firmware
deb $MIRROR $SUITE-updates main non-free-firmware
deb http://deb.debian.org/debian-security $SUITE-security main non-free-firmware
EOF
    # No service starts inside the chroot.
    write "$ROOT/usr/sbin/policy-rc.d" <<'EOF'
#!/bin/sh
exit 101
EOF
    run chmod 0755 "$ROOT/usr/sbin/policy-rc.d"
    # raspi-firmware's hooks write the Pi boot files here (later the KITBOOT partition).
    run mkdir -p "$ROOT/boot/firmware" "$ROOT/etc/default"
    run cp "$HERE/rootfs/etc/default/raspi-firmware" "$HERE/rootfs/etc/default/raspi-firmware-custom" \
        "$ROOT/etc/default/"
    mount_chroot
    in_root apt-get update -qq
    # Keep the overlay's /etc/default/raspi-firmware rather than ask about it.
    in_root apt-get install -y -qq --no-install-recommends -o Dpkg::Options::=--force-confdef \
        -o Dpkg::Options::=--force-confold "${IMAGE_PACKAGES[@]}"
}

install_kit() {
    step "安装套件 / the kit in its own venv at /opt/kit (offline, from the wheels)"
    [ ${#MOUNTED[@]} -gt 0 ] || mount_chroot  # resumed with --from
    run rm -rf "$ROOT/opt/kit"
    run rm -rf "$ROOT/tmp/wheels"
    run cp -a "$WHEELS" "$ROOT/tmp/wheels"
    in_root python3 -m venv /opt/kit
    in_root /opt/kit/bin/pip install -q --no-index --no-cache-dir --find-links /tmp/wheels \
        --disable-pip-version-check 'fieldkit[pi]'
    in_root /opt/kit/bin/kit --help
    run rm -rf "$ROOT/tmp/wheels"
}

configure() {
    step "配置 / the overlay, the kit user, services, no secrets"
    run cp -a --no-preserve=ownership "$HERE/rootfs/." "$ROOT/"
    # Every mount point in fstab must exist: the root is read-only at boot, and a missing
    # one sends the kit into emergency mode.
    local mnt
    while read -r mnt; do
        run mkdir -p "$ROOT$mnt"
    done < <(awk '!/^#/ && NF >= 2 {print $2}' "$HERE/rootfs/etc/fstab")
    in_root systemd-sysusers
    in_root systemctl enable kit.target kit-ssh-keys.service systemd-networkd.service \
        systemd-resolved.service nftables.service gpsd.service chrony.service ssh.service \
        dnsmasq.service
    # Debian's own hostapd unit reads /etc/hostapd; the kit's reads the data partition.
    in_root systemctl mask hostapd.service
    run ln -sfn /run/systemd/resolve/stub-resolv.conf "$ROOT/etc/resolv.conf"
    write "$ROOT/etc/hostname" <<<"kit"
    # No per-kit values and no secrets in the image: systemd makes a machine id at boot,
    # each kit makes its SSH host keys (kit-ssh-keys.service), root has no password.
    run truncate -s 0 "$ROOT/etc/machine-id"
    run rm -f "$ROOT/var/lib/dbus/machine-id" "$ROOT"/etc/ssh/ssh_host_*
    in_root usermod -p '!' root
    # A build resumed after step 8 finds the boot files moved out already: put them back.
    if [ ! -e "$ROOT/boot/firmware/cmdline.txt" ] && [ -e "$BOOT/cmdline.txt" ]; then
        run cp -a "$BOOT/." "$ROOT/boot/firmware/"
    fi
    # The root is mounted read-only (fstab and cmdline.txt).
    if [ "$DRY_RUN" -eq 0 ]; then
        sed -i -e 's/\brw\b/ro/' "$ROOT/boot/firmware/cmdline.txt"
        grep -q 'root=LABEL=kitroot' "$ROOT/boot/firmware/cmdline.txt" \
            || die "cmdline.txt has no root=LABEL=kitroot: $(cat "$ROOT/boot/firmware/cmdline.txt")"
    else
        printf '  + sed s/rw/ro/ %s\n' "$ROOT/boot/firmware/cmdline.txt" >&2
    fi
}

clean() {
    step "清理 / cleaning caches, logs and the build-only files"
    # The root is read-only, so Python could never write its byte-code caches there and
    # would compile every module at each start: compile them now, stamped with the source's
    # hash rather than its build time (reproducible).
    run find "$ROOT/opt/kit" -name __pycache__ -type d -prune -exec rm -rf {} +
    # (pypubsub ships Python 2 examples in site-packages/contrib: nobody imports them.)
    in_root /opt/kit/bin/python -m compileall -q -j0 --invalidation-mode unchecked-hash \
        -x '/site-packages/contrib/' /opt/kit/lib
    # What went in, for the record (README's build result, a later rebuild's diff).
    if [ "$DRY_RUN" -eq 0 ]; then
        # shellcheck disable=SC2016  # dpkg-query's own ${fields}
        chroot "$ROOT" dpkg-query -W -f '${Package} ${Version}\n' >"$OUT/packages.txt"
        chroot "$ROOT" /opt/kit/bin/pip freeze --all >"$OUT/python-packages.txt"
    fi
    in_root apt-get clean
    unmount_chroot
    run rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/* "$ROOT"/var/log/* \
        "$ROOT"/tmp/* "$ROOT"/var/tmp/* "$ROOT/usr/sbin/policy-rc.d" "$ROOT/debootstrap" \
        "$ROOT/var/cache/debconf/"*-old "$ROOT/var/lib/dpkg/"*-old
    # Fail the build if a secret slipped in.
    if [ "$DRY_RUN" -eq 0 ]; then
        local found
        found=$(grep -rlI -e 'PRIVATE KEY' "$ROOT/etc" "$ROOT/root" "$ROOT/opt/kit/bin" \
            2>/dev/null | grep -v '/etc/ssl/' || true)
        [ -z "$found" ] || die "private keys in the image: $found"
        ! awk -F: '$2 ~ /^!?\$/ {print $1; bad=1} END {exit !bad}' "$ROOT/etc/shadow" \
            || die "password hashes in the image's /etc/shadow"
    fi
}

split() {
    step "分区内容 / boot, root and data trees (KITBOOT, kitroot, kitdata)"
    run rm -rf "$BOOT" "$DATA"
    run mkdir -p "$BOOT" "$DATA"
    run cp -a "$ROOT/boot/firmware/." "$BOOT/"
    run find "$ROOT/boot/firmware" -mindepth 1 -delete
    # The data partition starts almost empty: the folders provisioning fills (flash.sh).
    run install -d -m 0755 -o "$KIT_UID" -g "$KIT_UID" "$DATA"
    run install -d -m 0750 -o 0 -g "$KIT_UID" "$DATA/config"
    run install -d -m 0700 -o "$KIT_UID" -g "$KIT_UID" "$DATA/keys" "$DATA/web"
    run install -d -m 0700 -o 0 -g 0 "$DATA/ssh"
    run install -d -m 0750 -o 0 -g 4 "$DATA/log"
    # Every time stamp is the last commit's: the same commit gives the same trees.
    local d
    for d in "$ROOT" "$BOOT" "$DATA"; do
        run find "$d" -newermt "@$SOURCE_DATE_EPOCH" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
    done
}

assemble() {
    step "组装镜像 / the image file (images/assemble.sh)"
    [ -x "$HERE/assemble.sh" ] || [ "$DRY_RUN" -eq 1 ] \
        || die "images/assemble.sh is missing; the trees are in $OUT (rootfs, boot, data)"
    # The root partition is sized by assemble.sh from the tree (a quarter more, + journal).
    run "$HERE/assemble.sh" "$IMAGE" "$BOOT" "$ROOT" "$DATA" --data-size "$DATA_MIB"
}

finish() {
    step "校验与压缩 / checksum and compressed copy"
    run sh -c "cd '$OUT' && sha256sum '$(basename "$IMAGE")' > '$(basename "$IMAGE").sha256'"
    run zstd -q -f -T0 -10 "$IMAGE" -o "$IMAGE.zst"
    if [ "$KEEP_ROOTFS" -eq 0 ]; then
        run rm -rf "$ROOT" "$BOOT" "$DATA"
    fi
    if [ "$DRY_RUN" -eq 0 ]; then
        say "完成 / done: $IMAGE ($(du -h --apparent-size "$IMAGE" | cut -f1)," \
            "zstd $(du -h "$IMAGE.zst" | cut -f1)), sha256 $(cut -d' ' -f1 "$IMAGE.sha256")"
    else
        say "试运行完成，未做任何改动 / dry run done: nothing was changed"
    fi
}

# Steps before --from are skipped (the host check always runs).
from() {
    if [ "$1" -lt "$FROM" ]; then
        STEP=$1
        say "[$1/$STEPS] 跳过 / skipped (--from $FROM)"
        return
    fi
    shift
    "$@"
}

START=$(date +%s)
check_host
if [ "$FROM" -ge 5 ] && [ "$DRY_RUN" -eq 0 ] && [ ! -x "$ROOT/usr/bin/python3" ]; then
    die "--from $FROM needs the rootfs of an earlier build in $ROOT (run without --from)"
fi
# The kit's wheel is rebuilt whenever the kit is (re)installed: the source may have changed.
if [ "$FROM" -le 5 ]; then build_wheels; else from 2 build_wheels; fi
from 3 bootstrap
from 4 install_packages
from 5 install_kit
from 6 configure
from 7 clean
from 8 split
from 9 assemble
from 10 finish
[ "$DRY_RUN" -eq 1 ] || say "用时 / build time: $(($(date +%s) - START)) s"
