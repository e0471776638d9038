"""Thumbnails of recorded video: key frames only, a scene score, WebP within a byte budget.

Images travel first: a thumbnail (P3) reaches the centre long before its segment (P4).
To spare the battery nothing here decodes every frame: ffmpeg decodes only key frames
(``-skip_frame nokey``), at most one every ``every_s`` seconds, scaled down in the decoder
process, and hands them over one at a time through a pipe (never a queue). OpenCV then
scores each against the last thumbnail sent — the mean difference of 32x18 grey
miniatures, a scene change rather than sensor noise — and encodes the picked frames.

Each picked frame gives two files: ≤ 8 KB for IP links and ≤ 1,600 B, small enough to
travel inline over narrow links (``uplink.compact.MAX_BLOB_BYTES``). Both are written
durably with an index entry keeping their item, so a crash before the edge accepted them
offers the same items again at the next start (as ``segments.py`` does for segments).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import subprocess
import tempfile
from collections import deque
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from edge.errors import KitError
from edge.item import Item, MediaRef, Position, decode, encode, new_item
from media import durable
from media.segments import Pending

log = logging.getLogger("media.thumbs")

Frame = npt.NDArray[np.uint8]
"""A BGR image, height x width x 3, as OpenCV holds it."""

MIME = "image/webp"
FULL_BYTES = 8 * 1024  # IP links
NARROW_BYTES = 1600  # inline over narrow links: uplink.compact.MAX_BLOB_BYTES
FULL_WIDTHS = (320, 240, 160)  # tried in turn until a quality fits the budget
NARROW_WIDTHS = (160, 128, 96)
QUALITIES = (80, 65, 50, 35, 20, 10)
MINIATURE = (32, 18)  # the scene score compares these: cheap, blind to noise and detail
DECODE_WIDTH = FULL_WIDTHS[0]
WINDOW_MS = 60_000

_SHOWINFO = re.compile(rb"\bn:\s*\d+\s+pts:\s*-?\d+\s+pts_time:(-?[\d.]+)")


class ThumbnailError(KitError, ValueError):
    """A frame or a segment from which no thumbnail can be made."""


@dataclass(frozen=True, slots=True)
class ThumbPolicy:
    """How many thumbnails a source may send, and what counts as a new scene."""

    per_min: int = 6  # at most this many picked frames in any minute of video
    every_s: float = 2.0  # key frames closer together than this are not even decoded
    threshold: float = 0.12  # scene score (0 same … 1 all different) worth a thumbnail


def miniature(frame: Frame) -> npt.NDArray[np.float32]:
    """The grey 32x18 miniature a scene score compares."""
    grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    small = cv2.resize(grey, MINIATURE, interpolation=cv2.INTER_AREA)
    return np.asarray(small, dtype=np.float32)


class SceneScorer:
    """Scores frames against the last one sent: 1.0 for the first, ~0 for an unchanged view."""

    def __init__(self) -> None:
        self.reference: npt.NDArray[np.float32] | None = None

    def score(self, frame: Frame) -> float:
        if self.reference is None:
            return 1.0
        return float(np.mean(np.abs(miniature(frame) - self.reference)) / 255.0)

    def sent(self, frame: Frame) -> None:
        self.reference = miniature(frame)


class PickBudget:
    """At most ``per_min`` picks in any 60 s of video time (a sliding window)."""

    def __init__(self, per_min: int) -> None:
        self.per_min = per_min
        self._picks: deque[int] = deque(maxlen=max(per_min, 1))

    def allows(self, at_ms: int) -> bool:
        while self._picks and self._picks[0] <= at_ms - WINDOW_MS:
            self._picks.popleft()
        return len(self._picks) < self.per_min

    def spend(self, at_ms: int) -> None:
        self._picks.append(at_ms)


def encode_within(frame: Frame, limit: int, widths: tuple[int, ...] = FULL_WIDTHS) -> bytes:
    """WebP of ``frame`` in at most ``limit`` bytes: quality stepped down, then size."""
    height, width = frame.shape[:2]
    for w in widths:
        h = max(2, round(height * w / width))
        scaled = cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA) if w < width else frame
        for quality in QUALITIES:
            ok, buf = cv2.imencode(".webp", scaled, [cv2.IMWRITE_WEBP_QUALITY, quality])
            if ok and len(buf) <= limit:
                return bytes(buf.tobytes())
    raise ThumbnailError(
        f"无法将图像压缩到 {limit} 字节以内", f"cannot compress the image within {limit} bytes"
    )


def key_frames(
    segment: Path, *, every_s: float, width: int = DECODE_WIDTH, ffmpeg: str = "ffmpeg"
) -> Generator[tuple[float, Frame]]:
    """(seconds into the segment, frame) for its key frames, at most one every ``every_s``.

    ffmpeg is stopped as soon as the caller stops iterating: a budget already spent costs
    no further decoding.
    """
    height = _probe_height(segment, width, ffmpeg)
    size = width * height * 3
    pick = f"select='isnan(prev_selected_t)+gte(t-prev_selected_t\\,{every_s})'"
    with tempfile.TemporaryDirectory(prefix="thumbs-") as tmp:
        log_path = Path(tmp) / "ffmpeg.log"
        with log_path.open("wb") as log_file, log_path.open("rb") as lines:
            try:
                proc = subprocess.Popen(
                    [ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "info", "-threads", "1",
                     "-skip_frame", "nokey", "-i", str(segment), "-map", "0:v:0", "-an",
                     "-vf", f"{pick},scale={width}:{height},showinfo", "-fps_mode", "passthrough",
                     "-f", "rawvideo", "-pix_fmt", "bgr24", "-"],
                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log_file,
                )  # fmt: skip
            except OSError as err:
                raise _cannot_start(ffmpeg, err) from err
            assert proc.stdout is not None
            seen = b""
            count = 0
            try:
                while len(raw := proc.stdout.read(size)) == size:
                    seen += lines.read()  # showinfo logs each frame before it is written out
                    times = _SHOWINFO.findall(seen)
                    at = float(times[count]) if count < len(times) else 0.0
                    count += 1
                    yield at, np.frombuffer(raw, np.uint8).reshape(height, width, 3)
            finally:
                proc.kill()
                proc.wait()
                proc.stdout.close()


def _probe_height(segment: Path, width: int, ffmpeg: str) -> int:
    """The even height that keeps the segment's aspect ratio at ``width``."""
    ffprobe = str(Path(ffmpeg).with_name("ffprobe")) if "/" in ffmpeg else "ffprobe"
    try:
        out = subprocess.run(
            [ffprobe, "-v", "error", "-select_streams", "v:0",
             "-show_entries", "stream=width,height", "-of", "csv=p=0", str(segment)],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
    except OSError as err:
        raise _cannot_start(ffprobe, err) from err
    try:
        first = out.stdout.split()[0]  # the stream is listed again under each program
        w, h = (int(v) for v in first.split(",")[:2])
    except (IndexError, ValueError):
        raise ThumbnailError(
            f"无法读取视频段 {segment.name}：{out.stderr.strip()[-200:]}",
            f"cannot read video segment {segment.name}: {out.stderr.strip()[-200:]}",
        ) from None
    return max(2, round(h * width / w / 2) * 2)


def _cannot_start(program: str, err: OSError) -> ThumbnailError:
    return ThumbnailError(
        f"无法启动 {program}：{err.strerror}", f"cannot start {program}: {err.strerror}"
    )


@dataclass(frozen=True, slots=True)
class Derivative:
    """A small file made from a bigger one, and the item that carries it."""

    name: str  # file name inside the folder
    data: bytes  # the file's bytes; empty for a file written by another program
    kind: str
    mime: str
    info: dict[str, Any]  # the item's data fields


class DerivedFolder:
    """A folder of derivative files (thumbnails, photos …), each with its index entry.

    The index entry (``<file>.json``) keeps the encoded item and, once the edge accepted
    it, its sequence number — the format :meth:`SegmentFolder.accepted` updates.
    """

    def __init__(self, media_dir: Path, folder: Path) -> None:
        self.media_dir = media_dir
        self.folder = folder

    def file(
        self,
        made: Derivative,
        *,
        source: str,
        parent: Item | None,
        created_ms: int,
        clock_ok: bool,
        position: Position | None = None,
    ) -> Pending:
        """Write the file and its index durably; the item to offer the edge."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / made.name
        found = durable.write_bytes(path, made.data)
        return self.index(
            path,
            found,
            made,
            source=source,
            parent=parent,
            created_ms=created_ms,
            clock_ok=clock_ok,
            position=position,
        )

    def index(
        self,
        path: Path,
        found: durable.FileDigest,
        made: Derivative,
        *,
        source: str,
        parent: Item | None,
        created_ms: int,
        clock_ok: bool,
        position: Position | None = None,
    ) -> Pending:
        """Index a file already durable in the folder; the item to offer the edge."""
        rel = path.relative_to(self.media_dir).as_posix()
        item = new_item(
            made.kind,
            source=source,
            media=MediaRef(rel, found.size, found.sha256, made.mime),
            parent=parent.uid if parent is not None else None,
            created_ms=created_ms,
            clock_ok=clock_ok,
            position=position,
            data=made.info,
        )
        index = path.with_name(path.name + ".json")
        entry = {"path": rel, "uid": str(item.uid), "item": encode(item).hex(), "seq": None}
        durable.write_bytes(index, json.dumps(entry).encode())
        return Pending(item, index)

    def recover(self) -> list[Pending]:
        """Items written before a crash but not yet accepted; torn writes are removed."""
        if not self.folder.is_dir():
            return []
        for torn in self.folder.glob(".*.tmp"):
            torn.unlink()
        waiting = []
        for index in sorted(self.folder.glob("*.json")):
            entry = json.loads(index.read_bytes())
            if entry.get("seq") is None:
                waiting.append(Pending(decode(bytes.fromhex(entry["item"])), index))
        return waiting


class Thumbnailer:
    """Thumbnails of one source's segments, under a :class:`ThumbPolicy`."""

    def __init__(
        self, media_dir: Path, source: str, policy: ThumbPolicy, *, ffmpeg: str = "ffmpeg"
    ) -> None:
        self.source = source
        self.policy = policy
        self.ffmpeg = ffmpeg
        self.folder = DerivedFolder(media_dir, media_dir / "thumbs" / source)
        self.scorer = SceneScorer()
        self.budget = PickBudget(policy.per_min)
        self.decoded = 0  # key frames decoded, for the record
        self.skipped = 0  # decoded frames not worth a thumbnail
        self.last_score = 0.0  # the highest scene score in the last segment looked at

    def segment(self, path: Path, parent: Item) -> list[Pending]:
        """Thumbnails of one finished segment; each written durably with its item."""
        start_ms = parent.data.get("start_ms", parent.created_ms)
        assert isinstance(start_ms, int)
        made: list[Pending] = []
        self.last_score = 0.0
        frames = key_frames(path, every_s=self.policy.every_s, ffmpeg=self.ffmpeg)
        with contextlib.closing(frames):  # stops ffmpeg as soon as the budget is spent
            for at_s, frame in frames:
                self.decoded += 1
                at_ms = start_ms + round(at_s * 1000)
                if not self.budget.allows(at_ms):
                    break
                score = self.scorer.score(frame)
                self.last_score = max(self.last_score, score)
                if score < self.policy.threshold:
                    self.skipped += 1
                    continue
                self.scorer.sent(frame)
                self.budget.spend(at_ms)
                made += self._file(
                    frame, f"{path.stem}-{round(at_s * 1000):06d}", parent, at_ms, score
                )
        return made

    def _file(
        self, frame: Frame, stem: str, parent: Item, at_ms: int, score: float
    ) -> list[Pending]:
        """The full and the narrow-link thumbnail of one picked frame."""
        made = []
        for suffix, limit, widths in (
            ("", FULL_BYTES, FULL_WIDTHS),
            ("-n", NARROW_BYTES, NARROW_WIDTHS),
        ):
            info = {"scene": round(score, 3), "narrow": limit == NARROW_BYTES}
            data = encode_within(frame, limit, widths)
            derivative = Derivative(f"{stem}{suffix}.webp", data, "thumbnail", MIME, info)
            made.append(
                self.folder.file(
                    derivative,
                    source=parent.source,
                    parent=parent,
                    created_ms=at_ms,
                    clock_ok=parent.clock_ok,
                )
            )
        return made
