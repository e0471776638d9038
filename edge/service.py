"""How every kit process (`kit uplink`, `kit drivers`, `kit mesh`, …) starts and stops.

Load the config (safe mode if it is broken: say so, and run with what is valid), set up
logging, and run the process's ``serve(config, stop)`` until SIGTERM (systemd) or
SIGINT (Ctrl-C, `kit run`) sets ``stop``.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

from config.loader import load
from config.schema import KitConfig
from edge.sdnotify import systemd_notify

Serve = Callable[[KitConfig, asyncio.Event], Awaitable[None]]


def run_service(name: str, serve: Serve, config_path: Path | None = None) -> int:
    loaded = load(config_path)
    logging.basicConfig(
        level=loaded.config.log.level, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    log = logging.getLogger(name)
    if loaded.safe_mode:
        log.error(
            "安全模式 / SAFE MODE: running with the valid parts of %s; errors:", loaded.source
        )
        for issue in loaded.issues:
            log.error("  %s", issue)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with systemd_notify(stop) as notifier:
            task = asyncio.ensure_future(serve(loaded.config, stop))
            await asyncio.sleep(0)  # serve() runs up to its first wait: sockets set up
            if not task.done():
                notifier.ready(f"{name} running")
            await task

    asyncio.run(run())
    return 0
