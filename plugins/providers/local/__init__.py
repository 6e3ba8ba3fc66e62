"""The `local` provider: a droplet is a process group on this machine, bound to its own
loopback address 127.A.B.N (or, as root, living in a network namespace of its own).

The account directory (config `dir`) plays the cloud account (`account`). A droplet owns
`droplets/<name>-<id>/` (0700): `droplet.json` (id, name, size, address, tags, mesh),
`user_data` (0600) and `console.log`; powering it on runs the configured launcher on that
directory in a session of its own (`machine`). Snapshots are copies of that directory
(`snapshots`), volumes are directories attached to one droplet at a time (`volumes`), the
reserved entry address is bookkeeping or a route (`addresses`), and the fault drills of
`meshctl chaos` hurt droplets as real machines get hurt (`drills`).

What a local droplet runs outside its process group, containers of the machine's shared
engine, is told to follow its machine through the context's power hook: this plugin knows no
runtime.
"""

from __future__ import annotations

import asyncio
import builtins
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from plugins.fs import atomic_write
from plugins.providers import (
    DropletRecord,
    DropletStatus,
    Fence,
    Provider,
    ProviderContext,
    ProviderError,
    SnapshotNotFound,
    SnapshotRecord,
)
from plugins.providers.local import addresses, netns, snapshots, volumes
from plugins.providers.local.account import (
    USER_DATA_FILE,
    Account,
    AccountStore,
    DropletState,
    new_state,
    write_spec,
)
from plugins.providers.local.drills import LocalDrills
from plugins.providers.local.machine import Launch, Machines
from plugins.providers.local.settings import check_droplet_args, check_size, parse_settings
from plugins.providers.local.volumes import LocalVolumes


class LocalProvider(LocalVolumes):
    """Droplets as process groups on loopback addresses; see the module docstring."""

    name = "local"
    resize_powers_off = False  # a local droplet's size is a label

    def __init__(
        self,
        ctx: ProviderContext,
        *,
        root: Path,
        launcher: list[str],
        block: str | None,
        network: str = "loopback",
        volumes_dir: Path | None = None,
    ) -> None:
        self._mesh = ctx.mesh
        self._log = ctx.logger
        self._root = root
        self._volumes_dir = volumes_dir or root / "volumes"
        self._netns = network == "netns"
        self._on_power = ctx.on_power
        self._account = AccountStore(root, block, lambda: addresses.pick_block(self._netns))
        self._machines = Machines(launcher, self._netns)
        self._drills = LocalDrills(
            self._account, self._machines, ctx.on_power, self._netns, ctx.logger
        )

    # --- droplets --------------------------------------------------------------------------

    async def create(
        self, name: str, size: str, *, tags: Sequence[str], user_data: str, fence: Fence | None
    ) -> DropletRecord:
        action = f"create droplet {name!r}"
        check_droplet_args(action, name, size, tags)
        launch = await asyncio.to_thread(
            self._account.transact,
            lambda account, _: self._create_locked(account, action, name, size, tags, user_data),
            "create",
            None,
            fence,
        )
        await self._machines.started(self._account, action, launch)
        self._log.info(
            "Droplet created. id=%s name=%s address=%s pgid=%s fence=%s",
            launch.state.id,
            name,
            launch.state.address,
            launch.state.pgid,
            fence,
        )
        return await asyncio.to_thread(launch.state.record)

    async def list(self, tag: str | None = None) -> builtins.list[DropletRecord]:
        account = await asyncio.to_thread(self._account.read)
        if account is None:
            return []
        states = [s for s in account.droplets.values() if tag is None or tag in s.tags]
        return await asyncio.to_thread(lambda: [state.record() for state in states])

    async def get(self, droplet_id: str) -> DropletRecord:
        state = await asyncio.to_thread(self._account.state, droplet_id, "get")
        return await asyncio.to_thread(state.record)

    async def power_off(self, droplet_id: str, *, fence: Fence | None) -> None:
        await asyncio.to_thread(
            self._account.transact, self._power_off_locked, "power_off", droplet_id, fence
        )
        self._log.info("Droplet powered off. id=%s fence=%s", droplet_id, fence)

    async def power_on(self, droplet_id: str, *, fence: Fence | None) -> None:
        launch = await asyncio.to_thread(
            self._account.transact, self._power_on_locked, "power_on", droplet_id, fence
        )
        if launch is not None:
            await self._machines.started(self._account, f"power on droplet {droplet_id}", launch)
            self._log.info(
                "Droplet powered on. id=%s pgid=%s fence=%s", droplet_id, launch.state.pgid, fence
            )

    async def resize(self, droplet_id: str, size: str, *, fence: Fence | None) -> None:
        check_size(f"resize droplet {droplet_id}", size)

        def change(account: Account, state: DropletState | None) -> None:
            assert state is not None
            state.size = size
            write_spec(state, self._mesh)

        await asyncio.to_thread(self._account.transact, change, "resize", droplet_id, fence)
        self._log.info("Droplet resized. id=%s size=%s fence=%s", droplet_id, size, fence)

    async def set_user_data(self, droplet_id: str, user_data: str) -> None:
        def change(account: Account, state: DropletState | None) -> None:
            assert state is not None
            atomic_write(Path(state.dir) / USER_DATA_FILE, user_data.encode(), 0o600)

        await asyncio.to_thread(self._account.transact, change, "set_user_data", droplet_id, None)

    async def rebuild(
        self,
        droplet_id: str,
        *,
        fence: Fence | None,
        snapshot_id: str | None = None,
        user_data: str | None = None,
    ) -> DropletRecord:
        """A new droplet in the old one's place: same name, size, tags, address and user data
        (`user_data` instead, when given); its directory a copy of the snapshot's (allocations
        and the JetStream store come back at boot) or, without one, only its user data (the
        base image); the old one killed and destroyed."""
        action = f"rebuild droplet {droplet_id}"

        def locked(account: Account, state: DropletState | None) -> Launch:
            return self._rebuild_locked(account, action, state, snapshot_id, user_data)

        launch = await asyncio.to_thread(
            self._account.transact, locked, "rebuild", droplet_id, fence
        )
        await self._machines.started(self._account, action, launch)
        new = launch.state
        self._log.info(
            "Droplet rebuilt. old=%s id=%s name=%s fence=%s", droplet_id, new.id, new.name, fence
        )
        return await asyncio.to_thread(new.record)

    async def destroy(self, droplet_id: str, *, fence: Fence | None) -> None:
        await asyncio.to_thread(
            self._account.transact, self._destroy_locked, "destroy", droplet_id, fence
        )
        self._log.info("Droplet destroyed. id=%s fence=%s", droplet_id, fence)

    async def close(self) -> None:
        # Nothing to release: droplets keep running, and each reaper thread ends by itself
        # when its launcher exits (they are daemon threads, so they never hold the caller up).
        return None

    # --- snapshots -------------------------------------------------------------------------

    async def snapshot(self, droplet_id: str, name: str, *, fence: Fence | None) -> SnapshotRecord:
        """A copy of the droplet's directory as it is now (`snapshots`)."""
        record = await snapshots.take(self._account, droplet_id, name, fence)
        self._log.info(
            "Droplet snapshotted. id=%s snapshot=%s fence=%s", droplet_id, record.id, fence
        )
        return record

    async def list_snapshots(self) -> builtins.list[SnapshotRecord]:
        account = await asyncio.to_thread(self._account.read)
        found = account.snapshots.values() if account else []
        return sorted((snapshots.record(s) for s in found), key=lambda r: r.created_at)

    async def delete_snapshot(self, snapshot_id: str, *, fence: Fence | None) -> None:
        await asyncio.to_thread(
            self._account.transact,
            lambda account, _: snapshots.delete(account, snapshot_id),
            "delete_snapshot",
            None,
            fence,
        )
        self._log.info("Snapshot deleted. id=%s fence=%s", snapshot_id, fence)

    # --- the reserved entry address --------------------------------------------------------

    async def reserve_address(self) -> str:
        return await asyncio.to_thread(
            self._account.transact,
            lambda account, _: addresses.reserve(account, self._netns),
            "reserve_address",
            None,
            None,
        )

    async def assign_reserved_address(
        self, address: str, droplet_id: str, *, fence: Fence | None
    ) -> None:
        """Bookkeeping, fenced like a droplet action: on loopback any process could listen on
        the address, so the holder's load balancer is what actually moves it."""
        await asyncio.to_thread(
            self._account.transact,
            lambda account, state: addresses.assign(
                self._account, account, _present(state), address, fence, self._netns
            ),
            "assign_reserved_address",
            droplet_id,
            None,  # checked against the address's own fence, not the droplet's
        )
        self._log.info(
            "Reserved address assigned. address=%s id=%s fence=%s", address, droplet_id, fence
        )

    # --- drills (`Drills`) -----------------------------------------------------------------

    async def crash(self, droplet_id: str) -> None:
        await self._drills.crash(droplet_id)

    async def pause(self, droplet_id: str, *, resume: bool = False) -> None:
        await self._drills.pause(droplet_id, resume=resume)

    async def partition(self, droplet_id: str, peers: Sequence[str] = ()) -> None:
        await self._drills.partition(droplet_id, peers)

    async def lose(self, droplet_id: str, probability: float) -> None:
        await self._drills.lose(droplet_id, probability)

    async def heal(self, droplet_id: str) -> None:
        await self._drills.heal(droplet_id)

    # --- changes under the account lock (worker threads) -----------------------------------

    def _create_locked(
        self,
        account: Account,
        action: str,
        name: str,
        size: str,
        tags: Sequence[str],
        user_data: str,
    ) -> Launch:
        for other in account.droplets.values():
            if other.name == name:
                raise ProviderError(action, f"droplet {other.id} already has this name")
        address = account.free_address()
        if address is None:
            raise ProviderError(action, f"every address of block {account.block} is in use")
        state = new_state(account, self._root, name, size, address, tags, None)

        def prepare(directory: Path) -> None:
            directory.mkdir(mode=0o700, parents=True)
            atomic_write(directory / USER_DATA_FILE, user_data.encode(), 0o600)

        return self._launch_new(account, action, state, prepare)

    def _power_off_locked(self, account: Account, state: DropletState | None) -> None:
        state = _present(state)
        self._machines.kill(f"power off droplet {state.id}", state)
        self._power(state, "kill")  # a machine that is off runs nothing
        state.status = DropletStatus.OFF

    def _power_on_locked(self, account: Account, state: DropletState | None) -> Launch | None:
        state = _present(state)
        if state.running():
            return None
        return self._machines.spawn(f"power on droplet {state.id}", state)

    def _rebuild_locked(
        self,
        account: Account,
        action: str,
        old: DropletState | None,
        snapshot_id: str | None,
        user_data: str | None,
    ) -> Launch:
        old = _present(old)
        snapshot = account.snapshots.get(snapshot_id) if snapshot_id is not None else None
        if snapshot_id is not None and snapshot is None:
            raise SnapshotNotFound(action, snapshot_id)
        self._machines.kill(action, old)
        self._power(old, "kill")
        state = new_state(
            account, self._root, old.name, old.size, old.address, old.tags, old.fences
        )

        def prepare(directory: Path) -> None:
            image = Path(snapshot["dir"]) if snapshot is not None else None
            snapshots.disk_from(image, directory, Path(old.dir) / USER_DATA_FILE, user_data)
            # A new machine is a new network attachment: whatever cut the old one off is gone.
            self._detach(account, old)

        launch = self._launch_new(account, action, state, prepare)
        shutil.rmtree(old.dir, ignore_errors=True)
        del account.droplets[old.id]
        volumes.detach_all(account, old.id)
        return launch

    def _launch_new(
        self,
        account: Account,
        action: str,
        state: DropletState,
        prepare: Callable[[Path], None],
    ) -> Launch:
        """Make the new droplet's directory (`prepare`), cable it and power it on; undone
        whole if any of it fails."""
        directory = Path(state.dir)
        try:
            prepare(directory)
            write_spec(state, self._mesh)
            self._machines.attach(account, state)
            launch = self._machines.spawn(action, state)
        except BaseException:
            self._detach(account, state)
            shutil.rmtree(directory, ignore_errors=True)
            raise
        account.droplets[state.id] = state
        return launch

    def _destroy_locked(self, account: Account, state: DropletState | None) -> None:
        state = _present(state)
        self._machines.kill(f"destroy droplet {state.id}", state)
        self._power(state, "remove")  # a destroyed droplet runs nothing
        self._detach(account, state)
        shutil.rmtree(state.dir, ignore_errors=True)
        del account.droplets[state.id]
        volumes.detach_all(account, state.id)
        if self._netns and not account.droplets:
            netns.remove_bridge(netns.Layout(account.block))

    # --- helpers ---------------------------------------------------------------------------

    def _power(self, state: DropletState, event: str) -> None:
        if self._on_power is not None:
            self._on_power(state.name, state.user_data(), event)

    def _detach(self, account: Account, state: DropletState) -> None:
        for problem in self._machines.detach(account, state):
            self._log.warning("Namespace not removed. droplet=%s error=%s", state.id, problem)


def _present(state: DropletState | None) -> DropletState:
    """The droplet a change acts on, which `transact` has checked exists."""
    assert state is not None
    return state


def create(ctx: ProviderContext) -> LocalProvider:
    """The plugin factory; its settings are described in `settings`."""
    found = parse_settings(ctx)
    return LocalProvider(
        ctx,
        root=found.root,
        launcher=found.launcher,
        block=found.block,
        network=found.network,
        volumes_dir=found.volumes_dir(ctx.mesh),
    )


_typed_factory: Callable[[ProviderContext], Provider] = create  # mypy checks the Protocol
