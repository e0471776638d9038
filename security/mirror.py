"""The kit's audit log mirrored to the centre as low-priority items, and checked there.

The kit files its chained audit rows (:class:`~security.state.SecurityState`) in batches
as ``audit`` items of class P4: bulk goes after P0–P3, only on IP links fast enough for
it, never over Beidou or Tiantong SMS, and waits while the kit saves power. An item's
text carries the rows with their chain values: the ``prev`` of the first row and every
row's ``hash``, so the centre recomputes each row and follows the chain across batches.

The cursor (last row mirrored) moves only after the edge daemon accepted the item. The
range of the batch is written down before it is filed, so after a crash the very same
rows are filed again as the very same item (its uid derives from the kit, the range and
the last row's hash): the edge store answers with the item it has, nothing is doubled.
At the centre, :func:`verify` also merges identical copies of a row.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
import os
import sqlite3
import sys
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge.errors import EdgeUnavailable, KitError
from edge.item import MAX_CLOCK_MS, MAX_TEXT_CHARS, Item, Kind, Priority, new_item
from security.state import AuditRow, SecurityState, row_hash

if TYPE_CHECKING:
    from centre.config import CentreConfig
    from centre.store import Store
    from config.schema import KitConfig
    from edge.client import AsyncEdgeClient

log = logging.getLogger("security")

PRIORITY = Priority.P4
BATCH_ROWS = 40  # rows per item at most (fewer when their text would pass MAX_TEXT_CHARS)
EVERY_S = 600.0  # a batch short of BATCH_ROWS still goes after this long
POLL_S = 30.0  # how often the mirror looks for new rows
CURSOR = "uplink/audit-mirror.json"  # under the kit's data folder
_UID_SPACE = uuid.UUID("6f1d7c52-5a0e-4b8e-9c43-2f6a0d8e4b17")
_GENESIS = bytes(32)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _row_json(row: AuditRow) -> str:
    fields = [row.id, row.at, row.event, row.kit_id, row.reason, row.detail, row.link]
    return json.dumps([*fields, _b64(row.hash)], ensure_ascii=False, separators=(",", ":"))


def _head(kit_id: int, prev: bytes) -> str:
    return f'{{"audit":1,"kit":{kit_id},"prev":"{_b64(prev)}","rows":['


def fitting(kit_id: int, rows: Sequence[AuditRow], limit: int = BATCH_ROWS) -> int:
    """How many of ``rows`` (at least one) one item's text carries."""
    if not rows:
        return 0
    used = len(_head(kit_id, rows[0].prev)) + 2
    count = 0
    for row in rows[:limit]:
        size = len(_row_json(row)) + (1 if count else 0)
        if count and used + size > MAX_TEXT_CHARS:
            break
        used += size
        count += 1
    return count


def batch_uid(kit_id: int, rows: Sequence[AuditRow]) -> uuid.UUID:
    """The same rows always make the same uid (a re-filed batch is the item stored)."""
    return uuid.uuid5(_UID_SPACE, f"{kit_id}:{rows[0].id}:{rows[-1].id}:{rows[-1].hash.hex()}")


def batch_item(kit_id: int, rows: Sequence[AuditRow]) -> Item:
    """One audit item: deterministic in every field, so filing it again changes nothing."""
    text = _head(kit_id, rows[0].prev) + ",".join(_row_json(r) for r in rows) + "]}"
    item = new_item(
        Kind.AUDIT,
        source="kit",
        priority=PRIORITY,
        text=text,
        created_ms=min(max(int(rows[-1].at * 1000), 0), MAX_CLOCK_MS),
        clock_ok=False,  # the audit's own clock: not vouched for by GNSS
    )
    return dataclasses.replace(item, uid=batch_uid(kit_id, rows))


# -- the kit's end ------------------------------------------------------------------------


@dataclass(slots=True)
class Cursor:
    """The last row the centre's outbox has, and the range being filed (if any)."""

    mirrored: int = 0
    pending: tuple[int, int] | None = None


def read_cursor(path: Path) -> Cursor:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        pending = raw.get("pending")
        return Cursor(
            int(raw["mirrored"]), None if pending is None else (int(pending[0]), int(pending[1]))
        )
    except FileNotFoundError:
        return Cursor()
    except (ValueError, KeyError, TypeError, AttributeError):
        raise KitError(
            f"审计镜像游标文件损坏：{path}（删除后将从头重新镜像）",
            f"audit mirror cursor corrupt: {path} (delete it to mirror from the start again)",
        ) from None


def write_cursor(path: Path, cursor: Cursor) -> None:
    """Atomically and durably (fsync of the file and its folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    data = {"mirrored": cursor.mirrored, "pending": cursor.pending}
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(data) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class AuditMirror:
    """Files the kit's audit rows to the outbox in batches, one durable step at a time."""

    def __init__(
        self,
        state: SecurityState,
        kit_id: int,
        cursor_path: Path,
        *,
        batch_rows: int = BATCH_ROWS,
        every_s: float = EVERY_S,
        poll_s: float = POLL_S,
    ) -> None:
        self.state = state
        self.kit_id = kit_id
        self.cursor_path = cursor_path
        self.batch_rows = batch_rows
        self.every_s = every_s
        self.poll_s = poll_s
        self.cursor = read_cursor(cursor_path)
        self._filed_at = time.monotonic()

    def _rows(self, first: int, last: int) -> list[AuditRow]:
        return [r for r in self.state.rows_after(first - 1, last - first + 1) if r.id <= last]

    def next_batch(self, *, force: bool = False) -> list[AuditRow]:
        """The rows to file now (the range left pending by a crash first); [] to wait."""
        if self.cursor.pending is not None:
            first, last = self.cursor.pending
            rows = self._rows(first, last)
            if rows and rows[0].id == first and rows[-1].id == last:
                return rows
            log.warning(
                "审计行 %d–%d 已不在本机日志中，跳过 / audit rows %d-%d are gone from the "
                "kit's log: not filed",
                first,
                last,
                first,
                last,
            )
            self._save(Cursor(last))
        if self.cursor.mirrored > self.state.last_audit_id():
            log.warning(
                "本机审计日志比镜像游标短（日志被重建？），从头镜像 / the kit's audit log ends "
                "before the mirror's cursor (log made anew?): mirroring it from the start"
            )
            self._save(Cursor())
        rows = self.state.rows_after(self.cursor.mirrored, self.batch_rows)
        due = force or time.monotonic() - self._filed_at >= self.every_s
        if not rows or (len(rows) < self.batch_rows and not due):
            return []
        rows = rows[: fitting(self.kit_id, rows, self.batch_rows)]
        self._save(Cursor(self.cursor.mirrored, (rows[0].id, rows[-1].id)))
        return rows

    def _save(self, cursor: Cursor) -> None:
        write_cursor(self.cursor_path, cursor)
        self.cursor = cursor

    def filed(self, rows: Sequence[AuditRow]) -> None:
        """The edge daemon has the batch: move the cursor past it."""
        self._save(Cursor(rows[-1].id))
        self._filed_at = time.monotonic()

    async def step(self, edge: AsyncEdgeClient, *, force: bool = False) -> int:
        """File at most one batch; the number of rows filed (0: nothing was due)."""
        rows = self.next_batch(force=force)
        if not rows:
            return 0
        answer = await edge.accept(batch_item(self.kit_id, rows))
        self.filed(rows)
        log.info(
            "审计行 %d–%d 已交付发送（条目 %s）/ audit rows %d-%d filed as item %s",
            rows[0].id,
            rows[-1].id,
            answer.get("seq"),
            rows[0].id,
            rows[-1].id,
            answer.get("seq"),
        )
        return len(rows)

    async def run(self, edge: AsyncEdgeClient) -> None:
        """File batches until cancelled; a failure is logged and tried again later."""
        while True:
            try:
                filed = await self.step(edge)
            except EdgeUnavailable as exc:
                log.info("audit mirror: %s", exc)
                filed = 0
            except (KitError, OSError, sqlite3.Error) as exc:
                log.warning("审计镜像暂停 / audit mirror paused: %s", exc)
                filed = 0
            except Exception:  # a bug here must not stop the uplink that runs it
                log.exception("审计镜像出错 / audit mirror failed; trying again later")
                filed = 0
            if not filed:
                await asyncio.sleep(self.poll_s)


# -- the centre's end ---------------------------------------------------------------------


class BadAudit(KitError, ValueError):
    """An audit item whose text is not a batch of audit rows."""


@dataclass(frozen=True, slots=True)
class Batch:
    """The rows of one audit item as the centre stored it."""

    seq: int  # the item's sequence number at the centre
    rows: tuple[AuditRow, ...]


def parse_batch(seq: int, text: str | None) -> Batch:
    """Rows of an audit item's text; :class:`BadAudit` if it is not one (outside input)."""
    try:
        raw = json.loads(text or "")
        prev = base64.b64decode(raw["prev"], validate=True)
        rows: list[AuditRow] = []
        for entry in raw["rows"]:
            rid, at, event, kit_id, reason, detail, link, digest = entry
            if not (
                type(rid) is int
                and type(at) in (int, float)
                and all(isinstance(v, str) for v in (event, reason, detail, link))
                and (kit_id is None or type(kit_id) is int)
            ):
                raise TypeError
            digest_raw = base64.b64decode(digest, validate=True)
            rows.append(AuditRow(rid, at, event, kit_id, reason, detail, link, prev, digest_raw))
            prev = digest_raw
    except (ValueError, KeyError, TypeError) as exc:
        raise BadAudit(
            f"条目 {seq} 不是审计批次：{exc}", f"item {seq} is not an audit batch: {exc}"
        ) from None
    if not rows or len(prev) != 32 or any(len(r.prev) != 32 for r in rows):
        raise BadAudit(f"条目 {seq} 不是审计批次", f"item {seq} is not an audit batch")
    return Batch(seq, tuple(rows))


@dataclass(slots=True)
class Verdict:
    """What the centre's copy of a kit's audit log shows."""

    rows: list[AuditRow] = field(default_factory=list)  # in order, each once
    batches: int = 0
    gaps: list[tuple[int, int]] = field(default_factory=list)  # missing row ids, inclusive
    bad_row: int | None = None  # first row whose hash or chain does not hold
    bad_why: str = ""
    unreadable: list[int] = field(default_factory=list)  # item seqs that are not batches

    @property
    def intact(self) -> bool:
        return self.bad_row is None and not self.unreadable

    def lines(self, kit_id: int) -> list[str]:
        """The verdict in words (Chinese first)."""
        out = [
            f"缺少第 {a}–{b} 行（有批次未到，不是篡改）/ gap: rows {a}-{b} missing "
            "(a batch not received), not tampering"
            for a, b in self.gaps
        ]
        out += [
            f"条目 {s} 无法解析，视为篡改 / item {s} cannot be read as an audit batch"
            for s in self.unreadable
        ]
        if self.bad_row is not None:
            out.append(f"第 {self.bad_row} 行被篡改 / row {self.bad_row} tampered: {self.bad_why}")
        elif not self.unreadable:
            span = f"{self.rows[0].id}–{self.rows[-1].id}" if self.rows else "-"
            counts = f"{len(self.rows)} rows ({span}) in {self.batches} batches"
            if self.gaps:
                out.append(
                    f"套件 {kit_id} 已到的各行完整 / kit {kit_id}: the rows that arrived "
                    f"verify: {counts}"
                )
            else:
                out.append(
                    f"套件 {kit_id} 镜像审计链完整 / kit {kit_id} mirrored chain intact: {counts}"
                )
        return out


def verify(batches: Iterable[Batch]) -> Verdict:
    """Check the mirrored rows: each row's hash, the chain across batches, gaps.

    A copy of a row filed twice counts once; two different rows under one id, a row whose
    hash does not match its content, or a chain that breaks where no row is missing are
    tampering (the first such row is reported). Rows missing between two that do not
    chain are a gap: a batch that has not arrived (yet).
    """
    verdict = Verdict()
    by_id: dict[int, AuditRow] = {}
    for batch in batches:
        verdict.batches += 1
        for row in batch.rows:
            seen = by_id.get(row.id)
            if seen is None:
                by_id[row.id] = row
            elif seen != row and verdict.bad_row is None:
                verdict.bad_row = row.id
                verdict.bad_why = "两份不同的同号行 / two different copies of the row"
    previous: AuditRow | None = None
    for rid in sorted(by_id):
        row = by_id[rid]
        verdict.rows.append(row)
        if verdict.bad_row is not None and rid >= verdict.bad_row:
            continue
        if row_hash(row.prev, row.fields) != row.hash:
            verdict.bad_row = rid
            verdict.bad_why = "内容与其哈希不符 / its content does not match its hash"
            continue
        expected, low = (_GENESIS, 1) if previous is None else (previous.hash, previous.id + 1)
        if row.prev != expected:
            if rid > low:
                verdict.gaps.append((low, rid - 1))
            else:
                verdict.bad_row = rid
                verdict.bad_why = "与前一行不相接 / does not chain to the row before it"
        previous = row
    return verdict


async def mirrored(store: Store, kit_id: int) -> tuple[list[Batch], list[int]]:
    """The kit's audit items as the centre stored them: batches, and seqs not readable."""
    from edge.item import decode

    async with (
        store.reading() as db,
        db.execute(
            "SELECT seq, body FROM items WHERE kit_id = ? AND kind = ? ORDER BY seq",
            (kit_id, Kind.AUDIT.value),
        ) as cur,
    ):
        rows: list[Any] = list(await cur.fetchall())
    batches: list[Batch] = []
    unreadable: list[int] = []
    for seq, body in rows:
        try:
            item = decode(bytes(body))
            if item.kind is not Kind.AUDIT:
                raise BadAudit("类型不符", "kind mismatch")
            batches.append(parse_batch(int(seq), item.text))
        except KitError:
            unreadable.append(int(seq))
    return batches, unreadable


async def check_kit(store: Store, kit_id: int) -> Verdict:
    batches, unreadable = await mirrored(store, kit_id)
    verdict = verify(batches)
    verdict.unreadable = unreadable
    return verdict


async def serve_mirror(
    config: KitConfig, state: SecurityState | None, edge: AsyncEdgeClient
) -> None:
    """Run the kit's mirror in the process that owns its security state (the uplink);
    ``state`` None: the kit seals nothing yet, its log (logins, config) still goes."""
    from security.cli import KIT_STATE

    own = state is None
    state = state or SecurityState(config.paths.data_dir / KIT_STATE)
    try:
        await AuditMirror(state, config.kit.id, config.paths.data_dir / CURSOR).run(edge)
    finally:
        if own:
            state.close()


def audit_main(config: CentreConfig, kit_id: int, *, as_json: bool) -> int:
    """`kit centre audit --kit N`: the kit's mirrored rows and their check. 0: intact;
    1: tampered; 2: bad kit id; 3: intact so far, but rows are missing (a gap)."""
    from centre.app import open_store

    if not 1 <= kit_id <= 65535:
        print("kit id 必须在 1–65535 / kit id must be 1-65535", file=sys.stderr)
        return 2

    async def check() -> Verdict:
        store = await open_store(config)
        try:
            return await check_kit(store, kit_id)
        finally:
            await store.close()

    verdict = asyncio.run(check())
    if as_json:
        rows = [
            {
                "id": r.id,
                "at": r.at,
                "event": r.event,
                "kit_id": r.kit_id,
                "reason": r.reason,
                "detail": r.detail,
                "link": r.link,
                "hash": r.hash.hex(),
            }
            for r in verdict.rows
        ]
        report = {
            "kit": kit_id,
            "rows": rows,
            "batches": verdict.batches,
            "gaps": verdict.gaps,
            "bad_row": verdict.bad_row,
            "bad_why": verdict.bad_why,
            "unreadable": verdict.unreadable,
            "intact": verdict.intact,
        }
        print(json.dumps(report, ensure_ascii=False))
    else:
        for r in verdict.rows:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r.at))
            print(f"{r.id}\t{when}Z\t{r.event}\t{r.reason}\t{r.link or '-'}\t{r.detail}")
        for line in verdict.lines(kit_id):
            print(line)
    if not verdict.intact:
        return 1
    return 3 if verdict.gaps else 0
