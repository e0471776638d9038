"""Making a media file durable before its item is accepted: fsync, atomic rename, fsync folder.

A power cut must never leave a half file under a final name: a file reaches its final name
only by ``os.replace`` after its bytes were fsynced, and the folder is fsynced after the
rename so the new name itself survives.
"""

from __future__ import annotations

import errno
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from edge.errors import KitError
from edge.fsync import fsync_dir as fsync_dir  # re-exported: media writers use durable.fsync_dir
from edge.fsync import fsync_file

CHUNK = 1024 * 1024  # hashing reads this much at a time: little memory, few system calls


class DiskFull(KitError, OSError):
    """No space left for a media file: recording pauses until space is freed."""


class NotDurable(KitError, OSError):
    """A media file could not be made durable (I/O error, missing file …)."""


@dataclass(frozen=True, slots=True)
class FileDigest:
    """Size and SHA-256 of a finished file, as a :class:`edge.item.MediaRef` carries them."""

    size: int
    sha256: str


def _error(err: OSError, path: Path) -> KitError:
    if err.errno == errno.ENOSPC:
        return DiskFull(f"磁盘已满：{path}", f"disk full: {path}")
    return NotDurable(f"无法保存 {path}：{err.strerror}", f"cannot save {path}: {err.strerror}")


def digest(path: Path) -> FileDigest:
    """Size and SHA-256 of ``path`` in one pass."""
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return FileDigest(size, h.hexdigest())


def commit(temp: Path, final: Path) -> FileDigest:
    """Give a finished temporary file its final name in the same folder, durably.

    The steps run in the one safe order — hash, fsync the file, rename, fsync the
    folder — so a crash at any point leaves either the temporary name or the complete
    file under the final name, never a half file there.
    """
    if temp.parent != final.parent:
        raise ValueError("a durable rename stays inside one folder")
    try:
        found = digest(temp)
        fsync_file(temp)
        os.replace(temp, final)
        fsync_dir(final.parent)
    except OSError as err:
        raise _error(err, final) from err
    return found


def write_bytes(final: Path, data: bytes) -> FileDigest:
    """Write ``data`` to ``final`` durably, through a temporary name in the same folder."""
    temp = final.with_name(f".{final.name}.tmp")
    try:
        with temp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, final)
        fsync_dir(final.parent)
    except OSError as err:
        temp.unlink(missing_ok=True)
        raise _error(err, final) from err
    return FileDigest(len(data), hashlib.sha256(data).hexdigest())
