"""A key wipe stops the uplink: it lets go of its links and the keys it derived (sealing,
request signing, TLS) and sends nothing more; restarted after the wipe (by `kit run` or
systemd) it idles instead of crash-looping or, worse, sending unsealed."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
import zmq
import zmq.asyncio
from hygiene import nothing_left_open, run  # noqa: F401

from config.loader import load
from security.cli import keys_wiped, wipe_kit_keys
from security.keys import KIT_KEY, KeyFileError, provision
from uplink import process
from uplink.process import WIPED, serve

# The process-wide ZeroMQ contexts are made once here, not inside a test that would own their fds.
zmq.asyncio.Context.instance().socket(zmq.REQ).close(linger=0)
zmq.Context.instance().socket(zmq.REQ).close(linger=0)


def keyed_kit(kit_config: Path, tmp_path: Path) -> Path:
    centre = provision(tmp_path / "centre-keys", "default", "centre-default.key")
    text = kit_config.read_text().replace(
        'centre_public_key = ""', f'centre_public_key = "{centre.public_text}"'
    )
    kit_config.write_text(text)
    provision(load(kit_config).config.keys_dir, "default")
    return kit_config


def wiped_lines(caplog: pytest.LogCaptureFixture) -> int:
    return sum(WIPED in r.getMessage() for r in caplog.records)


def test_a_wipe_stops_the_uplink_and_after_a_restart_it_sends_nothing(
    kit_config: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(process, "WIPE_CHECK_S", 0.05)
    config = load(keyed_kit(kit_config, tmp_path)).config
    caplog.set_level(logging.INFO, logger="uplink")

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(serve(config, stop))
        await asyncio.sleep(0.3)
        assert not task.done() and wiped_lines(caplog) == 0 and not keys_wiped(config)
        assert wipe_kit_keys(config, "test")
        for _ in range(200):
            if wiped_lines(caplog):
                break
            await asyncio.sleep(0.05)
        assert wiped_lines(caplog) == 1 and keys_wiped(config)
        assert not task.done()  # idle until the kit stops, not exiting into a restart loop
        stop.set()
        await task
        # Started again after the wipe: it says so and waits, building no link.
        again = asyncio.Event()
        task = asyncio.create_task(serve(config, again))
        await asyncio.sleep(0.2)
        assert not task.done() and wiped_lines(caplog) == 2
        assert not any("uplink for kit" in r.getMessage() for r in caplog.records[-1:])
        again.set()
        await task

    run(main(), 30)


def test_a_kit_never_provisioned_is_not_taken_for_a_wiped_one(
    kit_config: Path, tmp_path: Path
) -> None:
    config = load(keyed_kit(kit_config, tmp_path)).config
    (config.keys_dir / KIT_KEY).unlink()  # gone, but no wipe in the audit
    assert not keys_wiped(config)
    with pytest.raises(KeyFileError):
        process.build(config, None)  # type: ignore[arg-type]
