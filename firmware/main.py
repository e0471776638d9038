"""Board glue for the Raspberry Pi Pico companion: pins, ADC, UART and the Pico's own watchdog.

Copied to the Pico with ``kit firmware flash`` (mpremote) next to ``kitlink.py`` and
``supervisor.py``, which hold all of the logic. Wiring (change the constants to match):

- UART0: GP0 (TX) → Pi GPIO15 (RXD), GP1 (RX) ← Pi GPIO14 (TXD), 115200 8N1, common ground.
- GP26 (ADC0): battery voltage through a divider (``DIVIDER``: 100 kΩ over 22 kΩ ≈ 5.55,
  so 2S Li-ion 8.4 V reads about 1.5 V); calibrate ``DIVIDER`` with a multimeter.
- GP27 (ADC1): battery current from a hall sensor or shunt amplifier around ``MA_ZERO_V``
  (``MA_PER_V`` mA per volt, + charging); leave unconnected and set ``MA_PER_V = 0`` if none.
- GP15: power button to ground (internal pull-up).
- GP16: the Pi's power switch (logic-level MOSFET or relay driver; high = Pi on).
- GP17: mains present (high through a divider from the charger's input; pull-down).
- ADC4: the RP2040's own temperature sensor.

The Pico's watchdog (``machine.WDT``, at most 8.3 s on the RP2040) is fed once per loop:
if this loop ever hangs the Pico restarts, powers the Pi and sends ``EVT,BOOT``.
"""

import time

import kitlink
import machine
import supervisor

DIVIDER = 5.55
MA_ZERO_V = 1.65
MA_PER_V = 0.0
ADC_V = 3.3 / 65535
TICK_MS = 20
SAMPLE_MS = 500

uart = machine.UART(0, baudrate=115200, tx=machine.Pin(0), rx=machine.Pin(1), timeout=0)
vbat = machine.ADC(26)
ibat = machine.ADC(27)
temp = machine.ADC(4)
button = machine.Pin(15, machine.Pin.IN, machine.Pin.PULL_UP)
pi_switch = machine.Pin(16, machine.Pin.OUT, value=0)
mains = machine.Pin(17, machine.Pin.IN, machine.Pin.PULL_DOWN)
wdt = machine.WDT(timeout=8000)


def read_battery(sup: supervisor.Supervisor) -> None:
    mv = int(vbat.read_u16() * ADC_V * DIVIDER * 1000)
    ma = int((ibat.read_u16() * ADC_V - MA_ZERO_V) * MA_PER_V)
    # RP2040 datasheet: 27 °C at 0.706 V, -1.721 mV per °C.
    deci_c = int((27 - (temp.read_u16() * ADC_V - 0.706) / 0.001721) * 10)
    sup.battery(mv, ma, mains.value() == 1, deci_c)


def run() -> None:
    sup = supervisor.Supervisor(supervisor.Config())
    decoder = kitlink.Decoder()
    sender = kitlink.Sender()
    read_battery(sup)
    sup.boot(0)
    # ticks_ms wraps (every ~12 days on the RP2040): time is summed from differences.
    now = 0
    last_ticks = time.ticks_ms()
    last_sample = 0
    level = button.value() == 0
    changed_at = 0
    while True:
        wdt.feed()
        ticks = time.ticks_ms()
        now += time.ticks_diff(ticks, last_ticks)
        last_ticks = ticks
        pressed = button.value() == 0
        if pressed != level and now - changed_at >= sup.config.debounce_ms:
            level, changed_at = pressed, now
            sup.button(pressed, now)
        if now - last_sample >= SAMPLE_MS:
            last_sample = now
            read_battery(sup)
        data = uart.read()
        if data:
            for seq, kind, fields in decoder.feed(data):
                reply, reply_fields = sup.command(seq, kind, fields, now)
                uart.write(sender.frame(reply, reply_fields))
        sup.tick(now)
        for event in sup.take_events():
            uart.write(sender.frame("EVT", event))
        pi_switch.value(1 if sup.pi_power else 0)
        time.sleep_ms(TICK_MS)


run()
