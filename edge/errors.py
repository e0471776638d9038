"""Exceptions a kit user or operator may read: Chinese first, then English."""

from __future__ import annotations


class KitError(Exception):
    """Base of every error the kit raises on purpose.

    The message is shown to people in the field, so it carries both languages:
    ``str(err)`` is ``"<中文> / <English>"``.
    """

    def __init__(self, zh: str, en: str) -> None:
        self.zh = zh
        self.en = en
        super().__init__(f"{zh} / {en}")


class BadItem(KitError, ValueError):
    """An item (report, position, media reference …) that cannot be accepted."""


class InvalidTransition(KitError, RuntimeError):
    """A delivery-state change the state machine does not allow."""


class EdgeUnavailable(KitError, ConnectionError):
    """The edge daemon did not answer in time."""


class StoreLocked(KitError, RuntimeError):
    """Another edge daemon already owns the store."""


class DiskNearlyFull(KitError, OSError):
    """Free space is down to the margin kept for SOS and reports: bulk and tracks wait."""
