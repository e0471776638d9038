"""Drone video ingest: one ffmpeg per source, remuxing H.264 into segments without decoding.

Each :class:`Recorder` runs its own ffmpeg (``-c copy``: about 1 % of a core for 1080p30)
and restarts it on its own when the stream drops or ffmpeg exits — at once after a
session that recorded (an RTMP listener takes one client and exits), with growing
back-off otherwise. It watches the segment list ffmpeg appends to (once a second), hands
each closed segment to :class:`SegmentFolder` to be made durable, and passes it on. A
stream that is not H.264 is refused and retried slowly; a full disk pauses recording.

Segments are MPEG-TS: a stream of self-contained 188-byte packets with the codec tables
repeated, so a file cut by a power failure still plays up to the cut. A fragmented MP4
needs its header and a complete fragment index, and the segment muxer rewrites them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import deque
from collections.abc import Awaitable, Callable
from enum import StrEnum
from pathlib import Path

from edge.topics import DeviceState
from media.config import VideoSource
from media.durable import DiskFull
from media.segments import Clock, ListEntry, Pending, SegmentFolder, SegmentList, system_clock

log = logging.getLogger("media.ingest")

POLL_S = 1.0  # how often the segment list is read: cheap, and segments are seconds long
STDERR_LINES = 20  # ffmpeg's last words kept for the log when it stops
STOP_GRACE_S = 5.0  # ffmpeg closes its last segment on SIGTERM; after this it is killed
READ_TIMEOUT_US = 10_000_000  # a stream silent this long is dropped and reopened
PROGRESS_S = 5  # ffmpeg reports its frame count this often

_INPUT_VIDEO = re.compile(r"Stream #\d+:\d+.*?: Video: (\w+)")
_COMPLAINT = re.compile(r"error|refused|timed out|No space|Invalid|not found", re.IGNORECASE)


class Status(StrEnum):
    WAITING = "waiting"  # ffmpeg is listening or connecting: no stream yet
    RECORDING = "recording"
    REFUSED = "refused"  # the stream is not H.264
    DISK_FULL = "disk_full"
    FAILED = "failed"  # ffmpeg cannot run at all
    STOPPED = "stopped"


_SUMMARY = {
    Status.WAITING: ("等待视频流", "waiting for stream"),
    Status.RECORDING: ("正在录制", "recording"),
    Status.REFUSED: ("拒收视频流", "stream refused"),
    Status.DISK_FULL: ("磁盘已满，暂停录制", "disk full, recording paused"),
    Status.FAILED: ("无法启动 ffmpeg", "ffmpeg cannot start"),
    Status.STOPPED: ("已停止", "stopped"),
}


def input_args(source: VideoSource) -> list[str]:
    """ffmpeg's input options for one source kind."""
    timeout = str(READ_TIMEOUT_US)
    if source.kind == "rtmp":
        host, port = source.listen.rsplit(":", 1)
        return [
            "-rw_timeout",
            timeout,
            "-listen",
            "1",
            "-i",
            f"rtmp://{host}:{port}/live/{source.name}",
        ]
    if source.kind == "rtsp":
        assert source.url is not None
        return ["-rtsp_transport", "tcp", "-timeout", timeout, "-i", source.url]
    # The stream's tables come at once; a long probe would hold the first segment back.
    return [
        "-analyzeduration", "1000000",
        "-probesize", "1000000",
        "-i", f"udp://{source.listen}?timeout={timeout}&overrun_nonfatal=1",
    ]  # fmt: skip


def command(ffmpeg: str, source: VideoSource, folder: SegmentFolder, session: int) -> list[str]:
    """The whole ffmpeg command: copy the first video (and audio, if any) into TS segments."""
    return [
        ffmpeg, "-hide_banner", "-nostdin", "-nostats",
        "-progress", "pipe:1", "-stats_period", str(PROGRESS_S),
        *input_args(source),
        "-map", "0:v:0", "-map", "0:a:0?", "-c", "copy",
        "-f", "segment", "-segment_format", "mpegts",
        "-segment_time", str(source.segment_s), "-reset_timestamps", "1",
        "-segment_list", str(folder.listing(session)), "-segment_list_type", "csv",
        str(folder.pattern(session)),
    ]  # fmt: skip


class Recorder:
    """Records one source until closed; a :class:`drivers.device.Device` for status."""

    def __init__(
        self,
        source: VideoSource,
        folder: SegmentFolder,
        on_segment: Callable[[Pending], Awaitable[None]],
        *,
        ffmpeg: str = "ffmpeg",
        clock: Clock = system_clock,
        on_change: Callable[[], None] = lambda: None,
        backoff_s: tuple[float, float] = (1.0, 30.0),
        refused_retry_s: float = 60.0,
    ) -> None:
        self.source = source
        self.name = f"video:{source.name}"
        self.folder = folder
        self.on_segment = on_segment
        self.ffmpeg = ffmpeg
        self.clock = clock
        self.on_change = on_change
        self.backoff_s = backoff_s
        self.refused_retry_s = refused_retry_s
        self.status = Status.STOPPED
        self.reason = ""
        self.sessions = 0
        self.segments = 0
        self.bytes = 0
        self.skipped = 0
        self.frames = 0
        self._session_frames = 0
        self._stderr: deque[str] = deque(maxlen=STDERR_LINES)
        self._last_session = 0
        self._unfinished: _Session | None = None  # a session whose segments wait for disk space
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # --- the Device contract ---------------------------------------------------------------

    async def start(self) -> None:
        self.folder.prepare()
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def close(self) -> None:
        """Stop ffmpeg (it closes its last segment), take what it wrote, then stop."""
        self._stopping.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), STOP_GRACE_S * 2)
            except TimeoutError:
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self._set(Status.STOPPED, "")

    def state(self) -> DeviceState:
        zh, en = _SUMMARY[self.status]
        if self.reason:
            zh, en = f"{zh}：{self.reason}", f"{en}: {self.reason}"
        return DeviceState(
            self.name,
            "video",
            self.status is Status.RECORDING,
            zh,
            en,
            {
                "status": self.status.value,
                "reason": self.reason or None,
                "source_kind": self.source.kind,
                "sessions": self.sessions,
                "frames": self.frames + self._session_frames,
                "segments": self.segments,
                "bytes": self.bytes,
                "skipped": self.skipped,
            },
        )

    # --- the loop ---------------------------------------------------------------------------

    def _set(self, status: Status, reason: str) -> None:
        if (status, reason) != (self.status, self.reason):
            self.status, self.reason = status, reason
            self.on_change()

    async def _run(self) -> None:
        delay = self.backoff_s[0]
        while not self._stopping.is_set():
            if self._unfinished is None or await self._settle(self._unfinished):
                recorded = await self._session()
            else:
                recorded = False
            if self.status is Status.REFUSED:
                wait = self.refused_retry_s
            elif recorded and self.status is not Status.DISK_FULL:
                wait, delay = 0.0, self.backoff_s[0]
            else:
                wait, delay = delay, min(delay * 2, self.backoff_s[1])
            if wait and not self._stopping.is_set():
                log.info("%s: trying again in %.0f s", self.name, wait)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), wait)

    async def _settle(self, watcher: _Session) -> bool:
        """Finish what a session left; False (and paused) while the disk is full."""
        try:
            await watcher.take()
            await watcher.take_partials()
        except DiskFull as err:
            self._unfinished = watcher
            self._set(Status.DISK_FULL, "")
            log.error("%s: %s; recording paused", self.name, err)
            return False
        self._unfinished = None
        return True

    async def _session(self) -> bool:
        """Run ffmpeg once, until the stream ends; True if it recorded anything."""
        session = max(self.clock()[0], self._last_session + 1)
        self._last_session = session
        self.sessions += 1
        self._stderr.clear()
        try:
            proc = await asyncio.create_subprocess_exec(
                *command(self.ffmpeg, self.source, self.folder, session),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as err:
            self._set(Status.FAILED, f"{self.ffmpeg}: {err.strerror}")
            log.error("%s: cannot start %s: %s", self.name, self.ffmpeg, err)
            return False
        self._set(Status.WAITING, "")
        watcher = _Session(self, session)
        readers = [
            asyncio.create_task(self._read_stderr(proc, watcher)),
            asyncio.create_task(self._read_progress(proc)),
        ]
        exited = asyncio.create_task(proc.wait())
        stopping = asyncio.create_task(self._stopping.wait())
        try:
            while not exited.done() and watcher.refusal is None and not stopping.done():
                await asyncio.wait([exited, stopping], timeout=POLL_S)
                await watcher.take()
        except DiskFull:
            pass  # the segments stay under their temporary names; _settle retries them
        finally:
            stopping.cancel()
            await _stop(proc, exited)
            await asyncio.gather(*readers, return_exceptions=True)
            self.frames += self._session_frames
            self._session_frames = 0
        if watcher.refusal is not None:
            self.folder.discard(session)
            self._set(Status.REFUSED, watcher.refusal)
            log.error("%s: stream refused: %s", self.name, watcher.refusal)
            return False
        if proc.returncode == 0:
            log.info("%s: stream ended: %s", self.name, self._why())
        else:
            log.warning(
                "%s: ffmpeg exited with %s; its last output:\n  %s",
                self.name,
                proc.returncode,
                "\n  ".join(self._stderr) or "(none)",
            )
        settled = await self._settle(watcher)
        if settled and any("No space left" in line for line in self._stderr):
            self._set(Status.DISK_FULL, "")
        return watcher.taken > 0

    def _why(self) -> str:
        """ffmpeg's own words for the end of a stream: its last complaint, else its last line."""
        for line in reversed(self._stderr):
            if _COMPLAINT.search(line):
                return line.strip()
        return self._stderr[-1].strip() if self._stderr else "no output"

    async def _read_stderr(self, proc: asyncio.subprocess.Process, watcher: _Session) -> None:
        """Keep ffmpeg's last lines, check the input codec, notice when recording starts."""
        assert proc.stderr is not None
        in_input = False
        async for raw in proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            self._stderr.append(line)
            if line.startswith("Input #"):
                in_input = True
            elif line.startswith("Output #"):
                in_input = False
                if watcher.refusal is None:
                    watcher.recording()
            elif in_input and (found := _INPUT_VIDEO.search(line)) and not watcher.codec:
                watcher.codec = found.group(1)
                if watcher.codec != "h264":
                    watcher.refusal = f"not H.264 but {watcher.codec}"
            elif "matches no streams" in line and "0:v:0" in line:
                watcher.refusal = "no video stream"

    async def _read_progress(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            key, _, value = raw.decode("ascii", "replace").strip().partition("=")
            if key == "frame" and value.isdigit():
                self._session_frames = int(value)


class _Session:
    """What one ffmpeg run has produced: segments taken, the stream clock's anchor."""

    def __init__(self, recorder: Recorder, session: int) -> None:
        self.recorder = recorder
        self.session = session
        self.listing = SegmentList(recorder.folder.listing(session))
        self.waiting: deque[ListEntry] = deque()  # closed, not yet durable (a full disk)
        self.codec = ""
        self.refusal: str | None = None
        self.anchor_ms: int | None = None  # epoch ms of stream time 0
        self.next_ms = 0  # where the next segment starts
        self.taken = 0

    def recording(self) -> None:
        r = self.recorder
        self.next_ms = r.clock()[0]
        r._set(Status.RECORDING, "")
        log.info("%s: recording %s (%s)", r.name, self.codec or "?", r.source.kind)

    async def take(self) -> None:
        """Finish every segment ffmpeg has closed since the last look (none of a refused one)."""
        if self.refusal is not None:
            return
        self.waiting.extend(self.listing.read_new())
        while self.waiting:
            entry = self.waiting[0]
            now_ms, clock_ok = self.recorder.clock()
            if self.anchor_ms is None:  # listed as it closed: its end is about now
                self.anchor_ms = now_ms - round(entry.end_s * 1000)
            start = self.anchor_ms + round(entry.start_s * 1000)
            end = self.anchor_ms + round(entry.end_s * 1000)
            await self._finish(entry.filename, start, end, clock_ok, partial=False)
            self.waiting.popleft()

    async def take_partials(self) -> None:
        """A segment ffmpeg never closed (killed, crashed): finished as partial or skipped."""
        for temp in self.recorder.folder.temp_files(self.session):
            now_ms, clock_ok = self.recorder.clock()
            await self._finish(temp.name, self.next_ms or now_ms, now_ms, clock_ok, partial=True)
        self.recorder.folder.listing(self.session).unlink(missing_ok=True)

    async def _finish(
        self, filename: str, start_ms: int, end_ms: int, clock_ok: bool, *, partial: bool
    ) -> None:
        r = self.recorder
        temp = r.folder.folder / Path(filename).name
        if not temp.exists():  # taken already, before a full disk interrupted the rest
            return
        pending = await asyncio.to_thread(
            r.folder.finish, temp, start_ms, end_ms, clock_ok, partial=partial
        )
        self.next_ms = end_ms
        if pending is None:
            r.skipped += 1
            r.on_change()
            return
        assert pending.item.media is not None
        self.taken += 1
        r.segments += 1
        r.bytes += pending.item.media.size
        await r.on_segment(pending)


async def _stop(proc: asyncio.subprocess.Process, exited: asyncio.Task[int]) -> None:
    """SIGTERM (ffmpeg closes its last segment properly), then SIGKILL after a grace time."""
    if not exited.done():
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(asyncio.shield(exited), STOP_GRACE_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
    await exited
