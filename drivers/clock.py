"""Is the system clock set? A Pi has no RTC: until GNSS (via chrony) sets it, times are flagged."""

from __future__ import annotations

import ctypes
import ctypes.util
import os

# struct timex from <sys/timex.h>; only `modes` (first field) is written, the rest is read.
_TIME_ERROR = 5  # adjtimex() returns this while the kernel clock is unsynchronised


class _Timex(ctypes.Structure):
    _fields_ = [("modes", ctypes.c_uint), ("_rest", ctypes.c_byte * 204)]


def _kernel_says_synchronised() -> bool | None:
    path = ctypes.util.find_library("c")
    if path is None:
        return None
    try:
        libc = ctypes.CDLL(path, use_errno=True)
        tx = _Timex()
        state = libc.adjtimex(ctypes.byref(tx))
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    return bool(state != _TIME_ERROR)


def clock_synchronised() -> bool:
    """True when the clock has been set from a trusted source (GNSS/NTP via chrony).

    ``KIT_CLOCK_SYNCED=1``/``0`` overrides the kernel's answer (simulators and tests).
    """
    forced = os.environ.get("KIT_CLOCK_SYNCED")
    if forced in ("0", "1"):
        return forced == "1"
    return bool(_kernel_says_synchronised())
