"""Durable media files: fsync, atomic rename, fsync folder; never a half file under the final name."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest

from media import durable


def test_digest_gives_size_and_sha256_in_one_pass(tmp_path: Path) -> None:
    data = os.urandom(3 * durable.CHUNK + 17)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    assert durable.digest(path) == durable.FileDigest(len(data), hashlib.sha256(data).hexdigest())


def test_write_bytes_leaves_the_complete_file_and_no_temporary(tmp_path: Path) -> None:
    found = durable.write_bytes(tmp_path / "a.json", b"{}")
    assert (tmp_path / "a.json").read_bytes() == b"{}"
    assert found == durable.FileDigest(2, hashlib.sha256(b"{}").hexdigest())
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_commit_renames_a_finished_file_and_fsyncs_file_then_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        steps.append("fsync")
        real_fsync(fd)

    def replace(a: Path, b: Path) -> None:
        steps.append("rename")
        real_replace(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    (tmp_path / ".rec-1-00000.ts").write_bytes(b"video")
    found = durable.commit(tmp_path / ".rec-1-00000.ts", tmp_path / "d-1-00000.ts")
    assert steps == ["fsync", "rename", "fsync"]
    assert found.size == 5
    assert (tmp_path / "d-1-00000.ts").read_bytes() == b"video"
    assert not (tmp_path / ".rec-1-00000.ts").exists()


@pytest.mark.parametrize("step", ["fsync", "replace"])
def test_a_crash_before_the_rename_leaves_nothing_under_the_final_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    def crash(*args: object) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, step, crash)
    with pytest.raises(durable.NotDurable, match="cannot save"):
        durable.write_bytes(tmp_path / "a.json", b"x" * 1000)
    (tmp_path / ".rec-1-00000.ts").write_bytes(b"video")
    with pytest.raises(durable.NotDurable):
        durable.commit(tmp_path / ".rec-1-00000.ts", tmp_path / "d-1-00000.ts")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".rec-1-00000.ts"]


def test_a_full_disk_raises_disk_full_and_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a.json").write_bytes(b"old")
    real_fsync = os.fsync

    def full(fd: int) -> None:
        if os.fstat(fd).st_size:  # the data write reached the disk: it has no room
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(durable.DiskFull) as caught:
        durable.write_bytes(tmp_path / "a.json", b"new")
    assert (
        str(caught.value) == f"磁盘已满：{tmp_path / 'a.json'} / disk full: {tmp_path / 'a.json'}"
    )
    assert isinstance(caught.value, OSError)
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
    assert (tmp_path / "a.json").read_bytes() == b"old"
