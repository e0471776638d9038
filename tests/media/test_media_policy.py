"""The disk policy: only acknowledged full-quality video is evicted, oldest first, just enough."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from edge.item import Kind
from media.policy import MediaFile, plan


@st.composite
def media_files(draw: st.DrawFn) -> list[MediaFile]:
    count = draw(st.integers(0, 30))
    files = []
    for i in range(count):
        kind = draw(st.sampled_from([k for k in Kind if k.is_media]))
        files.append(
            MediaFile(
                path=f"f{i}",
                kind=kind,
                priority=draw(st.sampled_from(kind.allowed_priorities)),
                size=draw(st.integers(0, 10_000)),
                created_ms=draw(st.integers(0, 1_000)),
                acknowledged=draw(st.booleans()),
                preview_acknowledged=draw(st.booleans()),
            )
        )
    return files


@settings(max_examples=150)
@given(files=media_files(), quota=st.integers(0, 200_000))
def test_only_acknowledged_video_is_ever_evicted(files: list[MediaFile], quota: int) -> None:
    for eviction in plan(quota, files).evict:
        f = eviction.file
        assert f.kind is Kind.VIDEO
        assert f.acknowledged or f.preview_acknowledged


@settings(max_examples=150)
@given(files=media_files(), quota=st.integers(0, 200_000))
def test_frees_enough_when_possible_and_no_more_than_needed(
    files: list[MediaFile], quota: int
) -> None:
    result = plan(quota, files)
    used = sum(f.size for f in files)
    evictable = sum(f.size for f in files if f.evictable)
    assert result.used == used
    if used - evictable <= quota:
        assert result.over == 0
    else:
        assert result.over == used - evictable - quota
    if result.evict:  # without the last eviction the folder would still be over quota
        assert used - (result.freed - result.evict[-1].file.size) > quota


@settings(max_examples=150)
@given(files=media_files(), quota=st.integers(0, 200_000))
def test_evicts_oldest_first(files: list[MediaFile], quota: int) -> None:
    result = plan(quota, files)
    chosen = {e.file.path for e in result.evict}
    times = [e.file.created_ms for e in result.evict]
    assert times == sorted(times)
    if result.evict:
        newest = times[-1]
        assert all(f.created_ms >= newest for f in files if f.evictable and f.path not in chosen)


def test_reasons_say_why_each_file_goes() -> None:
    video = MediaFile("video/d/a.ts", Kind.VIDEO, Kind.VIDEO.default_priority, 500, 1, False, True)
    photo = MediaFile("photo/p.jpg", Kind.PHOTO, Kind.PHOTO.default_priority, 900, 0, True, True)
    result = plan(600, [photo, video])
    assert [(e.file.path, e.reason) for e in result.evict] == [
        ("video/d/a.ts", "oldest full-quality video, centre has its preview; 800 B over quota")
    ]
    assert result.over == 300
