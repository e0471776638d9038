"""The centre's config schema and the ``kit centre`` command (start, serve, stop on SIGTERM)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import cbor2
import pytest
import requests

from centre.app import main
from centre.config import CentreConfig, load_config
from centre.errors import BadCentreConfig

GOOD = """
listen = "127.0.0.1:0"
data_dir = "{data}"

[[kits]]
kit_id = 7
name = "北川一队"
"""


def test_config_loads_from_toml_with_defaults(tmp_path: Path) -> None:
    path = tmp_path / "centre.toml"
    path.write_text(GOOD.format(data=tmp_path / "d"), encoding="utf-8")
    config = load_config(path)
    assert (config.host, config.port) == ("127.0.0.1", 0)
    assert config.max_body_bytes == 1024**2
    assert config.kits[0].name == "北川一队" and config.kits[0].enabled


def test_every_config_error_is_reported_with_its_key_path(tmp_path: Path) -> None:
    path = tmp_path / "centre.toml"
    path.write_text(
        'colour = "red"\nmax_body_bytes = 10\n'
        + GOOD.format(data=tmp_path)
        + '[[kits]]\nkit_id = 70000\nname = "x"\n',
        encoding="utf-8",
    )
    with pytest.raises(BadCentreConfig) as err:
        load_config(path)
    message = err.value.en
    assert "colour: Extra inputs are not permitted" in message
    assert "max_body_bytes: Input should be greater than or equal to 1024" in message
    assert "kits.1.kit_id: Input should be less than or equal to 65535" in message
    assert str(err.value).startswith(f"{path} 配置有误：")


@pytest.mark.parametrize("listen", ["8440", "host:", "host:70000", "a b:1"])
def test_listen_must_be_host_and_port(tmp_path: Path, listen: str) -> None:
    with pytest.raises(ValueError, match="listen address must be HOST:PORT"):
        CentreConfig(listen=listen, data_dir=tmp_path)


def test_duplicate_kit_ids_are_refused(tmp_path: Path) -> None:
    kits = [{"kit_id": 7, "name": "a"}, {"kit_id": 7, "name": "b"}]
    with pytest.raises(ValueError, match=re.escape("kit ids listed more than once: [7]")):
        CentreConfig.model_validate({"data_dir": tmp_path, "kits": kits})


def test_command_without_data_dir_says_so_and_returns_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main([]) == 2
    assert "data_dir: Field required" in capsys.readouterr().err


def test_centre_command_serves_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    path = tmp_path / "centre.toml"
    path.write_text(GOOD.format(data=tmp_path / "d"), encoding="utf-8")
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from centre.app import main; sys.exit(main())",
         "--config", str(path), "--listen", "127.0.0.1:0"],
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        port = re.search(r"listening on \[\('127\.0\.0\.1', (\d+)\)\]", line)
        assert port, line
        resp = requests.get(f"http://127.0.0.1:{port[1]}/v1/acks", headers={"Kit-Id": "7"})
        assert cbor2.loads(resp.content) == {"acks": [], "rejected": [], "orders": []}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert "centre stopping" in proc.stderr.read()
    finally:
        proc.kill()
