"""The GPIO panel on gpiozero's mock pins: the SOS button, the LEDs and the buzzer."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import pytest
from gpiozero import LED, Buzzer, Device
from gpiozero.pins.mock import MockFactory, MockPWMPin
from pydantic import ValidationError

from drivers.gpio import (
    SOS_ACCEPTED,
    GpioConfig,
    GpioPanel,
    Indicators,
    Links,
    NotSimulated,
    SosButton,
    link_level,
    status_chirp,
)
from drivers.power import PowerMode
from edge.topics import LinkState

T = TypeVar("T")
pytestmark = pytest.mark.timeout(60)

HOLD = 0.3  # seconds: the tests' SOS hold, so each takes a fraction of a second
SHORT = 0.15
BOUNCE = 0.03
PINS = {"button_pin": 17, "link_led_pin": 22, "queue_led_pin": 23, "battery_led_pin": 24}


def run(main: Coroutine[Any, Any, T]) -> T:
    async def checked() -> T:
        result = await asyncio.wait_for(main, 20)
        assert asyncio.all_tasks() == {asyncio.current_task()}, "tasks left running"
        return result

    return asyncio.run(checked())


@pytest.fixture
def factory() -> Iterator[Any]:
    threads = set(threading.enumerate())
    pins = MockFactory(pin_class=MockPWMPin)
    yield pins
    pins.close()
    assert Device.pin_factory is None, "the global pin factory was never touched"
    assert not set(threading.enumerate()) - threads, "gpiozero threads left running"


class Calls:
    """Callbacks that count, as sync or async functions."""

    def __init__(self) -> None:
        self.sos = 0
        self.short = 0
        self.threads: set[str] = set()
        self.release = asyncio.Event()
        self.block = False

    async def on_sos(self) -> None:
        self.sos += 1
        self.threads.add(threading.current_thread().name)
        if self.block:
            await self.release.wait()

    def on_short_press(self) -> None:
        self.short += 1
        self.threads.add(threading.current_thread().name)


@asynccontextmanager
async def sos_button(factory: Any, calls: Calls) -> AsyncIterator[SosButton]:
    button = SosButton(
        17,
        loop=asyncio.get_running_loop(),
        on_sos=calls.on_sos,
        on_short_press=calls.on_short_press,
        pin_factory=factory,
        hold_s=HOLD,
        short_press_s=SHORT,
        bounce_s=BOUNCE,
    )
    try:
        yield button
    finally:
        await button.close()


async def settle() -> None:
    await asyncio.sleep(BOUNCE * 3)


# --- the SOS button --------------------------------------------------------------------


def test_holding_the_button_sends_exactly_one_sos(factory: Any) -> None:
    calls = Calls()

    async def main() -> None:
        async with sos_button(factory, calls) as button:
            await button.simulated.hold(HOLD * 3)  # held well past: hold_repeat is off
            await settle()
            assert (calls.sos, calls.short, button.sos_holds) == (1, 0, 1)

    run(main())


def test_a_short_press_shows_status_and_sends_no_sos(factory: Any) -> None:
    calls = Calls()

    async def main() -> None:
        async with sos_button(factory, calls) as button:
            await button.simulated.hold(0.05)
            await settle()
            assert (calls.sos, calls.short, button.short_presses) == (0, 1, 1)

    run(main())


def test_a_press_between_short_and_hold_does_nothing(factory: Any) -> None:
    calls = Calls()

    async def main() -> None:
        async with sos_button(factory, calls) as button:
            await button.simulated.hold((SHORT + HOLD) / 2)
            await settle()
            assert (calls.sos, calls.short) == (0, 0)

    run(main())


def test_contact_bounce_makes_one_sos_and_no_short_press(factory: Any) -> None:
    calls = Calls()

    async def chatter(button: SosButton, times: int) -> None:
        for _ in range(times):
            button.simulated.release()
            button.simulated.press()
            await asyncio.sleep(0.002)

    async def main() -> None:
        async with sos_button(factory, calls) as button:
            finger = button.simulated
            finger.press()
            await chatter(button, 5)  # contacts closing
            await asyncio.sleep(HOLD + 0.1)
            await chatter(button, 3)  # a worn contact mid-hold restarts gpiozero's timer
            await asyncio.sleep(HOLD + 0.1)
            finger.release()
            await chatter(button, 5)  # contacts opening
            finger.release()
            await settle()
            assert (calls.sos, calls.short, button.sos_holds) == (1, 0, 1)

    run(main())


def test_callbacks_run_in_the_loop_thread_whoever_drives_the_pin(factory: Any) -> None:
    calls = Calls()

    async def main() -> None:
        async with sos_button(factory, calls) as button:
            finger = button.simulated

            def tap() -> None:  # the pin changes on a thread of its own, as lgpio's do
                finger.press()
                time.sleep(0.03)
                finger.release()

            await asyncio.to_thread(tap)
            await settle()
            await asyncio.to_thread(finger.press)
            await asyncio.sleep(HOLD + 0.1)
            await asyncio.to_thread(finger.release)
            await settle()
            assert (calls.sos, calls.short) == (1, 1)
            assert calls.threads == {threading.current_thread().name}

    run(main())


def test_a_hold_while_the_sos_is_handled_is_counted_not_resent(factory: Any) -> None:
    calls = Calls()
    calls.block = True

    async def main() -> None:
        async with sos_button(factory, calls) as button:
            await button.simulated.hold(HOLD + 0.1)
            await settle()
            assert button.handling_sos
            await button.simulated.hold(HOLD + 0.1)  # still being handled
            await settle()
            await button.simulated.hold(0.05)  # a status press would drown its result
            await settle()
            assert (calls.sos, calls.short, button.sos_ignored) == (1, 0, 1)
            calls.release.set()
            await asyncio.sleep(0)
            await button.simulated.hold(HOLD + 0.1)  # handled: a retry goes out
            await settle()
            assert (calls.sos, button.sos_holds) == (2, 2)

    run(main())


def test_a_failing_handler_does_not_break_the_button(factory: Any) -> None:
    count = 0

    def broken() -> None:
        nonlocal count
        count += 1
        raise RuntimeError("bug")

    async def main() -> None:
        button = SosButton(
            17,
            loop=asyncio.get_running_loop(),
            on_sos=broken,
            on_short_press=broken,
            pin_factory=factory,
            short_press_s=SHORT,
            bounce_s=BOUNCE,
        )
        try:
            for _ in range(2):
                await button.simulated.hold(0.05)
                await settle()
        finally:
            await button.close()

    run(main())
    assert count == 2


def test_the_default_timing_is_a_three_second_hold_and_one_second_tap(factory: Any) -> None:
    config = GpioConfig(button_pin=17)

    async def main() -> None:
        panel = GpioPanel(config, on_sos=lambda: None, backend=factory)
        await panel.start()
        try:
            assert panel.button is not None
            assert panel.button.device.hold_time == 3.0
            assert panel.button.device.hold_repeat is False
            assert panel.button.device.pin.bounce == 0.05
            assert panel.button.is_short(0.99) and not panel.button.is_short(1.0)
        finally:
            await panel.close()

    run(main())


# --- LEDs and buzzer -------------------------------------------------------------------


def states(pin: Any) -> list[tuple[float, bool]]:
    """The pin's history after its first state: (seconds in the previous state, new state)."""
    return [(round(s.timestamp, 2), bool(s.state)) for s in pin.states[1:]]


def on_times(pin: Any) -> list[float]:
    """How long each 'on' lasted, from the pin's history."""
    history = pin.states
    return [b.timestamp for a, b in itertools.pairwise(history) if a.state and not b.state]


@asynccontextmanager
async def indicators(factory: Any) -> AsyncIterator[tuple[Indicators, dict[str, Any]]]:
    devices = {
        "link_led": LED(22, pin_factory=factory),
        "queue_led": LED(23, pin_factory=factory),
        "battery_led": LED(24, pin_factory=factory),
        "buzzer": Buzzer(25, pin_factory=factory),
    }
    try:
        yield Indicators(**devices), {name: d.pin for name, d in devices.items()}
    finally:
        for device in devices.values():
            device.close()


def test_link_led_solid_for_broadband_slow_blink_for_narrow_off_for_none(factory: Any) -> None:
    async def main() -> None:
        async with indicators(factory) as (show, pins):
            pin = pins["link_led"]
            show.show_links(Links.BROADBAND)
            assert pin.state == 1
            show.show_links(Links.NONE)
            assert pin.state == 0
            assert show.patterns["link"].name == "off"
            pin.clear_states()
            show.show_links(Links.NARROW)
            await asyncio.sleep(0.5)
            assert [s for _, s in states(pin)] == [True, False]
            assert on_times(pin) == [pytest.approx(0.2, abs=0.08)]
            before = len(pin.states)
            show.show_links(Links.NARROW)  # the same again: the rhythm goes on undisturbed
            assert len(pin.states) == before

    run(main())


def test_queue_led_blinks_while_urgent_items_wait(factory: Any) -> None:
    async def main() -> None:
        async with indicators(factory) as (show, pins):
            pin = pins["queue_led"]
            show.show_queue(2)
            await asyncio.sleep(0.65)
            assert [s for _, s in states(pin)] == [True, False]
            assert on_times(pin) == [pytest.approx(0.5, abs=0.08)]
            show.show_queue(0)
            assert pin.state == 0

    run(main())


def test_battery_led_on_when_low_fast_blink_when_critical(factory: Any) -> None:
    async def main() -> None:
        async with indicators(factory) as (show, pins):
            pin = pins["battery_led"]
            show.show_battery(PowerMode.SAVE)
            assert pin.state == 1
            show.show_battery(PowerMode.CRITICAL)
            pin.clear_states()
            await asyncio.sleep(0.75)
            flashes = on_times(pin)
            assert len(flashes) >= 2
            assert all(t == pytest.approx(0.1, abs=0.08) for t in flashes)
            show.show_battery(PowerMode.NORMAL)
            assert pin.state == 0

    run(main())


def test_buzzer_patterns_are_told_apart_by_ear(factory: Any) -> None:
    async def main() -> None:
        async with indicators(factory) as (show, pins):
            pin = pins["buzzer"]
            show.sos_accepted()
            await asyncio.sleep(0.5)
            assert on_times(pin) == [pytest.approx(0.1, abs=0.08)] * 2
            pin.clear_states()
            show.sos_failed()
            await asyncio.sleep(0.95)
            assert on_times(pin) == [pytest.approx(0.8, abs=0.08)]  # long: unmistakable
            pin.clear_states()
            show.show_links(Links.NARROW)
            show.chirp_status()
            await asyncio.sleep(0.75)
            assert on_times(pin) == [pytest.approx(0.05, abs=0.06)] * 2

    run(main())


def test_link_level_and_status_chirps() -> None:
    def link(kind: str, online: bool = True) -> LinkState:
        return LinkState(kind, kind, online, 100.0, 1.0)

    assert link_level([]) is Links.NONE
    assert link_level([link("ip", online=False), link("beidou")]) is Links.NARROW
    assert link_level([link("mesh"), link("ip")]) is Links.BROADBAND
    assert [status_chirp(level).times for level in Links] == [3, 2, 1]


# --- the panel -------------------------------------------------------------------------


@asynccontextmanager
async def panel(
    config: GpioConfig, on_sos: Callable[[], Any], backend: Any = None
) -> AsyncIterator[GpioPanel]:
    device = GpioPanel(config, on_sos=on_sos, backend=backend)
    await device.start()
    try:
        yield device
    finally:
        await device.close()


def test_the_panel_chirps_when_the_sos_is_accepted_and_reports_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KIT_BACKEND", "sim")
    config = GpioConfig(**PINS, buzzer_pin=25, hold_s=1.0, short_press_s=0.3)
    accepted: list[bool] = []

    async def on_sos() -> None:
        accepted.append(True)

    async def main() -> None:
        async with panel(config, on_sos) as kit:
            assert kit.pin_factory is not None
            buzzer = kit.pin_factory.pin(25)
            await kit.simulated_button.hold(1.1)
            await asyncio.sleep(0.1)
            assert accepted == [True]
            assert on_times(buzzer)[:1] == [pytest.approx(SOS_ACCEPTED.on_s, abs=0.08)]
            state = kit.state()
            assert state.online
            assert state.summary == "面板正常，SOS 长按 1 次 / panel working, 1 SOS hold(s)"
            assert state.detail == {
                "button_pin": 17,
                "link_led_pin": 22,
                "queue_led_pin": 23,
                "battery_led_pin": 24,
                "buzzer_pin": 25,
                "wipe_pin": None,
                "led_link": "off",
                "led_queue": "off",
                "led_battery": "off",
                "button": "released",
                "sos_holds": 1,
                "sos_ignored": 0,
                "short_presses": 0,
            }

    run(main())
    assert Device.pin_factory is None


def test_the_panel_sounds_the_failure_when_the_sos_was_not_accepted(factory: Any) -> None:
    async def on_sos() -> None:
        raise ConnectionError("edge down")

    async def main() -> None:
        config = GpioConfig(button_pin=17, buzzer_pin=25, hold_s=1.0, short_press_s=0.3)
        async with panel(config, on_sos, factory) as kit:
            await kit.simulated_button.hold(1.1)
            await asyncio.sleep(0.9)
            assert on_times(factory.pin(25)) == [pytest.approx(0.8, abs=0.08)]

    run(main())


def test_a_pin_that_cannot_be_claimed_is_reported_and_the_rest_works(factory: Any) -> None:
    squatter = LED(22, pin_factory=factory)
    calls = Calls()

    async def main() -> None:
        config = GpioConfig(button_pin=17, link_led_pin=22, short_press_s=0.3)
        device = GpioPanel(
            config, on_sos=calls.on_sos, on_short_press=calls.on_short_press, backend=factory
        )
        await device.start()
        try:
            state = device.state()
            assert not state.online
            assert state.summary == "GPIO 故障：link_led_pin / GPIO fault: link_led_pin"
            assert str(state.detail["problems"]).startswith("link_led_pin: GPIO22: ")
            await device.simulated_button.hold(0.05)
            await settle()
            assert calls.short == 1
        finally:
            await device.close()

    try:
        run(main())
    finally:
        squatter.close()


def test_only_simulated_pins_can_be_pressed_from_software() -> None:
    kit = GpioPanel(GpioConfig(), on_sos=lambda: None)
    with pytest.raises(NotSimulated) as err:
        kit.simulated_button.press()
    assert str(err.value) == "未配置或未启动 SOS 按钮 / no SOS button configured or started"
    assert kit.state().summary == "未配置 GPIO / no GPIO pins configured"


# --- config ----------------------------------------------------------------------------


def test_a_pin_used_twice_is_named_with_its_uses() -> None:
    with pytest.raises(ValidationError) as err:
        GpioConfig(button_pin=17, queue_led_pin=5, buzzer_pin=17, battery_led_pin=5)
    assert [e["msg"] for e in err.value.errors()] == [
        "Value error, GPIO5 同时用于 queue_led_pin、battery_led_pin；"
        "GPIO17 同时用于 button_pin、buzzer_pin / "
        "GPIO5 is used by both queue_led_pin and battery_led_pin; "
        "GPIO17 is used by both button_pin and buzzer_pin"
    ]


def test_pins_out_of_range_and_unknown_keys_are_rejected_by_key() -> None:
    with pytest.raises(ValidationError) as err:
        GpioConfig.model_validate({"button_pin": 28, "buzzer_pin": -1, "led_pin": 4})
    assert [(e["loc"], e["msg"]) for e in err.value.errors()] == [
        (("button_pin",), "Input should be less than or equal to 27"),
        (("buzzer_pin",), "Input should be greater than or equal to 0"),
        (("led_pin",), "Extra inputs are not permitted"),
    ]


def test_timings_must_be_in_order() -> None:
    with pytest.raises(ValidationError) as err:
        GpioConfig(hold_s=2.0, short_press_s=2.0)
    assert err.value.errors()[0]["msg"] == (
        "Value error, 短按上限 2 秒必须短于 SOS 长按时间 2 秒 / "
        "short_press_s (2) must be shorter than hold_s (2)"
    )


def test_every_gpio_setting_is_titled_in_both_languages() -> None:
    for name, field in GpioConfig.model_fields.items():
        assert field.title and " / " in field.title, name
        assert field.description, name
