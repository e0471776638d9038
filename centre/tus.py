"""Media by the tus protocol 1.0.0: core, creation, checksum and concatenation extensions."""

from __future__ import annotations

import base64
import binascii
import logging
import re
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

from aiohttp import ClientPayloadError, web
from aiohttp.http_exceptions import HttpProcessingError

from centre.acks import MAX_SEQ
from centre.errors import Refused
from centre.keys import CONFIG, STORE, UPLOADS
from centre.kitauth import require_signed_by
from centre.uploads import CHECKSUM_ALGORITHMS, Checksum, Upload

log = logging.getLogger(__name__)

TUS_VERSION = "1.0.0"
EXTENSIONS = "creation,checksum,concatenation"
PREFIX = "/v1/media"
_BLOCK = 64 * 1024
_UPLOAD_ID = re.compile(r"[0-9a-f]{32}\Z")
_META_KEY = re.compile(r"[!-+\--~]+\Z")  # printable ASCII without space and comma
_SHA256 = re.compile(r"[0-9a-f]{64}\Z")
_DECIMAL = re.compile(r"[0-9]{1,19}\Z")


def _bad(zh: str, en: str) -> Refused:
    return Refused(400, zh, en)


def _number(text: str | None, header: str, maximum: int) -> int:
    if text is None or not _DECIMAL.match(text.strip()) or int(text) > maximum:
        raise _bad(f"{header} 应为 0…{maximum} 的整数", f"{header} must be an integer 0..{maximum}")
    return int(text)


def parse_metadata(header: str) -> dict[str, str]:
    """Upload-Metadata: ``key base64,key2 base64,key3`` → {key: text} (values UTF-8)."""
    out: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in header.split(","))):
        key, _, value = pair.partition(" ")
        if not _META_KEY.match(key) or key in out:
            raise _bad(
                f"Upload-Metadata 键无效或重复：{key!r}", f"bad or repeated metadata key {key!r}"
            )
        try:
            out[key] = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise _bad(
                f"Upload-Metadata 中 {key} 的值不是 base64 编码的 UTF-8",
                f"metadata value of {key} is not base64-encoded UTF-8",
            ) from None
    return out


def _checksum(header: str | None) -> Checksum | None:
    if header is None:
        return None
    algorithm, _, value = header.strip().partition(" ")
    if algorithm not in CHECKSUM_ALGORITHMS:
        raise _bad(
            f"不支持的校验算法 {algorithm!r}（支持 {', '.join(CHECKSUM_ALGORITHMS)}）",
            f"unsupported checksum algorithm {algorithm!r} (use {', '.join(CHECKSUM_ALGORITHMS)})",
        )
    try:
        return Checksum(algorithm, base64.b64decode(value.strip(), validate=True))
    except binascii.Error:
        raise _bad(
            "Upload-Checksum 的值不是 base64", "Upload-Checksum value is not base64"
        ) from None


def _check_version(request: web.Request) -> None:
    if request.headers.get("Tus-Resumable") != TUS_VERSION:
        raise Refused(
            412,
            f"需要 Tus-Resumable: {TUS_VERSION}",
            f"Tus-Resumable: {TUS_VERSION} is required",
            {"Tus-Version": TUS_VERSION},
        )


def _upload_id(request: web.Request) -> str:
    upload_id = request.match_info["upload_id"]
    if not _UPLOAD_ID.match(upload_id):
        raise Refused(404, f"上传 {upload_id} 不存在", f"no upload {upload_id}")
    return upload_id


def _part_ids(concat: str) -> list[str]:
    """Upload-Concat: ``final;/v1/media/a https://host/v1/media/b`` → upload ids."""
    ids = []
    for url in concat[len("final;") :].split():
        part_id = urlsplit(url).path.rstrip("/").rpartition("/")[2]
        if not _UPLOAD_ID.match(part_id):
            raise _bad(
                f"Upload-Concat 中的地址无效：{url!r}", f"bad upload URL in Upload-Concat: {url!r}"
            )
        ids.append(part_id)
    if not ids:
        raise _bad("Upload-Concat: final 未列出分段", "Upload-Concat: final lists no uploads")
    return ids


async def _body(request: web.Request) -> AsyncIterator[bytes]:
    """The PATCH body; a transfer cut short by the link surfaces as ConnectionError."""
    try:
        async for block in request.content.iter_chunked(_BLOCK):
            yield block
    except (ClientPayloadError, HttpProcessingError) as exc:
        raise ConnectionResetError(str(exc)) from exc


async def options(request: web.Request) -> web.Response:
    return web.Response(
        status=204,
        headers={
            "Tus-Version": TUS_VERSION,
            "Tus-Extension": EXTENSIONS,
            "Tus-Max-Size": str(request.app[CONFIG].max_upload_bytes),
            "Tus-Checksum-Algorithm": ",".join(CHECKSUM_ALGORITHMS),
        },
    )


async def create(request: web.Request) -> web.Response:
    """POST: a new upload (or a final one concatenating finished partial uploads)."""
    _check_version(request)
    uploads = request.app[UPLOADS]
    max_size = request.app[CONFIG].max_upload_bytes
    raw_meta = request.headers.get("Upload-Metadata", "")
    meta = parse_metadata(raw_meta)
    concat = request.headers.get("Upload-Concat")
    parts: list[Upload] = []
    if concat is not None and concat.startswith("final;"):
        again = await uploads.final_for(concat, raw_meta)
        if again is not None:
            return web.Response(status=201, headers={"Location": f"{PREFIX}/{again.id}"})
        parts = await uploads.finished_parts(_part_ids(concat))
        length = sum(p.length for p in parts)
    elif concat in (None, "partial"):
        if "Upload-Defer-Length" in request.headers:
            raise _bad("不支持 Upload-Defer-Length", "Upload-Defer-Length is not supported")
        length = _number(request.headers.get("Upload-Length"), "Upload-Length", 2**63 - 1)
    else:
        raise _bad(f"Upload-Concat 无效：{concat!r}", f"invalid Upload-Concat: {concat!r}")
    if length > max_size:
        raise Refused(
            413,
            f"文件 {length} 字节，超过上限 {max_size}",
            f"upload of {length} bytes exceeds the limit of {max_size}",
        )
    kit_id = seq = sha256 = None
    if concat != "partial":
        # The file belongs to one item: the metadata names it.
        kit_id = _number(meta.get("kit"), "metadata kit", 65535)
        await request.app[STORE].require_kit(kit_id)
        require_signed_by(request, kit_id)
        seq = _number(meta.get("seq"), "metadata seq", MAX_SEQ)
        sha256 = meta.get("sha256")
        if sha256 is not None and not _SHA256.match(sha256.lower()):
            raise _bad("metadata sha256 不是 64 位十六进制", "metadata sha256 is not 64 hex digits")
        sha256 = sha256.lower() if sha256 else None
    up = await uploads.create(
        length,
        raw_meta,
        kit_id=kit_id,
        seq=seq,
        sha256=sha256,
        filename=meta.get("filename"),
        concat=concat,
    )
    log.info("upload %s created: %d bytes, kit %s seq %s, %s", up.id, length, kit_id, seq, concat)
    if up.final:
        await uploads.concatenate(up, parts)
    return web.Response(status=201, headers={"Location": f"{PREFIX}/{up.id}"})


async def head(request: web.Request) -> web.Response:
    _check_version(request)
    upload_id = _upload_id(request)
    up = await request.app[UPLOADS].get(upload_id)
    if up is None:
        raise Refused(404, f"上传 {upload_id} 不存在", f"no upload {upload_id}")
    if up.kit_id is not None:
        require_signed_by(request, up.kit_id)
    headers = {
        "Upload-Offset": str(up.received),
        "Upload-Length": str(up.length),
        "Cache-Control": "no-store",
    }
    if up.metadata:
        headers["Upload-Metadata"] = up.metadata
    if up.concat is not None:
        headers["Upload-Concat"] = up.concat
    return web.Response(status=200, headers=headers)


async def patch(request: web.Request) -> web.Response:
    _check_version(request)
    upload_id = _upload_id(request)
    if request.content_type != "application/offset+octet-stream":
        raise Refused(
            415,
            "Content-Type 应为 application/offset+octet-stream",
            "Content-Type must be application/offset+octet-stream",
        )
    offset = _number(request.headers.get("Upload-Offset"), "Upload-Offset", 2**63 - 1)
    checksum = _checksum(request.headers.get("Upload-Checksum"))
    up = await request.app[UPLOADS].get(upload_id)
    if up is None:
        raise Refused(404, f"上传 {upload_id} 不存在", f"no upload {upload_id}")
    if up.kit_id is not None:
        require_signed_by(request, up.kit_id)
    size = request.content_length
    if size is not None and offset + size > up.length:
        raise Refused(
            413,
            f"数据超出上传长度 {up.length} 字节",
            f"data runs past the upload's length of {up.length} bytes",
        )
    up = await request.app[UPLOADS].write(upload_id, offset, _body(request), checksum)
    return web.Response(status=204, headers={"Upload-Offset": str(up.received)})


def add_routes(app: web.Application) -> None:
    app.router.add_route("OPTIONS", PREFIX, options)
    app.router.add_route("POST", PREFIX, create)
    item = f"{PREFIX}/{{upload_id}}"
    app.router.add_route("OPTIONS", item, options)
    app.router.add_route("HEAD", item, head)
    app.router.add_route("PATCH", item, patch)
