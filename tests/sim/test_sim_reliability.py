"""Reliability: SIGKILL of every process, the centre included, at random moments of a drill.

The kit's processes are killed one at a time (its `kit run` restarts them, as systemd would
on the Pi) and the centre is killed and started again — possibly between storing an item
and acknowledging it — while reports, SOS and team positions keep coming in over LoRa, a
VSAT link and Beidou. Afterwards: everything the kit accepted reaches the centre, every
item the kit believes acknowledged is in the centre's store, and none is stored twice.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
from pathlib import Path

import zmq.asyncio
from hygiene import nothing_left_open  # noqa: F401

from edge.store import State
from sim.kitsim import centre_items, kit_items
from sim.scenario import Scenario
from sim.world import World

DRILL = {
    "description": "kill -9",
    "seed": 11,
    "duration": 100_000,
    "kits": [{"name": "kit-1", "team": 2}],
    "links": [
        {"name": "vsat", "kind": "ip", "rate": 250_000, "rtt": 0.6, "loss": 0.02},
        {"name": "beidou", "kind": "beidou", "rate": 80, "rtt": 4.0, "mtu": 78, "min_interval": 60},
    ],
}
KILLS = 10
CENTRE_KILLS = (3, 7)  # which of the kills are of the centre
SPEED = 30.0


def test_sigkill_of_any_process_at_any_moment_loses_nothing_and_stores_nothing_twice(
    tmp_path: Path,
) -> None:
    rng = random.Random(5)
    killer = random.Random(11)
    scenario = Scenario.model_validate(DRILL)
    killed: list[str] = []

    async def reports(world: World, stop: asyncio.Event) -> int:
        k = world.kits[0]
        n = 0
        while not stop.is_set():
            n += 1
            kind = "sos" if n % 5 == 0 else "situation"
            await world._accept(k, kind, f"报告 {n} / report {n}", n % 7)
            await asyncio.sleep(rng.uniform(0.1, 0.6))
        return n

    async def main() -> None:
        async with World(scenario, tmp_path, speed=SPEED) as world:
            k = world.kits[0]
            stop = asyncio.Event()
            filing = asyncio.create_task(reports(world, stop))
            try:
                for i in range(KILLS):
                    await asyncio.sleep(killer.uniform(0.5, 3.0))
                    victims = world.kit_processes(k)
                    # The centre twice for sure, between storing and acknowledging at random
                    # moments; the kit's processes otherwise (its own generator: the filing
                    # task's draws interleave by timing and must not decide the victims).
                    choice = "centre" if i in CENTRE_KILLS else killer.choice(sorted(victims))
                    if choice == "centre":
                        await world.restart_centre(signal.SIGKILL)
                    else:
                        os.kill(victims[choice], signal.SIGKILL)
                    killed.append(choice)
            finally:
                stop.set()
                filed = await filing
            assert filed > 20
            # Quiet now: everything owed must drain.
            for _ in range(240):
                items = kit_items(k)
                owed = [s for s, (_, _, st) in items.items() if st != State.SUPERSEDED]
                stored = centre_items(world, k.kit_id)
                acked = [s for s, (_, _, st) in items.items() if st in (State.ACKNOWLEDGED,)]
                if set(owed) <= set(stored) and len(acked) == len(owed):
                    break
                await asyncio.sleep(0.5)
            items = kit_items(k)
            stored = centre_items(world, k.kit_id)
            missing = [
                s for s, (_, _, st) in items.items() if st != State.SUPERSEDED and s not in stored
            ]
            assert missing == [], f"never reached the centre: {missing} (killed {killed})"
            acked_not_stored = [
                s
                for s, (_, _, st) in items.items()
                if st in (State.ACKNOWLEDGED, State.EVICTABLE) and s not in stored
            ]
            assert acked_not_stored == []
            sos = [s for s, (p, _, _) in items.items() if p == 0]
            assert sos and all(s in stored for s in sos)
        db = sqlite3.connect(tmp_path / "centre" / "centre.sqlite3")
        try:
            ((n, distinct),) = db.execute(
                "SELECT COUNT(*), COUNT(DISTINCT seq) FROM items WHERE kit_id = ?", (k.kit_id,)
            )
            ((ok,),) = db.execute("PRAGMA integrity_check")
        finally:
            db.close()
        assert n == distinct == len(stored)
        assert ok == "ok"
        assert "centre" in killed and len(set(killed)) >= 3, killed

    try:
        asyncio.run(main())
    finally:
        zmq.asyncio.Context.instance().term()
