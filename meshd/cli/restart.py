"""`meshctl restart`: replace a project environment's instances one droplet at a time, each
new instance beside the old one, so that no request is lost (meshd.core.rollout)."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

import click

from meshd.agent.restarts import request_restart
from meshd.agent.store import Store
from meshd.cli.context import load_context, who
from meshd.cli.session import connect, read_allocations, read_mesh
from meshd.cli.tables import console
from meshd.core.rollout import replaced_beside, replaced_on
from meshd.core.spec import ENVIRONMENTS, ServiceKind
from protocol import subjects
from protocol.errors import MeshError
from protocol.messages import Allocation

POLL_S = 0.5


@dataclass(slots=True)
class Restarting:
    """One service's restart as `--wait` follows it."""

    key: str
    count: int  # the restart request it waits for
    generation: int | None = None  # the generation that request became, once scheduled
    replaced: tuple[str, ...] = ()
    desired: int = 0

    @property
    def done(self) -> bool:
        return self.generation is not None and len(self.replaced) == self.desired

    def to_json(self) -> dict[str, Any]:
        return {
            "service": self.key,
            "restart": self.count,
            "generation": self.generation,
            "replaced": list(self.replaced),
            "desired": self.desired,
            "done": self.done,
        }


@click.command(no_args_is_help=True)
@click.argument("project")
@click.argument("env", metavar="ENV", type=click.Choice(ENVIRONMENTS))
@click.argument("service", required=False)
@click.option(
    "--wait/--no-wait",
    default=True,
    show_default=True,
    help="Wait until every instance is replaced.",
)
@click.option("--timeout", default=300.0, show_default=True, help="Seconds --wait waits.")
@click.option("--json", "as_json", is_flag=True, help="Print what was restarted as JSON.")
@click.option("--context", "context_name", metavar="NAME", help="Mesh to talk to.")
def restart(
    project: str,
    env: str,
    service: str | None,
    wait: bool,
    timeout: float,
    as_json: bool,
    context_name: str | None,
) -> None:
    """Replace the instances of PROJECT's ENV (or only its SERVICE) one droplet at a time.

    A web service's new instance starts on its spare port beside the old one; once it is
    healthy the load balancer switches to it, the old one drains for a few seconds and stops.
    Workers are replaced the same way. Without SERVICE, databases and Redis are left alone:
    name one to restart it in place (it is unavailable while it restarts).
    """
    asyncio.run(_restart(project, env, service, wait, timeout, as_json, context_name))


async def _restart(
    project: str,
    env: str,
    service: str | None,
    wait: bool,
    wait_s: float,
    as_json: bool,
    context_name: str | None,
) -> None:
    context = load_context(context_name)
    store = await connect(context)
    try:
        chosen = _choose(await read_allocations(store), project, env, service)
        operator = who()
        restarting = []
        for allocation in chosen:
            count = await request_restart(store, allocation, operator)
            key = subjects.alloc_key(allocation.project, allocation.env, allocation.service)
            await store.record("restart_requested", operator, key, {"count": count})
            restarting.append(Restarting(key, count, desired=len(allocation.droplets)))
            if not as_json:
                how = "beside the old instances" if replaced_beside(allocation) else "in place"
                console.print(f"Restarting [bold]{key}[/] ({how}).")
        if wait:
            await _wait(store, restarting, wait_s, quiet=as_json)
        if as_json:
            click.echo(json.dumps({"services": [r.to_json() for r in restarting]}, indent=2))
    finally:
        await store.close()


def _choose(
    allocations: dict[str, Allocation], project: str, env: str, service: str | None
) -> list[Allocation]:
    mine = sorted(
        (a for a in allocations.values() if (a.project, a.env) == (project, env)),
        key=lambda a: a.service,
    )
    if not mine:
        known = sorted({f"{a.project} {a.env}" for a in allocations.values()})
        raise click.UsageError(
            f"no project environment {project!r} {env!r} is published; "
            f"known: {', '.join(known) or 'none'}"
        )
    if service is not None:
        found = [a for a in mine if a.service == service]
        if not found:
            names = ", ".join(a.service for a in mine)
            raise click.UsageError(f"{project} {env} has no service {service!r}; it has {names}")
        return found
    return [a for a in mine if not ServiceKind(a.service_kind).is_datastore]


async def _wait(store: Store, restarting: list[Restarting], wait_s: float, quiet: bool) -> None:
    deadline = time.monotonic() + wait_s
    with console.status("Replacing instances ...") as progress:
        while True:
            view = await read_mesh(store)
            for item in restarting:
                allocation = view.allocations.get(item.key)
                if allocation is None:
                    raise MeshError(f"restart {item.key}: the service was unpublished meanwhile")
                if item.generation is None and allocation.restart >= item.count:
                    item.generation = allocation.generation
                if item.generation is not None:
                    item.replaced = tuple(replaced_on(allocation, item.generation, view.nodes))
                item.desired = len(allocation.droplets)
            progress.update(
                "Replacing instances ... "
                + ", ".join(f"{r.key} {len(r.replaced)}/{r.desired}" for r in restarting)
            )
            if all(item.done for item in restarting):
                break
            if time.monotonic() >= deadline:
                missing = ", ".join(
                    f"{r.key} ({len(r.replaced)}/{r.desired} replaced)"
                    for r in restarting
                    if not r.done
                )
                raise MeshError(
                    f"restart: not done within {wait_s:.0f} s: {missing}; old instances keep "
                    "serving until their replacements are healthy; see `meshctl status`"
                )
            await asyncio.sleep(POLL_S)
    if not quiet:
        total = sum(r.desired for r in restarting)
        console.print(f"Replaced: {total} instance{'s' if total != 1 else ''}.")
