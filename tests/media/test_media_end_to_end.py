"""A photo dropped into a running kit: its thumbnails are at the centre before the photo.

Real processes: ``kit centre``, ``kit edge``, ``kit uplink`` and ``kit media``, with a
Tiantong-like 9.6 kbit/s link and a faster one between kit and centre (loopback relays).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import zmq
import zmq.asyncio
from hygiene import nothing_left_open, run  # noqa: F401

from edge.item import decode
from sim.harness import KIT_ID, Kit, centre, kit
from sim.linkemu import LinkConditions
from sim.linkrelay import LinkRelay

# The edge client uses the process-wide ZeroMQ context, which lives as long as the process:
# started here, before the fixture counts file descriptors, it is not one this test leaves.
zmq.asyncio.Context.instance().socket(zmq.REQ).close(linger=0)

TIANTONG = LinkConditions(rate=1200.0, rtt=1.2)  # 9.6 kbit/s: P0–P3 only (no bulk)
CELL = LinkConditions(rate=100_000.0, rtt=0.2)  # fast enough for bulk (P4)

Done = dict[str, list[tuple[int, int, str | None, str, str]]]


def ip_link(name: str, address: tuple[str, int], conditions: LinkConditions, chunk: int) -> str:
    return (
        f'[[links]]\nkind = "ip"\nname = "{name}"\n'
        f'url = "http://{address[0]}:{address[1]}"\n'
        f"rate = {conditions.rate}\nrtt = {conditions.rtt}\nack_timeout = 20\n"
        f"probe_interval = 0.5\ntimeout = 20\nchunk_bytes = {chunk}\n"
    )


def photo_jpeg(width: int, height: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    image = cv2.resize(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8), (width, height))
    noise = rng.integers(0, 40, (height, width, 3), dtype=np.uint8)  # a photo-like size
    ok, buf = cv2.imencode(".jpg", cv2.add(image, noise), [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return bytes(buf.tobytes())


def completions(centre_dir: Path) -> Done:
    """kind → (seq, when the centre had it complete, parent uid, uid, link), items with media.

    An item with media is complete once both its record and its file are stored (either
    may come first): "when" is the later of their ``received_ms``.
    """
    db = sqlite3.connect(centre_dir / "centre.sqlite3")
    try:
        rows = db.execute(
            "SELECT i.seq, i.kind, i.body, i.received_ms, f.received_ms, i.link"
            " FROM items i JOIN media_files f USING (kit_id, seq)"
            " WHERE i.kit_id = ? AND i.media_path IS NOT NULL",
            (KIT_ID,),
        ).fetchall()
    finally:
        db.close()
    out: Done = {}
    for seq, kind, body, item_ms, file_ms, link in rows:
        item = decode(body)
        parent = str(item.parent) if item.parent is not None else None
        out.setdefault(kind, []).append((seq, max(item_ms, file_ms), parent, str(item.uid), link))
    return out


async def spawn_media(root: Path) -> asyncio.subprocess.Process:
    log = open(root / "media.log", "ab")  # noqa: SIM115 — the child owns it until it exits
    try:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edge.cli", "media", "--config", str(root / "kit.toml"),
            stdout=log, stderr=log, env={**os.environ, "KIT_CLOCK_SYNCED": "1"},
        )  # fmt: skip
    finally:
        log.close()


async def stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()


IN_FLIGHT, ACKNOWLEDGED = 1, 2  # edge.store.State


async def until(predicate: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        await asyncio.sleep(0.25)


async def photo_over_links(root: Path, cell_up: Callable[[Kit, Path], bool]) -> Done:
    """Drop a photo into the kit's inbox with only the narrow link up; the fast link comes up
    once ``cell_up(kit, centre_dir)`` holds. Returns what the centre had complete, in order."""
    async with centre(root) as (url, centre_dir):
        target = ("127.0.0.1", int(url.rsplit(":", 1)[1]))
        here = ("127.0.0.1", 0)
        async with (
            LinkRelay(here, target, TIANTONG, name="tiantong") as tiantong,
            LinkRelay(here, target, CELL, name="cell", reset_after=0.5) as cell,
        ):
            cell.set_online(False)
            links = ip_link("tiantong", tiantong.address, TIANTONG, 4096)
            links += ip_link("cell", cell.address, CELL, 65536)
            async with kit(root, links) as k:
                inbox = root / "data" / "inbox"
                inbox.mkdir(parents=True, exist_ok=True)
                path = inbox / "IMG_0001.JPG"
                path.write_bytes(photo_jpeg(800, 600, 1))
                os.utime(path, (0, 0))  # copied long ago: settled
                media = await spawn_media(root)
                try:
                    await until(lambda: cell_up(k, centre_dir), "the moment to bring 4G up")
                    cell.set_online(True)
                    await until(
                        lambda: len(completions(centre_dir).get("photo", [])) == 1,
                        "the photo at the centre",
                    )
                finally:
                    await stop(media)
    return completions(centre_dir)


def assert_thumbnails_first(done: Done) -> None:
    ((seq, photo_done, _, uid, link),) = done["photo"]
    assert link == "ip:cell", "the full photo travels only on a fast link"
    thumbs = [t for t in done["thumbnail"] if t[2] == uid]
    assert len(thumbs) == 2, f"photo {seq}: thumbnails {thumbs}"
    for thumb_seq, thumb_done, *_ in thumbs:
        assert thumb_done < photo_done, f"photo {seq} complete before its thumbnail {thumb_seq}"


def test_over_the_narrow_link_only_the_thumbnails_go_and_the_photo_follows_on_4g(
    tmp_path: Path,
) -> None:
    seen: list[Done] = []

    def thumbnails_there(k: Kit, centre_dir: Path) -> bool:
        done = completions(centre_dir)
        if len(done.get("thumbnail", [])) < 2:
            return False
        seen.append(done)
        return True

    done = run(photo_over_links(tmp_path, thumbnails_there), 100)
    assert "photo" not in seen[0], "the full photo crossed the 9.6 kbit/s link"
    assert {t[4] for t in seen[0]["thumbnail"]} == {"ip:tiantong"}
    assert_thumbnails_first(done)


def test_a_photo_stays_behind_its_thumbnails_when_4g_comes_up_mid_transfer(
    tmp_path: Path,
) -> None:
    def thumbnails_in_flight(k: Kit, centre_dir: Path) -> bool:
        states = outbox(k)
        thumbs = [s for s, (_, kind) in states.items() if kind == "thumbnail"]
        complete = {t[0] for t in completions(centre_dir).get("thumbnail", [])}
        return (
            len(thumbs) == 2
            and all(states[s][0] in (IN_FLIGHT, ACKNOWLEDGED) for s in thumbs)
            and not set(thumbs) <= complete
        )

    assert_thumbnails_first(run(photo_over_links(tmp_path, thumbnails_in_flight), 100))


def outbox(k: Kit) -> dict[int, tuple[int, str]]:
    """seq → (state, kind) of the kit's items."""
    db = sqlite3.connect(k.root / "data" / "outbox.sqlite3")
    try:
        return {s: (st, kind) for s, st, kind in db.execute("SELECT seq, state, kind FROM items")}
    finally:
        db.close()
