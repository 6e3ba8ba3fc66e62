"""The local provider's cloud account: `account.json` in the account directory, which holds the
address block, the next id, the snapshots, the volumes, the reserved address and every droplet
(name, size, address, tags, process group, directory, highest fence seen from each role).

The agents of several local droplets use one account from several processes at once, so every
change happens under `fcntl.flock` on `account.lock` and is written atomically (`transact`).
`actions.log` records each action, done or refused, one JSON line each. Blocking: the
provider calls these in worker threads.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from plugins.fs import atomic_write
from plugins.procfs import group_alive
from plugins.providers import (
    DropletNotFound,
    DropletRecord,
    DropletStatus,
    Fence,
    ProviderConfigError,
    ProviderError,
    StaleFence,
)

ACCOUNT_FILE = "account.json"
LOCK_FILE = "account.lock"
ACTIONS_LOG = "actions.log"
DROPLETS_DIR = "droplets"
SNAPSHOTS_DIR = "snapshots"
SPEC_FILE = "droplet.json"
USER_DATA_FILE = "user_data"
CONSOLE_FILE = "console.log"
FIRST_HOST, LAST_HOST = 2, 253  # .1 and .254 are kept for the machine and the entry
T = TypeVar("T")


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

    def user_data(self) -> str:
        """What the droplet was given at creation ("" when it cannot be read)."""
        try:
            return (Path(self.dir) / USER_DATA_FILE).read_text()
        except OSError:
            return ""


@dataclass(slots=True, kw_only=True)
class Account:
    """The whole of `account.json`."""

    block: str
    next_id: int = 1
    droplets: dict[str, DropletState]
    reserved: dict[str, Any] | None = None  # {"address", "droplet", "fence"}
    # id -> {"id", "name", "droplet_id", "created_at", "size_gb", "dir"}
    snapshots: dict[str, dict[str, Any]] = field(default_factory=dict)
    # id -> {"id", "name", "size_gb", "droplet_id", "created_at", "fences"}
    volumes: dict[str, dict[str, Any]] = field(default_factory=dict)

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
            volumes=dict(data.get("volumes") or {}),
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

    def new_id(self) -> str:
        """The next id of a droplet or snapshot (one sequence, as ids are at DigitalOcean)."""
        found = str(self.next_id)
        self.next_id += 1
        return found


# A change applied under the lock: the account and the droplet acted on (None: the account).
Change = Callable[[Account, DropletState | None], T]


class AccountStore:
    """The account directory: read, change under the lock, log each action."""

    def __init__(self, root: Path, block: str | None, pick_block: Callable[[], str]) -> None:
        self.root = root
        self._block = block
        self._pick_block = pick_block

    def read(self) -> Account | None:
        path = self.root / ACCOUNT_FILE
        try:
            return Account.from_json(json.loads(path.read_bytes()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, KeyError) as err:
            raise ProviderError(f"read account {path}", str(err)) from err

    def state(self, droplet_id: str, action: str) -> DropletState:
        account = self.read()
        state = None if account is None else account.droplets.get(droplet_id)
        if state is None:
            raise DropletNotFound(f"{action} droplet {droplet_id}", droplet_id)
        return state

    def transact(
        self, change: Change[T], kind: str, droplet_id: str | None, fence: Fence | None
    ) -> T:
        """Apply `change` to the account under the account lock and save it, after checking
        the droplet exists and `fence` is not stale. Log the action, done or refused. A change
        may return the droplet it made (`made`), whose fences and log entry then count."""
        self.root.mkdir(parents=True, exist_ok=True)
        with self._locked():
            account = self.read() or Account(block=self._block or self._pick_block(), droplets={})
            self._check_block(account)
            action = f"{kind.replace('_', ' ')} droplet {droplet_id}"
            state = None
            if droplet_id is not None:
                state = account.droplets.get(droplet_id)
                if state is None:
                    raise DropletNotFound(action, droplet_id)
                seen = (state.fences or {}).get(fence.role) if fence is not None else None
                if fence is not None and seen is not None and fence.revision < seen:
                    self.append_action(kind, state, fence, "refused: stale fence")
                    raise StaleFence(action, fence, seen)
            result = change(account, state)
            made = getattr(result, "state", None)
            if isinstance(made, DropletState):
                state = made
            if state is not None and fence is not None:
                state.fences = {**(state.fences or {}), fence.role: fence.revision}
            atomic_write(self.root / ACCOUNT_FILE, account.to_json())
            if state is not None:
                self.append_action(kind, state, fence, "done")
            return result

    def append_action(
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
        with (self.root / ACTIONS_LOG).open("a", encoding="utf-8") as log:
            log.write(json.dumps(entry) + "\n")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the only descriptor releases the lock

    def _check_block(self, account: Account) -> None:
        if self._block is None or self._block == account.block:
            return
        if account.droplets:
            raise ProviderConfigError(
                "local",
                f"block {self._block} is configured but the account at {self.root} uses "
                f"{account.block} for its droplets",
            )
        account.block = self._block


def new_state(
    account: Account,
    root: Path,
    name: str,
    size: str,
    address: str,
    tags: Sequence[str],
    fences: dict[str, int] | None,
) -> DropletState:
    """A droplet about to be made, with the account's next id and its directory under `root`."""
    droplet_id = account.new_id()
    return DropletState(
        id=droplet_id,
        name=name,
        size=size,
        address=address,
        status=DropletStatus.NEW,
        tags=list(tags),
        created_at=time.time(),
        dir=str(root / DROPLETS_DIR / f"{name}-{droplet_id}"),
        fences=fences,
    )


def write_spec(state: DropletState, mesh: str) -> None:
    """`droplet.json`: what the droplet's agent reads of itself."""
    spec = {
        "id": state.id,
        "name": state.name,
        "size": state.size,
        "address": state.address,
        "tags": state.tags,
        "mesh": mesh,
    }
    atomic_write(Path(state.dir) / SPEC_FILE, (json.dumps(spec, indent=2) + "\n").encode())
