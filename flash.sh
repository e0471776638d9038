#!/usr/bin/env bash
# 写卡并预置套件 / Write the kit's image to an SD card and provision the kit on it.
#
#   ./flash.sh --list
#   ./flash.sh [--dry-run] [--yes] [--force] --image FILE [--sha256 FILE|HEX] --device DEV
#              --kit-id N [--name NAME] --centre URL --centre-key KEY
#              [--wifi-name NAME] [--wifi-pass-file F] [--web-pass-file F] [--to-file]
#
# The manual is images/flash.md. Passphrases and passwords are never taken on the command
# line: the Wi-Fi passphrase comes from a file or is generated (and printed once, with the
# kit's label); the web page password comes from a file or is asked twice on the terminal.
#
# Exit codes:
#   0 written, verified and provisioned (or --dry-run/--list done)
#   2 usage: an unknown option or a missing or bad provisioning value
#   3 device refused (missing, a partition, mounted, the system disk, not removable, too big)
#   4 image refused (missing, truncated, checksum mismatch, wrong layout)
#   5 the write failed: the card was removed or is full; nothing was provisioned
#   6 read-back mismatch: the card does not hold the image
#   7 provisioning failed (the card holds the image but no kit identity)
#   1 anything else (a missing tool, a refused confirmation); 130 interrupted
set -euo pipefail
umask 077

here=$(cd "$(dirname "$0")" && pwd)
KIT=${KIT:-$here/.venv/bin/kit}
PY=${PY:-$here/.venv/bin/python}
MAX_BYTES=$((256 * 1000 * 1000 * 1000)) # "256 GB" as card makers count
FIRST=1048576                            # the first MiB (MBR, partition table) goes last

die() { printf '错误 / error: %s\n' "$1" >&2; exit "$2"; }
say() { printf '== %s\n' "$*" >&2; }
step() { # dry run: say it; else say it and do it
    if [ "$dry_run" = 1 ]; then printf '[dry-run] %s\n' "$*" >&2; else say "$*"; "$@"; fi
}

dry_run=0 yes=0 force=0 list=0 to_file=0
image="" sha="" device="" kit_id="" name="" centre="" centre_key=""
wifi_name="" wifi_pass_file="" web_pass_file=""
need() { if [ $# -lt 2 ] || [ -z "$2" ]; then die "$1 需要一个值 / $1 needs a value" 2; fi; }
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) dry_run=1; shift ;;
        --yes) yes=1; shift ;;
        --force) force=1; shift ;;
        --list) list=1; shift ;;
        --to-file) to_file=1; shift ;;
        --image) need "$@"; image=$2; shift 2 ;;
        --sha256) need "$@"; sha=$2; shift 2 ;;
        --device) need "$@"; device=$2; shift 2 ;;
        --kit-id) need "$@"; kit_id=$2; shift 2 ;;
        --name) need "$@"; name=$2; shift 2 ;;
        --centre) need "$@"; centre=$2; shift 2 ;;
        --centre-key) need "$@"; centre_key=$2; shift 2 ;;
        --wifi-name) need "$@"; wifi_name=$2; shift 2 ;;
        --wifi-pass-file) need "$@"; wifi_pass_file=$2; shift 2 ;;
        --web-pass-file) need "$@"; web_pass_file=$2; shift 2 ;;
        --wifi-pass | --web-pass | --password)
            die "$1：密码不能写在命令行上，请用 ${1}-file / passwords never go on the command line: use ${1}-file" 2 ;;
        -h | --help) sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "未知选项 / unknown option: $1 (./flash.sh --help)" 2 ;;
    esac
done

for tool in lsblk findmnt dd sha256sum partx losetup mount umount blockdev; do
    command -v "$tool" >/dev/null || die "缺少工具 / missing tool: $tool" 1
done

[ -x "$PY" ] || die "找不到 $PY，请先运行 ./bootstrap.sh / $PY is missing: run ./bootstrap.sh first" 1

if [ "$list" = 1 ]; then
    say "可移动磁盘 / removable disks (lsblk):"
    lsblk -J -o NAME,SIZE,RM,TRAN,MODEL,TYPE,MOUNTPOINTS | "$PY" -c '
import json, sys
for d in json.load(sys.stdin)["blockdevices"]:
    if d["type"] == "disk" and (d["rm"] in (True, "1") or d.get("tran") in ("usb", "mmc")):
        print("\t".join(["/dev/" + d["name"], d["size"], d.get("tran") or "-", d.get("model") or "-"]))
'
    exit 0
fi

# --- provisioning values (all checked before anything is touched) ---------------------

[ -n "$image" ] || die "缺少 --image / --image is required" 2
[ -n "$device" ] || die "缺少 --device / --device is required (./flash.sh --list shows candidates)" 2
[ -n "$kit_id" ] || die "缺少 --kit-id / --kit-id is required" 2
[[ "$kit_id" =~ ^[1-9][0-9]{0,4}$ && "$kit_id" -le 65535 ]] ||
    die "--kit-id 须为 1–65535 / --kit-id must be 1-65535: $kit_id" 2
[ -n "$centre" ] || die "缺少 --centre / --centre is required (the command centre's URL)" 2
[[ "$centre" =~ ^https?://[^[:space:]\"]+$ ]] ||
    die "--centre 须为 http(s):// 地址 / --centre must be an http(s):// URL: $centre" 2
[ -n "$centre_key" ] || die "缺少 --centre-key / --centre-key is required (kit centre keys prints it)" 2
[[ "$centre_key" =~ ^[a-z]+:[A-Za-z0-9+/=_-]+$ ]] ||
    die "--centre-key 格式应为 <profile>:<base64> / --centre-key must look like <profile>:<base64>" 2
name=${name:-套件 $kit_id / kit $kit_id}
[[ "$name" != *\"* && "$name" != *\\* && ${#name} -le 64 ]] ||
    die "--name 不能含引号或反斜杠，最长 64 / --name: no quotes or backslashes, at most 64 characters" 2
wifi_name=${wifi_name:-KIT-$(printf '%03d' "$kit_id")}
[[ ${#wifi_name} -ge 1 && ${#wifi_name} -le 32 && "$wifi_name" != *\"* && "$wifi_name" != *\\* ]] ||
    die "--wifi-name 须 1–32 个字符，不含引号 / --wifi-name: 1-32 characters, no quotes" 2

first_line() { # the first line of a file, without its newline
    [[ -f "$1" && -r "$1" ]] || die "读不到 / cannot read: $1" 2
    head -n1 "$1" | tr -d '\r\n'
}
wifi_generated=0
if [ -n "$wifi_pass_file" ]; then
    wifi_pass=$(first_line "$wifi_pass_file")
    [[ "$wifi_pass" =~ ^[\ -~]{8,63}$ && "$wifi_pass" != *\"* && "$wifi_pass" != *\\* ]] ||
        die "Wi-Fi 密码须为 8–63 个可打印 ASCII 字符（不含引号）/ the Wi-Fi passphrase must be 8-63 printable ASCII characters (no quotes)" 2
else
    wifi_generated=1
    # 20 characters from 55 unambiguous ones: about 115 bits.
    wifi_pass=$("$PY" -c 'import secrets; a="abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"; print("".join(secrets.choice(a) for _ in range(20)))')
fi
if [ -n "$web_pass_file" ]; then
    web_pass=$(first_line "$web_pass_file")
elif [ -t 0 ] && [ "$dry_run" = 0 ]; then
    read -r -s -p "网页密码 / web page password: " web_pass; echo >&2
    read -r -s -p "再输入一次 / again: " again; echo >&2
    [ "$web_pass" = "$again" ] || die "两次输入不一致 / the passwords differ" 2
elif [ "$dry_run" = 1 ]; then
    web_pass="(dry-run)-not-asked"
else
    die "缺少网页密码：用 --web-pass-file 或在终端运行 / the web page password is required: --web-pass-file F, or run on a terminal" 2
fi
[[ ${#web_pass} -ge 10 && ${#web_pass} -le 256 ]] ||
    die "网页密码需要 10–256 个字符 / the web page password needs 10-256 characters" 2

[ -x "$KIT" ] || die "找不到 $KIT，请先运行 ./bootstrap.sh / $KIT is missing: run ./bootstrap.sh first" 1

# --- the image -----------------------------------------------------------------------

[ -f "$image" ] || die "找不到镜像 / no image file: $image" 4
img_bytes=$(stat -c %s "$image")
if [ -z "$sha" ] && [ -f "$image.sha256" ]; then sha=$image.sha256; fi
[ -n "$sha" ] || die "缺少校验和：--sha256 FILE|HEX 或 $image.sha256 / no checksum: give --sha256 FILE|HEX or put $image.sha256 beside the image" 2
if [[ "$sha" =~ ^[0-9a-fA-F]{64}$ ]]; then
    want=${sha,,}
else
    [ -f "$sha" ] || die "读不到校验和文件 / cannot read the checksum file: $sha" 2
    want=$(cut -d' ' -f1 "$sha" | head -n1 | tr 'A-F' 'a-f')
    [[ "$want" =~ ^[0-9a-f]{64}$ ]] || die "校验和文件格式错误 / not a sha256 file: $sha" 2
fi
# The layout first (cheap): a truncated image says so before a long checksum.
table=$(partx -g -o NR,START,SECTORS "$image" 2>/dev/null) ||
    die "镜像没有分区表 / the image has no partition table: $image" 4
[ "$(echo "$table" | wc -l)" -eq 3 ] ||
    die "镜像应有 3 个分区 / the image should have 3 partitions: $image" 4
last_end=$(echo "$table" | awk 'END { printf "%.0f", ($2 + $3) * 512 }')  # no 2.4e+09
[ "$(echo "$table" | awk 'NR == 1 { print $2 }')" = 8192 ] ||
    die "镜像布局不对：第一分区应从 4 MiB 开始 / wrong layout: p1 must start at 4 MiB" 4
[ "$img_bytes" -ge "$last_end" ] ||
    die "镜像被截断：$img_bytes 字节，分区表需要 $last_end / the image is truncated: $img_bytes bytes, its partitions need $last_end" 4
[ $((img_bytes % 512)) -eq 0 ] || die "镜像大小不是 512 的整数倍 / the image size is not a multiple of 512" 4
say "校验镜像 / checking the image's sha256 ($((img_bytes / 1048576)) MiB)"
have=$(sha256sum "$image" | cut -d' ' -f1)
[ "$have" = "$want" ] ||
    die "镜像校验和不符，镜像已损坏或不是这个版本 / checksum mismatch: the image is corrupt or not the one expected (have $have, want $want)" 4

# --- the device ----------------------------------------------------------------------

disk_of() { # the whole disk a block device belongs to (itself if it is one)
    local dev=$1 parent
    parent=$(lsblk -ndo PKNAME "$dev" 2>/dev/null | head -n1)
    if [ -n "$parent" ]; then echo "/dev/$parent"; else readlink -f "$dev"; fi
}
system_disks() { # the disks holding /, /boot, /boot/firmware, /boot/efi and swap
    local m src
    for m in / /boot /boot/firmware /boot/efi; do
        src=$(findmnt -n -o SOURCE --target "$m" 2>/dev/null | sed 's/\[.*//' | head -n1) || continue
        [ -b "$src" ] && disk_of "$src"
    done
    awk 'NR > 1 && $2 == "partition" { print $1 }' /proc/swaps | while read -r src; do
        [ -b "$src" ] && disk_of "$src"
    done
    return 0
}

dev_bytes=""
if [ -f "$device" ] && [ ! -L "$device" ]; then
    [ "$to_file" = 1 ] || die "不是块设备 / not a block device: $device (a plain file only with --to-file)" 3
    target=$device
    say "目标是普通文件（测试替身）/ target is a plain file (the test stand-in): $device"
elif [ -e "$device" ] && [ ! -b "$device" ]; then
    die "不是块设备 / not a block device: $device" 3
elif [ ! -e "$device" ]; then
    die "没有这个设备 / no such device: $device (./flash.sh --list shows candidates)" 3
else
    target=$(readlink -f "$device")
    kind=$(lsblk -ndo TYPE "$target" 2>/dev/null | head -n1)
    case "$kind" in
        part) die "这是分区，请给整块卡 / $device is a partition: give the whole card ($(disk_of "$target"))" 3 ;;
        disk | loop) ;;
        *) die "不支持的设备类型 / not a disk: $device (${kind:-unknown})" 3 ;;
    esac
    while read -r sys; do
        [ "$sys" = "$target" ] &&
            die "拒绝：$device 是系统盘（/、/boot 或交换分区所在）/ refused: $device holds this system's /, /boot or swap" 3
    done < <(system_disks | sort -u)
    mounted=$(lsblk -nro MOUNTPOINTS "$target" 2>/dev/null | grep -v '^$' | tr '\n' ' ' || true)
    if [ -z "$mounted" ]; then # a mount lsblk missed (no udev): ask the kernel
        mounted=$(awk -v d="$target" 'index($1, d) == 1 { printf "%s ", $2 }' /proc/mounts)
    fi
    [ -z "$mounted" ] ||
        die "拒绝：$device 已挂载（$mounted），请先卸载 / refused: $device is mounted ($mounted): unmount it first" 3
    dev_bytes=$(blockdev --getsize64 "$target")
    removable=$(lsblk -ndo RM "$target" | tr -d ' ')
    if [ "$force" = 0 ] && [ "$removable" != 1 ]; then
        die "拒绝：$device 不是可移动磁盘，确认无误请加 --force / refused: $device is not a removable disk (--force if you are sure)" 3
    fi
    if [ "$force" = 0 ] && [ "$dev_bytes" -gt "$MAX_BYTES" ]; then
        die "拒绝：$device 大于 256 GB，不像 SD 卡，确认无误请加 --force / refused: $device is larger than 256 GB, unlike an SD card (--force if you are sure)" 3
    fi
    [ "$dev_bytes" -ge "$img_bytes" ] ||
        die "卡太小：$dev_bytes 字节，镜像 $img_bytes / the card is too small: $dev_bytes bytes for a $img_bytes-byte image" 3
fi
model=$( [ -b "$target" ] && lsblk -ndo MODEL,SIZE "$target" | xargs || echo "file")

if [ "$dry_run" = 0 ] && [ "$yes" = 0 ]; then
    [ -t 0 ] || die "未确认：非交互运行请加 --yes / not confirmed: add --yes when not on a terminal" 1
    printf '将清除 %s（%s）上的全部数据 / this erases everything on %s (%s).\n' "$device" "$model" "$device" "$model" >&2
    read -r -p "输入 YES 继续 / type YES to go on: " answer
    [ "$answer" = YES ] || die "已取消 / cancelled" 1
fi

# --- clean-up, whatever happens ------------------------------------------------------

work="" mnt="" loop="" parts_added="" ok=0 stage=""
cleanup() {
    local status=$?
    set +e
    if [ "$stage" = provision ] && [ "$status" != 0 ]; then
        cat "$work/provision.log" >&2
        printf '错误 / error: %s\n' "预置失败，卡上有镜像但没有套件身份，请重新运行 / provisioning failed: the card holds the image but no kit identity; run flash.sh again" >&2
        status=7
    fi
    if [ -n "$mnt" ] && mountpoint -q "$mnt"; then umount "$mnt" || umount -l "$mnt"; fi
    if [ -n "$parts_added" ]; then partx -d "$parts_added" 2>/dev/null; fi
    if [ -n "$loop" ]; then losetup -d "$loop"; fi
    if [ -n "$work" ]; then rm -rf "$work"; fi
    if [ "$ok" = 0 ] && [ "$status" = 0 ]; then status=1; fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP
work=$(mktemp -d /tmp/flash.XXXXXX)

# --- write: all but the first MiB, then the first MiB --------------------------------

write_failed() {
    local log=$1 why=""
    why=$(grep -m1 -iE 'error|no space|no such|input/output' "$log" | sed 's/^dd: //' || true)
    if [ -n "$target" ] && [ ! -e "$target" ]; then why="${why:-device gone}"; fi
    die "写入失败：卡已拔出或已满，未做预置 / the write failed: the card was removed or is full; nothing was provisioned ($why)" 5
}
oflags=()
[ -b "$target" ] && oflags=(oflag=direct)
say "写入 / writing $image → $device ($model): everything after the first MiB first"
if [ "$dry_run" = 1 ]; then
    printf '[dry-run] dd if=%s of=%s bs=4M skip=1M seek=1M conv=notrunc,fsync status=progress\n' "$image" "$target" >&2
    printf '[dry-run] dd if=%s of=%s bs=1M count=1 conv=notrunc,fsync (the first MiB, last)\n' "$image" "$target" >&2
else
    dd if="$image" of="$target" bs=4M iflag=skip_bytes oflag=seek_bytes skip="$FIRST" seek="$FIRST" \
        conv=notrunc,fsync status=progress "${oflags[@]}" 2> >(tee "$work/dd.log" >&2) ||
        { sleep 0.2; write_failed "$work/dd.log"; }
    dd if="$image" of="$target" bs=1M count=1 conv=notrunc,fsync status=none "${oflags[@]}" \
        2>"$work/dd.log" || write_failed "$work/dd.log"
    sync
fi

# --- read back, uncached --------------------------------------------------------------

say "读回校验 / reading back $((img_bytes / 1048576)) MiB uncached"
read_back() { # sha256 of the first img_bytes of the target, bypassing the page cache
    if [ $((img_bytes % 1048576)) -eq 0 ] &&
        dd if="$target" iflag=direct bs=1M count=1 of=/dev/null status=none 2>/dev/null; then
        set -o pipefail
        dd if="$target" iflag=direct bs=1M count=$((img_bytes / 1048576)) status=none |
            sha256sum | cut -d' ' -f1
    else # no O_DIRECT here (tmpfs): drop the file's cached pages, then read it fresh
        "$PY" - "$target" "$img_bytes" <<'EOF'
import hashlib, os, sys
path, size = sys.argv[1], int(sys.argv[2])
fd = os.open(path, os.O_RDONLY)
try:
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    h, left = hashlib.sha256(), size
    while left:
        chunk = os.read(fd, min(left, 4 << 20))
        if not chunk:
            break
        h.update(chunk)
        left -= len(chunk)
    print(h.hexdigest())
finally:
    os.close(fd)
EOF
    fi
}
if [ "$dry_run" = 1 ]; then
    printf '[dry-run] dd if=%s iflag=direct bs=1M count=%d | sha256sum (must be %s)\n' "$target" $((img_bytes / 1048576)) "$want" >&2
else
    [ -e "$target" ] || write_failed /dev/null
    got=$(read_back) || die "读回失败：卡被拔出？/ read-back failed: was the card removed?" 6
    [ "$got" = "$want" ] ||
        die "读回不符：卡上的数据与镜像不同（卡可能已坏）/ read-back mismatch: the card does not hold the image (a failing card?) (got $got)" 6
    say "读回一致 / read-back matches ($want)"
fi

# --- provision the data partition (p3) -----------------------------------------------

say "预置套件 $kit_id / provisioning kit $kit_id on p3 (kitdata)"
if [ "$dry_run" = 1 ]; then
    for line in \
        "losetup/partx: find p3 (label kitdata) of $target; mount it in a private temp folder" \
        "$KIT init-config TMP/kit.toml --id $kit_id --name '$name' --data-dir P3 --centre $centre --centre-key $centre_key" \
        "[wifi] enabled = true, ssid = '$wifi_name', passphrase from ${wifi_pass_file:-a new random one}" \
        "$KIT provision --config TMP/kit.toml (keys in P3/keys)" \
        "$KIT web-password --config TMP/kit.toml --stdin < ${web_pass_file:-the terminal}" \
        "P3/config/kit.toml (data_dir = /var/lib/kit, runtime_dir = /run/kit) 0660 root:990 (folder 0770: the web page saves it); keys 0700/0600 990:990; web/users.json 0600 990:990" \
        "P3/provisioned.json (kit id, time, image sha256, public key); umount; partx -d; losetup -d; sync"; do
        printf '[dry-run] %s\n' "$line" >&2
    done
    ok=1
    say "演练完成，未改动任何东西 / dry run done: nothing was touched"
    exit 0
fi

wait_for() { # a device node to appear (devtmpfs makes it; udev may be slow or absent)
    for _ in $(seq 50); do [ -b "$1" ] && return 0; sleep 0.1; done
    return 1
}
if [ -f "$target" ]; then
    loop=$(losetup -f --show "$target") || die "无法建立 loop 设备 / cannot set up a loop device for $target" 7
    disk=$loop
else
    disk=$target
    blockdev --flushbufs "$disk" 2>/dev/null || true
fi
if [[ "$disk" == /dev/loop* ]]; then
    partx -d "$disk" 2>/dev/null || true
    partx -a "$disk" || die "无法读取卡上的分区表 / cannot read the card's partition table" 7
    parts_added=$disk
    p3=${disk}p3
else
    blockdev --rereadpt "$disk" 2>/dev/null || partx -u "$disk" ||
        die "无法重读分区表 / cannot re-read the card's partition table" 7
    p3=/dev/$(lsblk -nro NAME,TYPE "$disk" | awk '$2 == "part" { n++; if (n == 3) print $1 }')
fi
wait_for "$p3" || die "找不到数据分区 / the data partition (p3) did not appear: $p3" 7
[ "$(blkid -p -o value -s LABEL "$p3" 2>/dev/null)" = kitdata ] ||
    die "$p3 不是 kitdata 分区 / $p3 is not the kitdata partition" 7
mnt=$work/p3
mkdir -p "$mnt"
mount -o noatime "$p3" "$mnt" || die "无法挂载数据分区 / cannot mount the data partition $p3" 7

provision() {
    local conf=$work/kit.toml
    "$KIT" init-config "$conf" --id "$kit_id" --name "$name" --data-dir "$mnt" \
        --runtime-dir "$work/run" --centre "$centre" --centre-key "$centre_key" >/dev/null
    WIFI_NAME=$wifi_name WIFI_PASS=$wifi_pass "$PY" - "$conf" <<'EOF'
import json, os, re, sys
path = sys.argv[1]
text = open(path, encoding="utf-8").read()
wifi = (f"[wifi]\nenabled = true\nssid = {json.dumps(os.environ['WIFI_NAME'])}\n"
        f"passphrase = {json.dumps(os.environ['WIFI_PASS'])}\n")
new, n = re.subn(r"^\[wifi\][^\n]*\nenabled = false\n", wifi, text, count=1, flags=re.M)
if n != 1:
    sys.exit("init-config's [wifi] section changed: cannot set the access point")
open(path, "w", encoding="utf-8").write(new)
EOF
    "$KIT" config check "$conf" >/dev/null
    public_key=$("$KIT" provision --config "$conf" | head -n1)
    [ -n "$public_key" ] || { echo "kit provision printed no public key"; return 1; }
    printf '%s\n' "$web_pass" | "$KIT" web-password --config "$conf" --stdin >/dev/null
    mkdir -p "$mnt/config"
    KIT_DATA=$mnt KIT_RUN=$work/run "$PY" - "$conf" "$mnt/config/kit.toml" <<'EOF'
import json, os, sys
src, dst = sys.argv[1], sys.argv[2]
text = open(src, encoding="utf-8").read()
for key, old, new in (("data_dir", os.environ["KIT_DATA"], "/var/lib/kit"),
                      ("runtime_dir", os.environ["KIT_RUN"], "/run/kit")):
    line = f'{key} = "{old}"'
    if line not in text:
        sys.exit(f"{key} not found in the config")
    text = text.replace(line, f"{key} = {json.dumps(new)}")
open(dst, "w", encoding="utf-8").write(text)
EOF
    "$KIT" config check "$mnt/config/kit.toml" >/dev/null
    # The contract's owners and modes: the kit runs as uid/gid 990.
    chown -R 990:990 "$mnt"
    # The top stays the kit's (it makes store/ and media/ at first start); lost+found is root's.
    chmod 0755 "$mnt"
    chown root:root "$mnt/lost+found" 2>/dev/null || true
    chown root:990 "$mnt/config" "$mnt/config/kit.toml"
    chmod 0770 "$mnt/config"  # the kit's web page saves the config (atomically, in this folder)
    chmod 0660 "$mnt/config/kit.toml"
    chmod 0700 "$mnt/keys" "$mnt/web"
    find "$mnt/keys" -type f -exec chmod 0600 {} +
    chmod 0600 "$mnt/web/users.json"
    KIT_ID=$kit_id SHA=$want KEY=$public_key "$PY" - "$mnt/provisioned.json" <<'EOF'
import datetime, json, os, sys
record = {
    "kit_id": int(os.environ["KIT_ID"]),
    "provisioned_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    "image_sha256": os.environ["SHA"],
    "public_key": os.environ["KEY"],
    "tool": "flash.sh",
}
with open(sys.argv[1], "w", encoding="utf-8") as f:
    json.dump(record, f, indent=1)
    f.write("\n")
    f.flush()
    os.fsync(f.fileno())
EOF
    chmod 0644 "$mnt/provisioned.json"
}
stage=provision # a failing step exits through cleanup, which says so (exit 7)
provision 2>"$work/provision.log"
stage=finished
sync
umount "$mnt" || die "无法卸载数据分区 / cannot unmount the data partition" 7
sync
ok=1
say "完成 / done: $device"
cat >&2 <<EOF

  ┌ 套件标签 / kit label ───────────────────────────
  │ 套件 / kit:        $kit_id  ($name)
  │ Wi-Fi 名称 / SSID: $wifi_name
  │ Wi-Fi 密码 / pass: $([ "$wifi_generated" = 1 ] && echo "$wifi_pass" || echo "(from $wifi_pass_file)")
  │ 公钥 / public key: $public_key
  └ 请把 Wi-Fi 密码抄在标签上，此后不再显示 / copy the passphrase onto the label: it is not shown again
EOF
echo "$public_key"
