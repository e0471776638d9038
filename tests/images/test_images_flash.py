"""flash.sh against plain files, loop devices and this machine's own disk (real dd, partx, mount).

A small image (34 MiB boot, 24 MiB root, 16 MiB data) is made once by images/assemble.sh.
Every refusal is checked to leave the target's bytes, the loop devices and /tmp as they were.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FLASH = ROOT / "flash.sh"
ASSEMBLE = ROOT / "images" / "assemble.sh"
MIB = 1 << 20
SIZES = ("--boot-size", "34", "--root-size", "24", "--data-size", "16")  # MiB


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    top = tmp_path_factory.mktemp("image")
    for sub in ("boot/overlays", "root/etc", "data"):
        (top / sub).mkdir(parents=True)
    (top / "boot/config.txt").write_text("arm_64bit=1\n")
    (top / "boot/cmdline.txt").write_text("root=LABEL=kitroot ro\n")
    (top / "root/etc/hostname").write_text("kit\n")
    out = top / "kit.img"
    subprocess.run(
        [ASSEMBLE, out, top / "boot", top / "root", top / "data", *SIZES],
        check=True,
        capture_output=True,
    )
    return out


@pytest.fixture(scope="module")
def centre_key(tmp_path_factory: pytest.TempPathFactory) -> str:
    top = tmp_path_factory.mktemp("centre")
    (top / "centre.toml").write_text('listen = "127.0.0.1:1"\ndata_dir = "c"\n')
    result = subprocess.run(
        [
            ROOT / ".venv/bin/kit",
            "centre",
            "keys",
            "--profile",
            "default",
            "--config",
            "centre.toml",
        ],
        cwd=top,
        check=True,
        capture_output=True,
        text=True,
    )
    return result.stdout.strip()


@pytest.fixture
def secrets(tmp_path: Path) -> Path:
    path = tmp_path / "web.pass"
    path.write_text("correct horse battery\n")
    return path


def flash(*args: str | Path, path: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if path is not None:
        env["PATH"] = f"{path}:{env['PATH']}"
    return subprocess.run(
        [FLASH, *map(str, args)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
        env=env,
    )


def kit_args(image: Path, key: str, web: Path, kit_id: int = 7) -> list[str | Path]:
    return [
        "--image", image, "--kit-id", str(kit_id), "--centre", "http://10.0.0.1:8440",
        "--centre-key", key, "--web-pass-file", web, "--yes",
    ]  # fmt: skip


def sha(path: Path | str, size: int | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(size) if size is not None else f.read())
    return h.hexdigest()


def loops() -> str:
    return subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout


def flash_dirs() -> set[str]:
    return {p.name for p in Path("/tmp").glob("flash.*")}


@contextlib.contextmanager
def loop_device(path: Path, partitions: bool = False) -> Iterator[str]:
    dev = subprocess.run(
        ["losetup", "-f", "--show", path], check=True, capture_output=True, text=True
    ).stdout.strip()
    try:
        if partitions:
            subprocess.run(["partx", "-a", dev], check=True, capture_output=True)
        yield dev
    finally:
        subprocess.run(["partx", "-d", dev], capture_output=True)
        subprocess.run(["losetup", "-d", dev], check=True)


@contextlib.contextmanager
def mounted_p3(card: Path, tmp: Path) -> Iterator[Path]:
    with loop_device(card, partitions=True) as dev:
        mnt = tmp / f"mnt-{card.name}"
        mnt.mkdir()
        subprocess.run(["mount", "-o", "ro", f"{dev}p3", mnt], check=True)
        try:
            yield mnt
        finally:
            subprocess.run(["umount", mnt], check=True)


def modes(top: Path) -> dict[str, tuple[str, int, int]]:
    out = {}
    for path in [top, *top.rglob("*")]:
        st = path.lstat()
        out[str(path.relative_to(top))] = (oct(st.st_mode & 0o7777), st.st_uid, st.st_gid)
    return out


def test_two_kits_are_written_verified_and_provisioned_with_their_own_keys(
    image: Path, centre_key: str, secrets: Path, tmp_path: Path
) -> None:
    before_loops, before_dirs = loops(), flash_dirs()
    card_a = tmp_path / "card-a.img"
    card_a.write_bytes(b"\xaa" * (100 * MIB))  # an old card's leftovers
    wifi = tmp_path / "wifi.pass"
    wifi.write_text("field-kit-wifi-7\n")
    a = flash(
        *kit_args(image, centre_key, secrets, 7),
        "--device", card_a, "--to-file", "--name", "一号箱 / box one", "--wifi-pass-file", wifi,
    )  # fmt: skip
    assert a.returncode == 0, a.stderr
    card_b = tmp_path / "card-b.img"
    card_b.write_bytes(b"\0" * (100 * MIB))
    with loop_device(card_b) as dev:
        refused = flash(*kit_args(image, centre_key, secrets, 8), "--device", dev)
        assert refused.returncode == 3
        assert "不是可移动磁盘" in refused.stderr and "is not a removable disk" in refused.stderr
        assert sha(card_b, 2 * MIB) == hashlib.sha256(bytes(2 * MIB)).hexdigest()
        b = flash(*kit_args(image, centre_key, secrets, 8), "--device", dev, "--force")
        assert b.returncode == 0, b.stderr
    size = image.stat().st_size
    for card, result in ((card_a, a), (card_b, b)):
        assert sha(card, MIB) == sha(image, MIB)  # the first MiB: the boot record
        assert "读回一致 / read-back matches" in result.stderr
        assert "%" in result.stderr or "copied" in result.stderr  # dd's progress
    before_p3 = (4 + 34 + 24) * MIB
    for card in (card_a, card_b):
        assert sha(card, before_p3) == sha(image, before_p3)  # boot and root as in the image
        assert sha(card, size) != sha(image)  # p3 was provisioned after the read-back
    assert "Wi-Fi 密码 / pass: (from" in a.stderr  # a given passphrase is not echoed
    assert "Wi-Fi 密码 / pass: " in b.stderr and "(from" not in b.stderr.split("pass: ")[1][:6]

    keys = {}
    for card, kit_id, result in ((card_a, 7, a), (card_b, 8, b)):
        with mounted_p3(card, tmp_path) as p3:
            m = modes(p3)
            assert m["config"] == ("0o770", 0, 990)
            assert m["config/kit.toml"] == ("0o660", 0, 990)
            assert m["keys"] == ("0o700", 990, 990)
            assert all(v == ("0o600", 990, 990) for k, v in m.items() if k.startswith("keys/"))
            assert m["web/users.json"] == ("0o600", 990, 990)
            assert m["."][1:] == (990, 990)
            config = (p3 / "config/kit.toml").read_text()
            assert f"id = {kit_id}" in config and 'data_dir = "/var/lib/kit"' in config
            assert 'runtime_dir = "/run/kit"' in config and centre_key in config
            assert "enabled = true" in config and f'ssid = "KIT-{kit_id:03d}"' in config
            record = json.loads((p3 / "provisioned.json").read_text())
            assert record["kit_id"] == kit_id and record["image_sha256"] == sha(image)
            assert record["public_key"] == result.stdout.strip()
            assert "hash" not in json.dumps(record) and "passphrase" not in json.dumps(record)
            profile, _, secret = (p3 / "keys/kit.key").read_text().partition("\n")
            assert profile == "default"
            keys[kit_id] = base64.b64decode(secret.strip())
            check = subprocess.run(
                [ROOT / ".venv/bin/kit", "config", "check", p3 / "config/kit.toml"],
                capture_output=True,
                text=True,
            )
            assert check.returncode == 0, check.stderr
    assert len(keys[7]) >= 32
    shared = {keys[7][i : i + 8] for i in range(len(keys[7]) - 7)}
    assert not any(keys[8][i : i + 8] in shared for i in range(len(keys[8]) - 7))
    assert loops() == before_loops and flash_dirs() == before_dirs


def test_dry_run_prints_every_step_and_touches_nothing(
    image: Path, centre_key: str, secrets: Path, tmp_path: Path
) -> None:
    card = tmp_path / "card.img"
    card.write_bytes(bytes(100 * MIB))
    before = sha(card), loops(), flash_dirs()
    result = flash(
        *kit_args(image, centre_key, secrets), "--device", card, "--to-file", "--dry-run"
    )
    assert result.returncode == 0, result.stderr
    for step in ("dd if=", "iflag=direct", "init-config", "provision", "web-password", "losetup"):
        assert step in result.stderr
    assert "nothing was touched" in result.stderr
    assert (sha(card), loops(), flash_dirs()) == before


@pytest.mark.parametrize(
    ("device", "code", "message"),
    [
        ("/dev/sdzz9", 3, "没有这个设备 / no such device: /dev/sdzz9"),
        ("/dev/null", 3, "不是块设备 / not a block device: /dev/null"),
    ],
)
def test_refuses_a_wrong_device_name(
    image: Path, centre_key: str, secrets: Path, device: str, code: int, message: str
) -> None:
    result = flash(*kit_args(image, centre_key, secrets), "--device", device)
    assert result.returncode == code
    assert message in result.stderr


def test_refuses_a_plain_file_without_to_file(
    image: Path, centre_key: str, secrets: Path, tmp_path: Path
) -> None:
    card = tmp_path / "card.img"
    card.write_bytes(bytes(MIB))
    result = flash(*kit_args(image, centre_key, secrets), "--device", card)
    assert result.returncode == 3 and "a plain file only with --to-file" in result.stderr
    assert card.read_bytes() == bytes(MIB)


def test_refuses_the_disk_holding_root_without_writing_a_byte(
    image: Path, centre_key: str, secrets: Path, tmp_path: Path
) -> None:
    source = subprocess.run(
        ["findmnt", "-n", "-o", "SOURCE", "/"], capture_output=True, text=True, check=True
    ).stdout.strip()
    parent = subprocess.run(
        ["lsblk", "-ndo", "PKNAME", source], capture_output=True, text=True, check=True
    ).stdout.strip()
    disk = f"/dev/{parent}" if parent else source
    assert Path(disk).is_block_device(), f"/ is on {source}, not a disk this test can name"
    # Every dd flash.sh runs goes through this shim, which notes its arguments.
    shims, calls = tmp_path / "bin", tmp_path / "dd.calls"
    shims.mkdir()
    (shims / "dd").write_text(f'#!/bin/sh\necho "$*" >> {calls}\nexec /bin/dd "$@"\n')
    (shims / "dd").chmod(0o755)
    result = flash(*kit_args(image, centre_key, secrets), "--device", disk, "--force", path=shims)
    assert result.returncode == 3
    assert f"refused: {disk} holds this system's /, /boot or swap" in result.stderr
    assert "写入 / writing" not in result.stderr
    assert not calls.exists() or disk not in calls.read_text()
    # The shim does see a write that does happen:
    card = tmp_path / "card.img"
    card.write_bytes(bytes(100 * MIB))
    ok = flash(*kit_args(image, centre_key, secrets), "--device", card, "--to-file", path=shims)
    assert ok.returncode == 0, ok.stderr
    assert f"of={card}" in calls.read_text()


def test_refuses_a_partition_and_a_mounted_card(
    image: Path, centre_key: str, secrets: Path, tmp_path: Path
) -> None:
    card = tmp_path / "card.img"
    card.write_bytes(image.read_bytes())
    with loop_device(card, partitions=True) as dev:
        result = flash(*kit_args(image, centre_key, secrets), "--device", f"{dev}p1", "--force")
        assert result.returncode == 3
        assert f"{dev}p1 is a partition: give the whole card ({dev})" in result.stderr
        mnt = tmp_path / "mnt"
        mnt.mkdir()
        subprocess.run(["mount", "-o", "ro", f"{dev}p3", mnt], check=True)
        try:
            result = flash(*kit_args(image, centre_key, secrets), "--device", dev, "--force")
        finally:
            subprocess.run(["umount", mnt], check=True)
        assert result.returncode == 3
        assert f"refused: {dev} is mounted ({mnt} ): unmount it first" in result.stderr
    assert sha(card) == sha(image)


def test_refuses_a_truncated_and_a_corrupt_image(
    image: Path, centre_key: str, secrets: Path, tmp_path: Path
) -> None:
    card = tmp_path / "card.img"
    card.write_bytes(bytes(MIB))
    data = image.read_bytes()
    short = tmp_path / "short.img"
    short.write_bytes(data[: 50 * MIB])
    result = flash(
        *kit_args(short, centre_key, secrets), "--sha256", sha(short), "--device", card, "--to-file"
    )
    assert result.returncode == 4
    assert f"the image is truncated: {50 * MIB} bytes, its partitions need {len(data)}" in (
        result.stderr
    )
    bad = tmp_path / "bad.img"
    bad.write_bytes(data[: 20 * MIB] + bytes([data[20 * MIB] ^ 1]) + data[20 * MIB + 1 :])
    result = flash(
        *kit_args(bad, centre_key, secrets), "--sha256", sha(image), "--device", card, "--to-file"
    )
    assert result.returncode == 4
    assert "checksum mismatch: the image is corrupt" in result.stderr
    result = flash(*kit_args(bad, centre_key, secrets), "--device", card, "--to-file")
    assert result.returncode == 2 and "no checksum" in result.stderr
    assert card.read_bytes() == bytes(MIB)


@pytest.mark.parametrize(
    ("drop", "extra", "message"),
    [
        ("--centre-key", [], "--centre-key is required"),
        ("--kit-id", [], "--kit-id is required"),
        ("--centre", [], "--centre is required"),
        ("--web-pass-file", [], "the web page password is required"),
        (None, ["--kit-id", "70000"], "--kit-id must be 1-65535: 70000"),
        (None, ["--wifi-pass", "x"], "passwords never go on the command line"),
        (None, ["--centre", "ftp://x"], "--centre must be an http(s):// URL"),
    ],
)
def test_refuses_a_missing_or_bad_provisioning_value(
    image: Path,
    centre_key: str,
    secrets: Path,
    tmp_path: Path,
    drop: str | None,
    extra: list[str],
    message: str,
) -> None:
    card = tmp_path / "card.img"
    card.write_bytes(bytes(MIB))
    args = [str(a) for a in kit_args(image, centre_key, secrets)]
    if drop is not None:
        at = args.index(drop)
        del args[at : at + 2]
    result = flash(*args, *extra, "--device", card, "--to-file")
    assert result.returncode == 2
    assert message in result.stderr
    assert card.read_bytes() == bytes(MIB)


def test_a_card_that_fills_mid_write_stops_before_provisioning(
    image: Path, centre_key: str, secrets: Path, tmp_path: Path
) -> None:
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", small], check=True)
    try:
        before = loops(), flash_dirs()
        card = small / "card.img"
        card.write_bytes(bytes(MIB))
        result = flash(*kit_args(image, centre_key, secrets), "--device", card, "--to-file")
        assert result.returncode == 5
        assert "卡已拔出或已满，未做预置" in result.stderr
        assert "the card was removed or is full; nothing was provisioned" in result.stderr
        assert "No space left on device" in result.stderr
        assert "预置套件" not in result.stderr and "读回" not in result.stderr
        assert card.read_bytes()[:MIB] == bytes(MIB)  # the boot record was never written
        assert (loops(), flash_dirs()) == before
        assert os.listdir(small) == ["card.img"]
    finally:
        subprocess.run(["umount", small], check=True)


def test_list_shows_only_removable_disks() -> None:
    result = flash("--list")
    assert result.returncode == 0, result.stderr
    assert "可移动磁盘 / removable disks" in result.stderr
    assert "/dev/vda" not in result.stdout and "/dev/loop" not in result.stdout
