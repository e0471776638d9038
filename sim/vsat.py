"""A simulated iDirect-like VSAT remote: a telnet console and an HTTP status page on loopback.

It speaks the formats ``drivers/vsat.py`` assumes (unconfirmed, see there): a login with
``Username:``/``Password:`` prompts, ``rx snr`` → ``Rx SNR: 9.4``, ``rmtstat`` →
``Remote State: IN NETWORK`` with rates, each answer ending in the ``> `` prompt. On
connect it asks for telnet options (WILL ECHO, WILL SGA, DO NAWS) as real consoles do,
and records what the client answered in ``negotiation``.

Wire-side controls: ``state`` (:class:`RemoteState`), ``snr_db``, and :meth:`inject` /
:meth:`clear` for faults: garbage answers, a session that hangs, connections refused.
The HTTP page ``/api/status`` (JSON) and ``/status.html`` report the same state.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import random

from aiohttp import web

from drivers.device import Lifecycle

IAC, DONT, DO, WONT, WILL = 255, 254, 253, 252, 251
ECHO, SGA, NAWS = 1, 3, 31
PROMPT = b"\r\n> "


class RemoteState(enum.Enum):
    IN_NETWORK = "IN NETWORK"
    ACQUIRING = "ACQUIRING"
    DOWN = "OFFLINE"


class Fault(enum.Enum):
    GARBAGE = "garbage"  # answers are random bytes (then the prompt)
    HANG = "hang"  # sessions are accepted and never answered
    REFUSE = "refuse"  # nothing listens: connections are refused


class SimulatedRemote(Lifecycle):
    """The remote's management side. ``telnet_port``/``http_port`` are fixed once started."""

    def __init__(
        self,
        *,
        username: str = "admin",
        password: str = "iDirect",
        state: RemoteState = RemoteState.IN_NETWORK,
        snr_db: float = 9.4,
        rx_bps: int = 4_096_000,
        tx_bps: int = 1_024_000,
        host: str = "127.0.0.1",
        seed: int = 0,
    ) -> None:
        self.username, self.password = username, password
        self.state = state
        self.snr_db = snr_db
        self.rx_bps, self.tx_bps = rx_bps, tx_bps
        self.host = host
        self.telnet_port = 0
        self.http_port = 0
        self.fault: Fault | None = None
        self.sessions = 0
        self.commands: list[str] = []  # every command line received after login
        self.negotiation = bytearray()  # the client's telnet answers
        self._rng = random.Random(seed)
        self._telnet: asyncio.Server | None = None
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._sessions: set[asyncio.StreamWriter] = set()
        self._stop = asyncio.Event()  # closing: hung sessions and pages end

    @property
    def status_url(self) -> str:
        return f"http://{self.host}:{self.http_port}/api/status"

    @property
    def html_url(self) -> str:
        return f"http://{self.host}:{self.http_port}/status.html"

    # --- life ----------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/api/status", self._json)
        app.router.add_get("/status.html", self._html)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        await self._listen()

    async def close(self) -> None:
        self._stop.set()
        await self._stop_listening()
        for writer in list(self._sessions):
            writer.close()  # each session reads its end and finishes
        while self._sessions:
            await asyncio.sleep(0.01)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def inject(self, fault: Fault) -> None:
        self.fault = fault
        if fault is Fault.REFUSE:
            await self._stop_listening()

    async def clear(self) -> None:
        """No more faults; listening again on the same ports if it stopped."""
        self.fault = None
        if self._telnet is None:
            await self._listen()

    async def _listen(self) -> None:
        self._telnet = await asyncio.start_server(self._session, self.host, self.telnet_port)
        self.telnet_port = self._telnet.sockets[0].getsockname()[1]
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, self.host, self.http_port)
        await self._site.start()
        if not self.http_port:
            server = self._site._server
            assert isinstance(server, asyncio.Server)
            self.http_port = server.sockets[0].getsockname()[1]

    async def _stop_listening(self) -> None:
        if self._telnet is not None:
            self._telnet.close()
            await self._telnet.wait_closed()
            self._telnet = None
        if self._site is not None:
            await self._site.stop()
            self._site = None

    # --- answers ---------------------------------------------------------------------------

    def snr_answer(self) -> str:
        if self.state is RemoteState.DOWN:
            return "Rx SNR: --"  # no carrier locked: nothing to measure
        return f"Rx SNR: {self.snr_db:.1f}"

    def rmtstat_answer(self) -> str:
        lines = [f"Remote State: {self.state.value}"]
        if self.state is RemoteState.IN_NETWORK:
            lines += [
                f"Rx Rate: {self.rx_bps // 1000} kbps",
                f"Tx Rate: {self.tx_bps // 1000} kbps",
            ]
        return "\r\n".join(lines)

    def _garbage(self) -> bytes:
        return self._rng.randbytes(self._rng.randint(1, 200)).replace(b">", b"")

    # --- telnet ----------------------------------------------------------------------------

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._sessions.add(writer)
        self.sessions += 1
        try:
            if self.fault is Fault.HANG:
                await self._stop.wait()
                return
            writer.write(bytes((IAC, WILL, ECHO, IAC, WILL, SGA, IAC, DO, NAWS)))
            if await self._login(reader, writer):
                await self._console(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._sessions.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _line(self, reader: asyncio.StreamReader) -> str | None:
        """One line from the client with its telnet commands taken out; None at the end."""
        raw = await reader.readline()
        if not raw:
            return None
        data = bytearray()
        i = 0
        while i < len(raw):
            if raw[i] == IAC and i + 2 < len(raw) and raw[i + 1] in (DO, DONT, WILL, WONT):
                self.negotiation += raw[i : i + 3]
                i += 3
            else:
                data.append(raw[i])
                i += 1
        return data.decode("latin-1").strip()

    async def _login(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        for _ in range(3):
            writer.write(b"\r\nUsername: ")
            user = await self._line(reader)
            writer.write(b"Password: ")
            password = await self._line(reader)
            if user is None or password is None:
                return False
            if (user, password) == (self.username, self.password):
                writer.write(b"\r\nWelcome to the iDirect remote" + PROMPT)
                return True
            writer.write(b"\r\nLogin incorrect")
        return False

    async def _console(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (command := await self._line(reader)) is not None:
            self.commands.append(command)
            if command == "exit":
                return
            if self.fault is Fault.GARBAGE:
                answer = self._garbage()
            elif command == "rx snr":
                answer = self.snr_answer().encode()
            elif command == "rmtstat":
                answer = self.rmtstat_answer().encode()
            else:
                answer = f"Unknown command: {command}".encode("latin-1")
            writer.write(answer + PROMPT)
            await writer.drain()

    # --- HTTP ------------------------------------------------------------------------------

    async def _json(self, request: web.Request) -> web.StreamResponse:
        if self.fault is Fault.HANG:
            await self._stop.wait()
        if self.fault is Fault.GARBAGE:
            return web.Response(body=self._garbage(), content_type="application/json")
        up = self.state is RemoteState.IN_NETWORK
        body = {
            "state": self.state.value,
            "snr": None if self.state is RemoteState.DOWN else self.snr_db,
            "rx_bps": self.rx_bps if up else None,
            "tx_bps": self.tx_bps if up else None,
        }
        return web.Response(text=json.dumps(body), content_type="application/json")

    async def _html(self, request: web.Request) -> web.StreamResponse:
        if self.fault is Fault.HANG:
            await self._stop.wait()
        if self.fault is Fault.GARBAGE:
            return web.Response(body=self._garbage(), content_type="text/html")
        snr = "--" if self.state is RemoteState.DOWN else f"{self.snr_db:.1f} dB"
        page = (
            "<html><body><table>"
            f"<tr><th>State</th><td id='state'>{self.state.value}</td></tr>"
            f"<tr><th>SNR</th><td id='snr'>{snr}</td></tr>"
            "</table></body></html>"
        )
        return web.Response(text=page, content_type="text/html")
