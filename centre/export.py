"""Exports to the systems a command centre runs: GeoJSON over HTTP, MQTT events, signed
webhooks and Cursor-on-Target events for TAK.

All read the store's export feed (:meth:`Store.sequence_feed`, :meth:`Store.feed`): every
stored item gets a feed position once committed, and again when a better copy or its
media file arrives. GeoJSON readers keep their own cursor (``?since=`` the ``next`` of
the last answer). Each configured export runs in one process (the only one, or the
first worker), delivers a batch, then saves its cursor in the store: a restart or an
outage of the far end resumes where it stopped, and an item may be delivered twice
(after a crash between delivery and saving) but is never skipped. Consumers recognise
a repeat by ``uid``. Delivery runs beside ingest and never holds it up.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import time
import xml.etree.ElementTree as ET
from abc import ABC, abstractmethod
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from centre.config import ExportEntry
from centre.dashboard.access import require
from centre.errors import Refused
from centre.keys import STORE
from centre.store import FeedEntry, Store
from edge.item import Kind

log = logging.getLogger(__name__)

GEOJSON_TYPE = "application/geo+json"
MAX_PAGE = 1000
POLL_S = 0.5  # how often an idle export looks for new items
MAX_BACKOFF_S = 60.0
COT_STALE_S = 600  # a CoT event stays on the TAK map this long
COT_UNKNOWN = "9999999.0"  # CoT's "not known" for height and errors


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"


def feature(entry: FeedEntry) -> dict[str, Any]:
    """One item as a GeoJSON Feature (geometry null without a position)."""
    s, item = entry.stored, entry.stored.item
    pos = item.position
    geometry = None
    if pos is not None:
        coords = [pos.lon, pos.lat] if pos.alt_m is None else [pos.lon, pos.lat, pos.alt_m]
        geometry = {"type": "Point", "coordinates": coords}
    return {
        "type": "Feature",
        "id": f"{s.kit_id}-{s.seq}",
        "geometry": geometry,
        "properties": {
            "uid": str(item.uid),
            "kit_id": s.kit_id,
            "kit_name": entry.kit_name,
            "seq": s.seq,
            "kind": item.kind.value,
            "priority": int(item.priority),
            "created": _iso(item.created_ms),
            "clock_ok": item.clock_ok,
            "source": item.source,
            "text": item.text,
            "data": json.loads(json.dumps(dict(item.data), default=str)),
            "received": _iso(s.received_ms),
            "link": s.link,
            "copies": s.copies,
            "media": s.media_path,
            "feed": entry.feed_id,
        },
    }


def _cot_type(kind: Kind) -> str:
    if kind is Kind.SOS:
        return "b-a-o-tbl"  # emergency alert
    if kind is Kind.TRACK:
        return "a-f-G-U-C"  # a friendly ground unit: the team where it is
    return "b-m-p-s-m"  # a spot-map marker for a report


def cot_event(entry: FeedEntry) -> bytes | None:
    """The item as a Cursor-on-Target event, or None when it has no position."""
    s, item = entry.stored, entry.stored.item
    pos = item.position
    if pos is None:
        return None
    start = _iso(item.created_ms)
    uid = f"fieldkit-{s.kit_id}" if item.kind is Kind.TRACK else f"fieldkit-{s.kit_id}-{s.seq}"
    event = ET.Element(
        "event",
        version="2.0",
        uid=uid,
        type=_cot_type(item.kind),
        how="m-g",
        time=start,
        start=start,
        stale=_iso(item.created_ms + COT_STALE_S * 1000),
    )
    ET.SubElement(
        event,
        "point",
        lat=f"{pos.lat:.7f}",
        lon=f"{pos.lon:.7f}",
        hae=COT_UNKNOWN if pos.alt_m is None else f"{pos.alt_m:.1f}",
        ce=COT_UNKNOWN,
        le=COT_UNKNOWN,
    )
    detail = ET.SubElement(event, "detail")
    ET.SubElement(detail, "contact", callsign=entry.kit_name)
    if item.text:
        ET.SubElement(detail, "remarks").text = item.text
    ET.SubElement(
        detail,
        "fieldkit",
        item=str(item.uid),
        kind=item.kind.value,
        priority=str(int(item.priority)),
        kit=str(s.kit_id),
        seq=str(s.seq),
    )
    xml: bytes = ET.tostring(event, encoding="utf-8", xml_declaration=True)
    return xml


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The webhook signature header's value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


# -- GeoJSON over HTTP ------------------------------------------------------------------


def _query_int(request: web.Request, name: str, default: int, hi: int) -> int:
    raw = request.query.get(name, str(default))
    if not raw.isdigit() or len(raw) > 19 or int(raw) > hi:
        raise Refused(
            400, f"{name} 应为 0…{hi} 的整数：{raw!r}", f"{name} must be an integer 0..{hi}"
        )
    return int(raw)


async def get_geojson(request: web.Request) -> web.Response:
    """``GET /v1/export/geojson?since=N&limit=M``: the items after feed position N, as a
    FeatureCollection whose ``next`` is the ``since`` of the next request."""
    await require(request, write=False)
    since = _query_int(request, "since", 0, 2**63 - 1)
    limit = max(1, _query_int(request, "limit", 500, MAX_PAGE))
    store = request.app[STORE]
    await store.sequence_feed()
    entries = await store.feed(since, limit)
    body = {
        "type": "FeatureCollection",
        "features": [feature(e) for e in entries],
        "next": entries[-1].feed_id if entries else since,
    }
    return web.json_response(body, content_type=GEOJSON_TYPE, dumps=_dumps)


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/export/geojson", get_geojson, allow_head=False)


# -- sinks ------------------------------------------------------------------------------


class Sink(ABC):
    """Where one export delivers; :meth:`send` raises if the batch did not arrive whole."""

    @abstractmethod
    async def send(self, entries: Sequence[FeedEntry]) -> None: ...

    async def close(self) -> None:
        return None


class MqttSink(Sink):
    """A JSON Feature per item to ``<prefix>/<kit_id>/<kind>``, QoS 1 (the broker's ack)."""

    def __init__(self, name: str, url: str) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 1883
        self.prefix = parts.path.strip("/") or "fieldkit"
        import paho.mqtt.client as mqtt  # the "centre" extra: only when an MQTT export is set
        from paho.mqtt.enums import CallbackAPIVersion

        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"fieldkit-centre-{name}")
        if parts.username:
            self.client.username_pw_set(parts.username, parts.password)
        self.client.reconnect_delay_set(1, int(MAX_BACKOFF_S))
        self._started = False

    async def send(self, entries: Sequence[FeedEntry]) -> None:
        if not self._started:
            await asyncio.to_thread(self.client.connect, self.host, self.port, 30)
            self.client.loop_start()  # reconnects by itself from now on
            self._started = True
        sent = [
            self.client.publish(
                f"{self.prefix}/{e.stored.kit_id}/{e.stored.item.kind.value}",
                _dumps(feature(e)).encode(),
                qos=1,
            )
            for e in entries
        ]
        for info in sent:
            await asyncio.to_thread(info.wait_for_publish, 30.0)
            if not info.is_published():
                raise ConnectionError(f"broker {self.host}:{self.port} did not acknowledge")

    async def close(self) -> None:
        if self._started:
            self.client.disconnect()
            await asyncio.to_thread(self.client.loop_stop)


class WebhookSink(Sink):
    """``{"items": [Feature…]}`` POSTed with a timestamp and its HMAC-SHA256 signature."""

    def __init__(self, url: str, secret: str) -> None:
        self.url = url
        self.secret = secret
        self._http: aiohttp.ClientSession | None = None

    async def send(self, entries: Sequence[FeedEntry]) -> None:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        body = _dumps({"items": [feature(e) for e in entries]}).encode()
        stamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "X-Kit-Timestamp": stamp,
            "X-Kit-Signature": sign(self.secret, stamp, body),
        }
        async with self._http.post(self.url, data=body, headers=headers) as resp:
            if resp.status // 100 != 2:
                raise ConnectionError(f"{self.url} answered {resp.status}")

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()


class CotSink(Sink):
    """CoT events of the items with a position: over one TCP connection (reopened when it
    breaks) or one UDP datagram each."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.udp = parts.scheme == "udp"
        self.address = (parts.hostname or "127.0.0.1", parts.port or 8087)
        self._writer: asyncio.StreamWriter | None = None

    async def send(self, entries: Sequence[FeedEntry]) -> None:
        events = [ev for ev in map(cot_event, entries) if ev is not None]
        if not events:
            return
        if self.udp:
            loop = asyncio.get_running_loop()
            transport, _ = await loop.create_datagram_endpoint(
                asyncio.DatagramProtocol, remote_addr=self.address
            )
            try:
                for ev in events:
                    transport.sendto(ev)
            finally:
                transport.close()
            return
        try:
            if self._writer is None:
                _, self._writer = await asyncio.open_connection(*self.address)
            self._writer.write(b"".join(events))
            await self._writer.drain()
        except OSError:
            await self.close()
            raise

    async def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


def make_sink(entry: ExportEntry) -> Sink:
    if entry.kind == "mqtt":
        return MqttSink(entry.name, entry.url)
    if entry.kind == "webhook":
        return WebhookSink(entry.url, entry.secret)
    return CotSink(entry.url)


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def deliver(store: Store, entry: ExportEntry, sink: Sink, stop: asyncio.Event) -> None:
    """Deliver the feed to ``sink`` from the export's saved cursor until ``stop`` is set
    (a batch under way is finished and its cursor saved); a failed batch is sent again
    after ``retry_s``, then twice as long each time, up to 60 s."""
    backoff = entry.retry_s
    while not stop.is_set():
        try:
            await store.sequence_feed()
            cursor = await store.export_cursor(entry.name)
            entries = await store.feed(cursor, entry.batch)
            if not entries:
                await _pause(stop, POLL_S)
                continue
            wanted = [e for e in entries if e.stored.item.kind.value not in entry.skip_kinds]
            if wanted:
                await sink.send(wanted)
            await store.set_export_cursor(entry.name, entries[-1].feed_id)
            backoff = entry.retry_s
        except (OSError, RuntimeError, ValueError, aiohttp.ClientError) as err:
            log.warning(
                "导出 %s 失败，%.0f 秒后重试 / export %s failed, again in %.0f s: %s",
                entry.name,
                backoff,
                entry.name,
                backoff,
                err,
            )
            await _pause(stop, backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_S)


STOP_WAIT_S = 10.0  # for a batch under way when the centre stops


class Exports:
    """The configured exports, each delivering on its own task; :meth:`close` stops them."""

    def __init__(self, store: Store, entries: Sequence[ExportEntry]) -> None:
        self.stop = asyncio.Event()
        self.sinks = [(entry, make_sink(entry)) for entry in entries]
        self.tasks = [
            asyncio.create_task(deliver(store, entry, sink, self.stop), name=f"export {entry.name}")
            for entry, sink in self.sinks
        ]

    async def close(self) -> None:
        """Let each batch under way finish (so a clean restart sends nothing twice), then
        stop; a far end that does not answer in time gets the batch again after start."""
        self.stop.set()
        if self.tasks:
            _, late = await asyncio.wait(self.tasks, timeout=STOP_WAIT_S)
            for task in late:
                task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for _, sink in self.sinks:
            await sink.close()
