"""The gateway loop remembers where a kit is only from frames that passed the checks."""

from __future__ import annotations

import asyncio
from typing import cast

from hygiene import run

from centre.frames import FrameGateway
from centre.pump import answer


class Gateway:
    """Stands in for FrameGateway.handle: frames starting with b"ok" are a kit's, sealed."""

    def __init__(self) -> None:
        self.authentic: int | None = None

    async def handle(self, data: bytes, *, via: str | None = None) -> list[bytes]:
        self.authentic = 7 if data.startswith(b"ok") else None
        return [b"ack"] if self.authentic else []


def test_a_forged_frame_does_not_redirect_the_kits_answers() -> None:
    async def main() -> tuple[dict[int, str], list[tuple[str, list[bytes]]]]:
        inbox: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        kits: dict[int, str] = {}
        sent: list[tuple[str, list[bytes]]] = []
        task = asyncio.create_task(
            answer(
                cast(FrameGateway, Gateway()),
                inbox,
                kits,
                lambda a, f: sent.append((a, f)),
            )
        )
        await inbox.put(("kit-address", b"ok frame"))
        await inbox.put(("stranger", b"forged frame claiming kit 7"))
        while not inbox.empty():
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return kits, sent

    kits, sent = run(main())
    assert kits == {7: "kit-address"}
    assert sent == [("kit-address", [b"ack"])]
