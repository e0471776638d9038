"""Outbox benchmark: durable accepts, next-items with a million queued, start-up, edge memory,
and what encrypting bodies at rest costs the store's writer.

Prints progress to stderr and one JSON object as the last line of stdout.
    .venv/bin/python bench/outbox.py [--items 1000000] [--clients 8] [--seconds 5]
    .venv/bin/python bench/outbox.py --only atrest     # the at-rest figures alone (~20 s)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

os.environ.setdefault("KIT_CLOCK_SYNCED", "1")
if not __package__:
    # Run as a file: import the kit's packages, not this folder (bench/uplink.py ≠ uplink).
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from config.loader import render_default
from edge.atrest import AtRest
from edge.client import EdgeClient
from edge.errors import EdgeUnavailable
from edge.item import Item, Kind, MediaRef, Position, Priority, encode, new_item
from edge.store import INSERT_SQL, State, Store, row_for


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def start_edge(config: Path) -> tuple[subprocess.Popen[bytes], float]:
    """Start `kit edge`; returns the process and seconds until it answered its first request."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge.cli", "edge", "--config", str(config)],
        stderr=subprocess.DEVNULL,
    )
    with EdgeClient(endpoint(config), timeout_s=0.05, retries=0) as client:
        while True:
            if proc.poll() is not None:
                raise SystemExit("edge exited during start-up")
            try:
                client.status()
                return proc, time.perf_counter() - t0
            except EdgeUnavailable:
                continue


def endpoint(config: Path) -> str:
    return f"ipc://{config.parent / 'run' / 'edge'}.sock"


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(30)


def client_loop(ep: str, start_at: float, seconds: float, n: int) -> list[float]:
    """One client filing reports back to back in [start_at, start_at + seconds).

    Every client counts the same wall-clock window, after its imports and connection are
    done, so the rate is accepts per second of filing, not of process start-up.
    """
    lat: list[float] = []
    with EdgeClient(ep, timeout_s=10) as client:
        client.status()  # connected before the window opens
        time.sleep(max(0.0, start_at - time.time()))
        end = start_at + seconds
        i = 0
        while time.time() < end:
            item = new_item(
                "situation",
                source=f"bench-{n}",
                text=f"道路中断 {i}",
                position=Position(30.6 + i * 1e-6, 104.0),
            )
            t = time.perf_counter()
            client.accept(item)
            lat.append((time.perf_counter() - t) * 1000)
            i += 1
    return lat


def bench_accept(config: Path, clients: int, seconds: float) -> dict[str, float]:
    proc, _ = start_edge(config)
    try:
        say(f"accept: {clients} concurrent clients for {seconds:.0f} s …")
        with mp.get_context("spawn").Pool(clients) as pool:
            start_at = time.time() + 3.0  # time for every worker to import and connect
            results = pool.starmap(
                client_loop, [(endpoint(config), start_at, seconds, n) for n in range(clients)]
            )
        with EdgeClient(endpoint(config)) as c:
            commits = c.status()["commits"]
        lat = sorted(x for r in results for x in r)
        rss = peak_rss_mb(proc.pid)
    finally:
        stop(proc)
    return {
        "accept_per_s": round(len(lat) / seconds, 1),
        "accept_p50_ms": round(statistics.median(lat), 2),
        "accept_p99_ms": round(lat[int(len(lat) * 0.99)], 2),
        "accepts_per_commit": round(len(lat) / max(commits, 1), 1),
        "rss_accept_mb": round(rss, 1),
    }


def _backlog_item(i: int, now: int) -> Item:
    """A realistic mix of a long outage's backlog: tracks, reports, previews, bulk media."""
    r = i % 20
    uid = uuid.UUID(int=(now << 80) | i)
    if r == 0:
        return Item(
            uid, Kind.SITUATION, Priority.P1, now, True, "web", text=f"第{i}号报告：道路中断"
        )
    if r < 9:
        return Item(
            uid,
            Kind.TRACK,
            Priority.P2,
            now + i,
            True,
            f"mesh:!{i % 5000:08x}",
            position=Position(30.6 + (i % 997) * 1e-4, 104.0 + (i % 991) * 1e-4),
        )
    if r < 14:
        return Item(
            uid,
            Kind.THUMBNAIL,
            Priority.P3,
            now,
            True,
            "drone-1",
            media=MediaRef(f"thumb/{i}.webp", 6000 + i % 2000, "a" * 64, "image/webp"),
        )
    return Item(
        uid,
        Kind.VIDEO,
        Priority.P4,
        now,
        True,
        "drone-1",
        media=MediaRef(f"video/{i}.ts", 4_000_000 + i, "b" * 64, "video/mp2t"),
    )


def fill(db_path: Path, total: int) -> None:
    """Fill the store to ``total`` items with the store's own row layout, 1 % left in flight."""
    db = sqlite3.connect(db_path)
    have = db.execute("SELECT count(*) FROM items").fetchone()[0]
    now = int(time.time() * 1000)
    batch: list[tuple[object, ...]] = []
    t0 = time.perf_counter()
    for i in range(have, total):
        item = _backlog_item(i, now)
        batch.append(row_for(item, encode(item), State.ACCEPTED, now))
        if len(batch) == 50_000 or i == total - 1:
            db.executemany(INSERT_SQL, batch)
            db.commit()
            batch.clear()
            rate = (i + 1 - have) / (time.perf_counter() - t0)
            say(f"fill: {i + 1:,}/{total:,} items ({rate:,.0f}/s)")
    db.execute("UPDATE items SET state = 1 WHERE seq % 100 = 0 AND state = 0")
    db.commit()
    db.close()


def bench_next_items(db_path: Path, calls: int) -> dict[str, float]:
    """Median and p99 of next_items for three link profiles on the full store."""
    profiles = {
        "beidou": ([Priority.P0, Priority.P1, Priority.P2], 1_000),
        "mesh": ([Priority.P0, Priority.P1, Priority.P2, Priority.P3], 4_096),
        "vsat": (list(Priority), 2**40),
    }

    async def go() -> dict[str, list[float]]:
        store = await Store.open(db_path)
        out: dict[str, list[float]] = {}
        try:
            for name, (classes, max_size) in profiles.items():
                times = []
                for _ in range(calls):
                    t = time.perf_counter()
                    got = await store.next_items(classes, max_size, limit=16)
                    times.append((time.perf_counter() - t) * 1000)
                assert got, f"{name}: nothing queued?"
                out[name] = sorted(times)
        finally:
            await store.close()
        return out

    times = asyncio.run(go())
    return {
        "next_items_ms": round(max(statistics.median(t) for t in times.values()), 3),
        "next_items_p99_ms": round(max(t[int(len(t) * 0.99)] for t in times.values()), 3),
    }


def bench_atrest(items: int = 10_000, group: int = 64, rounds: int = 7) -> dict[str, object]:
    """Accepts per second through the store itself, in groups of ``group`` (one fsync each,
    as the daemon's group commit), with bodies plain and sealed at rest (both profiles);
    the medians of ``rounds`` alternating runs, so disk noise hits every variant alike.
    Plus the CPU cost of sealing and opening one report body."""
    batch = [
        new_item("situation", source="bench", text=f"道路中断 {i}", position=Position(30.6, 104.0))
        for i in range(items)
    ]
    bodies = [encode(item) for item in batch]

    async def rate(folder: Path, at_rest: AtRest | None) -> float:
        store = await Store.open(folder / "outbox.sqlite3", at_rest)
        try:
            t0 = time.perf_counter()
            for i in range(0, items, group):
                await store.accept_many(batch[i : i + group], bodies[i : i + group])
            return items / (time.perf_counter() - t0)
        finally:
            await store.close()

    variants: dict[str, list[float]] = {"plain": [], "default": [], "national": []}
    for r in range(rounds):
        for name, runs in variants.items():
            with tempfile.TemporaryDirectory(prefix="kit-bench-atrest-") as tmp:
                at_rest = None if name == "plain" else AtRest(Path(tmp) / "keys", name, True)
                runs.append(asyncio.run(rate(Path(tmp), at_rest)))
            say(f"at rest, round {r + 1}/{rounds}: {name} {runs[-1]:,.0f} accepts/s")
    out: dict[str, object] = {}
    for name in ("default", "national"):
        with tempfile.TemporaryDirectory(prefix="kit-bench-atrest-") as tmp:
            at_rest = AtRest(Path(tmp), name, encrypt=True)
            at_rest.bind(None, Path(tmp) / "outbox.sqlite3")
        uid, body = batch[0].uid.bytes, bodies[0]
        t0 = time.perf_counter()
        sealed = [at_rest.seal(uid, body) for _ in range(items)]
        seal_us = (time.perf_counter() - t0) / items * 1e6
        t0 = time.perf_counter()
        for s in sealed:
            at_rest.open(uid, s)
        open_us = (time.perf_counter() - t0) / items * 1e6
        out[f"atrest_{name}"] = {
            "seal_us": round(seal_us, 2),
            "open_us": round(open_us, 2),
            "body_bytes": len(body),
        }
    plain = statistics.median(variants["plain"])
    encrypted = statistics.median(variants["default"])
    national = statistics.median(variants["national"])
    return {
        "accept_per_s_plain": round(plain, 1),
        "accept_per_s_encrypted": round(encrypted, 1),
        "accept_per_s_encrypted_national": round(national, 1),
        "atrest_ratio": round(encrypted / plain, 3),
        "atrest_ratio_national": round(national / plain, 3),
        **out,
    }


def machine() -> str:
    return (
        f"{platform.machine()} {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--only", choices=["atrest"], help="run only these figures")
    args = ap.parse_args()
    if args.only == "atrest":
        print(json.dumps({"bench": "outbox", **bench_atrest(), "machine": machine()}))
        return
    with tempfile.TemporaryDirectory(prefix="kit-bench-") as tmp:
        config = Path(tmp) / "kit.toml"
        config.write_text(render_default(1, "bench", "data", "run"))
        db_path = Path(tmp) / "data" / "outbox.sqlite3"
        result: dict[str, object] = {"bench": "outbox"}
        result.update(bench_accept(config, args.clients, args.seconds))
        fill(db_path, args.items)
        say("start-up with the full store …")
        startups, rss = [], []
        for _ in range(3):
            proc, startup = start_edge(config)
            startups.append(startup)
            with EdgeClient(endpoint(config)) as c:
                queued = sum(c.status()["queued"].values())
            rss.append(peak_rss_mb(proc.pid))
            stop(proc)
        say(f"next items ({args.calls} calls per link profile) …")
        result.update(bench_next_items(db_path, args.calls))
        say("accepts with bodies encrypted at rest …")
        result.update(bench_atrest())
        rss.append(float(result.pop("rss_accept_mb")))  # type: ignore[arg-type]
        result.update(
            {
                "queued_items": queued,
                "startup_s": round(statistics.median(startups), 3),
                "edge_rss_mb": round(max(rss), 1),
                "db_mb": round(db_path.stat().st_size / 1e6, 1),
                "machine": machine(),
            }
        )
    print(json.dumps(result, ensure_ascii=False))


if __name__ == "__main__":
    main()
