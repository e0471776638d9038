"""The kit's wall clock jumps (a Pi has no RTC; a bad fix, a GNSS step): a year back, a year
ahead, ten minutes back — while it files and sends. Nothing may be lost, stored twice or
held up: the outbox orders by sequence and the links time out on the monotonic clock.

The kit's processes run under libfaketime (its offset re-read from a file on every call);
the centre keeps the true time. ``created_ms`` keeps what the kit's clock said.
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq.asyncio
from hygiene import no_thread_left, until  # noqa: F401

from sim.harness import KIT_ID, centre, kit

YEAR_MS = 365 * 86_400_000
PER_STEP = 3


def libfaketime() -> str:
    files = subprocess.run(
        ["dpkg", "-L", "libfaketime"], capture_output=True, text=True, check=True
    ).stdout.split()
    return next(f for f in files if f.endswith("/libfaketime.so.1"))


def stored(centre_dir: Path) -> dict[str, tuple[int, int, int]]:
    """text -> (created_ms, received_ms, copies) of what the centre stored for the kit."""
    db = sqlite3.connect(centre_dir / "centre.sqlite3")
    try:
        rows = db.execute(
            "SELECT text, created_ms, received_ms, copies FROM items WHERE kit_id = ?", (KIT_ID,)
        )
        return {text: (c, r, n) for text, c, r, n in rows}
    finally:
        db.close()


def test_the_kit_clock_jumping_a_year_either_way_and_back_ten_minutes_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    offset = tmp_path / "faketime"
    offset.write_text("+0\n")

    async def main() -> dict[str, tuple[int, int, int]]:
        async with centre(tmp_path / "c") as (url, data):
            # Only the kit's processes (started below) live in the faked time.
            monkeypatch.setenv("LD_PRELOAD", libfaketime())
            monkeypatch.setenv("FAKETIME_TIMESTAMP_FILE", str(offset))
            monkeypatch.setenv("FAKETIME_NO_CACHE", "1")
            monkeypatch.setenv("FAKETIME_DONT_FAKE_MONOTONIC", "1")
            host, port = url.removeprefix("http://").split(":")
            link = (
                f'[[links]]\nkind = "ip"\nname = "vsat"\nurl = "http://{host}:{port}"\n'
                "rate = 100000\nrtt = 0.3\nack_timeout = 5\nprobe_interval = 0.5\ntimeout = 5\n"
            )
            async with kit(tmp_path / "k", link):
                for step, shift in enumerate(("-365d", "+365d", "-10m", "+0")):
                    offset.write_text(shift + "\n")
                    texts = {f"{step}:{n} {shift}" for n in range(PER_STEP)}
                    for text in sorted(texts):
                        # Filed from the kit's side, stamped by the kit's (faked) clock.
                        proc = await asyncio.create_subprocess_exec(
                            sys.executable,
                            "-m",
                            "edge.cli",
                            "report",
                            "situation",
                            "--text",
                            text,
                            "--config",
                            str(tmp_path / "k" / "kit.toml"),
                            stdout=asyncio.subprocess.DEVNULL,
                        )
                        assert await proc.wait() == 0
                    await until(lambda texts=texts: texts <= set(stored(data)), 30)
                return stored(data)

    try:
        from hygiene import run

        seen = run(main(), 120)
    finally:
        zmq.asyncio.Context.instance().term()
    assert len(seen) == 4 * PER_STEP
    assert all(copies == 1 for _, _, copies in seen.values())
    now = time.time() * 1000
    for text, (created, received, _) in seen.items():
        shift = text.split()[-1]
        skew = {"-365d": -YEAR_MS, "+365d": YEAR_MS, "-10m": -600_000, "+0": 0}[shift]
        # The kit stamped its own (wrong) time; the centre its true one.
        assert abs(created - (received + skew)) < 120_000, (text, created, received)
        assert abs(received - now) < 300_000
