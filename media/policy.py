"""The media disk policy, a pure function: which files to evict to stay inside the quota.

Only full-quality video (P4 video segments) is ever evicted, oldest first, and only once
the centre has acknowledged the file itself or its preview: reports, photos, thumbnails,
voice and unacknowledged video stay whatever the quota says (ARCHITECTURE.md §3). The
caller logs every eviction with the reason given here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from edge.item import Kind, Priority


@dataclass(frozen=True, slots=True)
class MediaFile:
    """What the policy needs to know of one file in the media folder."""

    path: str  # relative to the media folder
    kind: Kind
    priority: Priority
    size: int
    created_ms: int
    acknowledged: bool  # the centre has the file itself
    preview_acknowledged: bool  # the centre has a preview (thumbnail or clip) of it

    @property
    def evictable(self) -> bool:
        return (
            self.kind is Kind.VIDEO
            and self.priority is Priority.P4
            and (self.acknowledged or self.preview_acknowledged)
        )


@dataclass(frozen=True, slots=True)
class Eviction:
    file: MediaFile
    reason: str


@dataclass(frozen=True, slots=True)
class Plan:
    """The files to evict, and whether that brings the media folder inside its quota."""

    evict: tuple[Eviction, ...]
    used: int  # bytes before eviction
    quota: int

    @property
    def freed(self) -> int:
        return sum(e.file.size for e in self.evict)

    @property
    def over(self) -> int:
        """Bytes still over the quota after the plan (nothing more may be evicted)."""
        return max(0, self.used - self.freed - self.quota)


def plan(quota: int, files: Iterable[MediaFile], other: int = 0) -> Plan:
    """Evict the oldest evictable video until the folder fits ``quota``, and no more.

    ``other`` counts bytes that use the quota but are never evicted (index entries, files
    being written).
    """
    found = list(files)
    used = sum(f.size for f in found) + other
    candidates = sorted((f for f in found if f.evictable), key=lambda f: (f.created_ms, f.path))
    evict: list[Eviction] = []
    left = used
    for f in candidates:
        if left <= quota:
            break
        why = "centre has the file" if f.acknowledged else "centre has its preview"
        evict.append(Eviction(f, f"oldest full-quality video, {why}; {left - quota} B over quota"))
        left -= f.size
    return Plan(tuple(evict), used, quota)
