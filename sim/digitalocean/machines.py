"""What the API's state asks of the machines behind its droplets, and the no-machine kind.

The API (`state`, `actions`) decides *what* happens and *when* on its clock; a `Machines`
makes it real: a droplet's network and mount namespaces, its disk, its sshd, its boot. Calls
come from the API's event loop and must not block it (namespace commands run in threads).
`--api-only` uses `NoMachines`: droplets exist only as records, for unit tests without root.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Networks:
    """The address blocks droplets get addresses from: `<prefix>.<host>` (a /24 each).
    Droplets take hosts 2-199 of `public` and `private`; reserved IPs take 200-249 of
    `public`; `.1` is the machine's own end of each bridge (the API, the metadata service)."""

    public: str = "10.214.1"
    private: str = "10.215.1"

    @property
    def gateway(self) -> str:
        return f"{self.public}.1"

    @property
    def private_gateway(self) -> str:
        return f"{self.private}.1"


@dataclass(frozen=True, slots=True)
class MachineSpec:
    """A droplet as its machine needs it: who it is, where it is, who may log in."""

    id: int
    name: str
    public_ip: str
    private_ip: str
    ssh_keys: tuple[str, ...] = ()  # OpenSSH public key lines, for root's authorized_keys
    user_data: str | None = None  # run once at first boot when it starts with "#!"


@dataclass(frozen=True, slots=True)
class FirewallRule:
    """One rule, its sources (inbound) or destinations (outbound) already resolved to
    addresses: `protocol` tcp|udp|icmp, `ports` "22", "8000-9000", "all" or "" (icmp)."""

    protocol: str
    ports: str
    addresses: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class FirewallPolicy:
    """Everything that applies to one droplet: the union of its firewalls' rules. A droplet
    with no firewall has no policy (everything allowed)."""

    inbound: tuple[FirewallRule, ...] = ()
    outbound: tuple[FirewallRule, ...] = ()


@dataclass(slots=True)
class MachineError(Exception):
    """A machine operation failed: the action that asked errors with this message."""

    message: str
    details: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return self.message


class Machines(Protocol):
    networks: Networks
    metadata_url: str | None  # base URL, ends in "/metadata/v1/"; None without machines

    async def start(self) -> None:
        """Bridges and the metadata service; before any droplet."""

    async def close(self) -> None:
        """Power off every droplet, remove every namespace and bridge made; disks stay."""

    async def create(self, spec: MachineSpec, snapshot_id: int | None) -> None:
        """A new disk (empty, or a copy of the snapshot's), then boot (see `power_on`)."""

    async def power_on(self, droplet_id: int) -> None:
        """Boot: namespaces, disk bound over the droplet's paths, sshd, the boot units."""

    async def power_off(self, droplet_id: int) -> None:
        """Every process of the droplet killed at once (SIGKILL); its disk stays."""

    async def destroy(self, droplet_id: int) -> None:
        """Power off, remove the namespaces and the disk."""

    async def snapshot(self, droplet_id: int, snapshot_id: int) -> float:
        """A copy of the droplet's disk kept as the snapshot; its size in GB (used bytes)."""

    async def delete_snapshot(self, snapshot_id: int) -> None: ...

    async def rebuild(self, droplet_id: int, snapshot_id: int | None) -> None:
        """The disk reset to the snapshot's (or empty for a distribution image), then boot;
        id and addresses stay."""

    async def attach_volume(self, volume_id: str, name: str, droplet_id: int) -> None:
        """The volume's directory appears at `/mnt/<name>` in the droplet (now and after
        every boot until detached)."""

    async def detach_volume(self, volume_id: str, droplet_id: int) -> None: ...

    async def delete_volume(self, volume_id: str) -> None: ...

    async def assign_reserved_ip(self, ip: str, droplet_id: int | None) -> None:
        """Route `ip` (/32) to the droplet, or to nobody with None."""

    async def apply_firewalls(self, policies: dict[int, FirewallPolicy]) -> None:
        """Enforce these policies; droplets not named have no firewall."""


class NoMachines:
    """Droplets without machines (`--api-only`): every operation succeeds at once."""

    def __init__(self, networks: Networks | None = None) -> None:
        self.networks = networks or Networks()
        self.metadata_url: str | None = None

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def create(self, spec: MachineSpec, snapshot_id: int | None) -> None:
        return None

    async def power_on(self, droplet_id: int) -> None:
        return None

    async def power_off(self, droplet_id: int) -> None:
        return None

    async def destroy(self, droplet_id: int) -> None:
        return None

    async def snapshot(self, droplet_id: int, snapshot_id: int) -> float:
        return 1.0

    async def delete_snapshot(self, snapshot_id: int) -> None:
        return None

    async def rebuild(self, droplet_id: int, snapshot_id: int | None) -> None:
        return None

    async def attach_volume(self, volume_id: str, name: str, droplet_id: int) -> None:
        return None

    async def detach_volume(self, volume_id: str, droplet_id: int) -> None:
        return None

    async def delete_volume(self, volume_id: str) -> None:
        return None

    async def assign_reserved_ip(self, ip: str, droplet_id: int | None) -> None:
        return None

    async def apply_firewalls(self, policies: dict[int, FirewallPolicy]) -> None:
        return None
