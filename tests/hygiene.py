"""What every async device test checks: it ends in time, and leaves nothing behind.

``from hygiene import nothing_left_open, run`` in a test module: ``run`` runs a coroutine
with a deadline and fails if it left tasks running; the imported ``nothing_left_open``
fixture (autouse) fails a test that left file descriptors (ptys, sockets) or threads open.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T], timeout: float = 20.0) -> T:
    async def checked() -> T:
        result = await asyncio.wait_for(main, timeout)
        assert asyncio.all_tasks() == {asyncio.current_task()}, "tasks left running"
        return result

    return asyncio.run(checked())


@pytest.fixture(autouse=True)
def nothing_left_open() -> Iterator[None]:
    # Only what THIS test opened counts: threads of earlier tests may end meanwhile.
    fds, threads = set(os.listdir("/proc/self/fd")), set(threading.enumerate())
    yield
    assert not set(os.listdir("/proc/self/fd")) - fds, "file descriptors left open"
    for thread in set(threading.enumerate()) - threads:
        thread.join(2.0)  # asyncio's per-child waitpid thread ends just after the child
    assert not set(threading.enumerate()) - threads, "threads left running"


@pytest.fixture(autouse=True)
def no_thread_left() -> Iterator[None]:
    """The thread half of ``nothing_left_open``, for tests whose libraries (ZeroMQ) close
    their descriptors in their own time."""
    threads = set(threading.enumerate())
    yield
    for thread in set(threading.enumerate()) - threads:
        thread.join(2.0)
    assert not set(threading.enumerate()) - threads, "threads left running"


async def until(condition: Callable[[], bool], timeout: float = 10.0, step: float = 0.02) -> None:
    """Return once ``condition()`` holds; fail the test if it does not within ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(step)
