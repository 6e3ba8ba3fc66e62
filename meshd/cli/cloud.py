"""`meshctl up --provider digitalocean`: a mesh on a DigitalOcean account.

In order, each step harmless to repeat (a failed `up` is run again): the infrastructure key
(`~/.ssh/infrastructure_key`, ed25519, made if missing) uploaded once; the mesh's firewall
(SSH from the administrators' addresses only); master, created once; the reserved IP, made
once and pointed at master; master bootstrapped over SSH (bootstrap.py) with the mesh's
configuration; the context, which reaches NATS through an SSH tunnel to master
(meshd/cli/tunnel.py); once master's agent has joined, the API token, the infrastructure key
and the mesh CA's key handed over as mesh secrets (meshd/cli/cloud_secrets.py), never as
files on a droplet.
`publish` then creates and bootstraps the rest.

NATS on such a mesh is TLS from the mesh's own CA, made by the first `up` and kept beside the
context (0600); its key reaches the mesh as the mesh secret `mesh_ca_key`, with which the
leaders that bootstrap droplets issue them their certificates.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

import bootstrap
from meshd.agent.bootstrapping import node_files
from meshd.agent.certificates import tls_files
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
from meshd.cli.cloud_secrets import hand_over
from meshd.cli.context import Context, NoMeshError, ca_file, load_context
from meshd.cli.joining import open_provider, power_on, wait_joined
from meshd.cli.tables import console
from meshd.core import secret_plan
from meshd.core.meshca import MeshCA, make_ca
from plugins.providers import DropletRecord, Provider, ReservedAddresses, Snapshotter, Volumes
from plugins.providers.cloud import CloudAccess
from protocol.errors import MeshError

INFRASTRUCTURE_KEY = Path("~/.ssh/infrastructure_key")
GIT_KEY = Path("~/.ssh/meshd_git_key")  # may only push to and fetch from master's repositories
CORE_SIZE = "s-1vcpu-1gb"


def infrastructure_key(path: Path = INFRASTRUCTURE_KEY) -> tuple[Path, str]:
    """The operator's key for the mesh's droplets, made (ed25519, 0600) if missing; its path
    and public half."""
    return ssh_key(path, "meshd infrastructure key")


def ssh_key(path: Path, comment: str) -> tuple[Path, str]:
    """The private key at `path`, made (ed25519, 0600) if missing; its path and public half."""
    import asyncssh

    path = path.expanduser()
    if not path.exists():
        key = asyncssh.generate_private_key("ssh-ed25519", comment=comment)
        _write_new_secret(path, key.export_private_key())
        path.with_suffix(".pub").write_bytes(key.export_public_key())
        console.print(f"Made the key {path} ({comment}).")
    key = asyncssh.read_private_key(str(path))
    return path, key.export_public_key().decode().strip()


def additional_keys(specs: Sequence[str]) -> dict[str, str]:
    """`--ssh-key NAME=FILE`s (the seed's additional_ssh_keys): each public key by its name;
    click.UsageError names the one that is wrong and how it would be right."""
    import asyncssh

    found: dict[str, str] = {}
    for spec in specs:
        name, _, file = spec.partition("=")
        if not name or not file:
            raise click.UsageError(f"--ssh-key {spec!r}: give NAME=FILE, e.g. deploy=~/.ssh/d.pub")
        path = Path(file).expanduser()
        try:
            key = asyncssh.import_public_key(path.read_bytes())
        except OSError as err:
            what = f"--ssh-key {name}: cannot read {path}: {err.strerror}"
            raise click.UsageError(what) from None
        except (asyncssh.KeyImportError, ValueError):
            raise click.UsageError(
                f"--ssh-key {name}: {path} is not an SSH public key (a .pub file, one line)"
            ) from None
        found[name] = key.export_public_key().decode().strip()
    return found


def mesh_ca(name: str) -> MeshCA:
    """The mesh's CA, beside its context (0600): made by the first `up`, read by any later one
    (an `up` run again after a failure bootstraps master with the same CA)."""
    path = ca_file(name)
    if path.exists():
        return MeshCA.from_pem(path.read_bytes())
    ca = make_ca(name, datetime.datetime.now(datetime.UTC))
    _write_new_secret(path, ca.to_pem())
    console.print(f"Made the mesh's CA for NATS TLS ({path}).")
    return ca


def _write_new_secret(path: Path, data: bytes) -> None:
    """A new 0600 file (never over one that exists: a key is not replaced by accident)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def operator_provider(settings: dict[str, Any]) -> dict[str, Any]:
    """The context's provider section: never the token (DIGITALOCEAN_TOKEN or token_file)."""
    keep = ("region", "api_url", "token_file", "image", "vpc_uuid")
    return {"name": "digitalocean", "config": {k: settings[k] for k in keep if settings.get(k)}}


async def up_on_digitalocean(
    name: str, settings: dict[str, Any], admins: list[str], runtime: str, python: str
) -> None:
    try:
        context = load_context(name)
    except NoMeshError:
        context = None
    if context is None:
        if not settings["region"]:
            raise MeshError("up: --provider digitalocean needs --region (e.g. fra1)")
        if not admins:
            raise MeshError(
                "up: --provider digitalocean needs --admin-ip (your address, which SSH is "
                "opened to; meshctl never asks an outside service for it)"
            )
        if not settings["token_file"] and not os.environ.get("DIGITALOCEAN_TOKEN"):
            raise MeshError("up: no API token: set DIGITALOCEAN_TOKEN or give --token-file")
        chosen = {"name": "docker" if runtime == "auto" else runtime}
        context = await create_on_digitalocean(name, settings, admins, chosen, python, CORE_SIZE)
    else:
        if settings.get("additional_keys"):
            console.print("--ssh-key is for a new mesh: the droplets of this one have theirs.")
        await power_on(context)
    await wait_joined(context)
    await hand_over(context, _agents_secrets(settings, context))


def _agents_secrets(settings: dict[str, Any], context: Context) -> dict[str, bytes]:
    """The operator's token, infrastructure key and mesh CA key, by the mesh secrets' names."""
    key_path = INFRASTRUCTURE_KEY.expanduser()
    token = _token(settings) or _token(dict(context.provider.get("config") or {}))
    ca = ca_file(context.name)
    return {
        secret_plan.CLOUD_TOKEN: token.encode(),
        secret_plan.INFRASTRUCTURE_KEY: key_path.read_bytes() if key_path.exists() else b"",
        secret_plan.MESH_CA_KEY: MeshCA.from_pem(ca.read_bytes()).key_pem if ca.exists() else b"",
    }


async def create_on_digitalocean(
    name: str,
    settings: dict[str, Any],
    admins: list[str],
    runtime: dict[str, Any],
    python: str,
    size: str,
) -> Context:
    """Everything `up` makes on the account, then the context; see the module docstring."""
    key_path, public_key = infrastructure_key()
    _, git_key = ssh_key(GIT_KEY, "meshd git key")
    section = operator_provider(settings)
    provider = open_provider(name, section)
    try:
        access = _access(provider)
        fingerprint = await access.ensure_ssh_key(key_path.name, public_key)
        console.print(f"SSH key [bold]{key_path.name}[/] is on the account ({fingerprint}).")
        keys = [fingerprint]
        for extra, public in dict(settings.get("additional_keys") or {}).items():
            keys.append(await access.ensure_ssh_key(extra, public))
            console.print(f"SSH key [bold]{extra}[/] is on the account; every droplet gets it.")
        await access.ensure_firewall(mesh_tag(name), admins)
        console.print(f"Firewall [bold]meshd-{name}[/]: SSH from {', '.join(admins)} only.")
    finally:
        await provider.close()
    section["config"]["ssh_keys"] = keys
    section["config"]["additional_ssh_keys"] = sorted(settings.get("additional_keys") or {})
    provider = open_provider(name, section)
    try:
        master = await _master(provider, name, size)
        if not isinstance(provider, ReservedAddresses):
            raise MeshError(f"up: provider {provider.name!r} has no reserved addresses")
        # An earlier `up` that failed later made master and pointed an address at it.
        entry_address = await _access(provider).reserved_address_of(master.id)
        if entry_address is None:
            section["config"].pop("reserved_ip", None)
            entry_address = await provider.reserve_address()
        section["config"]["reserved_ip"] = entry_address  # agents and `down` find it so
        await provider.assign_reserved_address(entry_address, master.id, fence=None)
        console.print(f"Reserved IP [bold]{entry_address}[/] points at master.")
    finally:
        await provider.close()
    # The agents' token is the mesh secret; the operator's own token_file is no path of theirs.
    agents = {"name": "digitalocean", "config": {
        **{k: v for k, v in section["config"].items() if k != "token_file"},
        "token_secret": secret_plan.CLOUD_TOKEN}}  # fmt: skip
    ca = mesh_ca(name)
    config = MeshConfig(
        mesh=name,
        core=(CoreServer(master.name, master.address),),
        passwords=new_passwords(),
        provider=agents,
        runtime=runtime,
        entry={
            "address": entry_address,
            "port": DEFAULT_ENTRY_PORT,
            "tls_port": DEFAULT_ENTRY_TLS_PORT,
        },
        bootstrap={"python": python, "git_keys": [git_key]},
        tls_ca=ca.cert_pem.decode(),
    )
    files = node_files(master, config.to_json(), tls_files(ca, name, master))
    console.print(f"Bootstrapping master over SSH ({master.public_address}) ...")
    import asyncssh

    report = await bootstrap.bootstrap(
        bootstrap.Target(
            master.public_address,
            asyncssh.import_private_key(key_path.read_bytes()),
            python=python,
        ),  # fmt: skip
        bootstrap.Node(master.name, files, str(runtime.get("name", "process"))),
    )
    done = ", ".join(f"{s.name} {s.seconds:.1f} s" for s in report.steps)
    console.print(f"Master bootstrapped in {report.seconds:.1f} s ({done}); its host key is "
                  f"{report.host_key}.")  # fmt: skip
    context = Context(
        name=name,
        mesh=name,
        servers=[f"nats://{master.address}:{CLIENT_PORT}"],
        user="operator",
        password=config.passwords["operator"],
        provider=section,
        local=False,
        runtime=runtime,
        entry_url=f"http://{entry_address}",
        deployer_password=config.passwords["deployer"],
        tunnel={"host": master.public_address, "user": "root", "key_file": str(key_path)},
        tls_ca=config.tls_ca,
    )
    context.save()
    return context


def _access(provider: Provider) -> CloudAccess:
    if not isinstance(provider, CloudAccess):
        raise MeshError(f"up: provider {provider.name!r} manages no SSH keys or firewall")
    return provider


async def _master(provider: Provider, name: str, size: str) -> DropletRecord:
    """Master, created unless an earlier `up` made it."""
    for record in await provider.list(mesh_tag(name)):
        if record.name == "master":
            console.print(f"Droplet [bold]master[/] exists already ({record.id}).")
            return record
    console.print("Creating droplet [bold]master[/] ...")
    return await provider.create(
        "master", size, tags=[mesh_tag(name), CORE_TAG], user_data="", fence=None
    )


def _token(settings: dict[str, Any]) -> str:
    if settings.get("token_file"):
        return Path(str(settings["token_file"])).expanduser().read_text().strip()
    return os.environ.get("DIGITALOCEAN_TOKEN", "")


async def leave_account(
    provider: Provider, context: Context, droplet_ids: set[str], keep_data: bool
) -> None:
    """After `down` destroyed the droplets: the firewall and the reserved IP go; the mesh's
    volumes and the snapshots of its droplets go with --delete-data, else are listed as kept."""
    if not isinstance(provider, CloudAccess):
        return
    if await provider.remove_firewall():
        console.print(f"Firewall [bold]meshd-{context.mesh}[/] deleted.")
    address = (context.provider.get("config") or {}).get("reserved_ip")
    if address and await provider.release_reserved_address(str(address)):
        console.print(f"Reserved IP [bold]{address}[/] released.")
    kept: list[str] = []
    if isinstance(provider, Volumes):
        for volume in await provider.list_volumes():
            if volume.name.startswith(f"{context.mesh}-"):
                if keep_data:
                    kept.append(f"volume {volume.name} ({volume.size_gb} GB)")
                else:
                    await provider.delete_volume(volume.id, fence=None)
    if isinstance(provider, Snapshotter):
        for snapshot in await provider.list_snapshots():
            if snapshot.droplet_id in droplet_ids:
                if keep_data:
                    kept.append(f"snapshot {snapshot.name} ({snapshot.size_gb:.2f} GB)")
                else:
                    await provider.delete_snapshot(snapshot.id, fence=None)
    if context.tunnel:
        key = Path(str(context.tunnel["key_file"])).name
        kept.append(f"SSH key {key} (yours; every mesh you start uses it)")
    for extra in (context.provider.get("config") or {}).get("additional_ssh_keys") or []:
        kept.append(f"SSH key {extra} (given with --ssh-key)")
    if kept:
        console.print("Kept in the account (--delete-data deletes the volumes and "
                      "snapshots; they are billed meanwhile):\n  " + "\n  ".join(kept))  # fmt: skip
    if not keep_data:
        console.print("The mesh's volumes and snapshots are deleted.")
