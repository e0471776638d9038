"""Reliability: rough links and unplugged serial devices during one drill lose nothing
and store nothing twice.

The drill plays ``rough-links`` (sim/scenarios): every link loses 30 % of its frames, the
narrow ones (Beidou, Tiantong SMS) deliver some twice and some out of order in both
directions, the VSAT relay replays whole connections to the centre and flaps (sessions
dropped, new ones refused) every 90 scenario seconds, SMS flaps too. Meanwhile the Beidou
terminal and the GNSS receiver are unplugged (their ptys closed, their device paths gone)
for a few seconds and plugged back. Both go offline in the kit's status and come back by
themselves (drivers/serialio.py reopens the path), and afterwards every SOS and report the
kit accepted is in the centre's database exactly once, every item the kit believes
acknowledged is there, and the centre's database is sound.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import zmq.asyncio
from hygiene import nothing_left_open, run  # noqa: F401
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.store import State
from sim.kitsim import centre_items, kit_items, kit_status
from sim.linkemu import check_outages
from sim.scenario import LinkKind, LinkSpec, ScenarioError, find_scenario, load_scenario
from sim.world import SimKit, World

REPORTS = 10


async def until_async(probe: Callable[[], Awaitable[object]], want: object, timeout: float) -> None:
    """Return once ``await probe()`` equals ``want``; fail if it does not within ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while await probe() != want:
        assert loop.time() < deadline, f"still not {want!r}"
        await asyncio.sleep(0.2)


async def online(k: SimKit) -> tuple[bool, bool]:
    """Whether the kit says its Beidou link and its GNSS receiver are online."""
    status = await kit_status(k) or {}
    beidou = status.get("links", {}).get("beidou", {}).get("online")
    gnss = status.get("devices", {}).get("gnss", {}).get("online")
    return bool(beidou), bool(gnss)


async def settle(k: SimKit, world: World, timeout_s: float) -> None:
    """Until every P0/P1 the kit filed is stored at the centre and acknowledged."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        owed = {s: st for s, (p, _, st) in kit_items(k).items() if p <= 1}
        stored = centre_items(world, k.kit_id)
        if (
            owed
            and set(owed) <= set(stored)
            and all(st == State.ACKNOWLEDGED for st in owed.values())
        ):
            return
        await asyncio.sleep(0.5)


def test_loss_duplicates_reordering_flaps_and_an_unplugged_terminal_lose_nothing(
    tmp_path: Path,
) -> None:
    rng = random.Random(7)
    scenario = load_scenario(find_scenario("rough-links"))

    async def main() -> tuple[World, SimKit, list[tuple[bool, bool]]]:
        async with World(scenario, tmp_path) as world:
            k = world.kits[0]
            assert k.terminal is not None and k.receiver is not None
            await until_async(lambda: online(k), (True, True), 30)
            seen = [await online(k)]
            for n in range(REPORTS):
                kind = "sos" if n % 3 == 0 else "situation"
                await world._accept(k, kind, f"报告 {n} / report {n}", n)
                await asyncio.sleep(rng.uniform(0.2, 0.8))
                if n == 3:  # the USB hub is knocked: terminal and receiver gone
                    await k.terminal.unplug()
                    await k.receiver.unplug()
                    assert not Path(k.terminal.path).exists()
                    assert not Path(k.receiver.path).exists()
                    await until_async(lambda: online(k), (False, False), 30)
                    seen.append(await online(k))
                    await asyncio.sleep(2.0)
                    await k.terminal.plug()
                    await k.receiver.plug()
            # The drivers find their devices again by themselves.
            await until_async(lambda: online(k), (True, True), 60)
            seen.append(await online(k))
            await settle(k, world, 150)
            return world, k, seen

    try:
        world, k, seen = run(main(), 300)
    finally:
        zmq.asyncio.Context.instance().term()
    assert seen == [(True, True), (False, False), (True, True)], seen
    filed = kit_items(k)
    stored = centre_items(world, k.kit_id)
    owed = sorted(s for s, (p, _, _) in filed.items() if p <= 1)
    assert len(owed) >= REPORTS
    assert [s for s in owed if s not in stored] == []
    acked = [s for s, (_, _, st) in filed.items() if st in (State.ACKNOWLEDGED, State.EVICTABLE)]
    assert [s for s in acked if s not in stored] == []
    db = sqlite3.connect(world.centre_db)
    try:
        ((n, distinct),) = db.execute(
            "SELECT COUNT(*), COUNT(DISTINCT seq) FROM items WHERE kit_id = ?", (k.kit_id,)
        )
        ((ok,),) = db.execute("PRAGMA integrity_check")
    finally:
        db.close()
    assert n == distinct == len(stored) and ok == "ok"
    # The faults really happened (otherwise this drill proves nothing).
    beidou = k.faults[("beidou", "up")].counts
    sms = k.faults[("tiantong-sms", "up")].counts
    assert beidou["duplicated"] + sms["duplicated"] > 0
    assert beidou["reordered"] + sms["reordered"] > 0
    assert beidou["lost"] + sms["lost"] > 0
    back = [k.faults[(name, "down")].counts for name in ("beidou", "tiantong-sms")]
    assert sum(c["duplicated"] + c["reordered"] for c in back) > 0  # acks came rough too
    relay = k.relays["vsat"].stats
    assert relay.replays > 0 and relay.resets > 0
    copies = sum(c for _, _, c, _ in stored.values())
    assert copies > len(stored), "the centre saw duplicates and stored each item once"


def test_the_rough_link_keys_are_checked_with_their_key_paths(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[[links]]\nname = "vsat"\nkind = "ip"\nrate = 1000\nreorder = 0.1\nduplicate = 1.5\n'
        '[[links]]\nname = "mesh"\nkind = "mesh"\nrate = 100\nmtu = 233\nduplicate = 0.2\n'
        "flap_s = 0.5\n",
        encoding="utf-8",
    )
    with pytest.raises(ScenarioError) as caught:
        load_scenario(bad)
    assert caught.value.problems == [
        ("links[0].duplicate", "Input should be less than or equal to 1"),
        ("links[0].reorder", "TCP delivers in order: reorder applies to narrow links only"),
        ("links[1].duplicate", "a mesh link loses frames (loss) but does not duplicate or reorder"),
        ("links[1].flap_s", "flap_s must be 0 (no flaps) or at least 1 second"),
    ]


@given(
    outages=st.lists(
        st.tuples(st.floats(0, 500), st.floats(0.1, 100)).map(lambda t: (t[0], t[0] + t[1])),
        max_size=6,
    ),
    flap_s=st.one_of(st.just(0.0), st.floats(1, 200)),
    until=st.floats(0, 400),
)
@settings(deadline=None, max_examples=60)
def test_flaps_and_outages_merge_into_one_ordered_schedule(
    outages: list[tuple[float, float]], flap_s: float, until: float
) -> None:
    spec = LinkSpec(name="l", kind=LinkKind.IP, rate=1.0, flap_s=flap_s)
    spec = spec.model_copy(update={"outages": sorted(outages)})
    windows = spec.schedule(until)
    assert check_outages(windows) == tuple(windows)  # in order, not overlapping
    for down, up in outages:  # every outage lies inside one window
        assert any(d <= down and up <= u for d, u in windows)
    for n in range(1, int(until / flap_s) if flap_s else 0):
        at = n * flap_s
        if at < until:
            assert any(d <= at and at + flap_s / 4 <= u for d, u in windows)
