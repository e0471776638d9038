"""The inbox folder: photos and voice notes dropped in (a card reader, a phone over USB, a share).

What a file is comes from its content, never its name alone: JPEG and PNG by their first
bytes go to :class:`PhotoIntake`; anything else is shown to ffprobe, and a recording
(WAV, Ogg/Opus, M4A, MP3, AMR, WebM) goes to :class:`VoiceIntake`. A file taken is
removed once its durable copies are in the media folder; a refused one is moved to
``refused/`` with a ``.txt`` beside it giving the reason.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from edge.errors import KitError
from media.photos import NotAPhoto, PhotoIntake, check_size, is_photo
from media.segments import Pending
from media.voice import MAX_UPLOAD_BYTES, VoiceError, VoiceIntake, sniff_audio

log = logging.getLogger("media.inbox")

SETTLE_S = 2.0  # a file in the inbox unchanged this long is completely copied
_HEAD = 16  # bytes read to recognise a photo


class Inbox:
    """Takes every settled file of ``inbox``: a photo, a voice note, or refused with a reason."""

    def __init__(
        self,
        inbox: Path,
        photos: PhotoIntake,
        voice: VoiceIntake,
        *,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.inbox = inbox
        self.refused = inbox / "refused"
        self.photos = photos
        self.voice = voice
        self.now = now

    def scan(self) -> list[Pending]:
        """The items of every settled file, in name order; thumbnails before each photo."""
        made: list[Pending] = []
        if not self.inbox.is_dir():
            return made
        for path in sorted(self.inbox.iterdir()):
            if path.name.startswith(".") or not path.is_file():
                continue
            stat = path.stat()
            if self.now() - stat.st_mtime < SETTLE_S:
                continue  # still being copied
            try:
                taken, what = self._take(path, stat.st_size)
            except (NotAPhoto, VoiceError) as err:
                self._refuse(path, str(err))
                continue
            except (OSError, KitError) as err:  # a full disk: the file waits for the next scan
                log.warning("%s waits in the inbox: %s", path.name, err)
                break
            made += taken
            path.unlink()  # its durable copies are in the media folder now
            log.info("%s %s taken from the inbox", what, path.name)
        return made

    def _take(self, path: Path, size: int) -> tuple[list[Pending], str]:
        if size == 0:
            raise NotAPhoto("文件为空", "the file is empty")
        with path.open("rb") as f:
            head = f.read(_HEAD)
        if is_photo(head):
            check_size(size)
            return self.photos.take(path.read_bytes(), source="folder"), "photo"
        if size > MAX_UPLOAD_BYTES:
            limit = MAX_UPLOAD_BYTES // 1024**2
            raise VoiceError(
                f"文件过大：{size} 字节（上限 {limit} MB）",
                f"file too large: {size} bytes (limit {limit} MB)",
            )
        sniff_audio(path, self.voice.ffmpeg)
        return self.voice.take(path, source="folder"), "voice note"

    def _refuse(self, path: Path, reason: str) -> None:
        self.refused.mkdir(exist_ok=True)
        path.replace(self.refused / path.name)
        (self.refused / f"{path.name}.txt").write_text(reason + "\n", encoding="utf-8")
        log.warning("%s refused: %s", path.name, reason)
