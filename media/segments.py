"""Recorded video segments: finishing ffmpeg's files durably, their index, and recovery at start.

Layout of one source's folder, ``<media_dir>/video/<name>/``:

- ``.rec-<session>-00003.ts`` — a segment ffmpeg is writing or has just closed (a
  temporary name: nothing outside this module ever refers to it);
- ``.rec-<session>.csv`` — ffmpeg's segment list: a line per closed segment;
- ``<name>-<session>-00003.ts`` — a finished segment, fsynced and renamed (durable.py);
- ``<name>-<session>-00003.json`` — its index entry: source, times, size, SHA-256, the item
  filed for it, and the edge's sequence number once the item was accepted.

The index entry is written (durably) before the item is offered to the edge and keeps the
item's uid, so after a crash the same item is offered again and the edge, which
deduplicates by uid, answers with the same sequence number: nothing is filed twice and
no finished segment is forgotten.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from drivers.clock import clock_synchronised
from edge.item import Item, MediaRef, decode, encode, new_item
from media import durable

log = logging.getLogger("media.segments")

MIME = "video/mp2t"
TS_PACKET = 188
TS_SYNC = 0x47
SYNC_CHECKS = 4  # packets whose sync byte is checked before a segment is taken

Clock = Callable[[], tuple[int, bool]]
"""Now as epoch milliseconds, and whether that time is trusted (GNSS-set)."""

_TEMP = re.compile(r"\.rec-(\d+)-(\d{5})\.ts\Z")
_LIST = re.compile(r"\.rec-(\d+)\.csv\Z")


def system_clock() -> tuple[int, bool]:
    """The system clock, trusted once chrony has set it from GNSS."""
    return int(time.time() * 1000), clock_synchronised()


def ts_problem(path: Path) -> str | None:
    """Why ``path`` is not a usable MPEG-TS segment, or None if it looks like one.

    A cheap check without decoding: the file is not empty and the first packets start
    with the MPEG-TS sync byte (a truncated last packet is harmless to players).
    """
    size = path.stat().st_size
    if size < TS_PACKET:
        return f"empty segment ({size} bytes)"
    with path.open("rb") as f:
        head = f.read(TS_PACKET * SYNC_CHECKS)
    if any(head[i] != TS_SYNC for i in range(0, len(head) - TS_PACKET + 1, TS_PACKET)):
        return "not MPEG-TS (no sync byte every 188 bytes)"
    return None


@dataclass(frozen=True, slots=True)
class ListEntry:
    """One line of ffmpeg's segment list: a closed segment and its span in stream time."""

    filename: str
    start_s: float
    end_s: float


class SegmentList:
    """Reads the lines ffmpeg appends to its CSV segment list, each line once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0

    def read_new(self) -> list[ListEntry]:
        try:
            with self.path.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        complete = data[: data.rfind(b"\n") + 1]  # a line being written waits for its end
        self._offset += len(complete)
        entries = []
        for row in csv.reader(io.StringIO(complete.decode("utf-8", "replace"))):
            try:
                entries.append(ListEntry(row[0], float(row[1]), float(row[2])))
            except (IndexError, ValueError):
                log.warning("%s: unreadable line skipped: %r", self.path, row)
        return entries


@dataclass(frozen=True, slots=True)
class Pending:
    """A durable segment whose item the edge has not confirmed yet."""

    item: Item
    index: Path  # the segment's index entry, updated with the sequence number on accept


class SegmentFolder:
    """One source's folder of segments: temporary names, finishing, the index, recovery."""

    def __init__(self, media_dir: Path, source: str) -> None:
        self.media_dir = media_dir
        self.source = source
        self.folder = media_dir / "video" / source

    def prepare(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)

    def pattern(self, session: int) -> Path:
        """ffmpeg's output pattern for one session (a run of one ffmpeg process)."""
        return self.folder / f".rec-{session}-%05d.ts"

    def listing(self, session: int) -> Path:
        return self.folder / f".rec-{session}.csv"

    def temp_files(self, session: int) -> list[Path]:
        return sorted(self.folder.glob(f".rec-{session}-*.ts"))

    def discard(self, session: int) -> None:
        """Remove what a refused session wrote: nothing of it was taken."""
        for path in [*self.temp_files(session), self.listing(session)]:
            path.unlink(missing_ok=True)

    def finish(
        self, temp: Path, start_ms: int, end_ms: int, clock_ok: bool, *, partial: bool = False
    ) -> Pending | None:
        """Make a closed segment durable, index it and build its item; None if unusable.

        Raises :class:`durable.DiskFull` with the temporary file left in place, so the
        caller can retry once space is freed.
        """
        found = _TEMP.search(temp.name)
        if found is None:
            raise ValueError(f"not a temporary segment name: {temp.name}")
        problem = ts_problem(temp)
        if problem is not None:
            log.warning("%s: segment %s skipped: %s", self.source, temp.name, problem)
            temp.unlink()
            return None
        final = self.folder / f"{self.source}-{found.group(1)}-{found.group(2)}.ts"
        digest = durable.commit(temp, final)
        return self._index(final, digest, start_ms, end_ms, clock_ok, partial)

    def _index(
        self,
        final: Path,
        digest: durable.FileDigest,
        start_ms: int,
        end_ms: int,
        clock_ok: bool,
        partial: bool,
    ) -> Pending:
        rel = final.relative_to(self.media_dir).as_posix()
        item = new_item(
            "video",
            source=f"drone:{self.source}",
            media=MediaRef(rel, digest.size, digest.sha256, MIME),
            created_ms=start_ms,
            clock_ok=clock_ok,
            data={"start_ms": start_ms, "end_ms": end_ms, "partial": partial},
        )
        entry = {
            "source": self.source,
            "path": rel,
            "start_ms": start_ms,
            "end_ms": end_ms,
            "duration_ms": end_ms - start_ms,
            "size": digest.size,
            "sha256": digest.sha256,
            "clock_ok": clock_ok,
            "partial": partial,
            "uid": str(item.uid),
            "item": encode(item).hex(),
            "seq": None,
        }
        index = final.with_suffix(".json")
        durable.write_bytes(index, json.dumps(entry).encode())
        return Pending(item, index)

    @staticmethod
    def accepted(pending: Pending, seq: int) -> None:
        """Record the edge's sequence number: the segment is in the outbox now."""
        entry = json.loads(pending.index.read_bytes())
        entry["seq"] = seq
        durable.write_bytes(pending.index, json.dumps(entry).encode())

    def recover(self) -> list[Pending]:
        """Everything finished or half-finished on disk whose item is not yet accepted.

        Run once before recording starts: closed segments a crash left under temporary
        names are finished (times from the file, flagged untrusted), a torn last segment
        is finished as partial or skipped with a reason, and index entries without a
        sequence number are offered again with their original item.
        """
        self.prepare()
        for torn in self.folder.glob(".*.tmp"):  # a durable write cut before its rename
            torn.unlink()
        for listing in sorted(self.folder.glob(".rec-*.csv")):
            session = int(_LIST.search(listing.name).group(1))  # type: ignore[union-attr]
            listed = {e.filename: e for e in SegmentList(listing).read_new()}
            previous_end: int | None = None  # a torn segment began where the last one ended
            for temp in self.temp_files(session):
                entry = listed.get(temp.name)
                end_ms = int(temp.stat().st_mtime * 1000)
                if entry is not None:
                    start_ms = end_ms - round((entry.end_s - entry.start_s) * 1000)
                else:
                    start_ms = min(previous_end or end_ms, end_ms)
                kind = "closed" if entry else "partial"
                log.warning("%s: recovering %s segment %s", self.source, kind, temp.name)
                self.finish(temp, start_ms, end_ms, False, partial=entry is None)
                previous_end = end_ms
            listing.unlink()
        for stray in sorted(self.folder.glob(".rec-*.ts")):  # its list was never written
            log.warning("%s: recovering partial segment %s", self.source, stray.name)
            end_ms = int(stray.stat().st_mtime * 1000)
            self.finish(stray, end_ms, end_ms, False, partial=True)
        for final in sorted(self.folder.glob(f"{self.source}-*.ts")):
            if not final.with_suffix(".json").exists():  # crashed between rename and index
                end_ms = int(final.stat().st_mtime * 1000)
                self._index(final, durable.digest(final), end_ms, end_ms, False, True)
        waiting = []
        for index in sorted(self.folder.glob(f"{self.source}-*.json")):
            entry = json.loads(index.read_bytes())
            if entry.get("seq") is None:
                waiting.append(Pending(decode(bytes.fromhex(entry["item"])), index))
        return waiting
