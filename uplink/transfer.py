"""Resumable bulk transfer of one media file over one or several IP links at once (bonding).

The file is cut into parts; each part is a tus partial upload carried, one checksummed
chunk at a time, by a *carrier*: one of the concurrent streams of an IP link. Several
streams per link keep a long, thin pipe full (a 600 ms satellite hop would otherwise idle
between chunks); streams of several links share the parts (bonding). After any failure a
part is free again and resumes from the server's offset, on any link. When every part is
complete a tus final upload concatenates them; a file of one part is a plain tus upload.
Part URLs are kept in a small JSON file so a transfer also resumes after a restart.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from edge.errors import KitError
from edge.item import Item
from uplink.kinds.ip import IpLink

log = logging.getLogger(__name__)

MIN_PART = 256 * 1024
TARGET_PARTS = 16  # enough parts for every stream of two or three links to have one


class MediaDamaged(KitError, OSError):
    """The file on disk is not the one filed (gone, cut short, other bytes): it cannot be
    sent as the item says, and retrying will not change that."""


def media_damage(media_dir: Path, item: Item) -> MediaDamaged | None:
    """Why ``item``'s file cannot be sent as filed, or None if it is intact (size, sha256)."""
    assert item.media is not None
    path = media_dir / item.media.path
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size != item.media.size:
                return MediaDamaged(
                    f"媒体文件 {path} 大小为 {size} 字节，登记为 {item.media.size} 字节",
                    f"media file {path} has {size} bytes, {item.media.size} filed",
                )
            digest = hashlib.file_digest(f, "sha256").hexdigest()
    except FileNotFoundError:
        return MediaDamaged(f"媒体文件 {path} 不存在", f"media file {path} is missing")
    if digest != item.media.sha256:
        return MediaDamaged(
            f"媒体文件 {path} 内容已损坏（校验和不符）",
            f"media file {path} is damaged (sha256 differs from the one filed)",
        )
    return None


@dataclass
class Part:
    start: int
    length: int
    url: str | None = None
    offset: int | None = None  # None: ask the server (after a restart or a failure)
    done: bool = False
    carrier: str | None = None  # the stream carrying a chunk of it right now (not saved)


def part_size(size: int, largest: int) -> int:
    return max(MIN_PART, min(largest, -(-size // TARGET_PARTS)))


@dataclass
class Transfer:
    """One media item's upload, moved forward chunk by chunk by any number of carriers."""

    seq: int
    kit_id: int
    item: Item
    path: Path
    state_path: Path
    parts: list[Part]
    final_url: str | None = None
    finishing: bool = False
    damaged: MediaDamaged | None = None  # found while carrying: no carrier takes it again

    @classmethod
    def open(
        cls, seq: int, kit_id: int, item: Item, media_dir: Path, state_dir: Path, part_bytes: int
    ) -> Transfer:
        assert item.media is not None
        size = item.media.size
        state_path = state_dir / f"{seq}.json"
        parts: list[Part] | None = None
        final_url = None
        if state_path.exists():
            try:
                saved = json.loads(state_path.read_text())
                parts = [
                    Part(p["start"], p["length"], p["url"], None, p["done"]) for p in saved["parts"]
                ]
                final_url = saved.get("final_url")
            except (ValueError, KeyError, TypeError):
                log.warning("transfer state %s unreadable; starting over", state_path)
        if parts is None:
            step = part_size(size, part_bytes)
            count = max(1, -(-size // step))
            parts = [Part(i * step, min(step, size - i * step)) for i in range(count)]
        return cls(seq, kit_id, item, media_dir / item.media.path, state_path, parts, final_url)

    @property
    def complete(self) -> bool:
        return self.final_url is not None

    @property
    def single(self) -> bool:
        return len(self.parts) == 1

    def _save(self) -> None:
        data = {
            "parts": [
                {"start": p.start, "length": p.length, "url": p.url, "done": p.done}
                for p in self.parts
            ],
            "final_url": self.final_url,
        }
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.state_path)

    def forget(self) -> None:
        self.state_path.unlink(missing_ok=True)

    def claim(self, carrier: str) -> Part | bool:
        """Work for ``carrier``: a part to carry, True for the final request, False for none."""
        if self.complete or self.finishing or self.damaged is not None:
            return False
        if all(p.done for p in self.parts):
            self.finishing = True
            return True
        # Prefer a part already under way (its offset is known), then an untouched one.
        free = [p for p in self.parts if p.carrier is None and not p.done]
        part = next((p for p in free if p.offset), None) or next(iter(free), None)
        if part is not None:
            part.carrier = carrier
            return part
        return False

    def release(self, carrier: str) -> None:
        """``carrier`` failed: its part is free for any stream, at the server's offset."""
        for p in self.parts:
            if p.carrier == carrier:
                p.carrier = None
                p.offset = None
        self.finishing = False

    def _meta(self) -> dict[str, str]:
        assert self.item.media is not None
        return {
            "kit": str(self.kit_id),
            "seq": str(self.seq),
            "sha256": self.item.media.sha256,
            "filename": self.item.media.path.rsplit("/", 1)[-1],
            "filetype": self.item.media.mime,
        }

    async def step(self, work: Part | bool, link: IpLink, carrier: str, chunk_bytes: int) -> None:
        """Carry out what :meth:`claim` gave ``carrier``: one chunk, or the final request."""
        try:
            if isinstance(work, Part):
                await self._chunk(work, link, chunk_bytes)
                work.carrier = None  # the next chunk may go on any stream of any link
                if work.done:
                    self._save()
            elif work:
                await self._finish(link)
        except BaseException:
            self.release(carrier)
            raise

    async def _finish(self, link: IpLink) -> None:
        if self.single:
            self.final_url = self.parts[0].url
        else:
            self.final_url = await link.tus_final(
                [p.url for p in self.parts if p.url], self._meta()
            )
        self.finishing = False
        self._save()

    async def _chunk(self, part: Part, link: IpLink, chunk_bytes: int) -> None:
        if part.url is not None and part.offset is None:
            part.offset = await link.tus_offset(part.url)
            if part.offset is None:  # the centre forgot it (expired): upload the part again
                part.url = None
        if part.url is None:
            meta = self._meta() if self.single else {}
            part.url = await link.tus_create(part.length, meta, partial=not self.single)
            part.offset = 0
            self._save()
        assert part.offset is not None
        if part.offset < part.length:
            n = min(chunk_bytes, part.length - part.offset)
            try:
                with open(self.path, "rb") as f:
                    f.seek(part.start + part.offset)
                    chunk = f.read(n)
            except FileNotFoundError:
                self.damaged = MediaDamaged(
                    f"媒体文件 {self.path} 不存在", f"media file {self.path} is missing"
                )
                raise self.damaged from None
            if len(chunk) != n:
                self.damaged = MediaDamaged(
                    f"媒体文件 {self.path} 比登记的短", f"media file {self.path} shorter than filed"
                )
                raise self.damaged
            part.offset = await link.tus_patch(part.url, part.offset, chunk)
        part.done = part.offset >= part.length
