"""Power cuts that drop what was not fsynced: the kit's outbox survives every one of them.

How: the real edge daemon (``kit edge``: the stdlib ``sqlite3`` under aiosqlite, WAL,
``synchronous=FULL``, its own ``BEGIN IMMEDIATE`` transactions and group commits) runs
under an LD_PRELOAD shim (``sim.faults``) that records every write, truncate and fsync of
its database files, in order, while clients accept reports, SOS and tracks, mark them
sent and acknowledged, and flush. Each answer a client received is marked in the same
trace. Then power is cut, offline, at 80 random points of that trace: the disk keeps what
was fsynced before the cut and none, a random subset, or a torn subset of the rest. Each
cut's files are opened again as the daemon opens them; ``PRAGMA integrity_check`` must say
ok, every item whose acceptance was answered must be there exactly once with the sequence
it was given, every acknowledgement answered must have stuck, and the per-class counters
the triggers keep must still match the rows.

Why not an ``apsw`` VFS: apsw bundles its own SQLite, so the daemon's code would have to
run on another library through an adapter written for the test; the trace keeps the
daemon, its library and its transaction boundaries exactly as shipped, and one recorded
run yields any number of cuts (the approach of ALICE and CrashMonkey).

The centre's SQLite store gets the same treatment: `kit centre` under the shim takes signed
batches over HTTP (some sent twice, as a kit retries), each acknowledgement it answers is
marked, and at every cut its database is sound and holds each acknowledged item once.
"""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import subprocess
import sys
from pathlib import Path

import aiohttp
import cbor2
import pytest
import zmq.asyncio
from conftest import endpoint, stop, wait_ready
from hygiene import nothing_left_open, run  # noqa: F401

from edge.client import AsyncEdgeClient
from edge.item import Position, Priority, new_item, to_wire
from edge.store import State, Store
from security.ipauth import HEADER, RequestSigner
from sim.faults import Op, build_shim, disk_at_cut, load_trace, mark
from sim.harness import KIT_ID, centre, kit_security

CUTS = 80
ROUNDS = 40
DB = "outbox.sqlite3"


async def drive(config: Path, log: Path, rng: random.Random) -> None:
    """Clients as the kit has them: the web page, the mesh, the uplink, a planned flush."""
    client = AsyncEdgeClient(endpoint(config), timeout_s=10.0)
    try:
        for n in range(ROUNDS):
            group = []
            for i in range(rng.randint(1, 4)):  # concurrent accepts share a group commit
                kind = rng.choice(["situation", "sos", "track", "track"])
                position = Position(30.6 + rng.random() / 100, 104.0 + rng.random() / 100)
                group.append(
                    new_item(kind, source=f"mesh:{i % 2}", text=f"报告 {n}.{i}", position=position)
                )
            answers = await asyncio.gather(*(client.accept(item) for item in group))
            for item, answer in zip(group, answers, strict=True):
                mark(log, f"accepted {item.uid.hex} {answer['seq']}")
            if n % 5 == 4:
                ready = await client.call(
                    {"op": "next", "classes": [0, 1, 2], "max_size": 1 << 20, "limit": 3}
                )
                seqs = [q[0] for q in ready["items"]]
                if seqs:
                    await client.call({"op": "sent", "seqs": seqs, "link": "vsat"})
                    acked = await client.call({"op": "ack", "ranges": [[s, s] for s in seqs[:2]]})
                    for seq in acked["seqs"]:
                        mark(log, f"acknowledged {seq}")
            if n == ROUNDS // 2:
                await client.call({"op": "flush"})  # folds the WAL in: a truncate
    finally:
        await client.close()


def check_cut(ops: list[Op], cut: int, rng: random.Random, mode: str, folder: Path) -> None:
    files = disk_at_cut(ops, cut, rng, mode)
    folder.mkdir()
    for path, content in files.items():
        (folder / Path(path).name).write_bytes(content)
    accepted: dict[str, int] = {}
    acknowledged: set[int] = set()
    for op in ops[:cut]:
        if op.kind == "M":
            what, *args = op.path.split()
            if what == "accepted":
                accepted[args[0]] = int(args[1])
            else:
                acknowledged.add(int(args[0]))
    db = sqlite3.connect(folder / DB)
    try:
        where = f"cut {cut} ({mode}) of {len(ops)}"
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)], where
        rows = db.execute("SELECT hex(uid), seq, state FROM items").fetchall()
        stored = {uid.lower(): seq for uid, seq, _ in rows}
        assert len(stored) == len(rows), where
        lost = {uid: seq for uid, seq in accepted.items() if stored.get(uid) != seq}
        assert lost == {}, f"{where}: answered, then lost or renumbered: {lost}"
        states = {seq: state for _, seq, state in rows}
        assert all(states[s] == State.ACKNOWLEDGED for s in acknowledged), where
        counted = dict(
            ((s, p), n) for s, p, n in db.execute("SELECT state, priority, n FROM counts WHERE n")
        )
        actual = dict(
            ((s, p), n)
            for s, p, n in db.execute("SELECT state, priority, COUNT(*) FROM items GROUP BY 1, 2")
        )
        assert counted == actual, where
    finally:
        db.close()

    async def reopen() -> int:
        store = await Store.open(folder / DB)  # what the daemon does at start-up
        try:
            return len(await store.in_flight(list(Priority)))
        finally:
            await store.close()

    assert run(reopen()) == 0  # anything in flight at the cut is ready again


def test_power_cuts_at_random_moments_lose_no_answered_item_and_never_corrupt_the_outbox(
    kit_config: Path, tmp_path: Path
) -> None:
    rng = random.Random(11)
    log = tmp_path / "trace.bin"
    data = Path(os.path.realpath(kit_config.parent / "data"))
    env = {
        **os.environ,
        "LD_PRELOAD": str(build_shim(tmp_path)),
        "KIT_TRACE_DIR": str(data) + "/",
        "KIT_TRACE_LOG": str(log),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge.cli", "edge", "--config", str(kit_config)],
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        wait_ready(kit_config, proc)
        run(drive(kit_config, log, rng), 120)
    finally:
        stop(proc)
        zmq.asyncio.Context.instance().term()
        zmq.Context.instance().term()  # wait_ready's blocking client
    ops = load_trace(log)
    kinds = {op.kind for op in ops}
    assert {"W", "S", "T", "M"} <= kinds, kinds  # writes, fsyncs, the flush's truncate
    assert sum(op.kind == "M" for op in ops) >= ROUNDS
    first = next(i for i, op in enumerate(ops) if op.kind == "M")
    cuts = sorted(rng.sample(range(first, len(ops) + 1), CUTS))
    for n, cut in enumerate(cuts):
        check_cut(ops, cut, rng, ("lose", "subset", "torn")[n % 3], tmp_path / f"cut-{n}")


async def post_batches(url: str, folder: Path, log: Path, rng: random.Random) -> None:
    """A kit's uplink, by hand: signed batches of items, some sent again (a lost answer)."""
    security = kit_security(KIT_ID, folder / "kit-state.sqlite3")
    signer = RequestSigner(security, folder / "kit-requests")
    sent: list[bytes] = []
    seq = 0
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(ROUNDS):
                if sent and rng.random() < 0.2:
                    body = rng.choice(sent)  # the same batch again: stored once
                else:
                    entries = []
                    for _ in range(rng.randint(1, 3)):
                        seq += 1
                        kind = rng.choice(["situation", "sos", "track"])
                        item = new_item(
                            kind, source="web", text=f"报告 {seq}", position=Position(30.6, 104.0)
                        )
                        entries.append([seq, to_wire(item)])
                    body = cbor2.dumps(entries)
                    sent.append(body)
                headers = {
                    "Kit-Id": str(KIT_ID),
                    "Content-Type": "application/cbor",
                    "Kit-Link": "vsat",
                }
                _, headers[HEADER] = signer.sign("POST", "/v1/items", headers, body)
                async with http.post(url + "/v1/items", data=body, headers=headers) as resp:
                    assert resp.status == 200, await resp.text()
                    answer = cbor2.loads(await resp.read())
                for lo, hi in answer["acks"]:
                    mark(log, "acked " + " ".join(str(s) for s in range(lo, hi + 1)))
    finally:
        security.state.close()


def check_centre_cut(ops: list[Op], cut: int, rng: random.Random, mode: str, folder: Path) -> None:
    files = disk_at_cut(ops, cut, rng, mode)
    folder.mkdir()
    for path, content in files.items():
        (folder / Path(path).name).write_bytes(content)
    acked = {int(s) for op in ops[:cut] if op.kind == "M" for s in op.path.split()[1:]}
    where = f"cut {cut} ({mode}) of {len(ops)}"
    for name in {Path(p).name for p in files}:
        if not name.endswith((".sqlite3", ".db")):
            continue
        db = sqlite3.connect(folder / name)
        try:
            assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)], (where, name)
        finally:
            db.close()
    db = sqlite3.connect(folder / "centre.sqlite3")
    try:
        copies = dict(
            db.execute("SELECT seq, COUNT(*) FROM items WHERE kit_id = ? GROUP BY seq", (KIT_ID,))
        )
    finally:
        db.close()
    assert {s: n for s, n in copies.items() if n != 1} == {}, where
    assert acked <= set(copies), f"{where}: acknowledged, then lost: {sorted(acked - set(copies))}"


def test_power_cuts_of_the_centre_lose_no_acknowledged_item_and_store_none_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(12)
    log = tmp_path / "trace.bin"
    data = Path(os.path.realpath(tmp_path / "c" / "centre"))
    shim = build_shim(tmp_path)

    async def main() -> None:
        # Only the centre's process (started below) is traced.
        monkeypatch.setenv("LD_PRELOAD", str(shim))
        monkeypatch.setenv("KIT_TRACE_DIR", str(data) + "/")
        monkeypatch.setenv("KIT_TRACE_LOG", str(log))
        async with centre(tmp_path / "c") as (url, _):
            monkeypatch.delenv("LD_PRELOAD")
            await post_batches(url, tmp_path, log, rng)

    run(main(), 120)
    ops = load_trace(log)
    assert {"W", "S", "M"} <= {op.kind for op in ops}
    first = next(i for i, op in enumerate(ops) if op.kind == "M")
    cuts = sorted(rng.sample(range(first, len(ops) + 1), CUTS))
    for n, cut in enumerate(cuts):
        check_centre_cut(ops, cut, rng, ("lose", "subset", "torn")[n % 3], tmp_path / f"cut-{n}")
