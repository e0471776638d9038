"""The disk quota applied by the media service, with a real edge and its bus."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import zmq.asyncio
from conftest import endpoint, start_edge, stop

from config.loader import parse
from edge import bus, topics
from edge.client import AsyncEdgeClient
from edge.item import Kind
from media import process
from media.config import MediaConfig, VideoSource
from media.process import MediaService
from media.segments import Pending, SegmentFolder
from media.thumbs import Derivative, DerivedFolder
from sim.drone import clip

pytestmark = pytest.mark.timeout(60)
NOW_MS = 1_790_000_000_000


async def until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)


def segment(folder: SegmentFolder, source: Path, n: int) -> Pending:
    """A recorded segment of the drone clip, minute ``n`` of the flight."""
    folder.prepare()
    temp = folder.folder / f".rec-1-{n:05d}.ts"
    shutil.copyfile(source, temp)
    start = NOW_MS + n * 60_000
    made = folder.finish(temp, start, start + 5000, True)
    assert made is not None
    return made


def used(media_dir: Path) -> int:
    return sum(p.stat().st_size for p in media_dir.rglob("*") if p.is_file())


def test_the_oldest_video_whose_preview_the_centre_has_is_evicted_past_the_quota(
    kit_config: Path, tmp_path_factory: pytest.TempPathFactory, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setattr(process, "EVICT_S", (0.1, 60.0))
    caplog.set_level(logging.INFO, "media")
    config = parse(kit_config)
    media_dir = config.media_dir
    drone = clip(tmp_path_factory.getbasetemp() / "drone-cache")
    folder = SegmentFolder(media_dir, "drone")
    old, middle, new = (segment(folder, drone, n) for n in (1, 2, 3))
    thumbs = DerivedFolder(media_dir, media_dir / "thumbs" / "drone")
    thumb = Derivative("t1.webp", os.urandom(2000), "thumbnail", "image/webp", {})
    middle_thumb = thumbs.file(
        thumb, source="drone:drone", parent=middle.item, created_ms=NOW_MS, clock_ok=True
    )
    photos = DerivedFolder(media_dir, media_dir / "photos")
    photo = photos.file(  # older than every segment, and acknowledged: photos always stay
        Derivative("p.jpg", os.urandom(300_000), "photo", "image/jpeg", {}),
        source="web", parent=None, created_ms=NOW_MS - 3_600_000, clock_ok=True,
    )  # fmt: skip
    media = MediaConfig(sources=[VideoSource(name="drone", kind="udp", enabled=False)])
    edge_proc = start_edge(kit_config)

    async def main() -> None:
        ctx = zmq.asyncio.Context.instance()
        edge = AsyncEdgeClient(endpoint(kit_config), timeout_s=5.0)
        publisher = bus.Publisher(ctx, config.endpoint(bus.PUB_SOCKET))
        deliveries = bus.Subscriber(ctx, config.endpoint(bus.SUB_SOCKET), topics.ITEMS_DELIVERED)
        service = MediaService(config, media, edge, publisher)
        await service.start()
        tasks = [
            asyncio.create_task(service.file_segments()),
            asyncio.create_task(service.watch_deliveries(deliveries)),
        ]
        try:
            await service.drained()  # the five files recovered at start are filed
            seq = {p.item.uid: json.loads(p.index.read_bytes())["seq"] for p in
                   (old, middle, new, middle_thumb, photo)}  # fmt: skip
            # The on-demand preview clip of the oldest segment, filed behind it.
            preview = await service.preview_clip(old.index)
            await service.drained()
            assert preview.item.kind is Kind.PREVIEW and preview.item.parent == old.item.uid
            seq[preview.item.uid] = json.loads(preview.index.read_bytes())["seq"]
            size = old.item.media.size  # type: ignore[union-attr]
            # Nothing may go yet: the centre has nothing. Over the quota, everything stays.
            service.retention.quota = used(media_dir) - size - size // 2
            assert await service.retention.enforce() == []
            assert service.retention.over > 0
            # The centre acknowledges the old segment's preview, the new segment itself and
            # the photo; the middle one is on its way on a fast link.
            await edge.call({"op": "sent", "seqs": [seq[middle.item.uid]], "link": "cell"})
            acked = [seq[preview.item.uid], seq[new.item.uid], seq[photo.item.uid],
                     seq[middle_thumb.item.uid]]  # fmt: skip
            await edge.call({"op": "ack", "ranges": [[s, s] for s in acked], "link": "cell"})
            quota = asyncio.create_task(service.keep_quota())
            tasks.append(quota)
            await until(lambda: service.retention.evicted == 2)
            state = await edge.call({"op": "get", "seq": seq[old.item.uid]})
            assert state["state"] == "SUPERSEDED"  # withdrawn: the uplink will not look for it
            # Everything else must go too now; the middle segment is being sent: it stays.
            service.retention.quota = 0
            service._grown.set()
            await until(lambda: "kept: its upload has started" in caplog.text)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await service.close()
            publisher.close()
            deliveries.close()
            await edge.close()

    try:
        asyncio.run(main())
    finally:
        stop(edge_proc)
    left = {p.name for p in folder.folder.glob("*.ts")}
    assert left == {Path(middle.item.media.path).name}  # type: ignore[union-attr]
    for pending in (old, new):
        entry = json.loads(pending.index.read_bytes())
        assert "centre has" in entry["evicted"] and entry.get("acked", False) is (pending is new)
    assert (media_dir / photo.item.media.path).exists()  # type: ignore[union-attr]
    evictions = [r.getMessage() for r in caplog.records if r.getMessage().startswith("evicted")]
    assert len(evictions) == 2  # in either order: acknowledgements come by bus and by asking
    assert any(old.index.stem in e and "centre has its preview" in e for e in evictions)
    assert any(new.index.stem in e and "centre has the file" in e for e in evictions)
