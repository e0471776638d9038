"""The team roster: every mesh node the kit has heard, with its names, battery and last position.

Pure and bounded: the radio's events update it, reports read a sender's last position
from it, and the status page lists it. When full, the node heard longest ago is forgotten.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from edge.item import Position
from edge.topics import TeamMember, TeamRoster


@dataclass(frozen=True, slots=True)
class Member:
    """One node of the team as last heard."""

    node_id: str  # "!a1b2c3d4"
    long_name: str | None = None
    short_name: str | None = None
    last_heard_s: float | None = None  # Unix seconds
    battery_percent: int | None = None  # 101 means powered (Meshtastic's convention)
    voltage: float | None = None
    position: Position | None = None
    position_s: float | None = None  # Unix seconds of that position
    snr: float | None = None  # dB of the last packet heard from it (its last hop)

    @property
    def name(self) -> str:
        """What a person calls this member: the long name, else the short name, else the id."""
        return self.long_name or self.short_name or self.node_id


class Roster:
    """Members by node id, most recently heard last; at most ``limit`` of them."""

    def __init__(self, limit: int = 256) -> None:
        if limit < 1:
            raise ValueError("a roster holds at least one member")
        self.limit = limit
        self._members: OrderedDict[str, Member] = OrderedDict()

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._members

    def get(self, node_id: str) -> Member | None:
        return self._members.get(node_id)

    def members(self) -> list[Member]:
        """Every member, the most recently heard first."""
        return list(reversed(self._members.values()))

    def update(
        self,
        node_id: str,
        *,
        heard_s: float | None = None,
        long_name: str | None = None,
        short_name: str | None = None,
        battery_percent: int | None = None,
        voltage: float | None = None,
        position: Position | None = None,
        position_s: float | None = None,
        snr: float | None = None,
    ) -> Member:
        """Merge what was just learnt about ``node_id``; ``None`` keeps what was known.

        A ``heard_s`` older than the one known (a node list replayed at reconnect) does not
        move the member back in time.
        """
        old = self._members.pop(node_id, None) or Member(node_id)
        changes: dict[str, Any] = {
            "long_name": long_name,
            "short_name": short_name,
            "battery_percent": battery_percent,
            "voltage": voltage,
            "snr": snr,
        }
        if heard_s is not None and (old.last_heard_s is None or heard_s > old.last_heard_s):
            changes["last_heard_s"] = heard_s
        if position is not None and (
            old.position_s is None or position_s is None or position_s >= old.position_s
        ):
            changes["position"] = position
            changes["position_s"] = position_s if position_s is not None else heard_s
        member = dataclasses.replace(old, **{k: v for k, v in changes.items() if v is not None})
        self._members[node_id] = member
        self._reorder(member)
        while len(self._members) > self.limit:
            self._members.popitem(last=False)
        return member

    def _reorder(self, member: Member) -> None:
        """Keep the order by last heard, so the first entry is the one to forget."""
        key = member.last_heard_s if member.last_heard_s is not None else float("-inf")
        ids = list(self._members)
        # The member was just appended; slide it back past anyone heard later.
        index = len(ids) - 1
        while index > 0:
            prev = self._members[ids[index - 1]].last_heard_s
            if prev is None or prev <= key:
                break
            index -= 1
        for later in ids[index:-1]:
            self._members.move_to_end(later)


def team_roster(roster: Roster) -> TeamRoster:
    """The roster as the bus carries it to ``kit status`` and the web page."""
    return TeamRoster([team_member(m) for m in roster.members()])


def team_member(m: Member) -> TeamMember:
    pos = m.position
    return TeamMember(
        node=m.node_id,
        name=m.name,
        short=m.short_name or "",
        lat=None if pos is None else pos.lat,
        lon=None if pos is None else pos.lon,
        position_ms=None if pos is None or m.position_s is None else round(m.position_s * 1000),
        last_heard_ms=0 if m.last_heard_s is None else round(m.last_heard_s * 1000),
        battery_pct=m.battery_percent,
        snr=m.snr,
    )
