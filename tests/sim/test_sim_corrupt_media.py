"""Reliability: a media file damaged on the kit's disk (cut short, other bytes, deleted)
before or while the uplink sends it neither crashes the uplink nor sends it round in a
loop: the item is withdrawn from the queue with one logged reason, and the rest flows.

Real `kit edge` and `kit uplink` and a real centre; the kit's IP link goes through a
rate-limited relay so that a 2 MB video segment is still on its way when its file is cut.
"""

from __future__ import annotations

import os
from pathlib import Path

import zmq.asyncio
from hygiene import nothing_left_open, run, until  # noqa: F401

from edge.item import new_item
from edge.store import State
from sim.harness import centre, centre_items, free_port, kit
from sim.linkemu import LinkConditions
from sim.linkrelay import LinkRelay


def test_damaged_media_is_withdrawn_with_its_reason_and_the_rest_keeps_flowing(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with centre(tmp_path / "c") as (url, data):
            host, port = url.removeprefix("http://").split(":")
            relay = LinkRelay(
                ("127.0.0.1", free_port()), (host, int(port)), LinkConditions(rate=150_000)
            )
            await relay.start()
            link = (
                f'[[links]]\nkind = "ip"\nname = "lan"\nurl = "http://127.0.0.1:{relay.listen[1]}"'
                "\nrate = 150000\nrtt = 0.05\nack_timeout = 5\nprobe_interval = 0.5\ntimeout = 5\n"
            )
            try:
                async with kit(tmp_path / "k", link) as k:
                    log = tmp_path / "k" / "uplink.log"
                    refs = {
                        n: k.media(f"{n}.jpg", os.urandom(200_000), "image/jpeg")
                        for n in ("short", "flipped", "gone", "good")
                    }
                    (k.media_dir / "short.jpg").write_bytes(os.urandom(1000))
                    flipped = bytearray((k.media_dir / "flipped.jpg").read_bytes())
                    flipped[5000] ^= 0xFF
                    (k.media_dir / "flipped.jpg").write_bytes(flipped)
                    (k.media_dir / "gone.jpg").unlink()
                    seqs = {}
                    for name, ref in refs.items():
                        answer = await k.edge.accept(new_item("photo", source="web", media=ref))
                        seqs[name] = answer["seq"]
                    report = (await k.edge.accept(new_item("situation", source="web", text="1")))[
                        "seq"
                    ]
                    await until(lambda: {seqs["good"], report} <= set(centre_items(data)), 60)
                    bad = [seqs[n] for n in ("short", "flipped", "gone")]
                    await until(lambda: all(k.kit_states()[s] == State.SUPERSEDED for s in bad), 30)
                    # A segment cut short while it is on its way (a failing card, a bad eviction).
                    segment = k.media("seg-0001.ts", os.urandom(2_000_000), "video/mp2t")
                    video = (
                        await k.edge.accept(new_item("video", source="drone-1", media=segment))
                    )["seq"]
                    state = tmp_path / "k" / "data" / "uplink" / "transfers" / f"{video}.json"
                    await until(state.exists, 30)
                    os.truncate(k.media_dir / "seg-0001.ts", 300_000)
                    after = (await k.edge.accept(new_item("situation", source="web", text="2")))[
                        "seq"
                    ]
                    await until(lambda: k.kit_states()[video] == State.SUPERSEDED, 60)
                    await until(lambda: after in centre_items(data), 30)
                    stored = centre_items(data)
                    assert video not in stored and not set(bad) & set(stored)
                    assert all(stored[s][0] == 1 for s in stored)
                    text = log.read_text()
                    for name, why in (
                        ("short", "has 1000 bytes, 200000 filed"),
                        ("flipped", "is damaged (sha256 differs"),
                        ("gone", "is missing"),
                    ):
                        assert text.count(f"item {seqs[name]} not sent, withdrawn:") == 1, name
                        assert why in text, name
                    assert text.count(f"item {video} not sent, withdrawn:") == 1
                    assert "Traceback" not in text
                    assert all(p.returncode is None for p in k.procs)  # nothing crashed
            finally:
                await relay.close()

    try:
        run(main(), 240)
    finally:
        zmq.asyncio.Context.instance().term()
