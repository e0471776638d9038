"""The narrow-link gateway: frames over UDP and relays become stored items, ACKs go back."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import socket
import sqlite3
from collections.abc import Coroutine, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests
from centre_helpers import KITS, STORES, RunningCentre, dump, photo
from centre_helpers import centre_fixture as centre_fixture  # found by name; uses `config` below
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pg_helpers import pg_server_fixture as pg_server_fixture

from centre.app import GATEWAYS
from centre.config import CentreConfig, GatewayEntry
from centre.frames import FrameGateway, choose_ranges, pack_ranges
from centre.store import Store
from edge.item import Item, Kind, MediaRef, new_item
from security import simkeys
from security.channel import KitSecurity
from security.state import SecurityState
from uplink import compact
from uplink.frames import (
    MTU_BEIDOU,
    Frame,
    FrameType,
    decode_frame,
    encode_frame,
    fragment,
    pack_ack,
    pack_missing,
    pack_relay,
    unpack_ack,
    unpack_missing,
    unpack_relay,
)

T = TypeVar("T")
WAIT_S = 0.3  # the test gateway's missing_after_s
SOS_SEQ = compact.SOS_SEQ


def situation(text: str) -> Item:
    return new_item(Kind.SITUATION, source="kit", text=text, created_ms=1_750_000_000_000)


LONG = situation(
    "三号楼东侧倒塌，二楼有四人被困，一人重伤；道路被落石阻断，需要担架和破拆工具。" * 2
    + "请派医疗队和搜救犬前来支援。"
)


_SEALERS: dict[int, KitSecurity] = {}


def sealer(kit: int) -> KitSecurity:
    """Kit ``kit``'s end of the sealed link (simulation keys; its state in memory)."""
    if kit not in _SEALERS:
        centre_public = simkeys.centre_pair("default").public
        _SEALERS[kit] = KitSecurity(
            kit, simkeys.kit_pair(kit, "default"), centre_public, SecurityState(Path(":memory:"))
        )
    return _SEALERS[kit]


def kit_frames(
    kit: int, msg_seq: int, entries: list[tuple[int, Item]], mtu: int = 78, *, seal: bool = True
) -> list[bytes]:
    """What a kit sends: compact items framed (fragmented when needed) at ``mtu``, sealed
    (unsealed for a gateway without security)."""
    payload = compact.pack_items(entries)
    return fragment(kit, msg_seq, payload, mtu, sealer=sealer(kit) if seal else None)


# --- a centre with a UDP gateway (Beidou-sized) and a relay-only one (SMS) ---------------


@pytest.fixture(name="config", params=STORES)
def config_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> CentreConfig:
    simkeys.install_centre(tmp_path / "centre" / "keys", "default")
    pg = request.param == "postgresql"
    return CentreConfig(
        listen="127.0.0.1:0",
        data_dir=tmp_path / "centre",
        kits=KITS,
        database=request.getfixturevalue("pg_server").new_database() if pg else "",
        gateways=(
            GatewayEntry(
                name="beidou", listen="127.0.0.1:0", mtu=MTU_BEIDOU, missing_after_s=WAIT_S
            ),
            GatewayEntry(name="sms", kind="relay", mtu=140),
        ),
    )


class Radio:
    """The kit's end of the link: a UDP socket talking to the gateway."""

    def __init__(self, centre: RunningCentre) -> None:
        self.gateway = centre.runner.app[GATEWAYS].udp["beidou"].address
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))

    def send(self, *frames: bytes) -> None:
        for frame in frames:
            self.sock.sendto(frame, self.gateway)

    def recv(self, timeout: float = 5.0) -> Frame:
        self.sock.settimeout(timeout)
        data, source = self.sock.recvfrom(4096)
        assert source == self.gateway and len(data) <= MTU_BEIDOU
        frame = decode_frame(data, sealer=sealer(7))
        assert frame.downlink and frame.count == 1
        return frame

    def quiet(self, wait: float = 0.3) -> None:
        with pytest.raises(TimeoutError):
            self.recv(wait)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(name="radio")
def radio_fixture(centre: RunningCentre) -> Iterator[Radio]:
    radio = Radio(centre)
    try:
        yield radio
    finally:
        radio.close()


def acked(frame: Frame) -> set[int]:
    assert frame.type is FrameType.ACK
    return {s for r in unpack_ack(frame.payload) for s in r}


def items_of(config: CentreConfig) -> list[tuple[Any, ...]]:
    return dump(config)["items"]


# --- over UDP ----------------------------------------------------------------------------


def test_sos_in_one_beidou_frame_is_stored_once_and_acknowledged_each_time(
    centre: RunningCentre, radio: Radio, config: CentreConfig
) -> None:
    sos = compact.sos_example()
    (frame,) = kit_frames(7, 1, [(SOS_SEQ, sos)])
    radio.send(frame)
    ack = radio.recv()
    assert ack.kit_id == 7 and SOS_SEQ in acked(ack)
    stored = centre.call(centre.store.item(7, SOS_SEQ))
    assert stored is not None
    sent = compact.pack_items([(SOS_SEQ, sos)])
    assert stored.item == compact.unpack_items(sent, kit_id=7)[0][1]
    assert (stored.link, stored.copies) == ("beidou", 1)
    assert stored.item.text == sos.text and stored.item.position == sos.position

    # The kit lost our ACK and sends the item again, framed anew (a new message sequence).
    radio.send(*kit_frames(7, 2, [(SOS_SEQ, sos)]))
    again = radio.recv()
    assert SOS_SEQ in acked(again) and again.msg_seq > ack.msg_seq
    stored = centre.call(centre.store.item(7, SOS_SEQ))
    assert stored is not None and stored.copies == 2
    assert len(items_of(config)) == 1


def test_fragments_out_of_order_and_twice_make_one_item_and_one_ack(
    centre: RunningCentre, radio: Radio, config: CentreConfig
) -> None:
    frames = kit_frames(7, 2, [(5, LONG)])
    assert len(frames) == 4
    radio.send(frames[3], frames[1], frames[1], frames[0], frames[3], frames[2], frames[0])
    assert acked(radio.recv()) == {5}
    radio.quiet()  # the straggler after completion asks for nothing
    stored = centre.call(centre.store.item(7, 5))
    assert stored is not None and stored.item.text == LONG.text and stored.copies == 1
    assert len(items_of(config)) == 1


def test_a_lost_fragment_is_asked_for_after_the_wait_and_completes_the_item_alone(
    centre: RunningCentre, radio: Radio
) -> None:
    frames = kit_frames(7, 3, [(6, LONG)])
    radio.send(frames[0], frames[2], frames[3])
    request = radio.recv(timeout=WAIT_S * 10)
    assert (request.type, request.kit_id) == (FrameType.MISSING, 7)
    missing = unpack_missing(request.payload)
    assert (missing.msg_seq, missing.count, missing.indices) == (3, 4, (1,))
    assert centre.call(centre.store.item(7, 6)) is None
    radio.send(frames[1])
    assert acked(radio.recv()) == {6}
    assert centre.call(centre.store.item(7, 6)) is not None


def test_bad_frames_get_no_answer_are_logged_and_store_nothing(
    centre: RunningCentre, radio: Radio, config: CentreConfig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="centre.frames")
    (good,) = kit_frames(7, 10, [(1, situation("ok"))])
    corrupted = bytes([0x41]) + good[1:]  # version 2
    ack_from_kit = encode_frame(Frame(FrameType.ACK, 7, 11, pack_ack([1])), sealer=sealer(7))
    radio.send(
        corrupted,
        good[:12],  # truncated
        bytes(1751),  # over the largest narrow frame
        *kit_frames(99, 1, [(1, situation("who?"))]),  # not enrolled
        *kit_frames(9, 1, [(1, situation("stolen"))]),  # disabled
        encode_frame(Frame(FrameType.ITEMS, 7, 12, b"\x05garbage"), sealer=sealer(7)),  # bad items
        encode_frame(Frame(FrameType.ACK, 7, 13, b"\x01", downlink=True)),  # wrong direction
        ack_from_kit,
    )
    radio.send(good)  # handled in order: its ACK is the first answer
    assert acked(radio.recv()) == {1}
    radio.quiet()
    assert [row[:2] for row in items_of(config)] == [(7, 1)]
    logged = caplog.text
    for reason in (
        "unsupported frame version 2",
        "truncated frame: 12 bytes",
        "frame too large: 1751 bytes",
        "kit 99 is not enrolled",
        "kit 9 is disabled",
        "kit 7 message 12: bad items",
        "not a kit→centre frame",
        "kit 7 sent a message of type ACK",
    ):
        assert reason in logged


def test_downlink_message_sequences_keep_increasing_across_a_restart(
    config: CentreConfig,
) -> None:
    seen: list[int] = []
    for run in range(2):
        centre = RunningCentre(config)
        radio = Radio(centre)
        try:
            radio.send(*kit_frames(7, 20 + run, [(30 + run, situation(f"run {run}"))]))
            seen.append(radio.recv().msg_seq)
        finally:
            radio.close()
            centre.stop()
    assert 0 < seen[0] < seen[1]


def test_inline_thumbnail_over_narrow_frames_is_complete_at_the_centre(
    centre: RunningCentre, radio: Radio, config: CentreConfig
) -> None:
    blob = bytes(range(256)) + b"thumbnail"
    digest = hashlib.sha256(blob).hexdigest()
    thumb = new_item(
        Kind.THUMBNAIL,
        source="kit",
        media=MediaRef("thumbs/1.webp", len(blob), digest, "image/webp"),
        created_ms=1_750_000_000_000,
    )
    payload = compact.pack_items([(41, thumb)], blobs={41: blob})
    frames = fragment(7, 40, payload, MTU_BEIDOU, sealer=sealer(7))
    radio.send(*frames)
    assert acked(radio.recv()) == {41}
    stored = centre.call(centre.store.item(7, 41))
    assert stored is not None and stored.complete and stored.media_path is not None
    assert (config.media_dir / stored.media_path).read_bytes() == blob
    radio.send(*fragment(7, 42, payload, MTU_BEIDOU, sealer=sealer(7)))  # again: one file
    assert acked(radio.recv()) == {41}
    assert len(dump(config)["media_files"]) == 1
    assert [p.name for p in (config.media_dir / "7").iterdir()] == [Path(stored.media_path).name]


# --- relays: POST /v1/frames -------------------------------------------------------------


def test_relay_posts_frames_and_gets_the_answers_in_the_same_framing(
    centre: RunningCentre, config: CentreConfig
) -> None:
    frames = kit_frames(8, 1, [(1, LONG), (2, situation("二号"))], mtu=140)
    assert len(frames) > 1
    resp = centre.http.post(
        f"{centre.url}/v1/frames",
        data=pack_relay([*frames, b"noise"]),
        headers={"Kit-Link": "sms", "Content-Type": "application/octet-stream"},
    )
    assert resp.status_code == 200 and resp.headers["Content-Type"] == "application/octet-stream"
    (answer,) = unpack_relay(resp.content)
    ack = decode_frame(answer, sealer=sealer(8))
    assert (ack.kit_id, ack.downlink, acked(ack)) == (8, True, {1, 2})
    assert len(answer) <= 140
    stored = centre.call(centre.store.item(8, 2))
    assert stored is not None and stored.link == "sms"

    bad = requests.post(f"{centre.url}/v1/frames", data=b"\x00\x05abc", headers={"Kit-Link": "sms"})
    assert bad.status_code == 400 and "cut off" in bad.text
    unnamed = requests.post(f"{centre.url}/v1/frames", data=b"")
    assert unnamed.status_code == 400 and "Kit-Link" in unnamed.text
    unknown = requests.post(f"{centre.url}/v1/frames", data=b"", headers={"Kit-Link": "vhf"})
    assert unknown.status_code == 404
    assert len(items_of(config)) == 2


def test_relay_framing_round_trips_and_refuses_cut_bodies() -> None:
    frames = [b"a", bytes(1750), b"xyz"]
    body = pack_relay(frames)
    assert body[:3] == b"\x00\x01a" and unpack_relay(body) == frames
    assert unpack_relay(b"") == []
    for cut in (body[:1], body[:-1], b"\x00\x00"):
        with pytest.raises(ValueError):
            unpack_relay(cut)


# --- the gateway on its own (a fake clock, no sockets) -----------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run(tmp_path: Path, test: Any) -> None:
    """Run ``test(store)`` against a fresh store with the test kits enrolled."""

    async def main() -> None:
        store = await Store.open(tmp_path / "c.sqlite3", tmp_path / "media")
        try:
            await store.sync_kits(KITS)
            await test(store)
        finally:
            await store.close()

    asyncio.run(main())


def test_missing_is_asked_after_the_wait_and_at_most_once_per_wait(tmp_path: Path) -> None:
    async def test(store: Store) -> None:
        clock = Clock()
        gw = FrameGateway(store, name="beidou", mtu=78, clock=clock, missing_after_s=60.0)
        frames = kit_frames(7, 5, [(1, LONG)], seal=False)
        for i in (0, 3):
            assert await gw.handle(frames[i]) == []
        clock.now += 59
        assert await gw.missing() == []
        assert await gw.handle(frames[2]) == []  # still trickling in: the wait restarts
        clock.now += 59
        assert await gw.missing() == []
        clock.now += 2
        (request,) = await gw.missing()
        assert unpack_missing(decode_frame(request).payload).indices == (1,)
        assert await gw.missing([8]) == []  # another kit's
        clock.now += 30
        assert await gw.missing() == []
        clock.now += 30
        (again,) = await gw.missing()
        assert decode_frame(again).msg_seq > decode_frame(request).msg_seq
        (ack,) = await gw.handle(frames[1])
        assert acked(decode_frame(ack)) == {1}
        clock.now += 600
        assert await gw.missing() == []

    run(tmp_path, test)


def test_ack_names_the_received_items_then_the_newest_within_one_frame(tmp_path: Path) -> None:
    async def test(store: Store) -> None:
        gw = FrameGateway(store, name="beidou", mtu=40)
        item = situation("x")
        # 200 ranges of one item each: far more than one 40-byte frame holds.
        await store.ingest(7, [(s, item) for s in range(0, 4000, 20)], link="test")
        (frame,) = await gw.handle(kit_frames(7, 1, [(2001, item)], mtu=400, seal=False)[0])
        ranges = unpack_ack(decode_frame(frame).payload)
        assert len(frame) <= 40
        assert range(2000, 2002) in ranges and ranges[-1] == range(3980, 3981)
        # Many received items in scattered ranges: all named, over several frames.
        scattered = [(s, item) for s in range(5000, 5120, 2)]
        answer = await gw.handle(kit_frames(7, 2, scattered, mtu=1750, seal=False)[0])
        assert len(answer) > 1 and all(len(f) <= 40 for f in answer)
        payload = b"".join(decode_frame(f).payload for f in answer)
        assert {s for s, _ in scattered} <= {s for r in unpack_ack(payload) for s in r}
        # The kit lost fragment 1 of that ACK: asked for it, it comes again, byte for byte.
        head = decode_frame(answer[0])
        ask = encode_frame(
            Frame(FrameType.MISSING, 7, 3, pack_missing(head.msg_seq, head.count, [1]))
        )
        assert await gw.handle(ask) == [answer[1]]
        # At the smallest MTU an ACK of many items is cut to what 255 fragments carry.
        tiny = FrameGateway(store, name="tiny", mtu=18)
        many = [(s, item) for s in range(6000, 6600, 2)]
        *first, last = kit_frames(7, 4, many, mtu=1750, seal=False)
        for frame in first:
            assert await tiny.handle(frame) == []
        answer = await tiny.handle(last)
        assert len(answer) == 255 and all(len(f) <= 18 for f in answer)
        payload = b"".join(decode_frame(f).payload for f in answer)
        assert unpack_ack(payload)[0] == range(6000, 6001)

    run(tmp_path, test)


@given(
    ranges=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 300)), max_size=40),
    received=st.lists(st.integers(0, 2 * 10**6), max_size=10),
    budget=st.integers(4, 200),
    extra=st.integers(0, 400),
)
def test_chosen_ranges_are_what_fits_and_pack_as_pack_ack_does(
    ranges: list[tuple[int, int]], received: list[int], budget: int, extra: int
) -> None:
    limit = budget + extra  # a fragmented message carries at least one frame's worth
    seqs = {lo + i for lo, n in ranges for i in range(n + 1)}
    merged = [(r.start, r.stop - 1) for r in unpack_ack(pack_ack(seqs))] if seqs else []
    chosen = choose_ranges(merged, received, budget, limit)
    assert chosen == sorted(set(chosen)) and set(chosen) <= set(merged)
    covering = sorted(r for r in merged if any(r[0] <= s <= r[1] for s in received))
    if len(pack_ranges(covering)) <= limit:
        assert set(covering) <= set(chosen)
    if not chosen:  # nothing fitted at all
        if covering:
            assert len(pack_ranges(covering[:1])) > limit
        else:
            assert not merged or len(pack_ranges(merged[-1:])) > budget
        return
    payload = pack_ranges(chosen)
    assert payload == pack_ack(s for lo, hi in chosen for s in range(lo, hi + 1))
    if len(payload) > budget:  # only the covering ranges, as many as the limit allows
        assert chosen == covering[: len(chosen)] and len(payload) <= limit
    elif merged[-1] not in chosen:  # newest first: the next newer one would not have fitted
        newest = max(i for i, r in enumerate(merged) if r not in chosen)
        assert len(pack_ranges(sorted({*chosen, merged[newest]}))) > budget


def test_arbitrary_bytes_never_raise_and_never_change_the_store(tmp_path: Path) -> None:
    loop = asyncio.new_event_loop()

    def call(coro: Coroutine[Any, Any, T]) -> T:
        return loop.run_until_complete(coro)

    store = call(Store.open(tmp_path / "c.sqlite3", tmp_path / "media"))
    try:
        call(store.sync_kits(KITS))
        gw = FrameGateway(store, name="beidou", mtu=78)
        before = dump_store(tmp_path)

        @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
        @given(st.binary(max_size=1800) | st.binary(max_size=20).map(lambda b: b"\x21\x00\x07" + b))
        def garbage(data: bytes) -> None:
            assert call(gw.handle(data)) == []

        garbage()
        assert dump_store(tmp_path) == before

        @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
        @given(
            kit=st.sampled_from([7, 8, 9, 99]),
            msg_seq=st.integers(0, 2**32 - 1),
            ftype=st.sampled_from(FrameType),
            payload=st.binary(min_size=1, max_size=200),
            index=st.integers(0, 3),
        )
        def framed(kit: int, msg_seq: int, ftype: FrameType, payload: bytes, index: int) -> None:
            frame = Frame(ftype, kit, msg_seq, payload, index=index, count=4 if index else 1)
            call(gw.handle(encode_frame(frame)))  # answers or not, never raises

        framed()
        call(gw.missing())
    finally:
        call(store.close())
        loop.close()


def dump_store(tmp_path: Path) -> dict[str, list[tuple[Any, ...]]]:
    with closing(sqlite3.connect(f"file:{tmp_path / 'c.sqlite3'}?mode=ro", uri=True)) as db:
        return {
            t: sorted(db.execute(f"SELECT * FROM {t}").fetchall(), key=repr)
            for t in ("items", "acked", "media_files", "meta")
        }


# --- the same item over a narrow link and over IP ----------------------------------------


def test_narrow_and_ip_copies_of_one_item_are_one_item_and_the_ip_copy_wins(
    tmp_path: Path,
) -> None:
    async def test(store: Store) -> None:
        full = situation("同一条目")
        (narrow,) = compact.unpack_items(compact.pack_items([(3, full)]), kit_id=7)
        await store.ingest(7, [narrow], link="beidou")
        result = await store.ingest(7, [(3, full)], link="ip")
        assert result.duplicates == (3,) and not result.rejected
        stored = await store.item(7, 3)
        assert stored is not None and stored.item == full and stored.copies == 2
        assert stored.link == "beidou"  # where it was first heard
        result = await store.ingest(7, [narrow], link="beidou")  # a late narrow copy
        assert result.duplicates == (3,) and not result.rejected
        stored = await store.item(7, 3)
        assert stored is not None and stored.item.uid == full.uid and stored.copies == 3
        other = situation("另一条目")
        assert (await store.ingest(7, [(3, other)], link="ip")).rejected

    run(tmp_path, test)


def test_a_photo_named_over_a_narrow_link_takes_its_file_by_checksum_prefix(
    tmp_path: Path,
) -> None:
    async def test(store: Store) -> None:
        content = b"jpeg" * 100
        item = photo(content)
        (narrow,) = compact.unpack_items(compact.pack_items([(4, item)]), kit_id=7)
        assert narrow[1].media is not None and narrow[1].media.sha256.endswith("0" * 48)
        assert (await store.ingest(7, [narrow], link="beidou")).waiting == (4,)
        digest = hashlib.sha256(content).hexdigest()
        wrong = hashlib.sha256(b"other").hexdigest()
        assert (
            await store.attach_media("u0", 7, 4, len(content), wrong, "7/x")
        ).value == "mismatch"
        assert (await store.attach_media("u1", 7, 4, len(content), digest, "7/4.jpg")).value == (
            "linked"
        )
        assert await store.acked_ranges(7) == [(4, 4)]

    run(tmp_path, test)


def test_gateway_config_bounds_and_unique_names(tmp_path: Path) -> None:
    entry = {"name": "beidou", "mtu": 78}
    config = CentreConfig.model_validate({"data_dir": tmp_path, "gateways": [entry]})
    (gw,) = config.gateways
    assert (gw.kind, gw.address, gw.missing_after_s) == ("udp", ("127.0.0.1", 9700), 120.0)
    for bad, message in (
        ({"mtu": 17}, "greater than or equal to 18"),
        ({"mtu": 1751}, "less than or equal to 1750"),
        ({"name": "Bei Dou"}, "String should match pattern"),
        ({"listen": "9700"}, "listen address must be HOST:PORT"),
        ({"kind": "tcp"}, "Input should be 'udp', 'relay', 'beidou', 'sms' or 'mesh'"),
        ({"missing_after_s": 0}, "greater than or equal to 0.1"),
    ):
        with pytest.raises(ValueError, match=message):
            CentreConfig.model_validate({"data_dir": tmp_path, "gateways": [{**entry, **bad}]})
    with pytest.raises(ValueError, match="gateway names listed more than once"):
        CentreConfig.model_validate({"data_dir": tmp_path, "gateways": [entry, entry]})
    with pytest.raises(ValueError, match="UDP gateways listening on the same address"):
        CentreConfig.model_validate(
            {"data_dir": tmp_path, "gateways": [entry, {**entry, "name": "sms"}]}
        )
