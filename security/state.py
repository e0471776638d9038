"""Durable security state: replay windows, revocations and the hash-chained audit log.

One SQLite file of its own (the centre's ``security.sqlite3`` beside its store, the
kit's in its uplink folder), so nothing here touches the item store. Each accepted
(peer, key, message sequence, fragment) is a row, so a frame replayed after a restart
is still refused. Every audit row carries the SHA-256 of the row before it: editing or
deleting a row breaks the chain at that row (:meth:`SecurityState.verify_chain`).
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

WINDOW = 4096  # message sequences per (peer, key): ≥ 1,024 so a P0 over every link is taken
PRUNE_EVERY = 1024  # accepted frames between two clean-ups of rows below a window
REVOKED_TTL_S = 1.0  # how long the list of revoked kits is trusted before it is read again

_SCHEMA = """
CREATE TABLE IF NOT EXISTS seen (
    peer INTEGER NOT NULL, key BLOB NOT NULL, seq INTEGER NOT NULL, idx INTEGER NOT NULL,
    PRIMARY KEY (peer, key, seq, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS revoked (
    kit_id INTEGER PRIMARY KEY, at REAL NOT NULL, reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY, at REAL NOT NULL, event TEXT NOT NULL, kit_id INTEGER,
    reason TEXT NOT NULL, detail TEXT NOT NULL, link TEXT NOT NULL,
    prev BLOB NOT NULL, hash BLOB NOT NULL
);
"""


@dataclass(slots=True)
class ReplayWindow:
    """Which (sequence, fragment) pairs of one peer's key were accepted, ``width`` back."""

    width: int = WINDOW
    top: int = -1
    seen: dict[int, set[int]] = field(default_factory=dict)
    marked: int = 0

    def check(self, seq: int, index: int) -> str | None:
        """None if fresh; else ``"replay"`` (seen) or ``"stale"`` (older than the window)."""
        if seq <= self.top - self.width:
            return "stale"
        if index in self.seen.get(seq, ()):
            return "replay"
        return None

    def mark(self, seq: int, index: int) -> None:
        self.seen.setdefault(seq, set()).add(index)
        self.marked += 1
        if seq > self.top:
            self.top = seq
            if len(self.seen) > self.width:
                floor = self.top - self.width
                for old in [s for s in self.seen if s <= floor]:
                    del self.seen[old]


# Longest texts an audit row keeps (longer ones are cut, marked with …), so that any row
# fits one mirrored audit item (security.mirror); control characters become spaces.
EVENT_CHARS, REASON_CHARS, DETAIL_CHARS, LINK_CHARS = 40, 120, 480, 64
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def clip(text: str, limit: int) -> str:
    text = _CONTROL.sub(" ", text).encode("utf-8", "replace").decode()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def row_hash(prev: bytes, row: tuple[object, ...]) -> bytes:
    """The chain value of an audit row: SHA-256 of the previous row's plus this row's
    (at, event, kit_id, reason, detail, link) as compact JSON."""
    text = json.dumps(row, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(prev + text.encode()).digest()


@dataclass(frozen=True, slots=True)
class AuditRow:
    """One row of the audit log with its chain values."""

    id: int
    at: float
    event: str
    kit_id: int | None
    reason: str
    detail: str
    link: str
    prev: bytes
    hash: bytes

    @property
    def fields(self) -> tuple[float, str, int | None, str, str, str]:
        return (self.at, self.event, self.kit_id, self.reason, self.detail, self.link)


class SecurityState:
    """The security database; synchronous (each call is one short SQLite transaction)."""

    def __init__(self, path: Path, *, width: int = WINDOW) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.width = width
        self._db = sqlite3.connect(path, isolation_level=None, timeout=10.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: a WAL commit is fsynced, so a replay row (and an audit row) survives a power
        # cut once the call returns; NORMAL could roll both back (bench/security.py: accept_per_s).
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._windows: dict[tuple[int, bytes], ReplayWindow] = {}
        self._revoked: frozenset[int] = frozenset()
        self._revoked_at = -REVOKED_TTL_S  # monotonic time the set was read

    def close(self) -> None:
        self._db.close()

    # -- replay windows -----------------------------------------------------------------

    def _window(self, peer: int, key: bytes) -> ReplayWindow:
        window = self._windows.get((peer, key))
        if window is None:
            window = ReplayWindow(self.width)
            (top,) = self._db.execute(
                "SELECT max(seq) FROM seen WHERE peer = ? AND key = ?", (peer, key)
            ).fetchone()
            if top is not None:
                window.top = top
                for seq, idx in self._db.execute(
                    "SELECT seq, idx FROM seen WHERE peer = ? AND key = ? AND seq > ?",
                    (peer, key, top - self.width),
                ):
                    window.seen.setdefault(seq, set()).add(idx)
            self._windows[(peer, key)] = window
        return window

    def accept(self, peer: int, key: bytes, seq: int, index: int) -> str | None:
        """Take (seq, index) of ``peer`` under ``key`` once: None, or why it is refused."""
        window = self._window(peer, key)
        why = window.check(seq, index)
        if why is not None:
            return why
        cur = self._db.execute(
            "INSERT OR IGNORE INTO seen VALUES (?, ?, ?, ?)", (peer, key, seq, index)
        )
        window.mark(seq, index)
        if not cur.rowcount:  # another process sharing this file (a second worker) took it
            return "replay"
        if window.marked % PRUNE_EVERY == 0:
            self._db.execute(
                "DELETE FROM seen WHERE peer = ? AND key = ? AND seq <= ?",
                (peer, key, window.top - self.width),
            )
        return None

    # -- revocations --------------------------------------------------------------------

    def revoke(self, kit_id: int, reason: str) -> bool:
        """Revoke ``kit_id``; False if it already was."""
        cur = self._db.execute(
            "INSERT OR IGNORE INTO revoked VALUES (?, ?, ?)", (kit_id, time.time(), reason)
        )
        self._revoked_at = -REVOKED_TTL_S
        if cur.rowcount:
            self.audit("revoke", kit_id, "revoked", reason)
        return bool(cur.rowcount)

    def reinstate(self, kit_id: int, reason: str) -> bool:
        cur = self._db.execute("DELETE FROM revoked WHERE kit_id = ?", (kit_id,))
        self._revoked_at = -REVOKED_TTL_S
        if cur.rowcount:
            self.audit("reinstate", kit_id, "reinstated", reason)
        return bool(cur.rowcount)

    def revoked(self, kit_id: int) -> bool:
        """Whether ``kit_id`` is revoked; a revocation by another process counts within 1 s."""
        now = time.monotonic()
        if now - self._revoked_at >= REVOKED_TTL_S:
            self._revoked = frozenset(r[0] for r in self._db.execute("SELECT kit_id FROM revoked"))
            self._revoked_at = now
        return kit_id in self._revoked

    # -- audit --------------------------------------------------------------------------

    def audit(
        self, event: str, kit_id: int | None, reason: str, detail: str = "", link: str = ""
    ) -> None:
        """Append one hash-chained row (who: kit_id and link; what: event; why: reason)."""
        event, reason = clip(event, EVENT_CHARS), clip(reason, REASON_CHARS)
        detail, link = clip(detail, DETAIL_CHARS), clip(link, LINK_CHARS)
        self._db.execute("BEGIN IMMEDIATE")
        try:
            last = self._db.execute("SELECT hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
            prev = last[0] if last else bytes(32)
            at = time.time()
            digest = row_hash(prev, (at, event, kit_id, reason, detail, link))
            self._db.execute(
                "INSERT INTO audit (at, event, kit_id, reason, detail, link, prev, hash) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (at, event, kit_id, reason, detail, link, prev, digest),
            )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def audit_rows(self, event: str | None = None) -> list[tuple[int | None, str, str, str]]:
        """(kit_id, reason, detail, link) of every audit row, or of one ``event``, in order."""
        sql = "SELECT kit_id, reason, detail, link FROM audit"
        args: tuple[str, ...] = ()
        if event is not None:
            sql += " WHERE event = ?"
            args = (event,)
        return list(self._db.execute(sql + " ORDER BY id", args))

    def rows_after(self, after: int, limit: int) -> list[AuditRow]:
        """Up to ``limit`` audit rows with an id above ``after``, in order, chain values too."""
        return [
            AuditRow(int(r[0]), r[1], r[2], r[3], r[4], r[5], r[6], bytes(r[7]), bytes(r[8]))
            for r in self._db.execute(
                "SELECT id, at, event, kit_id, reason, detail, link, prev, hash FROM audit"
                " WHERE id > ? ORDER BY id LIMIT ?",
                (after, limit),
            )
        ]

    def last_event(self, *events: str) -> str | None:
        """The newest audit row's event among ``events`` (e.g. the last key change), or None."""
        marks = ",".join("?" * len(events))
        row = self._db.execute(
            f"SELECT event FROM audit WHERE event IN ({marks}) ORDER BY id DESC LIMIT 1", events
        ).fetchone()
        return None if row is None else str(row[0])

    def last_audit_id(self) -> int:
        (top,) = self._db.execute("SELECT coalesce(max(id), 0) FROM audit").fetchone()
        return int(top)

    def verify_chain(self) -> int | None:
        """The id of the first audit row that does not chain, or None if all do."""
        prev = bytes(32)
        for row in self._db.execute(
            "SELECT id, at, event, kit_id, reason, detail, link, prev, hash FROM audit ORDER BY id"
        ):
            rid, *fields, row_prev, digest = row
            if row_prev != prev or row_hash(prev, tuple(fields)) != digest:
                return int(rid)
            prev = digest
        return None
