"""The scheduler's decisions, as pure functions, rule by rule."""

from __future__ import annotations

from edge.item import Priority as P
from uplink.scheduler import BULK_MIN_RATE, Candidate, LinkView, plan, take_turns

ALL = frozenset(P)


def link(name: str = "vsat", **kw: object) -> LinkView:
    base: dict[str, object] = dict(
        name=name,
        narrow=False,
        online=True,
        classes=ALL,
        max_item=10**9,
        batch_bytes=64_000,
        rate=250_000.0,
    )
    base.update(kw)
    return LinkView(**base)  # type: ignore[arg-type]


BEIDOU = dict(
    narrow=True, max_item=1_000, batch_bytes=60, rate=1.0, classes=frozenset({P.P0, P.P1, P.P2})
)


def c(
    seq: int, prio: P, size: int = 100, source: str = "web", sent_on: frozenset[str] = frozenset()
) -> Candidate:
    return Candidate(seq, prio, size, source, sent_on)


def seqs(cands: list[Candidate]) -> list[int]:
    return [x.seq for x in cands]


def test_sos_goes_out_on_every_link_until_acknowledged() -> None:
    sos = c(1, P.P0, 40)
    assert seqs(plan(link("vsat"), [sos])) == [1]
    on_vsat = c(1, P.P0, 40, sent_on=frozenset({"vsat"}))
    # In flight on vsat, it still goes out on Beidou and the mesh …
    assert seqs(plan(link("beidou", **BEIDOU), [], [on_vsat])) == [1]
    assert seqs(
        plan(link("mesh", narrow=True, max_item=4000, batch_bytes=200, rate=100.0), [], [on_vsat])
    ) == [1]
    # … but not a second time on vsat itself.
    assert plan(link("vsat"), [], [on_vsat]) == []


def test_bulk_never_offered_to_beidou() -> None:
    photo = c(1, P.P4, 900)
    assert plan(link("beidou", **{**BEIDOU, "classes": ALL}), [photo]) == []


def test_bulk_only_on_links_fast_enough() -> None:
    video = c(1, P.P4, 4_000_000)
    assert plan(link("tiantong", rate=BULK_MIN_RATE - 1), [video]) == []
    assert seqs(plan(link("vsat"), [video])) == [1]


def test_strict_priority_across_classes() -> None:
    ready = [c(1, P.P3, 50), c(2, P.P2, 50), c(3, P.P1, 50), c(4, P.P0, 50)]
    assert seqs(plan(link(batch_bytes=100), ready)) == [4, 3]
    assert seqs(plan(link(batch_bytes=1000), ready)) == [4, 3, 2, 1]


def test_bulk_travels_alone_and_only_after_everything_else() -> None:
    ready = [c(1, P.P4, 5_000_000), c(2, P.P1, 50)]
    assert seqs(plan(link(), ready)) == [2]
    assert seqs(plan(link(), ready[:1])) == [1]


def test_sources_take_turns_within_a_class() -> None:
    chatty = [c(i, P.P2, 10, source="mesh:!a") for i in range(1, 6)]
    quiet = [c(10, P.P2, 10, source="mesh:!b"), c(11, P.P2, 10, source="mesh:!c")]
    assert seqs(plan(link(batch_bytes=30), [*chatty, *quiet])) == [1, 10, 11]
    assert seqs(take_turns([*quiet, *chatty])) == [1, 10, 11, 2, 3, 4, 5]


def test_nothing_is_sent_before_the_links_minimum_interval() -> None:
    assert plan(link("beidou", **BEIDOU, ready_in=12.0), [c(1, P.P0, 40)]) == []
    assert plan(link("vsat", online=False), [c(1, P.P0, 40)]) == []


def test_item_too_large_for_a_link_waits_for_a_bigger_one() -> None:
    big_report = c(1, P.P1, 5_000)
    small = c(2, P.P1, 30)
    assert seqs(plan(link("beidou", **BEIDOU), [big_report, small])) == [2]


def test_one_item_larger_than_a_frame_goes_alone_to_be_fragmented() -> None:
    assert seqs(plan(link("beidou", **BEIDOU), [c(1, P.P1, 300), c(2, P.P1, 20)])) == [1]


def test_budget_spent_stops_everything_but_life() -> None:
    poor = link("tiantong", cost_per_byte=0.01, budget_left=0.5)
    assert plan(poor, [c(1, P.P1, 100)]) == []
    assert seqs(plan(poor, [c(2, P.P0, 100)])) == [2]


def test_link_without_a_class_never_gets_it() -> None:
    mesh = link(
        "mesh", classes=frozenset({P.P0, P.P2}), narrow=True, max_item=2000, batch_bytes=200
    )
    assert seqs(plan(mesh, [c(1, P.P1, 20), c(2, P.P2, 20)])) == [2]


def test_a_preview_crawling_on_a_slow_link_is_overtaken_on_a_fast_one() -> None:
    """A thumbnail in flight on Tiantong (1,200 B/s) goes again on 4G, before the photo."""
    rates = {"tiantong": 1_200.0, "4g": 250_000.0}
    thumb = c(1, P.P3, 3_000, sent_on=frozenset({"tiantong"}))
    photo = c(2, P.P4, 2_000_000, source="media")
    assert seqs(plan(link("4g"), [photo], [thumb], rates)) == [1]
    # Not on a link only a little faster: that would just spend the bytes twice …
    assert seqs(plan(link("4g", rate=5_000.0), [photo], [thumb], rates | {"4g": 5_000.0})) == []
    # … and a report in flight on a fast link is never sent again on a slow one.
    report = c(3, P.P1, 200, sent_on=frozenset({"4g"}))
    assert plan(link("tiantong", rate=1_200.0), [], [report], rates) == []
    # Bulk resumes by its own transfer; it never overtakes.
    bulk = c(4, P.P4, 2_000_000, sent_on=frozenset({"tiantong"}))
    assert plan(link("vsat"), [], [bulk], rates) == []
