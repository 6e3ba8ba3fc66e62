"""One-off commands of the process runtime (`Runtime.run_once`, a project's release command):
a child of the agent in the instance's working directory, with its environment and secret
files under `<data_dir>/once/<key>/` (0700, one 0400 file per secret), its stdout and stderr
in `output.log` there. After `timeout` seconds it gets SIGTERM, then SIGKILL after a grace.
The directory is removed once it has exited, whatever happened.

An asyncio subprocess, unlike the instances' `Popen`: a one-off is never re-adopted, and one
whose agent stops goes with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import shutil
import subprocess
from collections.abc import Mapping
from io import BufferedWriter
from pathlib import Path

from plugins.fs import tail_text, write_secret_files
from plugins.runtimes import ONE_OFF_OUTPUT_CHARS, InstanceStartError, OneOffTimeout, OutputSink

ONCE_DIR = "once"
SECRETS_DIR = "secrets"
LOG_FILE = "output.log"
GRACE_S = 5.0
PASS_ON_S = 0.2  # how often the output file is read for a caller who follows it
READ_CHUNK = 256 * 1024


def arguments(key: str, command: str) -> list[str]:
    """`command` split like a shell would (no shell runs it); `InstanceStartError` if empty."""
    try:
        argv = shlex.split(command)
    except ValueError as err:
        raise InstanceStartError(key, f"cannot parse command {command!r}: {err}") from None
    if not argv:
        raise InstanceStartError(key, "the command to run once is empty")
    return argv


async def run_command(
    key: str,
    argv: list[str],
    cwd: Path,
    env: Mapping[str, str],
    secrets: Mapping[str, bytes],
    directory: Path,
    *,
    limit_s: float,
    output: OutputSink | None = None,
) -> tuple[int, str]:
    """Run `argv` in `cwd` with `env` and the `secrets` as files in `directory/secrets`, for
    at most `limit_s` seconds; its exit code (negative: killed by that signal) and the tail
    of its output. `output` gets the output as it comes (read from its file)."""
    try:
        log = await asyncio.to_thread(_prepare, directory, secrets)
    except (OSError, ValueError) as err:
        await asyncio.to_thread(shutil.rmtree, directory, True)
        raise InstanceStartError(key, f"cannot prepare its directory: {err}") from None
    try:
        with log:
            try:
                child = await asyncio.create_subprocess_exec(
                    *argv,
                    cwd=cwd,
                    env=dict(env),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            except OSError as err:
                reason = err.strerror or str(err)
                raise InstanceStartError(key, f"cannot run {argv[0]!r}: {reason}") from None
        exited = asyncio.Event()
        passing = None
        if output is not None:
            passing = asyncio.create_task(_pass_on(directory / LOG_FILE, output, exited))
        try:
            code = await _wait(child, limit_s)
            exited.set()
            if passing is not None:
                await passing  # the rest of what it wrote
        finally:
            if passing is not None:
                passing.cancel()
            if child.returncode is None:  # cancelled: the one-off goes with its caller
                with contextlib.suppress(ProcessLookupError):
                    child.kill()
                await child.wait()
        tail = await asyncio.to_thread(tail_text, directory / LOG_FILE, 0, ONE_OFF_OUTPUT_CHARS)
        if code is None:
            raise OneOffTimeout(key, limit_s, tail)
        return code, tail
    finally:
        await asyncio.to_thread(shutil.rmtree, directory, True)


async def _wait(child: asyncio.subprocess.Process, limit_s: float) -> int | None:
    """The child's exit code, or None when it ran out of time (it has exited since)."""
    try:
        return await asyncio.wait_for(child.wait(), limit_s)
    except TimeoutError:
        pass
    with contextlib.suppress(ProcessLookupError):
        child.terminate()
    try:
        await asyncio.wait_for(child.wait(), GRACE_S)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            child.kill()
        await child.wait()
    return None


async def _pass_on(path: Path, output: OutputSink, exited: asyncio.Event) -> None:
    """What the file gets, to `output`, until `exited` is set and all of it was passed on."""
    offset = 0
    while True:
        done = exited.is_set()
        while chunk := await asyncio.to_thread(_read_at, path, offset):
            offset += len(chunk)
            await output(chunk)
        if done:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(exited.wait(), PASS_ON_S)


def _read_at(path: Path, offset: int) -> bytes:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read(READ_CHUNK)


def _prepare(directory: Path, secrets: Mapping[str, bytes]) -> BufferedWriter:
    shutil.rmtree(directory, ignore_errors=True)  # left by an agent killed while it ran
    directory.mkdir(mode=0o700, parents=True)
    write_secret_files(directory / SECRETS_DIR, dict(secrets))
    return (directory / LOG_FILE).open("wb")
