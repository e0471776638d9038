"""Faults for the reliability suite: power cuts that drop unsynced writes, rough links.

``WRITE_TRACE_SHIM`` is C source for an LD_PRELOAD library: for every file under
``$KIT_TRACE_DIR`` (``-shm`` files excepted: SQLite rebuilds them) it appends each write,
truncate, fsync and unlink, in order, to ``$KIT_TRACE_LOG`` while letting the call through to the
real file. ``load_trace`` reads that log back, and ``disk_at_cut`` says what a disk would
hold after power was lost at any point of it: every write to a file before that file's
last fsync, and — of the writes after it — none, a random subset, or a subset with the
last write torn at a 512-byte sector (a disk keeps or loses unsynced writes in any order).

The traced process runs unmodified (the real SQLite library, the real statements and
transaction boundaries); one recorded run gives as many cuts as wanted, so a test checks
hundreds of crash states in seconds — the approach of ALICE and CrashMonkey.

``FrameFaults`` loses, duplicates and reorders the frames of a narrow link (Beidou, SMS)
for ``sim.world``.
Directory entries are durable at once (a file once created stays, an unlinked one is
gone: SQLite's rollback journal is deleted at commit); mmap'd writes are not seen.
"""

from __future__ import annotations

import asyncio
import random
import struct
import subprocess
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

WRITE_TRACE_SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int log_fd = -2;

static int traced(int fd, char *path, size_t size) {
    const char *dir = getenv("KIT_TRACE_DIR");
    char link[64];
    if (dir == NULL) return 0;
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, size - 1);
    if (n <= 0) return 0;
    path[n] = 0;
    size_t len = strlen(dir);
    if (strncmp(path, dir, len) != 0) return 0;
    if (n > 4 && strcmp(path + n - 4, "-shm") == 0) return 0;
    return 1;
}

/* One record: type, path length, offset, data length, path, data — in one writev. */
static void record(char type, const char *path, int64_t offset, const void *data, uint64_t len) {
    pthread_mutex_lock(&lock);
    if (log_fd == -2) {
        const char *name = getenv("KIT_TRACE_LOG");
        log_fd = name ? open(name, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644) : -1;
    }
    if (log_fd >= 0) {
        uint32_t plen = (uint32_t)strlen(path);
        char head[1 + 4 + 8 + 8];
        head[0] = type;
        memcpy(head + 1, &plen, 4);
        memcpy(head + 5, &offset, 8);
        memcpy(head + 13, &len, 8);
        struct iovec iov[3] = {
            {head, sizeof head}, {(void *)path, plen}, {(void *)data, data ? len : 0}};
        syscall(SYS_writev, log_fd, iov, 3);
    }
    pthread_mutex_unlock(&lock);
}

#define REAL(name) static __typeof__(&name) real_##name; \
    if (!real_##name) real_##name = (__typeof__(&name))dlsym(RTLD_NEXT, #name)

ssize_t pwrite64(int fd, const void *buf, size_t n, off_t off) {
    REAL(pwrite64);
    char path[4096];
    ssize_t done = real_pwrite64(fd, buf, n, off);
    if (done > 0 && traced(fd, path, sizeof path)) record('W', path, off, buf, (uint64_t)done);
    return done;
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off) {
    REAL(pwrite);
    char path[4096];
    ssize_t done = real_pwrite(fd, buf, n, off);
    if (done > 0 && traced(fd, path, sizeof path)) record('W', path, off, buf, (uint64_t)done);
    return done;
}

ssize_t write(int fd, const void *buf, size_t n) {
    REAL(write);
    char path[4096];
    if (fd > 2 && traced(fd, path, sizeof path)) {
        off_t off = lseek(fd, 0, SEEK_CUR);
        ssize_t done = real_write(fd, buf, n);
        if (done > 0) record('W', path, off, buf, (uint64_t)done);
        return done;
    }
    return real_write(fd, buf, n);
}

int ftruncate64(int fd, off_t size) {
    REAL(ftruncate64);
    char path[4096];
    int rc = real_ftruncate64(fd, size);
    if (rc == 0 && traced(fd, path, sizeof path)) record('T', path, size, NULL, 0);
    return rc;
}

int ftruncate(int fd, off_t size) {
    REAL(ftruncate);
    char path[4096];
    int rc = real_ftruncate(fd, size);
    if (rc == 0 && traced(fd, path, sizeof path)) record('T', path, size, NULL, 0);
    return rc;
}

static int under_dir(const char *path) {
    const char *dir = getenv("KIT_TRACE_DIR");
    return dir != NULL && path[0] == '/' && strncmp(path, dir, strlen(dir)) == 0;
}

int unlink(const char *path) {
    REAL(unlink);
    int rc = real_unlink(path);
    if (rc == 0 && under_dir(path)) record('U', path, 0, NULL, 0);
    return rc;
}

int fsync(int fd) {
    REAL(fsync);
    char path[4096];
    int rc = real_fsync(fd);
    if (rc == 0 && traced(fd, path, sizeof path)) record('S', path, 0, NULL, 0);
    return rc;
}

int fdatasync(int fd) {
    REAL(fdatasync);
    char path[4096];
    int rc = real_fdatasync(fd);
    if (rc == 0 && traced(fd, path, sizeof path)) record('S', path, 0, NULL, 0);
    return rc;
}
"""

_HEAD = struct.Struct("<cIqQ")
SECTOR = 512


def build_shim(folder: Path) -> Path:
    """Compile ``WRITE_TRACE_SHIM`` into ``folder``; the library's path."""
    source = folder / "write_trace.c"
    source.write_text(WRITE_TRACE_SHIM)
    library = folder / "write_trace.so"
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-O2", "-o", str(library), str(source), "-ldl", "-lpthread"],
        check=True,
    )
    return library


@dataclass(frozen=True)
class Op:
    """One recorded call: ``W`` write, ``T`` truncate, ``S`` fsync, ``U`` unlink, ``M`` a
    test's marker."""

    kind: str
    path: str
    offset: int = 0
    data: bytes = b""


def mark(log: Path, note: str) -> None:
    """Append a marker to the trace (e.g. "acknowledged item X"), ordered with the writes."""
    path = note.encode()
    with open(log, "ab") as out:
        out.write(_HEAD.pack(b"M", len(path), 0, 0) + path)


def load_trace(log: Path) -> list[Op]:
    """The records of a trace log, in order (a record cut short at the end is ignored)."""
    raw = log.read_bytes()
    ops: list[Op] = []
    at = 0
    while at + _HEAD.size <= len(raw):
        kind, plen, offset, dlen = _HEAD.unpack_from(raw, at)
        start = at + _HEAD.size
        end = start + plen + dlen
        if end > len(raw):
            break
        path = raw[start : start + plen].decode()
        ops.append(Op(kind.decode(), path, offset, raw[start + plen : end]))
        at = end
    return ops


def disk_at_cut(ops: list[Op], cut: int, rng: random.Random, mode: str) -> dict[str, bytes]:
    """What each traced file holds after a power cut just before ``ops[cut]``.

    ``mode``: ``"lose"`` (nothing unsynced survives), ``"subset"`` (each unsynced write
    survives or not, at random), ``"torn"`` (a subset, and the last surviving write keeps
    only its first sectors).
    """
    if mode not in ("lose", "subset", "torn"):
        raise ValueError(f"unknown cut mode {mode!r}")
    last_sync: dict[str, int] = {}
    for index, op in enumerate(ops[:cut]):
        if op.kind == "S":
            last_sync[op.path] = index
    files: dict[str, bytearray] = {}
    kept: list[tuple[int, Op]] = []
    for index, op in enumerate(ops[:cut]):
        if op.kind == "U":
            kept.append((index, op))
        if op.kind not in ("W", "T"):
            continue
        if index < last_sync.get(op.path, -1) or (mode != "lose" and rng.random() < 0.5):
            kept.append((index, op))
    torn_at = -1
    if mode == "torn":
        unsynced = [i for i, op in kept if i > last_sync.get(op.path, -1) and op.kind == "W"]
        torn_at = unsynced[-1] if unsynced else -1
    for index, op in kept:
        if op.kind == "U":
            files.pop(op.path, None)
            continue
        content = files.setdefault(op.path, bytearray())
        if op.kind == "T":
            del content[op.offset :]
            content.extend(bytes(max(0, op.offset - len(content))))
            continue
        data = op.data
        if index == torn_at and len(data) > SECTOR:
            data = data[: SECTOR * rng.randrange(1, -(-len(data) // SECTOR))]
        end = op.offset + len(data)
        if len(content) < end:
            content.extend(bytes(end - len(content)))
        content[op.offset : end] = data
    return {path: bytes(content) for path, content in files.items()}


class FrameFaults:
    """What a rough narrow link does to one direction's frames: loses some (``loss``),
    delivers some twice (``duplicate``), holds some back behind the next frame
    (``reorder``; a frame held longer than ``hold_s`` real seconds goes out alone, late).

    ``pass_on(deliver)`` decides the fate of one frame; ``counts`` says what happened.
    ``close()`` cancels frames still held (lost, as in a power-off of the satellite).
    """

    def __init__(
        self, *, loss: float, duplicate: float, reorder: float, seed: int, hold_s: float
    ) -> None:
        self.loss, self.duplicate, self.reorder = loss, duplicate, reorder
        self.hold_s = hold_s
        self.counts: Counter[str] = Counter()
        self._rng = random.Random(seed)
        self._held: list[tuple[Callable[[], object], int]] = []
        self._timer: asyncio.TimerHandle | None = None

    def pass_on(self, deliver: Callable[[], object]) -> None:
        rng = self._rng
        if rng.random() < self.loss:
            self.counts["lost"] += 1
            return
        copies = 2 if rng.random() < self.duplicate else 1
        self.counts["duplicated"] += copies - 1
        if rng.random() < self.reorder:
            self.counts["reordered"] += 1
            self._held.append((deliver, copies))
            if self._timer is None:
                loop = asyncio.get_running_loop()
                self._timer = loop.call_later(self.hold_s, self._release)
            return
        for _ in range(copies):
            deliver()
        self._release()  # what was held back arrives after this frame

    def _release(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        held, self._held = self._held, []
        for deliver, copies in held:
            for _ in range(copies):
                deliver()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._held.clear()
