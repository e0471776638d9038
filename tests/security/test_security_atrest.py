"""Report bodies encrypted at rest in the outbox, and shredded by a key wipe."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import cbor2
import pytest
from conftest import endpoint, start_edge, stop
from hygiene import no_thread_left, run  # noqa: F401 (autouse; ZeroMQ closes fds lazily)
from hypothesis import given, settings
from hypothesis import strategies as st

from config.loader import parse
from edge import atrest
from edge.atrest import AtRest, BodyUnreadable, DataKeyError, KeysWiped, parse_header
from edge.client import EdgeClient, EdgeRefused
from edge.item import Priority, from_wire, new_item
from edge.store import Store
from security.cli import wipe_kit_keys

PROFILES = ["default", "national"]
SECRET = "三号楼倒塌，五人被困 / building 3 collapsed"
ALL = list(Priority)


def raw_bytes(db: Path) -> bytes:
    """Everything SQLite keeps on disk for the store: the file and its WAL."""
    wal = Path(f"{db}-wal")
    return db.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


def encrypted(tmp: Path, profile: str) -> AtRest:
    return AtRest(tmp / "keys", profile, encrypt=True)


@pytest.mark.parametrize("profile", PROFILES)
def test_a_report_is_not_in_the_outbox_file_but_reads_back_through_the_store(
    tmp_path: Path, profile: str
) -> None:
    db = tmp_path / "outbox.sqlite3"
    item = new_item("situation", source="web", text=SECRET)

    async def main() -> None:
        store = await Store.open(db, encrypted(tmp_path, profile))
        try:
            accepted = await store.accept(item)
            assert (await store.accept(item)).new is False  # a client's retry: same item
            ready = await store.next_items(ALL, 2**40)
            assert [q.item for q in ready] == [item]
            assert ready[0].size == len(ready[0].body)  # the plaintext size, for the scheduler
            stored = await store.get(accepted.seq)
            assert stored is not None and stored.item == item
            await store.mark_in_flight([accepted.seq], "vsat")
            assert [q.item for q in await store.in_flight(ALL)] == [item]
            assert SECRET.encode() not in raw_bytes(db)
            assert (
                store.at_rest_status()["cipher"]
                == atrest.CIPHER_NAMES[atrest.PROFILE_CIPHERS[profile]]
            )
        finally:
            await store.close()
        assert SECRET.encode() not in raw_bytes(db)

    run(main())
    key = tmp_path / "keys" / atrest.DATA_KEY
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700


@pytest.mark.parametrize("profile", PROFILES)
def test_a_body_moved_to_another_row_is_refused_and_the_rest_of_the_queue_still_flows(
    tmp_path: Path, profile: str
) -> None:
    db = tmp_path / "outbox.sqlite3"
    items = [new_item("situation", source="web", text=f"报告 {i}") for i in range(3)]

    async def fill() -> list[int]:
        store = await Store.open(db, encrypted(tmp_path, profile))
        try:
            return [(await store.accept(item)).seq for item in items]
        finally:
            await store.close()

    seqs = run(fill())
    raw = sqlite3.connect(db)
    with raw:
        (a,), (b,) = (raw.execute("SELECT body FROM items WHERE seq = ?", (s,)) for s in seqs[:2])
        raw.execute("UPDATE items SET body = ? WHERE seq = ?", (b[0], seqs[0]))
        raw.execute("UPDATE items SET body = ? WHERE seq = ?", (a[0], seqs[1]))
    raw.close()

    async def read() -> None:
        store = await Store.open(db, encrypted(tmp_path, profile))
        try:
            for seq in seqs[:2]:
                with pytest.raises(BodyUnreadable) as refused:
                    await store.get(seq)
                assert str(refused.value) == (
                    f"条目 {seq} 密文校验失败：内容被篡改，或被移到了别的条目 / item {seq}: "
                    "sealed body does not verify: tampered with, or moved from another item"
                )
            assert [q.item for q in await store.next_items(ALL, 2**40)] == items[2:]
            assert store.at_rest_status()["unreadable"] == seqs[:2]
        finally:
            await store.close()

    run(read())


def test_a_store_written_before_encryption_was_on_still_reads(tmp_path: Path) -> None:
    db = tmp_path / "outbox.sqlite3"
    old = new_item("situation", source="web", text="旧的明文报告 / old plaintext report")
    new = new_item("situation", source="web", text=SECRET)

    async def main() -> None:
        store = await Store.open(db)  # as every kit did before this option existed
        try:
            await store.accept(old)
        finally:
            await store.close()
        assert old.text is not None and old.text.encode() in raw_bytes(db)
        store = await Store.open(db, encrypted(tmp_path, "default"))
        try:
            assert (await store.accept(old)).new is False  # the plaintext row still matches
            await store.accept(new)
            assert [q.item for q in await store.next_items(ALL, 2**40)] == [old, new]
            await store.checkpoint()
        finally:
            await store.close()
        assert SECRET.encode() not in raw_bytes(db)
        # Turned off again: sealed rows still open (the key is there), new rows are plain.
        store = await Store.open(db, AtRest(tmp_path / "keys", "default", encrypt=False))
        try:
            assert [q.item for q in await store.next_items(ALL, 2**40)] == [old, new]
        finally:
            await store.close()

    run(main())


def kit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge.cli", *args], capture_output=True, text=True, timeout=60
    )


def wiped_message(store: Path) -> str:
    return (
        "本机密钥已销毁：发件箱中的条目已无法解密，也不再接收新条目。重新启用本机前，"
        f"请运行 kit provision 并删除 {store}"
    )


@pytest.mark.parametrize("profile", PROFILES)
def test_after_wipe_keys_the_bodies_are_gone_and_the_daemon_still_answers_status(
    tmp_path: Path, profile: str
) -> None:
    config = tmp_path / "kit.toml"
    config.write_text(
        '[kit]\nid = 7\nname = "套件 7"\n[paths]\ndata_dir = "data"\nruntime_dir = "run"\n'
        f'[security]\nprofile = "{profile}"\nencrypt_at_rest = true\n'
    )
    db = tmp_path / "data" / "outbox.sqlite3"
    key = tmp_path / "data" / "keys" / atrest.DATA_KEY
    proc = start_edge(config)
    try:
        with EdgeClient(endpoint(config)) as edge:
            seq = edge.accept(new_item("sos", source="web", text=SECRET))["seq"]
            edge.accept(new_item("situation", source="web", text=SECRET))
            ready = edge.call({"op": "next", "classes": [0, 1], "max_size": 2**40, "limit": 8})
            sent = from_wire(cbor2.loads(ready["items"][0][4]))
            assert sent.text == SECRET  # the links get the plaintext
            assert edge.call({"op": "sent", "seqs": [seq], "link": "vsat"})["seqs"] == [seq]
            assert edge.status()["at_rest"]["wiped"] is False
            assert SECRET.encode() not in raw_bytes(db) and key.exists()

            done = kit("wipe-keys", "--yes", "--config", str(config))
            assert done.returncode == 0, done.stderr
            assert not key.exists()

            status = edge.status()["at_rest"]
            assert status["wiped"] is True and status["key_id"] is None
            assert status["message"].startswith(wiped_message(db))
            for request in (
                {"op": "next", "classes": [0, 1], "max_size": 2**40, "limit": 8},
                {"op": "in_flight", "classes": [0, 1], "limit": 8},
            ):
                answer = edge.call(request)
                assert answer["ok"] is False and answer["error"]["type"] == "KeysWiped"
                assert answer["error"]["zh"] == wiped_message(db)
            empty = edge.call({"op": "in_flight", "classes": [4], "limit": 8})
            assert empty == {"ok": True, "items": []}  # nothing to open: power-off still settles
            with pytest.raises(EdgeRefused, match="本机密钥已销毁"):
                edge.accept(new_item("situation", source="web", text="after the wipe"))
            assert edge.get(seq)["state"] == "IN_FLIGHT"  # delivery records, no body
    finally:
        stop(proc)
    # Restarted (systemd would): no new key, no crash loop; status still says why.
    proc = start_edge(config)
    try:
        with EdgeClient(endpoint(config)) as edge:
            assert edge.status()["at_rest"]["message"].startswith(wiped_message(db))
            with pytest.raises(EdgeRefused, match="keys were wiped"):
                edge.accept(new_item("situation", source="web", text="after the restart"))
    finally:
        stop(proc)
    assert not key.exists()
    assert SECRET.encode() not in raw_bytes(db)
    store_rows = sqlite3.connect(db)
    try:
        assert store_rows.execute("SELECT count(*) FROM items").fetchone() == (2,)
    finally:
        store_rows.close()


def test_the_wipe_every_path_calls_overwrites_the_data_key_first(tmp_path: Path) -> None:
    """The web page and the GPIO button call the same function as `kit wipe-keys`."""
    (tmp_path / "kit.toml").write_text(
        '[kit]\nid = 7\nname = "套件 7"\n[paths]\ndata_dir = "data"\nruntime_dir = "run"\n'
        "[security]\nencrypt_at_rest = true\n"
    )
    config = parse(tmp_path / "kit.toml")
    key = config.keys_dir / atrest.DATA_KEY

    async def main() -> None:
        store = await Store.open(config.store_path, AtRest(config.keys_dir, "default", True))
        try:
            await store.accept(new_item("situation", source="web", text=SECRET))
            fd = os.open(key, os.O_RDONLY)  # sees the blocks the wipe overwrites
            try:
                before = os.pread(fd, 4096, 0)
                wiped = await asyncio.to_thread(wipe_kit_keys, config, "GPIO22 button")
                assert os.pread(fd, 4096, 0) != before and len(before) > 32
            finally:
                os.close(fd)
            assert [p.name for p in wiped] == [atrest.DATA_KEY] and not key.exists()
            with pytest.raises(KeysWiped, match="key file wiped while running"):
                await store.next_items(ALL, 2**40)
        finally:
            await store.close()

    run(main())


def test_a_data_key_readable_by_others_is_refused_with_what_to_do(tmp_path: Path) -> None:
    db = tmp_path / "outbox.sqlite3"

    async def main() -> None:
        store = await Store.open(db, encrypted(tmp_path, "default"))
        await store.close()
        os.chmod(tmp_path / "keys" / atrest.DATA_KEY, 0o644)
        store = await Store.open(db, encrypted(tmp_path, "default"))
        try:
            with pytest.raises(DataKeyError, match=r"readable by others .*: chmod 600 it"):
                await store.accept(new_item("situation", source="web", text="x"))
            assert store.at_rest_status()["wiped"] is False
        finally:
            await store.close()

    run(main())


# -- the header parser: outside input (whatever is in the file) ----------------------------


def headerish() -> st.SearchStrategy[bytes]:
    """Random bytes, and bytes that get further into the parser: the magic, a version,
    a cipher number, then anything (truncated anywhere)."""
    prefix = st.sampled_from([b"", b"\xff", b"\xffA", atrest.MAGIC])
    fields = st.tuples(st.sampled_from([0, 1, 2, 255]), st.sampled_from([0, 1, 2, 3, 255]))
    return st.one_of(
        st.binary(max_size=80),
        st.tuples(prefix, st.binary(max_size=60)).map(lambda t: t[0] + t[1]),
        st.tuples(fields, st.binary(max_size=60)).map(lambda t: atrest.MAGIC + bytes(t[0]) + t[1]),
    )


@settings(max_examples=500, deadline=None)
@given(headerish())
def test_any_bytes_parse_as_plaintext_a_header_or_a_precise_error(body: bytes) -> None:
    try:
        header = parse_header(body, 5)
    except BodyUnreadable as err:
        assert body[:1] == b"\xff" and str(err).startswith("条目 5 ")
        return
    if header is None:
        assert body[:1] != b"\xff"
    else:
        assert len(body) >= atrest.OVERHEAD and body.startswith(atrest.MAGIC)


def _sealer(profile: str) -> AtRest:
    """An AtRest holding a fresh key in memory only (the folder is gone at once)."""
    with tempfile.TemporaryDirectory() as tmp:
        at_rest = AtRest(Path(tmp), profile, encrypt=True)
        at_rest.bind(None, Path(tmp) / "outbox.sqlite3")
    return at_rest


SEALERS = {profile: _sealer(profile) for profile in PROFILES}
UID = bytes(range(16))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(PROFILES), st.binary(max_size=40), st.data())
def test_a_truncated_or_altered_sealed_body_never_opens_and_never_crashes(
    profile: str, body: bytes, data: st.DataObject
) -> None:
    at_rest = SEALERS[profile]
    sealed = at_rest.seal(UID, body)
    assert len(sealed) == len(body) + atrest.OVERHEAD and at_rest.open(UID, sealed) == body
    cut = data.draw(st.integers(1, len(sealed) - 1), label="cut")
    with pytest.raises(BodyUnreadable):
        at_rest.open(UID, sealed[:cut])
    bit = data.draw(st.integers(8, len(sealed) * 8 - 1), label="bit")  # the 0xff byte: below
    flipped = bytearray(sealed)
    flipped[bit // 8] ^= 1 << bit % 8
    with pytest.raises(BodyUnreadable):
        at_rest.open(UID, bytes(flipped))
    with pytest.raises(BodyUnreadable):
        at_rest.open(bytes(16), sealed)  # another item's uid
    with pytest.raises(BodyUnreadable, match="sealed under another key"):
        SEALERS["national" if profile == "default" else "default"].open(UID, sealed)
