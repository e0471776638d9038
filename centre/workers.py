"""``kit centre --workers N``: N gateway worker processes behind one address, on PostgreSQL.

The parent prepares the store once (schema, enrolled kits, interrupted uploads), holds
the address (a bound socket that does not listen, so port 0 works and the port stays
ours across worker restarts), and starts the workers. Each listens on the same address
with SO_REUSEPORT, so the kernel spreads connections evenly over them (one shared
listening socket would let whichever worker wakes first accept a whole burst), and has
its own connection pool. The first worker also
owns the serial terminals and UDP sockets. A worker that dies is started again; one
that exits while starting stops the centre (its reason is in the log). SIGTERM or
SIGINT stops every worker, each letting its running requests finish. A worker whose
parent is gone (its stdin pipe closes) stops too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from types import FrameType
from typing import IO

from centre.app import Role, open_store, serve
from centre.config import CentreConfig
from centre.db import StoreUnavailable, redact
from centre.errors import BadCentreConfig
from centre.uploads import Uploads

log = logging.getLogger(__name__)

START_GRACE_S = 15.0  # a worker that exits sooner than this after starting failed to start
STOP_WAIT_S = 20.0  # then SIGKILL
POLL_S = 0.2


async def prepare(config: CentreConfig) -> None:
    """What one process does for all workers before they start."""
    store = await open_store(config)
    try:
        await store.sync_kits(config.kits)
        await Uploads(store).recover()
    finally:
        await store.close()


def bind(host: str, port: int, *, listen: bool) -> socket.socket:
    """A socket on (host, port) that other sockets of ours may share (SO_REUSEPORT): the
    parent's holds the address, each worker's listens on it (port 0 picks a free port)."""
    family, _, _, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address[:2])
        if listen:
            sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


@dataclass
class Worker:
    index: int
    process: subprocess.Popen[bytes]
    started: float


class Supervisor:
    """Starts the workers, restarts one that dies, stops them all on a signal."""

    def __init__(self, config: CentreConfig, sock: socket.socket) -> None:
        self.config = config
        self.sock = sock
        self.workers: dict[int, Worker] = {}
        self.stopping = False

    def _spawn(self, index: int) -> Worker:
        host, port = self.sock.getsockname()[:2]
        process = subprocess.Popen(
            [sys.executable, "-m", "centre.workers", str(index), host, str(port)],
            stdin=subprocess.PIPE,
            start_new_session=True,  # Ctrl-C reaches the parent, which stops each worker
        )
        stdin: IO[bytes] | None = process.stdin
        assert stdin is not None
        stdin.write(self.config.model_dump_json().encode() + b"\n")
        stdin.flush()  # left open: the worker stops when it closes
        return Worker(index, process, time.monotonic())

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True

    def run(self) -> int:
        """Serve until a signal; 0 after a clean stop, 1 if a worker could not start."""
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        failed = False
        try:
            for index in range(self.config.workers):
                self.workers[index] = self._spawn(index)
            while not self.stopping:
                failed = self._watch()
                time.sleep(POLL_S)
        finally:
            self._stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 1 if failed else 0

    def _watch(self) -> bool:
        """Start again each worker that died; True (and stopping) if one died starting."""
        for index, worker in list(self.workers.items()):
            code = worker.process.poll()
            if code is None:
                continue
            _close_stdin(worker)
            # Killed (by a signal) it is started again; exiting by itself soon after it
            # started, it could not start (bad database, address taken) and never will.
            if code >= 0 and time.monotonic() - worker.started < START_GRACE_S:
                log.error(
                    "工作进程 %d 启动失败 / worker %d failed to start (exit %d)", index, index, code
                )
                self.stopping = True
                return True
            log.warning(
                "工作进程 %d 退出 / worker %d exited (%d): starting it again", index, index, code
            )
            self.workers[index] = self._spawn(index)
        return False

    def _stop_all(self) -> None:
        for worker in self.workers.values():
            if worker.process.poll() is None:
                worker.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_WAIT_S
        for worker in self.workers.values():
            try:
                worker.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker %d did not stop in %.0f s: killed", worker.index, STOP_WAIT_S)
                worker.process.kill()
                worker.process.wait()
            _close_stdin(worker)
        log.info("centre stopped: %d workers", len(self.workers))


def _close_stdin(worker: Worker) -> None:
    if worker.process.stdin is not None and not worker.process.stdin.closed:
        with contextlib.suppress(BrokenPipeError):  # the worker is gone already
            worker.process.stdin.close()


def run_workers(config: CentreConfig) -> int:
    """``kit centre`` with ``workers`` > 1: 0 after a clean stop, 1 if it could not start."""
    try:
        asyncio.run(prepare(config))
        sock = bind(config.host, config.port, listen=False)
    except BadCentreConfig as err:  # found when starting: the media store refused
        print(err, file=sys.stderr)
        return 2
    except (OSError, StoreUnavailable) as err:
        print(f"无法启动接收服务：{err} / cannot start the centre: {err}", file=sys.stderr)
        return 1
    with sock:
        host, port = sock.getsockname()[:2]
        log.info(
            "centre listening on %s:%d with %d workers, database %s, media in %s",
            host,
            port,
            config.workers,
            redact(config.database),
            config.media_dir,
        )
        return Supervisor(config, sock).run()


# -- one worker -------------------------------------------------------------------------


async def _serve_worker(config: CentreConfig, sock: socket.socket, index: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def parent_gone() -> None:
        if not os.read(sys.stdin.fileno(), 4096):
            loop.remove_reader(sys.stdin.fileno())
            stop.set()

    loop.add_reader(sys.stdin.fileno(), parent_gone)
    try:
        role = Role(prepare=False, listeners=index == 0)
        await serve(config, sock=sock, role=role, stop=stop)
    finally:
        loop.remove_reader(sys.stdin.fileno())


def worker_main(argv: list[str]) -> int:
    """A worker: ``python -m centre.workers INDEX HOST PORT``, its config as JSON on stdin's
    first line; serves on HOST:PORT (shared) until SIGTERM or its stdin closes."""
    index, host, port = int(argv[0]), argv[1], int(argv[2])
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s %(levelname)s worker {index} %(name)s: %(message)s",
    )
    config = CentreConfig.model_validate_json(sys.stdin.buffer.readline())
    try:
        sock = bind(host, port, listen=True)
    except OSError as err:
        log.error("工作进程无法监听 / worker cannot listen on %s:%d: %s", host, port, err)
        return 1
    try:
        asyncio.run(_serve_worker(config, sock, index))
    except (OSError, StoreUnavailable, BadCentreConfig) as err:
        log.error("工作进程无法启动 / worker cannot start: %s", err)
        return 1
    finally:
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
