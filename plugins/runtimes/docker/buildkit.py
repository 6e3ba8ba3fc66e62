"""Builds that read build-time secrets (docs/secrets.md): `DOCKER_BUILDKIT=1 docker build
--secret id=<name>,src=<file>`. The docker SDK speaks only to the classic builder, which knows
no `RUN --mount=type=secret`; the docker CLI of Debian's docker.io 20.10 does it with the
engine's built-in Dockerfile frontend (no `# syntax=` line, which would pull a frontend image;
no buildx; a CLI from 23 on needs the buildx plugin for it).

Each value is a 0400 file in a 0700 directory of its own under the runtime's secrets
directory (tmpfs on a droplet, left out of snapshots), never in the build context, removed when
the build ends however it ends; a directory left by a killed agent goes at the next build. The
command runs as an async subprocess with an environment of its own (the engine's address and
the CLI's few variables, never the agent's, which may hold fallback secrets). Of its output
only a tail is kept, every value scrubbed, for the error of a failed build.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from plugins.fs import remove_tree, write_secret_files
from plugins.runtimes.docker.containers import Build
from protocol.errors import MeshError

SCRATCH_PREFIX = ".build-"  # no container's secret directory is named so
PASSED_VARIABLES = (
    "PATH",
    "HOME",
    "DOCKER_HOST",
    "DOCKER_TLS_VERIFY",
    "DOCKER_CERT_PATH",
    "DOCKER_CONFIG",
)
CHUNK = 65536
TAIL_BYTES = 16384
TAIL_LINES = 3
DETAIL_CHARS = 400
SCRUBBED = b"[secret]"
MIN_SCRUBBED_LINE = 4  # the lines of a multi-line value scrubbed one by one from this length


class CliBuildError(MeshError):
    """`docker build` with build secrets failed: `reason` says how, `tail` holds the last
    lines of its output with every secret value scrubbed."""

    def __init__(self, reason: str, tail: str = "") -> None:
        self.reason = reason
        self.tail = tail
        super().__init__(f"{reason} ({tail})" if tail else reason)


@dataclass(frozen=True, slots=True)
class SecretBuilds:
    """Runs the builds of one runtime that have build secrets, one at a time (the caller
    holds the build lock): `cli` is the docker command, `docker_host` the engine's address
    (None: `DOCKER_HOST` or the local socket), `scratch` where the secret files go."""

    cli: str
    docker_host: str | None
    scratch: Path
    log: logging.Logger

    async def build(
        self, image: str, build: Build, values: Mapping[str, bytes], labels: Mapping[str, str]
    ) -> None:
        missing = [name for name in build.secrets if name not in values]
        if missing:
            raise CliBuildError(f"no value for the build secrets {', '.join(missing)}")
        cli = shutil.which(self.cli)
        if cli is None:
            raise CliBuildError(
                f"build secrets need the docker command ({self.cli!r} not found; "
                "Debian package docker.io)"
            )
        chosen = {name: values[name] for name in build.secrets}
        directory = self.scratch / f"{SCRATCH_PREFIX}{secrets.token_hex(8)}"
        if any(c in str(directory) for c in ',"'):
            raise CliBuildError(f"the secret files' directory {directory} has a comma or quote")
        try:
            try:
                await asyncio.to_thread(prepare, build, directory, chosen)
            except OSError as err:  # this droplet's disk, not the engine
                raise CliBuildError(f"cannot write the build's secret files: {err}") from None
            argv = build_command(cli, image, build, directory, labels)
            try:
                code, tail = await run(argv, cli_environment(self.docker_host), chosen.values())
            except OSError as err:
                raise CliBuildError(f"cannot run {cli}: {err}") from None
        finally:
            remove_tree(directory)  # at once, even when cancelled: a few small files
        if code != 0:
            raise CliBuildError(f"docker build exited with {code}", tail)
        self.log.info("Image built with build secrets. image=%s secrets=%s", image, build.secrets)


def prepare(build: Build, directory: Path, values: dict[str, bytes]) -> None:
    """Check the context is here, remove what killed builds left, write `values` as files."""
    if not Path(build.context).is_dir():
        raise ValueError(
            f"the build context {build.context} is not on this droplet; "
            "it is built where the context is (a deploy from git brings it)"
        )
    for stale in directory.parent.glob(f"{SCRATCH_PREFIX}*"):
        remove_tree(stale)  # left by an agent killed during a build
    write_secret_files(directory, values)


def build_command(
    cli: str, image: str, build: Build, directory: Path, labels: Mapping[str, str]
) -> list[str]:
    """The `docker build` arguments: secrets by file, never by value."""
    argv = [cli, "build", "--progress=plain", "--tag", image]
    for key, value in labels.items():
        argv += ["--label", f"{key}={value}"]
    for name in build.secrets:
        argv += ["--secret", f"id={name},src={directory / name}"]
    if build.dockerfile:
        argv += ["--file", build.dockerfile]
    argv.append(build.context)
    return argv


def cli_environment(
    docker_host: str | None, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """What the CLI may see of the agent's environment: where the engine is, and BuildKit."""
    environ = os.environ if environ is None else environ
    env = {name: environ[name] for name in PASSED_VARIABLES if name in environ}
    if docker_host:
        env["DOCKER_HOST"] = docker_host
    env["DOCKER_BUILDKIT"] = "1"
    return env


async def run(argv: list[str], env: dict[str, str], values: Iterable[bytes]) -> tuple[int, str]:
    """Run `argv`; its exit code and the last lines of its output, `values` scrubbed. A
    cancelled run kills the command (the engine then cancels the build)."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
    )
    tail, cut = bytearray(), False
    try:
        assert process.stdout is not None
        while chunk := await process.stdout.read(CHUNK):
            tail += chunk
            if len(tail) > TAIL_BYTES:
                del tail[:-TAIL_BYTES]
                cut = True
        code = await process.wait()
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
    return code, last_lines(scrub(bytes(tail), values), cut)


def scrub(output: bytes, values: Iterable[bytes]) -> bytes:
    """`output` with every value (stripped, and each longer line of it) replaced."""
    pieces: set[bytes] = set()
    for value in values:
        pieces.add(value.strip())
        lines = (line.strip() for line in value.splitlines())
        pieces |= {line for line in lines if len(line) >= MIN_SCRUBBED_LINE}
    for piece in sorted((p for p in pieces if p), key=len, reverse=True):
        output = output.replace(piece, SCRUBBED)
    return output


def last_lines(output: bytes, cut: bool) -> str:
    """The last meaningful lines on one line; the first line of a cut tail is dropped (a
    value may straddle the cut)."""
    lines = output.decode("utf-8", errors="replace").splitlines()
    if cut:
        lines = lines[1:]
    kept = [line.strip() for line in lines if line.strip() and line.strip().strip("-")]
    return " | ".join(kept[-TAIL_LINES:])[-DETAIL_CHARS:]
