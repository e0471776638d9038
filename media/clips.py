"""Preview clips (P3): a few seconds of a recorded segment, small enough for slow links.

A clip is the segment's first :data:`CLIP_S` seconds transcoded to H.264 at 320 pixels
wide, 10 frames a second and at most 64 kbit/s (about 60 kB for 10 s), in an MP4 that
plays while it downloads. It is made on demand (:meth:`ClipMaker.clip`) or by policy:
of the segments of each ``every_min`` minutes of video, the one whose scene score is the
highest — what changed most — gets a clip once that stretch of video is over. Like every
media file it is durable (temporary name, fsync, rename, fsync folder) before its item
(``preview``, P3, whose ``parent`` is the segment) is offered to the edge.
"""

from __future__ import annotations

import logging
import subprocess
from dataclasses import dataclass
from pathlib import Path

from edge.errors import KitError
from edge.item import Item
from media import durable
from media.segments import Pending
from media.thumbs import Derivative, DerivedFolder

log = logging.getLogger("media.clips")

CLIP_S = 10.0
WIDTH = 320
FPS = 10
KBPS = 48  # average; the encoder's buffer caps it at MAX_KBPS
MAX_KBPS = 64
MIME = "video/mp4"
TIMEOUT_S = 120


class ClipError(KitError, ValueError):
    """A segment from which no preview clip can be made."""


def transcode(
    segment: Path, final: Path, seconds: float = CLIP_S, ffmpeg: str = "ffmpeg"
) -> durable.FileDigest:
    """The first ``seconds`` of ``segment`` as a small H.264 MP4 at ``final``, durably."""
    temp = final.with_name(f".{final.name}.tmp")
    args = [
        ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-y", "-threads", "1",
        "-t", f"{seconds:g}", "-i", str(segment), "-map", "0:v:0", "-an",
        "-vf", f"fps={FPS},scale={WIDTH}:-2", "-c:v", "libx264", "-preset", "veryfast",
        "-b:v", f"{KBPS}k", "-maxrate", f"{MAX_KBPS}k", "-bufsize", f"{MAX_KBPS * 2}k",
        "-g", str(FPS * 5), "-pix_fmt", "yuv420p", "-movflags", "+faststart",
        "-f", "mp4", str(temp),
    ]  # fmt: skip
    try:
        try:
            done = subprocess.run(
                args, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            raise ClipError(
                f"无法制作预览片段：{err}", f"cannot make a preview clip: {err}"
            ) from err
        if done.returncode != 0:
            tail = (done.stderr.strip().splitlines() or ["?"])[-1]
            raise ClipError(
                f"无法从 {segment.name} 制作预览片段：{tail}",
                f"cannot make a preview clip of {segment.name}: {tail}",
            )
        return durable.commit(temp, final)
    finally:
        temp.unlink(missing_ok=True)


@dataclass(frozen=True, slots=True)
class _Best:
    window: int  # start_ms // window length
    score: float
    path: Path
    parent: Item


class ClipMaker:
    """Preview clips of one source's segments: on demand, and the best of each stretch."""

    def __init__(
        self, media_dir: Path, source: str, *, every_min: int = 10, ffmpeg: str = "ffmpeg"
    ) -> None:
        self.folder = DerivedFolder(media_dir, media_dir / "previews" / source)
        self.window_ms = every_min * 60_000
        self.ffmpeg = ffmpeg
        self._best: _Best | None = None

    def clip(self, segment: Path, parent: Item) -> Pending:
        """A clip of ``segment`` now (the on-demand way), durable, with its item."""
        self.folder.folder.mkdir(parents=True, exist_ok=True)
        final = self.folder.folder / f"{segment.stem}.mp4"
        found = transcode(segment, final, ffmpeg=self.ffmpeg)
        info = {"seconds": CLIP_S, "width": WIDTH, "kbps": MAX_KBPS}
        return self.folder.index(
            final,
            found,
            Derivative(final.name, b"", "preview", MIME, info),
            source=parent.source,
            parent=parent,
            created_ms=parent.created_ms,
            clock_ok=parent.clock_ok,
        )

    def offer(self, segment: Path, parent: Item, score: float) -> Pending | None:
        """Note a segment and its scene score; the clip of the best segment of the stretch
        just ended once this one starts the next, else None."""
        if not self.window_ms:
            return None
        start_ms = parent.data.get("start_ms", parent.created_ms)
        assert isinstance(start_ms, int)
        window = start_ms // self.window_ms
        best, made = self._best, None
        if best is not None and window != best.window:
            try:
                made = self.clip(best.path, best.parent)
            except (ClipError, durable.NotDurable) as err:  # evicted, corrupt: none this time
                log.warning("no preview clip of %s: %s", best.path.name, err)
            best = None
        if best is None or score > best.score:
            self._best = _Best(window, score, segment, parent)
        return made
