"""One test per attack on the narrow links, in both profiles: refused, counted, audited, nothing stored."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from security_helpers import KIT, OTHER, PROFILES, STRANGER, centre, kit_end, report, run

from security import simkeys
from security.channel import Enrolled, KitSecurity
from security.profiles import profile
from security.state import SecurityState
from uplink import compact
from uplink.frames import (
    MTU_BEIDOU,
    TAG_BYTES,
    BadFrame,
    Frame,
    FrameType,
    Order,
    decode_frame,
    encode_frame,
    fragment,
    pack_order,
    unpack_ack,
)

pytestmark = pytest.mark.parametrize("prof", PROFILES)


def test_a_valid_frame_is_stored_and_its_ack_verifies_at_the_kit(tmp_path: Path, prof: str) -> None:
    async def main() -> None:
        async with centre(tmp_path, prof) as c:
            (frame,) = c.frames(KIT, 1, [(1, report("道路中断"))])
            assert b"\xe9\x81\x93" not in frame and "道路".encode("gb18030") not in frame
            (answer,) = await c.send(frame)
            assert c.gateways["beidou"].authentic == KIT  # where the kit is may be noted
            ack = decode_frame(answer, sealer=c.kits[KIT])
            assert ack.type is FrameType.ACK and 1 in unpack_ack(ack.payload)[0]
            assert c.kits[KIT].fresh(ack) is None
            assert await c.copies(KIT, 1) == 1
            assert c.refusals() == Counter()

    run(main())


def test_forged_frames_under_a_strangers_key_are_refused(tmp_path: Path, prof: str) -> None:
    async def main() -> None:
        async with centre(tmp_path, prof) as c:
            # Someone with their own keys, pretending to be kit 7.
            impostor = KitSecurity(
                KIT,
                simkeys.sim_pair("impostor", prof),
                simkeys.centre_pair(prof).public,
                SecurityState(tmp_path / "impostor.sqlite3"),
            )
            try:
                for seq in range(1, 6):
                    payload = compact.pack_items([(seq, report("假消息"))])
                    (frame,) = fragment(KIT, seq, payload, MTU_BEIDOU, sealer=impostor)
                    assert await c.send(frame) == []
                    assert c.gateways["beidou"].authentic is None
                unsealed = encode_frame(Frame(FrameType.ITEMS, KIT, 9, payload))  # zero tag
                assert await c.send(unsealed) == []
            finally:
                impostor.state.close()
            assert c.refusals() == Counter(forged=6)
            assert [await c.copies(KIT, s) for s in range(1, 6)] == [0] * 5

    run(main())


def test_tampered_header_payload_or_tag_bytes_are_refused(tmp_path: Path, prof: str) -> None:
    async def main() -> None:
        async with centre(tmp_path, prof) as c:
            frames = c.frames(KIT, 1, [(1, report("三号楼倒塌" * 12))])
            assert len(frames) == 3
            tampered = []
            for at in (3, 6, 8, 12, len(frames[0]) - TAG_BYTES - 1, len(frames[0]) - 1):
                raw = bytearray(frames[0])
                raw[at] ^= 0x40  # the seq, fragment count, payload and tag bytes
                tampered.append(bytes(raw))
            for raw in tampered:
                assert await c.send(raw) == []
            assert c.refusals() == Counter(forged=6)
            for raw in frames:  # the genuine message still goes through afterwards
                answer = await c.send(raw)
            assert len(answer) == 1 and await c.copies(KIT, 1) == 1

    run(main())


def test_replayed_frames_are_taken_once(tmp_path: Path, prof: str) -> None:
    async def main() -> None:
        async with centre(tmp_path, prof, links=("beidou", "sms")) as c:
            (frame,) = c.frames(KIT, 1, [(1, report("一次"))])
            assert len(await c.send(frame)) == 1
            for link in ("beidou", "sms", "beidou"):  # the same bytes again, by any link
                assert await c.send(frame, link) == []
            assert c.refusals() == Counter(replay=3)
            assert await c.copies(KIT, 1) == 1

    run(main())


def test_a_replay_older_than_the_window_is_refused_as_stale(tmp_path: Path, prof: str) -> None:
    async def main() -> None:
        async with centre(tmp_path, prof) as c:
            (old,) = c.frames(KIT, 10, [(1, report("旧"))])
            (new,) = c.frames(KIT, 10 + c.state.width + 1, [(2, report("新"))])
            assert len(await c.send(new)) == 1
            assert await c.send(old) == []
            assert c.refusals() == Counter(stale=1)
            assert await c.copies(KIT, 1) == 0

    run(main())


def test_a_p0_sent_over_every_link_at_once_is_stored_once(tmp_path: Path, prof: str) -> None:
    """Three links, three message sequences 1,500 apart, arriving newest first."""

    async def main() -> None:
        links = ("beidou", "sms", "mesh")
        async with centre(tmp_path, prof, links=links) as c:
            sos = compact.sos_example()
            copies = [c.frames(KIT, 5000 - 1500 * i, [(compact.SOS_SEQ, sos)])[0] for i in range(3)]
            for frame, link in zip(copies, links, strict=True):
                assert len(await c.send(frame, link)) == 1  # each copy acknowledged
            assert await c.copies(KIT, compact.SOS_SEQ) == 3
            assert c.refusals() == Counter()

    run(main())


def test_frames_of_a_revoked_kit_are_refused(tmp_path: Path, prof: str) -> None:
    async def main() -> None:
        async with centre(tmp_path, prof) as c:
            (before,) = c.frames(OTHER, 1, [(1, report("吊销前"))])
            assert len(await c.send(before)) == 1
            assert c.state.revoke(OTHER, "lost in the flood")
            for seq in (2, 3):
                (frame,) = c.frames(OTHER, seq, [(seq, report("吊销后"))])
                assert await c.send(frame) == []
            assert c.refusals() == Counter(revoked=2)
            assert [await c.copies(OTHER, s) for s in (1, 2, 3)] == [1, 0, 0]
            assert [r[1] for r in c.state.audit_rows("revoke")] == ["revoked"]

    run(main())


def test_frames_of_a_kit_that_was_never_enrolled_are_refused(tmp_path: Path, prof: str) -> None:
    async def main() -> None:
        async with centre(tmp_path, prof) as c:
            for seq in (1, 2, 3, 4):
                (frame,) = c.frames(STRANGER, seq, [(seq, report("我是谁"))])
                assert await c.send(frame) == []
            assert c.refusals() == Counter({"unknown-kit": 4})
            assert await c.store.item(STRANGER, 1) is None
            assert {r[0] for r in c.state.audit_rows("frame-refused")} == {STRANGER}

    run(main())


def test_a_downgrade_to_the_other_profile_is_refused(tmp_path: Path, prof: str) -> None:
    other = next(p for p in PROFILES if p != prof)

    async def main() -> None:
        async with centre(tmp_path, prof) as c:
            downgraded = kit_end(KIT, other, tmp_path / "other.sqlite3")
            try:
                payload = compact.pack_items([(1, report("降级"))])
                (frame,) = fragment(KIT, 1, payload, MTU_BEIDOU, sealer=downgraded)
                assert await c.send(frame) == []
            finally:
                downgraded.state.close()
            assert c.refusals() == Counter(forged=1)
            assert await c.copies(KIT, 1) == 0

    run(main())


def test_truncated_oversized_and_cut_ciphertexts_are_refused(tmp_path: Path, prof: str) -> None:
    async def main() -> None:
        async with centre(tmp_path, prof) as c:
            (frame,) = c.frames(KIT, 1, [(1, report("截断" * 10))])
            bad = [
                frame[:10],  # shorter than a header and a tag
                frame[:-3],  # the tag cut short: the last bytes read as tag
                frame[: len(frame) - TAG_BYTES - 4] + frame[-TAG_BYTES:],  # ciphertext cut
                frame + bytes(1751 - len(frame)),  # over the largest narrow frame
                frame + b"\x00",  # one byte appended
            ]
            for raw in bad:
                assert await c.send(raw) == []
            assert c.refusals() == Counter(malformed=2, forged=3)
            assert await c.copies(KIT, 1) == 0
            assert len(await c.send(frame)) == 1  # the service keeps running

    run(main())


def test_a_centre_frame_sent_back_to_the_centre_is_refused(tmp_path: Path, prof: str) -> None:
    async def main() -> None:
        async with centre(tmp_path, prof) as c:
            (frame,) = c.frames(KIT, 1, [(1, report("回声"))])
            (ack,) = await c.send(frame)
            assert await c.send(ack) == []
            assert c.refusals() == Counter({"wrong-direction": 1})

    run(main())


def test_the_kit_refuses_replayed_forged_and_foreign_orders_and_acks(
    tmp_path: Path, prof: str
) -> None:
    async def main() -> None:
        async with centre(tmp_path, prof) as c:
            kit = c.kits[KIT]
            order = pack_order(Order(41, "", "撤离到高地"))

            def down(kit_id: int, seq: int, sealer: object) -> bytes:
                (raw,) = fragment(
                    kit_id,
                    seq,
                    order,
                    MTU_BEIDOU,
                    ftype=FrameType.ORDER,
                    downlink=True,
                    sealer=sealer,  # type: ignore[arg-type]
                )
                return raw

            sealed = down(KIT, 3, c.security)
            (frame,) = c.frames(KIT, 1, [(1, report("收到"))])
            (ack,) = await c.send(frame)
            forged = down(KIT, 4, None)  # unsealed, zero tag
            foreign = down(OTHER, 5, c.security)  # another kit's order
            taken = refused = 0
            for raw in (sealed, ack, sealed, ack, forged, foreign):
                try:
                    got = decode_frame(raw, sealer=kit)
                    stale = kit.fresh(got)
                    if stale is not None:
                        raise stale
                    taken += 1
                except BadFrame as err:
                    kit.refuse(err, kit_id=KIT, link="beidou", size=len(raw))
                    refused += 1
            assert (taken, refused) == (2, 4)
            assert kit.refused == Counter({"replay": 2, "forged": 1, "wrong-kit": 1})
            rows = kit.state.audit_rows("frame-refused")
            assert len(rows) == refused and kit.state.verify_chain() is None

    run(main())


def test_a_kit_enrolled_with_a_degenerate_key_is_refused_not_crashed(
    tmp_path: Path, prof: str
) -> None:
    async def main() -> None:
        async with centre(tmp_path, prof) as c:
            bad = bytes(64) if prof == "default" else bytes(128)
            c.security._kits[OTHER] = Enrolled(profile(prof), bad)
            (frame,) = c.frames(OTHER, 1, [(1, report("零"))])
            assert await c.send(frame) == []
            assert c.refusals() == Counter({"bad-key": 1})

    run(main())
