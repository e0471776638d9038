"""`kit sim`: the three scenarios at high speed, the whole system really started.

Each run starts the real centre and `kit run` for every kit, with the simulated devices on
ptys and sockets around them, plays the scenario, and checks the summary against the
centre's store: every P0 and P1 stored once, every P0 inside the first link window that
could carry it, and no process left running afterwards.
"""

from __future__ import annotations

import asyncio
import io
import os
import sqlite3
from pathlib import Path

import pytest
import zmq.asyncio
from hygiene import nothing_left_open  # noqa: F401

from sim.kitsim import Summary, run_sim
from sim.scenario import ScenarioError, find_scenario, load_scenario


def processes_under(root: Path) -> list[str]:
    """Command lines of live processes that mention ``root`` (a kit's or the centre's)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
        except (OSError, IndexError):
            continue
        if str(root) in cmd and state != "Z":
            found.append(cmd)
    return found


TAIL_REAL_S = 8.0  # items filed this close to the end of a run may still be in flight

RUNS = {  # scenario: (speed, scenario seconds to play)
    "first-hours": (120.0, 6300.0),
    "night-flood": (60.0, None),
    "aftershock": (40.0, None),
}


@pytest.fixture(scope="module")
def played(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Summary, Path]]:
    """The three scenarios, played at the same time (their kits mostly wait on links)."""
    roots = {name: tmp_path_factory.mktemp(name) for name in RUNS}
    outs = {name: io.StringIO() for name in RUNS}

    async def main() -> list[Summary]:
        return await asyncio.gather(
            *(
                run_sim(
                    load_scenario(find_scenario(name)),
                    roots[name],
                    speed=speed,
                    duration=duration,
                    out=outs[name],
                )
                for name, (speed, duration) in RUNS.items()
            )
        )

    try:
        summaries = asyncio.run(main())
    finally:
        # The edge clients' process-wide ZeroMQ context keeps its I/O threads open.
        zmq.asyncio.Context.instance().term()
    for name, root in roots.items():
        assert processes_under(root) == [], f"{name}: processes left running"
        assert "演练小结 / summary" in outs[name].getvalue(), outs[name].getvalue()[-3000:]
    return {name: (s, roots[name]) for name, s in zip(RUNS, summaries, strict=True)}


def stored_once(root: Path, kit_id: int) -> dict[int, int]:
    """priority -> items the centre stored for ``kit_id`` (its key is (kit, seq))."""
    db = sqlite3.connect(root / "centre" / "centre.sqlite3")
    try:
        rows = db.execute(
            "SELECT priority, COUNT(*), COUNT(DISTINCT seq) FROM items WHERE kit_id = ?"
            " GROUP BY priority",
            (kit_id,),
        ).fetchall()
    finally:
        db.close()
    for _, n, distinct in rows:
        assert n == distinct
    return {p: n for p, n, _ in rows}


def check_life_and_reports(summary: Summary, root: Path) -> None:
    for kit in summary.kits:
        for cls in ("P0", "P1"):
            f = kit.classes[cls]
            assert f.delivered == f.filed, (kit.name, cls, f)
        assert kit.p0_late == [], kit
        stored = stored_once(root, kit.kit_id)
        assert stored.get(0, 0) == kit.classes["P0"].filed
        assert stored.get(1, 0) == kit.classes["P1"].filed


def test_first_hours_beidou_first_then_tiantong_then_vsat(
    played: dict[str, tuple[Summary, Path]],
) -> None:
    summary, root = played["first-hours"]
    check_life_and_reports(summary, root)
    (kit,) = summary.kits
    assert kit.classes["P0"].filed == 2 and kit.classes["P1"].filed >= 3
    # Before the Tiantong terminal was up only Beidou could carry the first SOS.
    assert kit.links["beidou"].messages >= 1 and kit.links["beidou"].cost > 0
    assert kit.links["vsat"].bytes > 0 and kit.links["tiantong"].bytes > 0
    # Photos: thumbnail (P3) and full (P4) both reached the centre once a link allowed.
    assert kit.classes["P3"].delivered >= 2 and kit.classes["P4"].delivered >= 2
    # Team positions over the mesh are tracks; the newest of each member arrives.
    assert kit.classes["P2"].delivered > 0
    assert [e["do"] for e in summary.events][:2] == ["sos", "report"]


def test_night_flood_valley_kit_reaches_the_centre_through_the_ridge_kit(
    played: dict[str, tuple[Summary, Path]],
) -> None:
    summary, root = played["night-flood"]
    check_life_and_reports(summary, root)
    _, valley = summary.kits
    assert valley.classes["P0"].filed == 2  # one of them during the rain fade
    assert valley.links["lora"].messages > 0
    db = sqlite3.connect(root / "centre" / "centre.sqlite3")
    try:
        links = {row[0] for row in db.execute("SELECT link FROM items WHERE kit_id = 102")}
    finally:
        db.close()
    assert links == {"mesh"}  # the valley kit has no other way out


def test_aftershock_reboots_lose_nothing_and_store_nothing_twice(
    played: dict[str, tuple[Summary, Path]],
) -> None:
    summary, root = played["aftershock"]
    check_life_and_reports(summary, root)
    (kit,) = summary.kits
    assert kit.reboots == 2
    # Every item the kit accepted before or between the reboots reached the centre once
    # (tracks may be superseded by a newer position instead). What the kit filed in the
    # last moments may still be on its way when the run stops: at most a few real seconds'
    # worth (a busy CI machine delays the uplink, not the scenario clock).
    in_flight_s = TAIL_REAL_S * summary.speed
    for name, f in kit.classes.items():
        assert f.delivered + f.superseded + f.pending == f.filed, (name, f)
        if name != "P4":  # a video segment takes longer than the tail to upload
            assert f.pending == 0 or f.pending_oldest_s <= in_flight_s, (name, f)
    assert kit.classes["P4"].delivered >= 1  # drone segments recorded and uploaded


def test_a_broken_scenario_file_lists_every_mistake(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        'duration = -1\n[[kits]]\nname = "a"\n[[links]]\nname = "x"\nkind = "ip"\nrate = 1\n'
        'kits = ["b"]\n[[events]]\nat = 1\ndo = "dance"\n'
    )
    with pytest.raises(ScenarioError) as err:
        load_scenario(bad)
    paths = {p for p, _ in err.value.problems}
    assert {"duration", "events[0].do"} <= paths, err.value.problems


def test_a_scenario_naming_an_unknown_kit_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[[kits]]\nname = "a"\n[[links]]\nname = "x"\nkind = "ip"\nrate = 1\nkits = ["b"]\n'
    )
    with pytest.raises(ScenarioError, match="names kit 'b'"):
        load_scenario(bad)


@pytest.mark.parametrize("name", ["first-hours", "night-flood", "aftershock", "flapping"])
def test_every_shipped_scenario_loads(name: str) -> None:
    scenario = load_scenario(find_scenario(name))
    assert scenario.world_kits()
