"""The outbox: items on disk with an explicit delivery state machine (aiosqlite, WAL, FULL sync).

Only the edge daemon opens a :class:`Store` for writing. Every write is one
transaction; :meth:`Store.accept_many` takes a whole group of accepts so that one
fsync covers many clients (group commit).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any

import aiosqlite

from edge.atrest import AtRest, BodyUnreadable, DataKeyError
from edge.errors import BadItem, InvalidTransition
from edge.item import Item, Kind, Priority, decode, encode

SCHEMA_VERSION = 1
log = logging.getLogger("edge.store")


class State(IntEnum):
    """Delivery state of an item in the outbox."""

    ACCEPTED = 0  # durable, waiting for a link ("ready")
    IN_FLIGHT = 1  # sent on at least one link, no acknowledgement yet
    ACKNOWLEDGED = 2  # the centre has stored it
    EVICTABLE = 3  # acknowledged and no longer needed locally (media may be deleted)
    SUPERSEDED = 4  # a P2 value replaced by a newer one from the same source before sending


# The whole state machine. Anything not listed raises InvalidTransition.
TRANSITIONS: dict[State, frozenset[State]] = {
    State.ACCEPTED: frozenset({State.IN_FLIGHT, State.ACKNOWLEDGED, State.SUPERSEDED}),
    State.IN_FLIGHT: frozenset({State.ACCEPTED, State.ACKNOWLEDGED}),
    State.ACKNOWLEDGED: frozenset({State.EVICTABLE}),
    State.EVICTABLE: frozenset(),
    # A superseded track may still have reached the centre on an earlier send.
    State.SUPERSEDED: frozenset({State.ACKNOWLEDGED}),
}


def check_transition(old: State, new: State) -> None:
    if new not in TRANSITIONS[old]:
        raise InvalidTransition(
            f"状态不能从 {old.name} 变为 {new.name}",
            f"cannot move an item from {old.name} to {new.name}",
        )


@dataclass(frozen=True, slots=True)
class Accepted:
    """The store's answer to one accept: the kit-local sequence number."""

    seq: int
    uid: uuid.UUID
    new: bool  # False when the uid was already stored (a client's retry)
    state: State


@dataclass(frozen=True, slots=True)
class Queued:
    """An item waiting for a link, as the scheduler sees it (decoded only when needed)."""

    seq: int
    priority: Priority
    kind: Kind
    size: int
    created_ms: int
    source: str
    body: bytes

    @property
    def item(self) -> Item:
        return decode(self.body)


@dataclass(frozen=True, slots=True)
class Stored:
    """An item with its delivery record."""

    seq: int
    item: Item
    state: State
    accepted_ms: int
    attempts: int
    link: str | None
    acked_ms: int | None


@dataclass(frozen=True, slots=True)
class Delivery:
    """An item's delivery record without its body (readable even after a key wipe)."""

    seq: int
    kind: Kind
    priority: Priority
    state: State
    attempts: int
    link: str | None


_DDL = """
CREATE TABLE IF NOT EXISTS items (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: it names the item on the wire
    uid BLOB NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    priority INTEGER NOT NULL,
    state INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    clock_ok INTEGER NOT NULL,
    source TEXT NOT NULL,
    size INTEGER NOT NULL,
    body BLOB NOT NULL,
    accepted_ms INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    link TEXT,
    sent_ms INTEGER,
    acked_ms INTEGER
);
-- The ready queue only: next_items() walks it in (class, seq) order, size from the index.
CREATE INDEX IF NOT EXISTS items_ready ON items(priority, seq, size) WHERE state = 0;
CREATE INDEX IF NOT EXISTS items_inflight ON items(seq) WHERE state = 1;
CREATE INDEX IF NOT EXISTS items_tracks ON items(kind, source, created_ms) WHERE priority = 2;
-- Counts per (state, class), kept by triggers in the same transactions as the rows, so
-- they are right by construction and start-up or status never scan items.
CREATE TABLE IF NOT EXISTS counts (
    state INTEGER NOT NULL,
    priority INTEGER NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (state, priority)
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS items_counted_in AFTER INSERT ON items BEGIN
    INSERT INTO counts VALUES (NEW.state, NEW.priority, 1)
        ON CONFLICT(state, priority) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS items_counted_move AFTER UPDATE OF state ON items
WHEN OLD.state != NEW.state BEGIN
    UPDATE counts SET n = n - 1 WHERE state = OLD.state AND priority = OLD.priority;
    INSERT INTO counts VALUES (NEW.state, NEW.priority, 1)
        ON CONFLICT(state, priority) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS items_counted_out AFTER DELETE ON items BEGIN
    UPDATE counts SET n = n - 1 WHERE state = OLD.state AND priority = OLD.priority;
END;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
"""

_COLUMNS = "seq, priority, kind, size, created_ms, source, body, uid"
INSERT_SQL = (
    "INSERT INTO items (uid, kind, priority, state, created_ms, clock_ok, source, size, body,"
    " accepted_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def row_for(
    item: Item, body: bytes, state: State, now_ms: int, stored: bytes | None = None
) -> tuple[object, ...]:
    """The values of :data:`INSERT_SQL` for ``item`` (``body`` is ``encode(item)``, ``stored``
    what goes on disk if not that: sealed at rest). The size is the plaintext's."""
    size = len(body) + (item.media.size if item.media else 0)
    return (
        item.uid.bytes,
        item.kind.value,
        int(item.priority),
        int(state),
        item.created_ms,
        int(item.clock_ok),
        item.source,
        size,
        body if stored is None else stored,
        now_ms,
    )


def _now_ms() -> int:
    return int(time.time() * 1000)


class Store:
    """The kit's outbox on SQLite. Open with :meth:`open`; one instance per process."""

    def __init__(self, db: aiosqlite.Connection, path: Path, at_rest: AtRest | None = None) -> None:
        self._db = db
        self.path = path
        self.at_rest = at_rest or AtRest()
        self.unreadable: dict[int, str] = {}  # seq -> why its body does not open (logged once)
        self._write = asyncio.Lock()  # one write transaction at a time on the one connection
        self._last_seq = 0  # highest seq ever assigned (this is the only writer)
        self.requeued_at_start = 0

    # -- life cycle -------------------------------------------------------------------------

    @classmethod
    async def open(cls, path: Path | str, at_rest: AtRest | None = None) -> Store:
        """Open (creating if needed) the store and put in-flight items back to ready.

        ``at_rest`` seals new bodies and opens stored ones (plaintext only without it).
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(path, isolation_level=None)
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=FULL")
            await db.execute("PRAGMA busy_timeout=5000")
            await db.execute("PRAGMA foreign_keys=ON")
            await db.executescript(_DDL)
            await cls._check_version(db)
            at_rest = at_rest or AtRest()
            await cls._bind_key(db, at_rest, path)
            store = cls(db, path, at_rest)
            await store._start()
        except BaseException:
            await db.close()
            raise
        return store

    @staticmethod
    async def _check_version(db: aiosqlite.Connection) -> None:
        async with db.execute("SELECT value FROM meta WHERE key='schema'") as cur:
            row = await cur.fetchone()
        if row is None:
            await db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) != SCHEMA_VERSION:
            raise RuntimeError(
                f"store schema {row[0]} is not supported (expected {SCHEMA_VERSION})"
            )

    @staticmethod
    async def _bind_key(db: aiosqlite.Connection, at_rest: AtRest, path: Path) -> None:
        async with db.execute("SELECT value FROM meta WHERE key='at_rest_key'") as cur:
            row = await cur.fetchone()
        recorded = None if row is None else str(row[0])
        key_id = at_rest.bind(recorded, path)
        if key_id is not None and key_id != recorded:
            await db.execute("INSERT OR REPLACE INTO meta VALUES ('at_rest_key', ?)", (key_id,))

    def at_rest_status(self) -> dict[str, Any]:
        """Encryption at rest, whether the key was wiped, and the bodies that do not open."""
        with contextlib.suppress(DataKeyError):  # a wipe shows here even before a read
            self.at_rest.check()
        return {**self.at_rest.status(), "unreadable": sorted(self.unreadable)[:20]}

    def _open_rows(self, rows: Iterable[Any]) -> list[Queued]:
        """Queued items of ``(seq, …, body, uid)`` rows; a body that does not open is left
        out (and logged once) so that one damaged row cannot stop the whole queue."""
        rows = list(rows)
        if rows:
            self.at_rest.check()
        out: list[Queued] = []
        for r in rows:
            try:
                body = self.at_rest.open(bytes(r[7]), bytes(r[6]), r[0])
            except BodyUnreadable as err:
                if r[0] not in self.unreadable:
                    log.error("%s", err)
                    self.unreadable[r[0]] = str(err)
                continue
            out.append(Queued(r[0], Priority(r[1]), Kind(r[2]), r[3], r[4], r[5], body))
        return out

    async def _start(self) -> None:
        async with self._write:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                rows = list(
                    await self._db.execute_fetchall(
                        "UPDATE items SET state = 0 WHERE state = 1 RETURNING seq"
                    )
                )
                await self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # a full disk at COMMIT rolls back by itself
                    await self._db.execute("ROLLBACK")
                raise
        self.requeued_at_start = len(rows)
        seq = await self._db.execute_fetchall(
            "SELECT seq FROM sqlite_sequence WHERE name = 'items'"
        )
        self._last_seq = next((int(r[0]) for r in seq), 0)

    async def close(self) -> None:
        await self._db.close()

    async def checkpoint(self) -> None:
        """Fold the WAL into the database file (before a planned power-off)."""
        await self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    # -- counts ----------------------------------------------------------------------------

    async def counts(self) -> dict[tuple[State, Priority], int]:
        """Items per (state, class)."""
        rows = await self._db.execute_fetchall("SELECT state, priority, n FROM counts WHERE n != 0")
        return {(State(st), Priority(p)): int(n) for st, p, n in rows}

    async def queued(self) -> dict[Priority, int]:
        """Items not yet acknowledged per class (ready or in flight)."""
        out = {p: 0 for p in Priority}
        for (state, prio), n in (await self.counts()).items():
            if state in (State.ACCEPTED, State.IN_FLIGHT):
                out[prio] += n
        return out

    # -- accepting -------------------------------------------------------------------------

    async def accept(self, item: Item) -> Accepted:
        result = (await self.accept_many([item]))[0]
        if isinstance(result, BadItem):
            raise result
        return result

    async def accept_many(
        self, items: Sequence[Item], bodies: Sequence[bytes] | None = None
    ) -> list[Accepted | BadItem]:
        """Store ``items`` durably in ONE transaction (group commit); idempotent per uid.

        Returns when the transaction is committed with ``synchronous=FULL``, i.e. on disk.
        Each result is the item's :class:`Accepted` record, or a :class:`BadItem` if its uid
        is already stored with different content (that item alone is refused).
        ``bodies``, if given, are the items' encodings (the caller already made them).
        The number of round trips to the database thread does not grow with the group.
        """
        if not items:
            return []
        now = _now_ms()
        if bodies is None:
            bodies = [encode(item) for item in items]
        self.at_rest.check()  # wiped keys: refuse before anything is written
        async with self._write:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                results = await self._insert_group(items, bodies, now)
                await self._db.execute("COMMIT")
            except BaseException:
                # SQLite may have rolled back already (a full disk at COMMIT does).
                if self._db.in_transaction:
                    await self._db.execute("ROLLBACK")
                raise
        return results

    async def _by_uid(self, uids: Sequence[bytes], columns: str) -> dict[bytes, tuple[Any, ...]]:
        out: dict[bytes, tuple[Any, ...]] = {}
        for i in range(0, len(uids), 500):
            chunk = uids[i : i + 500]
            rows = await self._db.execute_fetchall(
                f"SELECT uid, {columns} FROM items WHERE uid IN ({','.join('?' * len(chunk))})",
                chunk,
            )
            out.update((bytes(r[0]), tuple(r[1:])) for r in rows)
        return out

    async def _insert_group(
        self, items: Sequence[Item], bodies: Sequence[bytes], now: int
    ) -> list[Accepted | BadItem]:
        uids = [item.uid.bytes for item in items]
        first = {uid: i for i, uid in reversed(list(enumerate(uids)))}  # first copy wins
        states = {i: State.ACCEPTED for i in first.values()}
        tracks = any(item.priority is Priority.P2 for item in items)
        if tracks:
            # The latest-value rule needs to know which tracks are new before inserting.
            stored = await self._by_uid(uids, "seq")
            fresh = [i for uid, i in first.items() if uid not in stored]
            winners = await self._decide_tracks(items, fresh, states)
        sealed = {i: self.at_rest.seal(uids[i], bodies[i]) for i in first.values()}
        await self._db.executemany(
            INSERT_SQL + " ON CONFLICT(uid) DO NOTHING",
            [row_for(items[i], bodies[i], states[i], now, sealed[i]) for i in first.values()],
        )
        rows = await self._by_uid(uids, "seq, body, state")
        before, self._last_seq = (
            self._last_seq,
            max([self._last_seq, *(r[0] for r in rows.values())]),
        )
        if tracks and winners:
            await self._supersede_older(winners, before + 1)
        results: list[Accepted | BadItem] = []
        for i, (item, uid) in enumerate(zip(items, uids, strict=True)):
            seq, body, state = rows[uid]
            if bytes(body) == sealed[first[uid]]:
                plain = bodies[first[uid]]  # the row this group wrote
            else:
                try:
                    plain = self.at_rest.open(uid, bytes(body), seq)
                except BodyUnreadable as err:
                    results.append(BadItem(err.zh, err.en))
                    continue
            if plain != bodies[i]:
                results.append(_uid_reused(item.uid))
            else:
                new = seq > before and first[uid] == i
                results.append(Accepted(seq, item.uid, new, State(state)))
        return results

    async def _decide_tracks(
        self, items: Sequence[Item], fresh: list[int], states: dict[int, State]
    ) -> list[Item]:
        """Latest value wins per (kind, source) among P2 items; returns the group's winners.

        A new P2 item older than one already stored (or than another in this group) is
        stored as SUPERSEDED at once: a late-arriving old position never replaces a newer one.
        """
        groups: dict[tuple[str, str], list[int]] = {}
        for i in fresh:
            if items[i].priority is Priority.P2:
                groups.setdefault((items[i].kind.value, items[i].source), []).append(i)
        winners: list[Item] = []
        for (kind, source), members in groups.items():
            newest = max(members, key=lambda i: (items[i].created_ms, i))
            rows = await self._db.execute_fetchall(
                "SELECT max(created_ms) FROM items WHERE priority = 2 AND kind = ? AND source = ?"
                " AND state != 4",
                (kind, source),
            )
            stored_newest = next(iter(rows))[0]
            for i in members:
                if i != newest:
                    states[i] = State.SUPERSEDED
            if stored_newest is not None and stored_newest > items[newest].created_ms:
                states[newest] = State.SUPERSEDED
            else:
                winners.append(items[newest])
        return winners

    async def _supersede_older(self, winners: list[Item], first_new_seq: int) -> None:
        await self._db.executemany(
            "UPDATE items SET state = 4 WHERE priority = 2 AND kind = ? AND source = ?"
            " AND created_ms <= ? AND state = 0 AND seq < ?",
            [(w.kind.value, w.source, w.created_ms, first_new_seq) for w in winners],
        )

    # -- the scheduler's view --------------------------------------------------------------

    async def next_items(
        self,
        classes: Iterable[Priority],
        max_size: int,
        limit: int = 16,
    ) -> list[Queued]:
        """Ready items a link may carry: highest class first, oldest first, at most ``max_size``."""
        out: list[Queued] = []
        for prio in sorted(set(classes)):
            if len(out) >= limit:
                break
            rows = await self._db.execute_fetchall(
                f"SELECT {_COLUMNS} FROM items INDEXED BY items_ready"
                " WHERE state = 0 AND priority = ? AND size <= ? ORDER BY seq LIMIT ?",
                (int(prio), max_size, limit - len(out)),
            )
            out.extend(self._open_rows(rows))
        return out

    async def get(self, key: int | uuid.UUID) -> Stored | None:
        column, value = ("seq", key) if isinstance(key, int) else ("uid", key.bytes)
        async with self._db.execute(
            "SELECT seq, body, state, accepted_ms, attempts, link, acked_ms, uid FROM items"
            f" WHERE {column} = ?",
            (value,),
        ) as cur:
            row = await cur.fetchone()
        if row is None:
            return None
        self.at_rest.check()
        body = self.at_rest.open(bytes(row[7]), bytes(row[1]), row[0])
        return Stored(row[0], decode(body), State(row[2]), row[3], row[4], row[5], row[6])

    async def delivery(self, seq: int) -> Delivery | None:
        rows = await self._db.execute_fetchall(
            "SELECT seq, kind, priority, state, attempts, link FROM items WHERE seq = ?", (seq,)
        )
        return next(
            (Delivery(r[0], Kind(r[1]), Priority(r[2]), State(r[3]), r[4], r[5]) for r in rows),
            None,
        )

    # -- transitions -----------------------------------------------------------------------

    async def _move(
        self,
        seqs: Iterable[int],
        new: State,
        *,
        skip: frozenset[State] = frozenset(),
        extra_sql: str = "",
        extra_args: tuple[object, ...] = (),
    ) -> list[int]:
        """Move ``seqs`` to ``new`` in one transaction; states in ``skip`` are left as they are.

        Raises :class:`InvalidTransition` (changing nothing) if any item may not move.
        Returns the sequence numbers that changed state.
        """
        wanted = sorted(set(seqs))
        if not wanted:
            return []
        moved: list[int] = []
        async with self._write:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                rows: list[sqlite3.Row] = []
                for i in range(0, len(wanted), 500):
                    chunk = wanted[i : i + 500]
                    marks = ",".join("?" * len(chunk))
                    rows.extend(
                        await self._db.execute_fetchall(
                            f"SELECT seq, state FROM items WHERE seq IN ({marks})", chunk
                        )
                    )
                if len(rows) != len(wanted):
                    found = {r[0] for r in rows}
                    missing = [s for s in wanted if s not in found][:5]
                    raise InvalidTransition(f"没有这些条目：{missing}", f"no such items: {missing}")
                for seq, state in rows:
                    old = State(state)
                    if old in skip:
                        continue
                    if old is not new:
                        check_transition(old, new)
                    elif new is not State.IN_FLIGHT:  # only a re-send updates a same-state row
                        continue
                    moved.append(seq)
                for i in range(0, len(moved), 500):
                    chunk = moved[i : i + 500]
                    marks = ",".join("?" * len(chunk))
                    await self._db.execute(
                        f"UPDATE items SET state = ?{extra_sql} WHERE seq IN ({marks})",
                        (int(new), *extra_args, *chunk),
                    )
                await self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # a full disk at COMMIT rolls back by itself
                    await self._db.execute("ROLLBACK")
                raise
        return moved

    async def mark_in_flight(self, seqs: Iterable[int], link: str) -> list[int]:
        """Record a send on ``link``; a P0 item may be in flight on several links at once.

        Items acknowledged (or superseded) meanwhile are skipped: only the returned
        sequence numbers may be sent.
        """
        return await self._move(
            seqs,
            State.IN_FLIGHT,
            skip=frozenset({State.ACKNOWLEDGED, State.EVICTABLE, State.SUPERSEDED}),
            extra_sql=", attempts = attempts + 1, link = ?, sent_ms = ?",
            extra_args=(link, _now_ms()),
        )

    async def requeue(self, seqs: Iterable[int]) -> list[int]:
        """Put unacknowledged in-flight items back to ready (a send failed or timed out).

        Items acknowledged meanwhile stay acknowledged: an ack may overtake a time-out.
        """
        return await self._move(
            seqs,
            State.ACCEPTED,
            skip=frozenset({State.ACCEPTED, State.ACKNOWLEDGED, State.EVICTABLE, State.SUPERSEDED}),
        )

    async def acknowledge(self, seqs: Iterable[int]) -> list[int]:
        """The centre stored these items. Repeated acknowledgements change nothing."""
        return await self._move(
            seqs,
            State.ACKNOWLEDGED,
            skip=frozenset({State.ACKNOWLEDGED, State.EVICTABLE}),
            extra_sql=", acked_ms = ?",
            extra_args=(_now_ms(),),
        )

    async def acknowledge_ranges(self, ranges: Iterable[tuple[int, int]]) -> list[int]:
        """Apply the centre's acknowledgement ranges (inclusive); returns the seqs newly acked.

        Ranges may name items this store never had (another store on the same kit id, a
        forged frame): only known, unacknowledged items change. The centre repeats all its
        ranges in every answer, so this walks only the (small) ready and in-flight indexes.
        """
        wanted: list[int] = []
        for lo, hi in ranges:
            if hi < lo:
                continue
            rows = await self._db.execute_fetchall(
                "SELECT seq FROM items INDEXED BY items_inflight WHERE state = 1"
                " AND seq BETWEEN ?1 AND ?2 UNION ALL"
                " SELECT seq FROM items INDEXED BY items_ready WHERE state = 0"
                " AND priority IN (0, 1, 2, 3, 4) AND seq BETWEEN ?1 AND ?2",
                (lo, hi),
            )
            wanted.extend(r[0] for r in rows)
        return await self.acknowledge(wanted)

    async def in_flight(self, classes: Iterable[Priority], limit: int = 64) -> list[Queued]:
        """Items sent but not yet acknowledged, oldest first (P0 goes out on every link)."""
        marks = ",".join(str(int(p)) for p in set(classes))
        if not marks:
            return []
        rows = await self._db.execute_fetchall(
            f"SELECT {_COLUMNS} FROM items INDEXED BY items_inflight WHERE state = 1"
            f" AND priority IN ({marks}) ORDER BY seq LIMIT ?",
            (limit,),
        )
        return self._open_rows(rows)

    async def mark_evictable(self, seqs: Iterable[int]) -> list[int]:
        """Acknowledged items whose local copy is no longer needed."""
        return await self._move(seqs, State.EVICTABLE, skip=frozenset({State.EVICTABLE}))

    # -- checks ----------------------------------------------------------------------------

    async def integrity_check(self) -> str:
        async with self._db.execute("PRAGMA integrity_check") as cur:
            row = await cur.fetchone()
        return str(row[0]) if row else "no answer"


def _uid_reused(uid: uuid.UUID) -> BadItem:
    return BadItem(
        f"条目编号 {uid} 已用于不同内容", f"item id {uid} was already used for different content"
    )
