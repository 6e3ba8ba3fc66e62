"""Where `meshctl` finds a mesh: context files (0600) under the user's config directory, and
where local meshes keep their state. `MESHD_CONFIG_HOME` / `MESHD_STATE_HOME` override the
XDG defaults (tests use them)."""

from __future__ import annotations

import getpass
import json
import os
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from meshd.core.trust import ClientTrust, trust
from protocol.errors import MeshError

CURRENT = "current"


class NoMeshError(MeshError):
    """There is no mesh to talk to."""


def config_home() -> Path:
    if "MESHD_CONFIG_HOME" in os.environ:
        return Path(os.environ["MESHD_CONFIG_HOME"])
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "meshd"


def state_home() -> Path:
    if "MESHD_STATE_HOME" in os.environ:
        return Path(os.environ["MESHD_STATE_HOME"])
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "meshd"


@dataclass(frozen=True, slots=True)
class Context:
    name: str
    mesh: str
    servers: list[str]
    user: str
    password: str
    provider: dict[str, Any] = field(default_factory=dict)
    local: bool = False
    runtime: dict[str, Any] = field(default_factory=dict)  # the droplets' runtime section
    entry_url: str | None = None  # the mesh's entry point (the lb holder's nginx)
    # The NATS user `deployer`'s password, for git hooks (`meshctl hook install`); None in
    # contexts made before git deploys.
    deployer_password: str | None = None
    # Meshes whose NATS is private (DigitalOcean): reached through SSH to this droplet,
    # {"host", "user", "key_file"} (meshd/cli/tunnel.py); None: NATS is reached directly.
    tunnel: dict[str, Any] | None = None
    # The mesh CA's certificate (PEM) where NATS is TLS (DigitalOcean); None: plain NATS. Its
    # key is beside the context (`ca_file`), for an `up` run again.
    tls_ca: str | None = None

    def trust(self) -> ClientTrust | None:
        return trust(self.mesh, self.tls_ca)

    @property
    def state_dir(self) -> Path:
        return state_home() / self.name

    def save(self) -> Path:
        directory = config_home() / "contexts"
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = directory / f"{self.name}.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(asdict(self), out, indent=2)
        (config_home() / CURRENT).write_text(self.name)
        return path


def load_context(name: str | None = None) -> Context:
    chosen = name or _current()
    path = config_home() / "contexts" / f"{chosen}.json"
    if not path.exists():
        raise NoMeshError(
            f"no mesh called {chosen!r}; start a local one with `meshctl up`"
            if name
            else "no mesh yet; start a local one with `meshctl up`"
        )
    data = json.loads(path.read_text())
    return Context(**data)


def ca_file(name: str) -> Path:
    """Where the context `name` keeps its mesh's CA (key and certificate, 0600), if it has one."""
    return config_home() / "contexts" / f"{name}.ca.pem"


def remove_context(name: str) -> None:
    (config_home() / "contexts" / f"{name}.json").unlink(missing_ok=True)
    ca_file(name).unlink(missing_ok=True)
    current = config_home() / CURRENT
    if current.exists() and current.read_text().strip() == name:
        current.unlink()


def _current() -> str:
    path = config_home() / CURRENT
    return path.read_text().strip() if path.exists() else "local"


def who() -> str:
    """The operator as events and records name them: `user@host`."""
    return f"{getpass.getuser()}@{socket.gethostname()}"
