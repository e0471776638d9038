"""Serial devices for asyncio on pyserial: bytes in by callback, writes out, reopened on loss."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import serial

from edge.errors import KitError

log = logging.getLogger(__name__)


class PortOffline(KitError, ConnectionError):
    """The serial device is not open (unplugged, or not yet back)."""


@dataclass(frozen=True, slots=True)
class Backoff:
    """Waits between reopen attempts: ``first_s``, times ``factor`` each time, at most ``max_s``."""

    first_s: float = 0.5
    max_s: float = 10.0
    factor: float = 2.0


DEFAULT_BACKOFF = Backoff()


class SerialPort:
    """One device path, kept open: read by the event loop, reopened whenever it goes away.

    pyserial opens and configures the port (8N1 at ``baudrate``, exclusive lock); its
    file descriptor is then watched with ``loop.add_reader``, so no thread is needed.
    The reader loop never dies silently: any failure (device gone, read error, a fault
    in ``on_data``) is logged, the port goes offline (``on_state(False)``) and is
    reopened after a back-off; ``on_state(True)`` follows each successful open.
    """

    def __init__(
        self,
        path: str,
        on_data: Callable[[bytes], None],
        *,
        on_state: Callable[[bool], None] | None = None,
        baudrate: int = 115200,
        backoff: Backoff = DEFAULT_BACKOFF,
    ) -> None:
        self.path = path
        self.on_data = on_data
        self.on_state = on_state
        self.baudrate = baudrate
        self.backoff = backoff
        self.opens = 0  # successful opens; more than one means it reconnected
        self.losses = 0  # times an open device went away or failed
        self._serial: serial.Serial | None = None
        self._lost = asyncio.Event()
        self._write_lock = asyncio.Lock()
        self._write_waiter: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._quiet = False  # an open failure was already logged in this outage

    @property
    def online(self) -> bool:
        return self._serial is not None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"serial {self.path}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._go_offline()

    async def write(self, data: bytes) -> None:
        """Write all of ``data``; raises :class:`PortOffline` if the device is not there."""
        async with self._write_lock:
            view = memoryview(data)
            while view:
                port = self._serial
                if port is None:
                    raise self._offline()
                try:
                    view = view[os.write(port.fileno(), view) :]
                except BlockingIOError:
                    await self._writable(port.fileno())
                except OSError as exc:
                    self._lose(f"write failed: {exc}")
                    raise self._offline() from exc

    def _offline(self) -> PortOffline:
        return PortOffline(f"串口设备不在线：{self.path}", f"serial device offline: {self.path}")

    async def _writable(self, fd: int) -> None:
        loop = asyncio.get_running_loop()
        waiter = self._write_waiter = loop.create_future()

        def ready() -> None:
            if not waiter.done():
                waiter.set_result(None)

        loop.add_writer(fd, ready)
        try:
            await waiter
        finally:
            loop.remove_writer(fd)
            self._write_waiter = None

    async def _run(self) -> None:
        delay = self.backoff.first_s
        while True:
            try:
                if self._open():
                    delay = self.backoff.first_s
                    await self._lost.wait()
            except Exception:  # the loop must outlive any fault, including a callback's
                log.exception("%s: reader failed; will reopen", self.path)
                self.losses += 1
            self._go_offline()
            await asyncio.sleep(delay)
            delay = min(delay * self.backoff.factor, self.backoff.max_s)

    def _open(self) -> bool:
        try:
            port = serial.Serial(
                self.path,
                self.baudrate,
                bytesize=8,
                parity="N",
                stopbits=1,
                timeout=0,
                exclusive=True,
            )
        except (OSError, serial.SerialException) as exc:
            if not self._quiet:  # one warning per outage, not one per retry
                log.warning("%s: cannot open (%s); retrying with back-off", self.path, exc)
                self._quiet = True
            return False
        os.set_blocking(port.fileno(), False)
        self._serial, self._quiet = port, False
        self._lost.clear()
        self.opens += 1
        asyncio.get_running_loop().add_reader(port.fileno(), self._readable)
        log.info("%s: open", self.path)
        if self.on_state is not None:
            self.on_state(True)
        return True

    def _readable(self) -> None:
        port = self._serial
        if port is None:
            return
        try:
            data = os.read(port.fileno(), 65536)
        except BlockingIOError:
            return
        except OSError as exc:
            self._lose(f"read failed: {exc}")
            return
        if not data:
            self._lose("device went away (end of file)")
            return
        try:
            self.on_data(data)
        except Exception:  # a consumer's bug must not end the reader without a trace
            log.exception("%s: data handler failed", self.path)
            self._lose("data handler failed")

    def _lose(self, why: str) -> None:
        if self._serial is None:
            return
        log.warning("%s: lost (%s); reopening", self.path, why)
        self.losses += 1
        self._go_offline()
        self._lost.set()

    def _go_offline(self) -> None:
        port, self._serial = self._serial, None
        if port is None:
            return
        asyncio.get_running_loop().remove_reader(port.fileno())
        if self._write_waiter is not None and not self._write_waiter.done():
            self._write_waiter.set_exception(self._offline())
        port.close()
        if self.on_state is not None:
            try:
                self.on_state(False)
            except Exception:  # going offline must complete whatever the listener does
                log.exception("%s: state listener failed", self.path)
