"""The item: one thing the command centre must receive, with its priority class.

An item is immutable. Clients (web page, mesh, media, CLI) build one with
:func:`new_item`, which validates every field; the edge daemon stores it and
assigns it a kit-local sequence number. The ``uid`` (a UUIDv7 minted by the
client) makes a retried "accept" idempotent.
"""

from __future__ import annotations

import math
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from types import MappingProxyType
from typing import Any

import cbor2

from edge.errors import BadItem
from edge.uuid7 import uuid7

MAX_TEXT_CHARS = 2000
MAX_ENCODED_BYTES = 16 * 1024  # inline payloads only; media travel as files
MAX_DATA_ENTRIES = 32
MAX_DATA_STR = 256
MAX_MEDIA_BYTES = 64 * 1024**3
MIN_SET_CLOCK_MS = 1_577_836_800_000  # 2020-01-01: a GNSS-set clock is never earlier
MAX_CLOCK_MS = 4_102_444_800_000  # 2100-01-01
ALT_RANGE_M = (-1000.0, 20000.0)  # ground, drones and aircraft relays

_DATA_KEY = re.compile(r"[a-z][a-z0-9_]{0,31}\Z")
_MIME = re.compile(r"[a-z]+/[a-z0-9.+-]{1,60}\Z")
_SHA256 = re.compile(r"[0-9a-f]{64}\Z")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


class Priority(IntEnum):
    """Priority classes, most urgent first (ARCHITECTURE.md §3)."""

    P0 = 0  # life: every usable link in parallel until acknowledged
    P1 = 1  # report: best link, retried on others
    P2 = 2  # track: latest value per source supersedes older ones
    P3 = 3  # preview: thumbnails, Codec2 voice, short clips
    P4 = 4  # bulk: full photos, video, audio; only on fast links

    @classmethod
    def parse(cls, text: str) -> Priority:
        key = text.strip().upper()
        if not key.startswith("P"):
            key = "P" + key
        try:
            return cls[key]
        except KeyError:
            raise BadItem(
                f"优先级无效：{text!r}（应为 P0–P4）",
                f"invalid priority {text!r} (expected P0-P4)",
            ) from None


class Kind(StrEnum):
    """What an item is. Each kind has a default class and the classes it may take."""

    SOS = "sos"
    TRAPPED = "trapped"
    CASUALTIES = "casualties"
    NEEDS = "needs"
    SITUATION = "situation"
    MESSAGE = "message"
    RECEIPT = "receipt"
    OTHER = "other"
    TRACK = "track"
    SENSOR = "sensor"
    THUMBNAIL = "thumbnail"
    PREVIEW = "preview"
    VOICE = "voice"
    PHOTO = "photo"
    VIDEO = "video"
    AUDIO = "audio"
    AUDIT = "audit"  # a batch of the kit's chained audit log (security.mirror)

    @property
    def default_priority(self) -> Priority:
        return _ALLOWED[self][0]

    @property
    def allowed_priorities(self) -> tuple[Priority, ...]:
        return _ALLOWED[self]

    @property
    def is_media(self) -> bool:
        return self in _MEDIA_KINDS

    @classmethod
    def parse(cls, text: str) -> Kind:
        try:
            return cls(text.strip().lower())
        except ValueError:
            names = ", ".join(k.value for k in cls)
            raise BadItem(
                f"类型无效：{text!r}（可选：{names}）",
                f"invalid kind {text!r} (one of: {names})",
            ) from None


P = Priority
_ALLOWED: dict[Kind, tuple[Priority, ...]] = {
    Kind.SOS: (P.P0,),
    Kind.TRAPPED: (P.P0, P.P1),
    Kind.CASUALTIES: (P.P1, P.P0),
    Kind.NEEDS: (P.P1, P.P0),
    Kind.SITUATION: (P.P1, P.P0),
    Kind.MESSAGE: (P.P1, P.P0),
    Kind.RECEIPT: (P.P1,),
    Kind.OTHER: (P.P1, P.P0),
    Kind.TRACK: (P.P2,),
    Kind.SENSOR: (P.P2,),
    Kind.THUMBNAIL: (P.P3,),
    Kind.PREVIEW: (P.P3,),
    Kind.VOICE: (P.P3,),
    Kind.PHOTO: (P.P4,),
    Kind.VIDEO: (P.P4,),
    Kind.AUDIO: (P.P4,),
    Kind.AUDIT: (P.P4,),
}
_MEDIA_KINDS = frozenset(
    {Kind.THUMBNAIL, Kind.PREVIEW, Kind.VOICE, Kind.PHOTO, Kind.VIDEO, Kind.AUDIO}
)

DataValue = bool | int | float | str


@dataclass(frozen=True, slots=True)
class Position:
    """WGS-84 position. Altitude in metres above mean sea level."""

    lat: float
    lon: float
    alt_m: float | None = None
    accuracy_m: float | None = None

    def __post_init__(self) -> None:
        for name in ("lat", "lon", "alt_m", "accuracy_m"):
            value = getattr(self, name)
            if value is None and name in ("alt_m", "accuracy_m"):
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise BadItem(f"位置字段 {name} 不是数字", f"position {name} is not a number")
            if not math.isfinite(value):
                raise BadItem(f"位置字段 {name} 不是有限数", f"position {name} is not finite")
        if not -90.0 <= self.lat <= 90.0:
            raise BadItem(
                f"纬度超出范围（-90…90）：{self.lat}",
                f"latitude out of range (-90..90): {self.lat}",
            )
        if not -180.0 <= self.lon <= 180.0:
            raise BadItem(
                f"经度超出范围（-180…180）：{self.lon}",
                f"longitude out of range (-180..180): {self.lon}",
            )
        lo, hi = ALT_RANGE_M
        if self.alt_m is not None and not lo <= self.alt_m <= hi:
            raise BadItem(
                f"海拔超出范围（{lo:g}…{hi:g} 米）：{self.alt_m}",
                f"altitude out of range ({lo:g}..{hi:g} m): {self.alt_m}",
            )
        if self.accuracy_m is not None and not 0.0 <= self.accuracy_m <= 100_000.0:
            raise BadItem(
                f"定位精度超出范围（0…100000 米）：{self.accuracy_m}",
                f"accuracy out of range (0..100000 m): {self.accuracy_m}",
            )

    @classmethod
    def parse(cls, text: str) -> Position:
        """Parse ``"lat,lon"`` or ``"lat,lon,alt"`` as typed on a command line."""
        parts = [p.strip() for p in text.split(",")]
        if len(parts) not in (2, 3):
            raise BadItem(
                f"位置格式应为 纬度,经度[,海拔]：{text!r}",
                f"position must be lat,lon[,alt]: {text!r}",
            )
        try:
            numbers = [float(p) for p in parts]
        except ValueError:
            raise BadItem(
                f"位置格式应为 纬度,经度[,海拔]：{text!r}",
                f"position must be lat,lon[,alt]: {text!r}",
            ) from None
        return cls(numbers[0], numbers[1], numbers[2] if len(numbers) == 3 else None)


@dataclass(frozen=True, slots=True)
class MediaRef:
    """A media file in the kit's media folder, made durable before its item is accepted."""

    path: str  # relative to the media folder
    size: int
    sha256: str
    mime: str

    def __post_init__(self) -> None:
        p = self.path
        if (
            not isinstance(p, str)
            or not 0 < len(p) <= 255
            or p.startswith("/")
            or "\\" in p
            or any(part in ("", ".", "..") for part in p.split("/"))
            or _CONTROL.search(p)
        ):
            raise BadItem(f"媒体路径无效：{p!r}", f"invalid media path: {p!r}")
        if isinstance(self.size, bool) or not isinstance(self.size, int):
            raise BadItem("媒体大小不是整数", "media size is not an integer")
        if not 0 <= self.size <= MAX_MEDIA_BYTES:
            raise BadItem(f"媒体大小超出范围：{self.size}", f"media size out of range: {self.size}")
        if not isinstance(self.sha256, str) or not _SHA256.match(self.sha256):
            raise BadItem("媒体校验值不是 SHA-256 十六进制", "media checksum is not SHA-256 hex")
        if not isinstance(self.mime, str) or not _MIME.match(self.mime):
            raise BadItem(f"媒体类型无效：{self.mime!r}", f"invalid media type: {self.mime!r}")


def _check_text(text: object) -> None:
    if not isinstance(text, str):
        raise BadItem("文字不是字符串", "text is not a string")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadItem("文字不是有效的 UTF-8", "text is not valid UTF-8") from None
    if len(text) > MAX_TEXT_CHARS:
        raise BadItem(
            f"文字过长：{len(text)} 字（上限 {MAX_TEXT_CHARS}）",
            f"text too long: {len(text)} characters (limit {MAX_TEXT_CHARS})",
        )
    if _CONTROL.search(text):
        raise BadItem("文字含控制字符", "text contains control characters")


def _check_data(data: Mapping[str, Any]) -> None:
    if len(data) > MAX_DATA_ENTRIES:
        raise BadItem(
            f"数据字段过多：{len(data)}（上限 {MAX_DATA_ENTRIES}）",
            f"too many data fields: {len(data)} (limit {MAX_DATA_ENTRIES})",
        )
    for key, value in data.items():
        if not isinstance(key, str) or not _DATA_KEY.match(key):
            raise BadItem(f"数据字段名无效：{key!r}", f"invalid data field name: {key!r}")
        if isinstance(value, bool):
            continue
        if isinstance(value, int):
            if not -(2**63) <= value < 2**63:
                raise BadItem(f"数据字段 {key} 超出 64 位整数", f"data field {key} exceeds 64 bits")
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise BadItem(f"数据字段 {key} 不是有限数", f"data field {key} is not finite")
        elif isinstance(value, str):
            _check_text(value)
            if len(value) > MAX_DATA_STR:
                raise BadItem(
                    f"数据字段 {key} 过长（上限 {MAX_DATA_STR} 字）",
                    f"data field {key} too long (limit {MAX_DATA_STR} characters)",
                )
        else:
            raise BadItem(
                f"数据字段 {key} 类型不支持：{type(value).__name__}",
                f"data field {key} has unsupported type {type(value).__name__}",
            )
    count = data.get("count")
    if count is not None and (
        isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= 1_000_000
    ):
        raise BadItem(f"人数无效：{count!r}", f"invalid count: {count!r}")


@dataclass(frozen=True, slots=True)
class Item:
    """One thing the centre must receive. Construct with :func:`new_item` or :func:`decode`."""

    uid: uuid.UUID
    kind: Kind
    priority: Priority
    created_ms: int  # GNSS time when ``clock_ok``, else the kit's unsynchronised clock
    clock_ok: bool
    source: str  # who produced it: "cli", "web", "mesh:!a1b2c3d4", "kit" …
    text: str | None = None
    position: Position | None = None
    data: Mapping[str, DataValue] = field(default_factory=lambda: MappingProxyType({}))
    media: MediaRef | None = None
    parent: uuid.UUID | None = None  # set on derivatives (thumbnail of a photo …)

    def __post_init__(self) -> None:
        if not isinstance(self.uid, uuid.UUID):
            raise BadItem("条目编号无效", "invalid item id")
        if not isinstance(self.kind, Kind):
            raise BadItem("条目类型无效", "invalid item kind")
        if not isinstance(self.priority, Priority):
            raise BadItem("优先级无效", "invalid priority")
        if self.priority not in self.kind.allowed_priorities:
            allowed = "/".join(p.name for p in self.kind.allowed_priorities)
            raise BadItem(
                f"{self.kind.value} 的优先级只能是 {allowed}，而不是 {self.priority.name}",
                f"{self.kind.value} must be {allowed}, not {self.priority.name}",
            )
        if not isinstance(self.clock_ok, bool):
            raise BadItem("时钟标志不是布尔值", "clock flag is not a boolean")
        if isinstance(self.created_ms, bool) or not isinstance(self.created_ms, int):
            raise BadItem("创建时间不是整数", "creation time is not an integer")
        low = MIN_SET_CLOCK_MS if self.clock_ok else 0
        if not low <= self.created_ms <= MAX_CLOCK_MS:
            raise BadItem(
                f"创建时间不合理：{self.created_ms}",
                f"implausible creation time: {self.created_ms}",
            )
        if not isinstance(self.source, str) or not 0 < len(self.source) <= 64:
            raise BadItem("来源必须是 1–64 个字符", "source must be 1-64 characters")
        _check_text(self.source)
        if self.text is not None:
            _check_text(self.text)
        if self.position is not None and not isinstance(self.position, Position):
            raise BadItem("位置无效", "invalid position")
        if not isinstance(self.data, Mapping):
            raise BadItem("数据不是映射", "data is not a mapping")
        _check_data(self.data)
        if self.kind.is_media and self.media is None:
            raise BadItem(
                f"{self.kind.value} 需要媒体文件", f"{self.kind.value} needs a media file"
            )
        if not self.kind.is_media and self.media is not None:
            raise BadItem(
                f"{self.kind.value} 不能带媒体文件", f"{self.kind.value} cannot carry a media file"
            )
        if self.media is not None and not isinstance(self.media, MediaRef):
            raise BadItem("媒体引用无效", "invalid media reference")
        if self.parent is not None and not isinstance(self.parent, uuid.UUID):
            raise BadItem("父条目编号无效", "invalid parent id")
        if self.kind is Kind.TRACK and self.position is None:
            raise BadItem("轨迹点需要位置", "a track needs a position")
        if (
            self.text is None
            and self.position is None
            and not self.data
            and self.media is None
            and self.kind is not Kind.SOS
        ):
            raise BadItem("条目没有内容", "the item has no content")
        # Freeze the data mapping so the item stays immutable.
        object.__setattr__(self, "data", MappingProxyType(dict(self.data)))

    @property
    def size(self) -> int:
        """Bytes the centre must receive: the encoded item plus its media file."""
        return len(encode(self)) + (self.media.size if self.media else 0)

    def __hash__(self) -> int:
        return hash(self.uid)


def new_item(
    kind: Kind | str,
    *,
    source: str,
    priority: Priority | str | None = None,
    text: str | None = None,
    position: Position | None = None,
    data: Mapping[str, DataValue] | None = None,
    media: MediaRef | None = None,
    parent: uuid.UUID | None = None,
    created_ms: int | None = None,
    clock_ok: bool | None = None,
) -> Item:
    """Build and validate a new item; time and clock state default to now and the system clock."""
    from drivers.clock import clock_synchronised

    k = kind if isinstance(kind, Kind) else Kind.parse(kind)
    if priority is None:
        prio = k.default_priority
    elif isinstance(priority, Priority):
        prio = priority
    else:
        prio = Priority.parse(priority)
    now = int(time.time() * 1000) if created_ms is None else created_ms
    item = Item(
        uid=uuid7(),
        kind=k,
        priority=prio,
        created_ms=now,
        clock_ok=clock_synchronised() if clock_ok is None else clock_ok,
        source=source,
        text=text,
        position=position,
        data=MappingProxyType(dict(data or {})),
        media=media,
        parent=parent,
    )
    check_size(item)
    return item


def check_size(item: Item) -> bytes:
    """Encode ``item`` and refuse it if the inline part is too large."""
    blob = encode(item)
    if len(blob) > MAX_ENCODED_BYTES:
        raise BadItem(
            f"内容过大：{len(blob)} 字节（上限 {MAX_ENCODED_BYTES}），大文件请作为媒体提交",
            f"payload too large: {len(blob)} bytes (limit {MAX_ENCODED_BYTES}); "
            "send large content as media",
        )
    return blob


# Compact CBOR map with small integer keys; stable across versions (add keys, never reuse).
_K_UID, _K_KIND, _K_PRIO, _K_CREATED, _K_CLOCK, _K_SOURCE = 0, 1, 2, 3, 4, 5
_K_TEXT, _K_POS, _K_DATA, _K_MEDIA, _K_PARENT = 6, 7, 8, 9, 10
_KNOWN_KEYS = frozenset(range(11))


def to_wire(item: Item) -> dict[int, Any]:
    """The item as a CBOR-ready map with integer keys."""
    out: dict[int, Any] = {
        _K_UID: item.uid.bytes,
        _K_KIND: item.kind.value,
        _K_PRIO: int(item.priority),
        _K_CREATED: item.created_ms,
        _K_CLOCK: item.clock_ok,
        _K_SOURCE: item.source,
    }
    if item.text is not None:
        out[_K_TEXT] = item.text
    if item.position is not None:
        p = item.position
        out[_K_POS] = [p.lat, p.lon, p.alt_m, p.accuracy_m]
    if item.data:
        out[_K_DATA] = dict(item.data)
    if item.media is not None:
        m = item.media
        out[_K_MEDIA] = [m.path, m.size, m.sha256, m.mime]
    if item.parent is not None:
        out[_K_PARENT] = item.parent.bytes
    return out


def encode(item: Item) -> bytes:
    return cbor2.dumps(to_wire(item), canonical=True)


def _uuid(value: object, what: str) -> uuid.UUID:
    if not isinstance(value, bytes) or len(value) != 16:
        raise BadItem(f"{what}不是 16 字节", f"{what} is not 16 bytes")
    return uuid.UUID(bytes=value)


def from_wire(raw: object) -> Item:
    """Rebuild an item from :func:`to_wire`'s map, validating everything."""
    if not isinstance(raw, dict):
        raise BadItem("条目不是映射", "item is not a map")
    unknown = set(raw) - _KNOWN_KEYS
    if unknown:
        raise BadItem(
            f"条目含未知字段：{sorted(map(str, unknown))}",
            f"unknown item fields: {sorted(map(str, unknown))}",
        )
    missing = {_K_UID, _K_KIND, _K_PRIO, _K_CREATED, _K_CLOCK, _K_SOURCE} - set(raw)
    if missing:
        raise BadItem(f"条目缺少字段：{sorted(missing)}", f"item lacks fields: {sorted(missing)}")
    try:
        kind = Kind(raw[_K_KIND])
        prio_raw = raw[_K_PRIO]
        if isinstance(prio_raw, bool) or not isinstance(prio_raw, int):
            raise ValueError
        prio = Priority(prio_raw)
    except (ValueError, TypeError):
        raise BadItem("条目类型或优先级无效", "invalid item kind or priority") from None
    pos = raw.get(_K_POS)
    position = None
    if pos is not None:
        if not isinstance(pos, list) or len(pos) != 4:
            raise BadItem("位置格式无效", "invalid position encoding")
        position = Position(*pos)
    med = raw.get(_K_MEDIA)
    media = None
    if med is not None:
        if not isinstance(med, list) or len(med) != 4:
            raise BadItem("媒体引用格式无效", "invalid media encoding")
        media = MediaRef(*med)
    data = raw.get(_K_DATA, {})
    if not isinstance(data, dict):
        raise BadItem("数据不是映射", "data is not a mapping")
    return Item(
        uid=_uuid(raw[_K_UID], "条目编号"),
        kind=kind,
        priority=prio,
        created_ms=raw[_K_CREATED],
        clock_ok=raw[_K_CLOCK],
        source=raw[_K_SOURCE],
        text=raw.get(_K_TEXT),
        position=position,
        data=data,
        media=media,
        parent=_uuid(raw[_K_PARENT], "父条目编号") if _K_PARENT in raw else None,
    )


def decode(blob: bytes) -> Item:
    """Parse bytes from outside; any defect raises :class:`BadItem`, never anything else."""
    if len(blob) > MAX_ENCODED_BYTES:
        raise BadItem(f"条目过大：{len(blob)} 字节", f"item too large: {len(blob)} bytes")
    try:
        raw = cbor2.loads(blob)
    except Exception as exc:  # cbor2 raises several types on malformed input
        raise BadItem(f"条目编码无效：{exc}", f"malformed item encoding: {exc}") from None
    return from_wire(raw)
