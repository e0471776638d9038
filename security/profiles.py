"""The two cryptographic profiles: key pairs, static agreement, key derivation, sealing.

- ``default``: X25519 agreement, HKDF-SHA256, ChaCha20-Poly1305 (fast without AES
  instructions, as on a Pi 4), Ed25519 identity.
- ``national`` (国密): SM2 agreement and identity, the SM3 KDF of GB/T 32918.4,
  SM4-GCM.

Both seal with a tag truncated to :data:`TAG_BYTES` (8) bytes. The directional keys come
from the long-term keys alone (kit private + centre public, or the reverse at the
centre), so a 78-byte Beidou message needs no handshake.
"""

from __future__ import annotations

import hmac
import struct
from abc import ABC, abstractmethod
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.poly1305 import Poly1305

from edge.errors import KitError
from security import sm2
from uplink.frames import TAG_BYTES

NONCE_BYTES = 12
_RAW = serialization.Encoding.Raw
_RAW_PUB = serialization.PublicFormat.Raw
_RAW_PRIV = serialization.PrivateFormat.Raw
_NO_CRYPT = serialization.NoEncryption()


class BadKey(KitError, ValueError):
    """A key that does not belong to the profile, or is not a valid key at all."""


class Unauthentic(KitError, ValueError):
    """Sealed bytes whose tag does not verify: forged, tampered, or under other keys."""


@dataclass(frozen=True, slots=True)
class Directional:
    """The two symmetric keys of one (kit, centre) pair: kit→centre and centre→kit."""

    up: bytes
    down: bytes


class Profile(ABC):
    """One profile's primitives; stateless, so one instance serves every kit."""

    name: str
    agree_private_bytes: int
    agree_public_bytes: int
    sign_private_bytes: int
    sign_public_bytes: int

    @property
    def public_bytes(self) -> int:
        return self.agree_public_bytes + self.sign_public_bytes

    @abstractmethod
    def generate(self) -> bytes:
        """A new private key (agreement key || signing key)."""

    @abstractmethod
    def public(self, private: bytes) -> bytes:
        """The public key (agreement || signing) of ``private``."""

    @abstractmethod
    def shared(self, private: bytes, peer_public: bytes) -> bytes:
        """The static Diffie-Hellman secret of our private and the peer's public key."""

    @abstractmethod
    def expand(self, secret: bytes, info: bytes) -> Directional:
        """Directional keys from the shared secret and a context naming both parties."""

    @abstractmethod
    def seal(self, key: bytes, nonce: bytes, aad: bytes, plaintext: bytes) -> bytes:
        """Ciphertext (as long as ``plaintext``) followed by a TAG_BYTES tag."""

    @abstractmethod
    def open(self, key: bytes, nonce: bytes, aad: bytes, sealed: bytes) -> bytes:
        """The plaintext, or :class:`Unauthentic`."""

    def check_public(self, public: bytes) -> None:
        if len(public) != self.public_bytes:
            raise BadKey(
                f"{self.name} 公钥应为 {self.public_bytes} 字节，实为 {len(public)}",
                f"a {self.name} public key is {self.public_bytes} bytes, not {len(public)}",
            )

    def check_private(self, private: bytes) -> None:
        want = self.agree_private_bytes + self.sign_private_bytes
        if len(private) != want:
            raise BadKey(
                f"{self.name} 私钥应为 {want} 字节，实为 {len(private)}",
                f"a {self.name} private key is {want} bytes, not {len(private)}",
            )

    def directional(self, private: bytes, peer_public: bytes, info: bytes) -> Directional:
        self.check_private(private)
        self.check_public(peer_public)
        secret = self.shared(
            private[: self.agree_private_bytes], peer_public[: self.agree_public_bytes]
        )
        return self.expand(secret, info)


class DefaultProfile(Profile):
    name = "default"
    agree_private_bytes = agree_public_bytes = 32
    sign_private_bytes = sign_public_bytes = 32

    def generate(self) -> bytes:
        agree = x25519.X25519PrivateKey.generate().private_bytes(_RAW, _RAW_PRIV, _NO_CRYPT)
        sign = ed25519.Ed25519PrivateKey.generate().private_bytes(_RAW, _RAW_PRIV, _NO_CRYPT)
        return agree + sign

    def public(self, private: bytes) -> bytes:
        self.check_private(private)
        agree = x25519.X25519PrivateKey.from_private_bytes(private[:32]).public_key()
        sign = ed25519.Ed25519PrivateKey.from_private_bytes(private[32:]).public_key()
        return agree.public_bytes(_RAW, _RAW_PUB) + sign.public_bytes(_RAW, _RAW_PUB)

    def shared(self, private: bytes, peer_public: bytes) -> bytes:
        ours = x25519.X25519PrivateKey.from_private_bytes(private)
        try:
            return ours.exchange(x25519.X25519PublicKey.from_public_bytes(peer_public))
        except ValueError as exc:  # an all-zero shared secret: a small-order peer key
            raise BadKey(f"X25519 公钥无效：{exc}", f"invalid X25519 public key: {exc}") from None

    def expand(self, secret: bytes, info: bytes) -> Directional:
        okm = HKDF(hashes.SHA256(), 64, salt=b"fieldkit narrow v1", info=info).derive(secret)
        return Directional(okm[:32], okm[32:])

    @staticmethod
    def _keystream(key: bytes, nonce: bytes, size: int) -> tuple[bytes, bytes]:
        # RFC 8439 §2.8 built from its parts, because the tag is truncated: the one-time
        # Poly1305 key is block 0 of the keystream, the payload is XORed from block 1 on.
        stream = Cipher(algorithms.ChaCha20(key, bytes(4) + nonce), mode=None).encryptor()
        block = stream.update(bytes(64 + size))
        return block[:32], block[64:]

    @staticmethod
    def _xor(data: bytes, stream: bytes) -> bytes:
        n = len(data)
        return (int.from_bytes(data, "little") ^ int.from_bytes(stream, "little")).to_bytes(
            n, "little"
        )

    @staticmethod
    def _tag(otk: bytes, aad: bytes, ciphertext: bytes) -> bytes:
        def pad(n: int) -> bytes:
            return bytes(-n % 16)

        mac = (
            aad
            + pad(len(aad))
            + ciphertext
            + pad(len(ciphertext))
            + struct.pack("<QQ", len(aad), len(ciphertext))
        )
        return Poly1305.generate_tag(otk, mac)[:TAG_BYTES]

    def seal(self, key: bytes, nonce: bytes, aad: bytes, plaintext: bytes) -> bytes:
        otk, stream = self._keystream(key, nonce, len(plaintext))
        ciphertext = self._xor(plaintext, stream)
        return ciphertext + self._tag(otk, aad, ciphertext)

    def open(self, key: bytes, nonce: bytes, aad: bytes, sealed: bytes) -> bytes:
        if len(sealed) < TAG_BYTES:
            raise Unauthentic("认证标签被截断", "authentication tag truncated")
        ciphertext, tag = sealed[:-TAG_BYTES], sealed[-TAG_BYTES:]
        otk, stream = self._keystream(key, nonce, len(ciphertext))
        if not hmac.compare_digest(self._tag(otk, aad, ciphertext), tag):
            raise Unauthentic("认证标签校验失败", "authentication tag does not verify")
        return self._xor(ciphertext, stream)


class NationalProfile(Profile):
    name = "national"
    agree_private_bytes = sign_private_bytes = sm2.PRIVATE_BYTES
    agree_public_bytes = sign_public_bytes = sm2.PUBLIC_BYTES

    def generate(self) -> bytes:
        return sm2.generate() + sm2.generate()

    def public(self, private: bytes) -> bytes:
        self.check_private(private)
        return sm2.public_key(private[:32]) + sm2.public_key(private[32:])

    def shared(self, private: bytes, peer_public: bytes) -> bytes:
        try:
            return sm2.agree(private, peer_public)
        except sm2.BadSm2Key as err:
            raise BadKey(err.zh, err.en) from None

    def expand(self, secret: bytes, info: bytes) -> Directional:
        okm = sm2.kdf(secret + info, 32)
        return Directional(okm[:16], okm[16:])

    def seal(self, key: bytes, nonce: bytes, aad: bytes, plaintext: bytes) -> bytes:
        enc = Cipher(algorithms.SM4(key), modes.GCM(nonce)).encryptor()
        enc.authenticate_additional_data(aad)
        ciphertext = enc.update(plaintext) + enc.finalize()
        return ciphertext + enc.tag[:TAG_BYTES]

    def open(self, key: bytes, nonce: bytes, aad: bytes, sealed: bytes) -> bytes:
        if len(sealed) < TAG_BYTES:
            raise Unauthentic("认证标签被截断", "authentication tag truncated")
        ciphertext, tag = sealed[:-TAG_BYTES], sealed[-TAG_BYTES:]
        dec = Cipher(
            algorithms.SM4(key), modes.GCM(nonce, tag, min_tag_length=TAG_BYTES)
        ).decryptor()
        dec.authenticate_additional_data(aad)
        try:
            return dec.update(ciphertext) + dec.finalize()
        except InvalidTag:
            raise Unauthentic("认证标签校验失败", "authentication tag does not verify") from None


PROFILES: dict[str, Profile] = {p.name: p for p in (DefaultProfile(), NationalProfile())}


def profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise BadKey(
            f"未知的密码配置：{name!r}（可选 {', '.join(PROFILES)}）",
            f"unknown profile {name!r} (one of {', '.join(PROFILES)})",
        ) from None
