"""A real private registry for tests: Debian's `docker-registry` (the distribution registry
2.8) with a configuration of its own (htpasswd login, storage in a temporary directory) on
127.0.0.1 at a port it picks itself (read from its log, "listening on ..."), stopped
afterwards. The package's own service (`/etc/docker/registry`, port 5000) is never used.
Skipped with a reason where the binary or `bcrypt` is missing, a failure in CI (`CI=true`),
where `.ci/run` installs it. Docker reaches a registry on 127.0.0.0/8 over plain HTTP without
any configuration."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support import unavailable

READY_S = 20.0
LISTENING = re.compile(rb"listening on (127\.0\.0\.1:\d+)")
CONFIG = """\
version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:0
  secret: {secret}
auth:
  htpasswd:
    realm: meshd-test
    path: {htpasswd}
"""


@dataclass
class Registry:
    server: str  # 127.0.0.1:<port>, as image references name it
    username: str
    password: str = field(repr=False)
    process: subprocess.Popen[bytes] = field(repr=False)

    @property
    def login(self) -> dict[str, str]:
        """The docker SDK's `auth_config` for this registry's user."""
        return {"username": self.username, "password": self.password}


def registry_binary() -> str:
    found = shutil.which("docker-registry") or (
        "/usr/bin/docker-registry" if os.path.isfile("/usr/bin/docker-registry") else None
    )
    if found is None:
        unavailable("docker-registry not installed (Debian: apt-get install docker-registry)")
    return found


def htpasswd_line(username: str, password: str) -> str:
    """The registry's htpasswd entry: bcrypt, the only hash it takes."""
    try:
        import bcrypt
    except ImportError:
        unavailable("bcrypt not installed (pip install -e '.[test]')")
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4))
    return f"{username}:{hashed.decode()}\n"


@contextlib.contextmanager
def running_registry(directory: Path, username: str = "ci") -> Iterator[Registry]:
    binary = registry_binary()
    password = secrets.token_urlsafe(16)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "htpasswd").write_text(htpasswd_line(username, password))
    config = directory / "config.yml"
    config.write_text(
        CONFIG.format(
            storage=directory / "storage",
            secret=secrets.token_hex(16),
            htpasswd=directory / "htpasswd",
        )
    )
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(directory)}  # no REGISTRY_* settings
    log_path = directory / "registry.log"
    log = log_path.open("ab")
    process = subprocess.Popen(
        [binary, "serve", str(config)], stdout=log, stderr=log, env=env, stdin=subprocess.DEVNULL
    )
    try:
        server = _wait_listening(process, log_path)
        yield Registry(server, username, password, process)
    finally:
        process.kill()
        process.wait(timeout=10)
        log.close()


def _wait_listening(process: subprocess.Popen[bytes], log: Path) -> str:
    deadline = time.monotonic() + READY_S
    while time.monotonic() < deadline:
        found = LISTENING.search(log.read_bytes())
        if found:
            return found.group(1).decode()
        if process.poll() is not None:
            raise RuntimeError(
                f"docker-registry exited ({process.returncode}): {log.read_text()[-2000:]}"
            )
        time.sleep(0.05)
    raise TimeoutError(f"docker-registry did not listen within {READY_S:.0f} s")


def push(client: Any, image: str, registry: Registry, repository: str, tag: str) -> str:
    """`image` pushed to `registry` as `<server>/<repository>:<tag>` with its login; the
    reference (still tagged locally: the caller removes it)."""
    reference = f"{registry.server}/{repository}"
    client.images.get(image).tag(reference, tag)
    said = client.images.push(
        reference, tag=tag, auth_config=registry.login, stream=True, decode=True
    )
    errors = [line["error"] for line in said if "error" in line]
    if errors:
        raise RuntimeError(f"push {reference}:{tag}: {errors[-1]}")
    return f"{reference}:{tag}"
