"""`kit media`: record the configured video sources and file each segment with the edge.

Boot order: recover what is on disk (segments finished before a crash or an unavailable
edge are offered again, with their original item uid, so the edge never files one twice),
start a recorder per enabled source, then file segments as they come — retrying with
back-off while the edge is unavailable — and publish each recorder's state on change
and every :data:`REPORT_S`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import zmq.asyncio

from config.schema import KitConfig
from edge import bus, topics
from edge.client import AsyncEdgeClient
from edge.daemon import RPC_SOCKET
from edge.errors import EdgeUnavailable, KitError
from edge.service import run_service
from media.config import MediaConfig
from media.durable import DiskFull
from media.ingest import Recorder
from media.segments import Clock, Pending, SegmentFolder, system_clock

log = logging.getLogger("media")

REPORT_S = 10.0  # recorder states are published this often, and on every change
RETRY_S = (0.5, 30.0)  # back-off while the edge does not answer: first and longest wait


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
        self.accepted = 0
        self._queue: asyncio.Queue[Pending] = asyncio.Queue()  # bounded by the disk it indexes
        self._changed = asyncio.Event()
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

    async def _queue_segment(self, pending: Pending) -> None:
        self._queue.put_nowait(pending)

    async def start(self) -> None:
        for name, folder in self.folders.items():
            for pending in await asyncio.to_thread(folder.recover):
                log.info("%s: segment %s waits to be filed", name, pending.index.stem)
                self._queue.put_nowait(pending)
        for recorder in self.recorders:
            await recorder.start()

    async def close(self) -> None:
        for recorder in self.recorders:
            await recorder.close()

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
        self.accepted += 1
        log.info("segment %s filed as #%d", pending.index.stem, seq)

    async def report(self) -> None:
        """Publish every recorder's state on change and every ``REPORT_S``."""
        while True:
            self._changed.clear()
            for recorder in self.recorders:
                await self.publisher.publish(topics.DEVICE_STATE, recorder.state())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), REPORT_S)


async def serve(
    config: KitConfig, media: MediaConfig, stop: asyncio.Event, *, clock: Clock = system_clock
) -> None:
    edge = AsyncEdgeClient(config.endpoint(RPC_SOCKET), timeout_s=config.edge.rpc_timeout_s)
    publisher = bus.Publisher(zmq.asyncio.Context.instance(), config.endpoint(bus.PUB_SOCKET))
    service = MediaService(config, media, edge, publisher, clock=clock)
    if not service.recorders:
        log.warning("没有配置视频源 / no video sources: add [[media.sources]] to the config")
    await service.start()
    tasks = [
        asyncio.create_task(service.file_segments()),
        asyncio.create_task(service.report()),
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
        await edge.close()


def main(config_path: Path | None = None) -> int:
    async def serve_media(config: KitConfig, stop: asyncio.Event) -> None:
        await serve(config, config.media, stop)

    return run_service("media", serve_media, config_path)
