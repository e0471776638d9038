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
