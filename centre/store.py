"""The centre's store: each item exactly once by (kit, seq), acks kept as ranges, media linked.

The linking rule: an item without media is *complete* as soon as its record is stored.
An item with media (MediaRef) is complete only when both its record and a complete file
with the record's sha256 and size are stored, in whichever order they arrive. Only
complete items appear in :meth:`Store.acked_ranges`, so the kit keeps offering whatever
half is missing. The step that completes an item also adds its seq to the ranges, in the
same transaction.

The same store runs on SQLite (the default: one process, nothing to set up) or on
PostgreSQL (several worker processes sharing it); :mod:`centre.db` holds the difference.
Every transaction that changes a kit's items, acks, media or orders first takes that
kit's lock, so concurrent workers store each (kit, seq) once (the primary key refuses a
second row) and keep its acked ranges whole.
"""

from __future__ import annotations

import hashlib
import json
import logging
import mimetypes
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Protocol

import aiosqlite

from centre.acks import add_acked
from centre.db import Conn, Database, PgDatabase, SqliteDatabase, is_postgres_url, redact
from centre.errors import UnknownKit
from centre.mediastore import FolderStore, MediaStore, MediaUnavailable
from centre.schema import BACKFILL_ARRIVALS, DDL, SCHEMA_VERSION, ddl
from centre.schema import sql_type as column_type
from edge.item import Item, Kind, MediaRef, decode, encode
from uplink.compact import narrow_key, pack_item
from uplink.frames import Order

MAX_MSG_SEQ = 2**32 - 1  # narrow-link message sequences are uint32
INLINE_UPLOAD_ID = "inline"  # media_files.upload_id of a file that came inside an item

log = logging.getLogger(__name__)


def now_ms() -> int:
    return int(time.time() * 1000)


class KitLike(Protocol):
    @property
    def kit_id(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def enabled(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class Kit:
    kit_id: int
    name: str
    enabled: bool


@dataclass(frozen=True, slots=True)
class StoredItem:
    """One stored item with what the centre knows about its arrival."""

    kit_id: int
    seq: int
    item: Item
    received_ms: int
    link: str
    copies: int
    media_path: str | None  # relative to the media folder, once the file is linked

    @property
    def complete(self) -> bool:
        return self.item.media is None or self.media_path is not None


@dataclass(frozen=True, slots=True)
class Ingested:
    """What one :meth:`Store.ingest` did, by sequence number."""

    stored: tuple[int, ...]  # first copies, now stored
    duplicates: tuple[int, ...]  # further copies of stored items (counted in `copies`)
    waiting: tuple[int, ...]  # stored media records whose file has not arrived yet
    rejected: tuple[tuple[int, str], ...]  # seq and the reason, for the kit


@dataclass(frozen=True, slots=True)
class FeedEntry:
    """One item of the export feed: its position, its kit's name, the item as stored."""

    feed_id: int
    kit_name: str
    stored: StoredItem


class Attached(Enum):
    """What became of a complete upload's file."""

    LINKED = "linked"  # record was there: the item is now complete
    WAITING = "waiting"  # kept until the record arrives
    DUPLICATE = "duplicate"  # the item already has its file; this copy is dropped
    MISMATCH = "mismatch"  # contradicts the record's sha256 or size; upload restarts


class Store:
    """The database (SQLite with WAL and synchronous=FULL, or PostgreSQL) plus the media
    folder. Open with :meth:`open`."""

    def __init__(self, db: Database, media_dir: Path, media: MediaStore | None = None) -> None:
        self.db = db
        self.media_dir = media_dir  # tus uploads in progress (and the folder store's files)
        self.media = media or FolderStore(media_dir)  # complete files

    @classmethod
    async def open(
        cls,
        db_path: Path,
        media_dir: Path,
        *,
        database: str = "",
        pool_size: int = 8,
        wait_s: float = 5.0,
        media: MediaStore | None = None,
    ) -> Store:
        """The SQLite store at ``db_path``, or the PostgreSQL one at URL ``database``
        (``pool_size`` connections; a request waits up to ``wait_s`` for one)."""
        media_dir.mkdir(parents=True, exist_ok=True)
        if is_postgres_url(database):
            return cls(await _open_pg(database, pool_size, wait_s), media_dir, media)
        db_path.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(db_path, isolation_level=None)
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=FULL")
            await db.execute("PRAGMA foreign_keys=ON")
            await db.executescript(DDL)
            await _add_delivery_columns(db)
            await _add_feed_column(db)
            await db.executescript(BACKFILL_ARRIVALS)
            await db.execute(
                "INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),)
            )
            async with db.execute("SELECT value FROM meta WHERE key = 'schema'") as cur:
                row = await cur.fetchone()
            if row is None or int(row[0]) != SCHEMA_VERSION:
                raise RuntimeError(f"centre store schema {row} is not {SCHEMA_VERSION}")
        except BaseException:
            await db.close()
            raise
        return cls(SqliteDatabase(db, str(db_path)), media_dir, media)

    async def close(self) -> None:
        await self.db.close()
        self.media.close()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Conn]:
        """One write transaction; committed (fsynced) when the block ends without error.

        On PostgreSQL a lost connection raises :class:`~centre.db.StoreUnavailable`
        (nothing of the transaction is kept)."""
        async with self.db.transaction() as db:
            yield db

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[Conn]:
        async with self.db.reading() as db:
            yield db

    # -- kits ---------------------------------------------------------------------------

    async def sync_kits(self, kits: Iterable[KitLike]) -> None:
        """Make the enrolled kits match the config; kits no longer listed are disabled."""
        rows = [(k.kit_id, k.name, int(k.enabled)) for k in kits]
        async with self.transaction() as db:
            await db.execute("UPDATE kits SET enabled = 0")
            await db.executemany(
                "INSERT INTO kits VALUES (?, ?, ?) ON CONFLICT(kit_id) DO UPDATE"
                " SET name = excluded.name, enabled = excluded.enabled",
                rows,
            )

    async def enroll(self, kit_id: int, name: str, enabled: bool = True) -> None:
        async with self.transaction() as db:
            await db.execute(
                "INSERT INTO kits VALUES (?, ?, ?) ON CONFLICT(kit_id) DO UPDATE"
                " SET name = excluded.name, enabled = excluded.enabled",
                (kit_id, name, int(enabled)),
            )

    async def require_kit(self, kit_id: int) -> Kit:
        """The kit if enrolled and enabled, else :class:`UnknownKit`."""
        async with self.reading() as db:
            return await _require_kit(db, kit_id)

    # -- items --------------------------------------------------------------------------

    async def ingest(
        self,
        kit_id: int,
        entries: Sequence[tuple[int, Item]],
        *,
        link: str,
        blobs: Mapping[int, bytes] | None = None,
        via: str | None = None,
        relay_kit: int | None = None,
    ) -> Ingested:
        """Store each (seq, item) of ``kit_id`` once, in ONE transaction with its ack.

        A copy of a stored item (same canonical encoding, or the same item as a narrow
        link carries it: see :func:`_same_item`) bumps its ``copies`` counter; a copy
        with more detail than the stored one (the full IP copy of an item first heard
        over a narrow link) replaces the record. A different item under a stored seq is
        rejected. Each copy stored or counted gets its row in ``arrivals`` (``link``, when,
        ``via`` the address it came from and ``relay_kit`` the kit that relayed it, when
        known), in the same transaction, so an item's arrivals number its ``copies``; a
        rejected copy gets neither. ``blobs`` maps a seq to its whole media file when it
        travelled inside the item (P3 thumbnails and voice notes on narrow links): the
        file is linked as if uploaded, so the item is complete at once. Raises :class:`UnknownKit`
        (nothing stored) for an unknown or disabled kit.
        """
        bodies = [(seq, item, encode(item)) for seq, item in entries]
        if blobs:
            await self.require_kit(kit_id)  # no file is written for a refused kit
        # Written before the transaction, as a finished upload is; a file left by a failed
        # transaction has the name the next copy writes, and is linked then.
        inline = await self._write_inline(kit_id, entries, blobs or {})
        received = now_ms()
        stored: list[int] = []
        duplicates: list[int] = []
        waiting: list[int] = []
        rejected: list[tuple[int, str]] = []
        complete: list[int] = []
        dropped: list[str] = []
        async with self.transaction() as db:
            await db.lock_kit(kit_id)
            await _require_kit(db, kit_id)
            known, copies = await _stored_bodies(db, kit_id, {seq for seq, _, _ in bodies})
            rows: list[tuple[object, ...]] = []
            arrival = (link, received, via, relay_kit)
            arrivals: list[tuple[object, ...]] = []  # one per copy stored or counted
            for seq, item, body in bodies:
                if seq in known:
                    old_body, old_path = known[seq]
                    old = item if old_body == body else decode(old_body)
                    if old_body != body and not _same_item(seq, old, item):
                        reason = "序号已被另一条目占用 / seq already holds a different item"
                        log.warning("kit %d seq %d refused: %s", kit_id, seq, reason)
                        rejected.append((seq, reason))
                        continue
                    duplicates.append(seq)
                    copies[seq] += 1
                    arrivals.append((kit_id, seq, copies[seq], *arrival))
                    if _fidelity(item) > _fidelity(old):
                        values = _item_row(kit_id, seq, item, body, received, link, old_path)
                        await db.execute(_UPGRADE_ITEM, (*values[2:14], kit_id, seq))
                        known[seq] = (body, old_path)
                        old = item
                    if seq in inline and old_path is None and old.media is not None:
                        path = await _link_inline(db, kit_id, seq, old.media, inline[seq])
                        if path is not None:
                            await db.execute(
                                "UPDATE items SET media_path = ? WHERE kit_id = ? AND seq = ?",
                                (path, kit_id, seq),
                            )
                            known[seq] = (known[seq][0], path)
                            complete.append(seq)
                    continue
                media_path = None
                if item.media is not None:
                    media_path, stale = await _file_for_record(db, kit_id, seq, item)
                    dropped += stale
                    if media_path is None and seq in inline:
                        media_path = await _link_inline(db, kit_id, seq, item.media, inline[seq])
                known[seq] = (body, media_path)
                rows.append(_item_row(kit_id, seq, item, body, received, link, media_path))
                stored.append(seq)
                copies[seq] = 1
                arrivals.append((kit_id, seq, 1, *arrival))
                if item.media is None or media_path is not None:
                    complete.append(seq)
                else:
                    waiting.append(seq)
            await db.executemany(_INSERT_ITEM, rows)
            new = set(stored)
            await _take_receipts(
                db, kit_id, [(seq, item) for seq, item, _ in bodies if seq in new], link
            )
            if duplicates:
                await db.executemany(
                    "UPDATE items SET copies = copies + 1 WHERE kit_id = ? AND seq = ?",
                    [(kit_id, seq) for seq in duplicates],
                )
            if arrivals:
                await db.executemany(_INSERT_ARRIVAL, arrivals)
            await add_acked(db, kit_id, complete)
            for seq, (path, _, _) in inline.items():
                async with db.execute(
                    "SELECT path FROM media_files WHERE kit_id = ? AND seq = ?", (kit_id, seq)
                ) as cur:
                    recorded = await cur.fetchone()
                if recorded is None or recorded[0] != path:
                    dropped.append(path)  # written for nothing: the item has its file already
        await self._unlink(dropped)
        return Ingested(tuple(stored), tuple(duplicates), tuple(waiting), tuple(rejected))

    # -- orders -------------------------------------------------------------------------

    async def add_order(self, kit_id: int, target: str, text: str) -> Order:
        """Queue an order for ``kit_id``; :class:`BadFrame` if it could not travel,
        :class:`UnknownKit` for a kit that is not enrolled and enabled."""
        Order(1, target, text)  # the same limits as on the wire, checked before storing
        async with self.transaction() as db:
            await _require_kit(db, kit_id)
            async with db.execute(
                "INSERT INTO orders(kit_id, target, text, created_ms) VALUES (?, ?, ?, ?)"
                " RETURNING order_id",
                (kit_id, target, text, now_ms()),
            ) as cur:
                (order_id,) = await cur.fetchone()
        log.info("order %d for kit %d (%s): %s", order_id, kit_id, target or "kit", text)
        return Order(order_id, target, text)

    async def orders_to_send(
        self, kit_id: int, *, resend_after_s: float, limit: int = 8
    ) -> list[Order]:
        """Orders of ``kit_id`` without a receipt, not sent in the last ``resend_after_s``
        (oldest first); each is counted as sent now."""
        now = now_ms()
        # Read first: every answer to a kit asks, and almost always there is nothing due;
        # a write transaction only when there is (a copy sent twice is dropped by the kit).
        async with (
            self.reading() as db,
            db.execute(
                "SELECT order_id, target, text FROM orders WHERE kit_id = ? AND receipt_ms IS NULL"
                " AND (last_sent_ms IS NULL OR last_sent_ms <= ?) ORDER BY order_id LIMIT ?",
                (kit_id, now - int(resend_after_s * 1000), limit),
            ) as cur,
        ):
            rows = list(await cur.fetchall())
        if rows:
            async with self.transaction() as db:
                await db.lock_kit(kit_id)  # receipts update these rows too: no deadlock
                await db.executemany(
                    "UPDATE orders SET sent = sent + 1, last_sent_ms = ? WHERE order_id = ?",
                    [(now, row[0]) for row in rows],
                )
        return [Order(int(i), str(target), str(text)) for i, target, text in rows]

    async def orders(self, kit_id: int) -> list[dict[str, object]]:
        """Every order of ``kit_id`` with its delivery state, newest first."""
        async with (
            self.reading() as db,
            db.execute(
                "SELECT order_id, target, text, created_ms, sent, last_sent_ms, receipt_ms,"
                " receipt_link, delivered_ms, delivered_to, delivery_error"
                " FROM orders WHERE kit_id = ? ORDER BY order_id DESC",
                (kit_id,),
            ) as cur,
        ):
            rows = await cur.fetchall()
        keys = ("order_id", "target", "text", "created_ms", "sent", "last_sent_ms")
        return [
            {
                **dict(zip(keys, row[:6], strict=True)),
                "state": _order_state(row[4], row[6], row[8], row[10]),
                "receipt_ms": row[6],
                "receipt_link": row[7],
                # The member (or ^all) the kit's radio got the order to, by the mesh's ACK.
                "delivered_ms": row[8],
                "delivered_to": row[9],
                "delivery_error": row[10],  # the kit gave up: the mesh's reason
            }
            for row in rows
        ]

    async def _write_inline(
        self, kit_id: int, entries: Sequence[tuple[int, Item]], blobs: Mapping[int, bytes]
    ) -> dict[int, tuple[str, int, str]]:
        """Put each inline file in the media store (durably): {seq: (path, size, sha256)}.

        Put before the transaction that records it, like a finished upload; a file the
        transaction does not record is removed again after it. A file the media store
        cannot take now is left out: its item is stored waiting for it (not acknowledged),
        so the kit sends it again.
        """
        out: dict[int, tuple[str, int, str]] = {}
        for seq, item in entries:
            blob = blobs.get(seq)
            if blob is None:
                continue
            sha256 = hashlib.sha256(blob).hexdigest()
            ref = item.media
            if ref is None or not _media_matches(ref, sha256, len(blob)):
                log.warning(
                    "kit %d seq %d: inline file does not match its item; ignored", kit_id, seq
                )
                continue
            suffix = mimetypes.guess_extension(ref.mime) or ""
            path = f"{kit_id}/{seq}-inline-{sha256[:12]}{suffix}"
            try:
                await self.media.put_bytes(path, blob)
            except MediaUnavailable as err:
                log.warning("kit %d seq %d: inline file not stored: %s", kit_id, seq, err.en)
                continue
            out[seq] = (path, len(blob), sha256)
        return out

    # -- the export feed ----------------------------------------------------------------

    async def sequence_feed(self, limit: int = 1000) -> int:
        """Give stored items not yet in the export feed (new, upgraded, or now with their
        file) the next feed positions; how many it numbered.

        Only committed items are numbered, one numbering at a time (whichever worker), so
        a reader's cursor (the last position it took) never skips an item; rows an ingest
        holds are left for the next call, so ingest never waits for it.
        """
        async with self.transaction() as db:
            await db.lock_feed()
            async with db.execute(
                "SELECT kit_id, seq FROM items WHERE feed_id IS NULL"
                " ORDER BY received_ms, kit_id, seq LIMIT ?" + db.skip_locked,
                (limit,),
            ) as cur:
                rows = list(await cur.fetchall())
            if not rows:
                return 0
            async with db.execute("SELECT COALESCE(MAX(feed_id), 0) FROM items") as cur:
                (top,) = await cur.fetchone()
            await db.executemany(
                "UPDATE items SET feed_id = ? WHERE kit_id = ? AND seq = ?",
                [(top + n, kit, seq) for n, (kit, seq) in enumerate(rows, 1)],
            )
        return len(rows)

    async def feed(self, after: int, limit: int) -> list[FeedEntry]:
        """Up to ``limit`` items of the export feed past position ``after``, in order."""
        async with (
            self.reading() as db,
            db.execute(
                "SELECT i.feed_id, k.name, i.kit_id, i.seq, i.body, i.received_ms, i.link,"
                " i.copies, i.media_path FROM items i JOIN kits k ON k.kit_id = i.kit_id"
                " WHERE i.feed_id > ? ORDER BY i.feed_id LIMIT ?",
                (after, limit),
            ) as cur,
        ):
            rows = await cur.fetchall()
        return [
            FeedEntry(
                int(feed_id),
                str(name),
                StoredItem(kit, seq, decode(bytes(body)), received, link, copies, media_path),
            )
            for feed_id, name, kit, seq, body, received, link, copies, media_path in rows
        ]

    async def export_cursor(self, name: str) -> int:
        """The last feed position export ``name`` delivered (0 before the first)."""
        async with (
            self.reading() as db,
            db.execute("SELECT value FROM meta WHERE key = ?", (f"export_cursor:{name}",)) as cur,
        ):
            row = await cur.fetchone()
        return 0 if row is None else int(row[0])

    async def set_export_cursor(self, name: str, position: int) -> None:
        async with self.transaction() as db:
            await db.execute(
                "INSERT INTO meta VALUES (?, ?)"
                " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (f"export_cursor:{name}", str(position)),
            )

    async def acked_ranges(self, kit_id: int) -> list[tuple[int, int]]:
        """Inclusive ranges of the kit's complete items, in order (what the kit may forget)."""
        async with (
            self.reading() as db,
            db.execute("SELECT lo, hi FROM acked WHERE kit_id = ? ORDER BY lo", (kit_id,)) as cur,
        ):
            return [(int(lo), int(hi)) for lo, hi in await cur.fetchall()]

    async def item(self, kit_id: int, seq: int) -> StoredItem | None:
        async with (
            self.reading() as db,
            db.execute(
                "SELECT body, received_ms, link, copies, media_path FROM items"
                " WHERE kit_id = ? AND seq = ?",
                (kit_id, seq),
            ) as cur,
        ):
            row = await cur.fetchone()
        if row is None:
            return None
        body, received, link, copies, media_path = row
        return StoredItem(kit_id, seq, decode(bytes(body)), received, link, copies, media_path)

    # -- narrow links -------------------------------------------------------------------

    async def reserve_msg_seqs(self, kit_id: int, count: int) -> range:
        """Reserve up to ``count`` downlink message sequences for ``kit_id``, durably.

        Sequences start at 1 and are never handed out twice, whatever restarts or how
        many gateways share the store (the tag's nonce will build on them). An empty
        range means all 2^32 - 1 are used.
        """
        key = f"downlink_msg_seq:{kit_id}"
        async with self.transaction() as db:
            # The row exists before it is locked, so two workers never both start at 1.
            await db.execute("INSERT INTO meta VALUES (?, '1') ON CONFLICT(key) DO NOTHING", (key,))
            async with db.execute(
                "SELECT value FROM meta WHERE key = ?" + db.for_update, (key,)
            ) as cur:
                row = await cur.fetchone()
            start = int(row[0])
            end = min(start + max(count, 0), MAX_MSG_SEQ + 1)
            if end > start:
                await db.execute(
                    "INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE"
                    " SET value = excluded.value",
                    (key, str(end)),
                )
        return range(start, max(start, end))

    # -- media --------------------------------------------------------------------------

    async def attach_media(
        self, upload_id: str, kit_id: int, seq: int, size: int, sha256: str, path: str
    ) -> Attached:
        """Record upload ``upload_id``'s complete file (to be renamed to ``path``) for its item.

        One transaction: the upload is marked done, the file recorded, and if the item's
        record is already here the item becomes complete and acknowledged.
        """
        async with self.transaction() as db:
            await db.lock_kit(kit_id)  # against an ingest of the record in another worker
            async with db.execute(
                "SELECT body FROM items WHERE kit_id = ? AND seq = ?", (kit_id, seq)
            ) as cur:
                row = await cur.fetchone()
            record = decode(bytes(row[0])) if row is not None else None
            ref = record.media if record is not None else None
            if record is not None and (ref is None or not _media_matches(ref, sha256, size)):
                await db.execute("UPDATE uploads SET received = 0 WHERE id = ?", (upload_id,))
                return Attached.MISMATCH
            await db.execute(
                "UPDATE uploads SET received = length, done = 1 WHERE id = ?", (upload_id,)
            )
            async with db.execute(
                "SELECT 1 FROM media_files WHERE kit_id = ? AND seq = ?", (kit_id, seq)
            ) as cur:
                if await cur.fetchone() is not None:
                    return Attached.DUPLICATE
            await db.execute(
                "INSERT INTO media_files VALUES (?, ?, ?, ?, ?, ?, ?)",
                (kit_id, seq, path, size, sha256, upload_id, now_ms()),
            )
            if record is None:
                return Attached.WAITING
            await db.execute(
                "UPDATE items SET media_path = ?, feed_id = NULL WHERE kit_id = ? AND seq = ?",
                (path, kit_id, seq),
            )
            await add_acked(db, kit_id, [seq])
            return Attached.LINKED

    async def _unlink(self, paths: Iterable[str]) -> None:
        """Remove files no row names any more; one the store cannot remove now stays
        (unnamed, so harmless) and is logged."""
        for rel in paths:
            try:
                await self.media.delete(rel)
            except MediaUnavailable as err:
                log.warning("media file %s left in the store: %s", rel, err.en)


def _order_state(
    sent: int, receipt_ms: int | None, delivered_ms: int | None, error: str | None
) -> str:
    """queued → sent → delivered (the kit has it; for a member, the radio too unless the
    kit reported why not: failed)."""
    if receipt_ms is None:
        return "sent" if sent else "queued"
    return "failed" if error is not None and delivered_ms is None else "delivered"


async def _kit(db: Conn, kit_id: int) -> Kit | None:
    async with db.execute("SELECT name, enabled FROM kits WHERE kit_id = ?", (kit_id,)) as cur:
        row = await cur.fetchone()
    return None if row is None else Kit(kit_id, row[0], bool(row[1]))


async def _require_kit(db: Conn, kit_id: int) -> Kit:
    kit = await _kit(db, kit_id)
    if kit is None:
        raise UnknownKit(f"设备 {kit_id} 未登记", f"kit {kit_id} is not enrolled")
    if not kit.enabled:
        raise UnknownKit(f"设备 {kit_id} 已停用", f"kit {kit_id} is disabled")
    return kit


_INSERT_ITEM = (
    "INSERT INTO items (kit_id, seq, uid, kind, priority, created_ms, clock_ok, source,"
    " text, lat, lon, alt, data, body, received_ms, link, media_path)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


_INSERT_ARRIVAL = (
    "INSERT INTO arrivals (kit_id, seq, copy_no, link, received_ms, via, relay_kit)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)


_UPGRADE_ITEM = (
    "UPDATE items SET uid = ?, kind = ?, priority = ?, created_ms = ?, clock_ok = ?,"
    " source = ?, text = ?, lat = ?, lon = ?, alt = ?, data = ?, body = ?,"
    " feed_id = NULL"  # exported again, as the better copy
    " WHERE kit_id = ? AND seq = ?"
)


def _narrow_prefix(ref: MediaRef) -> str | None:
    """The 16-hex sha256 prefix of a media reference that came over a narrow link, else None.

    A narrow link names a file by size and the first 8 bytes of its sha256, padded with
    "0" (see :mod:`uplink.compact`); the whole file, when it arrives, matches by prefix.
    """
    prefix = ref.sha256[:16]
    if ref.path.startswith("narrow/") and ref.sha256 == prefix.ljust(64, "0"):
        return prefix
    return None


def _media_matches(ref: MediaRef, sha256: str, size: int) -> bool:
    """Whether a file of ``size`` bytes hashing to ``sha256`` is the one ``ref`` names."""
    if ref.size != size:
        return False
    prefix = _narrow_prefix(ref)
    return ref.sha256 == sha256 or (prefix is not None and sha256.startswith(prefix))


def _fidelity(item: Item) -> tuple[bool, bool]:
    """How much of the kit's item a copy keeps: IP copies keep all, narrow ones round."""
    whole_sha = item.media is None or _narrow_prefix(item.media) is None
    return (narrow_key(item.uid) is None, whole_sha)


async def _take_receipts(
    db: Conn, kit_id: int, items: Sequence[tuple[int, Item]], link: str
) -> None:
    """A kit's receipt item closes the order it names (the first receipt counts); the
    link recorded is the one the order reached the kit by, as the receipt says.

    A mesh delivery receipt (``data.member`` and ``data.delivered``) also records that the
    member got it (the first delivery counts), or why the kit gave up, until delivered."""
    for _, item in items:
        order_id = item.data.get("order_id") if item.kind is Kind.RECEIPT else None
        if isinstance(order_id, int) and not isinstance(order_id, bool):
            via = item.data.get("link")
            await db.execute(
                "UPDATE orders SET receipt_ms = ?, receipt_link = ?"
                " WHERE order_id = ? AND kit_id = ? AND receipt_ms IS NULL",
                (item.created_ms, via if isinstance(via, str) else link, order_id, kit_id),
            )
            member, delivered = item.data.get("member"), item.data.get("delivered")
            if not isinstance(member, str) or not isinstance(delivered, bool):
                continue
            if delivered:
                await db.execute(
                    "UPDATE orders SET delivered_ms = ?, delivered_to = ?, delivery_error = NULL"
                    " WHERE order_id = ? AND kit_id = ? AND delivered_ms IS NULL",
                    (item.created_ms, member, order_id, kit_id),
                )
            else:
                error = item.data.get("error")
                await db.execute(
                    "UPDATE orders SET delivery_error = ?"
                    " WHERE order_id = ? AND kit_id = ? AND delivered_ms IS NULL",
                    (error if isinstance(error, str) else "FAILED", order_id, kit_id),
                )


_DELIVERY_COLUMNS = (
    ("delivered_ms", "INTEGER"),
    ("delivered_to", "TEXT"),
    ("delivery_error", "TEXT"),
)


async def _add_delivery_columns(db: aiosqlite.Connection) -> None:
    """The orders' mesh delivery columns, added to a store made before they existed."""
    async with db.execute("PRAGMA table_info(orders)") as cur:
        have = {row[1] for row in await cur.fetchall()}
    for name, sql_type in _DELIVERY_COLUMNS:
        if name not in have:
            try:
                await db.execute(f"ALTER TABLE orders ADD COLUMN {name} {sql_type}")
            except aiosqlite.OperationalError as err:  # another worker added it just now
                if "duplicate column" not in str(err):
                    raise


# The export feed's position; NULL until numbered (see Store.sequence_feed).
_FEED_INDEXES = (
    "CREATE INDEX IF NOT EXISTS items_feed ON items(feed_id);\n"
    "CREATE INDEX IF NOT EXISTS items_unsequenced ON items(received_ms) WHERE feed_id IS NULL;\n"
)


async def _add_feed_column(db: aiosqlite.Connection) -> None:
    """The items' feed position, added to a SQLite store made before it existed."""
    async with db.execute("PRAGMA table_info(items)") as cur:
        have = {row[1] for row in await cur.fetchall()}
    if "feed_id" not in have:
        await db.execute("ALTER TABLE items ADD COLUMN feed_id INTEGER")
    await db.executescript(_FEED_INDEXES)


async def _open_pg(url: str, pool_size: int, wait_s: float) -> PgDatabase:
    """The PostgreSQL store at ``url``: its schema made or checked (once, whichever worker
    comes first), the orders' delivery columns added as on SQLite."""
    db = await PgDatabase.connect(url, pool_size=pool_size, wait_s=wait_s)
    try:
        columns = "".join(
            f"ALTER TABLE orders ADD COLUMN IF NOT EXISTS {name} {column_type(t, 'postgresql')};\n"
            for name, t in _DELIVERY_COLUMNS
        )
        await db.serialised(
            ddl("postgresql")
            + columns
            + "ALTER TABLE items ADD COLUMN IF NOT EXISTS feed_id BIGINT;\n"
            + _FEED_INDEXES
            + BACKFILL_ARRIVALS
            + f"INSERT INTO meta VALUES ('schema', '{SCHEMA_VERSION}') ON CONFLICT DO NOTHING;"
        )
        async with (
            db.reading() as conn,
            conn.execute("SELECT value FROM meta WHERE key = 'schema'") as cur,
        ):
            row = await cur.fetchone()
        if row is None or int(row[0]) != SCHEMA_VERSION:
            raise RuntimeError(f"centre store schema {row} is not {SCHEMA_VERSION}")
    except BaseException:
        await db.close()
        raise
    log.info("centre store on PostgreSQL %s", redact(url))
    return db


def _same_item(seq: int, a: Item, b: Item) -> bool:
    """Whether two differing encodings are copies of one item, one of them from a narrow link.

    A narrow link carries an item with a uid made from (kit, seq), whole seconds, fixed-
    point coordinates and an 8-byte media checksum; two copies are the same item when
    they pack to the same narrow record.
    """
    if narrow_key(a.uid) is None and narrow_key(b.uid) is None:
        return False
    try:
        return pack_item(seq, a) == pack_item(seq, b)
    except (ValueError, KeyError):  # BadFrame, or what the narrow format cannot carry
        return False


async def _link_inline(
    db: Conn, kit_id: int, seq: int, ref: MediaRef, file: tuple[str, int, str]
) -> str | None:
    """Record an inline file for a record with no file yet; its path if it matches ``ref``."""
    path, size, sha256 = file
    if not _media_matches(ref, sha256, size):
        return None
    await db.execute(
        "INSERT INTO media_files VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        (kit_id, seq, path, size, sha256, INLINE_UPLOAD_ID, now_ms()),
    )
    async with db.execute(
        "SELECT path FROM media_files WHERE kit_id = ? AND seq = ?", (kit_id, seq)
    ) as cur:
        row = await cur.fetchone()
    return None if row is None else str(row[0])


def _item_row(
    kit_id: int,
    seq: int,
    item: Item,
    body: bytes,
    received: int,
    link: str,
    media_path: str | None,
) -> tuple[object, ...]:
    pos = item.position
    return (
        kit_id,
        seq,
        item.uid.bytes,
        item.kind.value,
        int(item.priority),
        item.created_ms,
        int(item.clock_ok),
        item.source,
        item.text,
        pos.lat if pos else None,
        pos.lon if pos else None,
        pos.alt_m if pos else None,
        json.dumps(dict(item.data), ensure_ascii=False, sort_keys=True),
        body,
        received,
        link,
        media_path,
    )


async def _stored_bodies(
    db: Conn, kit_id: int, seqs: set[int]
) -> tuple[dict[int, tuple[bytes, str | None]], dict[int, int]]:
    """(encoding, media path), and copies counted, of those of ``seqs`` the kit already
    has: one query per 500."""
    found: dict[int, tuple[bytes, str | None]] = {}
    copies: dict[int, int] = {}
    ordered = sorted(seqs)
    for i in range(0, len(ordered), 500):
        chunk = ordered[i : i + 500]
        marks = ",".join("?" * len(chunk))
        async with db.execute(
            "SELECT seq, body, media_path, copies FROM items"
            f" WHERE kit_id = ? AND seq IN ({marks})",
            (kit_id, *chunk),
        ) as cur:
            for seq, b, p, n in await cur.fetchall():
                found[int(seq)] = (bytes(b), p)
                copies[int(seq)] = int(n)
    return found, copies


async def _file_for_record(
    db: Conn, kit_id: int, seq: int, item: Item
) -> tuple[str | None, list[str]]:
    """The already-arrived file for a new media record: (its path, []) if it matches.

    A file that contradicts the record (whose sha256 the kit computed from its own copy)
    is dropped with its upload, so the kit's next HEAD gets 404 and it uploads afresh.
    Returns (None, [paths to delete after commit]) then.
    """
    async with db.execute(
        "SELECT path, size, sha256, upload_id FROM media_files WHERE kit_id = ? AND seq = ?",
        (kit_id, seq),
    ) as cur:
        row = await cur.fetchone()
    if row is None:
        return None, []
    path, size, sha256, upload_id = row
    ref = item.media
    if ref is not None and _media_matches(ref, sha256, size):
        return str(path), []
    log.warning(
        "kit %d seq %d: media file %s (sha256 %s, %d bytes) contradicts the record; dropped",
        kit_id,
        seq,
        path,
        sha256,
        size,
    )
    await db.execute("DELETE FROM media_files WHERE kit_id = ? AND seq = ?", (kit_id, seq))
    await db.execute("DELETE FROM uploads WHERE id = ?", (upload_id,))
    return None, [str(path)]
