"""Files written so that a crash or a power loss never leaves half of one: atomic replacement
with fsync, secret files, and the tail of a log. Blocking: call them in a thread from async
code. Shared by the plugins and the agent, which keeps its local copy of allocations with
`atomic_write`."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

TAIL_CHARS = 500


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace `path` with `data` so that a reader, or the file after a power loss, holds
    either the old bytes or the new ones: a temporary file of a unique name beside it (two
    writers never share one), fsync, rename, fsync of the directory."""
    scratch = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(scratch, path)
    except BaseException:
        scratch.unlink(missing_ok=True)
        raise
    sync_directory(path.parent)


def sync_directory(directory: Path) -> None:
    """Make a rename or a new file in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_secret_files(directory: Path, values: dict[str, bytes], uid: int | None = None) -> None:
    """Make `directory` (0700) hold exactly `values`, each an atomically written 0400 file,
    owned by `uid` when given and this process may give files away (root)."""
    for name in values:
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"secret name {name!r} is not a file name")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.chmod(0o700)
    for stale in directory.iterdir():
        if stale.name not in values:
            stale.unlink()
    for name, value in sorted(values.items()):
        atomic_write(directory / name, value, 0o400)
        if uid and os.geteuid() == 0:
            os.chown(directory / name, uid, uid)


def remove_tree(directory: Path) -> None:
    """Remove a flat directory of files (secret files), if it exists."""
    if not directory.exists():
        return
    for path in directory.iterdir():
        path.unlink(missing_ok=True)
    directory.rmdir()


def tail_text(path: Path, start: int = 0, limit: int = TAIL_CHARS) -> str:
    """The last whole lines written to `path` after byte `start`, at most `limit` characters
    ("" when there are none or it cannot be read)."""
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


def cap_log(path: Path, max_bytes: int) -> None:
    """Keep the newest half of `path` once it is larger than `max_bytes`."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return
    if size <= max_bytes:
        return
    with path.open("rb") as log:
        log.seek(size - max_bytes // 2)
        tail = log.read()
    tail = tail[tail.find(b"\n") + 1 :]
    atomic_write(path, b"[meshd] older output truncated\n" + tail)


@contextlib.contextmanager
def scratch_directory(parent: Path) -> Iterator[Path]:
    """A new 0700 directory under `parent` (made 0700 if missing), removed with everything in
    it when the block ends: for files in clear that must not outlive their use (dumps)."""
    parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=parent))
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
