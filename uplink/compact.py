"""Compact item codec: the payload of an ITEMS frame on narrow links.

An ITEMS payload is one or more ``varint L, body`` records (L = body bytes). The
16-byte uid is not sent: the centre deduplicates by (kit id, item seq), and an
unpacked item gets :func:`narrow_uid` (kit id, seq) as its uid. Big-endian sizes,
LEB128 varints and ``ctext`` (GB18030 or UTF-8, flagged) as in :mod:`uplink.frames`::

    body   = varint seq                      kit-local store sequence, 0..2^62-1
             u8     kind                     KIND_CODES
             u16    flags                    bit 0-2 priority (0 = P0) | 3 clock_ok | 4 POS
                                             | 5 ALT | 6 ACC | 7 TEXT | 8 REF | 9 BLOB
                                             | 10 PARENT | 11-15 zero
             u32    created                  seconds since 2020-01-01T00:00Z when clock_ok,
                                             else since 1970-01-01 (unsynchronised clock)
             source                          u8 code: 0 ctext follows | 1 "kit" | 2 "web"
                                             | 3 "cli" | 4 "button" | 5 "mesh:!" + u32 node id
                                             | 6 "kit:status"
             [POS]    i32 lat, i32 lon       degrees × 10^7 (1e-7° ≈ 1 cm)
             [ALT]    i16 metres             rounded (needs POS)
             [ACC]    varint metres          rounded up (needs POS)
             [TEXT]   ctext
             [REF]    varint size, 8 B sha256 prefix, mime      media reference only
             [BLOB]   varint n, n bytes, mime                   whole P3 media file inline
             [PARENT] 16 B uuid              the parent item's real uid
             data entries to the end of the body
    mime   = u8 code (MIME_CODES), 0 = ctext follows
    entry  = u8 (type << 5 | key): key 0..30 = DATA_KEYS[key], 31 = u8 n + n ASCII bytes
             follow; then by type: 0 varint v | 1 varint -1-v (negative) | 2 false
             | 3 true | 4 f32 (when exact) | 5 f64 | 6 ctext

Entries are sorted (known keys by code, then named keys by name), so one item always
packs to the same bytes. Unpacked media: path ``narrow/<first 16 hex of sha256>``;
a REF's sha256 is the 8-byte prefix padded with "0" (compare only the first 16 hex);
a BLOB's size and sha256 are the blob's own. Data uses this TLV rather than CBOR: it
needs no map header (data runs to the end) and carries Chinese strings as GB18030.
"""

from __future__ import annotations

import hashlib
import math
import re
import struct
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from edge.errors import BadItem
from edge.item import MAX_MEDIA_BYTES, DataValue, Item, Kind, MediaRef, Position, Priority, new_item
from uplink.frames import (
    MAX_MESSAGE_BYTES,
    MTU_BEIDOU,
    SINGLE_OVERHEAD,
    BadFrame,
    Reader,
    decode_frame,
    fragment,
    pack_text,
    put_varint,
)

EPOCH_2020_S = 1_577_836_800
POS_SCALE = 10_000_000
SHA_PREFIX_BYTES = 8
MAX_BLOB_BYTES = 1600  # a thumbnail or a short Codec2 note; fits one BDS-3 regional message
MAX_SEQ = (1 << 62) - 1  # the low 62 bits of narrow_uid

# Stable tables: add codes, never reuse or renumber one.
KIND_CODES: dict[Kind, int] = {
    Kind.SOS: 1,
    Kind.TRAPPED: 2,
    Kind.CASUALTIES: 3,
    Kind.NEEDS: 4,
    Kind.SITUATION: 5,
    Kind.MESSAGE: 6,
    Kind.RECEIPT: 7,
    Kind.OTHER: 8,
    Kind.TRACK: 9,
    Kind.SENSOR: 10,
    Kind.THUMBNAIL: 11,
    Kind.PREVIEW: 12,
    Kind.VOICE: 13,
    Kind.PHOTO: 14,
    Kind.VIDEO: 15,
    Kind.AUDIO: 16,
    Kind.AUDIT: 17,
}
SOURCE_CODES: dict[str, int] = {"kit": 1, "web": 2, "cli": 3, "button": 4, "kit:status": 6}
MIME_CODES: dict[str, int] = {
    "image/jpeg": 1,
    "image/webp": 2,
    "image/png": 3,
    "image/avif": 4,
    "video/mp4": 5,
    "video/mp2t": 6,
    "audio/ogg": 7,
    "audio/opus": 8,
    "audio/codec2": 9,
    "audio/wav": 10,
}
DATA_KEYS: tuple[str, ...] = (
    "count",
    "injured",
    "dead",
    "missing",
    "trapped",
    "rescued",
    "need",
    "severity",
    "order",
    "team",
    "battery",
    "rssi",
    "snr",
    "temp_c",
    "heading",
    "speed",
    # The kit's periodic status (edge/statusreport.py): one Beidou message with all of it.
    "battery_pct",
    "hours_left",
    "mains",
    "power",
    "backlog",
    "backlog_p0",
    "backlog_p1",
    "links",
    "disk_pct",
    "fix",
)

_KINDS = {code: kind for kind, code in KIND_CODES.items()}
_SOURCES = {code: name for name, code in SOURCE_CODES.items()}
_MIMES = {code: name for name, code in MIME_CODES.items()}
_DATA_CODES = {name: code for code, name in enumerate(DATA_KEYS)}
_SRC_LITERAL, _SRC_MESH = 0, 5
_MESH_SOURCE = re.compile(r"mesh:!([0-9a-f]{8})\Z")
_NAMED_KEY = 31

_CLOCK, _POS, _ALT, _ACC, _TEXT = 1 << 3, 1 << 4, 1 << 5, 1 << 6, 1 << 7
_REF, _BLOB, _PARENT = 1 << 8, 1 << 9, 1 << 10
_RESERVED = 0xF800
_T_UINT, _T_NINT, _T_FALSE, _T_TRUE, _T_F32, _T_F64, _T_TEXT = range(7)

# UUIDv8 layout: kit id (16 bits) | ASCII "narw" (32) | version 8 | 12 zero bits | variant 10 | seq.
_UID_MARK = int.from_bytes(b"narw", "big")


def narrow_uid(kit_id: int, seq: int) -> uuid.UUID:
    """The uid an item unpacked from a narrow link gets: reversible, the same at every centre."""
    if not 0 <= kit_id <= 0xFFFF or not 0 <= seq <= MAX_SEQ:
        raise BadFrame(
            f"无法生成编号：套件 {kit_id}，序号 {seq}", f"no uid for kit {kit_id}, seq {seq}"
        )
    return uuid.UUID(int=kit_id << 112 | _UID_MARK << 80 | 0x8 << 76 | 0b10 << 62 | seq)


def narrow_key(uid: uuid.UUID) -> tuple[int, int] | None:
    """(kit id, seq) of a :func:`narrow_uid`, or None for any other uid."""
    value = uid.int
    marked = value >> 80 & 0xFFFF_FFFF == _UID_MARK and value >> 64 & 0xFFFF == 0x8000
    if not marked or uid.variant != uuid.RFC_4122:
        return None
    return value >> 112, value & MAX_SEQ


@dataclass(frozen=True, slots=True)
class Unpacked:
    """One item from an ITEMS payload, with its inline media file when it carried one."""

    seq: int
    item: Item
    blob: bytes | None = None


def _pack_source(source: str) -> bytes:
    code = SOURCE_CODES.get(source)
    if code is not None:
        return bytes([code])
    mesh = _MESH_SOURCE.match(source)
    if mesh:
        return bytes([_SRC_MESH]) + bytes.fromhex(mesh.group(1))
    return bytes([_SRC_LITERAL]) + pack_text(source)


def _pack_mime(mime: str) -> bytes:
    code = MIME_CODES.get(mime)
    return bytes([code]) if code is not None else bytes([0]) + pack_text(mime)


def _pack_value(value: DataValue) -> tuple[int, bytes]:
    if isinstance(value, bool):
        return (_T_TRUE if value else _T_FALSE), b""
    if isinstance(value, int):
        return (_T_UINT, put_varint(value)) if value >= 0 else (_T_NINT, put_varint(-1 - value))
    if isinstance(value, float):
        try:
            single = struct.pack(">f", value)
            if struct.unpack(">f", single)[0] == value:
                return _T_F32, single
        except OverflowError:
            pass
        return _T_F64, struct.pack(">d", value)
    return _T_TEXT, pack_text(value)


def _pack_data(data: Mapping[str, DataValue]) -> bytes:
    entries: list[tuple[tuple[int, str], bytes]] = []
    for key, value in data.items():
        vtype, encoded = _pack_value(value)
        code = _DATA_CODES.get(key)
        if code is None:
            name = key.encode("ascii")
            head = bytes([vtype << 5 | _NAMED_KEY, len(name)]) + name
        else:
            head = bytes([vtype << 5 | code])
        entries.append(((_NAMED_KEY if code is None else code, key), head + encoded))
    return b"".join(entry for _, entry in sorted(entries))


def _check_blob(seq: int, item: Item, blob: bytes) -> None:
    media = item.media
    if media is None or item.priority is not Priority.P3:
        raise BadFrame(
            f"条目 {seq}：只有 P3 媒体（缩略图、预览、语音）可内联发送",
            f"item {seq}: only P3 media (thumbnail, preview, voice) may travel inline",
        )
    if len(blob) > MAX_BLOB_BYTES:
        raise BadFrame(
            f"条目 {seq}：内联内容 {len(blob)} 字节，上限 {MAX_BLOB_BYTES}",
            f"item {seq}: inline content is {len(blob)} bytes, limit {MAX_BLOB_BYTES}",
        )
    if len(blob) != media.size or hashlib.sha256(blob).hexdigest() != media.sha256:
        raise BadFrame(
            f"条目 {seq}：内联内容与媒体引用的大小或校验值不符",
            f"item {seq}: inline content does not match the media reference's size or checksum",
        )


def pack_item(seq: int, item: Item, blob: bytes | None = None) -> bytes:
    """One ``varint L, body`` record; ``blob`` is the whole media file of a P3 item, if inline."""
    if not 0 <= seq <= MAX_SEQ:
        raise BadFrame(f"条目序号超出 0…2^62-1：{seq}", f"item sequence outside 0..2^62-1: {seq}")
    flags = int(item.priority) | (_CLOCK if item.clock_ok else 0)
    seconds = item.created_ms // 1000 - (EPOCH_2020_S if item.clock_ok else 0)
    tail = bytearray()
    pos = item.position
    if pos is not None:
        flags |= _POS
        tail += struct.pack(">ii", round(pos.lat * POS_SCALE), round(pos.lon * POS_SCALE))
        if pos.alt_m is not None:
            flags |= _ALT
            tail += struct.pack(">h", round(pos.alt_m))
        if pos.accuracy_m is not None:
            flags |= _ACC
            tail += put_varint(math.ceil(pos.accuracy_m))  # a bound: never claim better than known
    if item.text is not None:
        flags |= _TEXT
        tail += pack_text(item.text)
    if blob is not None:
        _check_blob(seq, item, blob)
    media = item.media
    if media is not None and blob is None:
        flags |= _REF
        tail += put_varint(media.size) + bytes.fromhex(media.sha256)[:SHA_PREFIX_BYTES]
        tail += _pack_mime(media.mime)
    elif media is not None and blob is not None:
        flags |= _BLOB
        tail += put_varint(len(blob)) + blob + _pack_mime(media.mime)
    if item.parent is not None:
        flags |= _PARENT
        tail += item.parent.bytes
    tail += _pack_data(item.data)
    body = (
        put_varint(seq)
        + bytes([KIND_CODES[item.kind]])
        + struct.pack(">HI", flags, seconds)
        + _pack_source(item.source)
        + tail
    )
    return put_varint(len(body)) + body


def pack_items(
    entries: Sequence[tuple[int, Item]], *, blobs: Mapping[int, bytes] | None = None
) -> bytes:
    """ITEMS payload for (seq, item) pairs, in order; ``blobs`` maps a seq to its inline file."""
    if not entries:
        raise BadFrame("没有要打包的条目", "no items to pack")
    seqs = [seq for seq, _ in entries]
    if len(set(seqs)) != len(seqs):
        raise BadFrame("条目序号重复", "duplicate item sequence")
    inline = blobs or {}
    return b"".join(pack_item(seq, item, inline.get(seq)) for seq, item in entries)


def count_fitting(
    entries: Sequence[tuple[int, Item]], mtu: int, *, blobs: Mapping[int, bytes] | None = None
) -> int:
    """How many leading entries fit one unfragmented frame of ``mtu`` bytes, tag included."""
    room = mtu - SINGLE_OVERHEAD
    inline = blobs or {}
    fitting = 0
    for seq, item in entries:
        room -= len(pack_item(seq, item, inline.get(seq)))
        if room < 0:
            break
        fitting += 1
    return fitting


def _read_source(r: Reader) -> str:
    code = r.u8("来源", "source")
    if code == _SRC_LITERAL:
        return r.text("来源", "source", max_bytes=256)
    if code == _SRC_MESH:
        return "mesh:!" + r.take(4, "来源节点号", "source node id").hex()
    name = _SOURCES.get(code)
    if name is None:
        raise r.fail(f"未知来源代码：{code}", f"unknown source code {code}")
    return name


def _read_mime(r: Reader) -> str:
    code = r.u8("媒体类型", "media type")
    if code == 0:
        return r.text("媒体类型", "media type", max_bytes=128)
    mime = _MIMES.get(code)
    if mime is None:
        raise r.fail(f"未知媒体类型代码：{code}", f"unknown media type code {code}")
    return mime


def _read_value(r: Reader, vtype: int, key: str) -> DataValue:
    zh, en = f"数据字段 {key}", f"data field {key}"
    if vtype == _T_UINT:
        return r.varint(zh, en, limit=1 << 63)
    if vtype == _T_NINT:
        return -1 - r.varint(zh, en, limit=1 << 63)
    if vtype in (_T_FALSE, _T_TRUE):
        return vtype == _T_TRUE
    if vtype == _T_F32:
        return float(struct.unpack(">f", r.take(4, zh, en))[0])
    if vtype == _T_F64:
        return float(struct.unpack(">d", r.take(8, zh, en))[0])
    if vtype == _T_TEXT:
        return r.text(zh, en, max_bytes=1024)
    raise r.fail(f"{zh}的值类型未知：{vtype}", f"{en} has unknown value type {vtype}")


def _read_data(r: Reader) -> dict[str, DataValue]:
    data: dict[str, DataValue] = {}
    while r.left:
        head = r.u8("数据字段", "data field")
        code = head & 0x1F
        if code == _NAMED_KEY:
            raw = r.take(r.u8("数据字段名", "data field name"), "数据字段名", "data field name")
            key = raw.decode("ascii", errors="replace")
            if key in _DATA_CODES:
                raise r.fail(
                    f"数据字段 {key} 应使用代码 {_DATA_CODES[key]}",
                    f"data field {key} must use code {_DATA_CODES[key]}",
                )
        elif code < len(DATA_KEYS):
            key = DATA_KEYS[code]
        else:
            raise r.fail(f"未知数据字段代码：{code}", f"unknown data field code {code}")
        if key in data:
            raise r.fail(f"数据字段 {key} 重复", f"duplicate data field {key}")
        data[key] = _read_value(r, head >> 5, key)
    return data


def _read_body(r: Reader, kit_id: int) -> Unpacked:
    seq = r.varint("序号", "sequence", limit=MAX_SEQ + 1)
    code = r.u8("类型", "kind")
    kind = _KINDS.get(code)
    if kind is None:
        raise r.fail(f"未知条目类型代码：{code}", f"unknown kind code {code}")
    flags = r.uint(2, "标志", "flags")
    if flags & _RESERVED:
        raise r.fail(f"保留标志位不为 0：{flags:#06x}", f"reserved flag bits set: {flags:#06x}")
    if flags & 0x07 > Priority.P4:
        raise r.fail(f"优先级代码无效：{flags & 0x07}", f"invalid priority code {flags & 0x07}")
    if flags & (_ALT | _ACC) and not flags & _POS:
        raise r.fail("有海拔或精度却没有位置", "altitude or accuracy without a position")
    if flags & _REF and flags & _BLOB:
        raise r.fail(
            "媒体引用与内联内容不能同时出现", "media reference and inline content together"
        )
    if flags & _BLOB and flags & 0x07 != Priority.P3:
        raise r.fail("只有 P3 条目可内联媒体", "only P3 items may carry inline media")
    clock_ok = bool(flags & _CLOCK)
    seconds = r.uint(4, "创建时间", "creation time")
    source = _read_source(r)
    try:
        position = None
        if flags & _POS:
            lat = r.sint(4, "纬度", "latitude") / POS_SCALE
            lon = r.sint(4, "经度", "longitude") / POS_SCALE
            alt = float(r.sint(2, "海拔", "altitude")) if flags & _ALT else None
            acc = float(r.varint("精度", "accuracy", limit=1 << 32)) if flags & _ACC else None
            position = Position(lat, lon, alt, acc)
        text = r.text("文字", "text") if flags & _TEXT else None
        media, blob = None, None
        if flags & _REF:
            size = r.varint("媒体大小", "media size", limit=MAX_MEDIA_BYTES + 1)
            prefix = r.take(SHA_PREFIX_BYTES, "媒体校验值", "media checksum").hex()
            mime = _read_mime(r)
            media = MediaRef(f"narrow/{prefix}", size, prefix.ljust(64, "0"), mime)
        elif flags & _BLOB:
            n = r.varint("内联长度", "inline length", limit=MAX_BLOB_BYTES + 1)
            blob = r.take(n, "内联内容", "inline content")
            digest = hashlib.sha256(blob).hexdigest()
            media = MediaRef(f"narrow/{digest[:16]}", len(blob), digest, _read_mime(r))
        parent = uuid.UUID(bytes=r.take(16, "父条目编号", "parent id")) if flags & _PARENT else None
        item = Item(
            uid=narrow_uid(kit_id, seq),
            kind=kind,
            priority=Priority(flags & 0x07),
            created_ms=(seconds + (EPOCH_2020_S if clock_ok else 0)) * 1000,
            clock_ok=clock_ok,
            source=source,
            text=text,
            position=position,
            data=_read_data(r),
            media=media,
            parent=parent,
        )
    except BadItem as err:
        raise r.fail(err.zh, err.en) from None
    return Unpacked(seq, item, blob)


def unpack_entries(payload: bytes, *, kit_id: int) -> list[Unpacked]:
    """Items and inline media files of kit ``kit_id``'s ITEMS payload; defects raise BadFrame."""
    if not isinstance(payload, bytes | bytearray | memoryview):
        what = type(payload).__name__
        raise BadFrame(f"条目载荷不是字节串：{what}", f"ITEMS payload is not bytes: {what}")
    if not 1 <= kit_id <= 0xFFFF:
        raise BadFrame(
            f"套件短编号超出 1…65535：{kit_id}", f"kit short id outside 1..65535: {kit_id}"
        )
    data = bytes(payload)
    if len(data) > MAX_MESSAGE_BYTES:
        raise BadFrame(
            f"条目载荷过大：{len(data)} 字节（上限 {MAX_MESSAGE_BYTES}）",
            f"ITEMS payload too large: {len(data)} bytes (limit {MAX_MESSAGE_BYTES})",
        )
    r = Reader(data, "条目载荷", "ITEMS payload")
    if not r.left:
        raise r.fail("没有条目", "no items")
    out: list[Unpacked] = []
    seen: set[int] = set()
    while r.left:
        n = len(out) + 1
        length = r.varint(f"第 {n} 个条目的长度", f"item {n} length", limit=MAX_MESSAGE_BYTES)
        body = r.take(length, f"第 {n} 个条目", f"item {n}")
        entry = _read_body(Reader(body, f"第 {n} 个条目", f"item {n}"), kit_id)
        if entry.seq in seen:
            raise r.fail(f"条目序号 {entry.seq} 重复", f"duplicate item sequence {entry.seq}")
        seen.add(entry.seq)
        out.append(entry)
    return out


def unpack_items(payload: bytes, *, kit_id: int) -> list[tuple[int, Item]]:
    """(seq, item) pairs of an ITEMS payload; see :func:`unpack_entries` for inline media."""
    return [(e.seq, e.item) for e in unpack_entries(payload, kit_id=kit_id)]


SOS_SEQ = 100_000  # a busy kit's sequence: a 3-byte varint, so the figure is not flattering


def sos_example() -> Item:
    """The reference P0 SOS that must fit one 78-byte Beidou message, tag included."""
    return new_item(
        Kind.SOS,
        source="mesh:!a1b2c3d4",
        text="楼房倒塌三人被困急需救援",
        position=Position(30.657812, 104.065735, 512.0),
        data={"count": 3},
        created_ms=1_747_031_284_000,
        clock_ok=True,
    )


def figures() -> dict[str, int]:
    """Measured sizes for the benchmark: the SOS frame and header+tag overheads."""
    payload = pack_items([(SOS_SEQ, sos_example())])
    sos = fragment(0xFFFF, 0xFFFF_FFFF, payload, MTU_BEIDOU)
    fragments = fragment(0xFFFF, 0xFFFF_FFFF, bytes(2 * MTU_BEIDOU), MTU_BEIDOU)
    return {
        "sos_frame_bytes": sum(map(len, sos)),
        "sos_frames": len(sos),
        "sos_item_bytes": len(payload),
        "beidou_mtu": MTU_BEIDOU,
        "frame_overhead_bytes": len(sos[0]) - len(decode_frame(sos[0]).payload),
        "fragment_overhead_bytes": len(fragments[0]) - len(decode_frame(fragments[0]).payload),
    }
