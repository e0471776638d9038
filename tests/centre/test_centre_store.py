"""The store on its own: acks as ranges (checked against a model, and at scale), fields kept."""

from __future__ import annotations

import asyncio
import json
import time
from itertools import count, pairwise
from pathlib import Path

import pytest
from centre_helpers import RunningCentre, dump, report
from centre_helpers import centre_fixture as centre_fixture  # pytest fixtures, found by name
from centre_helpers import config_fixture as config_fixture
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pg_helpers import pg_server_fixture as pg_server_fixture

from centre.acks import runs
from centre.pgserver import PgServer
from centre.store import Store
from edge.item import encode

_kit_ids = count(100)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],  # a fresh kit per example
)
@given(batches=st.lists(st.lists(st.integers(0, 60), max_size=12), min_size=1, max_size=8))
def test_acked_ranges_match_the_set_of_stored_seqs(
    centre: RunningCentre, batches: list[list[int]]
) -> None:
    kit_id = next(_kit_ids)
    centre.call(centre.store.enroll(kit_id, f"kit {kit_id}"))
    item = report()
    seen: set[int] = set()
    for seqs in batches:
        centre.call(centre.store.ingest(kit_id, [(s, item) for s in seqs], link="test"))
        seen.update(seqs)
        ranges = centre.call(centre.store.acked_ranges(kit_id))
        assert ranges == runs(seen)
        assert all(hi + 1 < lo for (_, hi), (lo, _) in pairwise(ranges))


# The ranges' SQL is the same on both stores; timed, so on the one without round trips.
@pytest.mark.parametrize("config", ["sqlite"], indirect=True)
def test_acked_ranges_stay_fast_with_many_items(centre: RunningCentre) -> None:
    """Ranges are kept as items complete, so reading them costs per gap, not per item."""
    item = report()
    # 60 000 items arriving out of order, one in every 500 missing.
    for start in reversed(range(0, 60_000, 10_000)):
        entries = [(s, item) for s in range(start, start + 10_000) if s % 500 != 499]
        centre.call(centre.store.ingest(7, entries, link="test"))
    t0 = time.perf_counter()
    ranges = centre.call(centre.store.acked_ranges(7))
    assert time.perf_counter() - t0 < 0.05
    assert len(ranges) == 120
    assert ranges[:2] == [(0, 498), (500, 998)]
    t0 = time.perf_counter()
    centre.call(centre.store.ingest(7, [(499, item)], link="test"))
    assert time.perf_counter() - t0 < 0.05
    assert centre.call(centre.store.acked_ranges(7))[:2] == [(0, 998), (1000, 1498)]


def test_every_field_is_kept_with_its_arrival(centre: RunningCentre) -> None:
    item = report()
    t0 = int(time.time() * 1000)
    result = centre.call(centre.store.ingest(7, [(5, item)], link="ip:vsat"))
    assert result.stored == (5,)
    centre.call(centre.store.ingest(7, [(5, item)], link="mesh"))
    (row,) = dump(centre.config)["items"]
    (kit_id, seq, uid, kind, prio, created, clock_ok, source, text, lat, lon, alt, data, body,
     received, link, copies, media_path, feed_id) = row  # fmt: skip
    assert (kit_id, seq, uid, kind, prio) == (7, 5, item.uid.bytes, "situation", 1)
    assert (created, clock_ok, source, text) == (item.created_ms, 1, "web", item.text)
    assert (lat, lon, alt) == (31.83, 104.46, 650.0)
    assert json.loads(data) == {"count": 4}
    assert body == encode(item)
    assert t0 <= received <= int(time.time() * 1000)
    assert (link, copies, media_path, feed_id) == ("ip:vsat", 2, None, None)


@pytest.mark.parametrize("config", ["sqlite"], indirect=True)  # SQLite's own settings
def test_store_is_wal_with_full_sync(centre: RunningCentre, tmp_path: Path) -> None:
    async def pragmas() -> tuple[object, object]:
        async with centre.store.reading() as db:
            async with db.execute("PRAGMA journal_mode") as cur:
                mode = await cur.fetchone()
            async with db.execute("PRAGMA synchronous") as cur:
                sync = await cur.fetchone()
        return mode, sync

    assert centre.call(pragmas()) == (("wal",), (2,))


def test_two_stores_on_one_postgresql_share_seqs_items_and_acks_without_overlap(
    pg_server: PgServer, tmp_path: Path
) -> None:
    """What two workers do at once: each reserves message sequences and stores copies."""
    database = pg_server.new_database()
    item = report()

    async def main() -> tuple[list[range], list[tuple[int, int]], dict[int, int]]:
        stores = [
            await Store.open(tmp_path / "unused", tmp_path / "media", database=database)
            for _ in range(2)
        ]
        try:
            await stores[0].enroll(7, "北川一队")
            reserved = await asyncio.gather(
                *(s.reserve_msg_seqs(7, 3) for s in stores for _ in range(20))
            )
            await asyncio.gather(
                *(
                    s.ingest(7, [(seq, item) for seq in range(start, start + 10)], link="ip")
                    for s in stores
                    for start in range(0, 100, 5)
                )
            )
            acks = await stores[1].acked_ranges(7)
            copies = {}
            for seq in range(0, 105):
                stored = await stores[seq % 2].item(7, seq)
                if stored is not None:
                    copies[seq] = stored.copies
            return reserved, acks, copies
        finally:
            for s in stores:
                await s.close()

    reserved, acks, copies = asyncio.run(main())
    handed = sorted(seq for r in reserved for seq in r)
    assert handed == list(range(1, 121))  # 40 reservations of 3, none twice
    assert acks == [(0, 104)]
    assert copies == {seq: 2 * (1 if seq < 5 or seq >= 100 else 2) for seq in range(105)}
