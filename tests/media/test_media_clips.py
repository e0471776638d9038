"""Preview clips: small H.264 clips of recorded segments, on demand and the best of a stretch."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from edge.item import Item, Kind, MediaRef, Priority, new_item
from media import durable
from media.clips import CLIP_S, MAX_KBPS, WIDTH, ClipError, ClipMaker, transcode

pytestmark = pytest.mark.timeout(60)
NOW_MS = 1_789_999_800_000  # on a whole 5 minutes: stretches are on the clock


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 12 s 640x360 H.264 segment as the recorder writes them (MPEG-TS)."""
    path = tmp_path_factory.mktemp("seg") / "drone-12s.ts"
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "lavfi",
         "-i", "testsrc2=size=640x360:rate=15:duration=12", "-c:v", "libx264",
         "-preset", "ultrafast", "-g", "15", "-pix_fmt", "yuv420p", "-f", "mpegts", str(path)],
        check=True,
    )  # fmt: skip
    return path


def probe(path: Path) -> dict[str, str]:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
         "stream=codec_name,width,height:format=duration,format_name", "-of", "json", str(path)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    info = json.loads(out)
    return {**info["streams"][0], **info["format"]}


def segment_item(path: Path, minute: int) -> Item:
    start = NOW_MS + minute * 60_000
    ref = MediaRef(f"video/drone/{path.name}", path.stat().st_size, "0" * 64, "video/mp2t")
    return new_item("video", source="drone:drone", media=ref, data={"start_ms": start})


def test_a_clip_is_ten_seconds_small_and_low_rate_and_durable(
    tmp_path: Path, recorded: Path
) -> None:
    found = transcode(recorded, tmp_path / "clip.mp4")
    assert found == durable.digest(tmp_path / "clip.mp4")
    info = probe(tmp_path / "clip.mp4")
    assert info["codec_name"] == "h264" and int(info["width"]) == WIDTH
    assert float(info["duration"]) == pytest.approx(CLIP_S, abs=0.2)
    assert found.size * 8 / CLIP_S <= MAX_KBPS * 1000 * 1.1  # container overhead allowed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]  # no temporary left


def test_a_clip_of_a_corrupt_segment_fails_with_the_reason_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    bad = tmp_path / "bad.ts"
    bad.write_bytes(b"\x47" + bytes(4000))
    with pytest.raises(ClipError, match=r"cannot make a preview clip of bad\.ts"):
        transcode(bad, tmp_path / "clip.mp4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.ts"]


def test_by_policy_the_segment_with_the_most_scene_change_in_each_stretch_gets_a_clip(
    tmp_path: Path, recorded: Path
) -> None:
    maker = ClipMaker(tmp_path / "media", "drone", every_min=5)
    offers = [(0, 0.2), (1, 0.9), (3, 0.5), (6, 0.3), (7, 0.1), (11, 0.4)]  # minute, score
    segments = []
    made = []
    for minute, score in offers:
        path = tmp_path / f"drone-{minute:02d}.ts"
        shutil.copyfile(recorded, path)
        item = segment_item(path, minute)
        segments.append(item)
        made.append(maker.offer(path, item, score))
    # Minutes 0–4 end at minute 6: minute 1's clip; minutes 5–9 end at minute 11: minute 6's.
    assert [m is not None for m in made] == [False, False, False, True, False, True]
    first, second = made[3], made[5]
    assert first is not None and second is not None
    assert first.item.parent == segments[1].uid and second.item.parent == segments[3].uid
    assert first.item.kind is Kind.PREVIEW and first.item.priority is Priority.P3
    assert first.item.media is not None and first.item.media.mime == "video/mp4"
    clip = tmp_path / "media" / first.item.media.path
    assert durable.digest(clip).sha256 == first.item.media.sha256 and first.index.exists()


def test_no_clips_by_policy_when_turned_off(tmp_path: Path, recorded: Path) -> None:
    maker = ClipMaker(tmp_path / "media", "drone", every_min=0)
    for minute in (0, 20, 40):
        assert maker.offer(recorded, segment_item(recorded, minute), 1.0) is None
