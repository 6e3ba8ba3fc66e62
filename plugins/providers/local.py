"""The `local` provider: a droplet is a process group on this machine, bound to its own
loopback address 127.A.B.N.

The account directory (config `dir`) plays the cloud account. `account.json` holds the address
block, the next id, the snapshots and every droplet (name, size, address, tags, process group,
directory, highest fence seen from each role); every change to it happens under `fcntl.flock`
on `account.lock` and is written atomically, because the agents of several local droplets use
one account from several processes at once. `actions.log` records each action, done or
refused, one JSON line each.

A droplet owns `droplets/<name>-<id>/` (0700): `droplet.json` (id, name, size, address, tags,
mesh), `user_data` (0600) and `console.log`. Powering it on runs the configured `launcher`
with that directory as last argument, in a session of its own, so that powering one droplet
off (SIGKILL to its whole process group) never touches another droplet or the caller. A
droplet outlives the provider object and the process that created it; while that process
lives, a thread per launcher reaps it so no zombie is left behind. A droplet counts as active
while its group has a live, non-zombie member.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import fcntl
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from plugins.procfs import group_alive, kill_group, proc_stat
from plugins.providers import (
    DropletNotFound,
    DropletRecord,
    DropletStartError,
    DropletStatus,
    Fence,
    Provider,
    ProviderConfigError,
    ProviderContext,
    ProviderError,
    SnapshotNotFound,
    SnapshotRecord,
    StaleFence,
    netns,
)
from protocol import subjects
from protocol.errors import InvalidNameError

ACCOUNT_FILE = "account.json"
LOCK_FILE = "account.lock"
ACTIONS_LOG = "actions.log"
DROPLETS_DIR = "droplets"
SNAPSHOTS_DIR = "snapshots"
SPEC_FILE = "droplet.json"
USER_DATA_FILE = "user_data"
CONSOLE_FILE = "console.log"
START_CHECK = 0.3
PROBE_HOSTS = (2, 3, 4)
PROBE_PORTS = (4222, 8080)
BLOCK_ATTEMPTS = 50
FIRST_HOST, LAST_HOST = 2, 253  # .1 and .254 are kept for the machine and the entry
RESERVED_HOST = 1  # the mesh's entry address
CONSOLE_CHARS = 500
_BLOCK = re.compile(r"127\.(\d{1,3})\.(\d{1,3})")
_NETNS_BLOCK = re.compile(r"10\.213\.(\d{1,3})")
NETWORKS = ("loopback", "netns")
_TAG = re.compile(r"[A-Za-z0-9:_-]{1,255}")
T = TypeVar("T")


def console_tail(path: Path, start: int = 0, limit: int = CONSOLE_CHARS) -> str:
    """The last whole lines written to `path` after byte `start`, at most `limit` characters."""
    try:
        with path.open("rb") as log:
            size = log.seek(0, os.SEEK_END)
            log.seek(max(start, size - 4 * limit))
            text = log.read().decode("utf-8", errors="replace").strip()
    except OSError:
        return ""
    if len(text) > limit:
        text = text[-limit:]
        text = text.partition("\n")[2] or text
    return text


def port_open(host: str, port: int) -> bool:
    """True if something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def pick_block() -> str:
    """A random 127.A.B block whose first droplet addresses have no NATS or web port open."""
    for _ in range(BLOCK_ATTEMPTS):
        block = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}"
        hosts = (f"{block}.{host}" for host in PROBE_HOSTS)
        if not any(port_open(host, port) for host in hosts for port in PROBE_PORTS):
            return block
    raise ProviderError("pick an address block", f"{BLOCK_ATTEMPTS} random blocks were in use")


def write_atomically(path: Path, data: bytes, mode: int = 0o644) -> None:
    scratch = path.with_name(f".{path.name}.tmp")
    scratch.unlink(missing_ok=True)
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(scratch, path)


@dataclass(slots=True, kw_only=True)
class DropletState:
    """One droplet as `account.json` keeps it."""

    id: str
    name: str
    size: str
    address: str
    status: DropletStatus
    tags: list[str]
    created_at: float
    dir: str
    pgid: int | None = None
    start_ticks: int | None = None
    fences: dict[str, int] | None = None  # role -> highest revision seen

    def running(self) -> bool:
        if self.pgid is None or self.start_ticks is None:
            return False
        return group_alive(self.pgid, self.start_ticks)

    def record(self) -> DropletRecord:
        """The record with its status read from the processes, not from the file."""
        status = DropletStatus.ACTIVE if self.running() else DropletStatus.OFF
        return DropletRecord(
            self.id, self.name, self.size, self.address, status, tuple(self.tags), self.created_at
        )


@dataclass(slots=True, kw_only=True)
class Account:
    """The whole of `account.json`."""

    block: str
    next_id: int = 1
    droplets: dict[str, DropletState]
    reserved: dict[str, Any] | None = None  # {"address", "droplet", "fence"}
    # id -> {"id", "name", "droplet_id", "created_at", "size_gb", "dir"}
    snapshots: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Account:
        droplets = {
            key: DropletState(
                # `last_fence` was kept before fences were counted per role
                **{k: v for k, v in value.items() if k not in ("last_fence", "status")},
                status=DropletStatus(value["status"]),
            )
            for key, value in data["droplets"].items()
        }
        return cls(
            block=data["block"],
            next_id=data["next_id"],
            droplets=droplets,
            reserved=data.get("reserved"),
            snapshots=dict(data.get("snapshots") or {}),
        )

    def to_json(self) -> bytes:
        data = {"version": 1, **asdict(self)}
        return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()

    def free_address(self) -> str | None:
        taken = {state.address for state in self.droplets.values()}
        for host in range(FIRST_HOST, LAST_HOST + 1):
            if f"{self.block}.{host}" not in taken:
                return f"{self.block}.{host}"
        return None


class Launch(NamedTuple):
    """A launcher just started, the thread that reaps it, and where its console output starts."""

    state: DropletState
    reaper: threading.Thread
    console_start: int


class LocalProvider:
    """Droplets as process groups on loopback addresses; see the module docstring."""

    name = "local"

    def __init__(
        self,
        ctx: ProviderContext,
        *,
        root: Path,
        launcher: list[str],
        block: str | None,
        network: str = "loopback",
    ) -> None:
        self._mesh = ctx.mesh
        self._log = ctx.logger
        self._root = root
        self._launcher = launcher
        self._block = block
        self._netns = network == "netns"

    async def create(
        self, name: str, size: str, *, tags: Sequence[str], user_data: str, fence: Fence | None
    ) -> DropletRecord:
        action = f"create droplet {name!r}"
        check_droplet_args(action, name, size, tags)
        launch = await asyncio.to_thread(
            self._transact,
            lambda account, _: self._create_locked(account, action, name, size, tags, user_data),
            "create",
            None,
            fence,
        )
        await self._check_started(action, launch)
        self._log.info(
            "Droplet created. id=%s name=%s address=%s pgid=%s fence=%s",
            launch.state.id,
            name,
            launch.state.address,
            launch.state.pgid,
            fence,
        )
        return await asyncio.to_thread(launch.state.record)

    async def list(self, tag: str | None = None) -> list[DropletRecord]:
        account = await asyncio.to_thread(self._read)
        if account is None:
            return []
        states = [s for s in account.droplets.values() if tag is None or tag in s.tags]
        return await asyncio.to_thread(lambda: [state.record() for state in states])

    async def get(self, droplet_id: str) -> DropletRecord:
        account = await asyncio.to_thread(self._read)
        state = None if account is None else account.droplets.get(droplet_id)
        if state is None:
            raise DropletNotFound(f"get droplet {droplet_id}", droplet_id)
        return await asyncio.to_thread(state.record)

    async def power_off(self, droplet_id: str, *, fence: Fence | None) -> None:
        await asyncio.to_thread(
            self._transact, self._power_off_locked, "power_off", droplet_id, fence
        )
        self._log.info("Droplet powered off. id=%s fence=%s", droplet_id, fence)

    async def power_on(self, droplet_id: str, *, fence: Fence | None) -> None:
        launch = await asyncio.to_thread(
            self._transact, self._power_on_locked, "power_on", droplet_id, fence
        )
        if launch is not None:
            await self._check_started(f"power on droplet {droplet_id}", launch)
            self._log.info(
                "Droplet powered on. id=%s pgid=%s fence=%s", droplet_id, launch.state.pgid, fence
            )

    async def rebuild(
        self, droplet_id: str, *, fence: Fence | None, snapshot_id: str | None = None
    ) -> DropletRecord:
        """A new droplet in the old one's place: same name, size, tags, address and user data;
        its directory a copy of the snapshot's (allocations and the JetStream store come back
        at boot) or, without one, only its user data (the base image); the old one killed and
        destroyed."""
        action = f"rebuild droplet {droplet_id}"
        launch = await asyncio.to_thread(
            self._transact,
            lambda account, state: self._rebuild_locked(account, action, state, snapshot_id),
            "rebuild",
            droplet_id,
            fence,
        )
        await self._check_started(action, launch)
        self._log.info(
            "Droplet rebuilt. old=%s id=%s name=%s fence=%s",
            droplet_id,
            launch.state.id,
            launch.state.name,
            fence,
        )
        return await asyncio.to_thread(launch.state.record)

    # --- snapshots -----------------------------------------------------------------------

    async def snapshot(self, droplet_id: str, name: str, *, fence: Fence | None) -> SnapshotRecord:
        """A copy of the droplet's directory as it is now (logs, pid files and the load
        balancer's run files left out), kept under `snapshots/<name>-<id>/`."""
        action = f"snapshot droplet {droplet_id}"
        try:
            subjects.token(name, "snapshot name")  # it becomes a directory name
        except InvalidNameError as err:
            raise ProviderError(action, str(err)) from err
        state = await self._state(droplet_id, "snapshot")
        staging = self._root / SNAPSHOTS_DIR / f".{name}-{os.getpid()}-{random.randrange(10**9)}"
        try:
            size = await asyncio.to_thread(_copy_live_tree, Path(state.dir), staging)
            record = await asyncio.to_thread(
                self._transact,
                lambda account, current: self._snapshot_locked(
                    account, current, name, staging, size
                ),
                "snapshot",
                droplet_id,
                fence,
            )
        finally:
            await asyncio.to_thread(shutil.rmtree, staging, True)
        self._log.info(
            "Droplet snapshotted. id=%s snapshot=%s fence=%s", droplet_id, record.id, fence
        )
        return record

    async def list_snapshots(self) -> builtins.list[SnapshotRecord]:
        account = await asyncio.to_thread(self._read)
        snapshots = account.snapshots.values() if account else []
        return sorted((_snapshot_record(s) for s in snapshots), key=lambda r: r.created_at)

    async def delete_snapshot(self, snapshot_id: str, *, fence: Fence | None) -> None:
        action = f"delete snapshot {snapshot_id}"

        def change(account: Account, _: DropletState | None) -> None:
            found = account.snapshots.pop(snapshot_id, None)
            if found is None:
                raise SnapshotNotFound(action, snapshot_id)
            shutil.rmtree(found["dir"], ignore_errors=True)

        await asyncio.to_thread(self._transact, change, "delete_snapshot", None, fence)
        self._log.info("Snapshot deleted. id=%s fence=%s", snapshot_id, fence)

    # --- fault drills (local only: `meshctl chaos`) ---------------------------------------

    async def crash(self, droplet_id: str) -> None:
        """The droplet dies as a machine does: SIGKILL of its processes, its containers
        killed; the account still says it is on."""
        state = await self._state(droplet_id, "crash")
        await asyncio.to_thread(self._kill, f"crash droplet {droplet_id}", state)
        await asyncio.to_thread(self._signal_containers, state, "kill")
        self._log.info("Droplet crashed (drill). id=%s", droplet_id)

    async def pause(self, droplet_id: str, *, resume: bool = False) -> None:
        """Freeze (SIGSTOP) or thaw (SIGCONT) the droplet's processes and containers."""
        state = await self._state(droplet_id, "resume" if resume else "pause")
        if state.pgid is None or not state.running():
            raise ProviderError(f"pause droplet {droplet_id}", "it is not running")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(state.pgid, signal.SIGCONT if resume else signal.SIGSTOP)
        await asyncio.to_thread(self._signal_containers, state, "unpause" if resume else "pause")
        self._log.info("Droplet %s (drill). id=%s", "resumed" if resume else "paused", droplet_id)

    async def partition(self, droplet_id: str, peers: Sequence[str] = ()) -> None:
        """Cut the droplet off the network, or off `peers` (addresses) only; its processes
        keep running. Needs network-namespace droplets."""
        await self._drill(
            droplet_id, "partition", lambda layout: netns.partition(layout, droplet_id, peers)
        )
        self._log.info("Droplet cut off (drill). id=%s peers=%s", droplet_id, list(peers) or "all")

    async def lose(self, droplet_id: str, probability: float) -> None:
        """Drop that share of the packets the droplet receives."""
        await self._drill(
            droplet_id,
            "lose packets of",
            lambda layout: netns.lose(layout, droplet_id, probability),
        )

    async def heal(self, droplet_id: str) -> None:
        """Undo `partition` and `lose`."""
        await self._drill(droplet_id, "heal", lambda layout: netns.heal(layout, droplet_id))
        self._log.info("Droplet reconnected (drill). id=%s", droplet_id)

    async def _drill(self, droplet_id: str, what: str, act: Callable[[netns.Layout], None]) -> None:
        action = f"{what} droplet {droplet_id}"
        if not self._netns:
            raise ProviderError(
                action,
                "loopback droplets cannot be cut off (their nats-server routes leave from "
                "127.0.0.1); start the mesh with network namespaces: "
                "meshctl up --local --netns (as root)",
            )
        state = await self._state(droplet_id, what)
        block = state.address.rsplit(".", 1)[0]
        try:
            await asyncio.to_thread(act, netns.Layout(block))
        except netns.NetnsError as err:
            raise ProviderError(action, str(err)) from err

    async def _state(self, droplet_id: str, action: str) -> DropletState:
        account = await asyncio.to_thread(self._read)
        state = None if account is None else account.droplets.get(droplet_id)
        if state is None:
            raise DropletNotFound(f"{action} droplet {droplet_id}", droplet_id)
        return state

    def _signal_containers(self, state: DropletState, action: str) -> None:
        runtime = _runtime_of(state)
        if runtime.get("name") != "docker":
            return
        from plugins.runtimes.docker import signal_containers

        host = (runtime.get("config") or {}).get("docker_host")
        signal_containers(self._mesh, state.name, action, docker_host=host)

    async def resize(self, droplet_id: str, size: str, *, fence: Fence | None) -> None:
        check_size(f"resize droplet {droplet_id}", size)

        def change(account: Account, state: DropletState | None) -> None:
            assert state is not None
            state.size = size
            self._write_spec(state)

        await asyncio.to_thread(self._transact, change, "resize", droplet_id, fence)
        self._log.info("Droplet resized. id=%s size=%s fence=%s", droplet_id, size, fence)

    async def set_user_data(self, droplet_id: str, user_data: str) -> None:
        def change(account: Account, state: DropletState | None) -> None:
            assert state is not None
            write_atomically(Path(state.dir) / USER_DATA_FILE, user_data.encode(), 0o600)

        await asyncio.to_thread(self._transact, change, "set_user_data", droplet_id, None)

    async def reserve_address(self) -> str:
        """`<block>.1`: droplets get addresses from `.2` on, so `.1` is free for the entry."""

        def change(account: Account, _: DropletState | None) -> str:
            if account.reserved is None:
                host = netns.RESERVED_HOST if self._netns else RESERVED_HOST
                account.reserved = {"address": f"{account.block}.{host}"}
            return str(account.reserved["address"])

        return await asyncio.to_thread(self._transact, change, "reserve_address", None, None)

    async def assign_reserved_address(
        self, address: str, droplet_id: str, *, fence: Fence | None
    ) -> None:
        """Bookkeeping, fenced like a droplet action: on loopback any process could listen on
        the address, so the holder's load balancer is what actually moves it."""
        action = f"assign reserved address {address} to droplet {droplet_id}"

        def change(account: Account, state: DropletState | None) -> None:
            assert state is not None
            reserved = account.reserved or {}
            if reserved.get("address") != address:
                raise ProviderError(action, "not this account's reserved address")
            seen = reserved.get("fence")
            if fence is not None and seen is not None and fence.revision < seen:
                self._append_action("assign_reserved_address", state, fence, "refused: stale")
                raise StaleFence(action, fence, seen)
            revision = fence.revision if fence is not None else seen
            if self._netns:
                layout = netns.Layout(account.block)
                try:
                    netns.assign_reserved(
                        layout, droplet_id, state.address, reserved.get("droplet")
                    )
                except netns.NetnsError as err:
                    raise ProviderError(action, str(err)) from err
            account.reserved = {**reserved, "droplet": droplet_id, "fence": revision}

        # The fence is checked against the address's own, not the droplet's: other leases
        # (the provisioner's) fence actions on the same droplet.
        await asyncio.to_thread(self._transact, change, "assign_reserved_address", droplet_id, None)
        self._log.info(
            "Reserved address assigned. address=%s id=%s fence=%s", address, droplet_id, fence
        )

    async def destroy(self, droplet_id: str, *, fence: Fence | None) -> None:
        await asyncio.to_thread(self._transact, self._destroy_locked, "destroy", droplet_id, fence)
        self._log.info("Droplet destroyed. id=%s fence=%s", droplet_id, fence)

    async def close(self) -> None:
        # Nothing to release: droplets keep running, and each reaper thread ends by itself
        # when its launcher exits (they are daemon threads, so they never hold the caller up).
        return None

    # The methods below run in worker threads.

    def _transact(
        self,
        change: Callable[[Account, DropletState | None], T],
        kind: str,
        droplet_id: str | None,
        fence: Fence | None,
    ) -> T:
        """Apply `change` to the account under the account lock and save it, after checking the
        droplet exists and `fence` is not stale. Log the action, done or refused."""
        self._root.mkdir(parents=True, exist_ok=True)
        with self._locked():
            account = self._read() or Account(block=self._block or self._pick_block(), droplets={})
            self._check_block(account)
            action = f"{kind.replace('_', ' ')} droplet {droplet_id}"
            state = None
            if droplet_id is not None:
                state = account.droplets.get(droplet_id)
                if state is None:
                    raise DropletNotFound(action, droplet_id)
                seen = (state.fences or {}).get(fence.role) if fence is not None else None
                if fence is not None and seen is not None and fence.revision < seen:
                    self._append_action(kind, state, fence, "refused: stale fence")
                    raise StaleFence(action, fence, seen)
            result = change(account, state)
            if isinstance(result, Launch):
                state = result.state
            if state is not None and fence is not None:
                state.fences = {**(state.fences or {}), fence.role: fence.revision}
            write_atomically(self._root / ACCOUNT_FILE, account.to_json())
            if state is not None:
                self._append_action(kind, state, fence, "done")
            return result

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self._root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the only descriptor releases the lock

    def _read(self) -> Account | None:
        path = self._root / ACCOUNT_FILE
        try:
            return Account.from_json(json.loads(path.read_bytes()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, KeyError) as err:
            raise ProviderError(f"read account {path}", str(err)) from err

    def _pick_block(self) -> str:
        if not self._netns:
            return pick_block()
        try:
            return netns.pick_block()
        except netns.NetnsError as err:
            raise ProviderError("pick an address block", str(err)) from err

    def _attach(self, account: Account, state: DropletState) -> None:
        if self._netns:
            try:
                netns.attach(netns.Layout(account.block), state.id, state.address)
            except netns.NetnsError as err:
                raise ProviderError(f"cable droplet {state.id}", str(err)) from err

    def _detach(self, account: Account, state: DropletState) -> None:
        if self._netns:
            try:
                netns.detach(netns.Layout(account.block), state.id)
            except netns.NetnsError as err:
                self._log.warning("Namespace not removed. droplet=%s error=%s", state.id, err)

    def _check_block(self, account: Account) -> None:
        if self._block is None or self._block == account.block:
            return
        if account.droplets:
            raise ProviderConfigError(
                "local",
                f"block {self._block} is configured but the account at {self._root} uses "
                f"{account.block} for its droplets",
            )
        account.block = self._block

    def _append_action(
        self, kind: str, state: DropletState, fence: Fence | None, outcome: str
    ) -> None:
        entry = {
            "time": time.time(),
            "action": kind,
            "droplet": state.id,
            "name": state.name,
            "fence": fence.revision if fence is not None else None,
            "role": fence.role if fence is not None else None,
            "outcome": outcome,
            "pid": os.getpid(),
        }
        with (self._root / ACTIONS_LOG).open("a", encoding="utf-8") as log:
            log.write(json.dumps(entry) + "\n")

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
        droplet_id = str(account.next_id)
        directory = self._root / DROPLETS_DIR / f"{name}-{droplet_id}"
        state = DropletState(
            id=droplet_id,
            name=name,
            size=size,
            address=address,
            status=DropletStatus.NEW,
            tags=list(tags),
            created_at=time.time(),
            dir=str(directory),
        )
        try:
            directory.mkdir(mode=0o700, parents=True)
            self._write_spec(state)
            write_atomically(directory / USER_DATA_FILE, user_data.encode(), 0o600)
            self._attach(account, state)
            launch = self._spawn(action, state)
        except BaseException:
            self._detach(account, state)
            shutil.rmtree(directory, ignore_errors=True)
            raise
        account.next_id += 1
        account.droplets[droplet_id] = state
        return launch

    def _power_off_locked(self, account: Account, state: DropletState | None) -> None:
        assert state is not None
        self._kill(f"power off droplet {state.id}", state)
        self._signal_containers(state, "kill")  # a machine that is off runs nothing
        state.status = DropletStatus.OFF

    def _power_on_locked(self, account: Account, state: DropletState | None) -> Launch | None:
        assert state is not None
        if state.running():
            return None
        return self._spawn(f"power on droplet {state.id}", state)

    def _snapshot_locked(
        self, account: Account, state: DropletState | None, name: str, staging: Path, size: int
    ) -> SnapshotRecord:
        assert state is not None
        snapshot_id = str(account.next_id)
        directory = self._root / SNAPSHOTS_DIR / f"{name}-{snapshot_id}"
        staging.rename(directory)
        account.next_id += 1
        account.snapshots[snapshot_id] = {
            "id": snapshot_id,
            "name": name,
            "droplet_id": state.id,
            "created_at": time.time(),
            "size_gb": size / 1e9,
            "dir": str(directory),
        }
        return _snapshot_record(account.snapshots[snapshot_id])

    def _rebuild_locked(
        self, account: Account, action: str, old: DropletState | None, snapshot_id: str | None
    ) -> Launch:
        assert old is not None
        snapshot = account.snapshots.get(snapshot_id) if snapshot_id is not None else None
        if snapshot_id is not None and snapshot is None:
            raise SnapshotNotFound(action, snapshot_id)
        self._kill(action, old)
        self._signal_containers(old, "kill")
        droplet_id = str(account.next_id)
        directory = self._root / DROPLETS_DIR / f"{old.name}-{droplet_id}"
        state = DropletState(
            id=droplet_id,
            name=old.name,
            size=old.size,
            address=old.address,
            status=DropletStatus.NEW,
            tags=list(old.tags),
            created_at=time.time(),
            dir=str(directory),
            fences=old.fences,
        )
        try:
            if snapshot is not None:
                shutil.copytree(snapshot["dir"], directory, symlinks=True)
            else:  # the base image: nothing but what the provider keeps, the user data
                directory.mkdir(parents=True, mode=0o700)
                shutil.copy2(Path(old.dir) / USER_DATA_FILE, directory / USER_DATA_FILE)
            self._write_spec(state)
            # A new machine is a new network attachment: whatever cut the old one off is gone.
            self._detach(account, old)
            self._attach(account, state)
            launch = self._spawn(action, state)
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        shutil.rmtree(old.dir, ignore_errors=True)
        del account.droplets[old.id]
        account.next_id += 1
        account.droplets[droplet_id] = state
        return launch

    def _destroy_locked(self, account: Account, state: DropletState | None) -> None:
        assert state is not None
        self._kill(f"destroy droplet {state.id}", state)
        self._remove_containers(state)
        self._detach(account, state)
        shutil.rmtree(state.dir, ignore_errors=True)
        del account.droplets[state.id]
        if self._netns and not account.droplets:
            netns.remove_bridge(netns.Layout(account.block))

    def _remove_containers(self, state: DropletState) -> None:
        """A destroyed droplet runs nothing: its containers and networks go with it, also from
        an engine that local droplets share. Volumes stay until `meshctl down --local`."""
        runtime = _runtime_of(state)
        if runtime.get("name") != "docker":
            return
        from plugins.runtimes.docker import remove_objects

        host = (runtime.get("config") or {}).get("docker_host")
        removed = remove_objects(self._mesh, state.name, docker_host=host, volumes=False)
        self._log.info("Droplet's containers removed. droplet=%s objects=%d", state.name, removed)

    def _kill(self, action: str, state: DropletState) -> None:
        if state.pgid is None or state.start_ticks is None:
            return
        if not kill_group(state.pgid, state.start_ticks):
            raise ProviderError(action, f"process group {state.pgid} survived SIGKILL")

    def _write_spec(self, state: DropletState) -> None:
        spec = {
            "id": state.id,
            "name": state.name,
            "size": state.size,
            "address": state.address,
            "tags": state.tags,
            "mesh": self._mesh,
        }
        write_atomically(Path(state.dir) / SPEC_FILE, (json.dumps(spec, indent=2) + "\n").encode())

    def _spawn(self, action: str, state: DropletState) -> Launch:
        """Run the launcher for `state` in a session of its own, and a thread to reap it."""
        directory = Path(state.dir)
        argv = [*self._launcher, str(directory)]
        if self._netns:
            block = state.address.rsplit(".", 1)[0]
            argv = [*netns.Layout(block).enter(state.id), *argv]
        try:
            with (directory / CONSOLE_FILE).open("ab") as console:
                console.write(f"[local provider] power on at {time.ctime()}\n".encode())
                console.flush()
                console_start = console.tell()
                child = subprocess.Popen(
                    argv,
                    cwd=directory,
                    stdin=subprocess.DEVNULL,
                    stdout=console,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group: power off kills only it
                    close_fds=True,
                )
        except OSError as err:
            raise ProviderError(action, f"cannot run {argv[0]!r}: {err.strerror or err}") from err
        stat = proc_stat(child.pid)
        state.pgid = child.pid
        state.start_ticks = stat.start_ticks if stat is not None else -1
        state.status = DropletStatus.ACTIVE
        reaper = threading.Thread(target=child.wait, name=f"reap-droplet-{state.id}", daemon=True)
        reaper.start()
        return Launch(state, reaper, console_start)

    async def _check_started(self, action: str, launch: Launch) -> None:
        """Give the launcher START_CHECK seconds; if its whole group is gone by then, record
        the droplet as off and raise DropletStartError with its console output."""
        await asyncio.to_thread(launch.reaper.join, START_CHECK)
        if launch.reaper.is_alive() or await asyncio.to_thread(launch.state.running):
            return
        state = launch.state

        def mark_off(account: Account, current: DropletState | None) -> None:
            if current is not None and current.pgid == state.pgid:
                current.status = DropletStatus.OFF

        with contextlib.suppress(DropletNotFound):
            await asyncio.to_thread(self._transact, mark_off, "start_failed", state.id, None)
        console_file = Path(state.dir) / CONSOLE_FILE
        console = await asyncio.to_thread(console_tail, console_file, launch.console_start)
        self._log.warning("Droplet did not start. id=%s console=%r", state.id, console)
        raise DropletStartError(action, state.id, console)


def _not_in_snapshot(_: str, names: list[str]) -> set[str]:
    """What a snapshot leaves out: the load balancer's run files and pid files (they name the
    processes of the droplet that was copied), logs."""
    return {n for n in names if n == "lb" or n.endswith((".pid", ".log"))}


def _copy_live_tree(source: Path, target: Path) -> int:
    """Copy the directory of a running droplet; files that vanish meanwhile (temporary files
    of nats-server or the runtime) are skipped. The bytes copied."""
    copied = 0

    def copy(src: str, dst: str) -> None:
        nonlocal copied
        with contextlib.suppress(FileNotFoundError):
            shutil.copy2(src, dst)
            copied += os.path.getsize(dst)

    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        shutil.copytree(source, target, symlinks=True, ignore=_not_in_snapshot, copy_function=copy)
    except shutil.Error as err:
        problems = [e for e in err.args[0] if "No such file" not in str(e[-1])]
        if problems:
            raise ProviderError(f"snapshot {source.name}", f"copy failed: {problems[:3]}") from err
    return copied


def _snapshot_record(data: dict[str, Any]) -> SnapshotRecord:
    return SnapshotRecord(
        id=data["id"],
        name=data["name"],
        droplet_id=data["droplet_id"],
        created_at=data["created_at"],
        size_gb=data["size_gb"],
    )


def _runtime_of(state: DropletState) -> dict[str, Any]:
    """The runtime section of the droplet's user data ({} when unreadable)."""
    try:
        user_data = json.loads((Path(state.dir) / USER_DATA_FILE).read_text())
        runtime = user_data.get("runtime") or {}
    except (OSError, ValueError, AttributeError):
        return {}
    return runtime if isinstance(runtime, dict) else {}


def check_droplet_args(action: str, name: str, size: str, tags: Sequence[str]) -> None:
    """Refuse a name that is not a DNS label (it becomes a directory name), an empty size and
    tags DigitalOcean would refuse."""
    try:
        subjects.token(name, "droplet")
    except InvalidNameError as err:
        raise ProviderError(action, err.reason) from err
    check_size(action, size)
    if isinstance(tags, str):
        raise ProviderError(action, "tags must be a list of tags, not one string")
    for tag in tags:
        if not isinstance(tag, str) or not _TAG.fullmatch(tag):
            raise ProviderError(action, f"tag {tag!r} is not letters, digits, ':', '_' or '-'")


def check_size(action: str, size: str) -> None:
    if not isinstance(size, str) or not size:
        raise ProviderError(action, "size must be a non-empty string")


def create(ctx: ProviderContext) -> LocalProvider:
    """The plugin factory. Config: `dir` (account directory), `launcher` (argv list), optional
    `block` ("127.A.B")."""
    unknown = sorted(set(ctx.config) - {"dir", "launcher", "block", "network"})
    if unknown:
        raise ProviderConfigError("local", f"unknown settings: {', '.join(unknown)}")
    root = ctx.config.get("dir")
    if not isinstance(root, str | os.PathLike) or not str(root):
        raise ProviderConfigError("local", "dir must name the account directory")
    launcher = ctx.config.get("launcher")
    if not isinstance(launcher, list) or not launcher:
        raise ProviderConfigError("local", "launcher must be a non-empty list of arguments")
    if not all(isinstance(arg, str) and arg for arg in launcher):
        raise ProviderConfigError("local", "launcher arguments must be non-empty strings")
    network = ctx.config.get("network", "loopback")
    if network not in NETWORKS:
        raise ProviderConfigError(
            "local", f"network {network!r} is not one of {', '.join(NETWORKS)}"
        )
    if network == "netns" and os.geteuid() != 0:
        raise ProviderConfigError("local", "network namespaces need root")
    block = ctx.config.get("block")
    if block is not None:
        pattern = _NETNS_BLOCK if network == "netns" else _BLOCK
        form = "10.213.B" if network == "netns" else "127.A.B"
        match = pattern.fullmatch(block) if isinstance(block, str) else None
        if match is None or not all(int(part) <= 255 for part in match.groups()):
            raise ProviderConfigError("local", f"block {block!r} is not of the form {form}")
    if not Path("/proc/self/stat").is_file():
        raise ProviderConfigError("local", "needs a Linux /proc to watch droplet processes")
    path = Path(os.fspath(root)).expanduser().absolute()
    return LocalProvider(ctx, root=path, launcher=list(launcher), block=block, network=network)


_typed_factory: Callable[[ProviderContext], Provider] = create  # mypy checks the Protocol
