"""Voice notes: Codec2 for narrow links, Opus for fast ones; decoding for playback at the centre.

Both codecs come with Debian's ffmpeg (``libcodec2``, ``libopus``): no extra package.

Codec2 mode 700C is the narrow-link choice: 700 bit/s packs into 4 bytes per 40 ms frame,
6,000 bytes a minute, so a 15 s note (1,507 bytes with the 7-byte header) travels inline
in one message over Beidou or Tiantong (``uplink.compact.MAX_BLOB_BYTES`` = 1,600) and
crosses a 9.6 kbit/s link in under 2 s. 1300 bit/s sounds better but halves what fits
(9 s); a note is speech from a rescuer, where being heard at all beats being heard well.
The Opus copy (16 kbit/s, VoIP tuning, 120 kB a minute) is the full-quality version.

A note becomes two items: the Codec2 file as a P3 ``voice`` item and the Opus file as a
P4 ``audio`` item whose ``parent`` is the voice item; both durable before they are offered.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from edge.errors import KitError
from media import durable
from media.segments import Clock, Pending, system_clock
from media.thumbs import Derivative, DerivedFolder

CODEC2_HEADER = 7  # ffmpeg's .c2 header: magic, version, mode, flags
MAX_NOTE_S = 300.0  # a voice note, not a recording of the day
MAX_UPLOAD_BYTES = 64 * 1024**2
TIMEOUT_S = 120


class VoiceError(KitError, ValueError):
    """A recording that cannot be made into a voice note, or a note that cannot be played."""


@dataclass(frozen=True, slots=True)
class VoiceCodec:
    """One way of encoding a note: ffmpeg's options and how the file is labelled."""

    name: str
    suffix: str
    mime: str
    args: tuple[str, ...]


CODEC2_700C = VoiceCodec(
    "codec2-700C",
    "c2",
    "audio/x-codec2",
    ("-ar", "8000", "-ac", "1", "-c:a", "libcodec2", "-mode", "700C", "-f", "codec2"),
)
CODEC2_1300 = VoiceCodec(
    "codec2-1300",
    "c2",
    "audio/x-codec2",
    ("-ar", "8000", "-ac", "1", "-c:a", "libcodec2", "-mode", "1300", "-f", "codec2"),
)
OPUS_16K = VoiceCodec(
    "opus-16k",
    "opus",
    "audio/ogg",
    ("-ar", "16000", "-ac", "1", "-c:a", "libopus", "-b:a", "16k", "-application", "voip",
     "-f", "ogg"),
)  # fmt: skip
NARROW = CODEC2_700C
FAST = OPUS_16K


def _run(args: list[str], what: tuple[str, str]) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise VoiceError(f"{what[0]}：{err}", f"{what[1]}: {err}") from err
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["?"]
        raise VoiceError(f"{what[0]}：{tail[0]}", f"{what[1]}: {tail[0]}")
    return done


def duration_s(path: Path, ffmpeg: str = "ffmpeg") -> float:
    """Seconds of audio in ``path``; :class:`VoiceError` if it holds no audio."""
    ffprobe = str(Path(ffmpeg).with_name("ffprobe")) if "/" in ffmpeg else "ffprobe"
    done = _run(
        [ffprobe, "-v", "error", "-select_streams", "a:0", "-show_entries",
         "stream=codec_type:format=duration", "-of", "json", str(path)],
        ("无法读取录音", "cannot read the recording"),
    )  # fmt: skip
    info = json.loads(done.stdout or "{}")
    if not info.get("streams"):
        raise VoiceError(f"{path.name} 中没有音频", f"no audio in {path.name}")
    try:
        return float(info["format"]["duration"])
    except (KeyError, ValueError):
        raise VoiceError(f"{path.name} 时长未知", f"{path.name} has no known duration") from None


AUDIO_FORMATS = ("wav", "ogg", "mp3", "amr", "m4a", "webm")
"""Containers of voice recordings, as ffprobe names them (``m4a`` also stands for MP4 and
3GP, ``webm`` for Matroska): WAV, Ogg (Opus, Vorbis), MP3, AMR, M4A, browsers' WebM."""


def sniff_audio(path: Path, ffmpeg: str = "ffmpeg") -> str:
    """The container ffprobe finds in ``path`` if it is a voice recording, by its content.

    The file's name is not looked at: a recording with any suffix is taken, and a text
    file called ``note.wav`` is refused. Raises :class:`VoiceError` with the reason.
    """
    ffprobe = str(Path(ffmpeg).with_name("ffprobe")) if "/" in ffmpeg else "ffprobe"
    try:
        done = subprocess.run(
            [ffprobe, "-v", "error", "-show_entries",
             "format=format_name:stream=codec_type:stream_disposition=attached_pic",
             "-of", "json", "--", str(path)],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as err:
        raise VoiceError(f"无法检查录音：{err}", f"cannot check the recording: {err}") from err
    info = json.loads(done.stdout or "{}") if done.returncode == 0 else {}
    names = set(str(info.get("format", {}).get("format_name", "")).split(","))
    streams = info.get("streams", [])
    audio = [s for s in streams if s.get("codec_type") == "audio"]
    video = [
        s
        for s in streams
        if s.get("codec_type") == "video" and not s.get("disposition", {}).get("attached_pic")
    ]
    found = [name for name in AUDIO_FORMATS if name in names]
    if not found or not audio or video:
        with path.open("rb") as f:
            head = f.read(8).hex()
        raise VoiceError(
            f"既不是照片（JPEG、PNG）也不是录音（WAV、Ogg/Opus、M4A、MP3、AMR）（开头为 {head}）",
            "neither a photo (JPEG, PNG) nor a voice recording (WAV, Ogg/Opus, M4A, MP3, AMR) "
            f"(starts with {head})",
        )
    return found[0]


def encode(
    source: Path, final: Path, codec: VoiceCodec, ffmpeg: str = "ffmpeg"
) -> durable.FileDigest:
    """Encode any audio ffmpeg reads (WAV from a USB microphone, a browser's WebM …) durably."""
    temp = final.with_name(f".{final.name}.tmp")
    try:
        _run(
            [ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-y", "-i", str(source),
             "-map", "0:a:0", "-vn", *codec.args, str(temp)],
            (f"无法编码为 {codec.name}", f"cannot encode as {codec.name}"),
        )  # fmt: skip
        return durable.commit(temp, final)
    finally:
        temp.unlink(missing_ok=True)


def decode(encoded: Path, wav: Path, ffmpeg: str = "ffmpeg") -> float:
    """Decode a Codec2 or Opus note to 16-bit WAV for playback; returns its seconds."""
    _run(
        [ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-y", "-i", str(encoded),
         "-c:a", "pcm_s16le", "-f", "wav", str(wav)],
        (f"无法解码 {encoded.name}", f"cannot decode {encoded.name}"),
    )  # fmt: skip
    return duration_s(wav, ffmpeg)


class VoiceIntake:
    """Makes a recording into a narrow-link voice item (P3) and a full-quality audio item (P4)."""

    def __init__(
        self,
        media_dir: Path,
        *,
        narrow: VoiceCodec = NARROW,
        fast: VoiceCodec = FAST,
        ffmpeg: str = "ffmpeg",
        clock: Clock = system_clock,
    ) -> None:
        self.folder = DerivedFolder(media_dir, media_dir / "voice")
        self.narrow = narrow
        self.fast = fast
        self.ffmpeg = ffmpeg
        self.clock = clock

    def take(self, recording: Path, *, source: str) -> list[Pending]:
        """Both encodings of ``recording``, durable, as items to offer the edge in order."""
        size = recording.stat().st_size
        if size > MAX_UPLOAD_BYTES:
            raise VoiceError(f"录音文件过大：{size} 字节", f"recording too large: {size} bytes")
        seconds = duration_s(recording, self.ffmpeg)
        if seconds > MAX_NOTE_S:
            raise VoiceError(
                f"语音留言过长：{seconds:.0f} 秒（上限 {MAX_NOTE_S:.0f}）",
                f"voice note too long: {seconds:.0f} s (limit {MAX_NOTE_S:.0f})",
            )
        now_ms, clock_ok = self.clock()
        self.folder.folder.mkdir(parents=True, exist_ok=True)
        made: list[Pending] = []
        for codec, kind in ((self.narrow, "voice"), (self.fast, "audio")):
            final = self.folder.folder / f"{now_ms}-{codec.name}.{codec.suffix}"
            found = encode(recording, final, codec, self.ffmpeg)
            info = {"codec": codec.name, "duration_ms": round(seconds * 1000)}
            made.append(
                self.folder.index(
                    final,
                    found,
                    Derivative(final.name, b"", kind, codec.mime, info),
                    source=source,
                    parent=made[0].item if made else None,
                    created_ms=now_ms,
                    clock_ok=clock_ok,
                )
            )
        return made
