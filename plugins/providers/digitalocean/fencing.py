"""DigitalOcean knows no fencing tokens: before every call a leader makes that changes a
droplet, a volume or the reserved IP, its fence goes past the mesh's fence book
(`FenceBook.admit`, compare-and-set in the mesh's KV), which refuses a fence older than one
its role already used there (`StaleFence`). The operator's own actions carry no fence."""

from __future__ import annotations

from plugins.providers import Fence, FenceBook, ProviderError


class Fenced:
    _fences: FenceBook | None

    async def _admit(self, resource: str, fence: Fence | None, what: str) -> None:
        if fence is None:
            return
        if self._fences is None:
            raise ProviderError(what, f"fence {fence} cannot be checked: no fence book")
        await self._fences.admit(resource, fence, what)


def volume_resource(volume_id: str) -> str:
    return f"volume-{volume_id}"


def address_resource(address: str) -> str:
    return "ip-" + address.replace(".", "-").replace(":", "-")


def snapshot_resource(snapshot_id: str) -> str:
    return f"snapshot-{snapshot_id}"
