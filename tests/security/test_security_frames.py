"""Sealed frames: every single-bit flip is refused, the SOS fits Beidou, the primitives are standard."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from security_helpers import KIT, PROFILES, kit_end

from security import simkeys
from security.channel import CentreSecurity, Enrolled, KitSecurity
from security.profiles import profile
from security.state import SecurityState
from uplink import compact
from uplink.frames import (
    MTU_BEIDOU,
    MTU_MESH,
    TAG_BYTES,
    BadFrame,
    FrameType,
    decode_frame,
    fragment,
)


def ends(tmp_path: Path, prof: str) -> tuple[KitSecurity, CentreSecurity]:
    kit = kit_end(KIT, prof, tmp_path / f"kit-{prof}.sqlite3")
    centre = CentreSecurity(
        {prof: simkeys.centre_pair(prof)},
        {KIT: Enrolled(profile(prof), simkeys.kit_pair(KIT, prof).public)},
        SecurityState(tmp_path / f"centre-{prof}.sqlite3"),
    )
    return kit, centre


@pytest.mark.parametrize("prof", PROFILES)
def test_every_single_bit_flip_of_1000_valid_frames_is_refused(tmp_path: Path, prof: str) -> None:
    kit, centre = ends(tmp_path, prof)
    rng = random.Random(8)
    try:
        valid: list[bytes] = []
        seq = 1
        while len(valid) < 1000:
            payload = rng.randbytes(rng.randint(1, 24))
            mtu = rng.choice((20, 24, MTU_BEIDOU))  # single frames and fragments
            valid += fragment(KIT, seq, payload, mtu, sealer=kit)
            seq += 1
        variants = accepted = 0
        for raw in valid[:1000]:
            assert decode_frame(raw, sealer=centre).kit_id == KIT
            value = int.from_bytes(raw, "big")
            for bit in range(len(raw) * 8):
                flipped = (value ^ 1 << bit).to_bytes(len(raw), "big")
                variants += 1
                try:
                    decode_frame(flipped, sealer=centre)
                except BadFrame:
                    continue
                accepted += 1
        assert accepted == 0 and variants >= 1000 * 8 * 17
    finally:
        kit.state.close()
        centre.close()


@pytest.mark.parametrize("prof", PROFILES)
def test_the_sos_fits_one_78_byte_beidou_message_sealed(tmp_path: Path, prof: str) -> None:
    kit, centre = ends(tmp_path, prof)
    try:
        payload = compact.pack_items([(compact.SOS_SEQ, compact.sos_example())])
        (frame,) = fragment(0xFFFF, 0xFFFF_FFFF, payload, MTU_BEIDOU, sealer=None)
        (sealed,) = fragment(KIT, 0xFFFF_FFFF, payload, MTU_BEIDOU, sealer=kit)
        assert len(sealed) == len(frame) <= MTU_BEIDOU  # + the A4 marker: ≤ 78 on the air
        assert payload not in sealed  # encrypted, not only tagged
        opened = decode_frame(sealed, sealer=centre)
        assert opened.payload == payload and opened.type is FrameType.ITEMS
    finally:
        kit.state.close()
        centre.close()


def test_the_default_profile_is_chacha20_poly1305_with_its_tag_truncated() -> None:
    prof = profile("default")
    key, nonce, aad = os.urandom(32), os.urandom(12), b"header"
    for size in (1, 15, 16, 17, 64, 233):
        plain = os.urandom(size)
        full = ChaCha20Poly1305(key).encrypt(nonce, plain, aad)
        sealed = prof.seal(key, nonce, aad, plain)
        assert sealed == full[: size + TAG_BYTES]
        assert prof.open(key, nonce, aad, sealed) == plain


def test_the_national_profile_is_sm4_gcm_with_its_tag_truncated() -> None:
    prof = profile("national")
    key, nonce, aad, plain = os.urandom(16), os.urandom(12), b"header", b"\xe5\x9c\xb0\xe9\x9c\x87"
    enc = Cipher(algorithms.SM4(key), modes.GCM(nonce)).encryptor()
    enc.authenticate_additional_data(aad)
    full = enc.update(plain) + enc.finalize()
    assert prof.seal(key, nonce, aad, plain) == full + enc.tag[:TAG_BYTES]


def test_sm2_agrees_and_matches_gmssl_public_keys() -> None:
    from security import sm2

    # A key pair made by GmSSL 3 (gmssl-fast 0.1.0): our public key of its private key.
    private = bytes.fromhex("f34a1fd1a1ec94c83f4f0d03cd60c96f9cf0cde2d22b0f03d07ed1926a385243")
    public = bytes.fromhex(
        "c68fea038dac5912e6807b36bf60ab467d39379112c5dc3c92014e3eb9c2b0f0"
        "f981d155d1f50c04378a07b7cb97c9dccbf4730ecc35ae4d65d4b3d2b14531f0"
    )
    assert sm2.public_key(private) == public
    a, b = sm2.generate(), sm2.generate()
    assert sm2.agree(a, sm2.public_key(b)) == sm2.agree(b, sm2.public_key(a))
    with pytest.raises(sm2.BadSm2Key, match="not a point on the curve"):
        sm2.agree(a, public[:63] + bytes([public[63] ^ 1]))
    # GB/T 32918.4 KDF: SM3(Z || 00000001) first.
    assert sm2.kdf(b"abc", 32) == sm2.sm3(b"abc\x00\x00\x00\x01")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=300))
def test_opening_arbitrary_bytes_raises_only_bad_frame(
    tmp_path_factory: pytest.TempPathFactory, data: bytes
) -> None:
    tmp = tmp_path_factory.getbasetemp() / "fuzz"
    kit, centre = ends(tmp, "default")
    try:
        for raw in (data, b"\x21\x00\x07" + data, b"\x29\x00\x07" + data):
            with pytest.raises(BadFrame):
                decode_frame(raw, sealer=centre)
    finally:
        kit.state.close()
        centre.close()


def test_a_mesh_sized_message_round_trips_in_fragments_in_both_profiles(tmp_path: Path) -> None:
    for prof in PROFILES:
        kit, centre = ends(tmp_path, prof)
        try:
            payload = os.urandom(1000)
            pieces = fragment(KIT, 77, payload, MTU_MESH, sealer=kit)
            assert len(pieces) == 5
            got = b"".join(decode_frame(p, sealer=centre).payload for p in pieces)
            assert got == payload
        finally:
            kit.state.close()
            centre.close()
