"""What every droplet of a mesh is told at creation (its `user_data`) and the pure functions
over it: which droplets run nats-server with JetStream, and their server configuration.

Topology (docs/decisions.md, "JetStream follows membership"): JetStream runs on `master` alone
below three droplets and on `master` and two more from three on (the scheduler chooses them,
`meshd.core.jetstream`). user_data's `core` are the servers when the droplet was made, at
epoch `servers_epoch`; `jetstream.json` follows them as they move. A lone JetStream server
cannot run in clustered mode (nats-server refuses a cluster without routes), and two would
halt on either's death.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from meshd.core.trust import ClientTrust, trust
from plugins.fs import atomic_write
from plugins.templating import render
from protocol import subjects

CLIENT_PORT = 4222
CLUSTER_PORT = 6222
MONITOR_PORT = 8222
AGENT_HTTP_PORT = 8080
# A TLS mesh's files in a droplet's directory (0600): the mesh CA's certificate and the
# droplet's own leaf. The CA's key is a mesh secret; meshes made before kept it in a file.
CA_CERT_FILE = "secrets/mesh-ca.crt"
CA_KEY_FILE = "secrets/mesh-ca.key"
LEAF_CERT_FILE = "secrets/nats.crt"
LEAF_KEY_FILE = "secrets/nats.key"
USERS = ("agent", "operator", "deployer", "route")
# Provider tags: every droplet of a mesh carries its mesh's tag, and one of these.
CORE_TAG = "meshd-core"  # created by `meshctl up`; never destroyed by the provisioner
WEB_TAG = "meshd-web"  # created by the provisioner for a project


def mesh_tag(mesh: str) -> str:
    """The provider tag of every droplet of `mesh`."""
    return f"meshd-mesh-{mesh}"


def core_count(droplets: int) -> int:
    """How many of the first droplets run JetStream: one, or three once there are three."""
    return 3 if droplets >= 3 else 1


def new_passwords() -> dict[str, str]:
    return {user: secrets.token_urlsafe(24) for user in USERS}


DEFAULT_ENTRY_PORT = 80
DEFAULT_ENTRY_TLS_PORT = 443


@dataclass(frozen=True, slots=True)
class CoreServer:
    name: str
    address: str


@dataclass(frozen=True, slots=True)
class MeshConfig:
    """The mesh-wide part of every droplet's user_data. Holds passwords: files 0600 only."""

    mesh: str
    core: tuple[CoreServer, ...]
    passwords: dict[str, str]
    provider: dict[str, Any] = field(default_factory=dict)
    runtime: dict[str, Any] = field(default_factory=dict)
    entry: dict[str, Any] = field(default_factory=dict)  # {"address", "port"}: the lb's
    servers_epoch: int = 0  # the JetStream epoch of `core`
    # Droplets that start bare and are bootstrapped over SSH (bootstrap.py): {"python": the
    # interpreter that runs meshd on them}; empty where the provider starts the agent (local).
    bootstrap: dict[str, Any] = field(default_factory=dict)
    # The mesh CA's certificate (PEM): NATS clients and routes use TLS from it; empty: plain
    # NATS (local meshes).
    tls_ca: str = ""

    def trust(self) -> ClientTrust | None:
        """What a NATS client of this mesh verifies servers with; None: plain NATS."""
        return trust(self.mesh, self.tls_ca)

    def entry_listen(self, fallback_address: str) -> str:
        """`address:port` of the mesh's entry point; the reserved address, else `fallback`."""
        address = self.entry.get("address") or fallback_address
        return f"{address}:{self.entry.get('port', DEFAULT_ENTRY_PORT)}"

    def entry_tls_listen(self, fallback_address: str) -> str:
        """`address:port` where the entry point serves HTTPS (443 beside port 80, else 8443)."""
        address = self.entry.get("address") or fallback_address
        port = self.entry.get("port", DEFAULT_ENTRY_PORT)
        tls_port = self.entry.get("tls_port") or (DEFAULT_ENTRY_TLS_PORT if port == 80 else 8443)
        return f"{address}:{tls_port}"

    def entry_url(self, fallback_address: str) -> str:
        return f"http://{self.entry_listen(fallback_address)}"

    @property
    def replicas(self) -> int:
        return min(3, len(self.core))

    def nats_urls(self) -> list[str]:
        return [f"nats://{c.address}:{CLIENT_PORT}" for c in self.core]

    def is_core(self, droplet: str) -> bool:
        return any(c.name == droplet for c in self.core)

    def with_servers(self, servers: tuple[CoreServer, ...], epoch: int | None = None) -> MeshConfig:
        """The same mesh with JetStream on `servers` (they change as the mesh grows), as of
        `epoch` when given."""
        return replace(
            self, core=servers, servers_epoch=self.servers_epoch if epoch is None else epoch
        )

    def to_json(self) -> str:
        return json.dumps(
            {
                "mesh": self.mesh,
                "core": [{"name": c.name, "address": c.address} for c in self.core],
                "passwords": self.passwords,
                "provider": self.provider,
                "runtime": self.runtime,
                "entry": self.entry,
                "servers_epoch": self.servers_epoch,
                "bootstrap": self.bootstrap,
                "tls_ca": self.tls_ca,
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str) -> MeshConfig:
        data = json.loads(text)
        return cls(
            mesh=data["mesh"],
            core=tuple(CoreServer(c["name"], c["address"]) for c in data["core"]),
            passwords=dict(data["passwords"]),
            provider=dict(data.get("provider", {})),
            runtime=dict(data.get("runtime", {})),
            entry=dict(data.get("entry", {})),
            servers_epoch=int(data.get("servers_epoch", 0)),
            bootstrap=dict(data.get("bootstrap", {})),
            tls_ca=str(data.get("tls_ca", "")),
        )


@dataclass(frozen=True, slots=True)
class DropletIdentity:
    """`droplet.json`, written by the provider: who this droplet is."""

    id: str
    name: str
    size: str
    address: str

    @classmethod
    def load(cls, directory: Path) -> DropletIdentity:
        data = json.loads((directory / "droplet.json").read_text())
        return cls(str(data["id"]), data["name"], data["size"], data["address"])


def nats_server_conf(
    config: MeshConfig,
    droplet: CoreServer,
    store_dir: Path,
    epoch: int = 0,
    droplet_dir: Path | None = None,
) -> str:
    """The nats-server configuration of one JetStream server. The cluster's name carries the
    placement's epoch: the servers of one placement never route to those of another (a server
    started for a move must not join the cluster the state is moving away from). A TLS mesh's
    server uses the certificates in `droplet_dir`."""
    routes = [c.address for c in config.core] if len(config.core) > 1 else []
    tls = None
    if config.tls_ca:
        if droplet_dir is None:
            raise ValueError("a TLS mesh's nats-server needs the droplet's directory")
        tls = {
            "cert": str(droplet_dir / LEAF_CERT_FILE),
            "key": str(droplet_dir / LEAF_KEY_FILE),
            "ca": str(droplet_dir / CA_CERT_FILE),
        }
    return render(
        "nats-server.conf.j2",
        mesh=config.mesh if epoch == 0 else f"{config.mesh}-{epoch}",
        name=droplet.name,
        address=droplet.address,
        client_port=CLIENT_PORT,
        cluster_port=CLUSTER_PORT,
        monitor_port=MONITOR_PORT,
        store_dir=str(store_dir),
        max_memory_store="32MB",
        max_file_store="512MB",
        routes=routes,
        route_password=config.passwords["route"],
        passwords=config.passwords,
        deploy_inbox=subjects.DEPLOY_INBOX,
        tls=tls,
    )


JETSTREAM_FILE = "jetstream.json"


@dataclass(frozen=True, slots=True)
class ServerPlacement:
    """`jetstream.json` in a droplet's directory: the JetStream servers this droplet knows of,
    written by its agent when they change, read by the droplet's supervisor (which runs
    nats-server when the droplet is one of them) and by the agent when it starts. Without the
    file the servers are user_data's `core`. `fresh_store`: this epoch's servers start with
    empty stores (the state moves over by backup and restore, agent/store/moves.py); the old
    store is set aside, never deleted here."""

    epoch: int
    servers: tuple[CoreServer, ...]
    fresh_store: bool = False

    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.servers)

    @property
    def clustered(self) -> bool:
        return len(self.servers) > 1

    def save(self, directory: Path) -> None:
        text = json.dumps(
            {
                "epoch": self.epoch,
                "servers": [{"name": s.name, "address": s.address} for s in self.servers],
                "fresh_store": self.fresh_store,
            }
        )
        atomic_write(directory / JETSTREAM_FILE, text.encode(), mode=0o600)

    @classmethod
    def load(cls, directory: Path, config: MeshConfig) -> ServerPlacement:
        """The file's placement, or user_data's servers where they are newer: a droplet
        rebuilt from a snapshot has the file of the snapshot's day, and its user_data the
        servers of the day it was rebuilt (a rolled-back placement would split the mesh)."""
        given = cls(config.servers_epoch, config.core)
        try:
            data = json.loads((directory / JETSTREAM_FILE).read_text())
        except FileNotFoundError:
            return given
        found = cls(
            int(data["epoch"]),
            tuple(CoreServer(s["name"], s["address"]) for s in data["servers"]),
            bool(data.get("fresh_store", False)),
        )
        return given if given.epoch > found.epoch else found


def user_data_now(droplet_dir: Path, config: MeshConfig) -> str:
    """user_data for a droplet made now: the JetStream servers this droplet uses, at their
    epoch. A droplet rebuilt from a snapshot then joins them, not the servers of the day of
    its snapshot (ServerPlacement.load takes the newer)."""
    placement = ServerPlacement.load(droplet_dir, config)
    return config.with_servers(placement.servers, placement.epoch).to_json()
