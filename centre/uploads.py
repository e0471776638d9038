"""tus upload state: partial files in the media folder, their fsynced offsets in SQLite.

An upload's ``received`` column counts bytes written *and fsynced*; it is the authority,
so bytes a crash left past it are cut off before the next chunk is written. A complete
upload is hashed, put in the media store (the folder, or S3) under its final key, and
only then recorded by :meth:`Store.attach_media` (which decides, in one transaction,
whether it completes its item); the partial file goes last. If the media store cannot
take the file, the finishing chunk is refused with 503 and its offset stays where it
was, so the kit sends that chunk again and the file is put again under the same key.
:meth:`Uploads.recover` drops partial files a crash left after the record was made.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import uuid
import weakref
from collections.abc import AsyncIterable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from centre.errors import Refused
from centre.mediastore import MediaUnavailable
from centre.store import Attached, Store, now_ms

log = logging.getLogger(__name__)

PARTIAL_DIR = ".partial"
_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,10}\Z")
_CHECKSUMS: dict[str, Callable[[], Any]] = {"sha1": hashlib.sha1, "sha256": hashlib.sha256}
CHECKSUM_ALGORITHMS = tuple(_CHECKSUMS)


@dataclass(frozen=True, slots=True)
class Checksum:
    """An Upload-Checksum: the algorithm's name and the digest the chunk must have."""

    algorithm: str
    digest: bytes

    def __post_init__(self) -> None:
        if self.algorithm not in _CHECKSUMS:
            raise ValueError(self.algorithm)


@dataclass(frozen=True, slots=True)
class Upload:
    id: str
    length: int
    received: int
    metadata: str  # the Upload-Metadata header as sent, echoed on HEAD
    concat: str | None  # None, "partial", or the Upload-Concat "final;…" value
    kit_id: int | None  # None only for partial uploads
    seq: int | None
    sha256: str | None  # from metadata: the whole file's expected hash, if given
    final_path: str | None  # where the complete file goes, relative to the media folder
    done: bool

    @property
    def partial(self) -> bool:
        return self.concat == "partial"

    @property
    def final(self) -> bool:
        return self.concat is not None and self.concat.startswith("final")


_COLUMNS = "id, length, received, metadata, concat, kit_id, seq, sha256, final_path, done"


def _upload(row: Sequence[Any]) -> Upload:
    upload_id, length, received, metadata, concat, kit_id, seq, sha256, final_path, done = row[:10]
    return Upload(
        upload_id, length, received, metadata, concat, kit_id, seq, sha256, final_path, bool(done)
    )


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


class Uploads:
    """tus uploads over the store; one lock per upload serialises its writers."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.partial_dir = store.media_dir / PARTIAL_DIR
        self.partial_dir.mkdir(parents=True, exist_ok=True)
        # Chunks of one transfer may come over several links at once.
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    def lock(self, upload_id: str) -> asyncio.Lock:
        lock = self._locks.get(upload_id)
        if lock is None:
            lock = self._locks[upload_id] = asyncio.Lock()
        return lock

    def partial_file(self, upload_id: str) -> Path:
        return self.partial_dir / upload_id

    async def create(
        self,
        length: int,
        metadata: str,
        *,
        kit_id: int | None,
        seq: int | None,
        sha256: str | None,
        filename: str | None,
        concat: str | None,
    ) -> Upload:
        upload_id = uuid.uuid4().hex
        final_path = None
        if kit_id is not None:
            suffix = Path(filename or "").suffix
            suffix = suffix.lower() if _SUFFIX.match(suffix) else ""
            # The upload id in the name: two uploads of one item never overwrite each other.
            final_path = f"{kit_id}/{seq}-{upload_id[:12]}{suffix}"
        self.partial_file(upload_id).touch()
        async with self.store.transaction() as db:
            await db.execute(
                "INSERT INTO uploads (id, length, metadata, concat, kit_id, seq, sha256,"
                " final_path, created_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (upload_id, length, metadata, concat, kit_id, seq, sha256, final_path, now_ms()),
            )
        up = Upload(upload_id, length, 0, metadata, concat, kit_id, seq, sha256, final_path, False)
        if length == 0 and not up.final:
            # No PATCH will ever come: an empty file is complete on creation.
            async with self.lock(upload_id):
                try:
                    await self._finish(up)
                except MediaUnavailable:
                    await self._delete(up)  # the kit's repeated POST makes it anew
                    raise
        return up

    async def get(self, upload_id: str) -> Upload | None:
        async with (
            self.store.reading() as db,
            db.execute(f"SELECT {_COLUMNS} FROM uploads WHERE id = ?", (upload_id,)) as cur,
        ):
            row = await cur.fetchone()
        return None if row is None else _upload(row)

    async def final_for(self, concat: str, metadata: str) -> Upload | None:
        """The final upload already made from exactly these parts for this item, if any.

        A kit whose answer to a final POST was lost (an outage) asks again; by then the
        parts are gone, so the repeat must find the upload it already made.
        """
        async with (
            self.store.reading() as db,
            db.execute(
                f"SELECT {_COLUMNS} FROM uploads WHERE concat = ? AND metadata = ?",
                (concat, metadata),
            ) as cur,
        ):
            row = await cur.fetchone()
        return None if row is None else _upload(row)

    async def _must_get(self, upload_id: str) -> Upload:
        up = await self.get(upload_id)
        if up is None:
            raise Refused(404, f"上传 {upload_id} 不存在", f"no upload {upload_id}")
        return up

    async def _set_received(self, upload_id: str, received: int) -> None:
        async with self.store.transaction() as db:
            await db.execute("UPDATE uploads SET received = ? WHERE id = ?", (received, upload_id))

    async def _delete(self, up: Upload) -> None:
        async with self.store.transaction() as db:
            await db.execute("DELETE FROM uploads WHERE id = ?", (up.id,))
        self.partial_file(up.id).unlink(missing_ok=True)

    # -- writing ------------------------------------------------------------------------

    async def write(
        self,
        upload_id: str,
        offset: int,
        body: AsyncIterable[bytes],
        checksum: Checksum | None,
    ) -> Upload:
        """Append one PATCH body at ``offset``; returns the upload with its new offset."""
        async with self.lock(upload_id):
            up = await self._must_get(upload_id)
            if up.final:
                raise Refused(
                    403, "合并上传不能追加数据", "a final (concatenated) upload takes no PATCH"
                )
            if offset != up.received:
                raise Refused(
                    409,
                    f"偏移量不符：服务器为 {up.received}，请求为 {offset}",
                    f"offset mismatch: upload is at {up.received}, request says {offset}",
                )
            if up.done:
                return up
            received = await self._append(up, body, checksum)
            if received == up.length:
                await self._finish(up)
            elif received != up.received:
                await self._set_received(up.id, received)
            return await self._must_get(upload_id)

    async def _append(
        self, up: Upload, body: AsyncIterable[bytes], checksum: Checksum | None
    ) -> int:
        """Write the chunk after ``up.received`` and fsync; returns the new offset."""
        hasher = _CHECKSUMS[checksum.algorithm]() if checksum else None
        with self.partial_file(up.id).open("r+b") as f:
            # Drop whatever a crash or a refused chunk left past the last fsynced byte.
            f.truncate(up.received)
            f.seek(up.received)
            end = up.received
            try:
                async for block in body:
                    if end + len(block) > up.length:
                        raise Refused(
                            413,
                            f"数据超出上传长度 {up.length} 字节",
                            f"data runs past the upload's length of {up.length} bytes",
                        )
                    await asyncio.to_thread(f.write, block)
                    if hasher is not None:
                        hasher.update(block)
                    end += len(block)
            except ConnectionError as exc:
                # The link dropped mid-chunk. A checksummed chunk cannot be verified, so
                # it goes; an unchecked one is kept, as tus asks ("store as much as possible").
                log.warning("upload %s: chunk cut off at %d bytes (%s)", up.id, end, exc)
                if checksum is not None:
                    end = up.received
            except Refused:
                f.truncate(up.received)
                raise
            if checksum is not None and hasher is not None and hasher.digest() != checksum.digest:
                f.truncate(up.received)
                raise Refused(
                    460,
                    f"数据块 {checksum.algorithm} 校验不符，已丢弃，请重传",
                    f"chunk {checksum.algorithm} checksum mismatch; chunk discarded, send it again",
                )
            f.truncate(end)
            await asyncio.to_thread(os.fsync, f.fileno())
        return end

    async def _finish(self, up: Upload) -> None:
        """The last byte is in: verify, put the file in the media store, record it, then
        drop the partial file."""
        if up.partial:
            async with self.store.transaction() as db:
                await db.execute(
                    "UPDATE uploads SET received = length, done = 1 WHERE id = ?", (up.id,)
                )
            return
        assert up.kit_id is not None and up.seq is not None and up.final_path is not None
        src = self.partial_file(up.id)
        sha256 = await asyncio.to_thread(_sha256_file, src)
        if up.sha256 is not None and sha256 != up.sha256:
            outcome = Attached.MISMATCH
            await self._set_received(up.id, 0)
        else:
            # Stored before it is recorded: a crash or an outage in between leaves at most
            # an object no row names, which the retry puts again under the same key.
            await self.store.media.put_file(src, up.final_path)
            outcome = await self.store.attach_media(
                up.id, up.kit_id, up.seq, up.length, sha256, up.final_path
            )
            if outcome in (Attached.DUPLICATE, Attached.MISMATCH):
                await self._drop_copy(up)
        log.info("upload %s (kit %d seq %d): file %s", up.id, up.kit_id, up.seq, outcome.value)
        if outcome is Attached.MISMATCH:
            src.write_bytes(b"")
            raise Refused(
                460,
                "整个文件的 SHA-256 与条目不符，上传已从 0 重新开始",
                f"the whole file's sha256 {sha256} does not match the item's;"
                " the upload restarts at offset 0",
            )
        src.unlink(missing_ok=True)

    async def _drop_copy(self, up: Upload) -> None:
        """Remove the stored copy of an upload whose item has another file (or none)."""
        assert up.final_path is not None
        async with (
            self.store.reading() as db,
            db.execute(
                "SELECT path FROM media_files WHERE kit_id = ? AND seq = ?", (up.kit_id, up.seq)
            ) as cur,
        ):
            row = await cur.fetchone()
        if row is not None and row[0] == up.final_path:
            return  # the file this very upload recorded (a repeated finish): it stays
        try:
            await self.store.media.delete(up.final_path)
        except MediaUnavailable as err:
            log.warning("upload %s: unneeded copy %s left: %s", up.id, up.final_path, err.en)

    # -- concatenation ------------------------------------------------------------------

    async def finished_parts(self, part_ids: Sequence[str]) -> list[Upload]:
        """The partial uploads a final upload names; each must exist and be finished."""
        parts = [await self.get(pid) for pid in part_ids]
        bad = [
            pid for pid, p in zip(part_ids, parts, strict=True) if not (p and p.partial and p.done)
        ]
        if bad:
            raise Refused(
                400,
                f"这些不是已完成的分段上传：{bad}",
                f"not finished partial uploads: {bad}",
            )
        return [p for p in parts if p is not None]

    async def concatenate(self, final: Upload, parts: Sequence[Upload]) -> None:
        """Build ``final`` from its finished partial uploads (tus concatenation), then finish it.

        The parts are deleted once the final upload is recorded; if it fails they stay,
        so the kit can try another final upload.
        """
        async with self.lock(final.id):
            with self.partial_file(final.id).open("wb") as out:
                for part in parts:
                    await asyncio.to_thread(self._copy, self.partial_file(part.id), out)
                await asyncio.to_thread(os.fsync, out.fileno())
            try:
                await self._finish(final)
            except Refused:
                await self._delete(final)
                raise
        for part in parts:
            await self._delete(part)

    @staticmethod
    def _copy(src: Path, out: Any) -> None:
        with src.open("rb") as f:
            while block := f.read(1 << 20):
                out.write(block)

    # -- start-up -----------------------------------------------------------------------

    async def recover(self) -> None:
        """Finish what a crash interrupted after recording a file: drop its partial file
        (putting it in the media store first if it is not there: a store whose files
        were recorded before they were moved), or drop the copy of a duplicate."""
        async with (
            self.store.reading() as db,
            db.execute(
                f"SELECT {_COLUMNS}, (SELECT upload_id FROM media_files m"
                " WHERE m.kit_id = u.kit_id AND m.seq = u.seq) FROM uploads u"
            ) as cur,
        ):
            rows = await cur.fetchall()
        known = set()
        for row in rows:
            up = _upload(row)
            known.add(up.id)
            src = self.partial_file(up.id)
            if up.done and not up.partial and up.final_path is not None and src.exists():
                log.info("upload %s: finishing its file after a restart", up.id)
                try:
                    if row[10] != up.id:
                        await self._drop_copy(up)
                    elif await self.store.media.size(up.final_path) != up.length:
                        await self.store.media.put_file(src, up.final_path)
                except MediaUnavailable as err:
                    log.warning("upload %s: left for the next start: %s", up.id, err.en)
                    continue
                src.unlink()
        for path in self.partial_dir.iterdir():
            if path.name not in known:
                log.info("removing %s: its upload no longer exists", path)
                path.unlink()
