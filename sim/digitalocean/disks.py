"""A droplet's disk: a directory whose sub-directories are bound over the paths a droplet
owns, so that what meshd writes there stays with the droplet, goes into its snapshots, and
never touches the machine's own files. Everything else (`/usr`, the Python environment) is
the machine's, shared read-only.

Snapshots are copies of a disk (`<state>/snapshots/<id>/`), volumes plain directories
(`<state>/volumes/<id>/`). Blocking; called from worker threads (and `boot`, which imports
this module: standard library only).
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterable
from pathlib import Path

# The paths a droplet owns, relative to `/`: each is bound from the same path in its disk.
OWNED = (
    "etc/meshd",
    "var/lib/meshd",
    "opt/meshd",
    "root/.ssh",
    "etc/systemd/system",
    "etc/ssh",
    "var/lib/cloud",
    "var/log",
)
AUTHORIZED_KEYS = "root/.ssh/authorized_keys"
USER_DATA = "var/lib/cloud/user-data"  # what the droplet was created with, run at first boot
GB = 1e9


def skeleton(disk: Path) -> None:
    """The owned directories, for a new disk or one copied from an older snapshot."""
    for relative in OWNED:
        (disk / relative).mkdir(parents=True, exist_ok=True)
    (disk / "root/.ssh").chmod(0o700)


def reset(disk: Path, snapshot: Path | None) -> None:
    """Make `disk` empty, or a copy of `snapshot`; the old content is gone."""
    if disk.exists():
        shutil.rmtree(disk)
    if snapshot is None:
        disk.mkdir(parents=True)
    else:
        copy(snapshot, disk)
    skeleton(disk)


def copy(source: Path, target: Path) -> None:
    """A copy of `source` at `target`, appearing whole or not at all (copied beside it, then
    renamed); symbolic links stay links (a unit's `multi-user.target.wants` entries)."""
    partial = target.with_name(f".{target.name}.partial")
    if partial.exists():
        shutil.rmtree(partial)
    shutil.copytree(source, partial, symlinks=True, copy_function=_copy_regular)
    partial.rename(target)


def _copy_regular(source: str, target: str) -> None:
    """Copy a regular file; skip sockets and pipes (a running droplet's, which a copy could
    not read or would block on) and files removed since the directory was listed."""
    try:
        if stat.S_ISREG(os.lstat(source).st_mode):
            shutil.copy2(source, target)
    except FileNotFoundError:
        return


def add_keys(disk: Path, keys: Iterable[str]) -> None:
    """Root may log in with `keys` (OpenSSH public key lines), besides the keys it had."""
    path = disk / AUTHORIZED_KEYS
    present = path.read_text().splitlines() if path.exists() else []
    lines = present + [key.strip() for key in keys if key.strip() not in present]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    path.write_text("".join(f"{line}\n" for line in lines if line.strip()))
    path.chmod(0o600)


def write_user_data(disk: Path, user_data: str | None) -> None:
    """Keep the user data where `boot` finds it; none removes it."""
    path = disk / USER_DATA
    if user_data is None:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(user_data)
    path.chmod(0o600)


def used_gb(path: Path) -> float:
    """Bytes used under `path` in GB, as DigitalOcean reports a snapshot's size (at least
    0.01: an empty disk is not a free snapshot)."""
    total = 0
    for directory, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(directory, name)).st_size
            except OSError:
                continue  # removed by the running droplet meanwhile
    return max(round(total / GB, 2), 0.01)


def remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)
