"""The outbox: state machine, supersede rule, next-items query, start-up recovery."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from edge.errors import BadItem, InvalidTransition
from edge.item import Item, Kind, MediaRef, Position, Priority, new_item
from edge.store import TRANSITIONS, State, Store, check_transition

T = TypeVar("T")


def run(coro_fn: Callable[[Store], Awaitable[T]], path: Path) -> T:
    async def go() -> T:
        store = await Store.open(path)
        try:
            return await coro_fn(store)
        finally:
            await store.close()

    return asyncio.run(go())


def report(text: str = "道路中断", kind: str = "situation") -> Item:
    return new_item(kind, source="test", text=text)


def track(source: str, t_ms: int, lat: float = 30.0) -> Item:
    return new_item("track", source=source, position=Position(lat, 104.0), created_ms=t_ms)


def photo(size: int) -> Item:
    return new_item("photo", source="web", media=MediaRef("p/1.jpg", size, "0" * 64, "image/jpeg"))


T0 = 1_790_000_000_000


def test_accept_is_idempotent_per_uid(tmp_path: Path) -> None:
    async def go(store: Store) -> None:
        item = report()
        first = await store.accept(item)
        again = await store.accept(item)
        assert first.new and not again.new
        assert again.seq == first.seq
        assert (await store.queued())[Priority.P1] == 1

    run(go, tmp_path / "s.db")


def test_reused_uid_with_other_content_is_refused_alone(tmp_path: Path) -> None:
    async def go(store: Store) -> None:
        a = report("一")
        b = Item(a.uid, a.kind, a.priority, a.created_ms, a.clock_ok, a.source, text="二")
        c = report("三")
        await store.accept(a)
        results = await store.accept_many([b, c])
        assert isinstance(results[0], BadItem)
        assert str(results[0]) == (
            f"条目编号 {a.uid} 已用于不同内容 / item id {a.uid} was already used for different content"
        )
        assert not isinstance(results[1], BadItem) and results[1].new
        stored = await store.get(a.uid)
        assert stored is not None and stored.item.text == "一"

    run(go, tmp_path / "s.db")


def test_state_machine_allows_only_listed_transitions() -> None:
    for old in State:
        for new in State:
            if new in TRANSITIONS[old]:
                check_transition(old, new)
            else:
                with pytest.raises(InvalidTransition):
                    check_transition(old, new)
    with pytest.raises(InvalidTransition) as err:
        check_transition(State.ACCEPTED, State.EVICTABLE)
    assert (
        str(err.value)
        == "状态不能从 ACCEPTED 变为 EVICTABLE / cannot move an item from ACCEPTED to EVICTABLE"
    )


def test_item_moves_accepted_in_flight_acknowledged_evictable(tmp_path: Path) -> None:
    async def go(store: Store) -> None:
        seq = (await store.accept(report())).seq
        assert await store.mark_in_flight([seq], "beidou") == [seq]
        assert await store.mark_in_flight([seq], "vsat") == [seq]  # P0-style send on a 2nd link
        assert await store.acknowledge([seq]) == [seq]
        assert await store.acknowledge([seq]) == []  # duplicate ack: nothing changes
        assert await store.mark_evictable([seq]) == [seq]
        stored = await store.get(seq)
        assert stored is not None
        assert (stored.state, stored.attempts, stored.link) == (State.EVICTABLE, 2, "vsat")
        assert stored.acked_ms is not None

    run(go, tmp_path / "s.db")


def test_unacknowledged_item_cannot_be_evicted_and_nothing_changes(tmp_path: Path) -> None:
    async def go(store: Store) -> None:
        a = (await store.accept(report("a"))).seq
        b = (await store.accept(report("b"))).seq
        await store.acknowledge([a])
        with pytest.raises(InvalidTransition):
            await store.mark_evictable([a, b])
        assert (await store.get(a)).state is State.ACKNOWLEDGED  # type: ignore[union-attr]
        assert (await store.get(b)).state is State.ACCEPTED  # type: ignore[union-attr]

    run(go, tmp_path / "s.db")


def test_acknowledgement_overtaking_a_timeout_is_not_undone_by_requeue(tmp_path: Path) -> None:
    async def go(store: Store) -> None:
        seq = (await store.accept(report())).seq
        await store.mark_in_flight([seq], "tiantong")
        await store.acknowledge([seq])
        assert await store.requeue([seq]) == []
        assert await store.mark_in_flight([seq], "vsat") == []  # delivered: never sent again
        assert (await store.get(seq)).state is State.ACKNOWLEDGED  # type: ignore[union-attr]

    run(go, tmp_path / "s.db")


def test_in_flight_items_return_to_ready_on_start_up(tmp_path: Path) -> None:
    path = tmp_path / "s.db"

    async def first(store: Store) -> list[int]:
        seqs = [(await store.accept(report(str(i)))).seq for i in range(3)]
        await store.mark_in_flight(seqs[:2], "vsat")
        return seqs

    seqs = run(first, path)

    async def second(store: Store) -> None:
        assert store.requeued_at_start == 2
        ready = await store.next_items(Priority, max_size=10_000)
        assert [q.seq for q in ready] == seqs
        assert (await store.counts()) == {(State.ACCEPTED, Priority.P1): 3}

    run(second, path)


def test_track_from_same_source_supersedes_older(tmp_path: Path) -> None:
    async def go(store: Store) -> None:
        old = (await store.accept(track("mesh:!a1", T0))).seq
        other = (await store.accept(track("mesh:!b2", T0))).seq
        new = (await store.accept(track("mesh:!a1", T0 + 1000))).seq
        assert (await store.get(old)).state is State.SUPERSEDED  # type: ignore[union-attr]
        assert (await store.get(other)).state is State.ACCEPTED  # type: ignore[union-attr]
        ready = [q.seq for q in await store.next_items([Priority.P2], 10_000)]
        assert ready == [other, new]
        assert (await store.queued())[Priority.P2] == 2

    run(go, tmp_path / "s.db")


def test_older_track_arriving_late_does_not_supersede_newer(tmp_path: Path) -> None:
    async def go(store: Store) -> None:
        new = await store.accept(track("mesh:!a1", T0 + 5000))
        late = await store.accept(track("mesh:!a1", T0))
        assert late.state is State.SUPERSEDED
        assert (await store.get(new.seq)).state is State.ACCEPTED  # type: ignore[union-attr]

    run(go, tmp_path / "s.db")


def test_track_in_flight_is_not_superseded(tmp_path: Path) -> None:
    async def go(store: Store) -> None:
        old = (await store.accept(track("mesh:!a1", T0))).seq
        await store.mark_in_flight([old], "mesh")
        await store.accept(track("mesh:!a1", T0 + 1000))
        assert (await store.get(old)).state is State.IN_FLIGHT  # type: ignore[union-attr]

    run(go, tmp_path / "s.db")


def test_next_items_highest_class_first_then_oldest_within_size(tmp_path: Path) -> None:
    async def go(store: Store) -> None:
        r1 = (await store.accept(report("1"))).seq
        big = (await store.accept(photo(5_000_000))).seq
        sos = (await store.accept(new_item(Kind.SOS, source="btn", text="救命"))).seq
        r2 = (await store.accept(report("2"))).seq
        got = await store.next_items(Priority, max_size=1_000)
        assert [q.seq for q in got] == [sos, r1, r2]
        assert [q.seq for q in await store.next_items(Priority, 10_000_000, limit=2)] == [sos, r1]
        assert [q.seq for q in await store.next_items([Priority.P4], 10_000_000)] == [big]
        assert got[0].item.text == "救命"

    run(go, tmp_path / "s.db")


def test_counts_follow_every_transition(tmp_path: Path) -> None:
    async def go(store: Store) -> None:
        seqs = [(await store.accept(report(str(i)))).seq for i in range(4)]
        await store.mark_in_flight(seqs[:3], "x")
        await store.acknowledge(seqs[:2])
        await store.requeue(seqs[2:3])
        assert (await store.counts()) == {
            (State.ACCEPTED, Priority.P1): 2,
            (State.ACKNOWLEDGED, Priority.P1): 2,
        }

    run(go, tmp_path / "s.db")
    import sqlite3

    db = sqlite3.connect(tmp_path / "s.db")
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert dict(((s, p), n) for s, p, n in db.execute("SELECT * FROM counts") if n) == {
        (0, 1): 2,
        (2, 1): 2,
    }
    db.close()


def test_acknowledging_unknown_items_changes_nothing(tmp_path: Path) -> None:
    async def go(store: Store) -> None:
        seq = (await store.accept(report())).seq
        with pytest.raises(InvalidTransition) as err:
            await store.acknowledge([seq, 999])
        assert str(err.value) == "没有这些条目：[999] / no such items: [999]"
        assert (await store.get(seq)).state is State.ACCEPTED  # type: ignore[union-attr]

    run(go, tmp_path / "s.db")


def test_newest_of_several_tracks_in_one_group_commit_wins(tmp_path: Path) -> None:
    async def go(store: Store) -> None:
        older = (await store.accept(track("mesh:!a1", T0))).seq
        results = await store.accept_many(
            [
                track("mesh:!a1", T0 + 3000),
                track("mesh:!a1", T0 + 9000),
                track("mesh:!a1", T0 + 1000),
            ]
        )
        states = [r.state for r in results if not isinstance(r, BadItem)]
        assert states == [State.SUPERSEDED, State.ACCEPTED, State.SUPERSEDED]
        assert (await store.get(older)).state is State.SUPERSEDED  # type: ignore[union-attr]
        assert (await store.queued())[Priority.P2] == 1

    run(go, tmp_path / "s.db")


def test_same_uid_twice_in_one_group_is_stored_once(tmp_path: Path) -> None:
    async def go(store: Store) -> None:
        item = report()
        first, second = await store.accept_many([item, item])
        assert not isinstance(first, BadItem) and not isinstance(second, BadItem)
        assert (first.new, second.new, first.seq) == (True, False, second.seq)
        assert (await store.queued())[Priority.P1] == 1

    run(go, tmp_path / "s.db")


def test_acknowledgement_ranges_touch_only_known_unacknowledged_items(tmp_path: Path) -> None:
    async def go(store: Store) -> None:
        seqs = [(await store.accept(report(str(i)))).seq for i in range(6)]
        await store.mark_in_flight(seqs[1:3], "vsat")
        await store.acknowledge([seqs[0]])
        acked = await store.acknowledge_ranges([(seqs[0], seqs[2]), (seqs[4], 10**9), (9, 3)])
        assert acked == [seqs[1], seqs[2], seqs[4], seqs[5]]
        assert [q.seq for q in await store.next_items(Priority, 10_000)] == [seqs[3]]
        assert await store.acknowledge_ranges([(1, 10**9)]) == [seqs[3]]

    run(go, tmp_path / "s.db")
