"""The centre's own Meshtastic node as a frame gateway: the real ``meshtastic`` library
(through the kit's MeshRadio) against the simulated radio; a kit's sealed frame heard on
the mesh is stored once and acknowledged back to the node it came from."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

from aiohttp import web
from hygiene import nothing_left_open, run, until  # noqa: F401

from centre.app import GATEWAYS, make_app
from centre.config import CentreConfig, GatewayEntry, KitEntry
from centre.keys import STORE
from centre.msggw import mesh_config
from edge.item import Kind, new_item
from mesh.radio import PRIVATE_APP, MeshRadio
from security import simkeys
from security.channel import KitSecurity
from security.state import SecurityState
from sim.meshradio import Member, SimulatedRadio
from uplink import compact
from uplink.frames import FrameType, decode_frame, fragment

KIT, STRANGER = 7, 99
HANDHELD = 0x2222_0007  # the node that carried the kit's frame to the centre


def sealer(tmp: Path, kit_id: int) -> KitSecurity:
    return KitSecurity(
        KIT,
        simkeys.kit_pair(kit_id, "default"),
        simkeys.centre_pair("default").public,
        SecurityState(tmp / f"kit-{kit_id}.sqlite3"),
    )


def test_a_frame_heard_by_the_centres_node_is_stored_once_and_acknowledged_to_its_node(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        radio = SimulatedRadio(members=[Member(HANDHELD, "前方中继", "FWD")])
        await radio.start()
        config = CentreConfig(
            listen="127.0.0.1:0",
            data_dir=tmp_path / "centre",
            kits=(
                KitEntry(
                    kit_id=KIT,
                    name="一队",
                    public_key=simkeys.kit_pair(KIT, "default").public_text,
                ),
            ),
            gateways=(
                GatewayEntry(
                    name="mesh",
                    kind="mesh",
                    device=f"tcp:127.0.0.1:{radio.port}",
                    mtu=233,
                    missing_after_s=5,
                ),
            ),
        )
        simkeys.install_centre(config.keys_dir, "default")
        runner = web.AppRunner(make_app(config))
        await runner.setup()
        kit, stranger = sealer(tmp_path, KIT), sealer(tmp_path, STRANGER)
        try:
            node = runner.app[GATEWAYS].terminals["mesh"].device
            assert isinstance(node, MeshRadio)
            await until(lambda: node.online, timeout=15)
            item = new_item(Kind.SOS, source="mesh", text="被困 3 人", created_ms=1_750_000_000_000)
            payload = compact.pack_items([(1, item)])
            (good,) = fragment(KIT, 1, payload, 233, sealer=kit)
            (forged,) = fragment(KIT, 2, payload, 233, sealer=stranger)
            for frame in (good, good, forged):  # the same frame again is a replay
                radio._emit(HANDHELD, PRIVATE_APP, frame, to=radio.num)
            store = runner.app[STORE]

            def acks() -> list[bytes]:
                return [
                    bytes(p.decoded.payload)
                    for p in radio.sent
                    if p.decoded.portnum == PRIVATE_APP and p.to == HANDHELD
                ]

            await until(lambda: len(acks()) >= 1, timeout=15)
            stored = await store.item(KIT, 1)
            assert stored is not None and stored.item.kind is Kind.SOS and stored.copies == 1
            assert stored.link == "mesh"
            answer = decode_frame(acks()[0], sealer=kit)
            assert answer.downlink and answer.kit_id == KIT and answer.type is FrameType.ACK
            await asyncio.sleep(0.3)
            assert await store.item(KIT, 2) is None  # the forged frame stored nothing
            gateway = runner.app[GATEWAYS].by_name["mesh"]
            assert gateway.security is not None
            assert +gateway.security.refused == Counter(forged=1, replay=1)
        finally:
            await runner.cleanup()
            await radio.close()
            kit.state.close()
            stranger.state.close()

    run(main(), 60)


def test_the_node_is_a_serial_port_or_a_networked_node() -> None:
    assert mesh_config("tcp:10.0.0.5:4403").model_dump(include={"connection", "host", "port"}) == {
        "connection": "tcp",
        "host": "10.0.0.5",
        "port": 4403,
    }
    assert mesh_config("/dev/ttyACM0").connection == "serial"
