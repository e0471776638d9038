"""Authenticated requests and answers on IP links: a kit's HTTP to the centre.

A narrow-link frame is sealed with the (kit, centre) keys; an HTTP request of an IP link
is authenticated with keys derived the same way (same long-term keys, another context),
so a stranger who reaches the centre's address can neither post items as a kit nor
answer a kit with forged acknowledgements or orders.

- Each request carries ``Kit-Id`` and ``Kit-Auth: <n> <tag>``: ``n`` a request number
  reserved in durable blocks like the narrow links' message sequences (it never repeats,
  even across power cuts), ``tag`` a MAC (HMAC-SHA-256, or HMAC-SM3 in the national
  profile, truncated to :data:`MAC_BYTES`) under the kit's IP key over the method, the
  path, ``n``, the headers the centre acts on, and the SHA-256 of the body. A tus
  ``PATCH`` body is covered through its ``Upload-Checksum`` header (which the centre
  checks against the bytes as they arrive), so a chunk need not be held in memory.
- The centre takes each ``n`` once per kit key within a replay window
  (:class:`~security.state.SecurityState`, as for frames), and answers with
  ``Kit-Auth: <tag>`` under its own IP key over ``n``, the status, the headers the kit
  acts on and the SHA-256 of the answer: an answer is bound to the request it answers.
- Items relayed by another kit travel inside the origin kit's sealed frames
  (``POST /v1/frames``), which the centre opens with the origin kit's keys: they stay
  verifiable end to end whichever kit or mesh carried them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import re
from collections.abc import Mapping
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac

from security.channel import CentreSecurity, KitSecurity, Refusal
from security.profiles import Profile
from uplink.msgseq import MessageSequence

log = logging.getLogger("security")

HEADER = "Kit-Auth"
MAC_BYTES = 16
REQUEST_COUNTER = "kit-ip.seq"  # beside the kit's key: a new key starts a new count
# Headers whose values the centre acts on (others are not covered).
SIGNED_REQUEST_HEADERS = (
    "kit-link",
    "tus-resumable",
    "upload-length",
    "upload-offset",
    "upload-concat",
    "upload-metadata",
    "upload-checksum",
)
SIGNED_ANSWER_HEADERS = ("location", "upload-offset", "upload-length")
_REQUEST_AUTH = re.compile(r"([0-9]{1,10}) ([A-Za-z0-9_-]{22})\Z")
_ANSWER_AUTH = re.compile(r"[A-Za-z0-9_-]{22}\Z")


def mac(prof: Profile, key: bytes, message: bytes) -> bytes:
    algorithm: hashes.HashAlgorithm = hashes.SM3() if prof.name == "national" else hashes.SHA256()
    h = crypto_hmac.HMAC(key, algorithm)
    h.update(message)
    return h.finalize()[:MAC_BYTES]


def _b64(tag: bytes) -> str:
    return base64.urlsafe_b64encode(tag).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def body_digest(method: str, body: bytes) -> str:
    """The body's SHA-256; ``-`` for PATCH (covered by its Upload-Checksum header)."""
    return "-" if method == "PATCH" else hashlib.sha256(body).hexdigest()


def canonical_request(
    kit_id: int, n: int, method: str, path: str, headers: Mapping[str, str], digest: str
) -> bytes:
    lower = {k.lower(): v for k, v in headers.items()}
    lines = [
        "fieldkit-ip-request-v1",
        str(kit_id),
        str(n),
        method.upper(),
        path,
        *(f"{h}:{lower.get(h, '').strip()}" for h in SIGNED_REQUEST_HEADERS),
        digest,
    ]
    return "\n".join(lines).encode()


def canonical_answer(
    kit_id: int, n: int, status: int, headers: Mapping[str, str], body: bytes
) -> bytes:
    lower = {k.lower(): v for k, v in headers.items()}
    lines = [
        "fieldkit-ip-answer-v1",
        str(kit_id),
        str(n),
        str(status),
        *(f"{h}:{lower.get(h, '').strip()}" for h in SIGNED_ANSWER_HEADERS),
        hashlib.sha256(body).hexdigest(),
    ]
    return "\n".join(lines).encode()


class RequestSigner:
    """The kit's end: numbers and tags its requests, checks the centre's answers."""

    def __init__(self, kit: KitSecurity, counter_path: Path) -> None:
        self.kit = kit
        self.kit_id = kit.kit_id
        self.profile = kit.profile
        self._keys = kit.ip_keys
        self._counter = MessageSequence(counter_path)

    @classmethod
    def for_kit(cls, kit: KitSecurity) -> RequestSigner:
        beside = kit.sequence_path or kit.state.path  # with the key, else with the state
        return cls(kit, beside.with_name(REQUEST_COUNTER))

    def sign(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, str]:
        """A fresh request number and the ``Kit-Auth`` value for this request."""
        n = self._counter.next()
        message = canonical_request(
            self.kit_id, n, method, path, headers, body_digest(method, body)
        )
        return n, f"{n} {_b64(mac(self.profile, self._keys.up, message))}"

    def check_answer(self, n: int, status: int, headers: Mapping[str, str], body: bytes) -> None:
        """Raise :class:`Refusal` unless the answer to request ``n`` is the centre's."""
        value = {k.lower(): v for k, v in headers.items()}.get(HEADER.lower(), "")
        if not _ANSWER_AUTH.match(value):
            raise Refusal("unsigned", "中心的应答没有认证标签", "the answer carries no Kit-Auth")
        want = mac(
            self.profile, self._keys.down, canonical_answer(self.kit_id, n, status, headers, body)
        )
        if not hmac.compare_digest(want, _unb64(value)):
            raise Refusal("forged", "中心应答的认证标签校验失败", "the answer's tag is not valid")

    def refused_answer(self, err: Refusal, link: str) -> None:
        self.kit.record("answer-refused", err.reason, self.kit_id, "an answer", err.en, link)


class RequestVerifier:
    """The centre's end: verifies a kit's request once, tags the answer."""

    def __init__(self, security: CentreSecurity) -> None:
        self.security = security

    def keyed(self, kit_id: int) -> bool:
        """True if ``kit_id`` is enrolled with a public key (its requests must be signed)."""
        return self.security.enrolled(kit_id)

    def verify(
        self,
        kit_id: int,
        method: str,
        path: str,
        headers: Mapping[str, str],
        body: bytes,
    ) -> int:
        """The request number of an authentic, fresh request; else :class:`Refusal`."""
        session = self.security.session(kit_id)  # refuses revoked and unknown kits
        value = {k.lower(): v for k, v in headers.items()}.get(HEADER.lower(), "")
        if not value:
            raise Refusal(
                "unsigned",
                f"套件 {kit_id} 的请求没有 Kit-Auth 认证",
                f"a request of kit {kit_id} without Kit-Auth",
            )
        match = _REQUEST_AUTH.match(value)
        if match is None:
            raise Refusal(
                "malformed", "Kit-Auth 格式应为 <序号> <标签>", "Kit-Auth must read <n> <tag>"
            )
        n = int(match[1])
        try:
            tag = _unb64(match[2])
        except (binascii.Error, ValueError):
            raise Refusal(
                "malformed", "Kit-Auth 标签不是 base64", "Kit-Auth tag is not base64"
            ) from None
        message = canonical_request(kit_id, n, method, path, headers, body_digest(method, body))
        if not hmac.compare_digest(mac(session.profile, session.ip.up, message), tag):
            raise Refusal("forged", "请求的认证标签校验失败", "the request's tag does not verify")
        why = self.security.state.accept(kit_id, b"ip" + session.peer, n, 0)
        if why == "replay":
            raise Refusal("replay", f"重放的请求：序号 {n} 已收到过", f"replayed request: n={n}")
        if why is not None:
            raise Refusal("stale", f"过旧的请求：序号 {n}", f"stale request: n={n}")
        return n

    def answer(
        self, kit_id: int, n: int, status: int, headers: Mapping[str, str], body: bytes
    ) -> str:
        session = self.security.session(kit_id)
        message = canonical_answer(kit_id, n, status, headers, body)
        return _b64(mac(session.profile, session.ip.down, message))

    def refuse(self, err: Refusal, *, kit_id: int, link: str, what: str) -> None:
        self.security.record("request-refused", err.reason, kit_id, what, err.en, link)
