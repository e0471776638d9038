"""Where the centre keeps complete media files: a local folder, or an S3-compatible bucket.

Only complete files live here; tus uploads grow in the local folder's ``.partial`` and are
put here once whole. The ordering rule every caller keeps: a file is put (durably) under
its key FIRST, and only then is the row saying "this file is complete" committed; the
local copy is dropped after that commit. A crash or an outage between the two leaves at
most an object no row names, and the retry puts the same key again (keys are made from
the upload id or the file's sha256), so nothing is lost and nothing is stored twice.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from centre.errors import BadCentreConfig, Refused
from edge.fsync import fsync_dir as _fsync_dir

if TYPE_CHECKING:
    from centre.config import CentreConfig, MediaSection

log = logging.getLogger(__name__)

BLOCK = 256 * 1024  # bytes read per step when streaming a file out


class MediaUnavailable(Refused):
    """The media store cannot be reached (S3 down, network cut): nothing was recorded as
    complete; the kit keeps its file and sends it again."""

    def __init__(self, reason: str) -> None:
        super().__init__(
            503,
            f"媒体存储暂不可用，请稍后重试：{reason}",
            f"the media store is unavailable, try again later: {reason}",
            {"Retry-After": "10"},
        )


class MediaMissing(Refused):
    """No file under that key."""

    def __init__(self, key: str) -> None:
        super().__init__(404, f"没有此文件：{key}", f"no such file: {key}")


def byte_range(rng: slice, size: int) -> tuple[int, int] | None:
    """(first byte, count) of a parsed Range (``request.http_range``) over ``size`` bytes,
    or None when it cannot be satisfied (416); the same answer aiohttp's FileResponse gives."""
    start, end = rng.start, rng.stop
    if start is None:
        return 0, size
    if start < 0 and end is None:  # the last -start bytes
        start = max(start + size, 0)
        count = size - start
    else:
        count = min(size if end is None else end, size) - start
    if start >= size:
        return None
    return start, count


class MediaStore(ABC):
    """Complete media files by relative key (``<kit>/<seq>-….jpg``)."""

    @abstractmethod
    async def put_file(self, src: Path, key: str) -> None:
        """Store the local file ``src`` (fsynced) under ``key`` durably, replacing whatever
        the key held; ``src`` stays (the caller drops it once the row is committed).
        Raises :class:`MediaUnavailable`."""

    @abstractmethod
    async def put_bytes(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` durably; raises :class:`MediaUnavailable`."""

    @abstractmethod
    async def size(self, key: str) -> int | None:
        """The stored file's size, or None if there is none under ``key``."""

    @abstractmethod
    async def delete(self, key: str) -> None:
        """Remove ``key`` if present; raises :class:`MediaUnavailable`."""

    @abstractmethod
    def stream(
        self, key: str, start: int = 0, count: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        """``count`` bytes (all: None) of the file from ``start``, block by block."""

    @abstractmethod
    def local_copy(self, key: str) -> contextlib.AbstractAsyncContextManager[Path]:
        """A local path holding the file while the block runs (a tool such as a decoder
        needs one); :class:`MediaMissing` if there is no such file."""

    @abstractmethod
    async def respond(
        self, request: web.Request, key: str, headers: dict[str, str]
    ) -> web.StreamResponse:
        """Serve the file to an HTTP client with ``headers``, honouring Range."""

    async def check(self) -> None:  # noqa: B027 - a folder needs no check
        """At start-up: raise :class:`BadCentreConfig` if the store can never work."""

    def close(self) -> None:  # noqa: B027 - a folder holds nothing open
        """Release connections."""


def _write_file(dest: Path, data: bytes) -> None:
    """``data`` at ``dest``, whole or not at all, on disk when this returns."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, dest)
    _fsync_dir(dest.parent)


def _place_file(src: Path, dest: Path) -> None:
    """``src`` also at ``dest`` (a hard link; a copy across file systems), atomically."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
        with tmp.open("rb+") as f:
            os.fsync(f.fileno())
    os.replace(tmp, dest)
    _fsync_dir(dest.parent)


class FolderStore(MediaStore):
    """The default: files in the media folder, as ``<root>/<key>``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, key: str) -> Path:
        """The file's path; :class:`MediaMissing` for a key that leads out of the folder."""
        root = self.root.resolve()
        path = (root / key).resolve()
        if not path.is_relative_to(root) or path == root:
            raise MediaMissing(key)
        return path

    async def put_file(self, src: Path, key: str) -> None:
        await asyncio.to_thread(_place_file, src, self.path(key))

    async def put_bytes(self, key: str, data: bytes) -> None:
        await asyncio.to_thread(_write_file, self.path(key), data)

    async def size(self, key: str) -> int | None:
        try:
            return (await asyncio.to_thread(self.path(key).stat)).st_size
        except (FileNotFoundError, MediaMissing):
            return None

    async def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    async def stream(
        self, key: str, start: int = 0, count: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        try:
            f = await asyncio.to_thread(self.path(key).open, "rb")
        except FileNotFoundError:
            raise MediaMissing(key) from None
        try:
            f.seek(start)
            left = count
            while left is None or left > 0:
                block = await asyncio.to_thread(f.read, BLOCK if left is None else min(BLOCK, left))
                if not block:
                    break
                if left is not None:
                    left -= len(block)
                yield block
        finally:
            f.close()

    @contextlib.asynccontextmanager
    async def local_copy(self, key: str) -> AsyncIterator[Path]:
        path = self.path(key)
        if not path.is_file():
            raise MediaMissing(key)
        yield path

    async def respond(
        self, request: web.Request, key: str, headers: dict[str, str]
    ) -> web.StreamResponse:
        path = self.path(key)
        if not path.is_file():
            raise MediaMissing(key)
        return web.FileResponse(path, headers=headers)


class S3Store(MediaStore):
    """Files as objects ``<prefix><key>`` in one bucket of an S3-compatible server (MinIO,
    Ceph RGW, SeaweedFS, Garage, AWS …), path-style addressed, through the centre: the
    dashboard's browsers never reach the bucket. boto3's client is synchronous; each call
    runs in a thread."""

    def __init__(self, section: MediaSection, secret: str) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = section.bucket
        self.prefix = section.prefix
        self.endpoint = section.endpoint
        self.access_key = section.access_key
        self.secret_file = section.secret_key_file
        self.client: Any = boto3.session.Session().client(
            "s3",
            endpoint_url=section.endpoint,
            region_name=section.region,
            aws_access_key_id=section.access_key,
            aws_secret_access_key=secret,
            config=Config(
                s3={"addressing_style": "path"},
                signature_version="s3v4",
                connect_timeout=section.timeout_s,
                read_timeout=section.timeout_s,
                retries={"max_attempts": 2, "mode": "standard"},
                # Many S3-compatible servers refuse the newer trailing checksums; the
                # Content-MD5 we send is checked by every one of them.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    def _key(self, key: str) -> str:
        return self.prefix + key

    def _call(self, what: str, method: str, **kw: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self.client, method)(Bucket=self.bucket, **kw)
        except ClientError as exc:
            if _status(exc) == 404 and method in ("head_object", "get_object"):
                raise MediaMissing(kw.get("Key", "")) from None
            reason = f"{what}: S3 {_code(exc)} (HTTP {_status(exc)})"
        except BotoCoreError as exc:
            reason = f"{what}: {exc}"
        log.warning("media store %s bucket %s: %s", self.endpoint, self.bucket, reason)
        raise MediaUnavailable(reason) from None

    def _put_file(self, src: Path, key: str) -> None:
        md5, sha = hashlib.md5(), hashlib.sha256()
        with src.open("rb") as f:
            while block := f.read(1 << 20):
                md5.update(block)
                sha.update(block)
            f.seek(0)
            self._call(
                f"PUT {key}",
                "put_object",
                Key=self._key(key),
                Body=f,
                ContentLength=src.stat().st_size,
                ContentMD5=base64.b64encode(md5.digest()).decode(),
                Metadata={"sha256": sha.hexdigest()},
            )

    async def put_file(self, src: Path, key: str) -> None:
        await asyncio.to_thread(self._put_file, src, key)

    async def put_bytes(self, key: str, data: bytes) -> None:
        await asyncio.to_thread(
            self._call,
            f"PUT {key}",
            "put_object",
            Key=self._key(key),
            Body=data,
            ContentMD5=base64.b64encode(hashlib.md5(data).digest()).decode(),
            Metadata={"sha256": hashlib.sha256(data).hexdigest()},
        )

    async def size(self, key: str) -> int | None:
        try:
            head = await asyncio.to_thread(
                self._call, f"HEAD {key}", "head_object", Key=self._key(key)
            )
        except MediaMissing:
            return None
        return int(head["ContentLength"])

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self._call, f"DELETE {key}", "delete_object", Key=self._key(key))

    async def stream(
        self, key: str, start: int = 0, count: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        if count == 0:
            return
        extra = {} if start == 0 and count is None else {"Range": _range(start, count)}
        got = await asyncio.to_thread(
            self._call, f"GET {key}", "get_object", Key=self._key(key), **extra
        )
        body = got["Body"]
        try:
            while block := await asyncio.to_thread(body.read, BLOCK):
                yield block
        except Exception as exc:  # the connection to S3 broke mid-file
            raise MediaUnavailable(f"GET {key}: {exc}") from None
        finally:
            body.close()

    @contextlib.asynccontextmanager
    async def local_copy(self, key: str) -> AsyncIterator[Path]:
        with tempfile.TemporaryDirectory(prefix="centre-media-") as folder:
            path = Path(folder) / Path(key).name
            with path.open("wb") as f:
                async for block in self.stream(key):
                    await asyncio.to_thread(f.write, block)
            yield path

    async def respond(
        self, request: web.Request, key: str, headers: dict[str, str]
    ) -> web.StreamResponse:
        size = await self.size(key)
        if size is None:
            raise MediaMissing(key)
        response = web.StreamResponse(headers={**headers, "Accept-Ranges": "bytes"})
        start, count = 0, size
        try:
            rng = request.http_range
            wanted = byte_range(rng, size)
        except ValueError:
            wanted = None
            rng = slice(0, None)
        if wanted is None:
            response.set_status(416)
            response.headers["Content-Range"] = f"bytes */{size}"
            await response.prepare(request)
            return response
        if rng.start is not None:
            start, count = wanted
            response.set_status(206)
            response.headers["Content-Range"] = f"bytes {start}-{start + count - 1}/{size}"
        response.content_length = count
        if request.method == "HEAD":
            await response.prepare(request)
            return response
        blocks = self.stream(key, start, count)
        try:
            first = await anext(blocks, b"")  # S3 refusing now still gets a proper 503
            await response.prepare(request)
            await response.write(first)
            async for block in blocks:
                await response.write(block)
        except MediaUnavailable:
            # The headers are out: the client sees the body end short of Content-Length.
            response.force_close()
            return response
        finally:
            await blocks.aclose()
        await response.write_eof()
        return response

    async def check(self) -> None:
        """Refuse to start on credentials S3 refuses or a bucket it does not have; an
        unreachable server only warns (media is refused with 503 until it answers)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            await asyncio.to_thread(self.client.head_bucket, Bucket=self.bucket)
        except ClientError as exc:
            status = _status(exc)
            if status == 403:
                # HEAD answers without a body: ask again where the reason is spelt out.
                try:
                    await asyncio.to_thread(
                        self.client.list_objects_v2, Bucket=self.bucket, MaxKeys=1
                    )
                except ClientError as again:
                    exc = again
                raise self._refused(_code(exc)) from None
            if status == 404:
                raise BadCentreConfig(
                    f"[media] 存储桶 {self.bucket!r} 在 {self.endpoint} 上不存在：请先创建它，"
                    "或改正 [media] bucket",
                    f"[media] bucket {self.bucket!r} does not exist on {self.endpoint}: create "
                    "it first, or correct [media] bucket",
                ) from None
            self._unreachable(f"S3 {_code(exc)} (HTTP {status})")
        except BotoCoreError as exc:
            self._unreachable(str(exc))
        else:
            log.info("media in S3 bucket %s at %s", self.bucket, self.endpoint)

    def _refused(self, code: str) -> BadCentreConfig:
        if code == "SignatureDoesNotMatch":
            return BadCentreConfig(
                f"[media] S3 拒绝了签名：secret_key_file {self.secret_file} 中的密钥与 "
                f"access_key {self.access_key!r} 不符",
                f"[media] S3 refused the signature: the secret in secret_key_file "
                f"{self.secret_file} does not belong to access_key {self.access_key!r} "
                "(SignatureDoesNotMatch)",
            )
        if code == "InvalidAccessKeyId":
            return BadCentreConfig(
                f"[media] S3 不认识 access_key {self.access_key!r}",
                f"[media] S3 does not know access_key {self.access_key!r} (InvalidAccessKeyId)",
            )
        return BadCentreConfig(
            f"[media] S3 拒绝访问存储桶 {self.bucket!r}（{code}）：该密钥需要 ListBucket、"
            "GetObject、PutObject、DeleteObject 权限",
            f"[media] S3 denied access to bucket {self.bucket!r} ({code}): the key needs "
            "ListBucket, GetObject, PutObject and DeleteObject",
        )

    def _unreachable(self, reason: str) -> None:
        log.warning(
            "媒体存储 %s 暂不可达，媒体将以 503 拒收直到恢复 / media store %s unreachable (%s): "
            "media is refused with 503 until it answers",
            self.endpoint,
            self.endpoint,
            reason,
        )

    def close(self) -> None:
        self.client.close()


def _status(exc: Any) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _code(exc: Any) -> str:
    return str(exc.response.get("Error", {}).get("Code", "?"))


def _range(start: int, count: int | None) -> str:
    return f"bytes={start}-" if count is None else f"bytes={start}-{start + count - 1}"


def read_secret(path: Path) -> str:
    """The S3 secret key from its file (one line); :class:`BadCentreConfig` if unusable."""
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise BadCentreConfig(
            f"[media] 无法读取 S3 密钥文件 {path}：{why}",
            f"[media] cannot read the S3 secret key file {path}: {why}",
        ) from None
    if not secret or "\n" in secret:
        raise BadCentreConfig(
            f"[media] S3 密钥文件 {path} 应只含一行密钥",
            f"[media] the S3 secret key file {path} must hold the secret on one line",
        )
    if path.stat().st_mode & 0o077:
        log.warning("the S3 secret key file %s is readable by others: chmod 600 it", path)
    return secret


async def open_media(config: CentreConfig) -> MediaStore:
    """The media store the config names, checked (see :meth:`S3Store.check`)."""
    section = config.media
    if section.store == "folder":
        config.media_dir.mkdir(parents=True, exist_ok=True)
        return FolderStore(config.media_dir)
    assert section.secret_key_file is not None  # the config's validator made sure
    secret_file = config.data_dir / section.secret_key_file
    store = S3Store(
        section.model_copy(update={"secret_key_file": secret_file}), read_secret(secret_file)
    )
    try:
        await store.check()
    except BaseException:
        store.close()
        raise
    return store
