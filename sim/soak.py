"""Soak: play a long `kit sim` scenario and watch every process for growth.

``soak()`` runs a scenario with the whole system and samples, every ``sample_s`` real
seconds, the resident memory and open file descriptors of each kit process (`kit run` and
its edge, uplink, drivers, mesh, media) and of the centre: per process, RSS and
descriptors at the end of the warm-up (the first ``warmup`` of the run), at the end and
their peak, and how often its pid changed (restarts); per class, items filed and
delivered. ``bench/soak.py`` plays the whole ``day``; a test plays two hours of it.
"""

from __future__ import annotations

import asyncio
import io
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sim.kitsim import run_sim
from sim.scenario import Scenario
from sim.world import World

PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass
class Watch:
    """What one process did over the run (RSS in MB)."""

    pid: int
    restarts: int = 0
    rss_mb_start: float = 0.0
    rss_mb_end: float = 0.0
    rss_mb_max: float = 0.0
    fds_start: int = 0
    fds_end: int = 0
    fds_max: int = 0
    fds_max_warm: int = 0  # the most seen during the warm-up
    fds_max_late: int = 0  # the most seen in the last quarter of the run
    samples: int = 0


def sample(pid: int) -> tuple[float, int] | None:
    """(RSS in MB, open file descriptors) of ``pid``, None if it is gone."""
    try:
        rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE / 2**20
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, IndexError, ValueError):
        return None
    return rss, fds


def processes(world: World) -> dict[str, int]:
    """name -> pid of every kit process (``kit-1/edge``, ``kit-1/run``, …) and the centre."""
    found: dict[str, int] = {}
    for k in world.kits:
        if k.proc is not None and k.proc.returncode is None:
            found[f"{k.spec.name}/run"] = k.proc.pid
        for name, pid in world.kit_processes(k).items():
            found[f"{k.spec.name}/{name}"] = pid
    if world.centre_proc is not None and world.centre_proc.returncode is None:
        found["centre"] = world.centre_proc.pid
    return found


async def watch(
    world: World, watches: dict[str, Watch], length: float, sample_s: float, warmup: float
) -> None:
    """Sample every process until the scenario's end (or cancelled), by its clock."""
    while (phase := world.now() / length) < 1:  # then the world stops: not a sample
        for name, pid in processes(world).items():
            got = sample(pid)
            if got is None:
                continue
            rss, fds = got
            w = watches.get(name)
            if w is None:
                w = watches[name] = Watch(pid)
            elif w.pid != pid:
                w.pid = pid
                w.restarts += 1
            w.samples += 1
            if phase <= warmup or w.samples == 1:
                w.rss_mb_start, w.fds_start = rss, fds
                w.fds_max_warm = max(w.fds_max_warm, fds)
            if phase >= 0.75:
                w.fds_max_late = max(w.fds_max_late, fds)
            w.rss_mb_end, w.fds_end = rss, fds
            w.rss_mb_max = max(w.rss_mb_max, rss)
            w.fds_max = max(w.fds_max, fds)
        await asyncio.sleep(sample_s)


async def soak(
    scenario: Scenario,
    root: Path,
    *,
    speed: float | None = None,
    duration: float | None = None,
    sample_s: float = 1.0,
    warmup: float = 0.25,
) -> dict[str, Any]:
    """Play ``scenario`` (to ``duration`` scenario seconds) and return the figures."""
    watches: dict[str, Watch] = {}
    tasks: list[asyncio.Task[None]] = []
    length = duration if duration is not None else scenario.duration

    def started(world: World) -> None:
        tasks.append(asyncio.create_task(watch(world, watches, length, sample_s, warmup)))

    try:
        summary = await run_sim(
            scenario,
            root,
            speed=speed,
            duration=duration,
            out=io.StringIO(),
            on_started=started,
        )
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    result: dict[str, Any] = {
        "bench": "soak",
        "scenario": scenario.description,
        "scenario_hours": round(length / 3600, 2),
        "speed": summary.speed,
        "processes": {},
        "delivered": {},
    }
    for name, w in sorted(watches.items()):
        figures = asdict(w)
        figures.pop("pid")
        for key in ("rss_mb_start", "rss_mb_end", "rss_mb_max"):
            figures[key] = round(figures[key], 1)
        figures["fd_growth"] = w.fds_end - w.fds_start
        result["processes"][name] = figures
    for kit in summary.kits:
        result["delivered"][kit.name] = {
            cls: f"{f.delivered}/{f.filed}" for cls, f in kit.classes.items() if f.filed
        }
    result["kit_rss_mb_end_total"] = round(
        sum(w.rss_mb_end for n, w in watches.items() if n != "centre"), 1
    )
    result["kit_rss_mb_start_total"] = round(
        sum(w.rss_mb_start for n, w in watches.items() if n != "centre"), 1
    )
    return result
