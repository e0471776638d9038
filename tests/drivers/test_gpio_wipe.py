"""The recessed key-wipe button: held ``wipe_hold_s`` it destroys the kit's keys (through
the drivers process's own wiring), audited; a shorter press does nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from hygiene import nothing_left_open, run, until  # noqa: F401

from config.schema import KitConfig
from drivers.gpio import GpioConfig
from drivers.process import _panel
from security.cli import KIT_STATE
from security.keys import KIT_KEY, provision
from security.state import SecurityState


def test_holding_the_wipe_button_destroys_the_keys_and_a_short_press_does_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KIT_BACKEND", "sim")  # gpiozero's mock pins, pressed from the test
    config = KitConfig.model_validate(
        {
            "kit": {"id": 12, "name": "测试"},
            "paths": {"data_dir": str(tmp_path / "data"), "runtime_dir": str(tmp_path / "r")},
            "gpio": {"button_pin": 17, "wipe_pin": 22, "wipe_hold_s": 5},
        }
    )
    provision(config.keys_dir, "default")
    sos: list[str] = []

    async def on_sos() -> None:
        sos.append("sos")

    async def main() -> None:
        panel = _panel(config, on_sos)
        assert panel is not None
        await panel.start()
        try:
            assert panel.wipe_button is not None
            finger = panel.wipe_button.simulated
            await finger.hold(2.0)  # a knock, or someone curious: nothing happens
            await asyncio.sleep(0.2)
            assert (config.keys_dir / KIT_KEY).exists()
            await finger.hold(5.5)
            await until(lambda: not (config.keys_dir / KIT_KEY).exists(), timeout=5)
            assert panel.wipe_button.wipes == 1 and sos == []
        finally:
            await panel.close()

    run(main(), 30)
    state = SecurityState(config.paths.data_dir / KIT_STATE)
    try:
        assert [(k, how) for k, _, _, how in state.audit_rows("key-wiped")] == [
            (12, "GPIO22 button")
        ]
    finally:
        state.close()


def test_the_wipe_button_needs_its_own_pin_and_a_long_hold() -> None:
    with pytest.raises(ValueError, match="GPIO17 is used by both button_pin and wipe_pin"):
        GpioConfig(button_pin=17, wipe_pin=17)
    with pytest.raises(ValueError, match="greater than or equal to 5"):
        GpioConfig(wipe_pin=22, wipe_hold_s=2)
