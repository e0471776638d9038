"""Thumbnails from real ffmpeg-made segments: key frames only, scene score, size, filing."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import zmq.asyncio
from conftest import endpoint, start_edge, stop

from config.loader import parse
from edge import bus
from edge.client import AsyncEdgeClient
from edge.item import Item, Kind, MediaRef, Priority, decode, new_item
from media import durable
from media.config import MediaConfig, VideoSource
from media.process import MediaService
from media.segments import SegmentFolder
from media.thumbs import (
    FULL_BYTES,
    NARROW_BYTES,
    NARROW_WIDTHS,
    PickBudget,
    SceneScorer,
    Thumbnailer,
    ThumbnailError,
    ThumbPolicy,
    encode_within,
    key_frames,
)
from sim.drone import SimDrone
from sim.harness import free_port

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """4 s 640x360 H.264 segments, a key frame a second: a still scene and a busy one."""
    folder = tmp_path_factory.mktemp("clips")
    made = {}
    for name in ("smptebars", "testsrc2"):
        made[name] = folder / f"{name}.ts"
        subprocess.run(
            ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y",
             "-f", "lavfi", "-i", f"{name}=size=640x360:rate=15:duration=4",
             "-c:v", "libx264", "-preset", "ultrafast", "-g", "15", "-pix_fmt", "yuv420p",
             "-f", "mpegts", str(made[name])],
            check=True,
        )  # fmt: skip
    return made


def segment_item(start_ms: int = 1_790_000_000_000) -> Item:
    ref = MediaRef("video/d/d-1-00001.ts", 1000, "0" * 64, "video/mp2t")
    return new_item(
        "video",
        source="drone:d",
        media=ref,
        created_ms=start_ms,
        clock_ok=True,
        data={"start_ms": start_ms, "end_ms": start_ms + 4000, "partial": False},
    )


def test_only_key_frames_are_decoded_at_the_chosen_rate(clips: dict[str, Path]) -> None:
    every_second = [at for at, _ in key_frames(clips["testsrc2"], every_s=1.0)]
    assert every_second == [0.0, 1.0, 2.0, 3.0]  # 60 frames in the clip, 4 key frames
    frames = list(key_frames(clips["testsrc2"], every_s=2.0))
    assert [at for at, _ in frames] == [0.0, 2.0]
    assert all(f.shape == (180, 320, 3) for _, f in frames)


def test_thumbnails_are_within_size_decodable_durable_and_point_at_their_segment(
    clips: dict[str, Path], tmp_path: Path
) -> None:
    parent = segment_item()
    made = Thumbnailer(tmp_path, "d", ThumbPolicy()).segment(clips["testsrc2"], parent)
    assert len(made) == 2  # one picked frame: its full and its narrow-link variant
    full, narrow = made
    for pending, limit in ((full, FULL_BYTES), (narrow, NARROW_BYTES)):
        item = pending.item
        assert item.kind is Kind.THUMBNAIL and item.priority is Priority.P3
        assert item.parent == parent.uid and item.source == "drone:d"
        assert item.created_ms == parent.created_ms and item.clock_ok
        assert item.media is not None and item.media.mime == "image/webp"
        path = tmp_path / item.media.path
        assert path.parent == tmp_path / "thumbs" / "d"
        assert 0 < item.media.size <= limit
        found = durable.digest(path)
        assert (found.size, found.sha256) == (item.media.size, item.media.sha256)
        image = cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
        assert image is not None and image.shape[1] >= 96
        entry = json.loads(pending.index.read_text())
        assert entry["seq"] is None and decode(bytes.fromhex(entry["item"])) == item
    assert full.item.data["narrow"] is False and narrow.item.data["narrow"] is True
    assert not [p for p in (tmp_path / "thumbs" / "d").iterdir() if p.name.startswith(".")]


def test_scene_score_skips_an_unchanged_scene_and_picks_a_changed_one(
    clips: dict[str, Path], tmp_path: Path
) -> None:
    thumbnailer = Thumbnailer(tmp_path, "d", ThumbPolicy(per_min=30, every_s=1.0))
    first = thumbnailer.segment(clips["smptebars"], segment_item(1_790_000_000_000))
    assert len(first) == 2  # the first view of a feed is always news
    assert thumbnailer.decoded == 4 and thumbnailer.skipped == 3  # a still scene
    again = thumbnailer.segment(clips["smptebars"], segment_item(1_790_000_004_000))
    assert again == []
    changed = thumbnailer.segment(clips["testsrc2"], segment_item(1_790_000_008_000))
    assert changed and changed[0].item.data["scene"] >= 0.12  # type: ignore[operator]


def test_the_budget_caps_thumbnails_per_minute_and_stops_decoding() -> None:
    budget = PickBudget(2)
    assert budget.allows(0)
    budget.spend(0)
    budget.spend(10_000)
    assert not budget.allows(59_999)
    assert budget.allows(60_000)  # the first pick left the window
    assert not PickBudget(0).allows(0)
    scorer = SceneScorer()
    black = np.zeros((90, 160, 3), np.uint8)
    assert scorer.score(black) == 1.0
    scorer.sent(black)
    assert scorer.score(black) == 0.0
    assert scorer.score(np.full_like(black, 255)) == pytest.approx(1.0)


def test_a_spent_budget_leaves_the_rest_of_the_segment_undecoded(
    clips: dict[str, Path], tmp_path: Path
) -> None:
    thumbnailer = Thumbnailer(tmp_path, "d", ThumbPolicy(per_min=1, every_s=1.0, threshold=0.01))
    assert len(thumbnailer.segment(clips["testsrc2"], segment_item())) == 2
    assert thumbnailer.decoded == 2  # the second key frame found the budget spent


def test_encoding_steps_quality_down_until_it_fits_or_says_why() -> None:
    noise = np.random.default_rng(1).integers(0, 256, (180, 320, 3), dtype=np.uint8)
    assert len(encode_within(noise, NARROW_BYTES, NARROW_WIDTHS)) <= NARROW_BYTES
    with pytest.raises(ThumbnailError, match="cannot compress the image within 40 bytes"):
        encode_within(noise, 40, (96,))


def test_a_corrupt_segment_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.ts"
    bad.write_bytes(b"\x47" + bytes(5000))
    with pytest.raises(ThumbnailError, match=r"cannot read video segment bad\.ts"):
        Thumbnailer(tmp_path, "d", ThumbPolicy()).segment(bad, segment_item())


def test_thumbnails_not_yet_accepted_are_offered_again_after_a_crash(
    clips: dict[str, Path], tmp_path: Path
) -> None:
    made = Thumbnailer(tmp_path, "d", ThumbPolicy()).segment(clips["testsrc2"], segment_item())
    SegmentFolder.accepted(made[0], 12)
    (tmp_path / "thumbs" / "d" / ".x.webp.tmp").write_bytes(b"torn")
    again = Thumbnailer(tmp_path, "d", ThumbPolicy()).folder.recover()
    assert [p.item for p in again] == [made[1].item]
    assert not (tmp_path / "thumbs" / "d" / ".x.webp.tmp").exists()


def test_recorded_segments_get_their_thumbnails_filed_with_the_edge(
    kit_config: Path, tmp_path: Path
) -> None:
    port = free_port()
    source = VideoSource(name="cam", kind="udp", listen=f"127.0.0.1:{port}", segment_s=2)
    media = MediaConfig(sources=[source])
    edge_proc = start_edge(kit_config)
    drone = SimDrone(f"udp://127.0.0.1:{port}", tmp_path / "cache")

    async def fly() -> MediaService:
        config = parse(kit_config)
        edge = AsyncEdgeClient(endpoint(kit_config), timeout_s=5.0)
        publisher = bus.Publisher(zmq.asyncio.Context.instance(), config.endpoint(bus.PUB_SOCKET))
        service = MediaService(config, media, edge, publisher)
        await service.start()
        filing = asyncio.create_task(service.file_segments())
        try:
            await drone.start()
            deadline = time.monotonic() + 30
            while service.thumbnails < 2:
                assert time.monotonic() < deadline, "no thumbnails filed"
                await asyncio.sleep(0.2)
        finally:
            await drone.stop()
            await service.close()
            await asyncio.wait_for(service.drained(), 10)
            filing.cancel()
            await asyncio.gather(filing, return_exceptions=True)
            publisher.close()
            await edge.close()
        return service

    try:
        service = asyncio.run(fly())
    finally:
        stop(edge_proc)
    db = sqlite3.connect(kit_config.parent / "data" / "outbox.sqlite3")
    try:
        items = [decode(body) for (body,) in db.execute("SELECT body FROM items")]
    finally:
        db.close()
    videos = {i.uid for i in items if i.kind is Kind.VIDEO}
    thumbs = [i for i in items if i.kind is Kind.THUMBNAIL]
    assert len(thumbs) == service.thumbnails >= 2 and service.thumbs_dropped == 0
    assert all(t.parent in videos for t in thumbs)
    assert all(t.media is not None and t.media.size <= FULL_BYTES for t in thumbs)
