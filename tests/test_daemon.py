"""The edge daemon: durable accepts over RPC, group commit, one writer, safe mode."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import cbor2
import pytest
import zmq.asyncio
from conftest import endpoint, start_edge, stop

from config.loader import parse
from edge import bus, topics
from edge.client import EdgeClient, checked
from edge.errors import BadItem
from edge.item import new_item, to_wire


def test_accepted_item_is_on_disk_when_the_answer_arrives(
    edge: EdgeClient, kit_config: Path
) -> None:
    item = new_item("sos", source="test", text="救命")
    answer = edge.accept(item)
    db = sqlite3.connect(kit_config.parent / "data" / "outbox.sqlite3")
    row = db.execute(
        "SELECT seq, kind, priority FROM items WHERE uid = ?", (item.uid.bytes,)
    ).fetchone()
    db.close()
    assert row == (answer["seq"], "sos", 0)
    assert edge.get(answer["seq"])["state"] == "ACCEPTED"


def test_concurrent_accepts_are_group_committed(edge: EdgeClient, kit_config: Path) -> None:
    ep = endpoint(kit_config)

    def file(n: int) -> None:
        with EdgeClient(ep) as c:
            for i in range(n):
                c.accept(new_item("message", source="t", text=str(i)))

    threads = [threading.Thread(target=file, args=(50,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    status = edge.status()
    assert status["queued"]["P1"] == 400
    # Fewer commits than accepts proves concurrent accepts shared transactions (fsyncs).
    assert status["commits"] < 400


def test_bad_requests_get_precise_errors_and_change_nothing(edge: EdgeClient) -> None:
    edge.accept(new_item("situation", source="t", text="ok"))
    wire = to_wire(new_item("situation", source="t", text="x"))
    wire[7] = [95.0, 0.0, None, None]
    with pytest.raises(BadItem) as err:
        checked(edge.call({"op": "accept", "item": wire}))
    assert str(err.value) == "纬度超出范围（-90…90）：95.0 / latitude out of range (-90..90): 95.0"
    assert edge.call({"op": "launch"})["error"]["en"] == "unknown op 'launch'"
    assert edge.call({"op": "accept"})["error"]["en"] == "item is not a map"
    assert edge.call([1, 2])["error"]["en"] == "request is not a map"  # type: ignore[arg-type]
    assert edge.status()["queued"]["P1"] == 1


def test_raw_garbage_on_the_socket_is_answered_not_fatal(edge: EdgeClient) -> None:
    import zmq

    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(edge.endpoint)
    sock.send(b"\xff\x00garbage")
    assert sock.poll(5000)
    assert cbor2.loads(sock.recv())["error"]["en"] == "request is not valid CBOR"
    sock.close(0)
    assert edge.status()["ok"]


def test_second_edge_on_the_same_store_refuses_to_start(edge: EdgeClient, kit_config: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "edge.cli", "edge", "--config", str(kit_config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 1
    assert "another edge daemon is using" in proc.stderr


def test_broken_config_starts_in_safe_mode_and_still_accepts(tmp_path: Path) -> None:
    config = tmp_path / "kit.toml"
    config.write_text(
        '[kit]\nid = 1\nname = "x"\ncolour = "red"\n[paths]\ndata_dir = "data"\nruntime_dir = "run"\n'
    )
    proc = start_edge(config)
    try:
        with EdgeClient(endpoint(config)) as client:
            status = client.status()
            assert status["safe_mode"] is True
            assert status["config_errors"] == ["kit.colour: unknown key (typo?)"]
            assert client.accept(new_item("sos", source="btn"))["state"] == "ACCEPTED"
    finally:
        stop(proc)


def test_states_published_on_the_bus_show_in_kit_status(edge: EdgeClient, kit_config: Path) -> None:
    config = parse(kit_config)

    async def publish() -> None:
        ctx = zmq.asyncio.Context()
        pub = bus.Publisher(ctx, config.endpoint(bus.PUB_SOCKET))
        try:
            # PUB/SUB: messages before the subscription has propagated are lost; repeat.
            for _ in range(20):
                await pub.publish(
                    topics.DEVICE_STATE,
                    topics.DeviceState(
                        "beidou", "beidou", True, "卡号 0241636", "card 0241636", {"mtu": 77}
                    ),
                )
                await pub.publish(topics.LINK_STATE, topics.LinkState("vsat", "ip", False, 0, 0.6))
                await pub.publish(
                    topics.BATTERY_LEVEL, topics.BatteryLevel(41.0, 12.1, False, hours_left=6.5)
                )
                await asyncio.sleep(0.05)
        finally:
            pub.close()
            ctx.term()

    asyncio.run(publish())
    status = edge.status()
    assert status["devices"]["beidou"]["detail"] == {"mtu": 77}
    assert status["devices"]["beidou"]["online"] is True
    assert status["links"]["vsat"]["online"] is False
    assert status["battery"]["hours_left"] == 6.5
    table = subprocess.run(
        [sys.executable, "-m", "edge.cli", "status", "--config", str(kit_config)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "beidou" in table and "卡号 0241636 / card 0241636" in table
    assert "vsat" in table and "离线 / down" in table
    assert "41 %" in table and "about 6.5 h left" in table
