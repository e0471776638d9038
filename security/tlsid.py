"""TLS with mutual authentication on IP links, from the keys enrolment already exchanged.

Each (kit, centre) pair derives two more keys from its long-term keys (the context of
:mod:`security.channel` plus ``tls``): the seed of the kit's TLS client key and the seed
of the centre's TLS server key *for that kit*, both Ed25519. Each side can derive both,
and Ed25519 signatures are deterministic, so each side builds the very same two
self-signed certificates and pins the other's: nothing more to provision, no CA to run,
and only a kit enrolled with its public key can finish a handshake — in both profiles
(the national profile's SM2 keys feed the derivation; the TLS 1.3 suites stay those of
the system's OpenSSL, which has no TLCP: the items inside are still authenticated with
SM3 by :mod:`security.ipauth`).

The kit names the kit it is in SNI (``k<id>.fieldkit``); the centre picks that kit's
context, which presents the server certificate for that kit and accepts only that
kit's client certificate. Other names (a browser on the dashboard) get the centre's
own certificate and no client check; kits' requests there still need their signature.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import os
import re
import ssl
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from security.channel import CentreSecurity, KitSecurity, Refusal
from security.profiles import Directional

log = logging.getLogger("security")

DOMAIN = "fieldkit"
_SNI = re.compile(r"k([0-9]{1,5})\." + DOMAIN + r"\Z")
_NOT_BEFORE = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)  # a kit's clock may be wrong
_NOT_AFTER = datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.UTC)


def server_name(kit_id: int) -> str:
    """The name a kit asks for in SNI, and the centre's certificate for it carries."""
    return f"k{kit_id}.{DOMAIN}"


def _key(seed: bytes, role: bytes) -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.from_private_bytes(hashlib.sha256(role + seed).digest())


def _certificate(key: ed25519.Ed25519PrivateKey, name: str) -> bytes:
    """A self-signed certificate whose every byte follows from ``key`` and ``name``."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    public = key.public_key()
    serial = int.from_bytes(
        hashlib.sha256(public.public_bytes_raw() + name.encode()).digest()[:8], "big"
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(serial | 1)
        .not_valid_before(_NOT_BEFORE)
        .not_valid_after(_NOT_AFTER)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, None)
    )
    return cert.public_bytes(serialization.Encoding.PEM)


class Identities:
    """The two TLS identities of one (kit, centre) pair."""

    def __init__(self, kit_id: int, seeds: Directional) -> None:
        self.kit_id = kit_id
        self.client_key = _key(seeds.up, b"tls client")
        self.server_key = _key(seeds.down, b"tls server")
        self.client_cert = _certificate(self.client_key, f"kit-{kit_id}.{DOMAIN}")
        self.server_cert = _certificate(self.server_key, server_name(kit_id))


def _pem_key(key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_chain(ctx: ssl.SSLContext, cert: bytes, key: ed25519.Ed25519PrivateKey) -> None:
    """``load_cert_chain`` reads files: write them 0600 in a private folder, load, delete."""
    with tempfile.TemporaryDirectory(prefix="kit-tls-") as folder:
        cert_path, key_path = Path(folder, "c.pem"), Path(folder, "k.pem")
        for path, data in ((cert_path, cert), (key_path, _pem_key(key))):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        ctx.load_cert_chain(cert_path, key_path)


def kit_context(kit: KitSecurity) -> ssl.SSLContext:
    """The kit's client context: its own certificate, and only the centre's for it trusted."""
    ids = Identities(kit.kit_id, kit.tls_seeds)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(cadata=ids.server_cert.decode())
    _load_chain(ctx, ids.client_cert, ids.client_key)
    return ctx  # check_hostname stays on: the kit connects with server_hostname=server_name()


class CentreTls:
    """The centre's server context: a kit's own context picked by SNI (see module doc)."""

    def __init__(self, security: CentreSecurity, cert: Path, key: Path) -> None:
        self.security = security
        self.contexts: dict[int, ssl.SSLContext] = {}
        self._client_certs: dict[int, bytes] = {}  # DER of each kit's client certificate
        self._kit_of_context: dict[int, int] = {}  # id() of a kit's context → the kit
        self.base = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.base.minimum_version = ssl.TLSVersion.TLSv1_2  # browsers on the dashboard
        # OpenSSL keeps a connection's verify mode when SNI swaps its context, so the
        # certificate is asked for here (optional: browsers have none) and checked against
        # the trust store of the kit's context it is swapped to.
        self.base.verify_mode = ssl.CERT_OPTIONAL
        self.base.load_cert_chain(cert, key)
        self.base.sni_callback = self._pick

    def kit_of(self, conn: ssl.SSLObject | ssl.SSLSocket) -> int | None:
        """The kit a connection proved to be: its context picked by SNI, and the client
        certificate presented (and verified) that kit's own."""
        kit_id = self._kit_of_context.get(id(conn.context))
        if kit_id is None or self.contexts.get(kit_id) is not conn.context:
            return None
        return kit_id if conn.getpeercert(binary_form=True) == self._client_certs[kit_id] else None

    def context_for(self, kit_id: int) -> ssl.SSLContext:
        """Kit ``kit_id``'s context; :class:`Refusal` if it is revoked or has no key."""
        session = self.security.session(kit_id)
        ctx = self.contexts.get(kit_id)
        if ctx is None:
            ids = Identities(kit_id, session.tls)
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_3
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(cadata=ids.client_cert.decode())
            _load_chain(ctx, ids.server_cert, ids.server_key)
            self.contexts[kit_id] = ctx
            self._kit_of_context[id(ctx)] = kit_id
            self._client_certs[kit_id] = ssl.PEM_cert_to_DER_cert(ids.client_cert.decode())
        return ctx

    def _pick(self, sock: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> int | None:
        match = _SNI.match(name or "")
        if match is None:
            return None  # the centre's own certificate (a browser)
        kit_id = int(match[1])
        try:
            sock.context = self.context_for(kit_id)
        except Refusal as err:
            self.security.record("tls-refused", err.reason, kit_id, "a TLS handshake", err.en, "ip")
            return ssl.ALERT_DESCRIPTION_ACCESS_DENIED
        return None


def centre_certificate(folder: Path, names: list[str]) -> tuple[Path, Path]:
    """The centre's own certificate for browsers: ``tls.crt``/``tls.key`` in ``folder``,
    made self-signed on first use (replace them with ones from your CA)."""
    cert, key = folder / "tls.crt", folder / "tls.key"
    if not cert.exists() or not key.exists():
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        private = ec.generate_private_key(ec.SECP256R1())  # what every browser takes
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(_pem_key(private))
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
        now = datetime.datetime.now(datetime.UTC)
        built = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(private.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(
                x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
            )
            .sign(private, hashes.SHA256())
        )
        cert.write_bytes(built.public_bytes(serialization.Encoding.PEM))
        log.info("centre TLS certificate made: %s (names %s)", cert, ", ".join(names))
    return cert, key
