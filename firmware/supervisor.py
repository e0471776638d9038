"""The companion's decisions, as a pure state machine (MicroPython and CPython).

Time is passed in (``now_ms``, a monotonic millisecond count), inputs are method calls,
outputs are :attr:`Supervisor.pi_power` (the Pi's power switch) and the events waiting in
:meth:`Supervisor.take_events`. The board glue (``main.py`` on the Pico,
``sim/companion.py`` on a PC) only moves bytes, pins and time in and out.

What it decides:

- Watchdog: once the Pi has power it gets ``boot_grace_ms`` to send its first heartbeat;
  after that, ``watchdog_ms`` without a heartbeat cuts its power for ``off_ms`` and turns
  it back on (``EVT,CYCLED,heartbeat``). At most ``max_cycles_per_hour`` power cycles in
  any hour: a kit that never comes up is left on rather than cycled forever (a person can
  still look at it), until a heartbeat arrives again.
- Button: released before ``long_press_ms`` → ``BTN,short`` (and power on a Pi that is
  off); held ``long_press_ms`` → ``BTN,long`` once, while still held (the kit shuts down
  cleanly or wipes its keys, as it is configured). Contacts shorter than ``debounce_ms``
  are ignored.
- Battery: the last ``samples`` readings are averaged. On battery, an average below
  ``cutoff_mv`` sends ``EVT,LOW`` and cuts the Pi's power ``low_grace_ms`` later (the kit
  should have shut itself down long before: this protects the cells); power returns once
  the average is above ``restore_mv`` or mains is back (``EVT,RESTORED``).
- ``OFF,<s>`` from the kit (after its clean shutdown) cuts power s seconds later; the Pi
  stays off until the button or mains brings it back.
"""

MAX_EVENTS = 16  # kept while the Pi is off or not listening; the oldest go first


class Config:
    """The supervisor's settings; every time in milliseconds, voltages in mV."""

    def __init__(
        self,
        watchdog_ms: int = 60000,
        boot_grace_ms: int = 180000,
        off_ms: int = 5000,
        max_cycles_per_hour: int = 3,
        long_press_ms: int = 5000,
        debounce_ms: int = 50,
        samples: int = 8,
        cutoff_mv: int = 6000,
        restore_mv: int = 6600,
        low_grace_ms: int = 30000,
    ) -> None:
        if restore_mv <= cutoff_mv:
            raise ValueError("restore_mv must be above cutoff_mv (hysteresis)")
        if long_press_ms <= debounce_ms or samples < 1 or max_cycles_per_hour < 0:
            raise ValueError("bad timing or counts")
        self.watchdog_ms = watchdog_ms
        self.boot_grace_ms = boot_grace_ms
        self.off_ms = off_ms
        self.max_cycles_per_hour = max_cycles_per_hour
        self.long_press_ms = long_press_ms
        self.debounce_ms = debounce_ms
        self.samples = samples
        self.cutoff_mv = cutoff_mv
        self.restore_mv = restore_mv
        self.low_grace_ms = low_grace_ms


HOUR_MS = 3600000
WDT_MAX_S = 3600
OFF_MAX_S = 600


class Supervisor:
    """See the module docstring. Start with :meth:`boot`, then call :meth:`tick` often."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.pi_power = False
        self.watchdog_ms = config.watchdog_ms  # 0: off
        self.cycles: list[int] = []  # times of power cycles in the last hour
        self.gave_up = False
        self.events: list[tuple[str, ...]] = []
        self.dropped_events = 0
        self._powered_at = 0
        self._last_hb: int | None = None
        self._cycle_on_at: int | None = None  # a power cycle turns the Pi back on then
        self._off_at: int | None = None  # an OFF command cuts power then
        self._held_off = False  # off by command or low battery: the button brings it back
        self._low_since: int | None = None
        self._low_cut = False
        self._mv: list[int] = []
        self._ma: list[int] = []
        self.mains = False
        self.temp_dc = 0
        self._pressed_at: int | None = None
        self._long_sent = False

    # --- life -----------------------------------------------------------------------

    def boot(self, now_ms: int) -> None:
        """The companion itself started: power the Pi and say so."""
        self._emit("BOOT")
        self._power_on(now_ms)

    def tick(self, now_ms: int) -> None:
        """Advance time: watchdog, scheduled power changes, held button, low battery."""
        self.cycles = [t for t in self.cycles if now_ms - t < HOUR_MS]
        if self._off_at is not None and now_ms >= self._off_at:
            self._off_at = None
            self._held_off = True
            self.pi_power = False
        if self._cycle_on_at is not None and now_ms >= self._cycle_on_at:
            self._cycle_on_at = None
            if not self._low_cut and not self._held_off:
                self._power_on(now_ms)
        self._watch_heartbeat(now_ms)
        self._watch_button(now_ms)
        self._watch_battery(now_ms)

    # --- from the kit ---------------------------------------------------------------

    def heartbeat(self, now_ms: int) -> None:
        self._last_hb = now_ms
        self.gave_up = False

    def command(
        self, seq: int, kind: str, fields: tuple[str, ...], now_ms: int
    ) -> tuple[str, tuple[str, ...]]:
        """Handle command frame ``seq``; the answer's kind and fields (``ACK``/``NAK``/``PWR``).

        Any frame from the kit shows it is alive, so each one counts as a heartbeat.
        """
        self.heartbeat(now_ms)
        ref = str(seq)
        if kind == "HB":
            return "ACK", (ref,)
        if kind == "GET":
            return "PWR", self.reading()
        if kind in ("OFF", "WDT"):
            limit = OFF_MAX_S if kind == "OFF" else WDT_MAX_S
            seconds = _int(fields[0], 0, limit) if fields else None
            if seconds is None:
                return "NAK", (ref, "range")
            if kind == "OFF":
                self._off_at = now_ms + seconds * 1000
            else:
                self.watchdog_ms = seconds * 1000
            return "ACK", (ref,)
        return "NAK", (ref, "kind")

    def reading(self) -> tuple[str, ...]:
        """The ``PWR`` fields: averaged mV and mA, mains, deci-°C."""
        return (str(self.mv()), str(self.ma()), "1" if self.mains else "0", str(self.temp_dc))

    # --- from the board -------------------------------------------------------------

    def battery(self, mv: int, ma: int, mains: bool, temp_dc: int) -> None:
        """One raw reading: battery mV, mA (+ charging), mains present, deci-°C."""
        self._mv.append(mv)
        self._ma.append(ma)
        if len(self._mv) > self.config.samples:
            self._mv.pop(0)
            self._ma.pop(0)
        self.mains = mains
        self.temp_dc = temp_dc

    def mv(self) -> int:
        return sum(self._mv) // len(self._mv) if self._mv else 0

    def ma(self) -> int:
        return sum(self._ma) // len(self._ma) if self._ma else 0

    def button(self, pressed: bool, now_ms: int) -> None:
        """The button's level changed (already debounced by time in :meth:`tick`)."""
        if pressed and self._pressed_at is None:
            self._pressed_at = now_ms
            self._long_sent = False
        elif not pressed and self._pressed_at is not None:
            held = now_ms - self._pressed_at
            self._pressed_at = None
            if not self._long_sent and held >= self.config.debounce_ms:
                self._emit("BTN", "short")
                if not self.pi_power and not self._low_cut:
                    self._held_off = False
                    self._cycle_on_at = None
                    self._power_on(now_ms)

    def take_events(self) -> list[tuple[str, ...]]:
        """Events to send (``EVT`` fields), oldest first; kept while the Pi is off."""
        if not self.pi_power:
            return []
        out, self.events = self.events, []
        return out

    # --- inside ---------------------------------------------------------------------

    def _emit(self, *fields: str) -> None:
        self.events.append(fields)
        if len(self.events) > MAX_EVENTS:
            self.events.pop(0)
            self.dropped_events += 1

    def _power_on(self, now_ms: int) -> None:
        self.pi_power = True
        self._powered_at = now_ms
        self._last_hb = None

    def _watch_heartbeat(self, now_ms: int) -> None:
        if not self.pi_power or self.watchdog_ms <= 0 or self.gave_up:
            return
        if self._off_at is not None:  # a clean shutdown is under way
            return
        if self._last_hb is None:
            silent = now_ms - self._powered_at - self.config.boot_grace_ms
        else:
            silent = now_ms - self._last_hb - self.watchdog_ms
        if silent < 0:
            return
        if len(self.cycles) >= self.config.max_cycles_per_hour:
            self.gave_up = True
            self._emit("CYCLED", "limit")
            return
        self.cycles.append(now_ms)
        self._emit("CYCLED", "heartbeat")
        self.pi_power = False
        self._cycle_on_at = now_ms + self.config.off_ms

    def _watch_button(self, now_ms: int) -> None:
        at = self._pressed_at
        if at is not None and not self._long_sent and now_ms - at >= self.config.long_press_ms:
            self._long_sent = True
            self._emit("BTN", "long")

    def _watch_battery(self, now_ms: int) -> None:
        if not self._mv:
            return
        mv, c = self.mv(), self.config
        if self._low_cut:
            if self.mains or mv >= c.restore_mv:
                self._low_cut = False
                self._low_since = None
                self._emit("RESTORED")
                if not self._held_off:
                    self._power_on(now_ms)
            return
        if self.mains or mv >= c.cutoff_mv:
            self._low_since = None
            return
        if self._low_since is None:
            self._low_since = now_ms
            self._emit("LOW", str(mv))
        elif now_ms - self._low_since >= c.low_grace_ms:
            self._low_cut = True
            self.pi_power = False
            self._cycle_on_at = None


def _int(text: str, lo: int, hi: int) -> int | None:
    if not text or len(text) > 9:
        return None
    for ch in text:
        if ch < "0" or ch > "9":
            return None
    value = int(text)
    return value if lo <= value <= hi else None
