"""The kit's panel on GPIO: the SOS button, three status LEDs and a buzzer, via gpiozero.

The pin factory is the backend (gpiozero's own injection): ``KIT_BACKEND=sim`` or
unset/``real`` picks gpiozero's default factory (lgpio on a Pi 5, and on a Pi 4 with
the ``lgpio``/``rpi-lgpio`` packages; RPi.GPIO or pigpio where installed), ``sim``
picks :class:`gpiozero.pins.mock.MockFactory` with PWM-capable pins (a PWM LED or a
tonal buzzer then works on the same pins), pressed from outside through
:class:`SimulatedButton`.

gpiozero calls back from its own threads (the pin's edge thread, the button's hold
thread); :class:`SosButton` carries every edge into the owner's asyncio loop with
``call_soon_threadsafe`` and decides there, on one thread, without locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any, Self

from gpiozero import LED, Button, Buzzer, Device, GPIOZeroError
from gpiozero.pins.mock import MockFactory, MockPWMPin
from pydantic import BaseModel, ConfigDict, Field, model_validator

from drivers.backend import choose
from drivers.power import PowerMode
from edge.errors import KitError
from edge.topics import Detail, DeviceState, LinkState

log = logging.getLogger(__name__)

# gpiozero ships no type hints: its factories, pins and devices are typed as Any here.
PinFactory = Any
Callback = Callable[[], Awaitable[None] | None]

BCM_MAX = 27  # GPIO0..GPIO27 on the 40-pin header of every Pi since the B+


class BadGpioConfig(KitError, ValueError):
    """GPIO settings that cannot all hold: a pin used twice, or timings out of order."""


class NotSimulated(KitError, RuntimeError):
    """A wire-side control was asked of a panel that is not on simulated pins."""


# --- config ----------------------------------------------------------------------------


def _pin(title: str, description: str) -> Any:
    return Field(None, title=title, description=description, ge=0, le=BCM_MAX)


class GpioConfig(BaseModel):
    """Which BCM pins the panel uses (each optional) and how the SOS button is timed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    button_pin: int | None = _pin(
        "SOS 按钮引脚 / SOS button pin", "BCM number of the SOS button; empty: no button."
    )
    link_led_pin: int | None = _pin(
        "链路灯引脚 / Link LED pin",
        "BCM number of the link LED (on: broadband up, slow blink: narrow links only).",
    )
    queue_led_pin: int | None = _pin(
        "队列灯引脚 / Queue LED pin", "BCM number of the queue LED (blinks while P0/P1 wait)."
    )
    battery_led_pin: int | None = _pin(
        "电量灯引脚 / Battery LED pin",
        "BCM number of the battery LED (on: low, fast blink: critical).",
    )
    buzzer_pin: int | None = _pin(
        "蜂鸣器引脚 / Buzzer pin", "BCM number of an active (on/off) buzzer; empty: none."
    )
    wipe_pin: int | None = _pin(
        "销毁密钥按钮引脚 / Key-wipe button pin",
        "BCM number of a recessed button that destroys the kit's keys when held wipe_hold_s "
        "(a kit about to be abandoned); empty: none.",
    )
    wipe_hold_s: float = Field(
        10.0,
        title="销毁密钥长按时间 / Key-wipe hold time",
        description="Seconds the key-wipe button must be held: long, so no knock wipes a kit.",
        ge=5.0,
        le=60.0,
    )
    active_high: bool = Field(
        True,
        title="高电平点亮 / Outputs active high",
        description="LEDs and buzzer are on when their pin is high (false: wired to 3V3).",
    )
    pull_up: bool = Field(
        True,
        title="按钮上拉 / Button pull-up",
        description="Button wired to ground with the internal pull-up (false: to 3V3, pull-down).",
    )
    hold_s: float = Field(
        3.0,
        title="SOS 长按时间 / SOS hold time",
        description="Seconds the button must be held to send an SOS.",
        ge=1.0,
        le=10.0,
    )
    short_press_s: float = Field(
        1.0,
        title="短按上限 / Short press limit",
        description="A press shorter than this shows the kit's status.",
        ge=0.2,
        le=5.0,
    )
    bounce_s: float = Field(
        0.05,
        title="防抖时间 / Debounce time",
        description="Contact bounce shorter than this is ignored (seconds).",
        ge=0.005,
        le=0.5,
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        used: dict[int, list[str]] = {}
        for field in PIN_FIELDS:
            pin = getattr(self, field)
            if pin is not None:
                used.setdefault(pin, []).append(field)
        twice = {pin: fields for pin, fields in sorted(used.items()) if len(fields) > 1}
        if twice:
            zh = "；".join(f"GPIO{p} 同时用于 {'、'.join(f)}" for p, f in twice.items())
            en = "; ".join(f"GPIO{p} is used by both {' and '.join(f)}" for p, f in twice.items())
            raise BadGpioConfig(zh, en)
        if self.short_press_s >= self.hold_s:
            raise BadGpioConfig(
                f"短按上限 {self.short_press_s:g} 秒必须短于 SOS 长按时间 {self.hold_s:g} 秒",
                f"short_press_s ({self.short_press_s:g}) must be shorter than "
                f"hold_s ({self.hold_s:g})",
            )
        if self.bounce_s >= self.short_press_s:
            raise BadGpioConfig(
                f"防抖时间 {self.bounce_s:g} 秒必须短于短按上限 {self.short_press_s:g} 秒",
                f"bounce_s ({self.bounce_s:g}) must be shorter than "
                f"short_press_s ({self.short_press_s:g})",
            )
        return self

    @property
    def pins(self) -> dict[str, int]:
        """Pins in use, by field name."""
        return {f: getattr(self, f) for f in PIN_FIELDS if getattr(self, f) is not None}


PIN_FIELDS = (
    "button_pin",
    "link_led_pin",
    "queue_led_pin",
    "battery_led_pin",
    "buzzer_pin",
    "wipe_pin",
)


# --- the SOS button --------------------------------------------------------------------


class SimulatedButton:
    """A finger on a simulated button: drives the mock pin as the real contacts would."""

    def __init__(self, pin: Any, pressed_high: bool) -> None:
        self.pin = pin
        self._pressed_high = pressed_high

    def press(self) -> None:
        (self.pin.drive_high if self._pressed_high else self.pin.drive_low)()

    def release(self) -> None:
        (self.pin.drive_low if self._pressed_high else self.pin.drive_high)()

    async def hold(self, seconds: float) -> None:
        """Press, keep it down ``seconds``, let go (``hold(3.5)`` sends an SOS by default)."""
        self.press()
        try:
            await asyncio.sleep(seconds)
        finally:
            self.release()


@dataclass(slots=True)
class _Press:
    """One press, from the first contact to the last release after bounce settled."""

    since: float
    sos: bool = False


async def _call(callback: Callback) -> None:
    result = callback()
    if inspect.isawaitable(result):
        await result


class SosButton:
    """The SOS button: hold ``hold_s`` → ``on_sos`` once; press under ``short_press_s`` →
    ``on_short_press``. Built on :class:`gpiozero.Button`; the callbacks (sync or async)
    run in ``loop``.

    How presses are read:

    - Bounce: a release followed by a new contact within ``bounce_s`` is the same press
      (gpiozero's ``bounce_time`` does this in the pin driver where it can; the mock pin
      does not, and a worn button can bounce longer than the driver's window). A press
      therefore ends ``bounce_s`` after its last release, and holds one SOS at most.
    - The hold is gpiozero's ``when_held`` (``hold_repeat`` off): the button has been
      down ``hold_s`` without a release since its last contact.
    - A press between ``short_press_s`` and ``hold_s`` does nothing (logged): too long
      to be a deliberate tap, too short to be an SOS.
    - While an SOS is being handled (``on_sos`` has not returned), a new hold is not
      sent again but counted in :attr:`sos_ignored`: the first one already carries
      it. Once it returned — accepted or failed — the next hold sends a new SOS, so a
      rescuer can always retry. Short presses in that time are ignored too, so that
      the next sound from the buzzer is the SOS result.
    - A button already down when the kit starts (stuck, or held during boot) sends
      nothing until it has been released and pressed again.
    """

    def __init__(
        self,
        pin: int,
        *,
        loop: asyncio.AbstractEventLoop,
        on_sos: Callback,
        on_short_press: Callback,
        pin_factory: PinFactory,
        pull_up: bool = True,
        hold_s: float = 3.0,
        short_press_s: float = 1.0,
        bounce_s: float = 0.05,
    ) -> None:
        self.on_sos = on_sos
        self.on_short_press = on_short_press
        self.short_press_s = short_press_s
        self.bounce_s = bounce_s
        self.sos_holds = 0
        self.sos_ignored = 0
        self.short_presses = 0
        self._loop = loop
        self._press: _Press | None = None
        self._settle: asyncio.TimerHandle | None = None
        self._sos_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._pressed_high = not pull_up
        self.device: Any = Button(
            pin,
            pull_up=pull_up,
            bounce_time=bounce_s,
            hold_time=hold_s,
            hold_repeat=False,
            pin_factory=pin_factory,
        )
        self.device.when_pressed = self._gpio_pressed
        self.device.when_released = self._gpio_released
        self.device.when_held = self._gpio_held

    @property
    def is_pressed(self) -> bool:
        return bool(self.device.is_pressed)

    @property
    def handling_sos(self) -> bool:
        return self._sos_task is not None and not self._sos_task.done()

    @property
    def simulated(self) -> SimulatedButton:
        """Wire-side control of this button; only on gpiozero's mock pins."""
        if not isinstance(self.device.pin_factory, MockFactory):
            raise NotSimulated(
                "SOS 按钮不在模拟引脚上，无法模拟按键",
                "the SOS button is not on simulated pins: it cannot be pressed from software",
            )
        return SimulatedButton(self.device.pin, self._pressed_high)

    def is_short(self, seconds: float) -> bool:
        return seconds < self.short_press_s

    async def close(self, grace_s: float = 5.0) -> None:
        """Stop listening; an SOS being handled gets ``grace_s`` to finish, the rest stop."""
        self.device.close()
        if self._settle is not None:
            self._settle.cancel()
        if self.handling_sos:
            assert self._sos_task is not None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._sos_task), grace_s)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # gpiozero's threads: stamp the moment, hand over to the loop.

    def _gpio_pressed(self) -> None:
        self._post(self._pressed, time.monotonic())

    def _gpio_released(self) -> None:
        self._post(self._released, time.monotonic())

    def _gpio_held(self) -> None:
        self._post(self._held)

    def _post(self, handler: Callable[..., None], *args: float) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: the kit is stopping
            self._loop.call_soon_threadsafe(handler, *args)

    # The loop's thread.

    def _pressed(self, at: float) -> None:
        if self._settle is not None:  # contact bounce: the same press goes on
            self._settle.cancel()
            self._settle = None
        elif self._press is None:
            self._press = _Press(at)

    def _released(self, at: float) -> None:
        if self._press is not None:
            self._settle = self._loop.call_later(self.bounce_s, self._settled, at)

    def _held(self) -> None:
        press = self._press
        if press is not None and press.sos:
            return  # bounce mid-hold restarted gpiozero's timer: still the one SOS
        if press is not None:
            press.sos = True
        if self.handling_sos:
            self.sos_ignored += 1
            log.warning("SOS hold ignored: the previous SOS is still being handled")
            return
        self.sos_holds += 1
        log.warning("SOS button held: SOS #%d", self.sos_holds)
        self._sos_task = self._spawn(self.on_sos, "sos")

    def _settled(self, released_at: float) -> None:
        press, self._press, self._settle = self._press, None, None
        if press is None or press.sos:
            return
        seconds = released_at - press.since
        if not self.is_short(seconds):
            log.info(
                "button released after %.1f s: too long for status, too short for SOS", seconds
            )
        elif self.handling_sos:
            log.info("short press ignored while an SOS is being handled")
        else:
            self.short_presses += 1
            self._spawn(self.on_short_press, "short press")

    def _spawn(self, callback: Callback, what: str) -> asyncio.Task[None]:
        async def guarded() -> None:
            try:
                await _call(callback)
            except Exception:  # a handler's bug must not cost the next press
                log.exception("%s handler failed", what)

        task = self._loop.create_task(guarded(), name=f"button {what}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


# --- LEDs and buzzer -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pattern:
    """An on/off rhythm for an LED or the buzzer: ``times`` cycles, or until changed."""

    name: str
    on_s: float = 0.0
    off_s: float = 0.0
    times: int | None = None


OFF = Pattern("off")
ON = Pattern("on")
SLOW_BLINK = Pattern("slow-blink", 0.2, 1.8)  # a short flash: readable, cheap on battery
BLINK = Pattern("blink", 0.5, 0.5)
FAST_BLINK = Pattern("fast-blink", 0.1, 0.2)
SOS_ACCEPTED = Pattern("sos-accepted", 0.1, 0.1, 2)  # two short chirps
SOS_FAILED = Pattern("sos-failed", 0.8, 0.3, 3)  # three long tones


class Links(enum.Enum):
    """What the link LED shows."""

    NONE = "none"
    NARROW = "narrow"  # only narrow links (Beidou, Tiantong SMS, mesh): reports, no media
    BROADBAND = "broadband"


NARROW_KINDS = frozenset({"beidou", "tiantong", "mesh"})
LINK_LED = {Links.NONE: OFF, Links.NARROW: SLOW_BLINK, Links.BROADBAND: ON}
LINK_CHIRPS = {Links.BROADBAND: 1, Links.NARROW: 2, Links.NONE: 3}
BATTERY_LED = {PowerMode.NORMAL: OFF, PowerMode.SAVE: ON, PowerMode.CRITICAL: FAST_BLINK}


def link_level(links: Iterable[LinkState], narrow_kinds: frozenset[str] = NARROW_KINDS) -> Links:
    """The link LED's state for the latest state of every link."""
    kinds = {link.kind for link in links if link.online}
    if kinds - narrow_kinds:
        return Links.BROADBAND
    return Links.NARROW if kinds else Links.NONE


def status_chirp(links: Links) -> Pattern:
    """The answer to a short press: 1 chirp broadband up, 2 narrow links only, 3 no link."""
    n = LINK_CHIRPS[links]
    return Pattern(f"status-{n}", 0.05, 0.25, n)


class Indicators:
    """The link, queue and battery LEDs and the buzzer, by what they mean.

    Any of them may be missing (``None``); its patterns are then skipped. Patterns run
    in gpiozero's blink threads. An LED told the pattern it already shows is left alone,
    so status updates every few seconds do not restart its rhythm.
    """

    def __init__(
        self,
        *,
        link_led: Any = None,
        queue_led: Any = None,
        battery_led: Any = None,
        buzzer: Any = None,
    ) -> None:
        self._leds: dict[str, Any] = {"link": link_led, "queue": queue_led, "battery": battery_led}
        self._buzzer = buzzer
        self.patterns: dict[str, Pattern] = dict.fromkeys(self._leds, OFF)
        self.links = Links.NONE
        for led in self._leds.values():
            if led is not None:
                led.off()

    def show_links(self, level: Links) -> None:
        self.links = level
        self._show("link", LINK_LED[level])

    def show_queue(self, urgent_waiting: int) -> None:
        """Blink while P0/P1 items wait to go out."""
        self._show("queue", BLINK if urgent_waiting > 0 else OFF)

    def show_battery(self, mode: PowerMode) -> None:
        self._show("battery", BATTERY_LED[mode])

    def sos_accepted(self) -> None:
        self.sound(SOS_ACCEPTED)

    def sos_failed(self) -> None:
        self.sound(SOS_FAILED)

    def chirp_status(self) -> None:
        self.sound(status_chirp(self.links))

    def sound(self, pattern: Pattern) -> None:
        if self._buzzer is not None:
            _play(self._buzzer, pattern)

    def _show(self, name: str, pattern: Pattern) -> None:
        led = self._leds[name]
        if led is None or self.patterns[name] == pattern:
            return
        self.patterns[name] = pattern
        _play(led, pattern)


def _play(device: Any, pattern: Pattern) -> None:
    if pattern == OFF:
        device.off()
    elif pattern == ON:
        device.on()
    else:
        device.blink(on_time=pattern.on_s, off_time=pattern.off_s, n=pattern.times)


# --- the panel as a device -------------------------------------------------------------


OUTPUTS = {"link_led": LED, "queue_led": LED, "battery_led": LED, "buzzer": Buzzer}


def _default_factory() -> PinFactory:
    Device.ensure_pin_factory()
    return Device.pin_factory


def _simulated_factory() -> PinFactory:
    return MockFactory(pin_class=MockPWMPin)


class WipeButton:
    """A recessed button that destroys the kit's keys: held ``hold_s`` → ``on_wipe`` once
    per press (a second hold without a release does nothing more)."""

    def __init__(
        self,
        pin: int,
        *,
        loop: asyncio.AbstractEventLoop,
        on_wipe: Callback,
        pin_factory: PinFactory,
        pull_up: bool,
        hold_s: float,
    ) -> None:
        self._loop = loop
        self.on_wipe = on_wipe
        self.wipes = 0
        self._pressed_high = not pull_up
        self._tasks: set[asyncio.Task[None]] = set()
        self.device: Any = Button(
            pin, pull_up=pull_up, hold_time=hold_s, hold_repeat=False, pin_factory=pin_factory
        )
        self.device.when_held = self._gpio_held

    @property
    def simulated(self) -> SimulatedButton:
        if not isinstance(self.device.pin_factory, MockFactory):
            raise NotSimulated(
                "销毁密钥按钮不在模拟引脚上", "the key-wipe button is not on simulated pins"
            )
        return SimulatedButton(self.device.pin, self._pressed_high)

    def _gpio_held(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: the kit is stopping
            self._loop.call_soon_threadsafe(self._held)

    def _held(self) -> None:
        self.wipes += 1
        log.warning("销毁密钥按钮被长按 / key-wipe button held: destroying the kit's keys")

        async def guarded() -> None:
            try:
                await _call(self.on_wipe)
            except Exception:
                log.exception("key wipe failed")

        task = self._loop.create_task(guarded(), name="key-wipe")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        self.device.close()
        await asyncio.gather(*self._tasks, return_exceptions=True)  # a wipe runs to its end


class GpioPanel:
    """The SOS button, LEDs and buzzer as one device.

    ``on_sos`` (sync or async) must return once the SOS is accepted into the outbox and
    raise if it was not: the panel then chirps :data:`SOS_ACCEPTED` or sounds
    :data:`SOS_FAILED`. A short press chirps the link status
    (:func:`status_chirp`), then calls ``on_short_press`` if given. ``backend`` is a
    gpiozero pin factory, or ``None`` for ``KIT_BACKEND``'s choice. Pins are claimed in
    :meth:`start` (the callbacks run in its event loop) and released in :meth:`close`;
    a pin that cannot be claimed is reported in :meth:`state` and the others still work.
    """

    kind = "gpio"

    def __init__(
        self,
        config: GpioConfig,
        *,
        on_sos: Callback,
        on_short_press: Callback | None = None,
        on_wipe: Callback | None = None,
        backend: PinFactory | None = None,
        name: str = "panel",
    ) -> None:
        self.name = name
        self.config = config
        self._on_sos = on_sos
        self._on_wipe = on_wipe
        self.wipe_button: WipeButton | None = None
        self._on_short_press = on_short_press
        self._given = backend
        self._factory: PinFactory | None = None
        self._owned = False
        self._devices: list[Any] = []
        self.button: SosButton | None = None
        self.indicators = Indicators()
        self.problems: dict[str, str] = {}

    @property
    def pin_factory(self) -> PinFactory | None:
        """The factory in use once started: ``kit sim`` reads the mock LED pins from it."""
        return self._factory

    @property
    def simulated_button(self) -> SimulatedButton:
        """What ``kit sim`` and tests press (``await panel.simulated_button.hold(3.5)``)."""
        if self.button is None:
            raise NotSimulated("未配置或未启动 SOS 按钮", "no SOS button configured or started")
        return self.button.simulated

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            self._factory, self._owned = choose(
                self._given, real=_default_factory, sim=_simulated_factory
            )
        except GPIOZeroError as exc:
            self.problems["pin_factory"] = str(exc)
            log.error("no GPIO pin factory: %s", exc)
            return
        c, factory = self.config, self._factory
        button_pin = c.button_pin
        if button_pin is not None:
            self.button = self._open(
                "button_pin",
                lambda: SosButton(
                    button_pin,
                    loop=loop,
                    on_sos=self._sos,
                    on_short_press=self._short_press,
                    pin_factory=factory,
                    pull_up=c.pull_up,
                    hold_s=c.hold_s,
                    short_press_s=c.short_press_s,
                    bounce_s=c.bounce_s,
                ),
            )
        wipe_pin, on_wipe = c.wipe_pin, self._on_wipe
        if wipe_pin is not None and on_wipe is not None:
            self.wipe_button = self._open(
                "wipe_pin",
                lambda: WipeButton(
                    wipe_pin,
                    loop=loop,
                    on_wipe=on_wipe,
                    pin_factory=factory,
                    pull_up=c.pull_up,
                    hold_s=c.wipe_hold_s,
                ),
            )
        opened = {}
        for name, cls in (
            ("link_led", LED),
            ("queue_led", LED),
            ("battery_led", LED),
            ("buzzer", Buzzer),
        ):
            pin = getattr(c, f"{name}_pin")
            if pin is not None:
                opened[name] = self._open(
                    f"{name}_pin",
                    partial(
                        cls,
                        pin,
                        active_high=c.active_high,
                        initial_value=False,
                        pin_factory=factory,
                    ),
                )
        self.indicators = Indicators(**opened)

    async def close(self) -> None:
        if self.button is not None:
            await self.button.close()
            self.button = None
        if self.wipe_button is not None:
            await self.wipe_button.close()
            self.wipe_button = None
        for device in self._devices:
            device.close()
        self._devices.clear()
        self.indicators = Indicators()
        if self._owned and self._factory is not None:
            self._factory.close()
        self._factory = None

    def state(self) -> DeviceState:
        pins: Detail = {f: getattr(self.config, f) for f in PIN_FIELDS}
        detail: Detail = pins | {f"led_{k}": p.name for k, p in self.indicators.patterns.items()}
        b = self.button
        if b is not None:
            detail |= {
                "button": "pressed" if b.is_pressed else "released",
                "sos_holds": b.sos_holds,
                "sos_ignored": b.sos_ignored,
                "short_presses": b.short_presses,
            }
        if self.problems:
            detail["problems"] = "; ".join(f"{k}: {v}" for k, v in self.problems.items())
            bad = ", ".join(self.problems)
            return DeviceState(
                self.name, self.kind, False, f"GPIO 故障：{bad}", f"GPIO fault: {bad}", detail
            )
        if not self.config.pins:
            return DeviceState(
                self.name, self.kind, False, "未配置 GPIO", "no GPIO pins configured", detail
            )
        if self._factory is None:
            return DeviceState(self.name, self.kind, False, "未启动", "not started", detail)
        count = b.sos_holds if b is not None else 0
        return DeviceState(
            self.name,
            self.kind,
            True,
            f"面板正常，SOS 长按 {count} 次",
            f"panel working, {count} SOS hold(s)",
            detail,
        )

    def _open(self, field: str, make: Callable[[], Any]) -> Any:
        try:
            made = make()
        except GPIOZeroError as exc:
            pin = getattr(self.config, field)
            self.problems[field] = f"GPIO{pin}: {exc}"
            log.error("cannot claim GPIO%s for %s: %s", pin, field, exc)
            return None
        if not isinstance(made, (SosButton, WipeButton)):  # buttons close themselves (tasks)
            self._devices.append(made)
        return made

    async def _sos(self) -> None:
        try:
            await _call(self._on_sos)
        except Exception:
            log.exception("SOS was not accepted")
            self.indicators.sos_failed()
            return
        self.indicators.sos_accepted()

    async def _short_press(self) -> None:
        self.indicators.chirp_status()
        if self._on_short_press is not None:
            await _call(self._on_short_press)
