"""The disk policy applied: what the centre has, and evicting full-quality video past the quota.

Each media file's index entry (``<file>.json``, see ``segments.py`` and ``thumbs.py``)
records the item's ``seq`` once the edge accepted it and ``acked`` once the centre has
it — learnt from the bus (``item.delivered``) and, for what was missed while the media
process was down, by asking the edge at start. :func:`media.policy.plan` then picks the
oldest video the centre has, or has a preview of; each eviction is logged.

A segment the centre has only a preview of is still queued in the outbox: it is first
withdrawn (the edge's ``withdraw`` moves it to superseded, atomically, only if no link
has started sending it), so the uplink never looks for a file that is gone. A segment
being sent is kept until its transfer ends.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.client import AsyncEdgeClient, EdgeRefused
from edge.errors import KitError
from edge.item import Item, Kind, decode
from media import durable
from media.policy import Eviction, MediaFile, plan

log = logging.getLogger("media.retention")

_AT_CENTRE = {"ACKNOWLEDGED", "EVICTABLE"}  # edge.store.State names
_PREVIEWS = {Kind.THUMBNAIL, Kind.PREVIEW}


@dataclass(frozen=True, slots=True)
class _Entry:
    index: Path
    entry: dict[str, Any]
    item: Item


class Retention:
    """Keeps the media folder inside its quota, evicting only what the policy allows."""

    def __init__(self, media_dir: Path, quota: int, edge: AsyncEdgeClient) -> None:
        self.media_dir = media_dir
        self.quota = quota
        self.edge = edge
        self.evicted = 0  # files evicted since start
        self.over = 0  # bytes over the quota after the last pass (nothing more may go)
        self._waiting: dict[int, Path] = {}  # seq → index entry of items not yet at the centre

    def load(self) -> None:
        """Index entries of items the edge accepted but the centre was not known to have."""
        for found in self._entries().values():
            seq = found.entry.get("seq")
            if isinstance(seq, int) and not found.entry.get("acked"):
                self._waiting[seq] = found.index

    def filed(self, index: Path, seq: int) -> None:
        """The edge accepted the item of ``index`` as ``seq``."""
        self._waiting[seq] = index

    def delivered(self, seqs: list[int]) -> int:
        """The centre has ``seqs``: their index entries say so (durably); how many were ours."""
        ours = 0
        for seq in seqs:
            index = self._waiting.pop(seq, None)
            if index is None:
                continue
            try:
                entry = json.loads(index.read_bytes())
            except FileNotFoundError:
                continue
            entry["acked"] = True
            durable.write_bytes(index, json.dumps(entry).encode())
            ours += 1
        return ours

    async def catch_up(self) -> int:
        """Ask the edge about every item not known to be at the centre (deliveries missed
        while this process was down: bus messages are not kept); how many were."""
        at_centre = []
        for seq in list(self._waiting):
            try:
                answer = await self.edge.call({"op": "get", "seq": seq})
            except EdgeRefused as err:  # an outbox started afresh: the entry is not its item
                log.warning("seq %d unknown to the edge: %s", seq, err)
                self._waiting.pop(seq, None)
                continue
            if answer.get("state") in _AT_CENTRE:
                at_centre.append(seq)
        return await asyncio.to_thread(self.delivered, at_centre)

    async def enforce(self) -> list[Eviction]:
        """Evict what the policy picks to fit the quota; the evictions done, each logged.

        A segment whose upload has started is kept, and the policy asked again without it.
        """
        entries = await asyncio.to_thread(self._entries)
        files, other = await asyncio.to_thread(self._survey, entries)
        done: list[Eviction] = []
        kept: set[str] = set()
        while True:
            decided = plan(self.quota, (f for f in files if f.path not in kept), other)
            for eviction in decided.evict:
                found = entries[eviction.file.path]
                if not eviction.file.acknowledged and not await self._withdraw(found):
                    log.info("%s kept: its upload has started", eviction.file.path)
                    kept.add(eviction.file.path)
                    other += eviction.file.size
                    break
                await asyncio.to_thread(self._evict, found, eviction)
                done.append(eviction)
                files.remove(eviction.file)
            else:
                break
        self.over = decided.over
        if self.over:
            log.warning(
                "媒体超出配额 %d 字节，无可清理的视频 / media %d B over quota, no video may go yet",
                self.over,
                self.over,
            )
        return done

    async def _withdraw(self, found: _Entry) -> bool:
        """Take a segment out of the outbox before its file goes; False if being sent."""
        seq = found.entry["seq"]
        answer = await self.edge.call({"op": "withdraw", "seqs": [seq]})
        return seq in answer.get("seqs", [])

    def _evict(self, found: _Entry, eviction: Eviction) -> None:
        path = self.media_dir / eviction.file.path
        path.unlink(missing_ok=True)
        durable.fsync_dir(path.parent)
        entry = {**found.entry, "evicted_ms": int(time.time() * 1000), "evicted": eviction.reason}
        durable.write_bytes(found.index, json.dumps(entry).encode())
        self.evicted += 1
        log.warning(
            "evicted %s (%d B): %s", eviction.file.path, eviction.file.size, eviction.reason
        )

    def _entries(self) -> dict[str, _Entry]:
        """Every readable index entry, by the path of its file; a damaged one is skipped."""
        entries: dict[str, _Entry] = {}
        for index in self.media_dir.rglob("*.json"):
            if index.name.startswith("."):
                continue
            try:
                entry = json.loads(index.read_bytes())
                item = decode(bytes.fromhex(entry["item"]))
                path = str(entry["path"])
            except (OSError, ValueError, KeyError, TypeError, KitError) as err:
                log.warning("index entry %s skipped: %s", index, err)
                continue
            entries[path] = _Entry(index, entry, item)
        return entries

    def _survey(self, entries: dict[str, _Entry]) -> tuple[list[MediaFile], int]:
        """The indexed files as the policy sees them, and the bytes of everything else."""
        previewed = {
            e.item.parent
            for e in entries.values()
            if e.entry.get("acked") and e.item.kind in _PREVIEWS and e.item.parent is not None
        }
        files: list[MediaFile] = []
        other = 0
        for folder, _, names in os.walk(self.media_dir):
            for name in names:
                path = Path(folder) / name
                try:
                    size = path.stat().st_size
                except FileNotFoundError:  # a temporary file renamed meanwhile
                    continue
                found = entries.get(path.relative_to(self.media_dir).as_posix())
                if found is None or found.entry.get("seq") is None:
                    other += size  # an index, a file being written, one not yet filed
                    continue
                item = found.item
                files.append(
                    MediaFile(
                        found.entry["path"],
                        item.kind,
                        item.priority,
                        size,
                        item.created_ms,
                        acknowledged=bool(found.entry.get("acked")),
                        preview_acknowledged=item.uid in previewed,
                    )
                )
        return files, other
