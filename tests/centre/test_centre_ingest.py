"""POST /v1/items and GET /v1/acks: each item stored once, acks as ranges, bad input refused."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import cbor2
import pytest
from centre_helpers import RunningCentre, answer, batch, dump, photo, report
from centre_helpers import centre_fixture as centre_fixture  # pytest fixtures, found by name
from centre_helpers import config_fixture as config_fixture
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pg_helpers import pg_server_fixture as pg_server_fixture

from edge.item import encode, to_wire


def test_item_stored_once_however_many_copies_arrive(centre: RunningCentre) -> None:
    item = report()
    for _ in range(5):
        assert answer(centre.post_items(7, batch([(1, item)]))) == {
            "acks": [[1, 1]],
            "rejected": [],
            "orders": [],
        }
    stored = centre.call(centre.store.item(7, 1))
    assert stored is not None
    assert stored.item == item
    assert stored.copies == 5
    assert stored.link == "ip"
    assert len(dump(centre.config)["items"]) == 1


def test_copies_over_two_links_at_once_are_stored_once(centre: RunningCentre) -> None:
    items = [(seq, report(f"报告 {seq}")) for seq in range(1, 41)]
    body = batch(items)

    def send(link: str) -> dict[str, object]:
        return answer(centre.post_items(7, body, link=link))

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(send, ["vsat", "cellular"] * 6))
    assert answers[-1] == {"acks": [[1, 40]], "rejected": [], "orders": []}
    rows = dump(centre.config)["items"]
    assert len(rows) == 40
    for seq, item in items:
        stored = centre.call(centre.store.item(7, seq))
        assert stored is not None and stored.item == item
        assert stored.copies == 12
        assert stored.link in ("ip:vsat", "ip:cellular")


def test_acks_are_compact_ranges_with_gaps(centre: RunningCentre) -> None:
    first = answer(centre.post_items(7, batch([(s, report(f"r{s}")) for s in (9, 1, 2, 3, 5, 6)])))
    assert first["acks"] == [[1, 3], [5, 6], [9, 9]]
    second = answer(centre.post_items(7, batch([(4, report("r4"))])))
    assert second["acks"] == [[1, 6], [9, 9]]
    # A kit that lost that answer catches up from any later one, or by asking.
    assert centre.acks(7) == [[1, 6], [9, 9]]
    assert centre.acks(8) == []


def test_media_record_without_its_file_is_stored_but_not_acknowledged(
    centre: RunningCentre,
) -> None:
    got = answer(
        centre.post_items(7, batch([(1, report()), (2, photo(b"jpeg")), (3, report("x"))]))
    )
    assert got == {"acks": [[1, 1], [3, 3]], "rejected": [], "orders": []}
    stored = centre.call(centre.store.item(7, 2))
    assert stored is not None and not stored.complete


def test_invalid_item_is_rejected_alone_with_its_reason(centre: RunningCentre) -> None:
    bad = to_wire(report())
    bad[1] = "meteor"
    body = cbor2.dumps([[1, to_wire(report())], [2, bad], [3, {0: b"short"}]])
    got = answer(centre.post_items(7, body))
    assert got["acks"] == [[1, 1]]
    assert got["rejected"] == [
        [2, "条目类型或优先级无效 / invalid item kind or priority"],
        [3, "条目缺少字段：[1, 2, 3, 4, 5] / item lacks fields: [1, 2, 3, 4, 5]"],
    ]


def test_different_item_under_a_stored_seq_is_rejected(centre: RunningCentre) -> None:
    answer(centre.post_items(7, batch([(1, report("第一条"))])))
    got = answer(centre.post_items(7, batch([(1, report("另一条"))])))
    assert got["rejected"] == [[1, "序号已被另一条目占用 / seq already holds a different item"]]
    stored = centre.call(centre.store.item(7, 1))
    assert stored is not None and stored.item.text == "第一条" and stored.copies == 1


@pytest.mark.parametrize(
    ("kit", "status", "reason"),
    [
        (99, 403, "设备 99 未登记 / kit 99 is not enrolled"),
        (9, 403, "设备 9 已停用 / kit 9 is disabled"),
        ("", 400, "Kit-Id 应为 1…65535 的整数：'' / Kit-Id must be 1..65535, not ''"),
        ("0", 400, "Kit-Id 应为 1…65535 的整数：'0' / Kit-Id must be 1..65535, not '0'"),
        ("7x", 400, "Kit-Id 应为 1…65535 的整数：'7x' / Kit-Id must be 1..65535, not '7x'"),
    ],
)
def test_unknown_disabled_or_missing_kit_is_refused_and_nothing_stored(
    centre: RunningCentre,
    caplog: pytest.LogCaptureFixture,
    kit: int | str,
    status: int,
    reason: str,
) -> None:
    before = dump(centre.config)
    with caplog.at_level(logging.WARNING, logger="centre"):
        resp = centre.post_items(kit, batch([(1, report())]))
    assert (resp.status_code, resp.text) == (status, reason)
    assert reason in caplog.text
    assert dump(centre.config) == before


def _valid() -> bytes:
    return batch([(1, report()), (2, report("第二条"))])


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (_valid()[:-7], "malformed CBOR"),
        (b"\xff\x00garbage", "malformed CBOR"),
        (_valid() + b"\x00", "1 bytes of trailing data after the CBOR value"),
        (cbor2.dumps({"seq": 1}), "body must be a CBOR array of [seq, item]"),
        (cbor2.dumps([[1, {}, 3]]), "entry 0 is not a [seq, item] pair"),
        (cbor2.dumps([[-1, to_wire(report())]]), "entry 0: seq must be an integer"),
        (cbor2.dumps([[1, to_wire(report())], ["2", {}]]), "entry 1: seq must be an integer"),
        (cbor2.dumps([[True, {}]]), "entry 0: seq must be an integer"),
        (cbor2.dumps([[2**63, {}]]), "entry 0: seq must be an integer"),
        (b"\xa2\x01\x01\x01\x02", "malformed CBOR"),  # a map with a repeated key
    ],
)
def test_malformed_bodies_are_refused_whole_and_change_nothing(
    centre: RunningCentre, body: bytes, reason: str
) -> None:
    before = dump(centre.config)
    resp = centre.post_items(7, body)
    assert resp.status_code == 400
    assert reason in resp.text
    assert dump(centre.config) == before
    assert centre.acks(7) == []  # and the service keeps running


def test_oversized_body_is_413_and_changes_nothing(centre: RunningCentre) -> None:
    before = dump(centre.config)
    resp = centre.post_items(7, b"\x80" * (1024**2 + 1))
    assert resp.status_code == 413
    assert "body exceeds the limit of 1048576 bytes" in resp.text
    chunked = centre.http.post(
        f"{centre.url}/v1/items",
        data=iter([b"\x80" * 65536] * 20),
        headers={"Kit-Id": "7"},
        timeout=30,
    )
    assert chunked.status_code == 413
    assert dump(centre.config) == before


_NEAR_CBOR = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64)
    | st.text(max_size=8)
    | st.binary(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.integers(0, 12) | st.text(max_size=3), children, max_size=4)
    ),
    max_leaves=20,
).map(cbor2.dumps)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],  # one centre throughout
)
@given(
    body=st.binary(max_size=600)
    | _NEAR_CBOR
    | st.integers(0, len(encode(report())) + 40).map(lambda n: _valid()[:n])
)
def test_arbitrary_bytes_never_cause_a_500_nor_change_the_store(
    centre: RunningCentre, body: bytes
) -> None:
    before = dump(centre.config)
    resp = centre.post_items(7, body)
    assert resp.status_code in (200, 400), resp.text
    assert dump(centre.config) == before


def test_items_and_acks_survive_a_restart(centre: RunningCentre) -> None:
    answer(centre.post_items(7, batch([(1, report()), (3, report("三"))])))
    centre.stop()
    again = RunningCentre(centre.config)
    try:
        assert again.acks(7) == [[1, 1], [3, 3]]
        got = answer(again.post_items(7, batch([(1, report()), (2, report("二"))])))
        assert got["acks"] == [[1, 3]]
    finally:
        again.stop()
