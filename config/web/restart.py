"""Restart requests from the web page to `kit run`: one file of process names in the runtime folder.

The web page cannot signal its sibling processes itself (it does not know their pids, and
on the Pi systemd owns them); it writes the names, and the supervisor that does own them
takes the file and restarts each one.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

REQUEST_FILE = "restart-requests"


def request_restart(runtime_dir: Path, names: set[str]) -> None:
    """Ask for ``names`` to be restarted (appended: earlier requests are kept)."""
    runtime_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(runtime_dir / REQUEST_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, "".join(f"{n}\n" for n in sorted(names)).encode())
    finally:
        os.close(fd)


def take_requests(runtime_dir: Path) -> set[str]:
    """The names asked for since the last call; the request file is consumed."""
    path = runtime_dir / REQUEST_FILE
    taken = path.with_name(f".{REQUEST_FILE}.taken")
    try:
        os.replace(path, taken)  # atomic: a request written meanwhile starts a new file
    except FileNotFoundError:
        return set()
    try:
        text = taken.read_text(encoding="utf-8", errors="replace")
    finally:
        with contextlib.suppress(FileNotFoundError):
            taken.unlink()
    return {line.strip() for line in text.splitlines() if line.strip()}
