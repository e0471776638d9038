"""Tell systemd how a kit process is doing: sd_notify (READY, STATUS, WATCHDOG, STOPPING).

systemd passes ``$NOTIFY_SOCKET`` (a datagram socket path, or an abstract name written
with a leading ``@``) to a ``Type=notify`` unit and ``$WATCHDOG_USEC`` when the unit has
``WatchdogSec=``. Without them (a laptop, `kit run`, tests) every call here does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Mapping

log = logging.getLogger("kit.sdnotify")

# A watchdog ping is skipped when the event loop came back this much later than asked:
# a loop that stalls for most of the watchdog interval is not healthy, and systemd
# should restart the process rather than hear that it is fine.
LATE_FRACTION = 0.5


class Notifier:
    """A client of systemd's notify socket; a no-op when the socket is not set."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.address = _address(env.get("NOTIFY_SOCKET", ""))
        self.watchdog_s = _watchdog_s(env)
        self._sock: socket.socket | None = None
        self._stopping_sent = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> bool:
        """Send ``KEY=value`` lines as one datagram; False when unset or undeliverable."""
        if self.address is None:
            return False
        if self._sock is None:
            # Non-blocking: a notify socket whose queue is full (systemd busy, or a test not
            # reading) must never stall the event loop; that message is dropped instead.
            self._sock = socket.socket(
                socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
            )
        try:
            self._sock.sendto("\n".join(fields).encode(), self.address)
        except BlockingIOError:
            return False
        except OSError as err:
            # systemd gone or the socket full: the service keeps running; systemd acts on
            # missing pings itself.
            log.warning("sd_notify %s failed: %s", fields[0].split("=")[0], err)
            return False
        return True

    def ready(self, status: str = "") -> None:
        self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def stopping(self) -> None:
        """STOPPING=1, once: systemd then waits for the exit instead of pinging."""
        if not self._stopping_sent:
            self._stopping_sent = self.send("STOPPING=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def ping_while_healthy(self) -> None:
        """Send WATCHDOG=1 every half ``$WATCHDOG_USEC`` while the event loop keeps turning.

        Runs until cancelled; returns at once without a watchdog. A ping is sent only when
        the loop woke up in time, so a loop blocked by a stuck call stops the pings and
        systemd restarts the process.
        """
        if self.watchdog_s is None or self.address is None:
            return
        interval = self.watchdog_s / 2
        while True:
            asked = time.monotonic()
            await asyncio.sleep(interval)
            late = time.monotonic() - asked - interval
            if late > interval * LATE_FRACTION:
                log.warning("event loop %.1f s late; watchdog ping withheld", late)
                continue
            self.watchdog()


def _address(value: str) -> str | None:
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]  # Linux abstract socket namespace
    if value.startswith("/"):
        return value
    log.warning("NOTIFY_SOCKET %r is neither a path nor @abstract; not notifying", value)
    return None


def _watchdog_s(env: Mapping[str, str]) -> float | None:
    """The watchdog interval in seconds, or None when off or meant for another process."""
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    if not (usec.isascii() and usec.isdigit()):  # systemd writes a plain unsigned decimal
        return None
    value = int(usec)
    return value / 1e6 if 0 < value < 2**64 else None


@contextlib.asynccontextmanager
async def systemd_notify(stop: asyncio.Event) -> AsyncIterator[Notifier]:
    """Around a process's main coroutine: watchdog pings, STOPPING=1 when ``stop`` is set.

    The caller sends READY=1 (``notifier.ready()``) once the process serves.
    """
    notifier = Notifier()
    tasks: list[asyncio.Task[None]] = []
    if notifier.enabled:
        tasks.append(asyncio.create_task(notifier.ping_while_healthy(), name="sd-watchdog"))
        tasks.append(asyncio.create_task(_stopping_on(stop, notifier), name="sd-stopping"))
    try:
        yield notifier
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if stop.is_set():
            notifier.stopping()
        notifier.close()


async def _stopping_on(stop: asyncio.Event, notifier: Notifier) -> None:
    await stop.wait()
    notifier.stopping()
