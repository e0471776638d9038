"""`kit media`: record the configured video sources and file each segment with the edge.

Boot order: recover what is on disk (segments and thumbnails finished before a crash or
an unavailable edge are offered again, with their original item uid, so the edge never
files one twice), start a recorder per enabled source, then file segments as they come —
retrying with back-off while the edge is unavailable — make thumbnails of each new
segment (a short queue; a segment that finds it full gets none, and is counted) and a
preview clip of each stretch's busiest segment, take photos and voice notes dropped into
the inbox, keep the media folder inside its quota (``retention.py``: evictions follow
the centre's acknowledgements heard on the bus), and publish each recorder's state on
change and every :data:`REPORT_S`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from pathlib import Path

import zmq.asyncio

from config.schema import KitConfig
from edge import bus, topics
from edge.client import AsyncEdgeClient
from edge.daemon import RPC_SOCKET
from edge.errors import EdgeUnavailable, KitError
from edge.item import Kind, decode
from edge.service import run_service
from media.clips import ClipError, ClipMaker
from media.config import MediaConfig
from media.durable import DiskFull
from media.inbox import Inbox
from media.ingest import Recorder
from media.photos import PhotoIntake
from media.retention import Retention
from media.segments import Clock, Pending, SegmentFolder, system_clock
from media.thumbs import Thumbnailer, ThumbPolicy
from media.voice import VoiceIntake

log = logging.getLogger("media")

REPORT_S = 10.0  # recorder states are published this often, and on every change
EVICT_S = (5.0, 60.0)  # the quota is checked at most / at least this often
RETRY_S = (0.5, 30.0)  # back-off while the edge does not answer: first and longest wait
THUMB_BACKLOG = 4  # segments waiting for thumbnails; a slow CPU skips rather than piles up


INBOX_SCAN_S = 5.0  # how often the inbox is looked at (a copied file settles in 2 s)


class MediaService:
    """The recorders of one kit and the queue of segments waiting for the edge."""

    def __init__(
        self,
        config: KitConfig,
        media: MediaConfig,
        edge: AsyncEdgeClient,
        publisher: bus.Publisher,
        *,
        clock: Clock = system_clock,
    ) -> None:
        self.edge = edge
        self.publisher = publisher
        self.media_dir = config.media_dir
        self.accepted = 0  # video segments filed
        self.thumbnails = 0  # thumbnails filed
        self.thumbs_dropped = 0  # segments that got no thumbnails: the backlog was full
        self.photos = 0  # full photos filed
        self.voice_notes = 0  # voice notes filed (their narrow-link copy)
        self.previews = 0  # preview clips filed
        self.inbox: Inbox | None = None
        if media.photo_inbox:
            photos = PhotoIntake(config.media_dir, clock=clock)
            voice = VoiceIntake(config.media_dir, ffmpeg=media.ffmpeg, clock=clock)
            self.inbox = Inbox(config.paths.data_dir / "inbox", photos, voice)
        self._queue: asyncio.Queue[Pending] = asyncio.Queue()  # bounded by the disk it indexes
        self._thumb_queue: asyncio.Queue[Pending] = asyncio.Queue(THUMB_BACKLOG)
        self._thumb_task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self.retention = Retention(config.media_dir, media.quota_bytes, edge)
        self._grown = asyncio.Event()  # a file was filed or the centre acknowledged one
        self.folders = {s.name: SegmentFolder(config.media_dir, s.name) for s in media.sources}
        self.recorders = [
            Recorder(
                s,
                self.folders[s.name],
                self._queue_segment,
                ffmpeg=media.ffmpeg,
                clock=clock,
                on_change=self._changed.set,
            )
            for s in media.sources
            if s.enabled
        ]
        policy = ThumbPolicy(per_min=media.thumbs_per_min, threshold=media.scene_threshold)
        self.thumbnailers = {
            s.name: Thumbnailer(config.media_dir, s.name, policy, ffmpeg=media.ffmpeg)
            for s in media.sources
        }
        self.clips = {
            s.name: ClipMaker(
                config.media_dir, s.name, every_min=media.clip_every_min, ffmpeg=media.ffmpeg
            )
            for s in media.sources
        }

    async def _queue_segment(self, pending: Pending) -> None:
        self._queue.put_nowait(pending)
        if not self.thumbnailers[_source(pending)].policy.per_min:
            return
        try:
            self._thumb_queue.put_nowait(pending)
        except asyncio.QueueFull:
            self.thumbs_dropped += 1
            log.warning(
                "segment %s: no thumbnails, %d still waiting", pending.index.stem, THUMB_BACKLOG
            )

    async def start(self) -> None:
        await asyncio.to_thread(self.retention.load)
        for name, folder in self.folders.items():
            for pending in await asyncio.to_thread(folder.recover):
                log.info("%s: segment %s waits to be filed", name, pending.index.stem)
                self._queue.put_nowait(pending)
        for name, thumbnailer in self.thumbnailers.items():
            for pending in await asyncio.to_thread(thumbnailer.folder.recover):
                log.info("%s: thumbnail %s waits to be filed", name, pending.index.stem)
                self._queue.put_nowait(pending)
        if self.inbox is not None:
            self.inbox.inbox.mkdir(parents=True, exist_ok=True)
            for derived in (self.inbox.photos.folder, self.inbox.voice.folder):
                for pending in await asyncio.to_thread(derived.recover):
                    log.info("%s waits to be filed", pending.index.stem)
                    self._queue.put_nowait(pending)
        self._thumb_task = asyncio.create_task(self.make_thumbnails())
        for recorder in self.recorders:
            await recorder.start()

    async def close(self) -> None:
        """Stop recording and thumbnailing.

        Segments still waiting for thumbnails get none: stopping stays quick. Thumbnails
        being written finish in their thread and are offered at the next start.
        """
        for recorder in self.recorders:
            await recorder.close()
        if self._thumb_task is not None:
            self._thumb_task.cancel()
            await asyncio.gather(self._thumb_task, return_exceptions=True)
            self._thumb_task = None

    async def make_thumbnails(self) -> None:
        """Thumbnails of each new segment, queued for filing right behind it."""
        while True:
            pending = await self._thumb_queue.get()
            assert pending.item.media is not None
            path = self.media_dir / pending.item.media.path
            thumbnailer = self.thumbnailers[_source(pending)]
            try:
                made = await asyncio.to_thread(thumbnailer.segment, path, pending.item)
            except KitError as err:  # a corrupt segment: logged and skipped, recording goes on
                log.warning("segment %s: no thumbnails: %s", pending.index.stem, err)
                made = []
            finally:
                self._thumb_queue.task_done()
            for thumb in made:
                self._queue.put_nowait(thumb)
            score = thumbnailer.last_score if made else 0.0  # a corrupt segment: no clip
            clips = self.clips[_source(pending)]
            clip = await asyncio.to_thread(clips.offer, path, pending.item, score)
            if clip is not None:
                self._queue.put_nowait(clip)

    async def preview_clip(self, segment_index: Path) -> Pending:
        """A preview clip of one recorded segment, now (on demand), queued for filing.

        Raises :class:`ClipError` for a segment that is gone (evicted) or unreadable.
        """
        try:
            entry = json.loads(await asyncio.to_thread(segment_index.read_bytes))
            item = decode(bytes.fromhex(entry["item"]))
        except (OSError, ValueError, KeyError) as err:
            raise ClipError(f"没有这个视频段：{err}", f"no such segment: {err}") from err
        if item.kind is not Kind.VIDEO or item.media is None:
            raise ClipError(
                f"{segment_index.name} 不是视频段", f"{segment_index.name} is not a segment"
            )
        path = self.media_dir / item.media.path
        if not path.exists():
            raise ClipError(f"视频段 {path.name} 已清理", f"segment {path.name} was evicted")
        made = await asyncio.to_thread(
            self.clips[_source(Pending(item, segment_index))].clip, path, item
        )
        self._queue.put_nowait(made)
        return made

    async def watch_inbox(self) -> None:
        """Every ``INBOX_SCAN_S``, file the photos (thumbnails first) and voice notes dropped
        into the inbox."""
        if self.inbox is None:
            return
        while True:
            try:
                made = await asyncio.to_thread(self.inbox.scan)
            except (OSError, KitError) as err:  # a full disk, a vanished file: next scan
                log.warning("inbox: %s", err)
                made = []
            for pending in made:
                self._queue.put_nowait(pending)
            await asyncio.sleep(INBOX_SCAN_S)

    async def file_segments(self) -> None:
        """Offer each durable segment's item to the edge until it is accepted."""
        while True:
            pending = await self._queue.get()
            try:
                await self._file(pending)
            finally:
                self._queue.task_done()

    async def drained(self) -> None:
        """Until every queued segment has been filed (or refused)."""
        await self._queue.join()

    async def _file(self, pending: Pending) -> None:
        delay = RETRY_S[0]
        while True:
            try:
                answer = await self.edge.accept(pending.item)
            except EdgeUnavailable as err:
                log.warning("%s; retrying in %.1f s", err, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_S[1])
                continue
            except KitError as err:  # refused: kept on disk, offered again at next start
                log.error("segment %s not filed: %s", pending.index.stem, err)
                return
            await self._record_accept(pending, answer["seq"])
            self.retention.filed(pending.index, answer["seq"])
            self._grown.set()
            return

    async def _record_accept(self, pending: Pending, seq: int) -> None:
        delay = RETRY_S[0]
        while True:
            try:
                await asyncio.to_thread(SegmentFolder.accepted, pending, seq)
                break
            except DiskFull as err:  # the item is safe in the outbox; its index can wait
                log.error("%s; retrying in %.1f s", err, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_S[1])
        kind = pending.item.kind
        if kind is Kind.VIDEO:
            self.accepted += 1
        elif kind is Kind.PHOTO:
            self.photos += 1
        elif kind is Kind.VOICE:
            self.voice_notes += 1
        elif kind is Kind.THUMBNAIL:
            self.thumbnails += 1
        elif kind is Kind.PREVIEW:
            self.previews += 1
        log.info("%s %s filed as #%d", pending.item.kind.value, pending.index.stem, seq)

    async def watch_deliveries(self, deliveries: bus.Subscriber) -> None:
        """Record what the centre acknowledged (``item.delivered``) in the index entries."""
        while True:
            _, delivered = await deliveries.receive()
            assert isinstance(delivered, topics.ItemsDelivered)
            try:
                if await asyncio.to_thread(self.retention.delivered, delivered.seqs):
                    self._grown.set()
            except KitError as err:  # a full disk: learnt again from the edge at next start
                log.error("acknowledgements not recorded: %s", err)

    async def keep_quota(self) -> None:
        """Evict past the quota whenever files or acknowledgements came, at most every 5 s."""
        caught_up = False
        while True:
            try:
                if not caught_up:
                    await self.retention.catch_up()
                    caught_up = True
                await self.retention.enforce()
            except (EdgeUnavailable, KitError, OSError) as err:
                log.warning("disk quota not applied: %s", err)
            await asyncio.sleep(EVICT_S[0])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._grown.wait(), EVICT_S[1])
            self._grown.clear()

    async def report(self) -> None:
        """Publish every recorder's state on change and every ``REPORT_S``."""
        while True:
            self._changed.clear()
            for recorder in self.recorders:
                await self.publisher.publish(topics.DEVICE_STATE, recorder.state())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), REPORT_S)


def _source(pending: Pending) -> str:
    """The configured name of the feed a segment came from (its item's ``drone:<name>``)."""
    return pending.item.source.removeprefix("drone:")


async def serve(
    config: KitConfig, media: MediaConfig, stop: asyncio.Event, *, clock: Clock = system_clock
) -> None:
    edge = AsyncEdgeClient(config.endpoint(RPC_SOCKET), timeout_s=config.edge.rpc_timeout_s)
    ctx = zmq.asyncio.Context.instance()
    publisher = bus.Publisher(ctx, config.endpoint(bus.PUB_SOCKET))
    deliveries = bus.Subscriber(ctx, config.endpoint(bus.SUB_SOCKET), topics.ITEMS_DELIVERED)
    service = MediaService(config, media, edge, publisher, clock=clock)
    if not service.recorders:
        log.warning("没有配置视频源 / no video sources: add [[media.sources]] to the config")
    await service.start()
    tasks = [
        asyncio.create_task(service.file_segments()),
        asyncio.create_task(service.report()),
        asyncio.create_task(service.watch_inbox()),
        asyncio.create_task(service.watch_deliveries(deliveries)),
        asyncio.create_task(service.keep_quota()),
    ]
    try:
        await stop.wait()
    finally:
        await service.close()  # the last segments join the queue; it drains below if it can
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(service.drained(), config.edge.rpc_timeout_s)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        publisher.close()
        deliveries.close()
        await edge.close()


def main(config_path: Path | None = None) -> int:
    async def serve_media(config: KitConfig, stop: asyncio.Event) -> None:
        await serve(config, config.media, stop)

    return run_service("media", serve_media, config_path)
