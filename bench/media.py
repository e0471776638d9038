"""Media benchmark: recording CPU, thumbnail size and cost, Codec2 rate, thumbnail latency.

Real ffmpeg, OpenCV, edge, uplink and centre processes; the narrow link is a relay on
loopback emulating a Tiantong-like 9.6 kbit/s satellite phone link in real time.
Prints progress to stderr and one JSON object as the last line of stdout.
    .venv/bin/python bench/media.py [--record-s 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("KIT_CLOCK_SYNCED", "1")
if not __package__:
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from edge.item import MediaRef, new_item
from media.config import VideoSource
from media.ingest import Recorder
from media.segments import Pending, SegmentFolder
from media.thumbs import Thumbnailer, ThumbPolicy
from media.voice import CODEC2_700C, encode
from sim.harness import _spawn as spawn
from sim.harness import centre, free_port, kit
from sim.linkemu import LinkConditions
from sim.linkrelay import LinkRelay

TIANTONG = LinkConditions(rate=1200.0, rtt=1.2)  # 9.6 kbit/s, a GEO round trip and some
CLK_TCK = os.sysconf("SC_CLK_TCK")


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def recorder_pid() -> int:
    """The recorder's ffmpeg: the child of this process that writes a segment list."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(stat[1]) == os.getpid() and b"-segment_list" in cmd:
            return int(proc.name)
    raise RuntimeError("the recorder's ffmpeg is not running")


async def record_1080p30(root: Path, seconds: float) -> tuple[float, list[Path]]:
    """% of one core the recorder's ffmpeg uses on a 1080p30 stream; the segments made."""
    clip = root / "clip-1080p30.ts"
    say("encoding a 10 s 1080p30 clip once …")
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=1920x1080:rate=30:duration=10",
           "-c:v", "libx264", "-preset", "ultrafast", "-b:v", "4M", "-g", "30",
           "-pix_fmt", "yuv420p", "-f", "mpegts", str(clip))  # fmt: skip
    port = free_port()
    source = VideoSource(name="bench", kind="udp", listen=f"127.0.0.1:{port}", segment_s=4)
    folder = SegmentFolder(root / "media", "bench")
    segments: list[Path] = []

    async def took(pending: Pending) -> None:
        assert pending.item.media is not None
        segments.append(root / "media" / pending.item.media.path)

    recorder = Recorder(source, folder, took)
    await recorder.start()
    sender = await asyncio.create_subprocess_exec(
        "ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-stream_loop", "-1",
        "-re", "-i", str(clip), "-c", "copy", "-f", "mpegts",
        f"udp://127.0.0.1:{port}?pkt_size=1316",
    )  # fmt: skip
    try:
        while not segments:
            await asyncio.sleep(0.5)
        pid = recorder_pid()
        say(f"recording 1080p30 for {seconds:g} s …")
        before, start = cpu_s(pid), time.monotonic()
        await asyncio.sleep(seconds)
        pct = 100 * (cpu_s(pid) - before) / (time.monotonic() - start)
    finally:
        sender.terminate()
        await sender.wait()
        await recorder.close()
    return round(pct, 2), segments


def thumbnail_cost(root: Path, segments: list[Path]) -> dict[str, Any]:
    """Thumbnails of the recorded 1080p segments, every key frame two seconds apart picked."""
    say(f"thumbnails of {len(segments)} 1080p segments …")
    thumbnailer = Thumbnailer(root / "media", "bench", ThumbPolicy(per_min=30, threshold=0.0))
    full: list[int] = []
    narrow: list[int] = []
    cpu0 = time.process_time() + resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime
    sys0 = resource.getrusage(resource.RUSAGE_CHILDREN).ru_stime
    for i, path in enumerate(segments):
        for pending in thumbnailer.segment(path, segment_item(path, i)):
            assert pending.item.media is not None
            (narrow if pending.item.data["narrow"] else full).append(pending.item.media.size)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = time.process_time() + children.ru_utime + children.ru_stime - cpu0 - sys0
    return {
        "thumb_bytes": round(sum(full) / len(full)),
        "thumb_narrow_bytes": round(sum(narrow) / len(narrow)),
        "thumb_per_s": round(len(full) / cpu, 1),
        "thumb_decoded_key_frames": thumbnailer.decoded,
    }


def segment_item(path: Path, i: int) -> Any:
    start = int(time.time() * 1000) + i * 4000
    ref = MediaRef(f"video/bench/{path.name}", path.stat().st_size, "0" * 64, "video/mp2t")
    return new_item("video", source="drone:bench", media=ref, data={"start_ms": start})


def codec2_rate(root: Path) -> int:
    say("Codec2 700C, one minute of speech-like audio …")
    wav = root / "minute.wav"
    expr = "(sin(2*PI*140*t)+0.5*sin(2*PI*280*t))*0.3*gt(sin(2*PI*4*t)\\,0)"
    ffmpeg("-f", "lavfi", "-i", f"aevalsrc={expr}:s=16000:d=60", "-ac", "1", str(wav))
    return encode(wav, root / "minute.c2", CODEC2_700C).size


CALM_S = 30  # a still scene first: its first thumbnail reaches the centre, then nothing
SCENE_S = 30  # then the scene changes (the drone turns): how long until the centre sees it?


async def thumb_latency(root: Path) -> dict[str, float]:
    """A new scene in a live drone stream → its thumbnail complete at the centre (9.6 kbit/s).

    The whole path: ``kit media`` recording a UDP stream (10 s segments), thumbnails of each
    closed segment, the edge, the uplink and the centre; the clock starts when the new scene
    starts in the stream. A scene changing just after a segment began waits the whole
    segment, so this varies between runs by up to the segment length.
    """
    stream = root / "calm-then-scene.ts"
    ffmpeg("-f", "lavfi", "-i", f"color=c=0x607080:size=640x360:rate=30:d={CALM_S}",
           "-f", "lavfi", "-i", f"testsrc2=size=640x360:rate=30:d={SCENE_S}",
           "-filter_complex", "[0:v][1:v]concat=n=2:v=1[v]", "-map", "[v]",
           "-c:v", "libx264", "-preset", "ultrafast", "-g", "30", "-pix_fmt", "yuv420p",
           "-f", "mpegts", str(stream))  # fmt: skip
    port = free_port(socket.SOCK_DGRAM)
    media = (
        f'[media]\nthumbs_per_min = 6\n[[media.sources]]\nname = "drone"\nkind = "udp"\n'
        f'listen = "127.0.0.1:{port}"\nsegment_s = 10\n'
    )
    async with centre(root) as (url, centre_dir):
        target = ("127.0.0.1", int(url.rsplit(":", 1)[1]))
        async with LinkRelay(("127.0.0.1", 0), target, TIANTONG, name="tt") as tt:
            link = (
                f'[[links]]\nkind = "ip"\nname = "tiantong"\n'
                f'url = "http://{tt.address[0]}:{tt.address[1]}"\n'
                f"rate = {TIANTONG.rate}\nrtt = {TIANTONG.rtt}\nack_timeout = 20\n"
                "probe_interval = 1\ntimeout = 20\nchunk_bytes = 4096\n"
            )
            async with kit(root, link, extra=media) as k:
                recorder = await spawn(
                    "media", "--config", str(root / "kit.toml"), log=root / "media.log"
                )
                sender = None
                try:
                    await asyncio.sleep(2)  # the recorder listens, the uplink finds its link
                    say(f"drone stream: {CALM_S} s of a still scene, then a new one …")
                    sender = await asyncio.create_subprocess_exec(
                        "ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-re",
                        "-i", str(stream), "-c", "copy", "-f", "mpegts",
                        f"udp://127.0.0.1:{port}?pkt_size=1316",
                    )  # fmt: skip
                    changed = time.monotonic() + CALM_S
                    await asyncio.sleep(CALM_S)
                    before = thumbnails_at(centre_dir)
                    say(f"new scene; {len(before)} thumbnails at the centre before it …")
                    while not thumbnails_at(centre_dir) - before:
                        if time.monotonic() - changed > 120:
                            raise RuntimeError("no thumbnail of the new scene in 120 s")
                        await asyncio.sleep(0.1)
                    latency = time.monotonic() - changed
                finally:
                    if sender is not None and sender.returncode is None:
                        sender.terminate()
                    if sender is not None:
                        await sender.wait()
                    recorder.terminate()
                    await recorder.wait()
                del k
    return {"drone_to_centre_thumb_s": round(latency, 2), "drone_thumb_segment_s": 10}


def thumbnails_at(centre_dir: Path) -> set[int]:
    """Seqs of the thumbnails complete (record and file) at the centre."""
    db = sqlite3.connect(centre_dir / "centre.sqlite3")
    try:
        rows = db.execute(
            "SELECT seq FROM items WHERE kind = 'thumbnail' AND media_path IS NOT NULL"
        ).fetchall()
    finally:
        db.close()
    return {seq for (seq,) in rows}


async def main(record_s: float) -> dict[str, Any]:
    result: dict[str, Any] = {"bench": "media"}
    with tempfile.TemporaryDirectory(prefix="kit-bench-media-") as tmp:
        root = Path(tmp)
        pct, segments = await record_1080p30(root, record_s)
        result["record_1080p30_cpu_pct"] = pct
        result.update(thumbnail_cost(root, segments))
        result["codec2_mode"] = "700C"
        result["codec2_bytes_per_min"] = codec2_rate(root)
        (root / "e2e").mkdir()
        result.update(await thumb_latency(root / "e2e"))
    result["machine"] = (
        f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    return result


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--record-s", type=float, default=20.0)
    args = ap.parse_args()
    print(json.dumps(asyncio.run(main(args.record_s)), ensure_ascii=False))
