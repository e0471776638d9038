"""The store on its own: acks as ranges (checked against a model, and at scale), fields kept."""

from __future__ import annotations

import json
import time
from itertools import count, pairwise
from pathlib import Path

from centre_helpers import RunningCentre, dump, report
from centre_helpers import centre_fixture as centre_fixture  # pytest fixtures, found by name
from centre_helpers import config_fixture as config_fixture
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from centre.acks import runs
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
     received, link, copies, media_path) = row  # fmt: skip
    assert (kit_id, seq, uid, kind, prio) == (7, 5, item.uid.bytes, "situation", 1)
    assert (created, clock_ok, source, text) == (item.created_ms, 1, "web", item.text)
    assert (lat, lon, alt) == (31.83, 104.46, 650.0)
    assert json.loads(data) == {"count": 4}
    assert body == encode(item)
    assert t0 <= received <= int(time.time() * 1000)
    assert (link, copies, media_path) == ("ip:vsat", 2, None)


def test_store_is_wal_with_full_sync(centre: RunningCentre, tmp_path: Path) -> None:
    async def pragmas() -> tuple[object, object]:
        async with centre.store.reading() as db:
            async with db.execute("PRAGMA journal_mode") as cur:
                mode = await cur.fetchone()
            async with db.execute("PRAGMA synchronous") as cur:
                sync = await cur.fetchone()
        return mode, sync

    assert centre.call(pragmas()) == (("wal",), (2,))
