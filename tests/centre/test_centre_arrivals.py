"""Each copy of an item that reaches the centre is kept as an arrival (link, when, from where,
relayed by which kit), in the transaction that stores the item or counts the copy, on SQLite
and on PostgreSQL; the dashboard shows an item's delivery path."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest
import requests
from centre_helpers import KITS, STORES, RunningCentre, answer, batch, dump
from centre_helpers import centre_fixture as centre_fixture  # found by name; uses `config` below
from hygiene import nothing_left_open, run  # noqa: F401
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pg_helpers import pg_server_fixture as pg_server_fixture
from playwright.sync_api import Browser, expect, sync_playwright

from centre.app import GATEWAYS, serve
from centre.config import CentreConfig, GatewayEntry
from centre.dashboard import queries
from centre.dashboard.access import ACCESS, SESSION_COOKIE
from centre.pgserver import PgServer
from centre.store import Store
from edge.item import Item, Kind, new_item
from security import simkeys, tlsid
from security.channel import KitSecurity
from security.state import SecurityState
from uplink import compact
from uplink.frames import MTU_BEIDOU, fragment, pack_relay, unpack_relay

SOS_SEQ = compact.SOS_SEQ
CARD = "0412345"  # the kit's Beidou card number, as the centre's terminal reports the sender
_SEALERS: dict[int, KitSecurity] = {}


def sealer(kit: int) -> KitSecurity:
    """Kit ``kit``'s end of the sealed link (simulation keys; its state in memory)."""
    if kit not in _SEALERS:
        centre_public = simkeys.centre_pair("default").public
        _SEALERS[kit] = KitSecurity(
            kit, simkeys.kit_pair(kit, "default"), centre_public, SecurityState(Path(":memory:"))
        )
    return _SEALERS[kit]


def kit_frames(kit: int, msg_seq: int, entries: list[tuple[int, Item]], mtu: int) -> list[bytes]:
    return fragment(kit, msg_seq, compact.pack_items(entries), mtu, sealer=sealer(kit))


def arrivals_of(config: CentreConfig, kit: int, seq: int) -> list[tuple[Any, ...]]:
    """(copy_no, link, via, relay_kit) of an item's arrivals, read with a separate connection."""
    rows = dump(config)["arrivals"]
    return sorted((r[2], r[3], r[5], r[6]) for r in rows if (r[0], r[1]) == (kit, seq))


def counted(rows: list[tuple[Any, ...]]) -> dict[tuple[int, int], int]:
    out: dict[tuple[int, int], int] = {}
    for kit, seq, *_ in rows:
        out[(kit, seq)] = out.get((kit, seq), 0) + 1
    return out


def copies_of(config: CentreConfig) -> dict[tuple[int, int], int]:
    """(kit, seq) → copies, for every stored item (``copies`` is the items' 17th column)."""
    return {(r[0], r[1]): r[16] for r in dump(config)["items"]}


# --- one P0 over three links, through the running centre ---------------------------------


@pytest.fixture(name="config", params=STORES)
def config_fixture(
    request: pytest.FixtureRequest, tmp_path: Path, pg_server: PgServer
) -> CentreConfig:
    simkeys.install_centre(tmp_path / "centre" / "keys", "default")
    return CentreConfig(
        listen="127.0.0.1:0",
        data_dir=tmp_path / "centre",
        kits=KITS,
        database=pg_server.new_database() if request.param == "postgresql" else "",
        gateways=(
            GatewayEntry(name="beidou", kind="relay", mtu=MTU_BEIDOU),
            GatewayEntry(name="mesh-relay", kind="relay", mtu=233),
        ),
    )


def test_a_p0_sent_over_three_links_is_one_item_with_three_copies_and_its_path(
    centre: RunningCentre, config: CentreConfig
) -> None:
    sos = compact.sos_example()
    # VSAT: the kit's own IP ingest, the whole item.
    answer(centre.post_items(7, batch([(SOS_SEQ, sos)]), "vsat"))
    # Beidou: the frame as the centre's Beidou terminal hands it to its gateway.
    (beidou,) = kit_frames(7, 1, [(SOS_SEQ, sos)], MTU_BEIDOU)
    gateway = centre.runner.app[GATEWAYS].by_name["beidou"]
    assert centre.call(gateway.handle(beidou, via=CARD))  # acknowledged
    # The mesh: a neighbour kit relays the frame over its own IP connection.
    (meshed,) = kit_frames(7, 2, [(SOS_SEQ, sos)], 233)
    resp = requests.post(
        f"{centre.url}/v1/frames",
        data=pack_relay([meshed]),
        headers={"Kit-Link": "mesh-relay"},
        timeout=30,
    )
    assert resp.status_code == 200 and unpack_relay(resp.content)  # the ACK to relay back

    stored = centre.call(centre.store.item(7, SOS_SEQ))
    assert stored is not None and stored.copies == 3 and stored.link == "ip:vsat"
    assert stored.item == sos  # the whole IP copy, not the narrow one
    assert arrivals_of(config, 7, SOS_SEQ) == [
        (1, "ip:vsat", "127.0.0.1", None),
        (2, "beidou", CARD, None),
        (3, "mesh-relay", "127.0.0.1", None),
    ]
    assert counted(dump(config)["arrivals"]) == copies_of(config) == {(7, SOS_SEQ): 3}

    # The dashboard's item detail, for a logged-in operator.
    token = centre.call(centre.runner.app[ACCESS].start("zhang"))
    url = f"{centre.url}/dashboard/api/items/7/{SOS_SEQ}"
    with requests.Session() as operator:
        operator.cookies.set(SESSION_COOKIE, token)
        resp = operator.get(url, timeout=30)
        assert resp.status_code == 200, resp.text
        detail = resp.json()
        missing = operator.get(f"{centre.url}/dashboard/api/items/7/5", timeout=30)
        assert missing.status_code == 404 and "no such item" in missing.text
    assert requests.get(url, timeout=30).status_code == 401  # not logged in
    assert (detail["id"], detail["kind"], detail["copies"], detail["unrecorded"]) == (
        f"7-{SOS_SEQ}",
        "sos",
        3,
        0,
    )
    path = [(a["copy"], a["link_name"], a["via"], a["first"]) for a in detail["arrivals"]]
    assert path == [
        (1, "卫星宽带 / VSAT", "127.0.0.1", True),
        (2, "北斗 / Beidou", CARD, False),
        (3, "自组网中继 / mesh relay", "127.0.0.1", False),
    ]
    times = [a["received_ms"] for a in detail["arrivals"]]
    assert times == sorted(times) and times[0] == stored.received_ms


def test_a_copy_repeated_in_one_batch_and_a_refused_one_keep_arrivals_equal_to_copies(
    centre: RunningCentre, config: CentreConfig
) -> None:
    first, other = report("一号"), report("不同的条目")
    answer(centre.post_items(7, batch([(1, first), (1, first), (2, first)]), "cellular"))
    result = answer(centre.post_items(7, batch([(1, first), (2, other)]), "vsat"))
    assert [seq for seq, _ in result["rejected"]] == [2]  # a different item under seq 2
    assert arrivals_of(config, 7, 1) == [
        (1, "ip:cellular", "127.0.0.1", None),
        (2, "ip:cellular", "127.0.0.1", None),
        (3, "ip:vsat", "127.0.0.1", None),
    ]
    assert arrivals_of(config, 7, 2) == [(1, "ip:cellular", "127.0.0.1", None)]
    assert counted(dump(config)["arrivals"]) == copies_of(config) == {(7, 1): 3, (7, 2): 1}


_REPORTS: dict[str, Item] = {}


def report(text: str) -> Item:
    """The one report of this text (its uid made once: a copy is the same item)."""
    if text not in _REPORTS:
        _REPORTS[text] = new_item(
            Kind.SITUATION, source="web", text=text, created_ms=1_750_000_000_000
        )
    return _REPORTS[text]


# --- the store alone: atomic with the copy count; an old store gains the table -----------


@pytest.fixture(name="database", params=STORES)
def database_fixture(request: pytest.FixtureRequest, pg_server: PgServer) -> str:
    return pg_server.new_database() if request.param == "postgresql" else ""


async def open_store(tmp_path: Path, database: str) -> Store:
    store = await Store.open(tmp_path / "c.sqlite3", tmp_path / "media", database=database)
    await store.sync_kits(KITS)
    return store


def failed_insert() -> tuple[type[BaseException], ...]:
    return (sqlite3.IntegrityError, psycopg.errors.UniqueViolation)


def test_a_failure_inside_the_transaction_leaves_neither_the_copy_nor_its_arrival(
    tmp_path: Path, database: str
) -> None:
    async def main() -> None:
        store = await open_store(tmp_path, database)
        try:
            assert (await store.ingest(7, [(5, report("五号"))], link="beidou")).stored == (5,)
            async with store.transaction() as db:  # a row in the way of copy 2 and of seq 6
                await db.executemany(
                    "INSERT INTO arrivals (kit_id, seq, copy_no, link, received_ms)"
                    " VALUES (?, ?, ?, 'planted', 0)",
                    [(7, 5, 2), (7, 6, 1)],
                )
            with pytest.raises(failed_insert()):
                await store.ingest(7, [(5, report("五号"))], link="sms")
            with pytest.raises(failed_insert()):
                await store.ingest(7, [(6, report("六号"))], link="sms")
            stored = await store.item(7, 5)
            assert stored is not None and stored.copies == 1
            assert await store.item(7, 6) is None
            assert await store.acked_ranges(7) == [(5, 5)]
            async with (
                store.reading() as db,
                db.execute("SELECT seq, copy_no, link FROM arrivals ORDER BY seq, copy_no") as cur,
            ):
                rows = [tuple(r) for r in await cur.fetchall()]
            assert rows == [(5, 1, "beidou"), (5, 2, "planted"), (6, 1, "planted")]
        finally:
            await store.close()

    run(main())


def test_an_old_store_without_arrivals_opens_gains_them_and_keeps_counting(
    tmp_path: Path, database: str
) -> None:
    async def main() -> None:
        store = await open_store(tmp_path, database)
        try:
            await store.ingest(7, [(1, report("一号")), (2, report("二号"))], link="beidou")
            await store.ingest(7, [(1, report("一号"))], link="sms")
            async with store.transaction() as db:  # as a store made before the table was
                await db.execute("DROP TABLE arrivals")
                await db.execute("DELETE FROM meta WHERE key = 'arrivals'")
        finally:
            await store.close()
        store = await open_store(tmp_path, database)
        try:
            first = await store.item(7, 1)
            assert first is not None and first.copies == 2
            async with (
                store.reading() as db,
                db.execute(
                    "SELECT seq, copy_no, link, received_ms FROM arrivals ORDER BY seq, copy_no"
                ) as cur,
            ):
                rows = [tuple(r) for r in await cur.fetchall()]
            # The first arrival of each item is what its row recorded; the SMS copy was not kept.
            assert rows == [(1, 1, "beidou", first.received_ms), (2, 1, "beidou", rows[1][3])]
            detail = await queries.item_detail(store, 7, 1)
            assert detail is not None and detail["unrecorded"] == 1
            assert [a["link"] for a in detail["arrivals"]] == ["beidou"]
            await store.ingest(7, [(1, report("一号"))], link="mesh")
            detail = await queries.item_detail(store, 7, 1)
            assert detail is not None and detail["copies"] == 3
            assert [(a["copy"], a["link"]) for a in detail["arrivals"]] == [
                (1, "beidou"),
                (3, "mesh"),
            ]
        finally:
            await store.close()
        store = await open_store(tmp_path, database)  # opened again: nothing backfilled twice
        try:
            detail = await queries.item_detail(store, 7, 1)
            assert detail is not None and len(detail["arrivals"]) == 2
        finally:
            await store.close()

    run(main())


# --- any mix of copies: arrivals number exactly the copies -------------------------------

LINKS = ("beidou", "sms", "mesh", "ip:vsat")


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    batches=st.lists(
        st.tuples(
            st.sampled_from(LINKS),
            st.lists(st.tuples(st.integers(1, 4), st.booleans()), min_size=1, max_size=6),
        ),
        min_size=1,
        max_size=5,
    )
)
def test_arrivals_number_each_items_copies_whatever_the_mix(
    tmp_path_factory: pytest.TempPathFactory,
    batches: list[tuple[str, list[tuple[int, bool]]]],
) -> None:
    """Each batch holds (seq, odd): an odd entry is a different item under the seq, which is
    refused once another item holds it; copies repeat within and across batches."""
    folder = tmp_path_factory.mktemp("mix")

    async def main() -> None:
        store = await open_store(folder, "")
        try:
            for link, entries in batches:
                items = [(seq, report(f"{seq}{'x' if odd else ''}")) for seq, odd in entries]
                await store.ingest(7, items, link=link, via=f"{link}-peer")
            async with store.reading() as db:
                async with db.execute("SELECT seq, copies FROM items") as cur:
                    copies = {int(s): int(c) for s, c in await cur.fetchall()}
                async with db.execute("SELECT seq, copy_no FROM arrivals") as cur:
                    numbers: dict[int, list[int]] = {}
                    for seq, n in await cur.fetchall():
                        numbers.setdefault(int(seq), []).append(int(n))
            assert {s: sorted(n) for s, n in numbers.items()} == {
                s: list(range(1, c + 1)) for s, c in copies.items()
            }
        finally:
            await store.close()

    run(main())


def test_link_names_are_chinese_first_and_unknown_names_shown_as_they_are() -> None:
    assert queries.link_name("beidou") == "北斗 / Beidou"
    assert queries.link_name("ip:vsat") == "卫星宽带 / VSAT"
    assert queries.link_name("tiantong-sms") == "天通短信 / Tiantong SMS"
    assert queries.link_name("ip") == "IP 网络 / IP"
    assert queries.link_name("ip:uplink-2") == "ip:uplink-2"


# --- a relaying kit known by its TLS identity --------------------------------------------


def test_a_frame_relayed_over_mutual_tls_names_the_relaying_kit(tmp_path: Path) -> None:
    async def main() -> None:
        config = CentreConfig(
            listen="127.0.0.1:0",
            data_dir=tmp_path / "centre",
            kits=KITS,
            tls=True,
            gateways=(GatewayEntry(name="mesh-relay", kind="relay", mtu=233),),
        )
        simkeys.install_centre(config.keys_dir, "default")
        sock = socket.create_server(("127.0.0.1", 0))
        url = f"https://127.0.0.1:{sock.getsockname()[1]}"
        stop = asyncio.Event()
        serving = asyncio.create_task(serve(config, sock=sock, stop=stop))
        relay = KitSecurity(
            8,
            simkeys.kit_pair(8, "default"),
            simkeys.centre_pair("default").public,
            SecurityState(tmp_path / "kit-8.sqlite3"),
        )
        try:
            (frame,) = kit_frames(7, 3, [(SOS_SEQ, compact.sos_example())], 233)
            async with aiohttp.ClientSession() as http:
                for _ in range(200):  # the centre starts in the background
                    try:
                        async with http.post(
                            url + "/v1/frames",
                            data=pack_relay([frame]),
                            headers={"Kit-Link": "mesh-relay"},
                            ssl=tlsid.kit_context(relay),
                            server_hostname=tlsid.server_name(8),
                        ) as resp:
                            assert resp.status == 200, await resp.text()
                            break
                    except aiohttp.ClientConnectionError:
                        await asyncio.sleep(0.05)
                else:
                    raise AssertionError("the centre did not start")
        finally:
            stop.set()
            await serving
            relay.state.close()
        with closing(sqlite3.connect(config.db_path)) as db:
            rows = db.execute("SELECT kit_id, seq, link, via, relay_kit FROM arrivals").fetchall()
        assert rows == [(7, SOS_SEQ, "mesh-relay", "127.0.0.1", 8)]

    run(main(), timeout=30)


# --- the page: an item's delivery path in headless Chromium ------------------------------


@pytest.fixture(name="browser", scope="module")
def browser_fixture() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        try:
            yield b
        finally:
            b.close()


def test_the_page_shows_each_copys_link_and_time_with_the_first_marked(
    tmp_path: Path, browser: Browser
) -> None:
    simkeys.install_centre(tmp_path / "centre" / "keys", "default")
    centre = RunningCentre(
        CentreConfig(
            listen="127.0.0.1:0",
            data_dir=tmp_path / "centre",
            kits=KITS,
            gateways=(GatewayEntry(name="beidou", kind="relay", mtu=MTU_BEIDOU),),
        )
    )
    try:
        sos = compact.sos_example()
        (beidou,) = kit_frames(7, 4, [(SOS_SEQ, sos)], MTU_BEIDOU)
        gateway = centre.runner.app[GATEWAYS].by_name["beidou"]
        assert centre.call(gateway.handle(beidou, via=CARD))
        answer(centre.post_items(7, batch([(SOS_SEQ, sos)]), "vsat"))
        token = centre.call(centre.runner.app[ACCESS].start("zhang"))
        context = browser.new_context(locale="zh-CN")
        try:
            context.add_cookies([{"name": SESSION_COOKIE, "value": token, "url": centre.url}])
            page = context.new_page()
            # No map tiles: the tile reader keeps a file open per worker thread of the
            # centre's loop, and this centre shares the test's process.
            page.route("**/tiles/**", lambda route: route.abort())
            page.goto(f"{centre.url}/dashboard")
            expect(page.locator("body[data-ready='1']")).to_have_count(1)
            page.locator(f"#feed li[data-id='7-{SOS_SEQ}'] .show-path").click()
            arrivals = page.locator("#popup .delivery-path li")
            expect(arrivals).to_have_count(2)
            expect(arrivals.nth(0)).to_have_class("arrival first")
            expect(arrivals.nth(0)).to_contain_text("北斗 / Beidou")
            expect(arrivals.nth(0)).to_contain_text(CARD)
            expect(arrivals.nth(0)).to_contain_text("最先到达")
            expect(arrivals.nth(1)).to_have_class("arrival")
            expect(arrivals.nth(1)).to_contain_text("卫星宽带 / VSAT")
            expect(page.locator("#popup .delivery-path h3")).to_contain_text("2 份")
        finally:
            context.close()
    finally:
        centre.stop()
