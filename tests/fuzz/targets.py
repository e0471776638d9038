"""Coverage-guided fuzz targets (atheris/libFuzzer) for every parser of outside input.

    .venv/bin/python tests/fuzz/targets.py TARGET [libFuzzer options, e.g. -runs=100000]

Each target feeds arbitrary bytes to a parser the way the outside world would (a serial
line in pieces, a radio packet, a frame) and fails — libFuzzer reports a crash and exits
non-zero — on any exception other than the parser's own precise error, which is the
contract: bad input is refused, it never crashes the kit. tests/fuzz/test_fuzz.py runs
every target for a bounded time in CI.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Callable
from pathlib import Path

if not __package__:
    sys.path[0] = str(Path(__file__).resolve().parent.parent.parent)

import atheris

with atheris.instrument_imports():
    from drivers import nmea, smspdu
    from drivers.atmodem import AtChannel
    from drivers.beidou import BeidouTerminal
    from drivers.sentence import StreamParser
    from mesh.reports import text_item
    from mesh.roster import Roster
    from uplink import compact, frames


def _cut(data: bytes) -> list[bytes]:
    """The input as a UART delivers it: in pieces whose sizes the first byte chooses."""
    step = 1 + (data[0] % 37) if data else 1
    return [data[i : i + step] for i in range(1, len(data), step)]


def nmea_stream(data: bytes) -> None:
    parser = StreamParser()
    for piece in _cut(data):
        for sentence in parser.feed(piece):
            with contextlib.suppress(nmea.BadNmea):
                nmea.parse(sentence)


def beidou_stream(data: bytes) -> None:
    for protocol in ("4.0", "5.0"):
        terminal = BeidouTerminal("/nonexistent", protocol=protocol)  # type: ignore[arg-type]
        terminal.on_message = lambda sender, payload: None
        for piece in _cut(data):
            terminal._on_data(piece)


LOOP = asyncio.new_event_loop()  # the AT channel times what it hears by the loop's clock


def at_stream(data: bytes) -> None:
    async def feed() -> None:
        channel = AtChannel("/nonexistent", on_urc=lambda line: None, on_boot=lambda: None)
        for piece in _cut(data):
            channel._on_data(piece)

    LOOP.run_until_complete(feed())


def sms_pdu(data: bytes) -> None:
    for decode in (smspdu.decode_deliver, smspdu.decode_submit):
        with contextlib.suppress(smspdu.BadPdu):
            decode(data)


def narrow_frame(data: bytes) -> None:
    try:
        frame = frames.decode_frame(data)
    except frames.BadFrame:
        return
    with contextlib.suppress(frames.BadFrame):
        compact.unpack_entries(frame.payload, kit_id=frame.kit_id)


def mesh_text(data: bytes) -> None:
    text = atheris.FuzzedDataProvider(data).ConsumeUnicodeNoSurrogates(len(data))
    item = text_item(text, "!a1b2c3d4", Roster())
    assert item.priority.value in (0, 1)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "nmea": nmea_stream,
    "beidou": beidou_stream,
    "at": at_stream,
    "sms": sms_pdu,
    "frame": narrow_frame,
    "mesh-text": mesh_text,
}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(TARGETS)}}} [libFuzzer options]")
    target = TARGETS[sys.argv.pop(1)]
    os.environ.setdefault("KIT_CLOCK_SYNCED", "1")
    atheris.Setup(sys.argv, target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
