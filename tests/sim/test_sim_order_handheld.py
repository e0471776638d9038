"""An order typed on the centre's dashboard reaches a team member's handheld, end to end.

One drill (`kit sim`'s World: the real centre, the real `kit run`, a simulated Meshtastic
radio with a team of two) and the dashboard in Chromium: the drill's operator logs in,
picks the kit and a member the dashboard knows from its track, and types an order in
Chinese. It goes to the kit over its IP link, the kit's mesh process sends it over LoRa,
the handheld ACKs and the kit's receipts come back. A second member then leaves the mesh
(handheld off), and an order goes to a node nobody has: the page ends showing the reason
the kit gives up with. Nothing here is posted by the test in the kit's place.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import zmq.asyncio
from hygiene import nothing_left_open, run  # noqa: F401
from hypothesis import given
from hypothesis import strategies as st
from playwright.async_api import Page, async_playwright
from sim_browser import CHROMIUM, CHROMIUM_ARGS, operator_page, text_when
from test_kitsim import processes_under

from centre.errors import Refused
from centre.orders import MEMBER, TEAM, order_target
from sim.scenario import load_scenario
from sim.world import World

pytestmark = pytest.mark.timeout(240)

SCENARIO = """\
description = "指挥中心的指令送到队员手台 / an order from the centre reaches a handheld"
seed = 3
duration = 3600
speed = 30

[[kits]]
name = "kit-1"
team = 2
drone = false

[[links]]
name = "vsat"
kind = "ip"
rate = 250_000
"""
ORDER = "向东撤离到学校操场，带上担架"
ABSENT_ORDER = "李医生到二号楼集合"
NOBODY = "!0badf00d"  # a node no handheld of the team has
NOBODY_ORDER = "请回复位置"
ON_HANDHELD = "【指挥中心】{}"  # how the kit marks the centre's orders on a handheld
FINAL = "已送达|未能送达"  # the order row once the kit knows how it went on the mesh
WAIT_S = 90.0


@dataclass
class Sent:
    """One order as the dashboard showed it at the end."""

    target: str
    order_id: int
    queued: str  # the form's answer
    state: str  # the row's data-state
    row: str  # the row's text


@dataclass
class Drill:
    kit_id: int
    member: str
    absent: str
    sent: dict[str, Sent] = field(default_factory=dict)  # by target
    refused: Sent | None = None  # an order to a node id typed without its "!"
    inbox: dict[str, list[str]] = field(default_factory=dict)  # by member
    orders: list[dict[str, Any]] = field(default_factory=list)  # the centre's store
    left_running: list[str] = field(default_factory=list)  # processes of the drill
    left_open: list[str] = field(default_factory=list)  # this process's descriptors, threads


async def send_order(page: Page, kit_id: int, target: str, text: str) -> Sent:
    """Type an order on the page and submit it; the form's answer (queued, or refused)."""
    msg = page.locator("#order-msg")
    before = await msg.inner_text()  # the answer to the previous order, if any
    await page.select_option('select[name="kit_id"]', str(kit_id))
    await page.fill('input[name="target"]', target)
    await page.fill('input[name="text"]', text)
    await page.click('#order button[type="submit"]')
    answer = await text_when(msg, r"#\d+|/", other_than=before)  # "/": a refusal's two languages
    number = re.search(r"#(\d+)", answer)
    return Sent(target, int(number[1]) if number else 0, answer, "", "")


async def settle(page: Page, sent: Sent) -> None:
    row = page.locator(f'#order-rows tr[data-order="{sent.order_id}"]')
    sent.row = await text_when(row, FINAL, WAIT_S)
    sent.state = await row.get_attribute("data-state") or ""


async def drill(root: Path) -> Drill:
    path = root / "order-handheld.toml"
    path.write_text(SCENARIO, encoding="utf-8")
    world = World(load_scenario(path), root / "world")
    async with world, async_playwright() as pw:
        kit = world.kits[0]
        member, absent = kit.team
        done = Drill(kit.kit_id, member.id, absent.id)
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            async with operator_page(browser, world.centre_url, world.operator_password) as page:
                # The members as the dashboard knows them: by their tracks, heard by the kit.
                for m in (member, absent):
                    await page.locator(f'#targets option[value="{m.id}"]').wait_for(
                        state="attached"
                    )
                # Typed without the "!", a node id would reach the kit and go nowhere.
                done.refused = await send_order(page, kit.kit_id, member.id[1:], ORDER)
                sent = await send_order(page, kit.kit_id, member.id, ORDER)
                await settle(page, sent)
                done.sent[member.id] = sent
                # The second member switches the handheld off: no more positions, and the
                # kit's packets to it go unanswered.
                absent.reachable, absent.lat, absent.lon = False, None, None
                failing = [
                    await send_order(page, kit.kit_id, absent.id, ABSENT_ORDER),
                    await send_order(page, kit.kit_id, NOBODY, NOBODY_ORDER),
                ]
                for sent in failing:
                    await settle(page, sent)
                    done.sent[sent.target] = sent
        finally:
            await browser.close()
        done.inbox = {m.id: list(m.inbox) for m in kit.team}
    db = sqlite3.connect(world.centre_db)
    try:
        db.row_factory = sqlite3.Row
        done.orders = [dict(r) for r in db.execute("SELECT * FROM orders ORDER BY order_id")]
    finally:
        db.close()
    done.left_running = processes_under(root)
    return done


@pytest.fixture(scope="module")
def played(tmp_path_factory: pytest.TempPathFactory) -> Drill:
    """The drill, played once for the tests below; it must leave nothing open behind it."""
    fds, threads = set(os.listdir("/proc/self/fd")), set(threading.enumerate())
    try:
        done: Drill = run(drill(tmp_path_factory.mktemp("order-handheld")), timeout=200)
    finally:
        # The edge clients' process-wide ZeroMQ context keeps its I/O threads open.
        zmq.asyncio.Context.instance().term()
    for thread in set(threading.enumerate()) - threads:
        thread.join(2.0)
    done.left_open = [t.name for t in set(threading.enumerate()) - threads]
    for fd in set(os.listdir("/proc/self/fd")) - fds:
        with contextlib.suppress(OSError):  # gone meanwhile (the listing's own): not left open
            done.left_open.append(os.readlink(f"/proc/self/fd/{fd}"))
    return done


def test_an_order_typed_on_the_dashboard_reaches_the_members_handheld_once(
    played: Drill,
) -> None:
    member = played.member
    assert played.inbox[member] == [ON_HANDHELD.format(ORDER)]
    sent = played.sent[member]
    assert sent.order_id > 0 and f"指令已排队 #{sent.order_id}" in sent.queued
    assert sent.state == "delivered"
    assert "套件已确认（经 vsat）" in sent.row, sent.row
    assert f"已送达 {member}" in sent.row, sent.row
    (stored,) = [o for o in played.orders if o["target"] == member]
    assert (stored["order_id"], stored["text"]) == (sent.order_id, ORDER)
    assert stored["receipt_ms"] is not None and stored["receipt_link"] == "vsat"
    assert (stored["delivered_to"], stored["delivery_error"]) == (member, None)


def test_an_order_for_a_member_who_left_or_never_was_on_the_mesh_shows_why_it_failed(
    played: Drill,
) -> None:
    assert played.inbox[played.absent] == []
    for target in (played.absent, NOBODY):
        sent = played.sent[target]
        assert sent.order_id > 0, sent.queued
        # The kit took the order, its radio got no ACK from the member after every try.
        assert "套件已确认（经 vsat）" in sent.row, sent.row
        assert "未能送达队员：无应答，已多次重试（MAX_RETRANSMIT）" in sent.row, sent.row
        assert sent.state == "failed"
        assert "已送达" not in sent.row, sent.row
        (stored,) = [o for o in played.orders if o["target"] == target]
        assert stored["delivered_ms"] is None and stored["delivery_error"] == "MAX_RETRANSMIT"
    assert len(played.orders) == 3


def test_a_node_id_without_its_mark_is_refused_at_the_form_and_nothing_is_queued(
    played: Drill,
) -> None:
    refused = played.refused
    assert refused is not None and refused.order_id == 0, refused
    assert f"指令对象无效：'{played.member[1:]}'" in refused.queued, refused.queued
    assert "! and 8 hex digits: a member's node id" in refused.queued
    assert [o["target"] for o in played.orders].count(played.member) == 1


def test_the_drill_leaves_no_process_running_and_nothing_open(played: Drill) -> None:
    assert played.left_running == []
    assert played.left_open == []


# -- the target field, as the centre reads it ------------------------------------------------


@given(st.text(max_size=80))
def test_any_target_is_one_the_mesh_routes_or_refused_with_a_reason(raw: str) -> None:
    try:
        target = order_target(raw)
    except Refused as err:
        assert (
            err.status == 400 and "指令对象无效" in str(err) and "invalid order target" in str(err)
        )
        return
    assert target in ("", TEAM) or MEMBER.fullmatch(target), target
    assert order_target(target) == target


@given(st.integers(0, 2**32 - 1), st.lists(st.booleans(), min_size=8, max_size=8))
def test_a_node_id_in_either_case_is_the_nodes_lower_case_id(num: int, upper: list[bool]) -> None:
    typed = "!" + "".join(c.upper() if u else c for c, u in zip(f"{num:08x}", upper, strict=True))
    assert order_target(f" {typed} ") == f"!{num:08x}"
