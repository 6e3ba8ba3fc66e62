"""The builder's git: one bare cache per project, fetched from `git_repo` for each deploy;
build contexts exported with `git archive` (a bare repository has no work tree to check out);
UAT tags made in the cache and pushed back. Runs the system's `git` without a terminal."""

from __future__ import annotations

import asyncio
import io
import os
import tarfile
from pathlib import Path

from protocol.errors import MeshError

GIT_TIMEOUT_S = 300.0


class GitError(MeshError):
    """A git command failed; the message is git's own last line."""


class GitCache:
    """The bare cache of one project's repository at `path`, fetched from `url`."""

    def __init__(self, path: Path, url: str, env: dict[str, str] | None = None) -> None:
        self.path = path
        self.url = url
        self.env = env or {}  # GIT_SSH_COMMAND for a repository over SSH

    async def fetch(self) -> None:
        """Every branch and tag of `url`, replacing what the cache had."""
        if not (self.path / "HEAD").exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            await _git(None, "init", "--quiet", "--bare", str(self.path))
        await self._git(
            "fetch",
            "--quiet",
            "--force",
            "--prune",
            self.url,
            "+refs/heads/*:refs/heads/*",
            "+refs/tags/*:refs/tags/*",
        )

    async def commit_of(self, ref: str) -> str:
        """The commit `ref` names (a branch, `refs/heads/<branch>`, a tag or a sha)."""
        for candidate in (ref, f"refs/heads/{ref}", f"refs/tags/{ref}"):
            try:
                out = await self._git("rev-parse", "--verify", "--quiet", f"{candidate}^{{commit}}")
            except GitError:
                continue
            return out.strip()
        raise GitError(f"{ref!r} is not a branch, tag or commit of {self.url}")

    async def object_id(self, sha: str, path: str) -> str | None:
        """The id of the tree or blob at `path` in commit `sha` (None: not there)."""
        try:
            return (await self._git("rev-parse", "--verify", "--quiet", f"{sha}:{path}")).strip()
        except GitError:
            return None

    async def export(self, sha: str, path: str, into: Path) -> Path:
        """The directory `path` of commit `sha` written under `into`; returns where."""
        data = await self._git_bytes("archive", "--format=tar", sha, "--", path)
        await asyncio.to_thread(_extract, data, into)  # a big context: not on the event loop
        return into / path

    async def tags(self) -> list[str]:
        return (await self._git("tag", "--list")).split()

    async def tag_and_push(self, tag: str, sha: str, message: str) -> None:
        """Tag `sha` (annotated) unless the tag exists, then push the tag to `url`."""
        if tag not in await self.tags():
            await self._git(
                "-c", "user.name=meshd", "-c", "user.email=meshd@localhost",
                "tag", "--annotate", "--message", message, tag, sha,
            )  # fmt: skip
        await self._git("push", "--quiet", self.url, f"refs/tags/{tag}")

    async def _git(self, *args: str) -> str:
        return (await _git(self.path, *args, env=self.env)).decode(errors="replace")

    async def _git_bytes(self, *args: str) -> bytes:
        return await _git(self.path, *args, env=self.env)


def _extract(data: bytes, into: Path) -> None:
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        archive.extractall(into, filter="data")


async def _git(repository: Path | None, *args: str, env: dict[str, str] | None = None) -> bytes:
    command = ["git", *(["--git-dir", str(repository)] if repository else []), *args]
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C", **(env or {})}
    process = await asyncio.create_subprocess_exec(
        *command,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
        env=env,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), GIT_TIMEOUT_S)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise GitError(f"git {args[0]} took more than {GIT_TIMEOUT_S:.0f} s") from None
    if process.returncode != 0:
        lines = err.decode(errors="replace").strip().splitlines()
        raise GitError(f"git {args[0]}: {lines[-1] if lines else f'exit {process.returncode}'}")
    return out
