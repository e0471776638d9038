"""Drivers benchmark: NMEA parsing rate, SOS button → centre over Beidou, idle CPU of the drivers.

- ``nmea_parse_per_s``: a receiver's output (RMC, GGA, GSA, 3 × GSV per epoch, talkers
  GN/GB/GP) cut from a byte stream and parsed, sentences per second.
- ``beidou_sos_end_to_end_s``: from the moment the SOS button is pressed (held the
  configured 3 s) until the SOS is stored at the centre, over a Beidou link with the
  simulator's realistic delays (0.5 s feedback, 4 s through the satellite and ground
  station); the kit's edge and uplink and the centre run as real processes, the
  terminals on real ptys. ``beidou_sos_after_hold_s`` is the part after the hold.
- ``driver_idle_cpu_pct``: CPU of ``kit drivers`` (GNSS at 1 Hz, battery, GPIO panel)
  plus ``kit uplink`` with its Beidou terminal, run with ``KIT_BACKEND=sim`` for
  ``--idle-s`` seconds with nothing to send, in percent of one core. The simulated
  devices run inside those processes, so the figure is an upper bound of the drivers'.

Prints progress to stderr and one JSON object as the last line of stdout.
    .venv/bin/python bench/drivers.py [--idle-s 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("KIT_CLOCK_SYNCED", "1")
if not __package__:
    # Run as a file: import the kit's packages, not this folder.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import zmq.asyncio

from config.loader import parse
from drivers.nmea import parse as parse_nmea
from drivers.process import Drivers
from drivers.sentence import Sentence, StreamParser
from edge import bus
from sim.beidou import SimCard, SimulatedTerminal
from sim.harness import centre, centre_items, kit

CENTRE_CARD = SimCard(user_id="0300001", comm_level=4)
PANEL = "[gpio]\nbutton_pin = 17\nlink_led_pin = 5\nqueue_led_pin = 6\nbattery_led_pin = 13\n"
PANEL += "buzzer_pin = 18\n"


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def epoch(second: int) -> bytes:
    """One second of a dual-system receiver's output."""
    hhmmss = f"{8 + second // 3600 % 10:02d}{second // 60 % 60:02d}{second % 60:02d}.00"
    lat, lon = f"3039.{5160 + second % 100:04d}", f"10403.{8820 + second % 100:04d}"
    talker = ("GN", "GB", "GP")[second % 3]
    rmc = (hhmmss, "A", lat, "N", lon, "E", "0.5", "87.1", "231126", "", "", "A", "V")
    gga = (hhmmss, lat, "N", lon, "E", "1", "15", "0.8", "505.0", "M", "-32.1", "M", "", "")
    used = ("01", "03", "07", "11", "14", "17", "19", "22", "", "", "", "")
    out = [
        Sentence(f"{talker}RMC", rmc),
        Sentence(f"{talker}GGA", gga),
        Sentence(f"{talker}GSA", ("A", "3", *used, "1.4", "0.8", "1.1", "1")),
    ]
    for i in range(3):
        sats = [(f"{i * 4 + k + 1:02d}", "45", "120", "38") for k in range(4)]
        out.append(Sentence("GBGSV", ("3", str(i + 1), "12", *[f for s in sats for f in s], "1")))
    return b"".join(s.encode() for s in out)


def nmea_rate(epochs: int = 10_000) -> float:
    stream = b"".join(epoch(i) for i in range(epochs))
    chunks = [stream[i : i + 512] for i in range(0, len(stream), 512)]  # as a UART delivers
    parser = StreamParser()
    started = time.perf_counter()
    count = 0
    for chunk in chunks:
        for sentence in parser.feed(chunk):
            parse_nmea(sentence)
            count += 1
    elapsed = time.perf_counter() - started
    assert count == epochs * 6 and not parser.dropped, parser.dropped
    return count / elapsed


async def sos_over_beidou(root: Path) -> tuple[float, float]:
    """Seconds from pressing the button to the SOS stored at the centre, and after the hold."""
    kit_dev, centre_dev = root / "kit-beidou", root / "centre-beidou"
    kit_term = SimulatedTerminal("4.0", SimCard(), link=kit_dev)
    centre_term = SimulatedTerminal("4.0", CENTRE_CARD, link=centre_dev, peer=kit_term)
    kit_term.peer = centre_term
    gateway = f'[[gateways]]\nname = "beidou"\nkind = "beidou"\ndevice = "{centre_dev}"\nmtu = 77\n'
    link = (
        f'[[links]]\nkind = "beidou"\nname = "beidou"\ndevice = "{kit_dev}"\n'
        'centre_id = "0300001"\n'
    )
    try:
        async with (
            kit_term,
            centre_term,
            centre(root, udp_gateways=[gateway]) as (_, data),
            kit(root, link, extra=PANEL) as k,
        ):
            # Simulated GPIO, GNSS and battery for the drivers in this process only (the
            # kit's uplink, started above, opens the Beidou terminal's pty).
            os.environ["KIT_BACKEND"] = "sim"
            config = parse(root / "kit.toml")
            publisher = bus.Publisher(
                zmq.asyncio.Context.instance(), config.endpoint(bus.PUB_SOCKET)
            )
            drivers = Drivers(config, k.edge, publisher)
            await drivers.start()
            try:
                assert drivers.panel is not None and drivers.gnss is not None
                say("waiting for the kit's Beidou link and a GNSS fix …")
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline and (
                    drivers.last_fix is None or not kit_term.heard
                ):
                    await asyncio.sleep(0.2)
                await asyncio.sleep(2.0)  # the uplink has read the card
                pressed = time.monotonic()
                await drivers.panel.simulated_button.hold(config.gpio.hold_s + 0.2)
                held = pressed + config.gpio.hold_s
                while not drivers.sos_sent:
                    await asyncio.sleep(0.01)
                seq = drivers.sos_sent[0]
                while seq not in centre_items(data):
                    if time.monotonic() - pressed > 120:
                        raise RuntimeError("the SOS did not reach the centre in 120 s")
                    await asyncio.sleep(0.05)
                stored = time.monotonic()
            finally:
                await drivers.close()
                publisher.close()
    finally:
        os.environ.pop("KIT_BACKEND", None)
    return stored - pressed, stored - held


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_cpu(root: Path, idle_s: float) -> float:
    """Percent of one core used by `kit drivers` + `kit uplink` (Beidou) with nothing to do."""
    config = root / "kit.toml"
    config.write_text(
        '[kit]\nid = 7\nname = "bench"\n[paths]\ndata_dir = "data"\nruntime_dir = "run"\n'
        + PANEL
        + '[[links]]\nkind = "beidou"\nname = "beidou"\ncentre_id = "0300001"\n'
    )
    env = {**os.environ, "KIT_BACKEND": "sim"}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name in ("edge", "drivers", "uplink"):
            procs[name] = subprocess.Popen(
                [sys.executable, "-m", "edge.cli", name, "--config", str(config)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1.0)
        say("letting the drivers settle (GNSS fix, Beidou card) …")
        time.sleep(10.0)
        watched = [procs["drivers"].pid, procs["uplink"].pid]
        before = sum(_cpu_s(pid) for pid in watched)
        started = time.monotonic()
        say(f"measuring {idle_s:g} s of idling …")
        time.sleep(idle_s)
        used = sum(_cpu_s(pid) for pid in watched) - before
        return 100.0 * used / (time.monotonic() - started)
    finally:
        for proc in reversed(procs.values()):
            proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle-s", type=float, default=30.0, help="seconds of idling measured")
    args = parser.parse_args()
    result: dict[str, Any] = {}
    say("parsing NMEA …")
    result["nmea_parse_per_s"] = round(nmea_rate())
    with tempfile.TemporaryDirectory(prefix="bench-drivers-") as tmp:
        say("SOS button → centre over Beidou …")
        (Path(tmp) / "sos").mkdir()
        total, after_hold = asyncio.run(sos_over_beidou(Path(tmp) / "sos"))
        result["beidou_sos_end_to_end_s"] = round(total, 2)
        result["beidou_sos_after_hold_s"] = round(after_hold, 2)
        (Path(tmp) / "idle").mkdir()
        result["driver_idle_cpu_pct"] = round(idle_cpu(Path(tmp) / "idle", args.idle_s), 2)
    result["machine"] = (
        f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(json.dumps(result, ensure_ascii=False))


if __name__ == "__main__":
    main()
