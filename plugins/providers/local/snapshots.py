"""Snapshots of local droplets: a copy of the droplet's directory as it is now, allocations and
JetStream store included, kept under `snapshots/<name>-<id>/`; the load balancer's run files,
pid files and logs are left out (they name the processes of the droplet that was copied), and
files that vanish mid-copy (temporary files of nats-server or the runtime) are skipped."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

from plugins.fs import atomic_write
from plugins.providers import Fence, ProviderError, SnapshotNotFound, SnapshotRecord
from plugins.providers.local.account import SNAPSHOTS_DIR, Account, AccountStore, DropletState
from protocol import subjects
from protocol.errors import InvalidNameError


async def take(
    store: AccountStore, droplet_id: str, name: str, fence: Fence | None
) -> SnapshotRecord:
    """Copy the droplet's directory beside the account's snapshots, then record it (the copy
    runs outside the account lock: the other droplets' agents keep using the account)."""
    action = f"snapshot droplet {droplet_id}"
    try:
        subjects.token(name, "snapshot name")  # it becomes a directory name
    except InvalidNameError as err:
        raise ProviderError(action, str(err)) from err
    state = await asyncio.to_thread(store.state, droplet_id, "snapshot")
    staging = store.root / SNAPSHOTS_DIR / f".{name}-{os.getpid()}-{random.randrange(10**9)}"
    try:
        size = await asyncio.to_thread(copy_live_tree, Path(state.dir), staging)

        def change(account: Account, current: DropletState | None) -> SnapshotRecord:
            assert current is not None
            return keep(store.root, account, current, name, staging, size)

        return await asyncio.to_thread(store.transact, change, "snapshot", droplet_id, fence)
    finally:
        await asyncio.to_thread(shutil.rmtree, staging, True)


def copy_live_tree(source: Path, target: Path) -> int:
    """Copy the directory of a running droplet; the bytes copied."""
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


def disk_from(
    image: Path | None, directory: Path, user_data_file: Path, user_data: str | None
) -> None:
    """A rebuilt droplet's disk: a copy of the snapshot `image`, or without one the base
    image (nothing but what the provider keeps, the user data of `user_data_file`); its user
    data `user_data` when given."""
    if image is not None:
        shutil.copytree(image, directory, symlinks=True)
    else:
        directory.mkdir(parents=True, mode=0o700)
        shutil.copy2(user_data_file, directory / user_data_file.name)
    if user_data is not None:
        atomic_write(directory / user_data_file.name, user_data.encode(), 0o600)


def keep(
    root: Path, account: Account, state: DropletState, name: str, staging: Path, size: int
) -> SnapshotRecord:
    """Record a copy made in `staging` as the account's new snapshot of `state`."""
    snapshot_id = account.new_id()
    directory = root / SNAPSHOTS_DIR / f"{name}-{snapshot_id}"
    staging.rename(directory)
    account.snapshots[snapshot_id] = {
        "id": snapshot_id,
        "name": name,
        "droplet_id": state.id,
        "created_at": time.time(),
        "size_gb": size / 1e9,
        "dir": str(directory),
    }
    return record(account.snapshots[snapshot_id])


def delete(account: Account, snapshot_id: str) -> None:
    found = account.snapshots.pop(snapshot_id, None)
    if found is None:
        raise SnapshotNotFound(f"delete snapshot {snapshot_id}", snapshot_id)
    shutil.rmtree(found["dir"], ignore_errors=True)


def record(data: dict[str, Any]) -> SnapshotRecord:
    return SnapshotRecord(
        id=data["id"],
        name=data["name"],
        droplet_id=data["droplet_id"],
        created_at=data["created_at"],
        size_gb=data["size_gb"],
    )


def _not_in_snapshot(_: str, names: list[str]) -> set[str]:
    """What a disk image would not hold: the lb's runtime files, pids, logs, and the secret
    files of instances (on a real droplet they live on tmpfs, `/run`; the droplet gets them
    again from the sealed entries)."""
    return {n for n in names if n in ("lb", "secrets") or n.endswith((".pid", ".log"))}
