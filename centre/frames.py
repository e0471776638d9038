"""The centre's narrow-link gateway: frames in, stored items and acknowledgements out.

One :class:`FrameGateway` serves one narrow link (a Beidou command terminal, an SMS
modem, a mesh gateway, or frames relayed over IP). For each frame it is given:

1. decode, authenticate and decrypt it (:func:`uplink.frames.decode_frame` with the
   centre's :class:`~security.channel.CentreSecurity`), and take each (message sequence,
   fragment) of a kit once; a defective, forged, replayed frame or one from a kit that is
   not enrolled or was revoked is refused, counted and audited;
2. refuse it unless it comes from an enabled kit (audited, nothing kept);
3. reassemble fragments (one :class:`~uplink.frames.Reassembler` per gateway);
4. store a complete ITEMS message in one transaction (inline P3 files included), then
   answer with an ACK message to the kit: first the acknowledged ranges covering the
   items just received, then the newest ones, as many as fit one frame of the link's
   MTU (fragmented only when the covering ranges alone do not fit). A message heard
   again is stored again (the store counts the copy) and acknowledged again: the kit
   re-sends because our previous ACK was lost;
5. answer a MISSING request from the kit (fragments of one of our messages it lacks)
   with those fragments, byte-identical, while the message is remembered.

:meth:`FrameGateway.missing` asks kits for the fragments of messages that stalled.
Downlink message sequences are reserved from the store in blocks, so they are never
reused, across restarts and across gateways sharing a store.

Transports (:mod:`centre.udpgw`, ``POST /v1/frames``) only move bytes; relays use
:func:`pack_relay` / :func:`unpack_relay` framing: each frame prefixed by its length as
a 2-byte big-endian integer.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass

from centre.errors import UnknownKit
from centre.store import Store
from edge.errors import KitError
from security.channel import CentreSecurity, Refusal
from uplink import compact
from uplink.frames import (
    FRAGMENT_OVERHEAD,
    MAX_FRAGMENTS,
    MAX_FRAME_BYTES,
    MAX_MESSAGE_BYTES,
    MIN_MTU,
    SINGLE_OVERHEAD,
    BadFrame,
    FrameType,
    Reassembler,
    Status,
    decode_frame,
    fragment,
    pack_missing,
    pack_order,
    put_varint,
    unpack_missing,
)

log = logging.getLogger(__name__)

SEQ_BLOCK = 256  # downlink message sequences reserved per store write
SENT_CACHE = 256  # downlink messages kept to answer a kit's MISSING request
DEFAULT_MISSING_AFTER_S = 120.0  # 2 × a Beidou civil card's 60 s between messages

Range = tuple[int, int]  # inclusive, as Store.acked_ranges gives them


class SequenceExhausted(KitError, RuntimeError):
    """All 2^32 - 1 downlink message sequences of a kit are used."""


# --- ACK payloads ------------------------------------------------------------------------


def pack_ranges(ranges: Sequence[Range]) -> bytes:
    """ACK payload for ascending, disjoint, non-adjacent inclusive ranges.

    The same bytes as :func:`uplink.frames.pack_ack` of every seq in them, without
    expanding a range of a hundred thousand items into as many integers.
    """
    out = bytearray()
    end = 0  # exclusive end of the previous range
    for lo, hi in ranges:
        out += put_varint(lo - end - (1 if out else 0)) + put_varint(hi - lo)
        end = hi + 1
    return bytes(out)


def _entry_len(prev: Range | None, r: Range) -> int:
    """Bytes of range ``r``'s entry in an ACK payload when ``prev`` is the range before it."""
    gap = r[0] if prev is None else r[0] - prev[1] - 2
    return len(put_varint(gap)) + len(put_varint(r[1] - r[0]))


def choose_ranges(
    ranges: Sequence[Range], received: Iterable[int], budget: int, limit: int | None = None
) -> list[Range]:
    """The ranges most useful to the kit, ascending: all covering ``received``, then the newest.

    Newer ranges are added (newest first) while the payload stays within ``budget``
    bytes (one frame). The covering ranges are all there even when they alone exceed
    it, up to ``limit`` bytes (what a fragmented message can carry; lowest kept first).
    ``ranges`` must be ascending, disjoint and non-adjacent, as the store keeps them.
    """
    starts = [lo for lo, _ in ranges]
    covering: set[int] = set()
    for seq in received:
        i = bisect.bisect_right(starts, seq) - 1
        if i >= 0 and ranges[i][0] <= seq <= ranges[i][1]:
            covering.add(i)
    chosen: list[int] = []  # ascending indices into ranges
    size = 0
    for i in sorted(covering):
        add = _entry_len(ranges[chosen[-1]] if chosen else None, ranges[i])
        if limit is not None and size + add > limit:
            break
        chosen.append(i)
        size += add
    if size > budget:
        return [ranges[i] for i in chosen]
    for i in reversed(range(len(ranges))):
        if i in covering:
            continue
        at = bisect.bisect_left(chosen, i)
        prev = ranges[chosen[at - 1]] if at else None
        add = _entry_len(prev, ranges[i])
        if at < len(chosen):  # the next range's gap is now counted from this one
            after = ranges[chosen[at]]
            add += _entry_len(ranges[i], after) - _entry_len(prev, after)
        if size + add > budget:
            break
        chosen.insert(at, i)
        size += add
    return [ranges[i] for i in chosen]


# --- relay framing -----------------------------------------------------------------------


# --- the gateway -------------------------------------------------------------------------


@dataclass(slots=True)
class _Watch:
    """When a partial message last heard a fragment, and when we last asked for the rest."""

    heard: float
    asked: float | None = None


class FrameGateway:
    """Frames of one narrow link in, stored items and downlink frames out.

    ``handle`` and ``missing`` run on the store's event loop; they may interleave.
    ``security`` seals and opens the frames (one for all gateways, so a frame is taken
    once whichever link it came by); without it frames travel unsealed (tests of the
    framing alone).
    """

    def __init__(
        self,
        store: Store,
        *,
        name: str,
        mtu: int,
        clock: Callable[[], float] = time.monotonic,
        missing_after_s: float = DEFAULT_MISSING_AFTER_S,
        security: CentreSecurity | None = None,
    ) -> None:
        if not MIN_MTU <= mtu <= MAX_FRAME_BYTES:
            raise ValueError(f"mtu must be {MIN_MTU}..{MAX_FRAME_BYTES}, not {mtu}")
        if missing_after_s <= 0:
            raise ValueError(f"missing_after_s must be positive, not {missing_after_s}")
        self.store = store
        self.name = name
        self.mtu = mtu
        self.missing_after_s = missing_after_s
        self._clock = clock
        self.security = security
        # The kit of the last frame handle() authenticated (None if it refused the frame):
        # only such a frame should tell a transport where the kit is.
        self.authentic: int | None = None
        # Partial messages are dropped after an hour without a fragment; a kit that has not
        # re-sent by then has framed its items anew under another message sequence.
        self.reassembler = Reassembler(clock=clock)
        self._watch: dict[tuple[int, int], _Watch] = {}  # (kit, msg seq) of partial messages
        self._seqs: dict[int, range] = {}  # per kit: reserved downlink sequences not yet used
        self._seq_lock = asyncio.Lock()
        self._sent: OrderedDict[tuple[int, int], list[bytes]] = OrderedDict()

    # -- frames in ----------------------------------------------------------------------

    async def handle(
        self, data: bytes, *, via: str | None = None, relay_kit: int | None = None
    ) -> list[bytes]:
        """Take one frame from the link; returns the frames to send back to its kit.

        ``via`` (the address the frame came from: a Beidou card, a phone number, a mesh
        node, a UDP peer) and ``relay_kit`` (the kit that relayed it) are stored with the
        items' arrivals; for a fragmented message, those of the frame that completed it.

        A defective frame, one from an unknown or disabled kit, and one that does not
        complete a message are logged (when wrong) and answered with nothing. Only the
        store failing (disk full) raises.
        """
        self.authentic = None
        try:
            frame = decode_frame(data, sealer=self.security)
        except BadFrame as err:
            if self.security is None:
                log.info("%s: dropped a frame (%d bytes): %s", self.name, len(data), err.en)
            else:
                kit_id = int.from_bytes(data[1:3], "big") if len(data) >= 3 else None
                self.security.refuse(err, kit_id=kit_id or None, link=self.name, size=len(data))
            return []
        if frame.downlink:
            log.info(
                "%s: dropped a centre→kit frame for kit %d (message %d)",
                self.name,
                frame.kit_id,
                frame.msg_seq,
            )
            return []
        if self.security is not None:
            stale = self.security.fresh(frame)
            if stale is not None:
                self.security.refuse(stale, kit_id=frame.kit_id, link=self.name, size=len(data))
                return []
        self.authentic = frame.kit_id
        try:
            await self.store.require_kit(frame.kit_id)
        except UnknownKit as err:
            if self.security is not None:
                self.security.refuse(
                    Refusal("disabled", err.zh, err.en),
                    kit_id=frame.kit_id,
                    link=self.name,
                    size=len(data),
                )
            log.warning("%s: refused a frame of message %d: %s", self.name, frame.msg_seq, err.en)
            return []
        outcome = self.reassembler.add(frame)
        key = (frame.kit_id, frame.msg_seq)
        if outcome.status is Status.IGNORED:
            reason = outcome.reason.en if outcome.reason else "inconsistent"
            log.info("%s: kit %d: ignored a fragment: %s", self.name, frame.kit_id, reason)
            return []
        if outcome.status is Status.PARTIAL:
            if key not in self._watch and len(self._watch) >= 4 * SENT_CACHE:
                self._forget_finished()
            watch = self._watch.setdefault(key, _Watch(self._clock()))
            watch.heard = self._clock()
            return []
        message = outcome.message
        if message is None:  # a duplicate fragment of a partial message
            return []
        self._watch.pop(key, None)
        if message.type is FrameType.ITEMS:
            return await self._items(
                message.kit_id, message.msg_seq, message.payload, via, relay_kit
            )
        if message.type is FrameType.MISSING:
            return self._resend(message.kit_id, message.payload)
        log.info(
            "%s: kit %d sent a message of type %s, which only the centre sends; dropped",
            self.name,
            message.kit_id,
            message.type.name,
        )
        return []

    async def _items(
        self, kit_id: int, msg_seq: int, payload: bytes, via: str | None, relay_kit: int | None
    ) -> list[bytes]:
        try:
            entries = compact.unpack_entries(payload, kit_id=kit_id)
        except BadFrame as err:
            log.warning("%s: kit %d message %d: bad items: %s", self.name, kit_id, msg_seq, err.en)
            return []
        blobs = {e.seq: e.blob for e in entries if e.blob is not None}
        try:
            result = await self.store.ingest(
                kit_id,
                [(e.seq, e.item) for e in entries],
                link=self.name,
                blobs=blobs,
                via=via,
                relay_kit=relay_kit,
            )
        except UnknownKit as err:  # disabled since the frame arrived
            log.warning("%s: refused message %d: %s", self.name, msg_seq, err.en)
            return []
        for seq, reason in result.rejected:
            log.warning("%s: kit %d seq %d rejected: %s", self.name, kit_id, seq, reason)
        log.info(
            "%s: kit %d message %d: %d new, %d copies, %d waiting for media, %d rejected",
            self.name,
            kit_id,
            msg_seq,
            len(result.stored),
            len(result.duplicates),
            len(result.waiting),
            len(result.rejected),
        )
        try:
            return await self.ack(kit_id, [e.seq for e in entries]) + await self.orders(kit_id)
        except Refusal as err:  # revoked since the frame was opened: nothing more goes to it
            log.warning("%s: no answer to kit %d: %s", self.name, kit_id, err.en)
            return []

    async def orders(self, kit_id: int) -> list[bytes]:
        """ORDER messages for the kit's orders due: one per answer (a narrow link is slow),
        offered again every ``missing_after_s`` until the kit's receipt arrives."""
        due = await self.store.orders_to_send(kit_id, resend_after_s=self.missing_after_s, limit=1)
        out: list[bytes] = []
        for order in due:
            out += await self._send(kit_id, FrameType.ORDER, pack_order(order))
        return out

    async def ack(self, kit_id: int, received: Iterable[int] = ()) -> list[bytes]:
        """An ACK message for ``kit_id`` (its frames), or [] when nothing is acknowledged yet."""
        ranges = choose_ranges(
            await self.store.acked_ranges(kit_id),
            received,
            budget=self.mtu - SINGLE_OVERHEAD,
            limit=min((self.mtu - FRAGMENT_OVERHEAD) * MAX_FRAGMENTS, MAX_MESSAGE_BYTES),
        )
        if not ranges:
            return []
        return await self._send(kit_id, FrameType.ACK, pack_ranges(ranges))

    def _resend(self, kit_id: int, payload: bytes) -> list[bytes]:
        try:
            request = unpack_missing(payload)
        except BadFrame as err:
            log.info("%s: kit %d: bad MISSING request: %s", self.name, kit_id, err.en)
            return []
        sent = self._sent.get((kit_id, request.msg_seq))
        if sent is None or len(sent) != request.count:
            log.info(
                "%s: kit %d asks for fragments of message %d, no longer held",
                self.name,
                kit_id,
                request.msg_seq,
            )
            return []
        return [sent[i] for i in request.indices]

    # -- frames out ---------------------------------------------------------------------

    async def _send(self, kit_id: int, ftype: FrameType, payload: bytes) -> list[bytes]:
        """Frame a downlink message under a new message sequence, and remember it."""
        msg_seq = await self._next_seq(kit_id)
        pieces = fragment(
            kit_id, msg_seq, payload, self.mtu, ftype=ftype, downlink=True, sealer=self.security
        )
        if len(pieces) > 1:
            self._sent[(kit_id, msg_seq)] = pieces
            while len(self._sent) > SENT_CACHE:
                self._sent.popitem(last=False)
        return pieces

    async def _next_seq(self, kit_id: int) -> int:
        async with self._seq_lock:
            free = self._seqs.get(kit_id)
            if not free:
                free = await self.store.reserve_msg_seqs(kit_id, SEQ_BLOCK)
                if not free:
                    raise SequenceExhausted(
                        f"设备 {kit_id} 的下行消息序号已用尽",
                        f"downlink message sequences of kit {kit_id} are exhausted",
                    )
            self._seqs[kit_id] = free[1:]
            return free[0]

    async def missing(self, kits: Collection[int] | None = None) -> list[bytes]:
        """MISSING frames for partial messages that stalled, of ``kits`` (default: all).

        A message is asked about when no fragment of it came for ``missing_after_s``, and
        again at most once per ``missing_after_s`` while it stays incomplete.
        """
        now = self._clock()
        out: list[bytes] = []
        alive: set[tuple[int, int]] = set()
        for pending in self.reassembler.pending():
            if pending.downlink or pending.type is not FrameType.ITEMS:
                continue
            key = (pending.kit_id, pending.msg_seq)
            alive.add(key)
            if kits is not None and pending.kit_id not in kits:
                continue
            watch = self._watch.setdefault(key, _Watch(now - pending.age_s))
            last = watch.heard if watch.asked is None else max(watch.heard, watch.asked)
            if now - last < self.missing_after_s or not pending.missing:
                continue
            try:
                await self.store.require_kit(pending.kit_id)
            except UnknownKit:
                continue
            watch.asked = now
            payload = pack_missing(pending.msg_seq, pending.count, pending.missing)
            log.info(
                "%s: kit %d message %d: asking again for fragments %s of %d",
                self.name,
                pending.kit_id,
                pending.msg_seq,
                list(pending.missing),
                pending.count,
            )
            try:
                out += await self._send(pending.kit_id, FrameType.MISSING, payload)
            except Refusal as err:
                log.info("%s: not asking kit %d: %s", self.name, pending.kit_id, err.en)
        self._forget_finished(alive)
        return out

    def _forget_finished(self, alive: set[tuple[int, int]] | None = None) -> None:
        """Stop watching messages the reassembler no longer holds (evicted or expired)."""
        if alive is None:
            alive = {(p.kit_id, p.msg_seq) for p in self.reassembler.pending()}
        for key in set(self._watch) - alive:
            del self._watch[key]
