"""Config saves and logins written to a chained audit log (the kit's page, the dashboard).

Each write opens the security database for one transaction and closes it again, so it
works from any thread (the page saves config in a worker thread) and several processes
(the kit's web page and uplink, the centre's workers) share the file. A failed write is
logged and does not stop the save or the login: the kit must stay usable in the field.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Sequence
from pathlib import Path

from security.state import SecurityState

log = logging.getLogger("security")

USER_CHARS = 64  # a user name as typed (outside input) is kept this long at most


class AuditTrail:
    """Appends rows to the chained audit log in ``path`` on behalf of ``kit_id`` (None: the
    centre)."""

    def __init__(self, path: Path, kit_id: int | None, link: str) -> None:
        self.path = path
        self.kit_id = kit_id
        self.link = link  # where it happened: "web" (the kit's page), "dashboard"

    def write(self, event: str, reason: str, detail: str) -> bool:
        """One row; False (logged) if the log could not be written."""
        try:
            state = SecurityState(self.path)
            try:
                state.audit(event, self.kit_id, reason, detail, self.link)
            finally:
                state.close()
        except (sqlite3.Error, OSError) as exc:
            log.error("审计日志写入失败 / audit log not written (%s %s): %s", event, reason, exc)
            return False
        return True

    def config_changed(self, who: str, paths: Sequence[str]) -> bool:
        """A saved config: who, and which key paths changed (never a value: some are secret)."""
        detail = f"{who} changed {len(paths)}: {', '.join(paths)}"
        return self.write("config-changed", "saved", detail)

    async def login(self, user: str, client: str, *, ok: bool, lock_s: float = 0.0) -> bool:
        """A login attempt: reason ``ok``, ``wrong-password``, or ``locked-out`` (a wrong
        password that starts a lock of ``lock_s`` seconds). The password is never written."""
        reason = "ok" if ok else "locked-out" if lock_s > 0 else "wrong-password"
        detail = f"user {user[:USER_CHARS]!r} from {client}"
        if lock_s > 0:
            detail += f", locked for {int(lock_s) + 1} s"
        return await asyncio.to_thread(self.write, "login", reason, detail)
