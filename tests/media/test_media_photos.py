"""Photos: refused when not photos, EXIF time and position kept, thumbnails before the photo."""

from __future__ import annotations

import contextlib
import os
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.item import Kind, Priority
from media import durable
from media.inbox import Inbox
from media.photos import (
    MAX_PHOTO_BYTES,
    BadExif,
    Exif,
    NotAPhoto,
    PhotoIntake,
    exif_of,
)
from media.thumbs import FULL_BYTES, NARROW_BYTES
from media.voice import MAX_UPLOAD_BYTES, VoiceIntake

NOW_MS = 1_790_000_000_000


def clock() -> tuple[int, bool]:
    return NOW_MS, True


def ifd(order: str, entries: list[tuple[int, int, int, bytes]], at: int) -> bytes:
    """One IFD at offset ``at``: entries (tag, type, count, value); long values follow it."""
    head = struct.pack(order + "H", len(entries))
    extra = b""
    rows = b""
    data_at = at + 2 + 12 * len(entries) + 4
    for tag, kind, count, value in entries:
        if len(value) <= 4:
            rows += struct.pack(order + "HHI", tag, kind, count) + value.ljust(4, b"\0")
        else:
            rows += struct.pack(order + "HHII", tag, kind, count, data_at + len(extra))
            extra += value
    return head + rows + b"\0\0\0\0" + extra


def exif_block(order: str, lat: float, lon: float, alt: float, taken: str) -> bytes:
    """An EXIF APP1 body as cameras write it: IFD0 → Exif IFD (time) and GPS IFD."""

    def rationals(*values: float) -> bytes:
        return b"".join(struct.pack(order + "II", round(v * 10000), 10000) for v in values)

    def dms(value: float) -> bytes:
        value = abs(value)
        d = int(value)
        m = int((value - d) * 60)
        return rationals(d, m, (value - d - m / 60) * 3600)

    ifd0_at = 8
    ifd0_len = 2 + 12 * 2 + 4
    exif_at = ifd0_at + ifd0_len
    exif_ifd = ifd(order, [(0x9003, 2, 20, taken.encode() + b"\0")], exif_at)
    gps_at = exif_at + len(exif_ifd)
    gps = ifd(
        order,
        [
            (1, 2, 2, b"N\0" if lat >= 0 else b"S\0"),
            (2, 5, 3, dms(lat)),
            (3, 2, 2, b"E\0" if lon >= 0 else b"W\0"),
            (4, 5, 3, dms(lon)),
            (5, 1, 1, b"\x01" if alt < 0 else b"\x00"),
            (6, 5, 1, rationals(abs(alt))),
        ],
        gps_at,
    )
    pointers = [
        (0x8769, 4, 1, struct.pack(order + "I", exif_at)),
        (0x8825, 4, 1, struct.pack(order + "I", gps_at)),
    ]
    magic = b"II" if order == "<" else b"MM"
    tiff = magic + struct.pack(order + "HI", 42, ifd0_at) + ifd(order, pointers, ifd0_at)
    return b"Exif\0\0" + tiff + exif_ifd + gps


def with_exif(jpeg: bytes, block: bytes) -> bytes:
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(block) + 2) + block + jpeg[2:]


def photo_jpeg(width: int = 1600, height: int = 1200) -> bytes:
    rng = np.random.default_rng(2)
    image = cv2.resize(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8), (width, height))
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return bytes(buf.tobytes())


@pytest.mark.parametrize("order", ["<", ">"])
def test_exif_time_and_position_are_read_in_either_byte_order(order: str) -> None:
    block = exif_block(order, 30.6571, -104.0658, -12.5, "2026:05:12 14:03:07")
    exif = exif_of(with_exif(photo_jpeg(64, 48), block))
    assert exif.taken == "2026:05:12 14:03:07"
    assert exif.position is not None
    assert exif.position.lat == pytest.approx(30.6571, abs=1e-5)
    assert exif.position.lon == pytest.approx(-104.0658, abs=1e-5)
    assert exif.position.alt_m == pytest.approx(-12.5)


def test_a_jpeg_without_exif_has_no_metadata() -> None:
    assert exif_of(photo_jpeg(64, 48)) == Exif()


@given(st.binary(max_size=600))
@settings(max_examples=300, deadline=None)
def test_exif_parser_on_arbitrary_bytes_raises_only_its_own_error(data: bytes) -> None:
    for blob in (data, b"\xff\xd8" + data, with_exif(b"\xff\xd8", b"Exif\0\0" + data)):
        try:
            exif_of(blob)
        except BadExif as err:
            assert str(err).startswith("EXIF 无效：") and "invalid EXIF: " in str(err)


@given(st.integers(0, 400), st.binary(min_size=1, max_size=8))
@settings(max_examples=200, deadline=None)
def test_exif_parser_survives_a_corrupted_real_block(at: int, junk: bytes) -> None:
    block = bytearray(exif_block("<", 10.0, 20.0, 5.0, "2026:01:01 00:00:00"))
    at %= len(block)
    block[at : at + len(junk)] = junk
    with contextlib.suppress(BadExif):
        exif_of(with_exif(b"\xff\xd8\xff\xd9", bytes(block)))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "the file is empty"),
        (b"%PDF-1.7 not a photo", "not a JPEG or PNG image (starts with 255044462d312e37)"),
        (b"\0\0\0\x18ftypheic" + bytes(40), "HEIC photos are not supported"),
        (b"\xff\xd8\xff\xe0" + bytes(100), "the image is damaged and cannot be decoded"),
    ],
)
def test_what_is_not_a_photo_is_refused_with_a_precise_reason(
    tmp_path: Path, data: bytes, message: str
) -> None:
    with pytest.raises(NotAPhoto) as caught:
        PhotoIntake(tmp_path, clock=clock).take(data, source="web")
    assert message in str(caught.value)
    assert not (tmp_path / "photos").exists() or not list((tmp_path / "photos").iterdir())


def inbox_of(folder: Path, media_dir: Path) -> Inbox:
    return Inbox(folder, PhotoIntake(media_dir, clock=clock), VoiceIntake(media_dir, clock=clock))


@pytest.mark.parametrize(
    ("head", "reason"),
    [
        (b"", f"file too large: {2 * 1024**3} bytes (limit {MAX_UPLOAD_BYTES // 1024**2} MB)"),
        (
            b"\xff\xd8\xff\xe0",
            f"photo too large: {2 * 1024**3} bytes (limit {MAX_PHOTO_BYTES // 1024**2} MB)",
        ),
    ],
)
def test_an_absurdly_large_file_is_refused_before_it_is_read(
    tmp_path: Path, head: bytes, reason: str
) -> None:
    big = tmp_path / "inbox" / "huge.jpg"
    big.parent.mkdir()
    with big.open("wb") as f:  # sparse: 2 GB on paper, nothing on disk
        f.write(head)
        f.truncate(2 * 1024**3)
    os.utime(big, (0, 0))
    assert inbox_of(big.parent, tmp_path).scan() == []
    assert reason in (big.parent / "refused" / "huge.jpg.txt").read_text()


def test_a_photo_gives_thumbnails_pointing_at_the_full_photo_all_durable(tmp_path: Path) -> None:
    data = with_exif(photo_jpeg(), exif_block(">", 30.5, 104.25, 500.0, "2026:05:12 14:03:07"))
    thumb, narrow, photo = PhotoIntake(tmp_path, clock=clock).take(data, source="web")
    assert photo.item.kind is Kind.PHOTO and photo.item.priority is Priority.P4
    assert photo.item.media is not None and photo.item.media.mime == "image/jpeg"
    assert (tmp_path / photo.item.media.path).read_bytes() == data
    assert photo.item.data["taken"] == "2026:05:12 14:03:07"
    assert photo.item.position is not None and photo.item.position.lat == pytest.approx(30.5)
    for pending, limit in ((thumb, FULL_BYTES), (narrow, NARROW_BYTES)):
        item = pending.item
        assert item.kind is Kind.THUMBNAIL and item.priority is Priority.P3
        assert item.parent == photo.item.uid and item.position == photo.item.position
        assert item.media is not None and 0 < item.media.size <= limit
        path = tmp_path / item.media.path
        assert durable.digest(path).sha256 == item.media.sha256
        image = cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
        assert image is not None and image.shape[1] / image.shape[0] == pytest.approx(4 / 3, 0.05)
        assert pending.index.exists()


def test_a_photo_with_broken_exif_is_kept_without_its_metadata(tmp_path: Path) -> None:
    broken = with_exif(photo_jpeg(320, 240), b"Exif\0\0MM\0\x2a\xff\xff\xff\xff")
    *_, photo = PhotoIntake(tmp_path, clock=clock).take(broken, source="web")
    assert photo.item.position is None and "taken" not in photo.item.data


def test_the_inbox_takes_settled_photos_waits_for_copies_and_sets_aside_the_rest(
    tmp_path: Path,
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "IMG_0001.JPG").write_bytes(photo_jpeg(640, 480))
    (inbox / "notes.txt").write_text("not a photo")
    (inbox / "IMG_0002.JPG").write_bytes(photo_jpeg(640, 480))
    for name in ("IMG_0001.JPG", "notes.txt"):
        os.utime(inbox / name, (0, 0))
    made = inbox_of(inbox, tmp_path / "media").scan()
    assert [p.item.kind for p in made] == [Kind.THUMBNAIL, Kind.THUMBNAIL, Kind.PHOTO]
    assert sorted(p.name for p in inbox.iterdir()) == ["IMG_0002.JPG", "refused"]
    reason = (inbox / "refused" / "notes.txt.txt").read_text()
    assert reason.startswith("既不是照片（JPEG、PNG）也不是录音")
    assert "neither a photo (JPEG, PNG) nor a voice recording" in reason


# How a camera stores an upright scene for each EXIF orientation (the spec's "0th row,
# 0th column" table), written independently of media.photos.upright.
STORED = {
    1: lambda u: u,
    2: lambda u: u[:, ::-1],  # row 0 top, column 0 right
    3: lambda u: u[::-1, ::-1],  # bottom, right
    4: lambda u: u[::-1, :],  # bottom, left
    5: lambda u: u.transpose(1, 0, 2),  # left, top
    6: lambda u: u[:, ::-1].transpose(1, 0, 2),  # right, top: a phone held upright
    7: lambda u: u[::-1, ::-1].transpose(1, 0, 2),  # right, bottom
    8: lambda u: u[::-1, :].transpose(1, 0, 2),  # left, bottom
}
QUADRANTS = {  # BGR: top left red, top right green, bottom left blue, bottom right white
    (0, 0): (0, 0, 255),
    (0, 1): (0, 255, 0),
    (1, 0): (255, 0, 0),
    (1, 1): (255, 255, 255),
}


def orientation_block(order: str, value: int) -> bytes:
    tiff = (b"II" if order == "<" else b"MM") + struct.pack(order + "HI", 42, 8)
    entry = struct.pack(order + "HHIH", 0x0112, 3, 1, value) + b"\0\0"
    return b"Exif\0\0" + tiff + struct.pack(order + "H", 1) + entry + b"\0\0\0\0"


@pytest.mark.parametrize("orientation", range(1, 9))
def test_thumbnails_are_upright_whatever_the_exif_orientation_and_the_photo_is_untouched(
    tmp_path: Path, orientation: int
) -> None:
    upright = np.zeros((240, 320, 3), np.uint8)  # landscape, 4:3
    for (row, col), colour in QUADRANTS.items():
        upright[row * 120 : row * 120 + 120, col * 160 : col * 160 + 160] = colour
    stored = np.ascontiguousarray(STORED[orientation](upright))
    ok, buf = cv2.imencode(".jpg", stored, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    data = with_exif(bytes(buf.tobytes()), orientation_block("<>"[orientation % 2], orientation))
    assert exif_of(data).orientation == orientation
    thumb, narrow, photo = PhotoIntake(tmp_path, clock=clock).take(data, source="web")
    assert photo.item.media is not None
    assert (tmp_path / photo.item.media.path).read_bytes() == data  # the original as taken
    for pending in (thumb, narrow):
        assert pending.item.media is not None
        raw = (tmp_path / pending.item.media.path).read_bytes()
        image = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)
        height, width = image.shape[:2]
        assert width / height == pytest.approx(4 / 3, 0.05), "not turned upright"
        for (row, col), colour in QUADRANTS.items():
            h, w = height // 2, width // 2
            patch = image[
                row * h + h // 4 : row * h + 3 * h // 4, col * w + w // 4 : col * w + 3 * w // 4
            ]
            mean = patch.reshape(-1, 3).mean(axis=0)
            assert np.abs(mean - colour).max() < 40, (orientation, (row, col), mean)


@pytest.mark.parametrize("value", [0, 9, 65535])
def test_a_meaningless_orientation_leaves_the_pixels_as_stored(value: int) -> None:
    data = with_exif(photo_jpeg(64, 48), orientation_block("<", value))
    assert exif_of(data).orientation == 1
