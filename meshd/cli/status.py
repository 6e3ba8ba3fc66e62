"""`meshctl status` and `meshctl events`: what the mesh is doing and why."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime
from typing import Any

import click
from rich.console import Group
from rich.live import Live
from rich.markup import escape

from meshd.agent.records import decoded, release_targets
from meshd.agent.store import Store, StoreUnavailable
from meshd.cli.context import load_context
from meshd.cli.hold import hold_data
from meshd.cli.session import connect, jetstream_view, read_holds, read_mesh, read_published
from meshd.cli.tables import console, events_table, status_tables
from meshd.core.backup_policy import backup_summary, datastore_schedules, parse_backup_key
from meshd.core.certs import attention, state_of, wanted
from meshd.core.releases import release_summary
from meshd.core.status import notifications, open_suspicions
from protocol import subjects
from protocol.backups import BackupOrder, BackupOrderAnswer
from protocol.certs import CERTIFICATES, Certificate
from protocol.codec import decode, encode
from protocol.messages import Allocation, Event, NodeStatus
from protocol.releases import Release

RECENT_EVENTS = 8
SUSPICION_EVENTS = 60  # enough to see the suspicions of the last minute
LIST_WAIT_S = 3.0  # for the backups leader to list what it keeps


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON (docs/status-json.md).")
@click.option("--watch", is_flag=True, help="Refresh every second until interrupted.")
@click.option("--context", "context_name", metavar="NAME", help="Mesh to talk to.")
def status(as_json: bool, watch: bool, context_name: str | None) -> None:
    """Droplets (address, size, roles, heartbeat), services (port, healthy/desired instances,
    droplets) and recent events."""
    asyncio.run(_status(as_json, watch, context_name))


async def _status(as_json: bool, watch: bool, context_name: str | None) -> None:
    context = load_context(context_name)
    store = await connect(context)
    try:
        if as_json and not watch:
            reading = await read_mesh(store)
            view = {"entry_url": context.entry_url, **reading.status()}
            view["env_secrets"] = env_secrets(reading.nodes)
            view["jetstream"] = await jetstream_view(store)
            now = time.time()
            view["holds"] = [hold_data(h, now) for h in (await read_holds(store)).values()]
            recent = await store.recent_events(SUSPICION_EVENTS)
            view["suspicions"] = open_suspicions(recent, now)
            view["notifications"] = notifications(recent, await _waiting(store))
            view["releases"] = await releases_view(store)
            view["backups"] = await backups_view(store, reading.allocations)
            view["certificates"] = await certificates_view(store)
            view["events"] = [_event_data(e) for e in recent[-RECENT_EVENTS:]]
            click.echo(json.dumps(view, indent=2))
            return
        if not watch:
            console.print(await _render(store, context.entry_url))
            return
        first = await _render(store, context.entry_url)
        with Live(first, console=console, refresh_per_second=2) as live:
            while True:
                await asyncio.sleep(1)
                live.update(await _render(store, context.entry_url))
    finally:
        await store.close()


def catching_up(jetstream: dict[str, Any]) -> str:
    """The servers that lack a current copy of some stream (a rebuilt one catching up)."""
    behind = {
        server
        for stream in jetstream["streams"].values()
        if len(stream["current"]) < stream["replicas"]
        for server in jetstream["servers"]
        if server not in stream["current"]
    }
    return f"; [yellow]catching up: {', '.join(sorted(behind))}[/]" if behind else ""


def env_secrets(nodes: dict[str, NodeStatus]) -> dict[str, list[str]]:
    """The secrets each droplet found only in its agent's environment (the deprecated way)."""
    return {
        name: list(node.env_secrets) for name, node in sorted(nodes.items()) if node.env_secrets
    }


async def releases_view(store: Store) -> list[dict[str, Any]]:
    """What each project environment with releases runs, and its newest release if other."""
    found = await decoded(store, subjects.RELEASES_BUCKET, ">", Release)
    return release_summary(await release_targets(store), found)


async def backups_view(store: Store, allocations: dict[str, Allocation]) -> list[dict[str, Any]]:
    """Each datastore's newest backup, its age and whether it is overdue on the datastore's
    schedule, as its allocation carries it (docs/backups.md)."""
    datastores = datastore_schedules(allocations.values())
    if not datastores:
        return []
    order = BackupOrder(action="list", project="", env="", by="status")
    reply = await store.request(subjects.BACKUP_ORDERS, encode(order), LIST_WAIT_S)
    if reply is None:  # no leader answers now: say nothing rather than wait
        return []
    listed = decode(reply, BackupOrderAnswer).listed
    names = [n for b in listed if (n := parse_backup_key(b.key)) is not None]
    return backup_summary(datastores, names, time.time())


async def certificates_view(store: Store) -> list[dict[str, Any]]:
    """Each project environment with domains: its certificate's state and what needs the
    operator's attention (`meshctl certs` says more)."""
    found = await decoded(store, subjects.CERTS_BUCKET, CERTIFICATES, Certificate)
    stored = {(c.project, c.env): c for c in found}
    now = time.time()
    rows = []
    for want in wanted(await read_published(store)):
        cert = stored.get((want.project, want.env))
        rows.append({"name": want.name, "state": state_of(cert, now),
                     "not_after": cert.not_after if cert else None,
                     "attention": attention(cert, now)})  # fmt: skip
    return rows


def backups_lines(rows: list[dict[str, Any]]) -> list[str]:
    """One line for all datastores: how many, the oldest newest backup, what is overdue."""
    if not rows:
        return []
    never = [r for r in rows if r["last"] is None]
    late = [r for r in rows if r["overdue"]]
    ages = [r["age_s"] for r in rows if r["age_s"] is not None]
    text = f"Backups: {len(rows)} datastore{'s' if len(rows) > 1 else ''}"
    if ages:
        text += f", the oldest newest backup {max(ages) / 3600:.1f} h ago"
    for label, found in (("[yellow]none yet[/]", never), ("[red]overdue[/]", late)):
        if found:
            names = ", ".join(f"{r['project']} {r['env']} {r['service']}" for r in found)
            text += f"; {label}: {escape(names)}"
    return [text]


def release_line(summary: dict[str, Any]) -> str:
    where = f"{summary['project']} {summary['env']}"
    live = summary["live"]
    text = f"Release: [bold]{escape(where)}[/] "
    text += (
        f"runs v{live['number']} ({live['sha']}{', ' + live['tag'] if live['tag'] else ''})"
        if live
        else "runs no release yet"
    )
    newest = summary["newest"]
    if newest:
        colour = "red" if newest["status"] == "failed" else "yellow"
        text += f"; [{colour}]v{newest['number']} {newest['status']}[/]"
        if newest["detail"]:
            text += f": {escape(newest['detail'])}"
    return text


async def _render(store: Store, entry: str | None) -> Group:
    reading = await read_mesh(store)
    view = reading.status()
    recent = await store.recent_events(SUSPICION_EVENTS)
    events = recent[-RECENT_EVENTS:]
    where = f"on [bold]{view['lb']}[/]" if view["lb"] else "[red]no lb holder[/]"
    header = f"Entry: [bold]{entry or 'none'}[/] (load balancer {where})"
    jetstream = await jetstream_view(store)
    lines = [
        header,
        f"JetStream: [bold]{', '.join(jetstream['servers'])}[/] "
        f"({jetstream['replicas']} replica{'s' if jetstream['replicas'] > 1 else ''})"
        + catching_up(jetstream),
    ]
    told = notifications(recent, await _waiting(store))
    for channel, failure in told["failing"].items():
        lines.append(f"[red]Notifications by {channel} failing:[/] {escape(str(failure['error']))}")
    if told["waiting"]:
        lines.append(f"Notifications waiting for delivery: {told['waiting']}")
    for droplet, names in env_secrets(reading.nodes).items():
        lines.append(
            f"[yellow]Deprecated:[/] {escape(droplet)} takes {escape(', '.join(names))} from its "
            "agent's environment; set them with `meshctl secret set`"
        )
    for held in (await read_holds(store)).values():
        until = time.strftime("%H:%M:%S", time.localtime(held.until))
        why = f": {escape(held.reason)}" if held.reason else ""
        lines.append(
            f"[yellow]Held: {escape(held.droplet)}[/] is not declared dead before {until}"
            f" (by {escape(held.held_by)}{why})"
        )
    lines += [release_line(r) for r in await releases_view(store)]
    lines += backups_lines(await backups_view(store, reading.allocations))
    for cert in await certificates_view(store):
        if cert["attention"]:
            colour = "red" if cert["state"] in ("expired", "expiring", "failing") else "yellow"
            lines.append(f"[{colour}]Certificate {cert['name']}:[/] {escape(cert['attention'])}")
    for suspicion in open_suspicions(recent, time.time()):
        lines.append(
            f"[yellow]Suspected: {escape(suspicion['droplet'])}[/] by "
            f"{escape(', '.join(suspicion['by']))}, {suspicion['age_s']:.0f}s ago"
        )
    return Group(*lines, *status_tables(view), events_table(events))


async def _waiting(store: Store) -> int | None:
    try:
        return await store.queued(subjects.NOTIFY_STREAM)
    except StoreUnavailable:
        return None


def _event_data(event: Event) -> dict[str, Any]:
    return {
        "at": event.at,
        "name": event.name,
        "actor": event.actor,
        "subject": event.subject,
        "fence": event.fence,
        "detail": event.detail,
    }


@click.command()
@click.option("-n", "count", default=20, show_default=True, help="How many recent events.")
@click.option("--follow", is_flag=True, help="Keep printing new events until interrupted.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--context", "context_name", metavar="NAME", help="Mesh to talk to.")
def events(count: int, follow: bool, as_json: bool, context_name: str | None) -> None:
    """The audit log: every publish, lease change, scheduling decision and droplet action,
    with the fencing token of the leader that acted."""
    asyncio.run(_events(count, follow, as_json, context_name))


async def _events(count: int, follow: bool, as_json: bool, context_name: str | None) -> None:
    store = await connect(load_context(context_name))
    try:
        if not follow:
            for event in await store.recent_events(count):
                _print_event(event, as_json)
            return
        async with store.follow_events() as followed:  # subscribed first: none falls between
            for event in await store.recent_events(count):
                _print_event(event, as_json)
            async for event in followed:
                _print_event(event, as_json)
    finally:
        await store.close()


def _print_event(event: Event, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(_event_data(event)))
        return
    when = datetime.fromtimestamp(event.at).strftime("%H:%M:%S")
    fence = f" fence={event.fence}" if event.fence is not None else ""
    detail = " ".join(f"{k}={v}" for k, v in event.detail.items())
    console.print(
        f"{when} [bold]{event.name}[/] {escape(event.subject)} by {escape(event.actor)}"
        f"{fence} {escape(detail)}"
    )
