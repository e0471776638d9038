"""Reports filed from the page: the form checked, photos made durable, items accepted in order.

The report item is built as `kit report` builds one (``new_item`` with kind, text,
position and a count); its photos go through the media intake (thumbnails P3, the full
photo P4) and the report names them in its data (``photo_1`` …: the photo items' uids).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edge.client import AsyncEdgeClient
from edge.errors import BadItem, KitError
from edge.item import Item, Kind, Position, new_item
from media.photos import PhotoIntake, check_size, image_kind
from media.segments import Pending, SegmentFolder

log = logging.getLogger("web.reports")

KINDS: tuple[Kind, ...] = (
    Kind.SOS,
    Kind.CASUALTIES,
    Kind.TRAPPED,
    Kind.NEEDS,
    Kind.SITUATION,
    Kind.OTHER,
)
POSITION_SOURCES = ("phone", "kit", "map", "typed")
MAX_COUNT = 1_000_000
RECENT = 200  # reports the map and the page keep showing


class BadReport(KitError, ValueError):
    """A report form that cannot be filed; ``field`` names the form field at fault."""

    def __init__(self, field: str, zh: str, en: str) -> None:
        super().__init__(zh, en)
        self.field = field


@dataclass(frozen=True, slots=True)
class ReportForm:
    kind: Kind
    count: int | None
    text: str | None
    position: Position | None
    position_source: str | None


def parse_form(fields: dict[str, str]) -> ReportForm:
    """The report's fields from the page, each checked; :class:`BadReport` names the bad one."""
    raw_kind = fields.get("kind", "").strip()
    if raw_kind not in {k.value for k in KINDS}:
        raise BadReport(
            "kind", f"请选择报告类型（{raw_kind!r} 无效）", f"choose a kind ({raw_kind!r})"
        )
    kind = Kind(raw_kind)
    count: int | None = None
    raw_count = fields.get("count", "").strip()
    if raw_count:
        if not re.fullmatch(r"[0-9]{1,7}", raw_count) or int(raw_count) > MAX_COUNT:
            raise BadReport(
                "count",
                f"人数应为 0–{MAX_COUNT} 的整数",
                f"count must be a whole number 0-{MAX_COUNT}",
            )
        count = int(raw_count)
    text = fields.get("text", "").replace("\r\n", "\n").strip() or None
    position = None
    lat, lon = fields.get("lat", "").strip(), fields.get("lon", "").strip()
    if lat or lon:
        try:
            position = Position(float(lat), float(lon), None, _accuracy(fields.get("accuracy")))
        except BadItem as err:  # a ValueError too: caught first
            raise BadReport("position", err.zh, err.en) from None
        except ValueError:
            raise BadReport("position", "位置应为数字", "position must be numbers") from None
    source = fields.get("position_source", "").strip() or None
    if source is not None and source not in POSITION_SOURCES:
        raise BadReport("position", "位置来源无效", "invalid position source")
    if text is None and count is None and position is None and kind is not Kind.SOS:
        raise BadReport(
            "text", "请填写说明、人数或位置", "add a description, a count or a position"
        )
    return ReportForm(kind, count, text, position, source if position else None)


def _accuracy(raw: str | None) -> float | None:
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        return None
    return min(100_000.0, max(0.0, value)) if value == value else None


def check_photo(data: bytes, limit: int) -> None:
    """Refuse what is not a photo, or too large, before anything is written."""
    if len(data) > limit:
        raise BadReport(
            "photos",
            f"照片过大：{len(data) / 1e6:.1f} MB（上限 {limit // 1024**2} MB）",
            f"photo too large: {len(data) / 1e6:.1f} MB (limit {limit // 1024**2} MB)",
        )
    try:
        check_size(len(data))
        image_kind(data)
    except KitError as err:
        raise BadReport("photos", err.zh, err.en) from None


def build_item(form: ReportForm, photo_uids: list[str]) -> Item:
    data: dict[str, int | str] = {}
    if form.count is not None:
        data["count"] = form.count
    if form.position_source:
        data["position_source"] = form.position_source
    for i, uid in enumerate(photo_uids, 1):
        data[f"photo_{i}"] = uid
    try:
        return new_item(form.kind, source="web", text=form.text, position=form.position, data=data)
    except BadItem as err:
        raise BadReport("text", err.zh, err.en) from None


@dataclass
class Filed:
    """A report as the page and the map show it."""

    seq: int
    uid: str
    kind: str
    priority: str
    created_ms: int
    text: str | None
    count: int | None
    lat: float | None
    lon: float | None
    photos: list[dict[str, Any]] = field(default_factory=list)  # seq, thumb (media path)
    photos_pending: int = 0


class ReportDesk:
    """Files reports and remembers the recent ones (``<data>/web/reports.jsonl``)."""

    def __init__(self, edge: AsyncEdgeClient, media_dir: Path, log_path: Path) -> None:
        self.edge = edge
        self.media_dir = media_dir
        self.intake = PhotoIntake(media_dir)
        self.log_path = log_path
        self.recent: deque[Filed] = deque(maxlen=RECENT)
        self._load()

    def _load(self) -> None:
        try:
            lines = self.log_path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return
        for line in lines[-RECENT:]:
            try:
                self.recent.append(Filed(**json.loads(line)))
            except (ValueError, TypeError):
                continue

    def find(self, seq: int) -> Filed | None:
        return next((r for r in self.recent if r.seq == seq), None)

    async def file(self, form: ReportForm, photos: list[bytes]) -> Filed:
        """Photos durable first, then the report, its thumbnails, its photos — in that order."""
        taken: list[list[Pending]] = []
        try:
            for data in photos:
                taken.append(await asyncio.to_thread(self.intake.take, data, source="web"))
        except KitError as err:
            await asyncio.to_thread(self._discard, taken)
            raise BadReport("photos", err.zh, err.en) from None
        full = [made[-1] for made in taken]
        item = build_item(form, [str(p.item.uid) for p in full])
        try:
            answer = await self.edge.accept(item)
        except KitError:
            await asyncio.to_thread(self._discard, taken)  # nothing was filed: retry files anew
            raise
        filed = Filed(
            seq=int(answer["seq"]),
            uid=str(item.uid),
            kind=item.kind.value,
            priority=item.priority.name,
            created_ms=item.created_ms,
            text=item.text,
            count=form.count,
            lat=item.position.lat if item.position else None,
            lon=item.position.lon if item.position else None,
        )
        # Thumbnails of every photo before any full photo (they go out first anyway).
        order = [p for made in taken for p in made[:-1]] + full
        for pending in order:
            try:
                got = await self.edge.accept(pending.item)
            except KitError as err:  # kept on disk with its index: `kit media` offers it again
                log.warning("photo item of report #%d not filed yet: %s", filed.seq, err)
                filed.photos_pending += 1
                continue
            await asyncio.to_thread(SegmentFolder.accepted, pending, int(got["seq"]))
            media = pending.item.media
            if (
                pending.item.kind is Kind.THUMBNAIL
                and media
                and not pending.item.data.get("narrow")
            ):
                filed.photos.append({"seq": int(got["seq"]), "thumb": media.path})
        await asyncio.to_thread(self._remember, filed)
        return filed

    def _discard(self, taken: list[list[Pending]]) -> None:
        for made in taken:
            for pending in made:
                media = pending.item.media
                with contextlib.suppress(FileNotFoundError):
                    pending.index.unlink()
                if media is not None:
                    with contextlib.suppress(FileNotFoundError):
                        (self.media_dir / media.path).unlink()

    def _remember(self, filed: Filed) -> None:
        self.recent.append(filed)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, (json.dumps(asdict(filed), ensure_ascii=False) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
