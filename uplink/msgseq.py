"""Message sequence numbers for narrow frames that never repeat, even across power cuts.

Numbers are reserved in durable blocks: the end of the current block is on disk (fsync)
before any number of it is used, so after a crash the kit starts past every number it
may have sent. (The security issue builds nonces from kit id + message sequence.)
"""

from __future__ import annotations

import os
from pathlib import Path

from edge.errors import KitError

MAX_SEQ = 2**32 - 1


class SequenceExhausted(KitError, RuntimeError):
    """Every 32-bit message sequence number has been used; the kit needs a new identity."""


class MessageSequence:
    def __init__(self, path: Path, block: int = 1024) -> None:
        self.path = path
        self.block = block
        self._next = self._read()
        self._reserved_to = self._next  # nothing of the new block is reserved yet

    def _read(self) -> int:
        try:
            return int(self.path.read_text().strip() or 1)
        except FileNotFoundError:
            return 1
        except ValueError:
            raise KitError(
                f"消息序号文件损坏：{self.path}", f"message sequence file corrupt: {self.path}"
            ) from None

    def _reserve(self) -> None:
        end = min(self._next + self.block, MAX_SEQ + 1)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            f.write(f"{end}\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self._reserved_to = end

    def next(self) -> int:
        if self._next > MAX_SEQ:
            raise SequenceExhausted("消息序号已用尽", "message sequence numbers exhausted")
        if self._next >= self._reserved_to:
            self._reserve()
        value = self._next
        self._next += 1
        return value
