"""The web page's pure parts: TOML written back, report forms, key paths, logins, restarts."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from config.loader import parse, render_default
from config.web import tomlw
from config.web.auth import LoginLimiter, Sessions, Users, hash_password, verify_password
from config.web.configform import (
    all_fields,
    build_form,
    changes_from_form,
    processes_for,
    set_path,
    split_path,
)
from config.web.reports import BadReport, parse_form
from config.web.restart import request_restart, take_requests
from config.web.tiles import TileSource, lat_lon_to_tile, tile_to_lat_lon

keys = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12)
scalars = (
    st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=20)
)
values = st.recursive(
    scalars | st.lists(scalars, max_size=4),
    lambda inner: (
        st.dictionaries(keys, inner, max_size=4)
        | st.lists(st.dictionaries(keys, inner, min_size=1, max_size=3), min_size=1, max_size=3)
    ),
    max_leaves=20,
)


@given(st.dictionaries(keys, values, max_size=6))
@settings(max_examples=150, deadline=None)
def test_toml_written_back_reads_back_equal(doc: dict[str, Any]) -> None:
    assert tomllib.loads(tomlw.dumps(doc)) == doc


form_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)


@given(
    st.dictionaries(
        st.sampled_from(
            ["kind", "count", "text", "lat", "lon", "accuracy", "position_source", "x"]
        ),
        form_text | st.sampled_from(["sos", "needs", "30.5", "104", "-91", "1e400", "nan", "7"]),
    )
)
@settings(max_examples=300, deadline=None)
def test_any_report_form_is_taken_or_refused_with_the_field_at_fault(
    fields: dict[str, str],
) -> None:
    try:
        form = parse_form(fields)
    except BadReport as err:
        assert err.field in ("kind", "count", "position", "text") and err.zh and err.en
        return
    assert form.kind.value == fields["kind"].strip()
    if form.position is not None:
        assert -90 <= form.position.lat <= 90 and -180 <= form.position.lon <= 180


def test_a_report_form_names_the_field_at_fault() -> None:
    with pytest.raises(BadReport) as err:
        parse_form({"kind": "sos", "lat": "95", "lon": "104"})
    assert err.value.field == "position"
    assert err.value.en == "latitude out of range (-90..90): 95.0"
    with pytest.raises(BadReport) as err:
        parse_form({"kind": "situation"})
    assert err.value.en == "add a description, a count or a position"
    assert parse_form({"kind": "sos"}).text is None  # an SOS needs nothing else


def test_key_paths_address_the_files_toml() -> None:
    assert split_path("links[2].dial.peer") == ["links", 2, "dial", "peer"]
    raw: dict[str, Any] = {"links": [{"kind": "ip"}, {"kind": "beidou", "rate": 1.0}]}
    set_path(raw, "links[1].rate", 2.5)
    set_path(raw, "web.max_photos", 2)
    set_path(raw, "links[0].budget", None)
    assert raw == {
        "links": [{"kind": "ip"}, {"kind": "beidou", "rate": 2.5}],
        "web": {"max_photos": 2},
    }


def test_the_form_has_every_field_with_its_bounds_and_an_unchanged_form_changes_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "kit.toml"
    path.write_text(render_default(7, "t", "data", "run", "http://127.0.0.1:9"))
    config = parse(path)
    fields = {f.path: f for f in all_fields(build_form(config))}
    assert fields["kit.id"].bounds == "≥ 1, ≤ 65,535"
    assert fields["links[0].rate"].widget == "float"
    assert fields["wifi.passphrase"].widget == "secret"
    assert fields["links[0].classes"].choices == ("P0", "P1", "P2", "P3", "P4")
    assert fields["paths.data_dir"].widget == "readonly"
    form: dict[str, list[str]] = {}
    for f in fields.values():
        if f.widget == "bool":
            form[f.path] = ["on"] if f.value else []
        elif f.widget == "multi":
            form[f.path] = list(f.value)
        elif f.widget == "lines":
            form[f.path] = ["\n".join(f.value)]
        elif f.widget != "secret":
            form[f.path] = ["" if f.value is None else str(f.value)]
    assert changes_from_form(config, form) == []
    changed = changes_from_form(
        config, {**form, "gnss.enabled": [], "wifi.passphrase": ["s3cret-pass"]}
    )
    assert [(c.path, c.old, c.new) for c in changed] == [
        ("gnss.enabled", True, False),
        ("wifi.passphrase", "", "s3cret-pass"),
    ]
    assert changed[1].shown() == ("********", "********")  # the audit never shows a secret


def test_each_section_names_the_processes_that_read_it() -> None:
    assert processes_for(["links[0].rate"]) == ["uplink"]
    assert processes_for(["gnss.source", "mesh.enabled"]) == ["drivers", "mesh"]
    assert processes_for(["web.max_photos"]) == []  # the page applies it at once
    assert processes_for(["kit.name"]) == ["edge", "uplink", "drivers", "mesh", "media", "web"]
    assert processes_for(["wifi.ssid"]) == ["hostapd"]


def test_restart_requests_are_taken_once(tmp_path: Path) -> None:
    assert take_requests(tmp_path) == set()
    request_restart(tmp_path, {"uplink"})
    request_restart(tmp_path, {"mesh", "uplink"})
    assert take_requests(tmp_path) == {"uplink", "mesh"}
    assert take_requests(tmp_path) == set()


def test_passwords_are_scrypt_hashes_and_short_ones_are_refused(tmp_path: Path) -> None:
    stored = hash_password("a long enough password")
    assert stored.startswith("scrypt$16384$8$1$") and "a long enough" not in stored
    assert verify_password("a long enough password", stored)
    assert not verify_password("a long enough passworD", stored)
    users = Users(tmp_path / "users.json")
    with pytest.raises(ValueError, match="a password needs 10-256 characters"):
        users.set("admin", "short")
    assert not users.any()
    users.set("admin", "a long enough password")
    assert (tmp_path / "users.json").stat().st_mode & 0o777 == 0o600
    assert users.check("admin", "a long enough password")
    assert not users.check("root", "a long enough password")


def test_a_session_ends_after_its_idle_time_and_a_lock_forgets_after_success() -> None:
    now = [0.0]
    sessions = Sessions(idle_s=60.0, clock=lambda: now[0])
    token = sessions.start("admin")
    now[0] = 59.0
    assert sessions.get(token) is not None
    now[0] = 120.0
    assert sessions.get(token) is None
    limiter = LoginLimiter(free=3, base_s=2.0, clock=lambda: now[0])
    assert [limiter.failed("a") for _ in range(4)] == [0.0, 0.0, 2.0, 4.0]
    assert limiter.wait_s("b") == 0.0  # per client
    limiter.succeeded("a")
    assert limiter.wait_s("a") == 0.0


def test_the_sample_map_covers_the_demo_area() -> None:
    tiles = TileSource(Path(__file__).resolve().parents[2] / "config" / "web" / "sample.mbtiles")
    try:
        info = tiles.info()
        assert info["sample"] is True and info["center"] == [30.66, 104.06, 14]
        x, y = lat_lon_to_tile(30.66, 104.06, 14)
        tile = tiles.tile(14, int(x), int(y))
        assert tile is not None and tile.startswith(b"\x89PNG")
        assert tiles.tile(14, 0, 0) is None
        assert tiles.tile(40, 0, 0) is None
    finally:
        tiles.close()
    lat, lon = tile_to_lat_lon(x, y, 14)
    assert (lat, lon) == (pytest.approx(30.66), pytest.approx(104.06))
