"""Crash safety: SIGKILL the edge daemon at random moments while clients keep filing items."""

from __future__ import annotations

import random
import signal
import sqlite3
import threading
import uuid
from pathlib import Path

from conftest import endpoint, start_edge, stop

from edge.client import EdgeClient
from edge.errors import EdgeUnavailable
from edge.item import Item, Position, new_item

KILLS = 60  # each costs an edge start-up (≈ 0.8 s); 60 random moments cover start-up and mid-batch
CLIENTS = 4


def _make(n: int, client_no: int) -> Item:
    if n % 5 == 0:
        return new_item(
            "track", source=f"mesh:!{client_no:08x}", position=Position(30.0, 104.0 + n * 1e-5)
        )
    return new_item("situation", source=f"client-{client_no}", text=f"报告 {client_no}-{n}")


def _file_until(
    stop_event: threading.Event, ep: str, client_no: int, acked: dict[uuid.UUID, int]
) -> None:
    n = 0
    with EdgeClient(ep, timeout_s=0.3, retries=0) as client:
        item = _make(n, client_no)
        while not stop_event.is_set():
            try:
                answer = client.accept(item)
            except EdgeUnavailable:
                continue  # daemon down: retry the SAME item (same uid) until it answers
            acked[item.uid] = answer["seq"]
            n += 1
            item = _make(n, client_no)


def test_every_acknowledged_item_survives_sigkill_exactly_once(kit_config: Path) -> None:
    rng = random.Random(20261123)
    ep = endpoint(kit_config)
    acked: dict[uuid.UUID, int] = {}
    stop_event = threading.Event()
    proc = start_edge(kit_config)
    threads = [
        threading.Thread(target=_file_until, args=(stop_event, ep, i, acked), daemon=True)
        for i in range(CLIENTS)
    ]
    for t in threads:
        t.start()
    try:
        for _ in range(KILLS):
            # Kill at a random moment: sometimes mid-batch, sometimes right after start-up.
            stop_event.wait(rng.uniform(0.0, 0.25))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            if proc.stderr:
                proc.stderr.close()
            proc = start_edge(kit_config)
    finally:
        stop_event.set()
        for t in threads:
            t.join(10)
        stop(proc)

    assert len(acked) > KILLS, "clients should have filed many items between kills"
    db = sqlite3.connect(kit_config.parent / "data" / "outbox.sqlite3")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        rows = db.execute("SELECT uid, seq FROM items").fetchall()
        stored: dict[uuid.UUID, list[int]] = {}
        for uid, seq in rows:
            stored.setdefault(uuid.UUID(bytes=uid), []).append(seq)
        missing = [u for u in acked if u not in stored]
        assert not missing, f"{len(missing)} acknowledged items lost"
        assert all(len(seqs) == 1 for seqs in stored.values()), "an item stored twice"
        assert all(stored[u] == [seq] for u, seq in acked.items()), "seq changed after a crash"
        # The per-class counters were kept in the same transactions as the rows.
        actual = dict(
            ((s, p), n)
            for s, p, n in db.execute("SELECT state, priority, count(*) FROM items GROUP BY 1, 2")
        )
        counted = {
            (s, p): n for s, p, n in db.execute("SELECT state, priority, n FROM counts") if n
        }
        assert counted == actual
    finally:
        db.close()
