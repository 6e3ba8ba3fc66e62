"""`meshctl firewall admin add|rm|list|update`: the addresses SSH to the mesh's droplets is
open to (DigitalOcean: the mesh's one firewall, attached by tag, rewritten whole). The
operator's own SSH tunnel to NATS comes from one of them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

import click

from meshd.agent.config import mesh_tag
from meshd.cli.context import load_context
from meshd.cli.joining import open_provider
from meshd.cli.tables import console
from plugins.providers.cloud import CloudAccess
from protocol.errors import MeshError

CONTEXT = click.option("--context", "context_name", metavar="NAME", help="Mesh to change.")


@click.group()
def firewall() -> None:
    """The mesh's firewall (cloud providers): who may reach its droplets over SSH."""


@firewall.group()
def admin() -> None:
    """The administrators' addresses, the only ones SSH is open to."""


@admin.command("list")
@CONTEXT
@click.option("--json", "as_json", is_flag=True, help="A JSON list.")
def list_admins(context_name: str | None, as_json: bool) -> None:
    """The addresses SSH is open to."""
    admins = asyncio.run(_change(context_name))
    if as_json:
        click.echo(json.dumps(admins))
    else:
        console.print("\n".join(admins) or "(none: nobody reaches the droplets over SSH)")


@admin.command("add")
@click.argument("address")
@CONTEXT
def add(address: str, context_name: str | None) -> None:
    """Open SSH to ADDRESS (an IPv4 address or network)."""
    _say(asyncio.run(_change(context_name, add=[address])))


@admin.command("rm")
@click.argument("address")
@CONTEXT
def remove(address: str, context_name: str | None) -> None:
    """Close SSH to ADDRESS."""
    _say(asyncio.run(_change(context_name, remove=[address])))


@admin.command("update")
@click.argument("old")
@click.argument("new")
@CONTEXT
def update(old: str, new: str, context_name: str | None) -> None:
    """Replace OLD by NEW in one rewrite (your address changed): the seed's
    update_administrator_ip."""
    _say(asyncio.run(_change(context_name, add=[new], remove=[old])))


def _say(admins: list[str]) -> None:
    console.print(f"SSH is open to: {', '.join(admins) or '(nobody)'}.")


async def _change(
    context_name: str | None, add: Sequence[str] = (), remove: Sequence[str] = ()
) -> list[str]:
    context = load_context(context_name)
    provider = open_provider(context.mesh, context.provider)
    try:
        if not isinstance(provider, CloudAccess):
            raise MeshError(
                f"firewall: the {provider.name} provider has no firewall (its droplets are "
                "on this machine)"
            )
        if not add and not remove:
            return await provider.firewall_admins()
        return await provider.change_firewall_admins(mesh_tag(context.mesh), add, remove)
    finally:
        await provider.close()
