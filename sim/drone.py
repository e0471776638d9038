"""A simulated drone: ffmpeg pushing a test stream to the kit (RTMP) or sending UDP MPEG-TS.

Encoding a test pattern live costs 30–60 % of a core (TESTBED.md), so a short clip is
encoded once into a cache folder and looped with ``-stream_loop -1 -re -c copy`` (~2 %).
Like a controller app, the drone keeps trying to connect until it is stopped: the kit's
RTMP listener may not be up yet, or may be restarting between sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
from pathlib import Path
from typing import Literal

log = logging.getLogger("sim.drone")

CLIP_S = 5
RETRY_S = 0.3  # a refused push is tried again this soon

Codec = Literal["h264", "mpeg2video"]

_ENCODERS: dict[str, list[str]] = {
    # Key frame every second: the recorder cuts segments on key frames.
    "h264": ["-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", "15",
             "-pix_fmt", "yuv420p"],
    "mpeg2video": ["-c:v", "mpeg2video", "-q:v", "8", "-g", "15"],
}  # fmt: skip


def clip(cache: Path, codec: Codec = "h264", ffmpeg: str = "ffmpeg") -> Path:
    """A 5 s 640x360 15 fps test clip in ``codec``, encoded once and kept in ``cache``."""
    path = cache / f"testsrc2-{codec}-{CLIP_S}s.ts"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        temp = path.with_suffix(".part")
        subprocess.run(
            [ffmpeg, "-hide_banner", "-loglevel", "error", "-y",
             "-f", "lavfi", "-i", f"testsrc2=size=640x360:rate=15:duration={CLIP_S}",
             *_ENCODERS[codec], "-f", "mpegts", str(temp)],
            check=True,
        )  # fmt: skip
        temp.replace(path)
    return path


class SimDrone:
    """Streams a looped clip to ``url`` (``rtmp://…`` pushes FLV, ``udp://…`` sends MPEG-TS)."""

    def __init__(
        self, url: str, cache: Path, *, codec: Codec = "h264", ffmpeg: str = "ffmpeg"
    ) -> None:
        self.url = url
        self.cache = cache
        self.codec = codec
        self.ffmpeg = ffmpeg
        self.attempts = 0  # pushes started: the first, and each retry after a refusal
        self._task: asyncio.Task[None] | None = None

    def _command(self, source: Path) -> list[str]:
        if self.url.startswith("rtmp://"):
            out = ["-f", "flv", self.url]
        else:
            out = ["-f", "mpegts", f"{self.url}?pkt_size=1316"]
        return [self.ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin",
                "-stream_loop", "-1", "-re", "-i", str(source), "-c", "copy", *out]  # fmt: skip

    async def start(self) -> None:
        """Start streaming (the radio link comes up); retries until connected."""
        if self._task is None:
            source = await asyncio.to_thread(clip, self.cache, self.codec, self.ffmpeg)
            self._task = asyncio.create_task(self._fly(source))

    async def stop(self) -> None:
        """Stop streaming (the link drops): the kit sees the stream end."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def _fly(self, source: Path) -> None:
        while True:
            proc = await asyncio.create_subprocess_exec(
                *self._command(source),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            self.attempts += 1
            try:
                await proc.wait()
            finally:
                if proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await proc.wait()
            log.debug("drone stream to %s ended (%s); retrying", self.url, proc.returncode)
            await asyncio.sleep(RETRY_S)
