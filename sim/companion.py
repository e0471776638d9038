"""A simulated Pico companion on a pty: the firmware's own logic, the outside world around it.

:class:`SimulatedPico` runs the SAME :mod:`firmware.supervisor` and :mod:`firmware.kitlink`
code as ``firmware/main.py`` on the Pico, under CPython: bytes from the kit's driver go
through the decoder into the supervisor, its answers and events go back on the line. The
board is simulated: a battery (``mv``, ``ma``, ``mains``, ``temp_dc``), a power button
(:meth:`press`, :meth:`hold`) and the Pi's power switch (:attr:`pi_power`, with every
change in :attr:`power_log`). :meth:`inject` puts raw bytes (line noise) on the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path

from firmware import kitlink, supervisor
from sim.pty import PtyNode

TICK_S = 0.01


class SimulatedPico:
    """The companion at the far end of a pty (``path`` is what the kit's driver opens)."""

    def __init__(
        self,
        link: str | os.PathLike[str] | None = None,
        *,
        config: supervisor.Config | None = None,
        mv: int = 7400,
        ma: int = -600,
        mains: bool = False,
        temp_dc: int = 250,
    ) -> None:
        self.node = PtyNode(None if link is None else Path(link), "simulated companion")
        self.supervisor = supervisor.Supervisor(config or supervisor.Config())
        self.decoder = kitlink.Decoder()
        self.sender = kitlink.Sender()
        self.mv, self.ma, self.mains, self.temp_dc = mv, ma, mains, temp_dc
        self.received: list[tuple[int, str, tuple[str, ...]]] = []
        self.power_log: list[tuple[float, bool]] = []
        self._button = False
        self._start = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    @property
    def path(self) -> str:
        return self.node.path

    @property
    def pi_power(self) -> bool:
        return self.supervisor.pi_power

    @property
    def malformed(self) -> int:
        return self.decoder.malformed

    def now_ms(self) -> int:
        return int((time.monotonic() - self._start) * 1000)

    async def start(self) -> None:
        master = self.node.open()
        self._sample()
        self.supervisor.boot(self.now_ms())
        self.power_log.append((time.monotonic(), True))
        loop = asyncio.get_running_loop()
        loop.add_reader(master, self._readable)
        self._task = asyncio.create_task(self._run(), name="simulated companion")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.node.master is not None:
            asyncio.get_running_loop().remove_reader(self.node.master)
        self.node.close()

    # --- the world --------------------------------------------------------------------

    def press(self) -> None:
        self._button = True
        self.supervisor.button(True, self.now_ms())

    def release(self) -> None:
        self._button = False
        self.supervisor.button(False, self.now_ms())

    async def hold(self, seconds: float) -> None:
        self.press()
        try:
            await asyncio.sleep(seconds)
        finally:
            self.release()

    def inject(self, data: bytes) -> None:
        """Raw bytes on the line towards the kit (noise, a cut frame)."""
        self._write(data)

    # --- the board --------------------------------------------------------------------

    def _sample(self) -> None:
        self.supervisor.battery(self.mv, self.ma, self.mains, self.temp_dc)

    def _readable(self) -> None:
        assert self.node.master is not None
        try:
            data = os.read(self.node.master, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return  # the kit closed its end: nothing to read until it opens it again
        if not self.supervisor.pi_power:
            return  # a Pi without power sends nothing: whatever the kit writes is lost
        for seq, kind, fields in self.decoder.feed(data):
            self.received.append((seq, kind, fields))
            reply, reply_fields = self.supervisor.command(seq, kind, fields, self.now_ms())
            self._write(self.sender.frame(reply, reply_fields))

    async def _run(self) -> None:
        ticks = 0
        while True:
            now = self.now_ms()
            if ticks % 10 == 0:
                self._sample()
            ticks += 1
            before = self.supervisor.pi_power
            self.supervisor.tick(now)
            if self.supervisor.pi_power != before:
                self.power_log.append((time.monotonic(), self.supervisor.pi_power))
            for event in self.supervisor.take_events():
                self._write(self.sender.frame("EVT", event))
            await asyncio.sleep(TICK_S)

    def _write(self, data: bytes) -> None:
        if self.node.master is None:
            return
        # A pty has no flow control; a kit that is away loses bytes, as on a real UART.
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self.node.master, data)
