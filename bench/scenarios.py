"""Benchmark: the `kit sim` scenarios, whole system started, and what the kit costs to run.

Plays first-hours, night-flood and aftershock (each at its file's speed unless --speed)
and prints, per scenario, the summary figures (per class: filed, delivered, delay median /
p95 / max in scenario seconds; per link: bytes and cost), then:

- ``kit_rss_mb_total``: the largest sum of resident memory over all processes of one kit
  (`kit run` and its edge, uplink, drivers, mesh, media), sampled every second;
- ``kit_idle_cpu_pct``: CPU time of all those processes over 60 s with links up and nothing
  to send, as a percentage of one core.

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import zmq.asyncio

from sim.kitsim import run_sim
from sim.scenario import find_scenario, load_scenario
from sim.world import World

SCENARIOS = ("first-hours", "night-flood", "aftershock")
PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")


def kit_pids(root: Path) -> list[int]:
    pids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if str(root).encode() in cmd and b"edge.cli" in cmd:
            pids.append(int(pid))
    return pids


def rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    return total / 2**20


def cpu_s(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


async def play(name: str, speed: float | None) -> tuple[dict[str, Any], float]:
    root = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    peak = 0.0
    sampler: asyncio.Task[None] | None = None

    async def sample(world: World) -> None:
        nonlocal peak
        while True:
            for k in world.kits:
                peak = max(peak, rss_mb(kit_pids(k.root)))
            await asyncio.sleep(1.0)

    def started(world: World) -> None:
        nonlocal sampler
        sampler = asyncio.create_task(sample(world))

    summary = await run_sim(
        load_scenario(find_scenario(name)), root, speed=speed, out=io.StringIO(), on_started=started
    )
    if sampler is not None:
        sampler.cancel()
    figures: dict[str, Any] = {"speed": summary.speed}
    for kit in summary.kits:
        figures[kit.name] = {
            "classes": {
                cls: {
                    "filed": f.filed,
                    "delivered": f.delivered,
                    "superseded": f.superseded,
                    "delay_s": [f.delay_median_s, f.delay_p95_s, f.delay_max_s],
                }
                for cls, f in kit.classes.items()
                if f.filed
            },
            "links": {n: {"bytes": lf.bytes, "cost": lf.cost} for n, lf in kit.links.items()},
            "p0_late": len(kit.p0_late),
        }
    return figures, peak


async def idle_cpu(seconds: float) -> float:
    """One kit, one IP link up, no team, no drone, nothing filed: what does waiting cost?"""
    root = Path(tempfile.mkdtemp(prefix="bench-idle-"))
    scenario_file = root / "idle.toml"
    scenario_file.write_text(
        'description = "idle"\nduration = 100000\n[[kits]]\nname = "idle"\nteam = 0\n'
        '[[links]]\nname = "vsat"\nkind = "ip"\nrate = 250000\nrtt = 0.6\n'
    )
    stop = asyncio.Event()
    result: list[float] = []

    async def measure(world: World) -> None:
        await asyncio.sleep(10.0)  # let start-up settle
        pids = kit_pids(world.kits[0].root)
        c0, t0 = cpu_s(pids), time.monotonic()
        await asyncio.sleep(seconds)
        result.append(100.0 * (cpu_s(pids) - c0) / (time.monotonic() - t0))
        stop.set()

    tasks: list[asyncio.Task[None]] = []
    await run_sim(
        load_scenario(scenario_file),
        root,
        speed=1.0,
        out=io.StringIO(),
        stop=stop,
        on_started=lambda w: tasks.append(asyncio.create_task(measure(w))),
    )
    return result[0] if result else float("nan")


async def main(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"bench": "scenarios"}
    peak = 0.0
    for name in args.scenarios:
        figures, rss = await play(name, args.speed)
        out[name] = figures
        peak = max(peak, rss)
        print(f"{name}: {json.dumps(figures, ensure_ascii=False)}", file=sys.stderr)
    out["kit_rss_mb_total"] = round(peak, 1)
    out["kit_idle_cpu_pct"] = round(await idle_cpu(args.idle_s), 2)
    out["machine"] = (
        f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speed", type=float, help="override every scenario's speed")
    parser.add_argument("--idle-s", type=float, default=60.0)
    parser.add_argument("scenarios", nargs="*", default=list(SCENARIOS))
    result = asyncio.run(main(parser.parse_args()))
    zmq.asyncio.Context.instance().term()
    print(json.dumps(result, ensure_ascii=False))
