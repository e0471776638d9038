"""Disk full on the kit: tracks and media are refused before they are stored, while SOS and
reports still fit in the reserved margin; when the disk is truly full nothing is
acknowledged that is not on disk, and the store is intact afterwards.

The kit's data folder is a real, small filesystem (tmpfs mounted by the test).
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import endpoint, start_edge, stop

from config.loader import render_default
from edge.client import EdgeClient, EdgeRefused
from edge.item import Item, Position, new_item

SIZE_MB = 12
RESERVE_MB = 4


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    data = tmp_path / "data"
    data.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SIZE_MB}m", "tmpfs", str(data)], check=True
    )
    try:
        yield data
    finally:
        subprocess.run(["umount", "-l", str(data)], check=True)


def fill(data: Path, leave_bytes: int) -> Path:
    """A file that takes all but ``leave_bytes`` of the filesystem."""
    filler = data / "filler"
    free = shutil.disk_usage(data).free
    with open(filler, "ab") as f:
        f.write(b"\0" * max(0, free - leave_bytes))
        f.flush()
    return filler


def fill_to_the_brim(data: Path) -> None:
    with contextlib.suppress(OSError), open(data / "brim", "ab", buffering=0) as f:
        while True:
            f.write(b"\0" * 4096)


def sos(n: int) -> Item:
    return new_item("sos", source="button", text=f"求救 {n}", position=Position(30.0, 104.0))


def track(n: int) -> Item:
    return new_item("track", source="mesh:!a1b2c3d4", position=Position(30.0, 104.0 + n * 1e-4))


def test_bulk_refused_in_the_margin_sos_accepted_nothing_false_when_truly_full(
    tmp_path: Path, small_disk: Path
) -> None:
    config = tmp_path / "kit.toml"
    text = render_default(7, "测试套件 / test kit", "data", "run")
    assert "\nreserve_mb = 64 " in text
    text = text.replace("\nreserve_mb = 64 ", f"\nreserve_mb = {RESERVE_MB} ", 1)
    config.write_text(text)
    proc = start_edge(config)
    try:
        with EdgeClient(endpoint(config), timeout_s=5.0, retries=0) as client:
            assert client.accept(track(0))["ok"]  # plenty of room: a track is taken
            filler = fill(small_disk, (RESERVE_MB - 1) * 2**20)  # into the margin
            with pytest.raises(EdgeRefused, match="disk nearly full"):
                client.accept(track(1))
            kept = [client.accept(sos(n))["seq"] for n in range(20)]  # SOS still fit
            fill_to_the_brim(small_disk)
            refused = 0
            for n in range(20, 80):
                try:
                    kept.append(client.accept(sos(n))["seq"])
                except EdgeRefused as err:
                    assert "store write failed" in str(err) or "disk" in str(err).lower()
                    refused += 1
            assert refused > 0, "the disk never filled"
            (small_disk / "brim").unlink()
            filler.unlink()
            after = client.accept(sos(999))["seq"]  # room again: the kit goes on
            assert client.accept(track(2))["ok"]
            for seq in [*kept, after]:
                assert client.get(seq)["ok"], seq  # every acknowledged accept is on disk
    finally:
        stop(proc)
    db = sqlite3.connect(small_disk / "outbox.sqlite3")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        stored = {row[0] for row in db.execute("SELECT seq FROM items")}
    finally:
        db.close()
    assert set(kept) | {after} <= stored
