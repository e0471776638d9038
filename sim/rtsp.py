"""A small RTSP server, as a drone app or an IP camera is one: H.264 over RTP, TCP-interleaved.

ffmpeg packs a looped test clip into RTP (``-f rtp``, with the SDP it writes) and sends it
to this server over loopback UDP; the server answers OPTIONS, DESCRIBE, SETUP and PLAY
(``RTP/AVP/TCP;interleaved=0-1`` only, what the kit asks for with ``-rtsp_transport
tcp``) and forwards each RTP packet to every playing client as an interleaved frame
(``$``, channel, 16-bit length, packet). Enough for a reader of one video track; no
authentication, no UDP transport, no RTCP from the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import struct
import tempfile
from pathlib import Path

from sim.drone import clip

log = logging.getLogger("sim.rtsp")

SDP_WAIT_S = 10.0


class _RtpIn(asyncio.DatagramProtocol):
    def __init__(self, server: RtspServer) -> None:
        self.server = server

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.server.forward(data)


class RtspServer:
    """Serves a looped H.264 test clip at ``rtsp://127.0.0.1:<port>/<path>``."""

    def __init__(self, cache: Path, *, path: str = "live/drone", ffmpeg: str = "ffmpeg") -> None:
        self.cache = cache
        self.path = path
        self.ffmpeg = ffmpeg
        self.sessions = 0  # PLAY requests answered
        self.packets = 0  # RTP packets forwarded to clients
        self._sdp = ""
        self._players: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._ids = itertools.count(1)
        self._server: asyncio.Server | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._ffmpeg: asyncio.subprocess.Process | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"rtsp://127.0.0.1:{port}/{self.path}"

    async def start(self, port: int = 0) -> None:
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(
            lambda: _RtpIn(self), local_addr=("127.0.0.1", 0), family=socket.AF_INET
        )
        rtp_port = self._transport.get_extra_info("sockname")[1]
        source = await asyncio.to_thread(clip, self.cache, "h264", self.ffmpeg)
        self._tmp = tempfile.TemporaryDirectory(prefix="rtsp-")
        sdp = Path(self._tmp.name) / "stream.sdp"
        self._ffmpeg = await asyncio.create_subprocess_exec(
            self.ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin",
            "-stream_loop", "-1", "-re", "-i", str(source), "-map", "0:v:0", "-c", "copy",
            "-f", "rtp", "-payload_type", "96", "-sdp_file", str(sdp),
            f"rtp://127.0.0.1:{rtp_port}?pkt_size=1400",
            stdin=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        for _ in range(int(SDP_WAIT_S / 0.05)):
            if sdp.exists() and "a=rtpmap" in (text := sdp.read_text()):
                self._sdp = text
                break
            await asyncio.sleep(0.05)
        else:
            await self.close()
            raise RuntimeError("ffmpeg wrote no SDP")
        self._server = await asyncio.start_server(self._client, "127.0.0.1", port)

    async def close(self) -> None:
        """Stop serving: every client's connection is closed (the stream drops)."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._ffmpeg is not None:
            if self._ffmpeg.returncode is None:
                self._ffmpeg.kill()
            await self._ffmpeg.wait()
            self._ffmpeg = None
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    async def __aenter__(self) -> RtspServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def forward(self, packet: bytes) -> None:
        frame = b"$\x00" + struct.pack(">H", len(packet)) + packet
        for writer in list(self._players):
            if writer.is_closing():
                self._players.discard(writer)
                continue
            writer.write(frame)
            self.packets += 1

    def _describe(self) -> str:
        """ffmpeg's SDP for a client: no address or port (the media comes interleaved)."""
        lines = []
        for line in self._sdp.splitlines():
            if line.startswith("c="):
                line = "c=IN IP4 0.0.0.0"
            elif line.startswith("m=video"):
                line = "m=video 0 RTP/AVP 96"
            lines.append(line)
            if line.startswith("m=video"):
                lines.append("a=control:trackID=0")
        return "\r\n".join(lines) + "\r\n"

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        session = str(next(self._ids) + 10_000)
        try:
            while True:
                first = await reader.readexactly(1)
                if first == b"$":  # an interleaved RTCP report from the client: skipped
                    _, length = struct.unpack(">BH", await reader.readexactly(3))
                    await reader.readexactly(length)
                    continue
                head = first + await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("utf-8", "replace").split("\r\n")
                method, url = [*lines[0].split(" "), "", ""][:2]
                headers = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (line.partition(":") for line in lines[1:] if line)
                }
                if length := int(headers.get("content-length", "0")):
                    await reader.readexactly(length)
                reply, body = self._answer(method, url, headers, session)
                cseq = headers.get("cseq", "0")
                out = f"RTSP/1.0 {reply}\r\nCSeq: {cseq}\r\n"
                if method == "DESCRIBE" and reply.startswith("200"):
                    out += f"Content-Base: {url.rstrip('/')}/\r\nContent-Type: application/sdp\r\n"
                if method in ("SETUP", "PLAY", "GET_PARAMETER"):
                    out += f"Session: {session};timeout=60\r\n"
                if method == "SETUP":
                    out += "Transport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n"
                if method == "OPTIONS":
                    out += "Public: OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN, GET_PARAMETER\r\n"
                writer.write((out + f"Content-Length: {len(body)}\r\n\r\n").encode() + body)
                await writer.drain()
                if method == "PLAY" and reply.startswith("200"):
                    self.sessions += 1
                    self._players.add(writer)
                elif method == "TEARDOWN":
                    break
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            self._players.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            self._handlers.discard(task)

    def _answer(
        self, method: str, url: str, headers: dict[str, str], session: str
    ) -> tuple[str, bytes]:
        if method in ("OPTIONS", "GET_PARAMETER", "TEARDOWN", "PLAY"):
            return "200 OK", b""
        if method == "DESCRIBE":
            if not url.rstrip("/").endswith(self.path):
                return "404 Not Found", b""
            return "200 OK", self._describe().encode()
        if method == "SETUP":
            if "interleaved" not in headers.get("transport", ""):
                return "461 Unsupported Transport", b""
            return "200 OK", b""
        return "405 Method Not Allowed", b""
