"""Which items a link sends next: pure functions over plain data, so every rule is testable.

Rules (ARCHITECTURE.md §4):
- strict priority across P0…P4: a lower class goes only when no higher one fits the link;
- P0 goes out on every usable link until acknowledged, whatever the budget;
- fairness within a class: sources take turns (a chatty node cannot starve the others);
- size, cost and interval limits per link; bulk (P4) only on IP links fast enough for it;
- an item in flight only on links far slower than this one goes again here (a thumbnail
  crawling over Tiantong when 4G comes up must not arrive after its photo).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from edge.item import Priority

# Bulk media goes only where a 1 MB photo takes under about a minute.
BULK_MIN_RATE = 16_000  # bytes/s
# An item in flight on links this many times slower than a link may overtake on it.
OVERTAKE_RATIO = 8.0


@dataclass(frozen=True, slots=True)
class Candidate:
    """An unacknowledged item as the scheduler sees it."""

    seq: int
    priority: Priority
    size: int
    source: str
    sent_on: frozenset[str] = frozenset()  # links it is already in flight on


@dataclass(frozen=True, slots=True)
class LinkView:
    """A link's numbers at the moment of the decision."""

    name: str
    narrow: bool
    online: bool
    classes: frozenset[Priority]
    max_item: int  # largest item the link carries (narrow: all fragments of one message)
    batch_bytes: int  # bytes per send: one frame's payload, or about one chunk time on IP
    rate: float  # bytes/s
    ready_in: float = 0.0  # seconds until min_interval allows a send
    cost_per_byte: float = 0.0
    cost_per_message: float = 0.0
    budget_left: float | None = None  # None: no budget


def classes_for(link: LinkView) -> frozenset[Priority]:
    """The classes this link may carry now (bulk only where it fits)."""
    classes = link.classes
    if link.narrow or link.rate < BULK_MIN_RATE:
        classes = classes - {Priority.P4}
    return classes


def usable(link: LinkView) -> bool:
    return link.online and link.ready_in <= 0 and bool(classes_for(link))


def _cost(link: LinkView, size: int) -> float:
    return size * link.cost_per_byte + link.cost_per_message


def _affordable(link: LinkView, c: Candidate, spent: float) -> bool:
    if c.priority is Priority.P0 or link.budget_left is None:
        return True  # life comes before the bill
    return spent + _cost(link, c.size) <= link.budget_left


def take_turns(candidates: Iterable[Candidate]) -> list[Candidate]:
    """Interleave sources, each source's items oldest first (round-robin fairness)."""
    queues: dict[str, list[Candidate]] = {}
    for c in sorted(candidates, key=lambda c: c.seq):
        queues.setdefault(c.source, []).append(c)
    out: list[Candidate] = []
    # Sources take turns in the order of their oldest waiting item.
    order = sorted(queues, key=lambda s: queues[s][0].seq)
    depth = 0
    while len(out) < sum(len(q) for q in queues.values()):
        for source in order:
            q = queues[source]
            if depth < len(q):
                out.append(q[depth])
        depth += 1
    return out


def overtakes(link: LinkView, c: Candidate, rates: Mapping[str, float]) -> bool:
    """``c``, in flight elsewhere, goes on ``link`` too: P0 always; P1–P3 when every link
    carrying it is at least OVERTAKE_RATIO times slower (bulk resumes by its transfer)."""
    if link.name in c.sent_on:
        return False
    if c.priority is Priority.P0:
        return True
    return c.priority is not Priority.P4 and all(
        rates.get(name, float("inf")) * OVERTAKE_RATIO <= link.rate for name in c.sent_on
    )


def plan(
    link: LinkView,
    ready: Sequence[Candidate],
    in_flight: Sequence[Candidate] = (),
    rates: Mapping[str, float] | None = None,
) -> list[Candidate]:
    """The items for ``link``'s next send, in order; empty when it should wait.

    ``ready`` are items nobody is sending; ``in_flight`` are items already on other links:
    a P0 goes on this one too unless it already carries it, and an item only on links far
    slower than this one (``rates``: bytes/s by link name) overtakes here.
    """
    if not usable(link):
        return []
    classes = classes_for(link)
    pool = [c for c in ready if link.name not in c.sent_on]
    pool += [c for c in in_flight if overtakes(link, c, rates or {})]
    by_class: dict[Priority, list[Candidate]] = {}
    seen: set[int] = set()
    for c in pool:
        if c.seq in seen or c.priority not in classes or c.size > link.max_item:
            continue
        seen.add(c.seq)
        by_class.setdefault(c.priority, []).append(c)
    chosen: list[Candidate] = []
    used = 0
    spent = 0.0
    for prio in sorted(by_class):
        for c in take_turns(by_class[prio]):
            if not _affordable(link, c, spent):
                continue
            if prio is Priority.P4:
                # Bulk travels alone, as a resumable transfer, never behind or beside others.
                return chosen or [c]
            if chosen and used + c.size > link.batch_bytes:
                return chosen
            chosen.append(c)
            used += c.size
            spent += _cost(link, c.size)
        # Strict priority holds: a lower class reaches this send only once every item of
        # the higher classes that fits is already in it.
    return chosen
