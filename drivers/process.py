"""`kit drivers`: the kit's own devices — GNSS, battery, SOS button and lights — in one process.

What each device means for the rest of the kit:

- GNSS: every fix goes on the bus (``position.fix``); the last good position goes with
  an SOS; with ``gnss.set_clock`` the system clock is stepped from GNSS when nothing
  else set it, and until the clock is trusted an SOS is stamped with GNSS time.
- Battery: every level goes on the bus (``power.battery``); the power policy's mode
  (``power.mode``) makes the uplink hold bulk media back, and at critical the kit
  settles, flushes the store and powers off.
- SOS button: held 3 s, a P0 item is accepted by the edge (the buzzer says whether it
  was); a short press chirps the link status. The LEDs follow links, queue and battery.

Every device's state is published (``device.state``) on change and every
:data:`REPORT_S`, so ``kit status`` and the web page show them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import zmq.asyncio

from config.schema import KitConfig
from drivers.backend import kind as backend_kind
from drivers.clock import clock_synchronised
from drivers.device import Device
from drivers.gnss import Fix, GnssReceiver, Gpsd, set_system_clock
from drivers.gpio import GpioPanel, link_level
from drivers.power import (
    Action,
    Battery,
    Level,
    PowerMode,
    PowerPolicy,
    Runner,
    ShutdownSequence,
    run_command,
)
from edge import bus, topics
from edge.client import AsyncEdgeClient
from edge.daemon import RPC_SOCKET
from edge.item import Item, Position, new_item
from edge.service import run_service
from uplink.kinds.datagram import parse_address

log = logging.getLogger("drivers")

REPORT_S = 10.0  # device states are published this often, and on every change
QUEUE_POLL_S = 15.0  # how often the queue LED asks the edge how many P0/P1 wait
POSITION_STALE_S = 600.0  # an SOS still carries an older position, marked by its age
SETTLE_POLL_S = 1.0
FIX_INTERVAL_S = 5.0  # positions on the bus at most this often (and on every change of fix)


class Drivers:
    """The devices of one kit, wired to the bus and the edge."""

    def __init__(
        self,
        config: KitConfig,
        edge: AsyncEdgeClient,
        publisher: bus.Publisher,
        *,
        gnss: GnssReceiver | None = None,
        battery: Battery | None = None,
        panel: GpioPanel | None = None,
        shutdown_runner: Runner = run_command,
    ) -> None:
        self.config = config
        self.edge = edge
        self.publisher = publisher
        self.gnss = gnss if gnss is not None else _gnss(config)
        self.battery = battery if battery is not None else _battery(config)
        self.panel = panel if panel is not None else _panel(config, self.file_sos)
        self.policy = PowerPolicy(config.power.thresholds)
        self.shutdown = ShutdownSequence(
            announce=self._announce_shutdown,
            settle=self._settle,
            flush=self._flush,
            command=config.power.shutdown_command,
            settle_timeout_s=config.power.settle_timeout_s,
            flush_timeout_s=config.power.flush_timeout_s,
            runner=shutdown_runner,
        )
        self.last_fix: tuple[float, Fix] | None = None  # (monotonic, fix) of the last good fix
        self.last_level: Level | None = None
        self.links: dict[str, topics.LinkState] = {}
        self.sos_sent: list[int] = []  # seqs of SOS items this process filed
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        if self.gnss is not None:
            self.gnss.on_fix = self._on_fix
        if self.battery is not None:
            self.battery.on_level = self._on_level
            from drivers.companion import CompanionReader  # imports drivers.power

            if isinstance(self.battery.source, CompanionReader):
                self.battery.source.on_button = self._power_button

    @property
    def devices(self) -> list[Device]:
        found: list[Any] = [self.gnss, self.battery, self.panel]
        return [d for d in found if d is not None]

    # --- life --------------------------------------------------------------------------

    async def start(self) -> None:
        for device in self.devices:
            try:
                await device.start()
            except Exception:  # a device that cannot start is reported; the others run
                log.exception("%s did not start", device.name)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for device in reversed(self.devices):
            try:
                await device.close()
            except Exception:
                log.exception("closing %s failed", device.name)

    async def report(self) -> None:
        """Publish every device's state, on change and every ``REPORT_S``, until cancelled.

        The battery level goes again each time too: the bus drops what nobody heard (a
        process that started later), and the battery itself is read only every 30 s.
        """
        while True:
            self._changed.clear()
            if self.last_level is not None:
                await self.publisher.publish(topics.BATTERY_LEVEL, self.last_level.topic())
            for device in self.devices:
                try:
                    await self.publisher.publish(topics.DEVICE_STATE, device.state())
                except Exception:
                    log.exception("state of %s not published", device.name)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), REPORT_S)

    async def follow_links(self, sub: bus.Subscriber) -> None:
        """The link LED (and the short-press chirp) follow the uplink's link states."""
        while True:
            _, state = await sub.receive()
            self.links[state.name] = state
            if self.panel is not None:
                self.panel.indicators.show_links(link_level(self.links.values()))

    async def follow_queue(self) -> None:
        """The queue LED blinks while P0/P1 items wait."""
        while True:
            if self.panel is not None:
                try:
                    status = await self.edge.call({"op": "status"})
                    queued = status["queued"]
                    self.panel.indicators.show_queue(queued.get("P0", 0) + queued.get("P1", 0))
                except Exception as err:  # the edge restarting is no reason to stop
                    log.debug("queue LED: edge status unavailable: %s", err)
            await asyncio.sleep(QUEUE_POLL_S)

    # --- GNSS ------------------------------------------------------------------------

    def _on_fix(self, fix: Fix) -> None:
        self._changed.set()
        if fix.position is None or fix.time_ms is None:
            return
        self.last_fix = (time.monotonic(), fix)
        assert fix.lat is not None and fix.lon is not None
        message = topics.PositionFix(fix.lat, fix.lon, fix.alt_m, fix.time_ms, fix.satellites_used)
        self._spawn(self.publisher.publish(topics.POSITION_FIX, message))

    # --- SOS -------------------------------------------------------------------------

    def sos_item(self) -> Item:
        """The P0 item a button hold files: the last position, and GNSS time if the clock
        is not yet trusted."""
        # No text unless needed: the kind says SOS and the source says the button, and every
        # byte counts for the SOS to fit one 77-byte Beidou message.
        position: Position | None = None
        text: str | None = None
        if self.last_fix is not None:
            at, fix = self.last_fix
            position = fix.position
            age_min = (time.monotonic() - at) / 60
            if age_min * 60 > POSITION_STALE_S:
                text = f"位置为{age_min:.0f}分钟前 / position {age_min:.0f} min old"
        created_ms: int | None = None
        clock_ok = clock_synchronised()
        if not clock_ok and self.gnss is not None:
            created_ms = self.gnss.gnss_time_ms()
            clock_ok = created_ms is not None
        return new_item(
            "sos",
            source=f"button:{self.config.kit.id}",
            text=text,
            position=position,
            created_ms=created_ms,
            clock_ok=clock_ok,
        )

    async def file_sos(self) -> None:
        """Accept an SOS into the outbox; raises if the edge did not take it (the panel
        then sounds the failure pattern)."""
        item = self.sos_item()
        answer = await self.edge.accept(item)
        self.sos_sent.append(answer["seq"])
        log.warning(
            "SOS filed by the button: #%d at %s", answer["seq"], item.position or "unknown position"
        )

    # --- power -----------------------------------------------------------------------

    async def _on_level(self, level: Level) -> None:
        self.last_level = level
        self._changed.set()
        before = self.policy.mode
        for action in self.policy.update(level):
            if action is Action.SLOW_POLLING and self.battery is not None:
                self.battery.low_power = True
            elif action is Action.NORMAL_POLLING and self.battery is not None:
                self.battery.low_power = False
            elif action is Action.SHUT_DOWN:
                self._spawn(self.shutdown.run(f"battery at {level.percent:.0f} %"))
        if self.policy.mode is not before:
            log.warning(
                "power mode %s → %s at %.0f %%", before.value, self.policy.mode.value, level.percent
            )
            await self._publish_mode(level.percent, "battery level")
        if self.panel is not None:
            self.panel.indicators.show_battery(self.policy.mode)

    def _power_button(self, press: str) -> None:
        """The companion's power button: held, a clean shutdown (settle, flush, power off,
        then the companion cuts the power); a short press only shows it is alive."""
        if press == "long":
            log.warning("电源键长按：正常关机 / power button held: clean shutdown")
            self._spawn(self.shutdown.run("power button held"))
        else:
            log.info("电源键短按 / power button pressed")

    async def _publish_mode(self, percent: float | None, reason: str) -> None:
        change = topics.PowerModeChanged(self.policy.mode.value, percent, reason)
        await self.publisher.publish(topics.POWER_MODE, change)

    async def _announce_shutdown(self, reason: str) -> None:
        log.error("电量耗尽，关机 / battery critical, shutting down: %s", reason)
        await self.publisher.publish(
            topics.POWER_MODE,
            topics.PowerModeChanged(PowerMode.CRITICAL.value, None, f"shutting down: {reason}"),
        )

    async def _settle(self) -> None:
        """Wait until nothing is in flight (sends finish or time out), polling the edge."""
        while True:
            answer = await self.edge.call(
                {"op": "in_flight", "classes": [0, 1, 2, 3, 4], "limit": 1}
            )
            if not answer["items"]:
                return
            await asyncio.sleep(SETTLE_POLL_S)

    async def _flush(self) -> None:
        await self.edge.call({"op": "flush"})

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("drivers task failed: %s", task.exception())


def _gnss(config: KitConfig) -> GnssReceiver | None:
    c = config.gnss
    if not c.enabled:
        return None
    backend: Gpsd | str | None = None  # None: the simulator (KIT_BACKEND=sim)
    if backend_kind() != "sim":
        backend = Gpsd(*parse_address(c.gpsd)) if c.source == "gpsd" else c.device
    return GnssReceiver(
        backend,
        baudrate=c.baudrate,
        fix_interval_s=FIX_INTERVAL_S,
        clock_setter=set_system_clock if c.set_clock else None,
    )


def _battery(config: KitConfig) -> Battery | None:
    return None if config.power.source == "none" else Battery(config.power)


def _panel(config: KitConfig, on_sos: Callable[[], Awaitable[None]]) -> GpioPanel | None:
    if not config.gpio.pins:
        return None

    async def on_wipe() -> None:
        from security.cli import wipe_kit_keys

        await asyncio.to_thread(wipe_kit_keys, config, f"GPIO{config.gpio.wipe_pin} button")

    return GpioPanel(config.gpio, on_sos=on_sos, on_wipe=on_wipe)


async def serve(config: KitConfig, stop: asyncio.Event) -> None:
    ctx = zmq.asyncio.Context.instance()
    edge = AsyncEdgeClient(config.endpoint(RPC_SOCKET), timeout_s=config.edge.rpc_timeout_s)
    publisher = bus.Publisher(ctx, config.endpoint(bus.PUB_SOCKET))
    links = bus.Subscriber(ctx, config.endpoint(bus.SUB_SOCKET), topics.LINK_STATE)
    drivers = Drivers(config, edge, publisher)
    await drivers.start()
    log.info("drivers: %s", ", ".join(d.name for d in drivers.devices) or "none configured")
    tasks = [
        asyncio.create_task(drivers.report()),
        asyncio.create_task(drivers.follow_links(links)),
        asyncio.create_task(drivers.follow_queue()),
    ]
    try:
        await stop.wait()
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await drivers.close()
        links.close()
        publisher.close()
        await edge.close()


def main(config_path: Path | None = None) -> int:
    return run_service("drivers", serve, config_path)
