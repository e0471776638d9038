"""Checks of the companion's logic that run under MicroPython (Node + WebAssembly) and CPython.

No test framework exists on MicroPython: each ``check_*`` function asserts, :func:`main`
runs them all and prints one line per failure and ``N passed, N failed`` at the end.
``kitlink`` and ``supervisor`` are imported flat, as on the Pico (the runner puts the
firmware folder on ``sys.path``).
"""

import kitlink
import supervisor


def check_crc_matches_the_ccitt_false_check_value() -> None:
    assert kitlink.crc16(b"123456789") == 0x29B1


def check_frames_round_trip() -> None:
    frame = kitlink.encode(42, "PWR", ("7400", "-850", "1", "315"))
    assert frame.startswith(b"$42,PWR,7400,-850,1,315*") and frame.endswith(b"\n")
    assert kitlink.parse(frame[:-1]) == (42, "PWR", ("7400", "-850", "1", "315"))
    assert kitlink.parse(frame[:-1] + b"\r") is not None


def check_a_flipped_bit_is_refused_and_counted() -> None:
    frame = bytearray(kitlink.encode(7, "HB"))
    frame[2] ^= 0x01
    decoder = kitlink.Decoder()
    assert decoder.feed(bytes(frame)) == []
    assert decoder.malformed == 1


def check_noise_and_split_frames() -> None:
    decoder = kitlink.Decoder()
    data = b"\x00\xffgarbage" + kitlink.encode(1, "GET") + b"$12,HB*00" + kitlink.encode(2, "HB")
    got = []
    for i in range(0, len(data), 5):
        got += decoder.feed(data[i : i + 5])
    assert got == [(1, "GET", ()), (2, "HB", ())], got
    assert decoder.noise == 9, decoder.noise
    assert decoder.malformed == 1


def check_an_overlong_line_is_dropped_without_growing_the_buffer() -> None:
    decoder = kitlink.Decoder()
    assert decoder.feed(b"$" + b"A" * 500) == []
    assert decoder.feed(b"B" * 500 + b"\n" + kitlink.encode(3, "HB")) == [(3, "HB", ())]
    assert decoder.malformed == 1


def check_encode_refuses_what_parse_would() -> None:
    for kind, fields in (("HB", ("x",)), ("XX", ()), ("OFF", ("a,b",)), ("OFF", ("",))):
        try:
            kitlink.encode(1, kind, fields)
        except ValueError:
            continue
        raise AssertionError("encoded " + kind)


def check_number_bounds() -> None:
    assert kitlink.number("-850", -20000, 20000) == -850
    assert kitlink.number("99999", 0, 60000) is None
    assert kitlink.number("1x", 0, 9) is None


def _sup(**kw: int) -> supervisor.Supervisor:
    config = supervisor.Config(
        watchdog_ms=kw.get("watchdog_ms", 10000),
        boot_grace_ms=kw.get("boot_grace_ms", 30000),
        off_ms=kw.get("off_ms", 2000),
        max_cycles_per_hour=kw.get("max_cycles_per_hour", 2),
        long_press_ms=5000,
        debounce_ms=50,
        samples=4,
        cutoff_mv=6000,
        restore_mv=6600,
        low_grace_ms=1000,
    )
    sup = supervisor.Supervisor(config)
    sup.battery(7400, -500, False, 250)
    sup.boot(0)
    return sup


def check_boot_powers_the_pi_and_reports() -> None:
    sup = _sup()
    assert sup.pi_power
    assert sup.take_events() == [("BOOT",)]


def check_no_cycle_within_the_boot_grace() -> None:
    sup = _sup()
    sup.tick(29999)
    assert sup.pi_power and sup.cycles == []


def check_silence_after_the_grace_power_cycles_the_pi() -> None:
    sup = _sup()
    sup.take_events()
    sup.tick(30000)
    assert not sup.pi_power
    sup.tick(31999)
    assert not sup.pi_power
    sup.tick(32000)
    assert sup.pi_power
    assert sup.take_events() == [("CYCLED", "heartbeat")]


def check_heartbeats_keep_the_pi_on() -> None:
    sup = _sup()
    for t in range(0, 200000, 5000):
        assert sup.command(t // 5000, "HB", (), t) == ("ACK", (str(t // 5000),))
        sup.tick(t)
        assert sup.pi_power
    sup.tick(195000 + 10000)
    assert not sup.pi_power


def check_cycles_per_hour_are_limited() -> None:
    sup = _sup(max_cycles_per_hour=2)
    t = 0
    for _ in range(2):
        t += 30000
        sup.tick(t)
        assert not sup.pi_power
        t += 2000
        sup.tick(t)
        assert sup.pi_power
    t += 30000
    sup.tick(t)
    assert sup.pi_power and sup.gave_up
    assert sup.take_events()[-1] == ("CYCLED", "limit")
    sup.command(1, "HB", (), t)  # the kit came up after all: the watchdog is armed again
    assert not sup.gave_up


def check_the_cycle_limit_frees_up_after_an_hour() -> None:
    sup = _sup(max_cycles_per_hour=1)
    sup.tick(30000)
    sup.tick(32000)
    sup.tick(62000)
    assert sup.gave_up and sup.pi_power
    sup.command(1, "HB", (), 30000 + 3600000)
    sup.tick(30000 + 3600000 + 10000)
    assert not sup.pi_power


def check_wdt_command_sets_the_timeout_and_zero_disables() -> None:
    sup = _sup()
    assert sup.command(5, "WDT", ("0",), 0) == ("ACK", ("5",))
    sup.tick(10000000)
    assert sup.pi_power
    assert sup.command(6, "WDT", ("4000",), 0) == ("NAK", ("6", "range"))
    assert sup.command(7, "WDT", ("3",), 0) == ("ACK", ("7",))
    assert sup.watchdog_ms == 3000


def check_off_cuts_power_later_and_the_button_brings_it_back() -> None:
    sup = _sup()
    sup.take_events()
    assert sup.command(1, "OFF", ("20",), 1000) == ("ACK", ("1",))
    sup.tick(20999)
    assert sup.pi_power
    sup.tick(21000)
    assert not sup.pi_power
    sup.tick(500000)  # no watchdog cycle and no power-on while held off
    assert not sup.pi_power
    sup.button(True, 500000)
    sup.button(False, 500200)
    assert sup.pi_power
    assert sup.take_events() == [("BTN", "short")]


def check_short_and_long_presses() -> None:
    sup = _sup(watchdog_ms=0)
    sup.take_events()
    sup.button(True, 1000)
    sup.button(False, 1020)  # contact bounce: nothing
    sup.button(True, 2000)
    sup.button(False, 2300)
    sup.button(True, 3000)
    sup.tick(7999)
    assert sup.take_events() == [("BTN", "short")]
    sup.tick(8000)
    sup.tick(9000)
    assert sup.take_events() == [("BTN", "long")]
    sup.button(False, 12000)
    assert sup.take_events() == []


def check_battery_readings_are_averaged() -> None:
    sup = _sup()
    for mv in (7000, 7200, 7400, 7600, 7800):
        sup.battery(mv, -100, False, 250)
    assert sup.mv() == 7500
    assert sup.reading() == ("7500", "-100", "0", "250")


def check_low_voltage_cuts_after_the_grace_with_hysteresis() -> None:
    sup = _sup(watchdog_ms=0)
    sup.take_events()
    for _ in range(4):
        sup.battery(5900, -900, False, 250)
    sup.tick(1000)
    assert sup.pi_power
    assert sup.take_events() == [("LOW", "5900")]
    sup.tick(2000)
    assert not sup.pi_power
    for _ in range(4):
        sup.battery(6500, -10, False, 250)  # recovered a little: still below restore_mv
    sup.tick(3000)
    assert not sup.pi_power
    for _ in range(4):
        sup.battery(6700, 0, False, 250)
    sup.tick(4000)
    assert sup.pi_power
    assert sup.take_events() == [("RESTORED",)]


def check_mains_prevents_the_low_voltage_cut() -> None:
    sup = _sup(watchdog_ms=0)
    for _ in range(4):
        sup.battery(5500, 800, True, 250)
    sup.tick(1000)
    sup.tick(5000)
    assert sup.pi_power


def check_events_wait_while_the_pi_is_off_and_are_bounded() -> None:
    sup = _sup(watchdog_ms=0)
    sup.take_events()
    for _ in range(4):
        sup.battery(5000, -900, False, 250)
    sup.tick(1000)
    sup.tick(3000)  # cut for low voltage: the button does not bring it back
    for i in range(40):
        sup.button(True, 4000 + i * 200)
        sup.button(False, 4000 + i * 200 + 100)
    assert sup.take_events() == []
    assert len(sup.events) == supervisor.MAX_EVENTS and sup.dropped_events > 0


def main() -> int:
    passed = failed = 0
    for name in sorted(globals()):
        if name.startswith("check_"):
            try:
                globals()[name]()
                passed += 1
            except Exception as exc:  # report every failure, go on
                failed += 1
                print("FAIL " + name + ": " + repr(exc))
    print("firmware checks: " + str(passed) + " passed, " + str(failed) + " failed")
    return failed


if __name__ == "__main__":
    raise SystemExit(1 if main() else 0)
