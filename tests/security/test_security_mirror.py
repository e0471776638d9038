"""The kit's audit log mirrored to the centre: batches filed through the real edge daemon,
a crash between its accept and the cursor's move files nothing twice, and `kit centre audit
--kit N` verifies the centre's copy — intact, a tampered row named, a missing batch named
as a gap. Audit items are bulk (P4): after P0–P3, never on a narrow link."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import zmq
import zmq.asyncio
from conftest import endpoint, start_edge, stop
from hygiene import nothing_left_open, run  # noqa: F401
from hypothesis import given, settings
from hypothesis import strategies as st

from centre.config import load_config
from centre.store import Store
from config.loader import render_default
from edge.client import AsyncEdgeClient
from edge.item import Item, Kind, Priority, decode, encode
from security import mirror
from security.cli import KIT_STATE, centre_command
from security.mirror import AuditMirror, BadAudit, Batch, batch_item, parse_batch, verify
from security.state import AuditRow, SecurityState, clip, row_hash
from uplink.scheduler import Candidate, LinkView, plan

zmq.asyncio.Context.instance().socket(zmq.REQ).close(linger=0)
zmq.Context.instance().socket(zmq.REQ).close(linger=0)

KIT = 7
ROWS = 30
PER_BATCH = 8  # → batches of rows 1-8, 9-16, 17-24, 25-30


def kit_root(root: Path) -> Path:
    config = root / "kit.toml"
    config.write_text(render_default(KIT, "测试套件", str(root / "data"), str(root / "run")))
    return config


def fill(state: SecurityState) -> None:
    for i in range(ROWS):
        if i % 3 == 0:
            state.audit("frame-refused", KIT, "forged", f"a frame ({60 + i} bytes): 标签不符", "bd")
        elif i % 3 == 1:
            state.audit("login", KIT, "wrong-password", f"user 'admin{i}' from 10.0.0.9", "web")
        else:
            state.audit("config-changed", KIT, "saved", f"admin@10.0.0.9 changed 1: k{i}", "web")


class PowerCut(Exception):
    pass


async def mirror_all(root: Path, config: Path) -> list[Item]:
    """File every row (one crash between an accept and the cursor's move), then read what
    the kit's outbox holds for the centre: the audit items, each once."""
    state = SecurityState(root / "data" / KIT_STATE)
    edge = AsyncEdgeClient(endpoint(config), timeout_s=10.0)
    cursor = root / "data" / mirror.CURSOR
    try:
        fill(state)
        first = AuditMirror(state, KIT, cursor, batch_rows=PER_BATCH, every_s=1e9)
        assert await first.step(edge) == PER_BATCH
        assert await first.step(edge) == PER_BATCH
        # The third batch is accepted, then the power goes before the cursor moves.
        first.filed = lambda rows: (_ for _ in ()).throw(PowerCut())  # type: ignore[method-assign]
        with pytest.raises(PowerCut):
            await first.step(edge)
        state.audit("login", KIT, "ok", "user 'admin' from 10.0.0.9", "web")  # meanwhile
        again = AuditMirror(state, KIT, cursor, batch_rows=PER_BATCH, every_s=1e9)
        assert again.cursor.pending == (17, 24)
        assert await again.step(edge) == PER_BATCH  # the same rows, the same item
        assert await again.step(edge) == 0  # 7 rows wait for a full batch or the timer
        assert await again.step(edge, force=True) == ROWS + 1 - 3 * PER_BATCH
        assert await again.step(edge, force=True) == 0
        answer = await edge.call(
            {"op": "next", "classes": [int(Priority.P4)], "max_size": 2**62, "limit": 64}
        )
        return [decode(body) for _, _, _, _, body in answer["items"]]
    finally:
        await edge.close()
        state.close()


def centre_toml(root: Path) -> Path:
    path = root / "centre.toml"
    path.write_text(
        f'data_dir = "{root}"\nlisten = "127.0.0.1:0"\n[[kits]]\nkit_id = {KIT}\nname = "一队"\n',
        encoding="utf-8",
    )
    return path


async def deliver(config: Path, items: list[Item]) -> None:
    """What the uplink and the centre's ingest do with each item over an IP link."""
    centre = load_config(config)
    store = await Store.open(centre.db_path, centre.media_dir)
    try:
        await store.sync_kits(centre.kits)
        await store.ingest(KIT, list(enumerate(items, start=1)), link="vsat")
    finally:
        await store.close()


async def tamper(config: Path, sql: str, args: tuple[object, ...]) -> None:
    centre = load_config(config)
    store = await Store.open(centre.db_path, centre.media_dir)
    try:
        async with store.transaction() as db:
            await db.execute(sql, args)
    finally:
        await store.close()


def audit(config: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = centre_command(["audit", "--kit", str(KIT), "--config", str(config)])
    return code, capsys.readouterr().out


@pytest.fixture(scope="module")
def filed(tmp_path_factory: pytest.TempPathFactory) -> list[Item]:
    """The kit's side, once for the module: its outbox's audit items."""
    root = tmp_path_factory.mktemp("kit")
    config = kit_root(root)
    proc = start_edge(config)
    try:
        return run(mirror_all(root, config))
    finally:
        stop(proc)


@pytest.fixture
def mirrored(filed: list[Item], tmp_path: Path) -> tuple[Path, list[Item]]:
    """A centre of its own per test, with every audit item delivered."""
    centre = centre_toml(tmp_path)
    run(deliver(centre, filed))
    return centre, filed


def test_the_mirror_files_batches_and_a_crash_after_the_accept_doubles_nothing(
    mirrored: tuple[Path, list[Item]], capsys: pytest.CaptureFixture[str]
) -> None:
    centre, items = mirrored
    assert len(items) == 4 and len({i.uid for i in items}) == 4
    assert all(i.kind is Kind.AUDIT and i.priority is Priority.P4 for i in items)
    spans = [(b.rows[0].id, b.rows[-1].id) for b in (parse_batch(0, i.text) for i in items)]
    assert spans == [(1, 8), (9, 16), (17, 24), (25, 31)]
    code, out = audit(centre, capsys)
    assert code == 0, out
    assert out.splitlines()[-1] == (
        f"套件 {KIT} 镜像审计链完整 / kit {KIT} mirrored chain intact: 31 rows (1–31) in 4 batches"
    )
    lines = out.splitlines()[:-1]
    assert len(lines) == 31 and lines[0].startswith("1\t") and lines[-1].startswith("31\t")
    assert lines[-1].endswith("\tlogin\tok\tweb\tuser 'admin' from 10.0.0.9")
    code = centre_command(["audit", "--kit", str(KIT), "--json", "--config", str(centre)])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["intact"] and report["gaps"] == [] and len(report["rows"]) == 31


def test_a_row_tampered_in_the_centres_store_is_named(
    mirrored: tuple[Path, list[Item]], capsys: pytest.CaptureFixture[str]
) -> None:
    centre, items = mirrored
    second = items[1]
    envelope = json.loads(second.text or "")
    envelope["rows"][3][5] = "nothing happened here"  # row 12's detail, rewritten
    text = json.dumps(envelope, ensure_ascii=False, separators=(",", ":"))
    forged = dataclasses.replace(second, text=text)
    run(
        tamper(
            centre,
            "UPDATE items SET body = ?, text = ? WHERE kit_id = ? AND seq = 2",
            (encode(forged), text, KIT),
        )
    )
    code, out = audit(centre, capsys)
    assert code == 1
    assert out.splitlines()[-1] == (
        "第 12 行被篡改 / row 12 tampered: 内容与其哈希不符 / its content does not match its hash"
    )


def test_a_batch_missing_at_the_centre_is_a_gap_not_tampering(
    mirrored: tuple[Path, list[Item]], capsys: pytest.CaptureFixture[str]
) -> None:
    centre, _ = mirrored
    run(tamper(centre, "DELETE FROM items WHERE kit_id = ? AND seq = 3", (KIT,)))
    code, out = audit(centre, capsys)
    assert code == 3
    assert out.splitlines()[-2:] == [
        "缺少第 17–24 行（有批次未到，不是篡改）/ gap: rows 17-24 missing "
        "(a batch not received), not tampering",
        f"套件 {KIT} 已到的各行完整 / kit {KIT}: the rows that arrived verify: "
        "23 rows (1–31) in 3 batches",
    ]


def rows(n: int, state: SecurityState) -> list[AuditRow]:
    for i in range(n):
        state.audit("frame-refused", KIT, "replay", f"frame {i}", "beidou")
    return state.rows_after(0, n)


def test_a_copy_of_a_batch_counts_once_and_a_different_copy_of_a_row_is_tampering(
    tmp_path: Path,
) -> None:
    state = SecurityState(tmp_path / "s.sqlite3")
    try:
        chain = rows(6, state)
    finally:
        state.close()
    a, b = Batch(1, tuple(chain[:3])), Batch(2, tuple(chain[3:]))
    twice = verify([a, b, Batch(3, a.rows)])
    assert twice.intact and len(twice.rows) == 6 and twice.batches == 3
    other = dataclasses.replace(chain[1], reason="ok")
    forked = verify([a, b, Batch(3, (chain[0], other, chain[2]))])
    assert forked.bad_row == 2


def test_audit_goes_after_p0_to_p3_and_never_on_beidou_sms_or_a_slow_ip_link() -> None:
    audit = Candidate(1, mirror.PRIORITY, 1800, "kit")
    report = Candidate(2, Priority.P1, 200, "web")
    track = Candidate(3, Priority.P2, 60, "kit")
    every = frozenset(Priority)

    def link(name: str, narrow: bool, rate: float) -> LinkView:
        return LinkView(name, narrow, True, every, 2**20, 4096, rate)

    assert plan(link("beidou", True, 10), [audit]) == []
    assert plan(link("sms", True, 20), [audit]) == []
    assert plan(link("tiantong-data", False, 1200), [audit]) == []
    vsat = link("vsat", False, 200_000)
    assert plan(vsat, [audit, report, track]) == [report, track]
    assert plan(vsat, [audit]) == [audit]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(0, 4e9, allow_nan=False),
            st.text(max_size=40),
            st.none() | st.integers(0, 65535),
            st.text(max_size=120),
            st.text(max_size=480),
            st.text(max_size=64),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_a_batch_item_parses_back_to_exactly_its_rows(
    fields: list[tuple[float, str, int | None, str, str, str]],
) -> None:
    chain: list[AuditRow] = []
    prev = bytes(32)
    for i, (at, event, kit_id, reason, detail, link) in enumerate(fields, start=1):
        values = (at, clip(event, 40), kit_id, clip(reason, 120), clip(detail, 480), clip(link, 64))
        digest = row_hash(prev, values)
        chain.append(AuditRow(i, *values, prev, digest))
        prev = digest
    fit = mirror.fitting(KIT, chain)
    assert fit >= 1
    item = batch_item(KIT, chain[:fit])
    assert decode(encode(item)) == item  # a valid item, its text within the limit
    batch = parse_batch(5, item.text)
    assert batch.rows == tuple(chain[:fit])
    assert verify([batch]).intact
    assert batch_item(KIT, chain[:fit]) == item  # filed again: the very same item


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300) | st.builds(json.dumps, st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=8) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=30,
)))  # fmt: skip
def test_any_other_text_is_refused_as_not_an_audit_batch(text: str) -> None:
    try:
        batch = parse_batch(9, text)
    except BadAudit as err:
        assert "item 9 is not an audit batch" in err.en
    else:
        assert batch.rows and all(len(r.hash) == 32 for r in batch.rows)
