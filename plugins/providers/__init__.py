"""The provider interface: how the mesh creates, powers and destroys its droplets.

A provider plugin (`local`, `digitalocean`) implements `Provider`, picked by name with
`load_provider` (imported lazily from `PROVIDERS`). What crosses this seam: `DropletRecord`
(one droplet, in DigitalOcean's words) and `ProviderError` and its kinds; optional abilities
(volumes, snapshots, ...) are Protocols of their own.

Every action a leader causes carries its `Fence` (its role and the lease revision it took the
role at) as the keyword-only `fence`; a provider refuses an action whose revision is lower
than one it has already seen from the same role for that droplet (`StaleFence`), so a deposed
leader cannot undo its successor's work. Roles are compared only with themselves: the holder of
one role legitimately acts on a droplet after another role's newer holder did. `fence=None`
is an operator's action and is never refused for its fence.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol, cast, runtime_checkable

from protocol.errors import MeshError

PROVIDERS: dict[str, str] = {
    "digitalocean": "plugins.providers.digitalocean:create",
    "local": "plugins.providers.local:create",
}
"""Built-in providers: name -> `module:factory`; the factory takes a `ProviderContext`."""


class DropletStatus(StrEnum):
    """A droplet's power state, in DigitalOcean's words."""

    NEW = "new"
    ACTIVE = "active"
    OFF = "off"


@dataclass(frozen=True, slots=True)
class DropletRecord:
    """What a provider knows of one droplet: `id` is the provider's id (it changes when a
    droplet is replaced; `name` does not), `address` the address the mesh reaches it on (a
    private one where it has one), `public_address` the one the operator reaches it on
    (DigitalOcean's public address; "" where `address` is both), `created_at` a Unix time."""

    id: str
    name: str
    size: str
    address: str
    status: DropletStatus
    tags: tuple[str, ...]
    created_at: float
    public_address: str = ""


@dataclass(frozen=True, slots=True)
class Fence:
    """The fencing token of a leader's action: its role and the lease revision of its term."""

    role: str
    revision: int

    def __str__(self) -> str:
        return f"{self.role}@{self.revision}"


@dataclass(frozen=True, slots=True)
class SnapshotRecord:
    """A snapshot the provider keeps of a droplet: `droplet_id` is the droplet it was taken
    of (gone, maybe), `created_at` a Unix time, `size_gb` what it is billed for."""

    id: str
    name: str
    droplet_id: str
    created_at: float
    size_gb: float


class ProviderError(MeshError):
    """A provider could not do what was asked: `action` is what was being done ("create
    droplet 'web1'"), `reason` what went wrong."""

    def __init__(self, action: str, reason: str) -> None:
        self.action = action
        self.reason = reason
        super().__init__(f"{action}: {reason}")


class DropletNotFound(ProviderError, KeyError):
    """No droplet has id `droplet_id` (DigitalOcean's 404). After a destroy, this means done."""

    def __init__(self, action: str, droplet_id: str) -> None:
        self.droplet_id = droplet_id
        super().__init__(action, f"no droplet with id {droplet_id!r}")

    __str__ = Exception.__str__  # KeyError would quote the message


class StaleFence(ProviderError):
    """An action carried `fence`, older than the revision `seen` from the same role for that
    droplet already: the caller's lease is no longer the newest, so it must not act."""

    def __init__(self, action: str, fence: Fence, seen: int) -> None:
        self.fence = fence
        self.seen = seen
        super().__init__(action, f"stale fence {fence}: {fence.role} fence {seen} was already seen")


class DropletStartError(ProviderError):
    """A droplet was created or powered on but did not come up. It stays, powered off, under
    `droplet_id`; `console` holds the last lines of its console output."""

    def __init__(self, action: str, droplet_id: str, console: str) -> None:
        self.droplet_id = droplet_id
        self.console = console
        super().__init__(
            action,
            f"droplet {droplet_id} stopped at once and is left powered off; console: "
            f"{console or '(empty)'}",
        )


class ProviderConfigError(MeshError, ValueError):
    """A provider's configuration is wrong: `provider` names it, `reason` says what is wrong."""

    def __init__(self, provider: str, reason: str) -> None:
        self.provider = provider
        self.reason = reason
        super().__init__(f"configure provider {provider!r}: {reason}")


class UnknownProviderError(ProviderConfigError, LookupError):
    """No provider has this name; `known` lists the names there are."""

    def __init__(self, provider: str, known: list[str]) -> None:
        self.known = known
        super().__init__(provider, f"no such provider; known providers: {', '.join(known)}")


def _default_logger() -> logging.Logger:
    return logging.getLogger(__name__)


# Told (blocking, in the provider's thread) when a machine loses power, freezes, thaws or is
# destroyed: `(droplet name, user data, "kill" | "pause" | "unpause" | "remove")`. What runs
# outside a local droplet's process group (the shared engine's containers) must follow it.
PowerHook = Callable[[str, str, str], None] | None


class FenceBook(Protocol):
    """The newest fence each role showed a provider whose cloud knows no fences (DigitalOcean),
    per resource, shared by the mesh's agents (a KV bucket written by compare-and-set)."""

    async def admit(self, resource: str, fence: Fence, action: str) -> None:
        """Record `fence` as its role's newest on `resource`; StaleFence if a newer one was."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ProviderContext:
    """What of the agent a provider gets: the mesh's name, its config section, a logger, the power
    hook, the fence book (clouds without fences), the mesh secrets held here (read when needed)."""

    mesh: str
    config: dict[str, Any] = field(default_factory=dict)
    logger: logging.Logger = field(default_factory=_default_logger)
    on_power: PowerHook = None
    fences: FenceBook | None = None
    secrets: Callable[[str], bytes | None] = field(default=lambda _: None, repr=False)


class Provider(Protocol):
    """Creates, powers and destroys the droplets of one account."""

    name: str
    resize_powers_off: bool  # a resized droplet is off meanwhile (its agent too)

    async def create(
        self, name: str, size: str, *, tags: Sequence[str], user_data: str, fence: Fence | None
    ) -> DropletRecord:
        """Create and start a droplet called `name`; refuse a name that is taken."""
        ...

    async def list(self, tag: str | None = None) -> list[DropletRecord]:
        """Every droplet of the account (only those tagged `tag` if given), status refreshed."""
        ...

    async def get(self, droplet_id: str) -> DropletRecord:
        """One droplet, status refreshed; raise DropletNotFound if there is none."""
        ...

    async def power_off(self, droplet_id: str, *, fence: Fence | None) -> None:
        """Cut the power (no graceful shutdown: a fenced-off droplet must not linger).
        Idempotent."""
        ...

    async def power_on(self, droplet_id: str, *, fence: Fence | None) -> None:
        """Start a powered-off droplet again, with the same address and disk. Idempotent."""
        ...

    async def resize(self, droplet_id: str, size: str, *, fence: Fence | None) -> None:
        """Give the droplet another size."""
        ...

    async def destroy(self, droplet_id: str, *, fence: Fence | None) -> None:
        """Power off and delete the droplet; DropletNotFound if it is already gone."""
        ...

    async def close(self) -> None:
        """Release resources. Droplets keep running. Idempotent."""
        ...


@runtime_checkable
class UserDataWriter(Protocol):
    """Optional ability: replace a droplet's user_data after creation. `meshctl up` needs it
    to tell the first droplets each other's addresses, which exist only once they do."""

    async def set_user_data(self, droplet_id: str, user_data: str) -> None: ...


@runtime_checkable
class Rebuilder(Protocol):
    """Optional ability: replace a dead droplet by a new one with the same name, size, tags,
    address and user_data (or `user_data` when given), started from `snapshot_id`
    (DigitalOcean: a droplet created from the snapshot image; local: a copy of the snapshot's
    directory) or, without one, from the base image (the mesh then deploys everything onto
    it). The old one is powered off first and destroyed."""

    async def rebuild(
        self,
        droplet_id: str,
        *,
        fence: Fence | None,
        snapshot_id: str | None = None,
        user_data: str | None = None,
    ) -> DropletRecord:
        """The new droplet's record; refuse (StaleFence) a fence older than the droplet's and
        raise SnapshotNotFound for a snapshot that is gone."""
        ...


class SnapshotNotFound(ProviderError, KeyError):
    """No snapshot has id `snapshot_id`. After a delete, this means done."""

    def __init__(self, action: str, snapshot_id: str) -> None:
        self.snapshot_id = snapshot_id
        super().__init__(action, f"no snapshot with id {snapshot_id!r}")

    __str__ = Exception.__str__  # KeyError would quote the message


@runtime_checkable
class Snapshotter(Protocol):
    """Optional ability: snapshots of running droplets (DigitalOcean: droplet action
    `snapshot`; local: a copy of the droplet's directory, its JetStream store included)."""

    async def snapshot(self, droplet_id: str, name: str, *, fence: Fence | None) -> SnapshotRecord:
        """Snapshot the droplet as it is now; it keeps running."""
        ...

    async def list_snapshots(self) -> list[SnapshotRecord]:
        """Every droplet snapshot of the account."""
        ...

    async def delete_snapshot(self, snapshot_id: str, *, fence: Fence | None) -> None:
        """Delete a snapshot; SnapshotNotFound if it is already gone."""
        ...


@dataclass(frozen=True, slots=True)
class VolumeRecord:
    """A block storage volume: `droplet_id` is the droplet it is attached to (None: none)."""

    id: str
    name: str
    size_gb: int
    droplet_id: str | None
    created_at: float


class VolumeNotFound(ProviderError, KeyError):
    """No volume has id `volume_id`. After a delete, this means done."""

    def __init__(self, action: str, volume_id: str) -> None:
        self.volume_id = volume_id
        super().__init__(action, f"no volume with id {volume_id!r}")

    __str__ = Exception.__str__  # KeyError would quote the message


class VolumeInUse(ProviderError):
    """The volume is attached to droplet `droplet_id`: a volume is never attached to two
    droplets, and one that is attached is not deleted."""

    def __init__(self, action: str, droplet_id: str) -> None:
        self.droplet_id = droplet_id
        super().__init__(action, f"the volume is attached to droplet {droplet_id}")


@runtime_checkable
class Volumes(Protocol):
    """Optional ability: block storage that outlives its droplet (DigitalOcean Volumes;
    local: a directory the account attaches to one droplet at a time). Datastores keep their
    data on one, so a droplet's replacement finds every committed row (docs/backups.md)."""

    def mount_path(self, name: str) -> Path:
        """Where the volume called `name` is, on the droplet it is attached to."""
        ...

    async def mount(self, name: str) -> None:
        """Make the attached volume usable at `mount_path` (on its droplet; idempotent)."""
        ...

    async def create_volume(self, name: str, size_gb: int, *, fence: Fence | None) -> VolumeRecord:
        """A new detached volume; refuse a name that is taken."""
        ...

    async def list_volumes(self) -> list[VolumeRecord]:
        """Every volume of the account."""
        ...

    async def attach_volume(
        self, volume_id: str, droplet_id: str, *, fence: Fence | None
    ) -> VolumeRecord:
        """Attach it to the droplet (done if it is already); VolumeInUse if another has it."""
        ...

    async def detach_volume(self, volume_id: str, *, fence: Fence | None) -> VolumeRecord:
        """Detach it from whichever droplet has it. Idempotent."""
        ...

    async def resize_volume(
        self, volume_id: str, size_gb: int, *, fence: Fence | None
    ) -> VolumeRecord:
        """Grow it (volumes never shrink)."""
        ...

    async def delete_volume(self, volume_id: str, *, fence: Fence | None) -> None:
        """Delete it and its data; VolumeInUse while attached, VolumeNotFound if gone."""
        ...


@runtime_checkable
class ReservedAddresses(Protocol):
    """Optional ability: the mesh's one public entry address, moved from droplet to droplet
    (DigitalOcean's reserved IP; an extra loopback address for the local provider)."""

    async def reserve_address(self) -> str:
        """The account's reserved address for this mesh, created on first use."""
        ...

    async def assign_reserved_address(
        self, address: str, droplet_id: str, *, fence: Fence | None
    ) -> None:
        """Point `address` at the droplet; refuse (StaleFence) a fence older than the last
        assignment's."""
        ...


@runtime_checkable
class Drills(Protocol):
    """Optional ability: fault drills (`meshctl chaos`), for providers whose machines a drill
    may hurt (local droplets)."""

    async def crash(self, droplet_id: str) -> None:
        """The droplet dies as a machine does: its processes and containers killed; the
        account still says it is on."""
        ...

    async def pause(self, droplet_id: str, *, resume: bool = False) -> None:
        """Freeze (SIGSTOP) or thaw (SIGCONT) the droplet's processes and containers."""
        ...

    async def partition(self, droplet_id: str, peers: Sequence[str] = ()) -> None:
        """Cut the droplet off the network, or off `peers` (addresses) only; its processes
        keep running."""
        ...

    async def lose(self, droplet_id: str, probability: float) -> None:
        """Drop that share of the packets the droplet receives."""
        ...

    async def heal(self, droplet_id: str) -> None:
        """Undo `partition` and `lose`."""
        ...


def load_provider(name: str, ctx: ProviderContext) -> Provider:
    """Import the provider called `name` and create it; raise UnknownProviderError if none is."""
    target = PROVIDERS.get(name)
    if target is None:
        raise UnknownProviderError(name, sorted(PROVIDERS))
    module_name, _, attribute = target.partition(":")
    module = importlib.import_module(module_name)
    factory = cast(Callable[[ProviderContext], Provider], getattr(module, attribute))
    return factory(ctx)
