"""Runs ``main.py``'s board glue against a fake ``machine`` module (MicroPython and CPython).

The fake UART hands the firmware a heartbeat, a request for readings and a bad frame,
then stops the endless loop by raising :class:`Stop`; the frames the firmware wrote and
the Pi switch's level are then checked.
"""

import sys

import kitlink


class Stop(Exception):
    pass


class Pin:
    IN, OUT, PULL_UP, PULL_DOWN = 0, 1, 2, 3
    levels: dict[int, int] = {15: 1, 17: 0}
    outputs: dict[int, int] = {}

    def __init__(self, n: int, mode: int = 0, pull: int = 0, value: int = 0) -> None:
        self.n = n
        if mode == Pin.OUT:
            Pin.outputs[n] = value

    def value(self, v: int | None = None) -> int:
        if v is None:
            return Pin.levels.get(self.n, 0)
        Pin.outputs[self.n] = v
        return v


class ADC:
    def __init__(self, channel: int) -> None:
        self.channel = channel

    def read_u16(self) -> int:
        # 1.3345 V at ADC0 → 7.406 V battery with the 5.55 divider; 0.706 V → 27 °C.
        return {26: 26504, 27: 0, 4: 14021}[self.channel]


class UART:
    script = [
        kitlink.encode(1, "HB"),
        kitlink.encode(2, "GET"),
        b"$3,HB*0000\n",
        kitlink.encode(4, "WDT", ("99999",)),
    ]
    written: list[bytes] = []
    reads = 0

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def read(self) -> bytes | None:
        UART.reads += 1
        if UART.reads > 8:
            raise Stop()
        return UART.script.pop(0) if UART.script else None

    def write(self, data: bytes) -> int:
        UART.written.append(data)
        return len(data)


class WDT:
    feeds = 0

    def __init__(self, timeout: int = 0) -> None:
        self.timeout = timeout

    def feed(self) -> None:
        WDT.feeds += 1


class FakeMachine:
    Pin = Pin
    ADC = ADC
    UART = UART
    WDT = WDT


def main() -> int:
    sys.modules["machine"] = FakeMachine  # type: ignore[assignment]
    try:
        import main as firmware  # noqa: F401 - importing runs the loop until Stop
    except Stop:
        pass
    decoder = kitlink.Decoder()
    frames = decoder.feed(b"".join(UART.written))
    kinds = [(kind, fields) for _, kind, fields in frames]
    assert decoder.malformed == 0, decoder.malformed
    assert ("EVT", ("BOOT",)) in kinds, kinds
    assert ("ACK", ("1",)) in kinds, kinds
    assert ("NAK", ("4", "range")) in kinds, kinds
    pwr = [fields for kind, fields in kinds if kind == "PWR"]
    assert len(pwr) == 1, kinds
    assert 7350 <= int(pwr[0][0]) <= 7450, pwr
    assert 260 <= int(pwr[0][3]) <= 280, pwr
    assert len(kinds) == 4, kinds  # the corrupt heartbeat got no answer
    assert Pin.outputs[16] == 1, Pin.outputs
    assert WDT.feeds >= 8, WDT.feeds
    print("board checks: 1 passed, 0 failed")
    return 0
