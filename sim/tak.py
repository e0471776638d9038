"""A TAK server's receiving end, simulated: Cursor-on-Target events over TCP (a stream of
``<event>`` documents) and UDP (one per datagram), parsed into :class:`CotEvent`.

What it takes is what a TAK server shows: an ``event`` with ``uid``, ``type`` and the
three times, a ``point`` with ``lat``/``lon`` in range, and the ``detail`` the centre
fills (``contact`` callsign, ``remarks``, the kit's own ``fieldkit`` element). Anything
else is counted in :attr:`TakReceiver.refused` and dropped; a document type declaration
(entities) is refused outright.
"""

from __future__ import annotations

import asyncio
import contextlib
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

MAX_EVENT_BYTES = 64 * 1024  # a TCP stream without an end of event this long is cut
_END = b"</event>"


class BadCot(ValueError):
    """Bytes that are not a CoT event the receiver takes."""


@dataclass(frozen=True, slots=True)
class CotEvent:
    uid: str
    type: str
    how: str
    time: str
    start: str
    stale: str
    lat: float
    lon: float
    hae: float
    callsign: str | None = None
    remarks: str | None = None
    fieldkit: dict[str, str] = field(default_factory=dict)


def _coordinate(point: ET.Element, name: str, limit: float) -> float:
    try:
        value = float(point.attrib[name])
    except (KeyError, ValueError):
        raise BadCot(f"point {name} missing or not a number") from None
    if not -limit <= value <= limit:
        raise BadCot(f"point {name} {value} out of range")
    return value


def parse_event(data: bytes) -> CotEvent:
    """One CoT event document; :class:`BadCot` for anything else."""
    if b"<!DOCTYPE" in data.upper() or b"<!ENTITY" in data.upper():
        raise BadCot("document type declarations are refused")
    try:
        root = ET.fromstring(data)
    except (ET.ParseError, ValueError) as err:  # ValueError: bytes expat cannot take
        raise BadCot(f"not XML: {err}") from None
    if root.tag != "event":
        raise BadCot(f"root element is {root.tag!r}, not event")
    try:
        uid, kind, how = root.attrib["uid"], root.attrib["type"], root.attrib.get("how", "")
        times = root.attrib["time"], root.attrib["start"], root.attrib["stale"]
    except KeyError as err:
        raise BadCot(f"event without {err.args[0]}") from None
    point = root.find("point")
    if point is None:
        raise BadCot("event without point")
    lat, lon = _coordinate(point, "lat", 90.0), _coordinate(point, "lon", 180.0)
    hae = _coordinate(point, "hae", 1e8)
    detail = root.find("detail")
    contact = detail.find("contact") if detail is not None else None
    remarks = detail.find("remarks") if detail is not None else None
    kit = detail.find("fieldkit") if detail is not None else None
    return CotEvent(
        uid,
        kind,
        how,
        *times,
        lat,
        lon,
        hae,
        callsign=contact.attrib.get("callsign") if contact is not None else None,
        remarks=remarks.text if remarks is not None else None,
        fieldkit=dict(kit.attrib) if kit is not None else {},
    )


def split_stream(buffer: bytes) -> tuple[list[bytes], bytes]:
    """Complete event documents at the start of a TCP stream's ``buffer``, and the rest."""
    docs: list[bytes] = []
    while (end := buffer.find(_END)) >= 0:
        docs.append(buffer[: end + len(_END)].strip())
        buffer = buffer[end + len(_END) :]
    return docs, buffer


@dataclass
class TakReceiver:
    """Listens on TCP and UDP (free ports, see ``tcp_port`` and ``udp_port``) and keeps
    every event taken, in order."""

    host: str = "127.0.0.1"
    events: list[CotEvent] = field(default_factory=list)
    refused: int = 0
    tcp_port: int = 0
    udp_port: int = 0
    _server: asyncio.Server | None = None
    _udp: asyncio.DatagramTransport | None = None
    _streams: set[asyncio.Task[None]] = field(default_factory=set)

    def _take(self, doc: bytes) -> None:
        try:
            self.events.append(parse_event(doc))
        except BadCot:
            self.refused += 1

    async def _stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._streams.add(task)
        buffer = b""
        try:
            while chunk := await reader.read(65536):
                docs, buffer = split_stream(buffer + chunk)
                for doc in docs:
                    self._take(doc)
                if len(buffer) > MAX_EVENT_BYTES:
                    self.refused += 1
                    break
        except ConnectionError:
            pass
        finally:
            self._streams.discard(task)
            writer.close()

    async def start(self) -> TakReceiver:
        self._server = await asyncio.start_server(self._stream, self.host, 0)
        self.tcp_port = self._server.sockets[0].getsockname()[1]
        receiver = self

        class _Datagrams(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                receiver._take(data)

        loop = asyncio.get_running_loop()
        self._udp, _ = await loop.create_datagram_endpoint(_Datagrams, local_addr=(self.host, 0))
        self.udp_port = self._udp.get_extra_info("sockname")[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._streams):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self._server.wait_closed()
        if self._udp is not None:
            self._udp.close()
