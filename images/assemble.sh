#!/usr/bin/env bash
# Assemble the kit's SD-card image from three folders, without loop devices.
#
#   images/assemble.sh OUT.img BOOTDIR ROOTDIR DATADIR [--boot-size MiB] [--root-size MiB]
#                      [--data-size MiB] [--seed TEXT]
#
# Layout (the SD-card contract, images/flash.md): MBR; p1 FAT32 "KITBOOT" (type 0x0c) from
# 4 MiB, 512 MiB by default; p2 ext4 "kitroot"; p3 ext4 "kitdata" (64 MiB by default, grown
# on first boot). Each file system is made in a file of its own (mkfs.vfat + mcopy for p1,
# mkfs.ext4 -d for p2 and p3, owners taken from the folders: build as root) and copied into
# the parted-labelled image with dd. Deterministic where the tools allow: UUIDs and the FAT
# volume id come from --seed (default: the image's file name), timestamps from
# SOURCE_DATE_EPOCH when set.
#
# Exit codes: 0 done, 1 a tool failed, 2 usage or a missing tool or folder.
set -euo pipefail

say() { printf '== %s\n' "$*" >&2; }
die() { printf '错误 / error: %s\n' "$*" >&2; exit "${2:-1}"; }
usage() {
    sed -n '4,5p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

[ $# -ge 4 ] || usage
out=$1 bootdir=$2 rootdir=$3 datadir=$4
shift 4
boot_mib=512 root_mib="" data_mib=64 seed=""
while [ $# -gt 0 ]; do
    case "$1" in
        --boot-size) boot_mib=${2:?}; shift 2 ;;
        --root-size) root_mib=${2:?}; shift 2 ;;
        --data-size) data_mib=${2:?}; shift 2 ;;
        --seed) seed=${2:?}; shift 2 ;;
        *) usage ;;
    esac
done
for dir in "$bootdir" "$rootdir" "$datadir"; do
    [ -d "$dir" ] || die "不是目录 / not a folder: $dir" 2
done
for tool in parted mkfs.vfat mcopy mkfs.ext4 dd sha256sum; do
    command -v "$tool" >/dev/null || die "缺少工具 / missing tool: $tool (apt-get install parted dosfstools mtools e2fsprogs)" 2
done
if [ -z "$root_mib" ]; then  # the folder's size, a quarter more, and room for the journal
    used=$(du -s --block-size=1M "$rootdir" | cut -f1)
    root_mib=$((used + used / 4 + 64))
fi
for n in "$boot_mib" "$root_mib" "$data_mib"; do
    [[ "$n" =~ ^[0-9]+$ ]] || die "大小须为 MiB 整数 / sizes are whole MiB: $n" 2
done
# FAT32 needs 65525 clusters: 33 MiB at one 512-byte sector a cluster.
[ "$boot_mib" -ge 34 ] || die "启动分区至少 34 MiB / the boot partition needs at least 34 MiB (FAT32)" 2
[[ "$root_mib" -ge 8 && "$data_mib" -ge 8 ]] || die "分区至少 8 MiB / partitions need at least 8 MiB" 2

seed=${seed:-$(basename "$out")}
uuid_for() {  # a UUID (version-4 layout) from the seed and a label
    local h
    h=$(printf '%s/%s' "$seed" "$1" | sha256sum | cut -c1-32)
    printf '%s-%s-4%s-a%s-%s\n' "${h:0:8}" "${h:8:4}" "${h:13:3}" "${h:17:3}" "${h:20:12}"
}
fat_id=$(printf '%s/KITBOOT' "$seed" | sha256sum | cut -c1-8)
if [ -n "${SOURCE_DATE_EPOCH:-}" ]; then
    export E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH  # mke2fs's own fixed-time switch
fi

work=$(mktemp -d "$(dirname "$out")/.assemble.XXXXXX")
trap 'rm -rf "$work"' EXIT

start=4  # MiB: p1 at sector 8192
p2=$((start + boot_mib)) p3=$((start + boot_mib + root_mib))
end=$((p3 + data_mib))
say "image $out: ${end} MiB (boot $boot_mib, root $root_mib, data $data_mib)"
rm -f "$out"
truncate -s "${end}M" "$out"
s() { echo "$(($1 * 2048))s"; }  # MiB → sectors, so each partition ends where the next starts
e() { echo "$(($1 * 2048 - 1))s"; }
parted -s -a none "$out" \
    mklabel msdos \
    mkpart primary fat32 "$(s "$start")" "$(e "$p2")" \
    mkpart primary ext4 "$(s "$p2")" "$(e "$p3")" \
    mkpart primary ext4 "$(s "$p3")" "$(e "$end")" \
    set 1 lba on
# A fixed disk identifier: parted picks a random one.
disk_id=$(printf '%s/disk' "$seed" | sha256sum | cut -c1-8)
printf '%b' "\\x${disk_id:6:2}\\x${disk_id:4:2}\\x${disk_id:2:2}\\x${disk_id:0:2}" |
    dd of="$out" bs=1 seek=440 count=4 conv=notrunc status=none

say "p1 FAT32 KITBOOT"
mkfs.vfat -C -F 32 -S 512 -s 1 -n KITBOOT -i "$fat_id" "$work/boot.vfat" $((boot_mib * 1024)) >/dev/null
if [ -n "$(ls -A "$bootdir")" ]; then
    MTOOLS_SKIP_CHECK=1 mcopy -s -p -m -i "$work/boot.vfat" "$bootdir"/* ::/
fi

say "p2 ext4 kitroot"
mkfs.ext4 -q -F -L kitroot -U "$(uuid_for kitroot)" \
    -E "root_owner=0:0,hash_seed=$(uuid_for kitroot-hash),lazy_itable_init=0" \
    -d "$rootdir" "$work/root.ext4" "${root_mib}M" >/dev/null
say "p3 ext4 kitdata"
mkfs.ext4 -q -F -L kitdata -U "$(uuid_for kitdata)" \
    -E "root_owner=0:0,hash_seed=$(uuid_for kitdata-hash),lazy_itable_init=0" \
    -d "$datadir" "$work/data.ext4" "${data_mib}M" >/dev/null

dd if="$work/boot.vfat" of="$out" bs=1M seek="$start" conv=notrunc,sparse status=none
dd if="$work/root.ext4" of="$out" bs=1M seek="$p2" conv=notrunc,sparse status=none
dd if="$work/data.ext4" of="$out" bs=1M seek="$p3" conv=notrunc,sparse status=none
sha256sum "$out" | sed "s|  .*|  $(basename "$out")|" > "$out.sha256"
say "done: $out ($(cut -c1-16 "$out.sha256")…, $out.sha256)"
