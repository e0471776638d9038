"""What the dashboard reads from the store: kits as last heard, the report feed, tracks, and
each item's delivery path.

A kit's last contact and position are what its items show (the link each copy came in
on, when, and the latest position it reported itself); its battery, backlog and links as
it reported them come from its newest status item (a ``sensor`` of source ``kit:status``,
see edge/statusreport.py), else they show as not reported.
The SQL runs on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from centre.store import FeedEntry, Store
from edge.item import Kind, decode

MEMBER_SOURCE = "mesh:"  # team members' items, as mesh/reports.py names their source
KIT_STATUS_SOURCE = "kit:status"  # edge/statusreport.py SOURCE (the centre does not import the kit)
TRACK_POINTS = 5000  # at most, for every member together
_KINDS = frozenset(k.value for k in Kind)


@dataclass(frozen=True)
class Filters:
    """The feed's filters; each None means "any"."""

    kinds: frozenset[str] | None = None
    priority: int | None = None
    bbox: tuple[float, float, float, float] | None = None  # south, west, north, east
    since_ms: int | None = None
    until_ms: int | None = None

    @classmethod
    def parse(cls, query: dict[str, str]) -> Filters:
        """From a request's query; :class:`ValueError` with the bilingual reason."""
        kinds = None
        if query.get("kind"):
            kinds = frozenset(query["kind"].split(","))
            bad = sorted(kinds - _KINDS)
            if bad:
                raise ValueError(f"未知类型 / unknown kind: {', '.join(bad)}")
        priority = None
        if query.get("priority"):
            if query["priority"] not in ("0", "1", "2", "3", "4"):
                raise ValueError("优先级应为 0–4 / priority must be 0..4")
            priority = int(query["priority"])
        bbox = None
        if query.get("bbox"):
            try:
                s, w, n, e = (float(v) for v in query["bbox"].split(","))
            except ValueError:
                raise ValueError(
                    "bbox 应为 南,西,北,东 / bbox must be south,west,north,east"
                ) from None
            if not all(map(math.isfinite, (s, w, n, e))) or s > n or w > e:
                raise ValueError("bbox 应为 南,西,北,东 / bbox must be south,west,north,east")
            bbox = (s, w, n, e)
        times: list[int | None] = []
        for key in ("since_ms", "until_ms"):
            raw = query.get(key, "")
            if raw and (not raw.isdigit() or len(raw) > 15):
                raise ValueError(f"{key} 应为毫秒数 / {key} must be milliseconds")
            times.append(int(raw) if raw else None)
        return cls(kinds, priority, bbox, times[0], times[1])

    def where(self) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        args: list[Any] = []
        if self.kinds is not None:
            clauses.append(f"i.kind IN ({','.join('?' * len(self.kinds))})")
            args += sorted(self.kinds)
        else:
            # Tracks are on the map, receipts in the orders, a kit's status in the kit list,
            # audit rows behind `kit centre audit`: the feed is for reports.
            clauses.append(
                "i.kind NOT IN ('track', 'receipt', 'audit')"
                " AND NOT (i.kind = 'sensor' AND i.source = ?)"
            )
            args.append(KIT_STATUS_SOURCE)
        if self.priority is not None:
            clauses.append("i.priority = ?")
            args.append(self.priority)
        if self.bbox is not None:
            clauses.append("i.lat BETWEEN ? AND ? AND i.lon BETWEEN ? AND ?")
            s, w, n, e = self.bbox
            args += [s, n, w, e]
        if self.since_ms is not None:
            clauses.append("i.created_ms >= ?")
            args.append(self.since_ms)
        if self.until_ms is not None:
            clauses.append("i.created_ms <= ?")
            args.append(self.until_ms)
        return " AND ".join(clauses), args


def entry_json(entry: FeedEntry) -> dict[str, Any]:
    """One item as the dashboard shows it (its media by URL)."""
    s, item = entry.stored, entry.stored.item
    pos = item.position
    media = None
    if item.media is not None:
        media = {
            "mime": item.media.mime,
            "size": item.media.size,
            "url": f"/dashboard/media/{s.kit_id}/{s.seq}" if s.media_path else None,
        }
    return {
        "id": f"{s.kit_id}-{s.seq}",
        "feed": entry.feed_id,
        "kit_id": s.kit_id,
        "kit_name": entry.kit_name,
        "seq": s.seq,
        "kind": item.kind.value,
        "priority": int(item.priority),
        "created_ms": item.created_ms,
        "clock_ok": item.clock_ok,
        "source": item.source,
        "text": item.text,
        "lat": pos.lat if pos else None,
        "lon": pos.lon if pos else None,
        "data": json.loads(json.dumps(dict(item.data), default=str)),
        "media": media,
        "parent": str(item.parent) if item.parent else None,
        "uid": str(item.uid),
        "received_ms": s.received_ms,
        "link": s.link,
        "copies": s.copies,
    }


def _entries(rows: Any) -> list[FeedEntry]:
    from centre.store import StoredItem

    return [
        FeedEntry(
            int(feed_id or 0),
            str(name),
            StoredItem(kit, seq, decode(bytes(body)), received, link, copies, media_path),
        )
        for feed_id, name, kit, seq, body, received, link, copies, media_path in rows
    ]


_SELECT = (
    "SELECT i.feed_id, k.name, i.kit_id, i.seq, i.body, i.received_ms, i.link, i.copies,"
    " i.media_path FROM items i JOIN kits k ON k.kit_id = i.kit_id"
)


async def items(store: Store, filters: Filters, limit: int) -> list[dict[str, Any]]:
    """The newest ``limit`` items that pass ``filters``, newest first (by feed position)."""
    await store.sequence_feed()
    where, args = filters.where()
    async with (
        store.reading() as db,
        db.execute(
            f"{_SELECT} WHERE i.feed_id IS NOT NULL AND {where} ORDER BY i.feed_id DESC LIMIT ?",
            (*args, limit),
        ) as cur,
    ):
        rows = await cur.fetchall()
    return [entry_json(e) for e in _entries(rows)]


async def newer(store: Store, after: int, limit: int) -> list[dict[str, Any]]:
    """Items given feed positions past ``after`` (new, upgraded, or now with their file)."""
    await store.sequence_feed()
    return [entry_json(e) for e in await store.feed(after, limit)]


async def top_feed(store: Store) -> int:
    await store.sequence_feed()
    async with (
        store.reading() as db,
        db.execute("SELECT COALESCE(MAX(feed_id), 0) FROM items") as cur,
    ):
        (top,) = await cur.fetchone()
    return int(top)


async def kits(store: Store) -> list[dict[str, Any]]:
    """Every enrolled kit with its links (last heard on each), last contact, position,
    and what its newest status item (edge/statusreport.py) said: battery, hours left,
    power mode, backlog, its links online or not, disk, GNSS fix, and when it was made.
    Newest by the kit's creation time, so a status that arrives late over a slow link
    never replaces a newer one; every status field is None until a status arrived."""
    from edge.statusreport import parse_links

    numbers = ("battery_pct", "backlog", "backlog_p0", "backlog_p1", "hours_left", "disk_pct")
    flags = ("mains", "fix")
    out: dict[int, dict[str, Any]] = {}
    async with store.reading() as db:
        async with db.execute("SELECT kit_id, name, enabled FROM kits ORDER BY kit_id") as cur:
            for kit_id, name, enabled in await cur.fetchall():
                out[int(kit_id)] = {
                    "kit_id": int(kit_id),
                    "name": str(name),
                    "enabled": bool(enabled),
                    "links": {},
                    "last_ms": None,
                    "lat": None,
                    "lon": None,
                    "position_ms": None,
                    "items": 0,
                    **dict.fromkeys((*numbers, *flags, "power")),
                    "reported_links": {},
                    "links_more_up": 0,
                    "links_more_down": 0,
                    "status_ms": None,
                    "status_clock_ok": None,
                    "status_received_ms": None,
                }
        async with db.execute(
            "SELECT kit_id, link, MAX(received_ms), COUNT(*) FROM items GROUP BY kit_id, link"
        ) as cur:
            for kit_id, link, last, count in await cur.fetchall():
                kit = out.get(int(kit_id))
                if kit is None:
                    continue
                kit["links"][str(link)] = int(last)
                kit["last_ms"] = max(kit["last_ms"] or 0, int(last))
                kit["items"] += int(count)
        async with db.execute(
            "SELECT kit_id, lat, lon, created_ms FROM (SELECT kit_id, lat, lon, created_ms,"
            " ROW_NUMBER() OVER (PARTITION BY kit_id ORDER BY created_ms DESC, seq DESC) AS n"
            " FROM items WHERE lat IS NOT NULL AND source NOT LIKE ?) AS p WHERE n = 1",
            (MEMBER_SOURCE + "%",),
        ) as cur:
            for kit_id, lat, lon, created in await cur.fetchall():
                if int(kit_id) in out:
                    out[int(kit_id)].update(lat=lat, lon=lon, position_ms=int(created))
        async with db.execute(
            "SELECT kit_id, data, created_ms, clock_ok, received_ms FROM (SELECT kit_id, data,"
            " created_ms, clock_ok, received_ms, ROW_NUMBER() OVER (PARTITION BY kit_id"
            " ORDER BY created_ms DESC, seq DESC) AS n FROM items"
            " WHERE kind = 'sensor' AND source = ?) AS s WHERE n = 1",
            (KIT_STATUS_SOURCE,),
        ) as cur:
            for kit_id, data, created, clock_ok, received in await cur.fetchall():
                kit = out.get(int(kit_id))
                if kit is None:
                    continue
                values = json.loads(data)
                kit.update(
                    status_ms=int(created),
                    status_clock_ok=bool(clock_ok),
                    status_received_ms=int(received),
                )
                for key in numbers:
                    value = values.get(key)
                    if isinstance(value, int | float) and not isinstance(value, bool):
                        kit[key] = value
                for key in flags:
                    if isinstance(values.get(key), bool):
                        kit[key] = values[key]
                if values.get("power") in ("normal", "save", "critical"):
                    kit["power"] = values["power"]
                links = parse_links(values.get("links"))
                kit.update(
                    reported_links=links.links,
                    links_more_up=links.more_up,
                    links_more_down=links.more_down,
                )
    return list(out.values())


async def tracks(store: Store, since_ms: int) -> list[dict[str, Any]]:
    """Team members' positions (P2 tracks) since ``since_ms``, oldest first per member."""
    members: dict[str, dict[str, Any]] = {}
    async with (
        store.reading() as db,
        db.execute(
            "SELECT source, kit_id, lat, lon, created_ms, data FROM items"
            " WHERE kind = 'track' AND source LIKE ? AND created_ms >= ?"
            " ORDER BY created_ms DESC LIMIT ?",
            (MEMBER_SOURCE + "%", since_ms, TRACK_POINTS),
        ) as cur,
    ):
        rows = await cur.fetchall()
    for source, kit_id, lat, lon, created, data in reversed(list(rows)):
        node = str(source)[len(MEMBER_SOURCE) :]
        member = members.setdefault(
            node, {"node": node, "kit_id": int(kit_id), "points": [], "battery_pct": None}
        )
        member["points"].append([lat, lon, int(created)])
        battery = json.loads(data).get("battery")
        if isinstance(battery, int):
            member["battery_pct"] = battery
        member["kit_id"] = int(kit_id)  # the kit that heard the latest
    return list(members.values())


# Words in a link's name → what it is called on the dashboard (Chinese, English). Gateway
# and Kit-Link names are free text: a name with none of these words is shown as it is.
_LINK_WORDS: dict[str, tuple[str, str]] = {
    "beidou": ("北斗", "Beidou"),
    "bd": ("北斗", "Beidou"),
    "tiantong": ("天通", "Tiantong"),
    "tt": ("天通", "Tiantong"),
    "sms": ("短信", "SMS"),
    "vsat": ("卫星宽带", "VSAT"),
    "satellite": ("卫星", "satellite"),
    "mesh": ("自组网", "mesh"),
    "lora": ("LoRa", "LoRa"),
    "manet": ("自组网电台", "MANET radio"),
    "relay": ("中继", "relay"),
    "cellular": ("蜂窝", "cellular"),
    "cell": ("蜂窝", "cellular"),
    "lte": ("4G", "LTE"),
    "4g": ("4G", "4G"),
    "5g": ("5G", "5G"),
    "ethernet": ("有线", "Ethernet"),
    "eth": ("有线", "Ethernet"),
    "wifi": ("Wi-Fi", "Wi-Fi"),
}


def link_name(link: str) -> str:
    """A link as the dashboard names it, Chinese first: ``beidou`` → "北斗 / Beidou",
    ``ip:vsat`` → "卫星宽带 / VSAT", ``ip`` → "IP 网络 / IP"."""
    words = [_LINK_WORDS[w] for w in re.split(r"[:_.\-]+", link.lower()) if w in _LINK_WORDS]
    if not words:
        return "IP 网络 / IP" if link == "ip" else link
    zh = "".join(dict.fromkeys(z for z, _ in words))
    en = " ".join(dict.fromkeys(e for _, e in words))
    return f"{zh} / {en}"


async def item_detail(store: Store, kit_id: int, seq: int) -> dict[str, Any] | None:
    """One stored item as the feed shows it, with its delivery path: every copy that
    reached the centre (``arrivals``, first first: link, when, from where, relayed by which
    kit), or None. Items stored before arrivals were recorded list their first copy only;
    ``unrecorded`` counts the others."""
    async with store.reading() as db:
        async with db.execute(f"{_SELECT} WHERE i.kit_id = ? AND i.seq = ?", (kit_id, seq)) as cur:
            rows = await cur.fetchall()
        if not rows:
            return None
        async with db.execute(
            "SELECT a.copy_no, a.link, a.received_ms, a.via, a.relay_kit, k.name"
            " FROM arrivals a LEFT JOIN kits k ON k.kit_id = a.relay_kit"
            " WHERE a.kit_id = ? AND a.seq = ? ORDER BY a.copy_no",
            (kit_id, seq),
        ) as cur:
            arrivals = list(await cur.fetchall())
    detail = entry_json(_entries(rows)[0])
    detail["arrivals"] = [
        {
            "copy": int(copy),
            "first": copy == 1,
            "link": str(link),
            "link_name": link_name(str(link)),
            "received_ms": int(received),
            "via": via,
            "relay_kit": None if relay is None else int(relay),
            "relay_name": relay_name,
        }
        for copy, link, received, via, relay, relay_name in arrivals
    ]
    detail["unrecorded"] = max(detail["copies"] - len(arrivals), 0)
    return detail


async def media_path(store: Store, kit_id: int, seq: int) -> tuple[str, str] | None:
    """(path in the media folder, MIME type) of a stored item's file, or None."""
    stored = await store.item(kit_id, seq)
    if stored is None or stored.media_path is None or stored.item.media is None:
        return None
    return stored.media_path, stored.item.media.mime
