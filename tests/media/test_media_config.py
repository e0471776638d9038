"""The [media] config section: strict, bounded, names and ports unique with a precise path."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from media.config import MediaConfig, VideoSource


def test_defaults_record_nothing_and_every_field_is_titled_in_both_languages() -> None:
    assert MediaConfig().sources == []
    for model in (MediaConfig, VideoSource):
        for name, field in model.model_fields.items():
            assert field.title and " / " in field.title, name
            assert field.description, name


def test_unknown_keys_and_out_of_range_segments_are_refused() -> None:
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        MediaConfig.model_validate({"quota": 1})
    with pytest.raises(ValidationError, match="less than or equal to 60"):
        VideoSource(name="d", kind="udp", listen="0.0.0.0:5600", segment_s=61)


def test_a_name_used_twice_is_reported_with_both_positions() -> None:
    sources = [
        {"name": "drone", "kind": "rtmp"},
        {"name": "cam", "kind": "udp", "listen": "0.0.0.0:5600"},
        {"name": "drone", "kind": "udp", "listen": "0.0.0.0:5601"},
    ]
    with pytest.raises(ValidationError) as caught:
        MediaConfig.model_validate({"sources": sources})
    (error,) = caught.value.errors()
    assert error["loc"] == ("sources",)
    assert error["msg"] == "Value error, sources[2].name 'drone' is already used by sources[0]"


def test_two_listeners_on_one_port_are_refused() -> None:
    sources = [{"name": "a", "kind": "rtmp"}, {"name": "b", "kind": "rtmp"}]
    with pytest.raises(ValidationError, match=r"sources\[1\].listen '0.0.0.0:1935': port"):
        MediaConfig.model_validate({"sources": sources})


def test_rtsp_needs_a_url_and_only_rtsp_takes_one() -> None:
    with pytest.raises(ValidationError, match="an rtsp source needs url"):
        VideoSource(name="d", kind="rtsp")
    with pytest.raises(ValidationError, match="url is only for rtsp sources"):
        VideoSource(name="d", kind="udp", url="rtsp://x/y/z")
    with pytest.raises(ValidationError, match="expected host:port"):
        VideoSource(name="d", kind="udp", listen="5600")
