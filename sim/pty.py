"""The device end of a simulated serial device: a pty the host opens like ``/dev/ttyUSB0``.

Shared by every simulator on a serial line. :meth:`PtyNode.open` makes a fresh device
node (a new pty, raw, non-blocking on the simulator's side), published at ``link`` if
given — swapped in atomically, so the path is never missing while it changes; and
:meth:`PtyNode.close` takes it away as an unplugged USB device goes: the host reads
end-of-file and the path disappears (unless it already points at a newer node).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pty
import tty
from pathlib import Path


class PtyNode:
    """One simulated device node; ``what`` names the device in errors ("simulated modem")."""

    def __init__(self, link: str | os.PathLike[str] | None, what: str) -> None:
        self.link = None if link is None else Path(link)
        self.what = what
        self.master: int | None = None  # the simulator's end
        self._slave: int | None = None
        self._slave_name = ""

    @property
    def path(self) -> str:
        """What the host opens: the ``link`` if given, else the pty's slave."""
        if self.link is not None:
            return str(self.link)
        if not self._slave_name:
            raise RuntimeError(f"{self.what} not started: it has no pty yet")
        return self._slave_name

    def open(self) -> int:
        """A fresh node; returns the simulator's (master) file descriptor."""
        if self.master is not None:
            return self.master
        master, slave = pty.openpty()
        tty.setraw(slave)
        os.set_blocking(master, False)
        # The simulator keeps the slave open itself, so the master never sees a hang-up
        # (EIO) while the host is away; the host's end-of-file comes from closing the master.
        self.master, self._slave, self._slave_name = master, slave, os.ttyname(slave)
        if self.link is not None:
            tmp = self.link.with_name(self.link.name + ".new")
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(self._slave_name)
            tmp.replace(self.link)  # atomic: the path is never missing while swapped
        return master

    def close(self) -> None:
        """The device goes away: both ends closed, the ``link`` removed if it is still ours."""
        if self.master is not None:
            os.close(self.master)
            self.master = None
        if self._slave is not None:
            os.close(self._slave)
            self._slave = None
        if self.link is not None and self.link.is_symlink():
            with contextlib.suppress(OSError):
                if os.readlink(self.link) == self._slave_name:
                    self.link.unlink()
        self._slave_name = ""


CHUNK = 32  # bytes written at once: the host sees sentences arrive in pieces, as from a UART


async def write_paced(node: PtyNode, out: asyncio.Queue[bytes], bytes_per_s: float) -> None:
    """Write what ``out`` holds to the host, each chunk no faster than the line allows
    (8N1: ``baudrate / 10`` bytes a second), until the node is closed or cancelled.

    A pty has no flow control: when the host is away and its buffer is full, bytes are
    lost, as on a UART nobody reads.
    """
    loop = asyncio.get_running_loop()
    free_at = loop.time()
    while True:
        data = await out.get()
        for at in range(0, len(data), CHUNK):
            chunk = data[at : at + CHUNK]
            free_at = max(free_at, loop.time()) + len(chunk) / bytes_per_s
            await asyncio.sleep(free_at - loop.time())
            if node.master is None:
                return
            with contextlib.suppress(BlockingIOError):
                os.write(node.master, chunk)
