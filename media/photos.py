"""Photos from the web page or a watched folder: checked, EXIF kept, thumbnails first.

A photo becomes three items: two thumbnails (P3: ≤ 8 KB for IP links, ≤ 1,600 B inline
for narrow ones), whose ``parent`` is the full photo (P4, sent as taken, only over fast
links). Every file is durable before its item is offered to the edge.

The EXIF time and GPS position are read by a small parser of the JPEG APP1 segment
written here (no imaging library is installed): it reads only what it needs, checks
every offset, and fails with :class:`BadExif` on anything malformed — a bad EXIF block
costs the photo its metadata, never the photo itself.
"""

from __future__ import annotations

import hashlib
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge.errors import BadItem, KitError
from edge.item import Position
from media.segments import Clock, Pending, system_clock
from media.thumbs import (
    FULL_BYTES,
    FULL_WIDTHS,
    MIME,
    NARROW_BYTES,
    NARROW_WIDTHS,
    Derivative,
    DerivedFolder,
    Frame,
    encode_within,
)

log = logging.getLogger("media.photos")

MAX_PHOTO_BYTES = 40 * 1024**2  # a 200 MP phone JPEG is ~30 MB; a 2 GB upload is refused
MAX_PIXELS = 210_000_000
MAX_IFD_ENTRIES = 512

_MIMES = {b"\xff\xd8\xff": ("image/jpeg", "jpg"), b"\x89PNG\r\n\x1a\n": ("image/png", "png")}
_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 7: 1, 9: 4, 10: 8}  # TIFF field type → bytes
_TAG_EXIF_IFD, _TAG_GPS_IFD, _TAG_DATETIME = 0x8769, 0x8825, 0x0132
_TAG_ORIGINAL, _TAG_OFFSET_ORIGINAL, _TAG_ORIENTATION = 0x9003, 0x9011, 0x0112


class NotAPhoto(KitError, ValueError):
    """An upload or inbox file that is not a photo the kit can take."""


class BadExif(KitError, ValueError):
    """An EXIF block that cannot be read: the photo is kept without its metadata."""


def _bad(zh: str, en: str) -> BadExif:
    return BadExif(f"EXIF 无效：{zh}", f"invalid EXIF: {en}")


@dataclass(frozen=True, slots=True)
class Exif:
    """What the kit keeps of a photo's EXIF: when and where it was taken."""

    taken: str | None = None  # camera's local time, "YYYY:MM:DD HH:MM:SS"
    offset: str | None = None  # its UTC offset when the camera recorded it, "+08:00"
    position: Position | None = None
    orientation: int = 1  # how the camera was held: 1 upright … 8 (EXIF 0x0112); see upright()


class _Tiff:
    """Bounds-checked reads in a TIFF structure (the body of an EXIF block)."""

    def __init__(self, data: bytes) -> None:
        if len(data) < 8 or data[:2] not in (b"II", b"MM"):
            raise _bad("缺少 TIFF 头", "no TIFF header")
        self.data = data
        self.order = "<" if data[:2] == b"II" else ">"
        if self.unpack("H", 2)[0] != 42:
            raise _bad("TIFF 标记不是 42", "TIFF magic is not 42")

    def unpack(self, fmt: str, offset: int) -> tuple[int, ...]:
        size = struct.calcsize(self.order + fmt)
        if not 0 <= offset <= len(self.data) - size:
            raise _bad(f"偏移 {offset} 越界", f"offset {offset} out of bounds")
        return struct.unpack_from(self.order + fmt, self.data, offset)

    def ifd(self, offset: int) -> dict[int, tuple[int, int, int]]:
        """tag → (type, count, offset of its value) for the entries of one IFD."""
        (count,) = self.unpack("H", offset)
        if count > MAX_IFD_ENTRIES:
            raise _bad(f"目录项过多：{count}", f"too many directory entries: {count}")
        entries = {}
        for i in range(count):
            at = offset + 2 + 12 * i
            tag, kind, n = self.unpack("HHI", at)
            size = _TYPE_SIZES.get(kind, 0) * n
            value_at = at + 8 if size <= 4 else self.unpack("I", at + 8)[0]
            if kind in _TYPE_SIZES and value_at + size > len(self.data):
                raise _bad(f"标签 {tag:#x} 的值越界", f"value of tag {tag:#x} out of bounds")
            entries[tag] = (kind, n, value_at)
        return entries

    def text(self, entry: tuple[int, int, int] | None) -> str | None:
        if entry is None:
            return None
        kind, n, at = entry
        if kind != 2:
            raise _bad("文字标签类型错误", "text tag has the wrong type")
        raw = self.data[at : at + n].split(b"\0", 1)[0]
        return raw.decode("ascii", "replace").strip() or None

    def short(self, entry: tuple[int, int, int] | None) -> int | None:
        """A single SHORT value; None if absent or of another type."""
        if entry is None or entry[0] != 3 or entry[1] != 1:
            return None
        return self.unpack("H", entry[2])[0]

    def rationals(self, entry: tuple[int, int, int], want: int) -> list[float]:
        kind, n, at = entry
        if kind != 5 or n != want:
            raise _bad("GPS 数值格式错误", "GPS value has the wrong format")
        values = []
        for i in range(n):
            num, den = self.unpack("II", at + 8 * i)
            if den == 0:
                raise _bad("GPS 数值分母为零", "GPS value divides by zero")
            values.append(num / den)
        return values


def exif_of(jpeg: bytes) -> Exif:
    """The EXIF time and position of a JPEG; an empty :class:`Exif` if it has none."""
    block = _app1_exif(jpeg)
    if block is None:
        return Exif()
    tiff = _Tiff(block)
    ifd0 = tiff.ifd(tiff.unpack("I", 4)[0])
    taken, offset = tiff.text(ifd0.get(_TAG_DATETIME)), None
    orientation = tiff.short(ifd0.get(_TAG_ORIENTATION)) or 1
    if not 1 <= orientation <= 8:
        orientation = 1  # meaningless: the pixels are taken as stored
    if (pointer := ifd0.get(_TAG_EXIF_IFD)) is not None:
        sub = tiff.ifd(tiff.unpack("I", pointer[2])[0])
        taken = tiff.text(sub.get(_TAG_ORIGINAL)) or taken
        offset = tiff.text(sub.get(_TAG_OFFSET_ORIGINAL))
    position = None
    if (pointer := ifd0.get(_TAG_GPS_IFD)) is not None:
        position = _position(tiff, tiff.ifd(tiff.unpack("I", pointer[2])[0]))
    return Exif(taken, offset, position, orientation)


def _app1_exif(jpeg: bytes) -> bytes | None:
    """The TIFF body of the JPEG's EXIF APP1 segment, found by walking the markers."""
    if jpeg[:2] != b"\xff\xd8":
        raise _bad("不是 JPEG", "not a JPEG")
    at = 2
    while at + 4 <= len(jpeg):
        if jpeg[at] != 0xFF:
            raise _bad(f"偏移 {at} 处缺少标记", f"no marker at offset {at}")
        marker = jpeg[at + 1]
        if marker == 0xFF:  # fill byte before a marker
            at += 1
            continue
        if marker in (0xD9, 0xDA):  # end of image, start of scan: no metadata after
            return None
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            at += 2
            continue
        (length,) = struct.unpack_from(">H", jpeg, at + 2)
        if length < 2 or at + 2 + length > len(jpeg):
            raise _bad(f"段长度 {length} 无效", f"segment length {length} is invalid")
        body = jpeg[at + 4 : at + 2 + length]
        if marker == 0xE1 and body.startswith(b"Exif\0\0"):
            return body[6:]
        at += 2 + length
    return None


def _position(tiff: _Tiff, gps: dict[int, tuple[int, int, int]]) -> Position | None:
    if 2 not in gps or 4 not in gps:
        return None
    lat_d, lat_m, lat_s = tiff.rationals(gps[2], 3)
    lon_d, lon_m, lon_s = tiff.rationals(gps[4], 3)
    lat = (lat_d + lat_m / 60 + lat_s / 3600) * (-1 if tiff.text(gps.get(1)) == "S" else 1)
    lon = (lon_d + lon_m / 60 + lon_s / 3600) * (-1 if tiff.text(gps.get(3)) == "W" else 1)
    alt = None
    if 6 in gps:
        (alt,) = tiff.rationals(gps[6], 1)
        below = gps.get(5)
        if below is not None and below[0] == 1 and tiff.data[below[2] : below[2] + 1] == b"\x01":
            alt = -alt
    try:
        return Position(round(lat, 7), round(lon, 7), alt)
    except BadItem as err:
        raise _bad(err.zh, err.en) from None


def is_photo(head: bytes) -> bool:
    """Whether a file starting with ``head`` is a photo the kit takes (JPEG or PNG).

    Raises :class:`NotAPhoto` for an HEIC photo, which it cannot take.
    """
    if head[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1"):
        raise NotAPhoto(
            "不支持 HEIC 照片：请将相机设为“兼容性最佳”（JPEG）",
            "HEIC photos are not supported: set the camera to 'Most Compatible' (JPEG)",
        )
    return any(head.startswith(magic) for magic in _MIMES)


def image_kind(data: bytes) -> tuple[str, str]:
    """(MIME type, file suffix) of a photo the kit takes: JPEG or PNG, by its first bytes."""
    if is_photo(data):
        return next(kind for magic, kind in _MIMES.items() if data.startswith(magic))
    raise NotAPhoto(
        f"不是 JPEG 或 PNG 图像（开头为 {data[:8].hex()}）",
        f"not a JPEG or PNG image (starts with {data[:8].hex()})",
    )


def check_size(size: int) -> None:
    """Refuse an empty or absurdly large photo before reading it."""
    if size == 0:
        raise NotAPhoto("文件为空", "the file is empty")
    if size > MAX_PHOTO_BYTES:
        limit = MAX_PHOTO_BYTES // 1024**2
        raise NotAPhoto(
            f"照片过大：{size} 字节（上限 {limit} MB）",
            f"photo too large: {size} bytes (limit {limit} MB)",
        )


def upright(frame: Frame, orientation: int) -> Frame:
    """The picture as the photographer saw it, from pixels stored with EXIF ``orientation``.

    The fix for each value: 2 mirror; 3 half turn; 4 upside down; 5 transpose (mirror on
    the main diagonal); 6 quarter turn clockwise (a phone held upright); 7 transverse
    (mirror on the other diagonal); 8 quarter turn anticlockwise.
    """
    fixes: dict[int, Callable[[Frame], Any]] = {
        2: lambda f: cv2.flip(f, 1),
        3: lambda f: cv2.rotate(f, cv2.ROTATE_180),
        4: lambda f: cv2.flip(f, 0),
        5: cv2.transpose,
        6: lambda f: cv2.rotate(f, cv2.ROTATE_90_CLOCKWISE),
        7: lambda f: cv2.flip(cv2.transpose(f), -1),
        8: lambda f: cv2.rotate(f, cv2.ROTATE_90_COUNTERCLOCKWISE),
    }
    fix = fixes.get(orientation)
    return frame if fix is None else np.ascontiguousarray(fix(frame), dtype=np.uint8)


def decode_preview(data: bytes) -> Frame:
    """The photo decoded at reduced size for thumbnails (a quarter for big JPEGs: cheap).

    The pixels come as stored: the EXIF orientation is applied by :func:`upright`, from
    the kit's own EXIF reading, not by OpenCV's.
    """
    array = np.frombuffer(data, np.uint8)
    flag = cv2.IMREAD_REDUCED_COLOR_4 if len(data) > 512 * 1024 else cv2.IMREAD_COLOR
    frame = cv2.imdecode(array, flag | cv2.IMREAD_IGNORE_ORIENTATION)
    if frame is None:
        raise NotAPhoto("图像已损坏，无法解码", "the image is damaged and cannot be decoded")
    height, width = frame.shape[:2]
    scale = 4 if flag == cv2.IMREAD_REDUCED_COLOR_4 else 1
    if height * width * scale * scale > MAX_PIXELS:
        raise NotAPhoto(
            f"图像像素过多：{width * scale}x{height * scale}",
            f"image has too many pixels: {width * scale}x{height * scale}",
        )
    return np.asarray(frame, dtype=np.uint8)


class PhotoIntake:
    """Takes photos in: checks, metadata, durable files and the items for the edge."""

    def __init__(self, media_dir: Path, *, clock: Clock = system_clock) -> None:
        self.folder = DerivedFolder(media_dir, media_dir / "photos")
        self.clock = clock

    def take(self, data: bytes, *, source: str) -> list[Pending]:
        """Thumbnails then the full photo, all durable; what the web page's upload calls."""
        check_size(len(data))
        mime, suffix = image_kind(data)
        frame = decode_preview(data)
        exif = Exif()
        if mime == "image/jpeg":
            try:
                exif = exif_of(data)
            except BadExif as err:
                log.warning("photo from %s kept without its metadata: %s", source, err)
        frame = upright(frame, exif.orientation)
        now_ms, clock_ok = self.clock()
        stem = f"{now_ms}-{hashlib.sha256(data).hexdigest()[:12]}"
        info: dict[str, str | bool] = {}
        if exif.taken:
            info["taken"] = exif.taken[:32]
        if exif.offset:
            info["taken_offset"] = exif.offset[:8]
        photo = self.folder.file(
            Derivative(f"{stem}.{suffix}", data, "photo", mime, info),
            source=source,
            parent=None,
            created_ms=now_ms,
            clock_ok=clock_ok,
            position=exif.position,
        )
        made = []
        for name, limit, widths in (
            (f"{stem}-t.webp", FULL_BYTES, FULL_WIDTHS),
            (f"{stem}-tn.webp", NARROW_BYTES, NARROW_WIDTHS),
        ):
            thumb = encode_within(frame, limit, widths)
            small = Derivative(name, thumb, "thumbnail", MIME, {"narrow": limit == NARROW_BYTES})
            made.append(
                self.folder.file(
                    small,
                    source=source,
                    parent=photo.item,
                    created_ms=now_ms,
                    clock_ok=clock_ok,
                    position=exif.position,
                )
            )
        return [*made, photo]
