"""Voice notes: Codec2 and Opus round trips with real ffmpeg, and the items a note becomes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from edge.item import Kind, Priority
from media import durable
from media.voice import (
    CODEC2_700C,
    CODEC2_1300,
    CODEC2_HEADER,
    OPUS_16K,
    VoiceCodec,
    VoiceError,
    VoiceIntake,
    decode,
    duration_s,
    encode,
    sniff_audio,
)

pytestmark = pytest.mark.timeout(60)


def speech_like(path: Path, seconds: float) -> Path:
    """A voiced, syllable-paced test signal: harmonics of 140 Hz switched on 4 times a second."""
    expr = "(sin(2*PI*140*t)+0.5*sin(2*PI*280*t)+0.3*sin(2*PI*560*t))*0.25*gt(sin(2*PI*4*t)\\,0)"
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
         "-i", f"aevalsrc={expr}:s=44100:d={seconds}", "-ac", "1", str(path)],
        check=True,
    )  # fmt: skip
    return path


@pytest.mark.parametrize(
    ("codec", "bytes_per_min"),
    [(CODEC2_700C, 6000), (CODEC2_1300, 10500)],
)
def test_codec2_round_trip_keeps_the_duration_at_the_modes_byte_rate(
    tmp_path: Path, codec: VoiceCodec, bytes_per_min: int
) -> None:
    wav = speech_like(tmp_path / "note.wav", 30.0)
    encoded = tmp_path / "note.c2"
    found = encode(wav, encoded, codec)
    assert found == durable.digest(encoded)
    assert found.size - CODEC2_HEADER == bytes_per_min // 2  # exactly, frame by frame
    assert decode(encoded, tmp_path / "back.wav") == pytest.approx(30.0, abs=0.05)
    assert not list(tmp_path.glob(".*"))


def test_a_fifteen_second_700c_note_fits_inline_over_narrow_links(tmp_path: Path) -> None:
    wav = speech_like(tmp_path / "note.wav", 15.0)
    assert encode(wav, tmp_path / "n.c2", CODEC2_700C).size <= 1600


def test_opus_round_trip_for_fast_links(tmp_path: Path) -> None:
    wav = speech_like(tmp_path / "note.wav", 20.0)
    found = encode(wav, tmp_path / "note.opus", OPUS_16K)
    assert 20_000 <= found.size <= 60_000  # 16 kbit/s, 20 s: 40 kB plus container
    assert decode(tmp_path / "note.opus", tmp_path / "back.wav") == pytest.approx(20.0, abs=0.1)


def test_a_note_becomes_a_p3_voice_item_and_a_p4_audio_item_that_points_at_it(
    tmp_path: Path,
) -> None:
    wav = speech_like(tmp_path / "note.wav", 5.0)
    voice, audio = VoiceIntake(tmp_path / "media").take(wav, source="web")
    assert voice.item.kind is Kind.VOICE and voice.item.priority is Priority.P3
    assert audio.item.kind is Kind.AUDIO and audio.item.priority is Priority.P4
    assert audio.item.parent == voice.item.uid
    assert voice.item.data == {"codec": "codec2-700C", "duration_ms": 5000}
    for pending in (voice, audio):
        assert pending.item.media is not None
        path = tmp_path / "media" / pending.item.media.path
        assert durable.digest(path).sha256 == pending.item.media.sha256
        assert pending.index.exists()


def test_what_is_not_audio_or_too_long_is_refused_with_the_reason(tmp_path: Path) -> None:
    text = tmp_path / "note.wav"
    text.write_text("not audio")
    with pytest.raises(VoiceError, match="cannot read the recording"):
        VoiceIntake(tmp_path / "media").take(text, source="web")
    with pytest.raises(VoiceError, match=r"cannot decode x\.c2"):
        decode(text.rename(tmp_path / "x.c2"), tmp_path / "x.wav")
    long = speech_like(tmp_path / "long.wav", 301.0)
    assert duration_s(long) == pytest.approx(301.0, abs=0.1)
    with pytest.raises(VoiceError, match=r"voice note too long: 301 s \(limit 300\)"):
        VoiceIntake(tmp_path / "media").take(long, source="web")


def amr_note(path: Path, frames: int = 50) -> Path:
    """An AMR-NB file as Chinese phones record calls and notes (no AMR encoder is installed:
    12.2 kbit/s frames of silence, written by hand)."""
    path.write_bytes(b"#!AMR\n" + (bytes([0x3C]) + bytes(31)) * frames)
    return path


@pytest.mark.parametrize(
    ("args", "container"),
    [
        (["-c:a", "pcm_s16le", "-f", "wav"], "wav"),
        (["-c:a", "libopus", "-f", "ogg"], "ogg"),
        (["-c:a", "aac", "-f", "mp4"], "m4a"),
        (["-c:a", "libmp3lame", "-f", "mp3"], "mp3"),
        (["-c:a", "libopus", "-f", "webm"], "webm"),
        ([], "amr"),
    ],
)
def test_recordings_are_recognised_by_their_content_not_their_name(
    tmp_path: Path, args: list[str], container: str
) -> None:
    note = tmp_path / "note.jpg"  # a misleading name
    if args:
        subprocess.run(
            ["ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "lavfi",
             "-i", "sine=frequency=300:duration=1", "-ac", "1", *args, str(note)],
            check=True,
        )  # fmt: skip
    else:
        amr_note(note)
    assert sniff_audio(note) == container


@pytest.mark.parametrize(
    ("content", "head"),
    [
        (b"not a recording at all", "6e6f742061207265"),
        (b"RIFF\x24\0\0\0WAVEfmt ", "5249464624000000"),  # a WAV header cut short
    ],
)
def test_a_file_named_like_audio_that_is_not_is_refused_with_its_first_bytes(
    tmp_path: Path, content: bytes, head: str
) -> None:
    fake = tmp_path / "note.wav"
    fake.write_bytes(content)
    with pytest.raises(VoiceError) as caught:
        sniff_audio(fake)
    assert str(caught.value).endswith(
        "neither a photo (JPEG, PNG) nor a voice recording (WAV, Ogg/Opus, M4A, MP3, AMR) "
        f"(starts with {head})"
    )


def test_a_video_is_not_taken_as_a_voice_note(tmp_path: Path) -> None:
    video = tmp_path / "clip.m4a"
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i",
         "testsrc2=size=64x48:duration=1", "-f", "lavfi", "-i", "sine=duration=1",
         "-c:v", "libx264", "-c:a", "aac", "-f", "mp4", str(video)],
        check=True,
    )  # fmt: skip
    with pytest.raises(VoiceError, match="nor a voice recording"):
        sniff_audio(video)


def test_an_amr_note_from_a_phone_becomes_codec2_and_opus(tmp_path: Path) -> None:
    voice, audio = VoiceIntake(tmp_path / "media").take(amr_note(tmp_path / "x"), source="folder")
    assert voice.item.data["codec"] == "codec2-700C" and audio.item.data["codec"] == "opus-16k"
    assert voice.item.data["duration_ms"] == pytest.approx(1000, abs=40)
