"""Exports: GeoJSON from a cursor, MQTT events to a real mosquitto, signed webhooks retried
with back-off, Cursor-on-Target to a TAK receiver; each item once, resumed after a restart."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import paho.mqtt.client as mqtt
import pytest
from centre_helpers import CREATED_MS, RunningCentre, answer, batch, report
from centre_helpers import centre_fixture as centre_fixture  # pytest fixtures, found by name
from centre_helpers import config_fixture as config_fixture
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion
from pg_helpers import pg_server_fixture as pg_server_fixture

from centre.config import CentreConfig, ExportEntry
from centre.export import cot_event
from centre.store import FeedEntry, StoredItem
from edge.item import Item, Kind, Position, new_item
from security.mirror import batch_item
from security.state import AuditRow, SecurityState
from sim.tak import BadCot, TakReceiver, parse_event, split_stream


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.05)


def note(text: str) -> Item:
    """A message without a position."""
    return new_item(Kind.MESSAGE, source="web", text=text, created_ms=CREATED_MS, clock_ok=True)


def with_exports(config: CentreConfig, *exports: ExportEntry) -> CentreConfig:
    return config.model_copy(update={"exports": exports})


# --- GeoJSON over HTTP ------------------------------------------------------------------


def test_geojson_gives_each_stored_item_once_from_the_readers_cursor(
    centre: RunningCentre,
) -> None:
    sos = report("七号楼有人呼救")
    answer(centre.post_items(7, batch([(1, sos), (2, note("收到"))])))
    resp = centre.http.get(f"{centre.url}/v1/export/geojson?since=0", timeout=30)
    assert resp.status_code == 200 and resp.headers["Content-Type"].startswith(
        "application/geo+json"
    )
    page = resp.json()
    assert page["type"] == "FeatureCollection"
    first, second = page["features"]
    assert first["geometry"] == {"type": "Point", "coordinates": [104.46, 31.83, 650.0]}
    props = first["properties"]
    assert (props["uid"], props["kit_id"], props["kit_name"], props["seq"]) == (
        str(sos.uid),
        7,
        "北川一队",
        1,
    )
    assert (props["kind"], props["text"], props["data"], props["link"]) == (
        "situation",
        "七号楼有人呼救",
        {"count": 4},
        "ip",
    )
    assert props["created"] == "2025-06-15T15:06:40.000Z"
    assert second["geometry"] is None and second["properties"]["text"] == "收到"
    cursor = page["next"]

    answer(centre.post_items(7, batch([(1, sos)]), link="bgan"))  # a copy: nothing new
    answer(centre.post_items(8, batch([(1, note("汶川二队到达"))])))
    page = centre.http.get(f"{centre.url}/v1/export/geojson?since={cursor}", timeout=30).json()
    assert [f["id"] for f in page["features"]] == ["8-1"]
    assert page["next"] > cursor
    again = centre.http.get(f"{centre.url}/v1/export/geojson?since={page['next']}", timeout=30)
    assert again.json() == {"type": "FeatureCollection", "features": [], "next": page["next"]}


@pytest.mark.parametrize("query", ["since=-1", "since=x", "limit=1001", "since=" + "9" * 20])
def test_geojson_refuses_a_bad_cursor_or_limit(centre: RunningCentre, query: str) -> None:
    resp = centre.http.get(f"{centre.url}/v1/export/geojson?{query}", timeout=30)
    assert resp.status_code == 400 and "must be an integer" in resp.text


# --- MQTT to a real mosquitto -------------------------------------------------------------


@pytest.fixture(name="broker")
def broker_fixture(tmp_path: Path) -> Iterator[int]:
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = subprocess.Popen(
        ["/usr/sbin/mosquitto", "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        until(lambda: _accepts(port), "mosquitto listening")
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class Subscriber:
    def __init__(self, port: int) -> None:
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2)
        subscribed = threading.Event()
        self.client.on_message = lambda c, u, m: self.messages.append(
            (m.topic, json.loads(m.payload))
        )
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_connect = lambda c, *a: c.subscribe("fieldkit/#", qos=1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert subscribed.wait(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_mqtt_events_reach_a_real_broker_once_and_resume_after_a_restart(
    config: CentreConfig, broker: int
) -> None:
    sub = Subscriber(broker)
    config = with_exports(
        config, ExportEntry(name="bus", kind="mqtt", url=f"mqtt://127.0.0.1:{broker}/fieldkit")
    )
    reports = [(s, report(f"报告 {s}")) for s in range(5)]
    try:
        centre = RunningCentre(config)
        try:
            answer(centre.post_items(7, batch(reports)))
            answer(centre.post_items(7, batch(reports[:3]), link="bgan"))  # copies: not again
            until(lambda: len(sub.messages) >= 5, "5 events")
        finally:
            centre.stop()
        centre = RunningCentre(config)  # the cursor was saved: nothing is sent again
        try:
            answer(centre.post_items(8, batch([(0, note("新消息"))])))
            until(lambda: any(t == "fieldkit/8/message" for t, _ in sub.messages), "kit 8")
        finally:
            centre.stop()
    finally:
        sub.close()
    topics = [t for t, _ in sub.messages]
    assert topics == ["fieldkit/7/situation"] * 5 + ["fieldkit/8/message"]
    assert [m["properties"]["text"] for _, m in sub.messages] == [
        *(f"报告 {s}" for s in range(5)),
        "新消息",
    ]


# --- signed webhooks ----------------------------------------------------------------------


class Hook(BaseHTTPRequestHandler):
    failures = 2  # the first POSTs are answered 503: the centre must retry
    posts: ClassVar[list[tuple[dict[str, str], bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Hook.posts.append((dict(self.headers), body))
        status = 503 if len(Hook.posts) <= Hook.failures else 204
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_webhook_posts_are_signed_and_retried_with_back_off_until_taken(
    config: CentreConfig, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    Hook.posts = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    secret = "s3cret-共享"
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    config = with_exports(
        config, ExportEntry(name="hook", kind="webhook", url=url, secret=secret, retry_s=0.1)
    )
    try:
        centre = RunningCentre(config)
        try:
            mirrored = batch_item(7, audit_rows(tmp_path))  # a kit's audit log stays in the centre
            answer(centre.post_items(7, batch([(1, report()), (2, note("收到")), (3, mirrored)])))
            until(lambda: len(Hook.posts) == 3, "the third POST")
        finally:
            centre.stop()
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    bodies = {body for _, body in Hook.posts}
    assert len(bodies) == 1  # the same batch each time, until it was taken
    for headers, body in Hook.posts:
        stamp = headers["X-Kit-Timestamp"]
        mac = hmac.new(secret.encode(), stamp.encode() + b"." + body, hashlib.sha256)
        assert headers["X-Kit-Signature"] == "sha256=" + mac.hexdigest()
        assert abs(int(stamp) - time.time()) < 600
    items = json.loads(Hook.posts[-1][1])["items"]
    assert [(f["properties"]["kit_id"], f["properties"]["seq"]) for f in items] == [(7, 1), (7, 2)]
    assert caplog.text.count("export hook failed") >= 2
    assert "answered 503" in caplog.text


def audit_rows(folder: Path) -> list[AuditRow]:
    """Two chained rows of a kit's audit log, as the kit's mirror files them."""
    state = SecurityState(folder / "kit-security.sqlite3")
    try:
        state.audit("login", 7, "wrong-password", "admin", "web")
        state.audit("config-changed", 7, "admin", "links.0.enabled", "web")
        return state.rows_after(0, 10)
    finally:
        state.close()


# --- Cursor-on-Target to a TAK receiver ---------------------------------------------------


class Tak:
    """The receiver on its own event loop thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever)
        self.thread.start()
        self.receiver = self._call(TakReceiver().start())

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def close(self) -> None:
        self._call(self.receiver.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_cot_events_of_located_items_reach_a_tak_receiver(
    config: CentreConfig, transport: str
) -> None:
    tak = Tak()
    try:
        port = tak.receiver.tcp_port if transport == "tcp" else tak.receiver.udp_port
        url = f"{transport}://127.0.0.1:{port}"
        centre = RunningCentre(with_exports(config, ExportEntry(name="tak", kind="cot", url=url)))
        try:
            sos = new_item(
                Kind.SOS,
                source="web",
                text="两人被困 <地下室> & 需要担架",
                position=Position(31.8301, 104.4602, None),
                created_ms=CREATED_MS,
                clock_ok=True,
            )
            answer(centre.post_items(7, batch([(1, note("无位置")), (2, sos), (3, report())])))
            until(lambda: len(tak.receiver.events) == 2, "two events")
        finally:
            centre.stop()
    finally:
        tak.close()
    alert, situation = tak.receiver.events
    assert (alert.uid, alert.type, alert.how) == ("fieldkit-7-2", "b-a-o-tbl", "m-g")
    assert (alert.lat, alert.lon, alert.hae) == (31.8301, 104.4602, 9999999.0)
    assert (alert.callsign, alert.remarks) == ("北川一队", "两人被困 <地下室> & 需要担架")
    assert alert.fieldkit == {
        "item": str(sos.uid),
        "kind": "sos",
        "priority": "0",
        "kit": "7",
        "seq": "2",
    }
    assert (alert.start, alert.stale) == ("2025-06-15T15:06:40.000Z", "2025-06-15T15:16:40.000Z")
    assert (situation.uid, situation.type, situation.hae) == ("fieldkit-7-3", "b-m-p-s-m", 650.0)
    assert tak.receiver.refused == 0


# --- the TAK receiver's parser ------------------------------------------------------------


def _entry(item: Item, kit_name: str) -> FeedEntry:
    return FeedEntry(1, kit_name, StoredItem(7, 1, item, CREATED_MS, "ip", 1, None))


texts = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Cn")), max_size=80)


@settings(max_examples=80, deadline=None)
@given(
    lat=st.floats(-90, 90),
    lon=st.floats(-180, 180),
    text=texts,
    name=texts.filter(bool),
    cuts=st.lists(st.integers(0, 2000), max_size=4),
)
def test_cot_events_parse_back_whatever_the_text_and_however_the_stream_is_cut(
    lat: float, lon: float, text: str, name: str, cuts: list[int]
) -> None:
    item = new_item(
        Kind.SOS,
        source="web",
        text=text or None,
        position=Position(round(lat, 7), round(lon, 7), 12.5),
        created_ms=CREATED_MS,
        clock_ok=True,
    )
    event = cot_event(_entry(item, name))
    assert event is not None
    stream = event + b"\n" + event
    pieces, rest, docs = sorted({min(c, len(stream)) for c in cuts}), b"", []
    for lo, hi in zip([0, *pieces], [*pieces, len(stream)], strict=True):
        got, rest = split_stream(rest + stream[lo:hi])
        docs += got
    assert rest == b"" and len(docs) == 2
    parsed = parse_event(docs[1])
    assert (parsed.lat, parsed.lon, parsed.hae) == (round(lat, 7), round(lon, 7), 12.5)
    assert (parsed.callsign, parsed.remarks or "") == (name, text)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_arbitrary_bytes_are_a_cot_event_or_refused_never_a_crash(data: bytes) -> None:
    with contextlib.suppress(BadCot):
        parse_event(data)


@pytest.mark.parametrize(
    "doc",
    [
        b'<!DOCTYPE e [<!ENTITY a "aaaa">]><event uid="u" type="t" time="" start="" stale="">'
        b'<point lat="1" lon="1" hae="0"/></event>',
        b'<event uid="u" type="t" time="" start="" stale=""><point lat="91" lon="1" hae="0"/>'
        b"</event>",
        b'<event type="t" time="" start="" stale=""><point lat="1" lon="1" hae="0"/></event>',
        b'<evento uid="u" type="t" time="" start="" stale=""/>',
    ],
)
def test_entities_bad_coordinates_and_missing_fields_are_refused(doc: bytes) -> None:
    with pytest.raises(BadCot):
        parse_event(doc)
