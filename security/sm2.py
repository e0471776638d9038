"""SM2 (GB/T 32918) static key agreement and the SM3 key derivation function.

No C-backed SM2 library on PyPI offers a static Diffie-Hellman on the SM2 curve that
also installs on a Pi (aarch64): tongsuopy ships x86_64 wheels only and OpenSSL refuses
``EVP_PKEY_derive`` on SM2 keys; gmssl-fast and gmssl-pyx expose sign/encrypt only. So
the one scalar multiplication per (kit, centre) pair runs here, in Python, once per
process (a few milliseconds; the result is cached). Every frame afterwards costs only
SM4-GCM from ``cryptography``. The ladder below does the same work for every scalar of
the same length, but Python integers are not constant-time: the private key is used
only at start-up, never per frame.
"""

from __future__ import annotations

import secrets

from cryptography.hazmat.primitives import hashes

from edge.errors import KitError

P = 0xFFFFFFFE_FFFFFFFF_FFFFFFFF_FFFFFFFF_FFFFFFFF_00000000_FFFFFFFF_FFFFFFFF
A = P - 3
B = 0x28E9FA9E_9D9F5E34_4D5A9E4B_CF6509A7_F39789F5_15AB8F92_DDBCBD41_4D940E93
N = 0xFFFFFFFE_FFFFFFFF_FFFFFFFF_FFFFFFFF_7203DF6B_21C6052B_53BBF409_39D54123
GX = 0x32C4AE2C_1F198119_5F990446_6A39C994_8FE30BBF_F2660BE1_715A4589_334C74C7
GY = 0xBC3736A2_F4F6779C_59BDCEE3_6B692153_D0A9877C_C62A4740_02DF32E5_2139F0A0

PRIVATE_BYTES = 32
PUBLIC_BYTES = 64  # x || y, uncompressed without the 04 marker

_Jacobian = tuple[int, int, int]  # Z = 0 is the point at infinity
_INFINITY: _Jacobian = (1, 1, 0)


class BadSm2Key(KitError, ValueError):
    """An SM2 private or public key that is not a valid one."""


def _double(pt: _Jacobian) -> _Jacobian:
    x, y, z = pt
    if z == 0 or y == 0:
        return _INFINITY
    delta = z * z % P
    gamma = y * y % P
    beta = x * gamma % P
    alpha = 3 * (x - delta) * (x + delta) % P  # a = -3
    x3 = (alpha * alpha - 8 * beta) % P
    z3 = ((y + z) ** 2 - gamma - delta) % P
    y3 = (alpha * (4 * beta - x3) - 8 * gamma * gamma) % P
    return x3, y3, z3


def _add(p1: _Jacobian, p2: _Jacobian) -> _Jacobian:
    if p1[2] == 0:
        return p2
    if p2[2] == 0:
        return p1
    x1, y1, z1 = p1
    x2, y2, z2 = p2
    z1z1, z2z2 = z1 * z1 % P, z2 * z2 % P
    u1, u2 = x1 * z2z2 % P, x2 * z1z1 % P
    s1, s2 = y1 * z2 * z2z2 % P, y2 * z1 * z1z1 % P
    h, r = (u2 - u1) % P, (s2 - s1) % P
    if h == 0:
        return _double(p1) if r == 0 else _INFINITY
    hh = h * h % P
    hhh = h * hh % P
    v = u1 * hh % P
    x3 = (r * r - hhh - 2 * v) % P
    y3 = (r * (v - x3) - s1 * hhh) % P
    z3 = z1 * z2 * h % P
    return x3, y3, z3


def _affine(pt: _Jacobian) -> tuple[int, int]:
    x, y, z = pt
    if z == 0:
        raise BadSm2Key("SM2 运算得到无穷远点", "SM2 operation gave the point at infinity")
    zinv = pow(z, -1, P)
    zinv2 = zinv * zinv % P
    return x * zinv2 % P, y * zinv2 * zinv % P


def _multiply(k: int, point: tuple[int, int]) -> tuple[int, int]:
    """k × point by a Montgomery ladder over all 256 bits."""
    r0, r1 = _INFINITY, (point[0], point[1], 1)
    for i in reversed(range(256)):
        if k >> i & 1:
            r0, r1 = _add(r0, r1), _double(r1)
        else:
            r0, r1 = _double(r0), _add(r0, r1)
    return _affine(r0)


def _scalar(private: bytes) -> int:
    if len(private) != PRIVATE_BYTES:
        raise BadSm2Key(
            f"SM2 私钥应为 {PRIVATE_BYTES} 字节，实为 {len(private)}",
            f"SM2 private key must be {PRIVATE_BYTES} bytes, got {len(private)}",
        )
    d = int.from_bytes(private, "big")
    if not 1 <= d <= N - 2:
        raise BadSm2Key("SM2 私钥超出范围", "SM2 private key out of range")
    return d


def _point(public: bytes) -> tuple[int, int]:
    if len(public) != PUBLIC_BYTES:
        raise BadSm2Key(
            f"SM2 公钥应为 {PUBLIC_BYTES} 字节，实为 {len(public)}",
            f"SM2 public key must be {PUBLIC_BYTES} bytes, got {len(public)}",
        )
    x, y = int.from_bytes(public[:32], "big"), int.from_bytes(public[32:], "big")
    if not (x < P and y < P and (y * y - x * x * x - A * x - B) % P == 0):
        raise BadSm2Key("SM2 公钥不在曲线上", "SM2 public key is not a point on the curve")
    return x, y


def generate() -> bytes:
    """A new private key: a uniform scalar in 1..n-2 (GB/T 32918.1 §6.1)."""
    return (secrets.randbelow(N - 2) + 1).to_bytes(PRIVATE_BYTES, "big")


def public_key(private: bytes) -> bytes:
    x, y = _multiply(_scalar(private), (GX, GY))
    return x.to_bytes(32, "big") + y.to_bytes(32, "big")


def agree(private: bytes, peer_public: bytes) -> bytes:
    """The shared point d × Q (x || y); the peer's key is checked to lie on the curve."""
    x, y = _multiply(_scalar(private), _point(peer_public))
    return x.to_bytes(32, "big") + y.to_bytes(32, "big")


def check_public(public: bytes) -> None:
    _point(public)


def sm3(data: bytes) -> bytes:
    digest = hashes.Hash(hashes.SM3())
    digest.update(data)
    return digest.finalize()


def kdf(z: bytes, length: int) -> bytes:
    """KDF of GB/T 32918.4 §5.4.3: SM3(Z || ct) for ct = 1, 2, … (32-bit big-endian)."""
    out = bytearray()
    counter = 1
    while len(out) < length:
        out += sm3(z + counter.to_bytes(4, "big"))
        counter += 1
    return bytes(out[:length])
