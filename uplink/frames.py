"""Narrow-link wire format: frames, fragmentation, reassembly, and the ACK/ORDER/MISSING payloads.

Narrow links carry a few dozen to ~1,750 bytes per message (Beidou civil card 78 B,
SMS 140 B, Meshtastic 233 B, BDS-3 regional 1,750 B). Every frame is::

    offset size  field
    0      1     V:3 | D:1 | F:1 | T:3      (bit 7 first)
                   V version (1); 0 and 2..7 are rejected
                   D 0 = kit→centre, 1 = centre→kit
                   F 1 = fragment of a longer message (index/count present)
                   T type: 1 ITEMS, 2 ACK, 3 ORDER, 4 MISSING; 0, 5..7 rejected
    1      2     kit short id, uint16 big-endian, 1..65535 (the kit the conversation is with)
    3      4     message sequence, uint32 big-endian, per (kit, direction), assigned once
                 when a message is framed
    [7     1     fragment index, 0..count-1]   only when F = 1
    [8     1     fragment count, 2..255    ]   only when F = 1
    ..     n≥1   payload (or this fragment's slice of it)
    -8     8     tag (TAG_BYTES); zeros on an unsealed frame

A sealed frame (:class:`Sealer`, see :mod:`security`) carries its payload encrypted and
a truncated AEAD tag; the header is the associated data, and the nonce is made of the
header's direction, kit id, message sequence and fragment index.

Header + tag: 15 bytes for a single frame, 17 for a fragment. A message is cut into
equal slices of ``mtu - 17`` bytes (the last one shorter). Fragmenting is a pure
function of (kit, direction, msg seq, type, payload, mtu), so a re-sent fragment is
byte-identical; a message is never re-cut under the same sequence — re-packing for
another MTU takes a new message sequence (the (kit, direction, msg seq, index) tuple
later feeds nonces).

Integers below are unsigned LEB128 varints (minimal length, at most 64 bits) unless
sized. ``ctext`` is ``varint(n << 1 | g)`` then n bytes: GB18030 when g = 1 (chosen
only when shorter than UTF-8, so for Chinese), UTF-8 when g = 0.

- ITEMS (kit→centre): compact items, see :mod:`uplink.compact`.
- ACK (centre→kit): acknowledged item sequences as ascending disjoint ranges:
  ``varint start0, varint len0-1, {varint gap-1, varint len-1}*`` where
  gap = start - previous range's end (exclusive end), so gap ≥ 1.
- ORDER (centre→kit): ``varint order_id, ctext target, ctext text``.
- MISSING (either way): ``uint32 msg seq, uint8 count, bitmap`` asking for fragments of
  a message that travelled the other way for the same kit; the bitmap has
  ceil(count / 8) bytes, bit i (least significant bit first in byte i // 8) set when
  fragment i is missing; padding bits are zero and at least one bit is set.
"""

from __future__ import annotations

import dataclasses
import re
import struct
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum, IntEnum
from typing import Protocol

from edge.errors import KitError
from edge.item import MAX_TEXT_CHARS

VERSION = 1
TAG_BYTES = 8
HEADER_BYTES = 7
FRAGMENT_HEADER_BYTES = HEADER_BYTES + 2
SINGLE_OVERHEAD = HEADER_BYTES + TAG_BYTES
FRAGMENT_OVERHEAD = FRAGMENT_HEADER_BYTES + TAG_BYTES
MAX_FRAGMENTS = 255
MAX_FRAME_BYTES = 1750  # the largest narrow link (BDS-3 regional short message)
MIN_MTU = FRAGMENT_OVERHEAD + 1
MAX_MESSAGE_BYTES = 64 * 1024  # a whole message (all fragments); bounds reassembly memory
MAX_KIT_ID = 0xFFFF
MAX_MSG_SEQ = 0xFFFF_FFFF
MAX_TARGET_CHARS = 64

# Civil card, comm level 3: 628 bits = 78 bytes, of which the mixed-mode marker byte A4
# takes one over the air (drivers/beidou.py reads the real figure from the card).
MTU_BEIDOU = 77
MTU_SMS = 140  # 3GPP 8-bit SMS
MTU_MESH = 233  # Meshtastic Data.payload limit
MTU_BEIDOU_REGIONAL = 1750  # BDS-3 regional short message

_F_DOWNLINK = 0x10
_F_FRAGMENT = 0x08
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


class BadFrame(KitError, ValueError):
    """Bytes from a narrow link (or a message to be framed) that do not follow the wire format."""


class FrameType(IntEnum):
    """What a frame's payload is."""

    ITEMS = 1
    ACK = 2
    ORDER = 3
    MISSING = 4


# --- primitives shared with uplink.compact -----------------------------------------------


def put_varint(value: int) -> bytes:
    """Unsigned LEB128, minimal length."""
    if not 0 <= value < 1 << 64:
        raise BadFrame(f"整数超出 64 位无符号范围：{value}", f"integer outside uint64: {value}")
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def pack_text(text: str) -> bytes:
    """``ctext``: GB18030 when shorter than UTF-8 (Chinese text), else UTF-8."""
    raw = text.encode("utf-8")
    flag = 0
    try:
        gb = text.encode("gb18030")
    except UnicodeError:
        gb = raw
    # The decode check guards against code points whose GB18030 mapping does not round-trip.
    if len(gb) < len(raw) and gb.decode("gb18030") == text:
        raw, flag = gb, 1
    return put_varint(len(raw) << 1 | flag) + raw


class Reader:
    """A cursor over received bytes; every shortfall or malformed field raises BadFrame."""

    def __init__(self, data: bytes, zh: str, en: str) -> None:
        self.data = data
        self.pos = 0
        self.zh = zh  # what is being read, for messages: "第 2 个条目" / "item 2"
        self.en = en

    def fail(self, zh: str, en: str) -> BadFrame:
        return BadFrame(f"{self.zh}：{zh}", f"{self.en}: {en}")

    @property
    def left(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int, zh: str, en: str) -> bytes:
        if n > self.left:
            raise self.fail(
                f"{zh}被截断（需要 {n} 字节，仅剩 {self.left} 字节）",
                f"{en} truncated ({self.left} of {n} bytes present)",
            )
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def u8(self, zh: str, en: str) -> int:
        return self.take(1, zh, en)[0]

    def uint(self, size: int, zh: str, en: str) -> int:
        return int.from_bytes(self.take(size, zh, en), "big")

    def sint(self, size: int, zh: str, en: str) -> int:
        return int.from_bytes(self.take(size, zh, en), "big", signed=True)

    def varint(self, zh: str, en: str, limit: int = 1 << 64) -> int:
        value = shift = 0
        start = self.pos
        while True:
            byte = self.u8(zh, en)
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
            if shift >= 70:
                raise self.fail(f"{zh}的变长整数过长", f"{en}: varint too long")
        if self.pos - start > 1 and byte == 0:
            raise self.fail(f"{zh}的变长整数不是最短编码", f"{en}: varint not minimally encoded")
        if value >= limit:
            raise self.fail(
                f"{zh}超出范围：{value}（上限 {limit - 1}）",
                f"{en} out of range: {value} (max {limit - 1})",
            )
        return value

    def text(self, zh: str, en: str, max_bytes: int = MAX_MESSAGE_BYTES) -> str:
        head = self.varint(zh, en, limit=(max_bytes << 1) + 2)
        raw = self.take(head >> 1, zh, en)
        codec = "gb18030" if head & 1 else "utf-8"
        try:
            return raw.decode(codec)
        except UnicodeDecodeError:
            raise self.fail(
                f"{zh}不是有效的 {codec.upper()} 文字", f"{en} is not valid {codec.upper()}"
            ) from None

    def end(self) -> None:
        if self.left:
            raise self.fail(f"末尾多出 {self.left} 字节", f"{self.left} trailing bytes")


# --- frames ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame as it travels: a whole message (count 1) or one fragment of it."""

    type: FrameType
    kit_id: int
    msg_seq: int
    payload: bytes
    downlink: bool = False  # centre→kit
    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.type, FrameType):
            raise BadFrame(f"帧类型无效：{self.type!r}", f"invalid frame type: {self.type!r}")
        if not 1 <= self.kit_id <= MAX_KIT_ID:
            raise BadFrame(
                f"套件短编号超出 1…65535：{self.kit_id}",
                f"kit short id outside 1..65535: {self.kit_id}",
            )
        if not 0 <= self.msg_seq <= MAX_MSG_SEQ:
            raise BadFrame(
                f"消息序号超出 32 位：{self.msg_seq}",
                f"message sequence outside uint32: {self.msg_seq}",
            )
        if not 1 <= self.count <= MAX_FRAGMENTS or not 0 <= self.index < self.count:
            raise BadFrame(
                f"分片编号无效：{self.index}/{self.count}",
                f"invalid fragment index/count: {self.index}/{self.count}",
            )
        if not isinstance(self.payload, bytes) or not self.payload:
            raise BadFrame("帧载荷为空", "empty frame payload")

    @property
    def key(self) -> tuple[bool, int, int]:
        """Identifies the message this frame belongs to."""
        return (self.downlink, self.kit_id, self.msg_seq)


class Sealer(Protocol):
    """Authenticated encryption of frames (see :mod:`security`)."""

    def seal(self, frame: Frame, header: bytes) -> bytes:
        """``frame.payload`` encrypted, followed by a TAG_BYTES tag over ``header`` too."""
        ...

    def open(self, frame: Frame, header: bytes) -> bytes:
        """The plaintext of ``frame.payload`` (ciphertext + tag); raises :class:`BadFrame`."""
        ...


def encode_frame(frame: Frame, *, sealer: Sealer | None = None) -> bytes:
    """The frame's bytes: sealed by ``sealer``, else the payload in clear and a zero tag."""
    first = VERSION << 5 | int(frame.type)
    if frame.downlink:
        first |= _F_DOWNLINK
    head = struct.pack(">BHI", first, frame.kit_id, frame.msg_seq)
    if frame.count > 1:
        head = struct.pack(
            ">BHIBB", first | _F_FRAGMENT, frame.kit_id, frame.msg_seq, frame.index, frame.count
        )
    size = len(head) + len(frame.payload) + TAG_BYTES
    if size > MAX_FRAME_BYTES:
        raise BadFrame(
            f"帧过大：{size} 字节（上限 {MAX_FRAME_BYTES}）",
            f"frame too large: {size} bytes (limit {MAX_FRAME_BYTES})",
        )
    body = frame.payload + bytes(TAG_BYTES) if sealer is None else sealer.seal(frame, head)
    if len(body) != len(frame.payload) + TAG_BYTES:
        raise BadFrame(
            f"封装后的载荷应为 {len(frame.payload) + TAG_BYTES} 字节，实为 {len(body)}",
            f"sealed payload must be {len(frame.payload) + TAG_BYTES} bytes, got {len(body)}",
        )
    return head + body


def decode_frame(data: bytes, *, sealer: Sealer | None = None) -> Frame:
    """Parse one frame from a link; any defect raises :class:`BadFrame`, never anything else.

    With a ``sealer`` the payload is authenticated and decrypted; without one it is
    returned as sent (the tag stripped, unchecked): enough to read the header.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise BadFrame(
            f"帧不是字节串：{type(data).__name__}", f"frame is not bytes: {type(data).__name__}"
        )
    data = bytes(data)
    if len(data) > MAX_FRAME_BYTES:
        raise BadFrame(
            f"帧过大：{len(data)} 字节（上限 {MAX_FRAME_BYTES}）",
            f"frame too large: {len(data)} bytes (limit {MAX_FRAME_BYTES})",
        )
    if len(data) < SINGLE_OVERHEAD + 1:
        raise BadFrame(
            f"帧被截断：{len(data)} 字节，至少需要 {SINGLE_OVERHEAD + 1} 字节",
            f"truncated frame: {len(data)} bytes, at least {SINGLE_OVERHEAD + 1} needed",
        )
    first, kit_id, msg_seq = struct.unpack_from(">BHI", data)
    version = first >> 5
    if version != VERSION:
        raise BadFrame(
            f"帧版本不受支持：{version}（支持 {VERSION}）",
            f"unsupported frame version {version} (expected {VERSION})",
        )
    try:
        ftype = FrameType(first & 0x07)
    except ValueError:
        raise BadFrame(
            f"未知帧类型：{first & 0x07}", f"unknown frame type {first & 0x07}"
        ) from None
    if kit_id == 0:
        raise BadFrame("套件短编号为 0", "kit short id is 0")
    index, count, start = 0, 1, HEADER_BYTES
    if first & _F_FRAGMENT:
        if len(data) < FRAGMENT_OVERHEAD + 1:
            raise BadFrame(
                f"分片帧被截断：{len(data)} 字节，至少需要 {FRAGMENT_OVERHEAD + 1} 字节",
                f"truncated fragment: {len(data)} bytes, at least {FRAGMENT_OVERHEAD + 1} needed",
            )
        index, count, start = data[7], data[8], FRAGMENT_HEADER_BYTES
        if count < 2 or index >= count:
            raise BadFrame(
                f"分片编号无效：{index}/{count}", f"invalid fragment index/count: {index}/{count}"
            )
    downlink = bool(first & _F_DOWNLINK)
    if sealer is None:
        return Frame(ftype, kit_id, msg_seq, data[start:-TAG_BYTES], downlink, index, count)
    sealed = Frame(ftype, kit_id, msg_seq, data[start:], downlink, index, count)
    return dataclasses.replace(sealed, payload=sealer.open(sealed, data[:start]))


def fragment(
    kit_id: int,
    msg_seq: int,
    payload: bytes,
    mtu: int,
    *,
    ftype: FrameType = FrameType.ITEMS,
    downlink: bool = False,
    sealer: Sealer | None = None,
) -> list[bytes]:
    """Frames of at most ``mtu`` bytes carrying ``payload``: one if it fits, else fragments."""
    if not MIN_MTU <= mtu <= MAX_FRAME_BYTES:
        raise BadFrame(
            f"MTU 超出 {MIN_MTU}…{MAX_FRAME_BYTES}：{mtu}",
            f"MTU outside {MIN_MTU}..{MAX_FRAME_BYTES}: {mtu}",
        )
    if not payload:
        raise BadFrame("消息为空", "empty message")
    if len(payload) > MAX_MESSAGE_BYTES:
        raise BadFrame(
            f"消息过大：{len(payload)} 字节（上限 {MAX_MESSAGE_BYTES}）",
            f"message too large: {len(payload)} bytes (limit {MAX_MESSAGE_BYTES})",
        )
    if len(payload) + SINGLE_OVERHEAD <= mtu:
        return [encode_frame(Frame(ftype, kit_id, msg_seq, payload, downlink), sealer=sealer)]
    chunk = mtu - FRAGMENT_OVERHEAD
    count = -(-len(payload) // chunk)
    if count > MAX_FRAGMENTS:
        raise BadFrame(
            f"消息 {len(payload)} 字节在 MTU {mtu} 下需要 {count} 个分片（上限 {MAX_FRAGMENTS}）",
            f"a {len(payload)}-byte message needs {count} fragments at MTU {mtu} "
            f"(limit {MAX_FRAGMENTS})",
        )
    return [
        encode_frame(
            Frame(ftype, kit_id, msg_seq, payload[i * chunk : (i + 1) * chunk], downlink, i, count),
            sealer=sealer,
        )
        for i in range(count)
    ]


# --- reassembly --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Message:
    """A whole message: a single frame's payload or all fragments joined."""

    type: FrameType
    kit_id: int
    msg_seq: int
    payload: bytes
    downlink: bool = False


class Status(Enum):
    COMPLETE = "complete"  # this frame completed a message (see Outcome.message)
    PARTIAL = "partial"  # stored; more fragments needed
    DUPLICATE = "duplicate"  # an identical fragment was already held
    IGNORED = "ignored"  # inconsistent or over a bound (see Outcome.reason)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What :meth:`Reassembler.add` did with a frame."""

    status: Status
    message: Message | None = None
    repeat: bool = (
        False  # the message was completed recently already: re-acknowledge, do not re-store
    )
    reason: BadFrame | None = None


@dataclass(frozen=True, slots=True)
class Pending:
    """A partial message and the fragments it still lacks (what a MISSING frame asks for)."""

    type: FrameType
    kit_id: int
    msg_seq: int
    downlink: bool
    count: int
    missing: tuple[int, ...]
    age_s: float


@dataclass(slots=True)
class _Partial:
    type: FrameType
    count: int
    first_seen: float
    last_seen: float
    repeat: bool
    parts: dict[int, bytes] = field(default_factory=dict)
    chunk: int | None = None  # length of every fragment but the last, once one is seen

    def missing(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.count) if i not in self.parts)


_Key = tuple[bool, int, int]


class Reassembler:
    """Joins fragments arriving out of order, twice, or over several links, in bounded memory.

    At most ``max_partials`` partial messages are held (the least recently active one
    gives way), none over ``max_message_bytes``; a partial message that received no
    fragment for ``max_age_s`` seconds of ``clock`` is dropped. Completed keys are
    remembered (at most ``max_remembered``, for ``max_age_s``) to catch a re-used sequence.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_partials: int = 64,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        max_age_s: float = 3600.0,
        max_remembered: int = 4096,
    ) -> None:
        self._clock = clock
        self._max_partials = max_partials
        self._max_bytes = max_message_bytes
        self._max_age = max_age_s
        self._max_remembered = max_remembered
        # Least recently active first, so eviction and expiry pop from the front.
        self._partials: OrderedDict[_Key, _Partial] = OrderedDict()
        # Recently completed messages: (type, count, when). Lets a re-used sequence be caught
        # and keeps a straggler of a finished message from triggering a MISSING request.
        self._done: OrderedDict[_Key, tuple[FrameType, int, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._partials)

    def add(self, frame: Frame) -> Outcome:
        """Take one decoded frame; a completed message comes back in ``Outcome.message``."""
        now = self._clock()
        self._expire(now)
        key = frame.key
        done = self._done.get(key)
        if done is not None and done[:2] != (frame.type, frame.count):
            return _ignored(
                f"消息 {frame.msg_seq} 已以 {done[1]} 个分片（类型 {done[0].name}）完成，"
                f"此帧为 {frame.count} 个分片（类型 {frame.type.name}）：同一序号不得重新分片",
                f"message {frame.msg_seq} completed as {done[1]} fragment(s) of type "
                f"{done[0].name}; this frame says {frame.count} of type {frame.type.name}: "
                "a sequence is never re-cut",
            )
        partial = self._partials.get(key)
        if partial is not None and (partial.type, partial.count) != (frame.type, frame.count):
            return _ignored(
                f"消息 {frame.msg_seq} 的分片不一致："
                f"已知 {partial.count} 个（{partial.type.name}），"
                f"此帧为 {frame.count} 个（{frame.type.name}）",
                f"inconsistent fragment of message {frame.msg_seq}: expected {partial.count} of "
                f"type {partial.type.name}, got {frame.count} of type {frame.type.name}",
            )
        if frame.count == 1:
            return self._complete(key, frame.type, 1, frame.payload, now, repeat=done is not None)
        if partial is None:
            partial = _Partial(frame.type, frame.count, now, now, repeat=done is not None)
        held = partial.parts.get(frame.index)
        if held is not None:
            if held == frame.payload:
                return Outcome(Status.DUPLICATE)
            return _ignored(
                f"消息 {frame.msg_seq} 的分片 {frame.index} 内容与先前收到的不同",
                f"fragment {frame.index} of message {frame.msg_seq} differs from the one held",
            )
        problem = self._check_size(partial, frame)
        if problem is not None:
            return Outcome(Status.IGNORED, reason=problem)
        if key not in self._partials:
            while len(self._partials) >= self._max_partials:
                self._partials.popitem(last=False)  # the least recently active gives way
            self._partials[key] = partial
        if frame.index < frame.count - 1:
            partial.chunk = len(frame.payload)
        partial.parts[frame.index] = frame.payload
        partial.last_seen = now
        self._partials.move_to_end(key)
        if len(partial.parts) < partial.count:
            return Outcome(Status.PARTIAL)
        del self._partials[key]
        payload = b"".join(partial.parts[i] for i in range(partial.count))
        return self._complete(key, partial.type, partial.count, payload, now, repeat=partial.repeat)

    def _check_size(self, partial: _Partial, frame: Frame) -> BadFrame | None:
        # Fragments are equal slices but the last, so one slice length bounds the whole message.
        size = len(frame.payload)
        last_index = frame.count - 1
        chunk: int | None = partial.chunk
        tail: int | None = size
        if frame.index != last_index:
            if partial.chunk is not None and partial.chunk != size:
                return BadFrame(
                    f"消息 {frame.msg_seq} 的分片长度不一致："
                    f"{size} 字节，其他为 {partial.chunk} 字节",
                    f"fragment length mismatch in message {frame.msg_seq}: "
                    f"{size} bytes, others {partial.chunk}",
                )
            held = partial.parts.get(last_index)
            chunk, tail = size, None if held is None else len(held)
        if chunk is not None and tail is not None and tail > chunk:
            return BadFrame(
                f"消息 {frame.msg_seq} 的末分片比其他分片长",
                f"last fragment of message {frame.msg_seq} is longer than the others",
            )
        least = last_index * (chunk or 1) + (tail or 1)
        if least > self._max_bytes:
            return BadFrame(
                f"消息 {frame.msg_seq} 至少 {least} 字节，超出重组上限 {self._max_bytes} 字节",
                f"message {frame.msg_seq} is at least {least} bytes, "
                f"over the reassembly limit {self._max_bytes}",
            )
        return None

    def _complete(
        self, key: _Key, ftype: FrameType, count: int, payload: bytes, now: float, *, repeat: bool
    ) -> Outcome:
        self._done[key] = (ftype, count, now)
        self._done.move_to_end(key)
        while len(self._done) > self._max_remembered:
            self._done.popitem(last=False)
        downlink, kit_id, msg_seq = key
        return Outcome(
            Status.COMPLETE, Message(ftype, kit_id, msg_seq, payload, downlink), repeat=repeat
        )

    def _expire(self, now: float) -> None:
        while self._partials:
            key, partial = next(iter(self._partials.items()))
            if now - partial.last_seen <= self._max_age:
                break
            del self._partials[key]
        while self._done:
            key, (_, _, when) = next(iter(self._done.items()))
            if now - when <= self._max_age:
                break
            del self._done[key]

    def missing(self, kit_id: int, msg_seq: int, *, downlink: bool = False) -> tuple[int, ...]:
        """Fragment indices still lacking for a partial message; empty if none is held."""
        self._expire(self._clock())
        partial = self._partials.get((downlink, kit_id, msg_seq))
        return () if partial is None else partial.missing()

    def pending(self) -> list[Pending]:
        """Partial messages worth a MISSING request, least recently active first.

        A straggler of a message completed recently (a late duplicate) is not listed:
        asking for the rest of something already received would waste a narrow link.
        """
        now = self._clock()
        self._expire(now)
        return [
            Pending(p.type, kit, seq, down, p.count, p.missing(), now - p.first_seen)
            for (down, kit, seq), p in self._partials.items()
            if not p.repeat
        ]


def _ignored(zh: str, en: str) -> Outcome:
    return Outcome(Status.IGNORED, reason=BadFrame(zh, en))


# --- ACK, ORDER and MISSING payloads -----------------------------------------------------


def ack_ranges(seqs: Iterable[int]) -> list[range]:
    """Item sequences merged into ascending, disjoint, non-adjacent ranges."""
    out: list[range] = []
    for seq in sorted(set(seqs)):
        if seq < 0:
            raise BadFrame(f"条目序号为负：{seq}", f"negative item sequence: {seq}")
        if out and out[-1].stop == seq:
            out[-1] = range(out[-1].start, seq + 1)
        else:
            out.append(range(seq, seq + 1))
    return out


def pack_ack(seqs: Iterable[int], *, max_bytes: int = MAX_MESSAGE_BYTES) -> bytes:
    """ACK payload for ``seqs``; ranges from the lowest up, as many as fit ``max_bytes``."""
    out = bytearray()
    end = 0
    for r in ack_ranges(seqs):
        entry = put_varint(r.start - end - (1 if out else 0)) + put_varint(len(r) - 1)
        if len(out) + len(entry) > max_bytes:
            break
        out += entry
        end = r.stop
    if not out:
        raise BadFrame("确认中没有条目序号", "acknowledgement names no item sequences")
    return bytes(out)


def unpack_ack(payload: bytes) -> list[range]:
    """Acknowledged item sequences as ranges; any defect raises :class:`BadFrame`."""
    r = Reader(payload, "确认", "ACK")
    out: list[range] = []
    end = 0
    while r.left or not out:
        gap = r.varint("区间起点", "range start") + (1 if out else 0)
        length = r.varint("区间长度", "range length") + 1
        start = end + gap
        end = start + length
        if end > 1 << 64:
            raise r.fail("区间超出 64 位", "range beyond 64 bits")
        out.append(range(start, end))
    return out


@dataclass(frozen=True, slots=True)
class Order:
    """An order from the centre; ``order_id`` lets a receipt name it and a re-send be dropped."""

    order_id: int
    target: str  # who it is for: "" for everyone at the kit, else a team, a handheld …
    text: str

    def __post_init__(self) -> None:
        if not 0 <= self.order_id < 1 << 64:
            raise BadFrame(
                f"指令编号超出范围：{self.order_id}", f"order id out of range: {self.order_id}"
            )
        if (
            not isinstance(self.target, str)
            or len(self.target) > MAX_TARGET_CHARS
            or _CONTROL.search(self.target)
        ):
            raise BadFrame(
                f"指令对象无效（最多 {MAX_TARGET_CHARS} 字、无控制字符）：{self.target!r}",
                f"invalid order target (at most {MAX_TARGET_CHARS} characters, "
                f"no control characters): {self.target!r}",
            )
        if (
            not isinstance(self.text, str)
            or not 0 < len(self.text) <= MAX_TEXT_CHARS
            or _CONTROL.search(self.text)
        ):
            raise BadFrame(
                f"指令文字无效（1–{MAX_TEXT_CHARS} 字、无控制字符）",
                f"invalid order text (1-{MAX_TEXT_CHARS} characters, no control characters)",
            )


def pack_order(order: Order) -> bytes:
    try:
        return put_varint(order.order_id) + pack_text(order.target) + pack_text(order.text)
    except UnicodeEncodeError:
        raise BadFrame("指令含无法编码的字符", "order contains unencodable characters") from None


def unpack_order(payload: bytes) -> Order:
    r = Reader(payload, "指令", "ORDER")
    order_id = r.varint("编号", "order id")
    target = r.text("对象", "target")
    text = r.text("文字", "text")
    r.end()
    return Order(order_id, target, text)


@dataclass(frozen=True, slots=True)
class Missing:
    """A request for fragments of message ``msg_seq`` (sent the other way) that never arrived."""

    msg_seq: int
    count: int
    indices: tuple[int, ...]


def pack_missing(msg_seq: int, count: int, indices: Iterable[int]) -> bytes:
    wanted = sorted(set(indices))
    if not 0 <= msg_seq <= MAX_MSG_SEQ or not 2 <= count <= MAX_FRAGMENTS:
        raise BadFrame(
            f"缺片请求无效：消息 {msg_seq}，{count} 个分片",
            f"invalid MISSING: message {msg_seq}, {count} fragments",
        )
    if not wanted or not all(0 <= i < count for i in wanted):
        raise BadFrame(f"缺片编号无效：{wanted}", f"invalid missing fragment indices: {wanted}")
    bitmap = bytearray(-(-count // 8))
    for i in wanted:
        bitmap[i // 8] |= 1 << (i % 8)
    return struct.pack(">IB", msg_seq, count) + bytes(bitmap)


def unpack_missing(payload: bytes) -> Missing:
    r = Reader(payload, "缺片请求", "MISSING")
    msg_seq = r.uint(4, "消息序号", "message sequence")
    count = r.u8("分片数", "fragment count")
    if count < 2:
        raise r.fail(f"分片数无效：{count}", f"invalid fragment count: {count}")
    bitmap = r.take(-(-count // 8), "位图", "bitmap")
    r.end()
    bits = int.from_bytes(bitmap, "little")
    if bits >> count:
        raise r.fail("位图的填充位不为 0", "bitmap padding bits are not zero")
    if not bits:
        raise r.fail("没有请求任何分片", "no fragment requested")
    return Missing(msg_seq, count, tuple(i for i in range(count) if bits >> i & 1))


# --- relay bodies (POST /v1/frames) ------------------------------------------------------

_RELAY_LEN = struct.Struct(">H")


def pack_relay(frames: Iterable[bytes]) -> bytes:
    """Frames for ``POST /v1/frames``: each prefixed by a 2-byte big-endian length."""
    out = bytearray()
    for frame in frames:
        if not 0 < len(frame) <= MAX_FRAME_BYTES:
            raise BadFrame(
                f"中继帧长度无效：{len(frame)} 字节", f"invalid relayed frame length: {len(frame)}"
            )
        out += _RELAY_LEN.pack(len(frame)) + frame
    return bytes(out)


def unpack_relay(body: bytes) -> list[bytes]:
    """The frames of a relay body; a zero length or a cut-off frame raises :class:`BadFrame`."""
    frames: list[bytes] = []
    pos = 0
    while pos < len(body):
        if pos + 2 > len(body):
            raise BadFrame("中继数据在长度字段处被截断", "relay body cut off inside a length")
        (n,) = _RELAY_LEN.unpack_from(body, pos)
        pos += 2
        if n == 0 or pos + n > len(body):
            raise BadFrame(
                f"第 {len(frames) + 1} 个中继帧长度无效或被截断（{n} 字节）",
                f"relayed frame {len(frames) + 1} has length {n}: zero or cut off",
            )
        frames.append(body[pos : pos + n])
        pos += n
    return frames
