"""Finishing segments: durable, indexed, and recovered after a crash without filing twice."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from edge.item import Kind, Priority
from media import durable
from media.segments import SegmentFolder, SegmentList, ts_problem
from sim.drone import clip

T = 1_700_000_000_000  # a GNSS-set time


@pytest.fixture(scope="module")
def ts_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return clip(tmp_path_factory.getbasetemp() / "drone-cache").read_bytes()


def test_segment_list_yields_each_complete_line_once(tmp_path: Path) -> None:
    path = tmp_path / ".rec-1.csv"
    listing = SegmentList(path)
    assert listing.read_new() == []
    path.write_text(".rec-1-00000.ts,0.000000,1.999000\n.rec-1-00001.ts,2.0")
    assert [e.filename for e in listing.read_new()] == [".rec-1-00000.ts"]
    with path.open("a") as f:
        f.write("00000,3.999000\n")
    (entry,) = listing.read_new()
    assert (entry.filename, entry.start_s, entry.end_s) == (".rec-1-00001.ts", 2.0, 3.999)


def test_a_finished_segment_is_durable_indexed_and_its_item_matches_the_file(
    tmp_path: Path, ts_bytes: bytes
) -> None:
    folder = SegmentFolder(tmp_path, "drone")
    folder.prepare()
    temp = folder.folder / ".rec-5-00003.ts"
    temp.write_bytes(ts_bytes)
    pending = folder.finish(temp, T, T + 2000, True)
    assert pending is not None
    item = pending.item
    assert (item.kind, item.priority, item.source) == (Kind.VIDEO, Priority.P4, "drone:drone")
    assert item.media is not None
    assert item.media.path == "video/drone/drone-5-00003.ts"
    assert item.media.mime == "video/mp2t"
    assert durable.digest(tmp_path / item.media.path) == durable.FileDigest(
        item.media.size, item.media.sha256
    )
    entry = json.loads(pending.index.read_text())
    assert entry["duration_ms"] == 2000 and entry["seq"] is None
    assert entry["uid"] == str(item.uid)
    SegmentFolder.accepted(pending, 42)
    assert json.loads(pending.index.read_text())["seq"] == 42
    assert folder.recover() == []


@pytest.mark.parametrize(
    ("data", "reason"),
    [(b"", "empty segment (0 bytes)"), (b"x" * 1000, "not MPEG-TS (no sync byte every 188 bytes)")],
)
def test_an_empty_or_corrupt_segment_is_skipped_with_a_reason(
    tmp_path: Path, data: bytes, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    folder = SegmentFolder(tmp_path, "drone")
    folder.prepare()
    temp = folder.folder / ".rec-5-00000.ts"
    temp.write_bytes(data)
    assert ts_problem(temp) == reason
    assert folder.finish(temp, 0, 2000, False) is None
    assert f"drone: segment .rec-5-00000.ts skipped: {reason}" in caplog.text
    assert list(folder.folder.iterdir()) == []


def test_a_full_disk_leaves_the_segment_under_its_temporary_name_for_a_retry(
    tmp_path: Path, ts_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = SegmentFolder(tmp_path, "drone")
    folder.prepare()
    temp = folder.folder / ".rec-5-00000.ts"
    temp.write_bytes(ts_bytes)

    def full(*args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(os, "replace", full)
        with pytest.raises(durable.DiskFull):
            folder.finish(temp, T, T + 2000, True)
    assert [p.name for p in folder.folder.iterdir()] == [".rec-5-00000.ts"]
    assert folder.finish(temp, T, T + 2000, True) is not None


def test_recovery_finishes_what_a_crash_left_and_offers_unfiled_items_again(
    tmp_path: Path, ts_bytes: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    folder = SegmentFolder(tmp_path, "drone")
    folder.prepare()
    d = folder.folder
    # Filed before the crash: not offered again.
    done = folder.finish(_write(d / ".rec-1-00000.ts", ts_bytes), T, T + 2000, True)
    assert done is not None
    SegmentFolder.accepted(done, 7)
    # Finished and indexed, but the edge never answered: offered again with the same uid.
    unfiled = folder.finish(_write(d / ".rec-1-00001.ts", ts_bytes), T + 2000, T + 4000, True)
    assert unfiled is not None
    # A session cut by the crash: one closed segment, one torn mid-packet, one empty.
    (d / ".rec-2.csv").write_text(".rec-2-00000.ts,0.000000,2.000000\n")
    _write(d / ".rec-2-00000.ts", ts_bytes)
    _write(d / ".rec-2-00001.ts", ts_bytes[: 188 * 50 + 77])
    _write(d / ".rec-2-00002.ts", b"")
    # Renamed, but the crash came before its index; and a torn index write.
    _write(d / "drone-0-00000.ts", ts_bytes)
    _write(d / ".drone-0-00009.json.tmp", b"{")

    pending = folder.recover()

    by_path = {p.item.media.path: p for p in pending if p.item.media}
    assert sorted(by_path) == [
        "video/drone/drone-0-00000.ts",
        "video/drone/drone-1-00001.ts",
        "video/drone/drone-2-00000.ts",
        "video/drone/drone-2-00001.ts",
    ]
    assert by_path["video/drone/drone-1-00001.ts"].item.uid == unfiled.item.uid
    assert by_path["video/drone/drone-2-00001.ts"].item.data["partial"] is True
    assert by_path["video/drone/drone-2-00000.ts"].item.data["partial"] is False
    for p in pending:
        assert p.item.media is not None
        found = durable.digest(tmp_path / p.item.media.path)
        assert (found.size, found.sha256) == (p.item.media.size, p.item.media.sha256)
        assert p.item.clock_ok is (p is by_path["video/drone/drone-1-00001.ts"])
    assert "segment .rec-2-00002.ts skipped: empty segment (0 bytes)" in caplog.text
    assert not [p.name for p in d.iterdir() if p.name.startswith(".")]


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
