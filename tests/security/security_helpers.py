"""A centre's frame gateways with real security and a real store, and kits that seal."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from centre.config import KitEntry
from centre.frames import FrameGateway
from centre.store import Store
from edge.item import Item, Kind, new_item
from security import simkeys
from security.channel import CentreSecurity, Enrolled, KitSecurity
from security.profiles import profile
from security.state import SecurityState
from uplink import compact
from uplink.frames import MTU_BEIDOU, fragment

T = TypeVar("T")
PROFILES = ("default", "national")
KIT, OTHER, STRANGER = 7, 8, 99  # enrolled, enrolled (revoked in some tests), never enrolled


def report(text: str) -> Item:
    return new_item(Kind.SITUATION, source="kit", text=text, created_ms=1_750_000_000_000)


def kit_end(kit_id: int, profile_name: str, state: Path) -> KitSecurity:
    """Kit ``kit_id``'s own end (simulation keys), its replay state in ``state``."""
    return KitSecurity(
        kit_id,
        simkeys.kit_pair(kit_id, profile_name),
        simkeys.centre_pair(profile_name).public,
        SecurityState(state),
    )


@dataclass
class Centre:
    store: Store
    security: CentreSecurity
    gateways: dict[str, FrameGateway]
    kits: dict[int, KitSecurity] = field(default_factory=dict)

    @property
    def state(self) -> SecurityState:
        return self.security.state

    def frames(self, kit_id: int, msg_seq: int, entries: list[tuple[int, Item]]) -> list[bytes]:
        payload = compact.pack_items(entries)
        return fragment(kit_id, msg_seq, payload, MTU_BEIDOU, sealer=self.kits[kit_id])

    async def send(self, data: bytes, link: str = "beidou") -> list[bytes]:
        return await self.gateways[link].handle(data)

    async def copies(self, kit_id: int, seq: int) -> int:
        """How many copies of item ``seq`` of ``kit_id`` the centre received (0: none)."""
        item = await self.store.item(kit_id, seq)
        return 0 if item is None else item.copies

    def refusals(self) -> Counter[str]:
        """Refusals as the audit log has them; they must equal the counters."""
        audited = Counter(reason for _, reason, _, _ in self.state.audit_rows("frame-refused"))
        assert audited == +self.security.refused
        assert self.state.verify_chain() is None
        return audited


@asynccontextmanager
async def centre(
    tmp: Path, profile_name: str, *, links: tuple[str, ...] = ("beidou",)
) -> AsyncIterator[Centre]:
    """Kits 7 and 8 enrolled under ``profile_name``; kit 99 has keys but is not enrolled."""
    prof = profile(profile_name)
    enrolled = {k: Enrolled(prof, simkeys.kit_pair(k, profile_name).public) for k in (KIT, OTHER)}
    security = CentreSecurity(
        {profile_name: simkeys.centre_pair(profile_name)},
        enrolled,
        SecurityState(tmp / "security.sqlite3"),
    )
    store = await Store.open(tmp / "c.sqlite3", tmp / "media")
    kits = {k: kit_end(k, profile_name, tmp / f"kit{k}.sqlite3") for k in (KIT, OTHER, STRANGER)}
    try:
        await store.sync_kits(
            [KitEntry(kit_id=KIT, name="一队"), KitEntry(kit_id=OTHER, name="二队")]
        )
        gateways = {
            name: FrameGateway(store, name=name, mtu=MTU_BEIDOU, security=security)
            for name in links
        }
        yield Centre(store, security, gateways, kits)
    finally:
        await store.close()
        security.close()
        for k in kits.values():
            k.state.close()


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 60))
