"""Drone video end to end with real ffmpeg: recorded without decoding, filed with a real edge."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import cv2
import numpy as np
import pytest
import zmq.asyncio
from conftest import endpoint, start_edge, stop

from config.loader import parse
from edge import bus, topics
from edge.client import AsyncEdgeClient
from edge.item import Item, Kind, decode
from media import durable
from media.config import MediaConfig, VideoSource
from media.ingest import Recorder, Status
from media.process import MediaService, serve
from sim.drone import SimDrone, clip
from sim.harness import free_port
from sim.rtsp import RtspServer

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "drone-cache"


@asynccontextmanager
async def media_service(kit_config: Path, media: MediaConfig) -> AsyncIterator[MediaService]:
    """The media process's service against a real edge daemon, stopped and drained after."""
    config = parse(kit_config)
    edge = AsyncEdgeClient(endpoint(kit_config), timeout_s=5.0)
    publisher = bus.Publisher(zmq.asyncio.Context.instance(), config.endpoint(bus.PUB_SOCKET))
    service = MediaService(config, media, edge, publisher)
    await service.start()
    tasks = [asyncio.create_task(service.file_segments()), asyncio.create_task(service.report())]
    try:
        yield service
    finally:
        await service.close()
        await asyncio.wait_for(service.drained(), 10)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        publisher.close()
        await edge.close()


async def until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.2)


def filed_videos(kit_config: Path) -> dict[int, Item]:
    """seq -> item of every video item in the edge's outbox."""
    db = sqlite3.connect(kit_config.parent / "data" / "outbox.sqlite3")
    try:
        rows = db.execute("SELECT seq, body FROM items WHERE kind = 'video'").fetchall()
    finally:
        db.close()
    return {seq: decode(body) for seq, body in rows}


def assert_every_segment_filed_and_intact(kit_config: Path, source: str) -> int:
    media_dir = kit_config.parent / "data" / "media"
    folder = media_dir / "video" / source
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")], "temporary files left"
    items = filed_videos(kit_config)
    segments = sorted(folder.glob("*.ts"))
    for segment in segments:
        entry = json.loads(segment.with_suffix(".json").read_text())
        item = items[entry["seq"]]
        assert item.kind is Kind.VIDEO and item.source == f"drone:{source}"
        assert item.media is not None
        assert item.media.path == segment.relative_to(media_dir).as_posix()
        found = durable.digest(segment)
        assert (found.size, found.sha256) == (item.media.size, item.media.sha256)
        assert entry["end_ms"] >= entry["start_ms"]
        assert entry["partial"] or entry["end_ms"] > entry["start_ms"]
    return len(segments)


def playable_seconds(segment: Path) -> float:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "format=duration",
         "-of", "csv=p=0", str(segment)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return float(out.stdout)


def test_rtmp_push_is_recorded_filed_and_recording_resumes_after_the_stream_drops(
    kit_config: Path, cache: Path
) -> None:
    port = free_port()
    media = MediaConfig(
        sources=[VideoSource(name="drone", kind="rtmp", listen=f"127.0.0.1:{port}", segment_s=2)]
    )
    edge = start_edge(kit_config)
    drone = SimDrone(f"rtmp://127.0.0.1:{port}/live/drone", cache)

    async def fly() -> Recorder:
        async with media_service(kit_config, media) as service:
            (recorder,) = service.recorders
            try:
                await drone.start()
                await until(lambda: recorder.segments >= 2)
                assert recorder.status is Status.RECORDING
                await drone.stop()  # the radio link drops
                await until(lambda: recorder.sessions >= 2 and recorder.status is Status.WAITING)
                before = recorder.segments
                await drone.start()  # and comes back: the kit listens again by itself
                await until(lambda: recorder.segments >= before + 1)
            finally:
                await drone.stop()
            await until(lambda: service.accepted == recorder.segments)
            return recorder

    try:
        recorder = asyncio.run(fly())
    finally:
        stop(edge)
    count = assert_every_segment_filed_and_intact(kit_config, "drone")
    assert count == recorder.segments >= 3
    assert len(filed_videos(kit_config)) == count
    sessions = {
        p.name.split("-")[1] for p in (kit_config.parent / "data/media/video/drone").glob("*.ts")
    }
    assert len(sessions) >= 2
    first = min((kit_config.parent / "data/media/video/drone").glob("*.ts"))
    assert 1.5 <= playable_seconds(first) <= 2.5
    frames = recorder.state().detail["frames"]
    assert isinstance(frames, int) and frames > 0


def test_rtsp_pull_is_recorded_and_resumes_when_the_server_comes_back(
    kit_config: Path, cache: Path
) -> None:
    port = free_port()
    url = f"rtsp://127.0.0.1:{port}/live/drone"
    media = MediaConfig(sources=[VideoSource(name="drone", kind="rtsp", url=url, segment_s=2)])
    edge = start_edge(kit_config)

    async def pull() -> Recorder:
        async with media_service(kit_config, media) as service:
            (recorder,) = service.recorders
            server = RtspServer(cache)
            await server.start(port)
            try:
                await until(lambda: recorder.segments >= 2)
                assert recorder.status is Status.RECORDING and server.sessions == 1
                await server.close()  # the app stops serving (the drone lands)
                await until(lambda: recorder.sessions >= 2 and recorder.status is Status.WAITING)
                before = recorder.segments
                server = RtspServer(cache)
                await server.start(port)  # and serves again: the kit pulls again by itself
                await until(lambda: recorder.segments >= before + 1, timeout=40)
                assert server.sessions >= 1
            finally:
                await server.close()
            await until(lambda: service.accepted == recorder.segments)
            return recorder

    try:
        recorder = asyncio.run(pull())
    finally:
        stop(edge)
    count = assert_every_segment_filed_and_intact(kit_config, "drone")
    assert count == recorder.segments >= 3
    first = min((kit_config.parent / "data/media/video/drone").glob("*.ts"))
    # Cut at the first key frame from 2 s on; the source has one every second.
    assert 1.5 <= playable_seconds(first) <= 3.0


def test_udp_stream_is_recorded_while_a_non_h264_stream_is_refused_with_its_reason(
    kit_config: Path, cache: Path
) -> None:
    good, bad = free_port(), free_port()
    media = MediaConfig(
        sources=[
            VideoSource(name="cam", kind="udp", listen=f"127.0.0.1:{good}", segment_s=2),
            VideoSource(name="old", kind="udp", listen=f"127.0.0.1:{bad}", segment_s=2),
        ]
    )
    edge = start_edge(kit_config)
    config = parse(kit_config)
    drones = [
        SimDrone(f"udp://127.0.0.1:{good}", cache),
        SimDrone(f"udp://127.0.0.1:{bad}", cache, codec="mpeg2video"),
    ]

    async def fly() -> topics.DeviceState:
        sub = bus.Subscriber(
            zmq.asyncio.Context.instance(), config.endpoint(bus.SUB_SOCKET), topics.DEVICE_STATE
        )
        published: dict[str, topics.DeviceState] = {}

        async def listen() -> None:
            while True:
                _, state = await sub.receive()
                published[state.name] = state

        listener = asyncio.create_task(listen())
        try:
            async with media_service(kit_config, media) as service:
                cam, old = service.recorders
                try:
                    for d in drones:
                        await d.start()
                    await until(lambda: cam.segments >= 1 and old.status is Status.REFUSED)
                    await until(lambda: published.get("video:old") == old.state())
                    # What the bus said while refusing (closing publishes "stopped" later).
                    refused = published["video:old"]
                finally:
                    for d in drones:
                        await d.stop()
                assert cam.status is Status.RECORDING
                await until(lambda: service.accepted == cam.segments)
        finally:
            listener.cancel()
            sub.close()
        return refused

    try:
        refused = asyncio.run(fly())
    finally:
        stop(edge)
    assert refused.kind == "video" and not refused.online
    assert (
        refused.summary
        == "拒收视频流：not H.264 but mpeg2video / stream refused: not H.264 but mpeg2video"
    )
    assert refused.detail["status"] == "refused"
    assert list((kit_config.parent / "data/media/video/old").iterdir()) == []
    assert assert_every_segment_filed_and_intact(kit_config, "cam") >= 1


def test_segments_left_on_disk_are_filed_at_start_once_the_edge_answers(
    kit_config: Path, cache: Path
) -> None:
    config = parse(kit_config)
    config = config.model_copy(
        update={"edge": config.edge.model_copy(update={"rpc_timeout_s": 0.3})}
    )
    media = MediaConfig(sources=[VideoSource(name="drone", kind="rtmp", enabled=False)])
    folder = config.media_dir / "video" / "drone"
    folder.mkdir(parents=True)
    clip_bytes = clip(cache).read_bytes()
    (folder / ".rec-9.csv").write_text(".rec-9-00000.ts,0.000000,2.000000\n")
    (folder / ".rec-9-00000.ts").write_bytes(clip_bytes)  # closed before a power cut
    (folder / ".rec-9-00001.ts").write_bytes(clip_bytes[:50_000])  # cut mid-write

    async def run() -> None:
        stop_serving = asyncio.Event()
        serving = asyncio.create_task(serve(config, media, stop_serving))
        await asyncio.sleep(1.0)  # no edge yet: the accepts time out and are retried
        edge = await asyncio.to_thread(start_edge, kit_config)
        try:
            await until(lambda: len(filed_videos(kit_config)) == 2)
            await until(
                lambda: all(json.loads(p.read_text())["seq"] for p in folder.glob("*.json"))
            )
        finally:
            stop_serving.set()
            await serving
            stop(edge)

    asyncio.run(run())
    assert assert_every_segment_filed_and_intact(kit_config, "drone") == 2


def test_a_photo_and_a_voice_note_dropped_in_the_inbox_are_filed_small_copies_first(
    kit_config: Path,
) -> None:
    edge = start_edge(kit_config)
    inbox = kit_config.parent / "data" / "inbox"
    image = np.zeros((900, 1200, 3), np.uint8)
    cv2.rectangle(image, (100, 100), (700, 600), (40, 180, 220), -1)
    ok, jpeg = cv2.imencode(".jpg", image)
    assert ok

    async def main() -> None:
        async with media_service(kit_config, MediaConfig()) as service:
            watcher = asyncio.create_task(service.watch_inbox())
            try:
                photo = inbox / "IMG_0001.jpg"
                photo.write_bytes(jpeg.tobytes())
                os.utime(photo, (time.time() - 10, time.time() - 10))  # copied a while ago
                (inbox / "notes.txt").write_text("不是照片")
                os.utime(inbox / "notes.txt", (time.time() - 10, time.time() - 10))
                memo = inbox / "memo.dat"  # a recorder's odd suffix: its content tells
                subprocess.run(
                    ["ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "lavfi",
                     "-i", "sine=frequency=220:duration=2", "-c:a", "aac", "-f", "mp4", str(memo)],
                    check=True,
                )  # fmt: skip
                os.utime(memo, (time.time() - 10, time.time() - 10))
                await until(
                    lambda: (service.photos, service.thumbnails, service.voice_notes) == (1, 2, 1)
                )
            finally:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)

    try:
        asyncio.run(main())
    finally:
        stop(edge)
    db = sqlite3.connect(kit_config.parent / "data" / "outbox.sqlite3")
    try:
        rows = db.execute("SELECT seq, body FROM items ORDER BY seq").fetchall()
    finally:
        db.close()
    items = [decode(body) for _, body in rows]
    assert [(i.kind, i.priority.name) for i in items] == [
        (Kind.THUMBNAIL, "P3"),
        (Kind.THUMBNAIL, "P3"),
        (Kind.PHOTO, "P4"),
        (Kind.VOICE, "P3"),
        (Kind.AUDIO, "P4"),
    ]
    assert items[0].parent == items[2].uid and items[1].parent == items[2].uid
    assert items[4].parent == items[3].uid
    assert not (inbox / "memo.dat").exists()
    assert not (inbox / "IMG_0001.jpg").exists()  # its durable copy is in the media folder
    assert (inbox / "refused" / "notes.txt").exists()
    assert "notes.txt" not in {p.name for p in inbox.iterdir()}
