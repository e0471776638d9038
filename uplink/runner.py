"""The uplink process: one sender per link asks the scheduler what to send, acks close items."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import cbor2

from edge.client import AsyncEdgeClient
from edge.errors import EdgeUnavailable, KitError
from edge.item import Item, Priority, decode, to_wire
from security.channel import KitSecurity
from security.ipauth import RequestSigner
from uplink import compact, frames
from uplink.kinds.ip import IpLink
from uplink.link import FrameLink, Link, LinkDown, LinkRefused
from uplink.msgseq import MessageSequence
from uplink.scheduler import OVERTAKE_RATIO, Candidate, LinkView, classes_for, plan, usable
from uplink.transfer import MediaDamaged, Part, Transfer, media_damage

log = logging.getLogger("uplink")

IDLE_POLL_MAX_S = 15.0  # longest wait between two looks at the outbox when nothing happens
SENT_CACHE = 256  # narrow messages kept to answer the centre's MISSING requests


class Uplink:
    """Moves the outbox to the centre over every link, most urgent first, until cancelled."""

    def __init__(
        self,
        kit_id: int,
        links: Sequence[Link],
        edge: AsyncEdgeClient,
        data_dir: Path,
        media_dir: Path,
        *,
        ack_timeouts: dict[str, float] | None = None,
        part_bytes: int = 4 * 1024 * 1024,
        max_fragments: int = 16,
        poll_s: float = 1.0,
        security: KitSecurity | None = None,
    ) -> None:
        self.kit_id = kit_id
        self.security = security  # seals narrow frames; None: unsealed (the centre refuses)
        self.links = list(links)
        self.edge = edge
        self.media_dir = media_dir
        self.state_dir = data_dir / "uplink"
        self.ack_timeouts = ack_timeouts or {}
        self.part_bytes = part_bytes
        self.max_fragments = max_fragments
        self.poll_s = poll_s
        # Sealed frames take their sequences beside the key: a lost state folder must not
        # restart the sequence (and so the nonces) of a key still in use.
        seq_path = None if security is None else security.sequence_path
        self.msgseq = MessageSequence(seq_path or self.state_dir / "msgseq")
        # IP requests are signed with keys of the same pair, numbered beside the key too.
        self.signer = None if security is None else RequestSigner.for_kit(security)
        self.inflight: dict[int, dict[str, float]] = {}  # seq -> {link: ack deadline}
        self.transfers: dict[int, Transfer] = {}
        self.sent: OrderedDict[int, list[bytes]] = OrderedDict()
        self.reassembler = frames.Reassembler()
        self._acks: asyncio.Queue[list[tuple[int, int]]] = asyncio.Queue()
        self._wake = {link.name: asyncio.Event() for link in self.links}
        self._carriers: dict[str, set[str]] = {}  # link -> its streams busy with a chunk
        self._tasks: set[asyncio.Task[None]] = set()
        self.on_link_state: Callable[[Link], None] | None = None  # a link went up or down
        self.paused: frozenset[Priority] = frozenset()  # classes held back (power saving)
        self.on_order: Callable[[frames.Order, str], None] | None = None  # (order, link name)

    # -- wiring -----------------------------------------------------------------------------

    def wake(self) -> None:
        for event in self._wake.values():
            event.set()

    def _link_changed(self, link: Link) -> None:
        self.wake()
        if self.on_link_state is not None:
            self.on_link_state(link)

    async def run(self) -> None:
        tasks = []
        for link in self.links:
            link.on_state = self._link_changed
            if isinstance(link, IpLink):
                link.kit_id = self.kit_id
                link.auth = self.signer
                link.on_acks = self._acks.put_nowait
                link.on_orders = lambda orders, name=link.name: self._orders(orders, name)
            if isinstance(link, FrameLink):
                link.on_frame = lambda frame, link=link: self._inbound(link, frame)
            tasks.append(asyncio.create_task(link.run(), name=f"link-{link.name}"))
            tasks.append(asyncio.create_task(self._sender(link), name=f"send-{link.name}"))
        tasks.append(asyncio.create_task(self._ack_pump(), name="acks"))
        tasks.append(asyncio.create_task(self._sweeper(), name="timeouts"))
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in [*tasks, *self._tasks]:
                t.cancel()
            await asyncio.gather(*tasks, *self._tasks, return_exceptions=True)
            for link in self.links:
                try:
                    await link.close()
                except Exception:  # one device failing to close must not keep the others open
                    log.exception("closing link %s failed", link.name)

    # -- acknowledgements -------------------------------------------------------------------

    async def _ack_pump(self) -> None:
        while True:
            ranges = await self._acks.get()
            while not self._acks.empty():
                ranges += self._acks.get_nowait()
            try:
                answer = await self.edge.call({"op": "ack", "ranges": [list(r) for r in ranges]})
            except EdgeUnavailable:
                log.warning(
                    "edge unavailable; acknowledgements will come again with the next answer"
                )
                continue
            for seq in answer["seqs"]:
                self.inflight.pop(seq, None)
                transfer = self.transfers.pop(seq, None)
                if transfer is not None:
                    transfer.forget()
            if answer["seqs"]:
                self.wake()

    def _inbound(self, link: FrameLink, data: bytes) -> None:
        try:
            frame = frames.decode_frame(data, sealer=self.security)
            refused = None if self.security is None else self.security.fresh(frame)
            if refused is not None:
                raise refused
        except frames.BadFrame as exc:
            if self.security is not None:
                self.security.refuse(exc, kit_id=self.kit_id, link=link.name, size=len(data))
            log.info("ignored a frame on %s: %s", link.name, exc)
            return
        if not frame.downlink or frame.kit_id != self.kit_id:
            log.info("ignored a frame on %s for kit %d", link.name, frame.kit_id)
            return
        outcome = self.reassembler.add(frame)
        if outcome.message is None:
            return
        message = outcome.message
        try:
            if message.type is frames.FrameType.ACK:
                self._acks.put_nowait(
                    [(r.start, r.stop - 1) for r in frames.unpack_ack(message.payload)]
                )
            elif message.type is frames.FrameType.ORDER:
                self._orders([frames.unpack_order(message.payload)], link.name)
            elif message.type is frames.FrameType.MISSING:
                missing = frames.unpack_missing(message.payload)
                cached = self.sent.get(missing.msg_seq)
                if cached is not None:
                    asyncio.get_running_loop().create_task(
                        self._resend(link, [cached[i] for i in missing.indices if i < len(cached)])
                    )
            else:
                log.info(
                    "frame type %s on %s not handled by the uplink", message.type.name, link.name
                )
        except frames.BadFrame as exc:
            log.info("ignored a message on %s: %s", link.name, exc)

    def _orders(self, orders: list[frames.Order], link: str) -> None:
        for order in orders:
            if self.on_order is None:
                log.warning("order %d over %s: nobody takes orders", order.order_id, link)
                continue
            try:
                self.on_order(order, link)
            except Exception:  # the next order (and the acks) must still be handled
                log.exception("order %d over %s not handled", order.order_id, link)

    async def _resend(self, link: FrameLink, fragments: list[bytes]) -> None:
        """A lost fragment is re-sent alone (byte-identical, so its nonce is unchanged)."""
        for frag in fragments:
            await self._pace(link)
            await link.send(frag)

    async def _sweeper(self) -> None:
        """Items whose every send timed out without an acknowledgement go back to ready."""
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            expired = [
                seq for seq, deadlines in self.inflight.items() if max(deadlines.values()) < now
            ]
            if not expired:
                continue
            for seq in expired:
                del self.inflight[seq]
            try:
                await self.edge.call({"op": "requeue", "seqs": expired})
                log.info("no acknowledgement in time: %d items back to ready", len(expired))
            except EdgeUnavailable:
                log.warning("edge unavailable; in-flight items return to ready when it restarts")
            self.wake()

    # -- sending ----------------------------------------------------------------------------

    async def _sender(self, link: Link) -> None:
        idle = 0  # empty looks in a row: an idle kit asks the outbox less and less often
        while True:
            wake = self._wake[link.name]
            wake.clear()
            try:
                busy = await self._send_once(link)
            except (LinkDown, LinkRefused, EdgeUnavailable, OSError) as exc:
                log.info("send on %s failed: %s", link.name, exc)
                busy = False
            except KitError as exc:
                log.warning("send on %s failed: %s", link.name, exc)
                busy = False
            if busy:
                idle = 0
                continue
            # New items, acks, timeouts and links coming up all wake the sender; the poll
            # is only a safety net (bus events can be dropped), so it backs off while idle.
            timeout = min(self.poll_s * 2**idle, max(self.poll_s, IDLE_POLL_MAX_S))
            ready_in = link.next_send_at() - time.monotonic()
            if link.online and link.narrow and ready_in > 0:
                timeout = min(timeout, max(0.05, ready_in))
            try:
                await asyncio.wait_for(wake.wait(), timeout)
                idle = 0
            except TimeoutError:
                idle = min(idle + 1, 16)

    def view(self, link: Link) -> LinkView:
        if isinstance(link, FrameLink):
            payload = link.mtu - frames.FRAGMENT_OVERHEAD
            max_item, batch = payload * self.max_fragments, (link.mtu - frames.SINGLE_OVERHEAD) * 4
        else:
            max_item, batch = 2**62, link.mtu
        budget = None if link.params.budget is None else link.params.budget - link.stats.cost
        return LinkView(
            name=link.name,
            narrow=link.narrow,
            online=link.online,
            classes=link.classes - self.paused,
            max_item=max_item,
            batch_bytes=batch,
            rate=link.rate.value,
            ready_in=max(0.0, link.next_send_at() - time.monotonic()),
            cost_per_byte=link.params.cost_per_byte,
            cost_per_message=link.params.cost_per_message,
            budget_left=budget,
        )

    async def _candidates(
        self, link: Link, view: LinkView
    ) -> tuple[list[Candidate], list[Candidate], dict[int, bytes]]:
        classes = sorted(classes_for(view))
        answer = await self.edge.call(
            {
                "op": "next",
                "classes": [int(p) for p in classes],
                "max_size": min(view.max_item, 2**62),
                "limit": 64,
            }
        )
        bodies: dict[int, bytes] = {}
        ready = []
        for seq, prio, size, source, body in answer["items"]:
            bodies[seq] = body
            ready.append(Candidate(seq, Priority(prio), size, source))
        p0: list[Candidate] = []
        # P0 in flight goes on every link; P1-P3 may overtake a far slower link.
        flying = [int(p) for p in classes if p is Priority.P0 or self._overtaking(view, p)]
        if flying:
            answer = await self.edge.call({"op": "in_flight", "classes": flying, "limit": 64})
            for seq, prio, size, source, body in answer["items"]:
                bodies[seq] = body
                p0.append(
                    Candidate(
                        seq, Priority(prio), size, source, frozenset(self.inflight.get(seq, {}))
                    )
                )
        return ready, p0, bodies

    def rates(self) -> dict[str, float]:
        return {link.name: link.rate.value for link in self.links}

    def _overtaking(self, view: LinkView, priority: Priority) -> bool:
        """Whether any other link is slow enough for ``view``'s link to overtake it."""
        if priority is Priority.P4:
            return False
        return any(
            r * OVERTAKE_RATIO <= view.rate for n, r in self.rates().items() if n != view.name
        )

    async def _send_once(self, link: Link) -> bool:
        """One send decision on ``link``; True if something went out (ask again at once)."""
        view = self.view(link)
        if not usable(view):
            return False
        if isinstance(link, IpLink):
            return await self._send_ip(link, view)
        if isinstance(link, FrameLink):
            return await self._send_narrow(link, view)
        return False

    def _deadline(self, link: Link, extra: float = 0.0) -> float:
        return time.monotonic() + self.ack_timeouts.get(link.name, 60.0) + extra

    async def _mark_sent(self, link: Link, seqs: list[int], deadline: float) -> list[int]:
        answer = await self.edge.call({"op": "sent", "seqs": seqs, "link": link.name})
        allowed: list[int] = answer["seqs"]
        for seq in allowed:
            self.inflight.setdefault(seq, {})[link.name] = deadline
        return allowed

    async def _unsent(self, link: Link, seqs: list[int]) -> None:
        """The send failed: these items are no longer in flight on ``link``."""
        back = []
        for seq in seqs:
            links = self.inflight.get(seq, {})
            links.pop(link.name, None)
            if not links:
                self.inflight.pop(seq, None)
                back.append(seq)
        if back:
            await self.edge.call({"op": "requeue", "seqs": back})

    # IP: batches of small items, or one chunk of a bulk transfer, per decision.

    async def _send_ip(self, link: IpLink, view: LinkView) -> bool:
        ready, p0, bodies = await self._candidates(link, view)
        chosen = plan(view, ready, p0, self.rates())
        items = {c.seq: decode(bodies[c.seq]) for c in chosen}
        # Media files travel by tus (records follow their files); the rest in one batch.
        plain = [c for c in chosen if items[c.seq].media is None]
        if not plain:
            return await self._send_media(link, chosen, items)
        seqs = await self._mark_sent(link, [c.seq for c in plain], self._deadline(link))
        if seqs:
            try:
                await link.post_items([(s, cbor2.loads(bodies[s])) for s in seqs])
            except (LinkDown, LinkRefused):
                await self._unsent(link, seqs)
                raise
        # Media does not wait for a moment with no small item ready (positions may never
        # pause): what the classes allow next, once this batch is out, takes a spare stream.
        sent = {c.seq for c in plain}
        rest = plan(view, [c for c in ready if c.seq not in sent], (), self.rates())
        items.update({c.seq: decode(bodies[c.seq]) for c in rest if c.seq not in items})
        if not rest or items[rest[0].seq].media is not None:
            await self._send_media(link, rest, items)
        return True  # the answer's acknowledgements are on their way to the edge

    async def _send_media(
        self, link: IpLink, chosen: list[Candidate], items: dict[int, Item]
    ) -> bool:
        """Advance a transfer (or start the one ``chosen`` leads with) on a free stream."""
        running = self._carriers.setdefault(link.name, set())
        streams = self.streams_for(link)
        if len(running) >= streams:
            return False
        carrier = next(
            f"{link.name}#{i}" for i in range(streams) if f"{link.name}#{i}" not in running
        )
        for transfer in self.transfers.values():
            work = transfer.claim(carrier)
            if work is not False:
                break
        else:
            if not chosen:
                return False
            seq = chosen[0].seq
            damage = await asyncio.to_thread(media_damage, self.media_dir, items[seq])
            if damage is not None:  # sending cannot repair it: out of the queue, logged
                log.warning("item %d not sent, withdrawn: %s", seq, damage)
                await self.edge.call({"op": "withdraw", "seqs": [seq]})
                return True
            if not await self._mark_sent(link, [seq], math.inf):
                return True
            transfer = Transfer.open(
                seq,
                self.kit_id,
                items[seq],
                self.media_dir,
                self.state_dir / "transfers",
                self.part_bytes,
            )
            self.transfers[seq] = transfer
            if transfer.complete:  # finished before a restart or a lost answer: send the record
                await self._post_record(link, transfer)
                return True
            work = transfer.claim(carrier)
            if work is False:
                return True
        running.add(carrier)
        task = asyncio.create_task(self._carry(link, transfer, work, carrier))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    def streams_for(self, link: IpLink) -> int:
        """Concurrent chunk uploads that keep the link's pipe full (bandwidth × delay).

        The configured rate is a floor: a rate measured with too few streams would only
        confirm itself. Two spare streams cover a chunk stalled by a loss.
        """
        rate = max(link.params.rate, link.rate.value)
        bdp = rate * link.rtt.value
        return max(1, min(link.config.streams, math.ceil(bdp / link.config.chunk_bytes) + 2))

    async def _carry(
        self, link: IpLink, transfer: Transfer, work: Part | bool, carrier: str
    ) -> None:
        try:
            await transfer.step(work, link, carrier, link.config.chunk_bytes)
            if work is True and transfer.complete:
                await self._post_record(link, transfer)
        except MediaDamaged:  # back to the queue, where the check above withdraws it
            self.transfers.pop(transfer.seq, None)
            transfer.forget()
            self.inflight.pop(transfer.seq, None)
            try:
                await self.edge.call({"op": "requeue", "seqs": [transfer.seq]})
            except EdgeUnavailable as exc:  # in flight until the edge requeues it at start
                log.warning("item %d: damaged media not requeued: %s", transfer.seq, exc)
        except (LinkDown, LinkRefused, OSError) as exc:
            log.info("transfer of %d on %s interrupted: %s", transfer.seq, carrier, exc)
        finally:
            self._carriers[link.name].discard(carrier)
            self._wake[link.name].set()

    async def _post_record(self, link: IpLink, transfer: Transfer) -> None:
        """The file is at the centre: send the item's record, which completes it there."""
        self.inflight.setdefault(transfer.seq, {})[link.name] = self._deadline(link)
        await link.post_items([(transfer.seq, to_wire(transfer.item))])

    # Narrow: several small items in one frame, or one item in fragments.

    async def _send_narrow(self, link: FrameLink, view: LinkView) -> bool:
        ready, p0, bodies = await self._candidates(link, view)
        items = {seq: decode(body) for seq, body in bodies.items()}
        # Media crosses a narrow link only inline, and only small previews (a thumbnail,
        # a Codec2 note); anything larger waits for an IP link.
        ready = [c for c in ready if _inline_ok(items[c.seq])]
        chosen = plan(view, ready, p0, self.rates())
        if not chosen:
            return False
        entries = [(c.seq, items[c.seq]) for c in chosen]
        blobs = {seq: self._blob(item) for seq, item in entries if item.media is not None}
        fit = compact.count_fitting(entries, link.mtu, blobs=blobs)
        entries = entries[: max(fit, 1)]
        payload = compact.pack_items(entries, blobs=blobs)
        msg_seq = self.msgseq.next()
        pieces = frames.fragment(self.kit_id, msg_seq, payload, link.mtu, sealer=self.security)
        deadline = self._deadline(link, len(pieces) * link.min_interval)
        seqs = await self._mark_sent(link, [s for s, _ in entries], deadline)
        if not seqs:
            return True
        if len(seqs) != len(entries):  # some were acknowledged meanwhile: frame the rest anew
            payload = compact.pack_items([(s, i) for s, i in entries if s in seqs], blobs=blobs)
            pieces = frames.fragment(self.kit_id, msg_seq, payload, link.mtu, sealer=self.security)
        self.sent[msg_seq] = pieces
        while len(self.sent) > SENT_CACHE:
            self.sent.popitem(last=False)
        try:
            for piece in pieces:
                await self._pace(link)
                await link.send(piece)
        except (LinkDown, LinkRefused):
            await self._unsent(link, seqs)
            raise
        return True

    def _blob(self, item: Item) -> bytes:
        assert item.media is not None
        return (self.media_dir / item.media.path).read_bytes()

    @staticmethod
    async def _pace(link: FrameLink) -> None:
        wait = link.next_send_at() - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)


def _inline_ok(item: Item) -> bool:
    media = item.media
    return media is None or (item.priority is Priority.P3 and media.size <= compact.MAX_BLOB_BYTES)
