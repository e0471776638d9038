"""`kit sim`: run a scenario with the whole system on one machine, watch it, sum it up.

The live view prints a line per kit every few seconds (links up/down, items filed and
delivered per class, backlog); the summary at the end gives, per class, items filed and
delivered, the delivery delay (median, p95, max, in scenario seconds), and what each link
carried and cost. ``summary.json`` in the run's folder holds the same figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import signal
import sqlite3
import statistics
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from edge.client import AsyncEdgeClient
from edge.store import State
from sim.scenario import LinkKind, Scenario
from sim.world import SimKit, World

CLASSES = ("P0", "P1", "P2", "P3", "P4")
VIEW_EVERY_S = 2.0  # real seconds between live-view lines
ACKED = (State.ACKNOWLEDGED, State.EVICTABLE)


@dataclass
class ClassFigures:
    filed: int = 0
    delivered: int = 0
    acknowledged: int = 0  # the kit knows the centre has it
    superseded: int = 0  # P2 values replaced by newer ones before they went out (by design)
    copies: int = 0  # copies the centre received of the delivered ones
    pending: int = 0  # neither delivered nor superseded when the run ended (still owed)
    pending_oldest_s: float | None = None  # scenario seconds the oldest of them had waited
    delay_median_s: float | None = None
    delay_p95_s: float | None = None
    delay_max_s: float | None = None


@dataclass
class LinkFigures:
    kind: str
    bytes: int = 0
    messages: int = 0
    lost: int = 0
    cost: float = 0.0


@dataclass
class KitSummary:
    name: str
    kit_id: int
    classes: dict[str, ClassFigures] = field(default_factory=dict)
    links: dict[str, LinkFigures] = field(default_factory=dict)
    reboots: int = 0
    p0_late: list[int] = field(default_factory=list)  # P0 seqs not in their first window
    stored_twice: int = 0


@dataclass
class Summary:
    scenario: str
    speed: float
    duration_s: float
    kits: list[KitSummary]
    events: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# --- reading what happened ------------------------------------------------------------


def _rows(db: Path, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute(sql, args).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def kit_items(k: SimKit) -> dict[int, tuple[int, int, int]]:
    """seq -> (priority, accepted_ms, state) of every item the kit filed."""
    rows = _rows(k.data / "outbox.sqlite3", "SELECT seq, priority, accepted_ms, state FROM items")
    return {seq: (p, at, state) for seq, p, at, state in rows}


def centre_items(world: World, kit_id: int) -> dict[int, tuple[int, int, int, str]]:
    """seq -> (priority, received_ms, copies, link) of what the centre stored for a kit."""
    rows = _rows(
        world.centre_db,
        "SELECT seq, priority, received_ms, copies, link FROM items WHERE kit_id = ?",
        (kit_id,),
    )
    return {seq: (p, at, copies, link) for seq, p, at, copies, link in rows}


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def up_windows(world: World, k: SimKit, cls: int) -> list[tuple[float, float]]:
    """Scenario intervals when some link of ``k`` that may carry class ``cls`` was up."""
    windows: list[tuple[float, float]] = []
    for spec in k.links:
        if cls == 4 and spec.kind not in (LinkKind.IP, LinkKind.TIANTONG_DATA):
            continue
        start = 0.0
        for down, up in spec.outages:
            if down > start:
                windows.append((start, down))
            start = up
        if math.isfinite(start):
            windows.append((start, math.inf))
    return sorted(windows)


def summarise(world: World) -> Summary:
    """Per kit and class: filed, delivered, delay; per link: bytes, messages, cost."""
    speed = world.speed
    kits: list[KitSummary] = []
    for k in world.kits:
        filed = kit_items(k)
        stored = centre_items(world, k.kit_id)
        ks = KitSummary(k.spec.name, k.kit_id, reboots=k.reboots)
        delays: dict[int, list[float]] = {p: [] for p in range(5)}
        for p in range(5):
            ks.classes[CLASSES[p]] = ClassFigures()
        windows = {p: up_windows(world, k, p) for p in (0,)}
        for seq, (p, accepted_ms, state) in filed.items():
            figures = ks.classes[CLASSES[p]]
            figures.filed += 1
            figures.acknowledged += state in ACKED
            if state == State.SUPERSEDED and seq not in stored:
                figures.superseded += 1
                continue
            if seq in stored:
                _, received_ms, copies, _ = stored[seq]
                figures.delivered += 1
                figures.copies += copies
                delay = max(0.0, (received_ms - accepted_ms) / 1000 * speed)
                delays[p].append(delay)
                if p == 0 and not _in_first_window(
                    windows[0], _scenario_s(world, accepted_ms), delay
                ):
                    ks.p0_late.append(seq)
            else:
                figures.pending += 1
                waited = round(world.now() - _scenario_s(world, accepted_ms), 1)
                figures.pending_oldest_s = max(figures.pending_oldest_s or 0.0, waited)
                if p == 0:
                    ks.p0_late.append(seq)
        for p, values in delays.items():
            if values:
                f = ks.classes[CLASSES[p]]
                f.delay_median_s = round(statistics.median(values), 1)
                f.delay_p95_s = round(_pct(values, 0.95), 1)
                f.delay_max_s = round(max(values), 1)
        for spec in k.links:
            lf = ks.links[spec.name] = LinkFigures(spec.kind.value)
            relay = k.relays.get(spec.name)
            if relay is not None:
                lf.bytes = relay.stats.bytes_up
                lf.messages = relay.stats.connections
                lf.cost = round(lf.bytes * spec.cost_per_byte, 2)
            elif spec.kind is LinkKind.MESH and world.mesh is not None and k.radio is not None:
                node = world.mesh.nodes.get(k.radio.num)
                lf.messages = 0 if node is None else node.transmissions
            else:
                tally = k.tally.get(spec.name)
                if spec.kind is LinkKind.TIANTONG_SMS and world.sms_centre is not None:
                    tally = world.sms_centre.sent.get(k.number)
                if tally is not None:
                    lf.bytes, lf.messages, lf.lost = tally.bytes, tally.messages, tally.lost
                lf.cost = round(
                    lf.messages * spec.cost_per_message + lf.bytes * spec.cost_per_byte, 2
                )
        kits.append(ks)
    events = [
        {
            "at_s": round(at, 1),
            "do": e.do.value,
            "kit": e.kit or world.kits[0].spec.name,
            "how": how,
        }
        for at, e, how in world.events_done
    ]
    return Summary(world.scenario.description, speed, round(world.now(), 1), kits, events)


def _scenario_s(world: World, wall_ms: int) -> float:
    """Scenario seconds of a wall-clock time (the kits stamp items with the real clock)."""
    return (wall_ms / 1000 - world.started_wall) * world.speed


def _in_first_window(windows: list[tuple[float, float]], at: float, delay: float) -> bool:
    """Delivered before the end of the first window (from ``at`` on) a link was up in."""
    for _, end in windows:
        if end > at:
            return at + delay <= end
    return True


# --- the live view --------------------------------------------------------------------


async def kit_status(k: SimKit) -> dict[str, Any] | None:
    client = AsyncEdgeClient(k.endpoint, timeout_s=1.0)
    try:
        return await client.call({"op": "status"})
    except Exception:
        return None
    finally:
        await client.close()


def view_line(world: World, k: SimKit, status: dict[str, Any] | None) -> str:
    filed = kit_items(k)
    stored = centre_items(world, k.kit_id)
    per = [0] * 5
    got = [0] * 5
    for seq, (p, _, state) in filed.items():
        if state == State.SUPERSEDED and seq not in stored:
            continue  # replaced by a newer position: never owed to the centre
        per[p] += 1
        got[p] += seq in stored
    links = []
    if status is None:
        links.append("(套件启动中 / kit starting)")
    else:
        for name, link in sorted(status.get("links", {}).items()):
            links.append(f"{name}{'↑' if link.get('online') else '↓'}")
    backlog = sum(per) - sum(got)
    counts = " ".join(f"P{p} {got[p]}/{per[p]}" for p in range(5) if per[p])
    team = len(status.get("team", [])) if status else 0
    return (
        f"[{world.now():7.0f}s] {k.spec.name:<8} 链路 {' '.join(links) or '-'} | "
        f"送达/已存 delivered/filed {counts or '-'} | 积压 backlog {backlog}"
        + (f" | 队员 team {team}" if team else "")
    )


def print_summary(summary: Summary, out: TextIO) -> None:
    out.write(
        f"\n== 演练小结 / summary: {summary.scenario} (×{summary.speed:g}, "
        f"{summary.duration_s:g} s) ==\n"
    )
    for ks in summary.kits:
        out.write(f"\n{ks.name} (kit {ks.kit_id}, 重启 reboots {ks.reboots})\n")
        out.write(
            "  类别 class  已存 filed  送达 delivered  被取代 superseded  在途 pending"
            "  时延 delay s (median/p95/max)\n"
        )
        for name, f in ks.classes.items():
            if not f.filed:
                continue
            delay = "/".join(
                "-" if v is None else f"{v:g}"
                for v in (f.delay_median_s, f.delay_p95_s, f.delay_max_s)
            )
            out.write(
                f"  {name:<11} {f.filed:>10} {f.delivered:>15} {f.superseded:>18}"
                f" {f.pending:>12}  {delay}\n"
            )
        out.write("  链路 link       字节 bytes  消息 msgs  费用 cost\n")
        for name, lf in ks.links.items():
            out.write(f"  {name:<14} {lf.bytes:>10} {lf.messages:>10} {lf.cost:>10g}\n")
        if ks.p0_late:
            out.write(f"  ⚠ P0 未在首个可用窗口送达 / not in their first window: {ks.p0_late}\n")
    out.flush()


async def run_sim(
    scenario: Scenario,
    root: Path,
    *,
    speed: float | None = None,
    kits: int | None = None,
    duration: float | None = None,
    drone: bool | None = None,
    out: TextIO = sys.stdout,
    stop: asyncio.Event | None = None,
    on_started: Callable[[World], object] | None = None,
) -> Summary:
    """Run ``scenario`` to its end (or until ``stop``); print the view and the summary."""
    stop = stop if stop is not None else asyncio.Event()
    world = World(scenario, root, speed=speed, kits=kits, drone=drone)
    length = duration if duration is not None else scenario.duration
    async with world:
        out.write(
            f"场景 / scenario: {scenario.description}\n"
            f"速度 / speed ×{world.speed:g}; {length:g} s of scenario ≈ "
            f"{length / world.speed:.0f} s real\n"
            f"指挥中心 / centre: {world.centre_url}  (log: {world.root / 'centre.log'})\n"
            f"指挥看板 / dashboard: {world.centre_url}/dashboard  "
            f"(登录 / login operator / {world.operator_password})\n"
        )
        for k in world.kits:
            out.write(
                f"套件 / kit {k.spec.name} (id {k.kit_id}): 网页 / page {world.web_url(k)} "
                f"(配置登录 / config login admin / {k.web_password})\n"
                f"    {k.root}  log: {k.log_path}\n"
            )
        out.write("Ctrl-C 停止 / stops\n")
        out.flush()
        if on_started is not None:
            on_started(world)
        while world.now() < length and not stop.is_set():
            for k in world.kits:
                out.write(view_line(world, k, await kit_status(k)) + "\n")
            out.flush()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), VIEW_EVERY_S)
        summary = summarise(world)
    print_summary(summary, out)
    (root / "summary.json").write_text(
        json.dumps(summary.to_json(), ensure_ascii=False, indent=1), encoding="utf-8"
    )
    return summary


def main(
    scenario: Scenario,
    root: Path,
    *,
    speed: float | None,
    kits: int | None,
    duration: float | None,
    drone: bool | None,
) -> int:
    async def go() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_sim(
            scenario, root, speed=speed, kits=kits, duration=duration, drone=drone, stop=stop
        )

    asyncio.run(go())
    return 0
