"""Hypothesis strategies for valid items (shared by the item and wire-format tests)."""

from __future__ import annotations

import uuid

from hypothesis import strategies as st

from edge.item import MAX_CLOCK_MS, MIN_SET_CLOCK_MS, Item, Kind, MediaRef, Position

_text_chars = st.characters(
    blacklist_categories=("Cs",),
    blacklist_characters="".join(map(chr, [*range(0, 9), *range(11, 32), 127])),
)
texts = st.text(_text_chars, min_size=1, max_size=200)

positions = st.builds(
    Position,
    lat=st.floats(-90, 90),
    lon=st.floats(-180, 180),
    alt_m=st.none() | st.floats(-1000, 20000),
    accuracy_m=st.none() | st.floats(0, 100_000),
)

data_values = (
    st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(_text_chars, max_size=50)
)
data_maps = st.dictionaries(
    st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True), data_values, max_size=5
).filter(lambda d: "count" not in d) | st.fixed_dictionaries({"count": st.integers(0, 1_000_000)})

media_refs = st.builds(
    MediaRef,
    path=st.from_regex(r"[a-z0-9]{1,8}(/[a-z0-9_.-]{0,8}[a-z0-9]){0,2}", fullmatch=True),
    size=st.integers(0, 10**9),
    sha256=st.from_regex(r"[0-9a-f]{64}", fullmatch=True),
    mime=st.sampled_from(["image/jpeg", "video/mp2t", "audio/ogg", "image/webp"]),
)


@st.composite
def items(draw: st.DrawFn, kinds: st.SearchStrategy[Kind] | None = None) -> Item:
    kind = draw(kinds or st.sampled_from(Kind))
    clock_ok = draw(st.booleans())
    created = draw(st.integers(MIN_SET_CLOCK_MS if clock_ok else 0, MAX_CLOCK_MS))
    position = draw(positions) if kind is Kind.TRACK else draw(st.none() | positions)
    text = draw(st.none() | texts)
    data = draw(data_maps)
    media = draw(media_refs) if kind.is_media else None
    if not (text or position or data or media) and kind is not Kind.SOS:
        text = "x"
    return Item(
        uid=uuid.UUID(int=draw(st.integers(0, 2**128 - 1))),
        kind=kind,
        priority=draw(st.sampled_from(kind.allowed_priorities)),
        created_ms=created,
        clock_ok=clock_ok,
        source=draw(st.from_regex(r"[a-z]{1,6}(:![0-9a-f]{8})?", fullmatch=True)),
        text=text,
        position=position,
        data=data,
        media=media,
        parent=draw(st.none() | st.uuids()),
    )
