"""Acknowledgements as compact inclusive seq ranges, kept up to date as items complete."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from centre.db import Conn

MAX_SEQ = 2**63 - 1  # SQLite INTEGER, PostgreSQL BIGINT


def runs(seqs: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted distinct ``seqs`` as inclusive ranges: [1, 2, 3, 7] → [(1, 3), (7, 7)]."""
    out: list[tuple[int, int]] = []
    for s in sorted(set(seqs)):
        if out and out[-1][1] == s - 1:
            out[-1] = (out[-1][0], s)
        else:
            out.append((s, s))
    return out


async def add_acked(db: Conn, kit_id: int, seqs: Iterable[int]) -> None:
    """Merge ``seqs`` into the kit's ranges (call inside the transaction that completes them).

    Each new run touches only its neighbours through the (kit_id, lo) key, so the cost
    does not grow with the number of items stored.
    """
    for lo, hi in runs(seqs):
        async with db.execute(
            "SELECT lo, hi FROM acked WHERE kit_id = ? AND lo < ? ORDER BY lo DESC LIMIT 1",
            (kit_id, lo),
        ) as cur:
            before = await cur.fetchall()
        async with db.execute(
            "SELECT lo, hi FROM acked WHERE kit_id = ? AND lo BETWEEN ? AND ?",
            (kit_id, lo, min(hi + 1, MAX_SEQ)),
        ) as cur:
            touching = [r for r in before if r[1] >= lo - 1] + list(await cur.fetchall())
        new_lo = min([lo, *(r[0] for r in touching)])
        new_hi = max([hi, *(r[1] for r in touching)])
        await db.executemany(
            "DELETE FROM acked WHERE kit_id = ? AND lo = ?", [(kit_id, r[0]) for r in touching]
        )
        await db.execute("INSERT INTO acked VALUES (?, ?, ?)", (kit_id, new_lo, new_hi))
