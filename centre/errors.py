"""Errors the centre raises on purpose; each names the HTTP status a refusal answers with."""

from __future__ import annotations

from collections.abc import Mapping

from edge.errors import KitError


class BadCentreConfig(KitError, ValueError):
    """The centre's config file or command line cannot be used."""


class UnknownKit(KitError, PermissionError):
    """Items or media from a kit id that is not enrolled, or is disabled."""


class Refused(KitError, ValueError):
    """A request the centre refuses; nothing stored changes."""

    def __init__(
        self, status: int, zh: str, en: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(zh, en)
        self.status = status
        self.headers = dict(headers or {})
