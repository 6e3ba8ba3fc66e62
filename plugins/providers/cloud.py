"""What only a cloud provider does (DigitalOcean): who may reach the mesh's droplets, and the
account's objects the mesh made beside them. Used by `meshctl up`, `firewall` and `down`;
providers without it (local) have nothing to open or give back."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable


@runtime_checkable
class CloudAccess(Protocol):
    """Optional ability: who may reach the droplets of a cloud account (DigitalOcean): the
    SSH keys put on new droplets and the mesh's firewall, SSH open to administrators only."""

    async def ensure_ssh_key(self, name: str, public_key: str) -> str:
        """Upload the key unless the account has it; its fingerprint."""
        ...

    async def ensure_firewall(self, tag: str, admins: Sequence[str]) -> str:
        """The mesh's firewall on the droplets tagged `tag`, made or rewritten; its id."""
        ...

    async def firewall_admins(self) -> list[str]:
        """The addresses SSH is open to."""
        ...

    async def change_firewall_admins(
        self, tag: str, add: Sequence[str] = (), remove: Sequence[str] = ()
    ) -> list[str]:
        """Open SSH to `add`, close it to `remove`; the addresses it is open to afterwards."""
        ...

    async def remove_firewall(self) -> bool:
        """Delete the mesh's firewall; whether there was one."""
        ...

    async def reserved_address_of(self, droplet_id: str) -> str | None:
        """The reserved address pointing at the droplet, if one does."""
        ...

    async def release_reserved_address(self, address: str) -> bool:
        """Give the reserved address back to the cloud; whether the account had it."""
        ...
