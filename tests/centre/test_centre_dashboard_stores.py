"""The dashboard's reads and its operators' sessions give the same answers on SQLite and
on PostgreSQL (the browser tests run on SQLite only)."""

from __future__ import annotations

import time
from types import SimpleNamespace

from centre_helpers import RunningCentre, answer, batch, report
from centre_helpers import centre_fixture as centre_fixture  # pytest fixtures, found by name
from centre_helpers import config_fixture as config_fixture
from pg_helpers import pg_server_fixture as pg_server_fixture

from centre.dashboard import queries
from centre.dashboard.access import ACCESS, SESSION_COOKIE, SharedLimiter
from centre.keys import STORE
from config.web.auth import LoginLimiter
from edge.item import Kind, Position, new_item


def track(lat: float, minutes_ago: float) -> object:
    return new_item(
        Kind.TRACK,
        source="mesh:!a1b2c3d4",
        position=Position(lat, 104.06),
        created_ms=int(time.time() * 1000 - minutes_ago * 60_000),
        clock_ok=True,
    )


def test_feed_filters_kits_and_tracks_read_the_same_on_both_stores(centre: RunningCentre) -> None:
    store = centre.runner.app[STORE]
    answer(centre.post_items(7, batch([(1, report("三号楼倒塌")), (2, report("桥断"))]), "vsat"))
    answer(centre.post_items(8, batch([(1, track(30.66, 3)), (2, track(30.67, 1))]), "beidou"))
    everything = centre.call(queries.items(store, queries.Filters(), 50))
    assert sorted((e["kit_id"], e["seq"]) for e in everything) == [(7, 1), (7, 2)]  # no tracks
    tracks_only = queries.Filters.parse({"kind": "track"})
    assert sorted(
        (e["kit_id"], e["seq"]) for e in centre.call(queries.items(store, tracks_only, 50))
    ) == [(8, 1), (8, 2)]
    inside = queries.Filters.parse({"kind": "track", "bbox": "30.665,104.0,30.68,104.1"})
    assert [(e["kit_id"], e["seq"]) for e in centre.call(queries.items(store, inside, 50))] == [
        (8, 2)
    ]
    top = centre.call(queries.top_feed(store))
    assert centre.call(queries.newer(store, top, 10)) == []
    assert len(centre.call(queries.newer(store, 0, 10))) == 4
    kits = {k["kit_id"]: k for k in centre.call(queries.kits(store))}
    assert set(kits) >= {7, 8}
    tracks = centre.call(queries.tracks(store, 0))
    assert tracks and all(t["kit_id"] == 8 for t in tracks)


def test_operator_sessions_start_are_found_and_end_on_both_stores(
    centre: RunningCentre,
) -> None:
    access = centre.runner.app[ACCESS]
    token = centre.call(access.start("zhang"))
    request = SimpleNamespace(cookies={SESSION_COOKIE: token})  # what operator() reads
    operator = centre.call(access.operator(request))  # type: ignore[arg-type]
    assert operator is not None and operator.name == "zhang"
    stranger = SimpleNamespace(cookies={SESSION_COOKIE: token[:-1] + "x"})
    assert centre.call(access.operator(stranger)) is None  # type: ignore[arg-type]
    centre.call(access.end(token))
    assert centre.call(access.operator(request)) is None  # type: ignore[arg-type]


def test_wrong_passwords_are_counted_for_every_worker_alike_on_both_stores(
    centre: RunningCentre,
) -> None:
    """Two limiters on one store stand for two workers behind one address: a guesser that
    spreads its tries over them is locked out after the same five."""
    store = centre.runner.app[STORE]
    rule = LoginLimiter(base_s=60.0)  # locks long enough that no slow machine sees one end
    first, second = SharedLimiter(store, rule), SharedLimiter(store, rule)
    waits = [centre.call((first if i % 2 else second).failed("203.0.113.9")) for i in range(5)]
    assert waits[:4] == [0.0] * 4 and waits[4] == 60.0
    assert centre.call(first.wait_s("203.0.113.9")) > 30.0
    assert centre.call(second.wait_s("203.0.113.9")) > 30.0
    assert centre.call(second.wait_s("198.51.100.7")) == 0.0  # another client is not slowed
    sixth = centre.call(first.failed("203.0.113.9"))
    assert sixth == 120.0  # the lock doubles
    centre.call(second.succeeded("203.0.113.9"))
    assert centre.call(first.wait_s("203.0.113.9")) == 0.0
