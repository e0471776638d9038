"""Who is asking: kits' requests on IP links are verified before any handler runs.

A kit enrolled with a public key must sign every request to ``/v1/items``,
``/v1/acks`` and ``/v1/media`` (:mod:`security.ipauth`); the verified kit id is put on
the request (``request[KIT]``) for the handlers, and the answer is tagged so the kit
can tell it came from this centre. A kit enrolled without a key (a lab set-up) is
served as before, identified by its ``Kit-Id`` header alone; a kit not enrolled at all
is refused by the handlers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from centre import ingest
from centre.errors import Refused
from security.channel import Refusal
from security.ipauth import HEADER, RequestVerifier
from security.tlsid import CentreTls

KIT = web.RequestKey("kit", int)  # the kit whose signature this request carries
VERIFIER = web.AppKey("kit_verifier", RequestVerifier)


@dataclass
class TlsSlot:
    """Where ``serve`` puts the centre's TLS (made after the application has started)."""

    tls: CentreTls | None = None


TLS = web.AppKey("kit_tls", TlsSlot)
SIGNED_PATHS = ("/v1/items", "/v1/acks", "/v1/media")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_STATUS = {"revoked": 403, "unknown-kit": 403}


def authenticated(request: web.Request) -> int | None:
    """The kit that signed ``request``, or None (unsigned: an unkeyed kit or a stranger)."""
    return request.get(KIT)


def require_signed_by(request: web.Request, kit_id: int) -> None:
    """Refuse unless ``kit_id`` is unkeyed or signed this request (e.g. a tus upload's
    owner: another kit, or a stranger, may not resume or read it)."""
    verifier = request.app.get(VERIFIER)
    if verifier is None or not verifier.keyed(kit_id) or authenticated(request) == kit_id:
        return
    raise Refused(
        401,
        f"套件 {kit_id} 的上传须由该套件签名的请求访问",
        f"kit {kit_id}'s uploads are reached only by requests that kit signed",
    )


@web.middleware
async def kit_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    verifier = request.app.get(VERIFIER)
    if (
        verifier is None
        or request.method == "OPTIONS"
        or not request.path.startswith(SIGNED_PATHS)
        or "Kit-Id" not in request.headers
    ):
        return await handler(request)
    kit_id = ingest.kit_id_of(request)
    if not verifier.keyed(kit_id):
        return await handler(request)
    body = b"" if request.method in ("PATCH", "HEAD", "GET") else await ingest._read_body(request)
    if request.method == "PATCH" and "Upload-Checksum" not in request.headers:
        raise Refused(
            400,
            "已签名的分块须带 Upload-Checksum",
            "a signed chunk must carry Upload-Checksum (it is what the signature covers)",
        )
    link = ingest.link_of(request)
    tls = request.app[TLS].tls
    if tls is not None:
        ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
        holder = None if ssl_object is None else tls.kit_of(ssl_object)
        if holder != kit_id:
            err = Refusal(
                "tls-identity",
                f"TLS 身份（{holder or '无'}）与 Kit-Id {kit_id} 不符",
                f"the TLS identity ({holder or 'none'}) is not kit {kit_id}",
            )
            verifier.refuse(err, kit_id=kit_id, link=link, what=f"{request.method} {request.path}")
            raise Refused(401, err.zh, err.en)
    try:
        n = verifier.verify(kit_id, request.method, request.raw_path, request.headers, body)
    except Refusal as err:
        verifier.refuse(err, kit_id=kit_id, link=link, what=f"{request.method} {request.path}")
        raise Refused(_STATUS.get(err.reason, 401), err.zh, err.en) from None
    request[KIT] = kit_id
    response = await handler(request)
    if isinstance(response, web.Response):
        raw = response.body
        body_out = raw if isinstance(raw, bytes) else b""
        response.headers[HEADER] = verifier.answer(
            kit_id, n, response.status, response.headers, body_out
        )
    return response
