"""`meshctl up`: start a mesh of local droplets on this machine."""

from __future__ import annotations

import asyncio
import os
import resource
import shutil
import sys
from typing import Any

import click

from meshd.agent.config import (
    CLIENT_PORT,
    CORE_TAG,
    DEFAULT_ENTRY_PORT,
    DEFAULT_ENTRY_TLS_PORT,
    CoreServer,
    MeshConfig,
    mesh_tag,
    new_passwords,
)
from meshd.cli.context import Context, NoMeshError, load_context, state_home
from meshd.cli.joining import open_provider, power_on, wait_joined
from meshd.cli.tables import console
from plugins.providers import (
    DropletRecord,
    ReservedAddresses,
    UserDataWriter,
)
from plugins.runtimes import mesh_data_root
from protocol.errors import MeshError

CORE_SIZE = "s-1vcpu-1gb"
PODMAN_MAX_PROCESSES = 32768
ENTRY_PORT_UNPRIVILEGED = 8000  # the entry point's port when `up` cannot bind port 80
ENTRY_TLS_PORT_UNPRIVILEGED = 8443  # ... and its HTTPS port instead of 443
PODMAN_INIT = "/usr/libexec/podman/catatonit"
MAX_LOCAL_DROPLETS = 50  # of `--droplets`: the loopback drills (bench/scale.py runs 27)


def core_names(count: int) -> list[str]:
    return ["master", *(f"mesh-{i}" for i in range(2, count + 1))]


def local_provider(context_name: str, netns: bool = False) -> dict[str, object]:
    """The local provider's account under the mesh's state (gone with `down`), its volumes
    beside it (kept by `down` unless --delete-data): as root where the datastores' own users
    reach them."""
    volumes = (
        mesh_data_root(context_name) / "volumes"
        if os.geteuid() == 0
        else state_home() / ".volumes" / context_name
    )
    config: dict[str, object] = {
        "dir": str(state_home() / context_name / "provider"),
        "launcher": [sys.executable, "-m", "meshd.agent", "droplet"],
        "volumes": str(volumes),
    }
    if netns:
        config["network"] = "netns"
    return {"name": "local", "config": config}


@click.command()
@click.option(
    "--provider",
    type=click.Choice(["local", "digitalocean"]),
    default="local",
    show_default=True,
    help="Where the droplets are: local, processes on this machine; digitalocean, droplets "
    "of your account (token from DIGITALOCEAN_TOKEN or --token-file; docs/digitalocean.md).",
)
@click.option("--region", metavar="SLUG", help="digitalocean: where the droplets are (fra1).")
@click.option(
    "--admin-ip",
    "admin_ips",
    multiple=True,
    metavar="IP",
    help="digitalocean: an address SSH is open to (yours; repeatable). Required: meshctl "
    "never asks an outside service what your address is.",
)
@click.option(
    "--api-url",
    metavar="URL",
    help="digitalocean: the API (default DigitalOcean's; the stand-in's `inside_url` in tests).",
)
@click.option(
    "--token-file",
    type=click.Path(exists=True, dir_okay=False),
    help="digitalocean: a file holding the API token (else DIGITALOCEAN_TOKEN).",
)
@click.option(
    "--ssh-key",
    "ssh_keys",
    multiple=True,
    metavar="NAME=FILE",
    help="digitalocean: another public key put on every droplet of a new mesh (repeatable), "
    "e.g. deploy=~/.ssh/deploy.pub; uploaded to the account once, kept there by `down`.",
)
@click.option(
    "--droplet-python",
    default="/opt/meshd/venv/bin/python",
    show_default=True,
    metavar="PATH",
    help="digitalocean: the interpreter that runs meshd on droplets; the default one is made "
    "and filled from PyPI by the bootstrap. Another must have meshd's dependencies.",
)
@click.option("--local", "local", is_flag=True, hidden=True, help="The same as --provider local.")
@click.option(
    "--droplets",
    default=1,
    show_default=True,
    type=click.IntRange(1, MAX_LOCAL_DROPLETS),
    help="Droplets to start: master, then mesh-2, ... for drills and tests; `publish` adds "
    "the CSV's. JetStream starts on master alone and grows to three servers (three replicas) "
    "once the mesh has three droplets. Each local droplet costs an agent of about 60 MB; 27 "
    "of them idle on a third of one core (docs/scale.md).",
)
@click.option(
    "--context",
    "name",
    default="local",
    show_default=True,
    metavar="NAME",
    help="Name of the mesh: its context, which later commands take with --context.",
)
@click.option("--name", "name", hidden=True, help="Old name of --context.")
@click.option(
    "--runtime",
    type=click.Choice(["auto", "docker", "process"]),
    default="auto",
    show_default=True,
    help="How droplets run services: as Docker containers, or as plain processes (for "
    "machines without Docker). auto: docker when an engine answers, else process.",
)
@click.option(
    "--docker-host",
    default=None,
    metavar="URL",
    help="The Docker-compatible engine to use, e.g. unix:///run/podman/podman.sock "
    "(default: DOCKER_HOST or the local socket). Implies --runtime docker.",
)
@click.option(
    "--netns",
    is_flag=True,
    help="Put each droplet in a network namespace of its own, on a private 10.213.B.0/24 "
    "bridge, instead of a loopback address: needed for `meshctl chaos partition` and `lose`. "
    "Root only; services run as processes.",
)
@click.option(
    "--datastores",
    type=click.Choice(["process", "docker"]),
    default="process",
    show_default=True,
    help="docker runtime: run the built-in PostgreSQL and Redis as the host's own servers "
    "(process: no registry needed, backed up and verified) or from Docker Hub's images.",
)
@click.option(
    "--pull/--no-pull",
    default=True,
    show_default=True,
    help="Pull images the engine lacks from their registry (docker runtime).",
)
def up(
    provider: str,
    region: str | None,
    admin_ips: tuple[str, ...],
    api_url: str | None,
    token_file: str | None,
    ssh_keys: tuple[str, ...],
    droplet_python: str,
    local: bool,
    droplets: int,
    name: str,
    runtime: str,
    docker_host: str | None,
    netns: bool,
    pull: bool,
    datastores: str,
) -> None:
    """Start a mesh of local droplets (each a process group on its own 127.x.y.z address, or
    in its own network namespace with --netns), or master on DigitalOcean, and wait until
    every agent has joined. Running it again is harmless."""
    if provider == "digitalocean" and not local:
        from meshd.cli.cloud import additional_keys, up_on_digitalocean

        settings = {"region": region, "api_url": api_url, "token_file": token_file,
                    "additional_keys": additional_keys(ssh_keys)}  # fmt: skip
        asyncio.run(up_on_digitalocean(name, settings, list(admin_ips), runtime, droplet_python))
        return
    asyncio.run(_up(name, droplets, runtime, docker_host, pull, netns, datastores))


async def _up(
    name: str,
    count: int,
    runtime: str,
    docker_host: str | None,
    pull: bool,
    netns: bool = False,
    datastores: str = "process",
) -> None:
    try:
        context = load_context(name)
    except NoMeshError:
        context = None
    if context is None:
        if netns:
            check_netns(runtime, docker_host)
            runtime = "process"
        chosen = await choose_runtime(runtime, docker_host, pull, datastores)
        context = await _create(name, count, chosen, netns)
    else:
        running = context.runtime.get("name", "process")
        if runtime not in ("auto", running) or (docker_host and running != "docker"):
            raise MeshError(
                f"up: mesh {name!r} already runs the {running} runtime; "
                f"`meshctl down --context {name}` first to change it"
            )
        await power_on(context)
    await wait_joined(context)


def check_netns(runtime: str, docker_host: str | None) -> None:
    if os.geteuid() != 0:
        raise MeshError("up: --netns needs root (it creates network namespaces and a bridge)")
    if runtime == "docker" or docker_host:
        raise MeshError(
            "up: --netns runs services as processes: Docker publishes ports on the machine, "
            "not inside a droplet's namespace; leave out --runtime docker and --docker-host"
        )
    missing = [tool for tool in ("ip", "nsenter", "iptables") if shutil.which(tool) is None]
    if missing:
        raise MeshError(
            f"up: --netns needs {', '.join(missing)} (Debian: apt-get install iproute2 "
            "util-linux iptables)"
        )


async def choose_runtime(
    runtime: str, docker_host: str | None, pull: bool, datastores: str = "process"
) -> dict[str, Any]:
    """The runtime section of the mesh config; says which was chosen and why."""
    if runtime == "process" and docker_host is not None:
        raise MeshError("up: --docker-host names an engine, which --runtime process never uses")
    if runtime == "process":
        console.print("Runtime: [bold]process[/] (services run as plain processes).")
        return {"name": "process"}
    from plugins.runtimes.docker.admin import engine_version

    version = await asyncio.to_thread(engine_version, docker_host)
    where = docker_host or "the local Docker socket"
    if version is None:
        if runtime == "auto" and docker_host is None:
            console.print(
                "Runtime: [bold]process[/]: no Docker engine answers at "
                f"{where}, so services run as plain processes."
            )
            return {"name": "process"}
        raise MeshError(
            f"up: no Docker engine answers at {where}; start it or use --runtime process"
        )
    apart = "; datastores: the host's PostgreSQL and Redis" if datastores == "process" else ""
    console.print(f"Runtime: [bold]docker[/] ({version} at {where}){apart}.")
    config: dict[str, Any] = {"pull": pull}
    if datastores == "process":
        config["datastores"] = "process"
    if docker_host:
        config["docker_host"] = docker_host
    if version.startswith("Podman"):
        config["ulimits"] = podman_ulimits()
        config["init"] = bool(shutil.which("catatonit") or shutil.which(PODMAN_INIT))
    return {"name": "docker", "config": config}


def podman_ulimits() -> dict[str, int]:
    """Rootful podman gives containers higher limits than this machine's hard limits and than
    its own (it runs with at most 32768 processes), and starting them then fails with
    "error setting rlimits": cap them at what both allow."""
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    limits = {"nofile": nofile, "nproc": PODMAN_MAX_PROCESSES}
    if nofile == resource.RLIM_INFINITY:
        del limits["nofile"]
    if nproc != resource.RLIM_INFINITY:
        limits["nproc"] = min(nproc, PODMAN_MAX_PROCESSES)
    return limits


async def _create(name: str, count: int, runtime: dict[str, Any], netns: bool) -> Context:
    provider_config = local_provider(name, netns)
    provider = open_provider(name, provider_config)
    records: list[DropletRecord] = []
    try:
        for droplet in core_names(count):
            console.print(f"Creating droplet [bold]{droplet}[/] ...")
            records.append(
                await provider.create(
                    droplet, CORE_SIZE, tags=[mesh_tag(name), CORE_TAG], user_data="", fence=None
                )
            )
        cores = records[:1]  # JetStream starts on master alone; it grows with the mesh
        root = os.geteuid() == 0
        entry: dict[str, Any] = {
            "port": DEFAULT_ENTRY_PORT if root else ENTRY_PORT_UNPRIVILEGED,
            "tls_port": DEFAULT_ENTRY_TLS_PORT if root else ENTRY_TLS_PORT_UNPRIVILEGED,
        }
        if isinstance(provider, ReservedAddresses):
            entry["address"] = await provider.reserve_address()
        config = MeshConfig(
            mesh=name,
            core=tuple(CoreServer(r.name, r.address) for r in cores),
            passwords=new_passwords(),
            provider=provider_config,
            runtime=runtime,
            entry=entry,
        )
        if not isinstance(provider, UserDataWriter):
            raise MeshError(
                f"up: provider {provider.name!r} cannot configure droplets after creation"
            )
        for record in records:
            await provider.set_user_data(record.id, config.to_json())
    except MeshError:
        for record in records:
            await provider.destroy(record.id, fence=None)
        raise
    finally:
        await provider.close()
    context = Context(
        name=name,
        mesh=name,
        # Every droplet: JetStream moves to others as the mesh grows (`connect` follows it).
        servers=[f"nats://{r.address}:{CLIENT_PORT}" for r in records],
        user="operator",
        password=config.passwords["operator"],
        provider=provider_config,
        local=True,
        runtime=runtime,
        entry_url=config.entry_url(records[0].address),
        deployer_password=config.passwords["deployer"],
    )
    context.save()
    return context
