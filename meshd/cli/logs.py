"""`meshctl logs`: a project's output from every droplet, merged by time (docs/logs.md)."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import sys
import time
from datetime import datetime

import click

from meshd.agent.store import Store
from meshd.cli.context import load_context
from meshd.cli.session import check_project, connect
from meshd.core.logs import LogRow, parse_since, prefix, rows, wanted
from protocol import subjects
from protocol.errors import InvalidNameError
from protocol.logs import LogBatch

# Lines of a few droplets reach the stream up to a shipping pass apart: following waits this
# long before printing a line, so that one shipped a little later but said earlier comes first.
FOLLOW_WINDOW_S = 0.75
COLOURS = ("cyan", "magenta", "yellow", "green", "blue", "bright_red")


@click.command()
@click.argument("project", required=False)
@click.argument("env", required=False)
@click.argument("service", required=False)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until interrupted.")
@click.option("--since", metavar="WHEN", help="From this long ago (30s, 10m, 2h, 1d) or time.")
@click.option("-n", "--tail", "tail", default=200, show_default=True,
              help="At most this many of the lines already kept (0: all of them).")  # fmt: skip
@click.option("--grep", metavar="TEXT", help="Only lines that contain TEXT.")
@click.option("--droplet", metavar="NAME", help="Only lines from this droplet.")
@click.option("--mesh", "of_mesh", is_flag=True,
              help="The mesh's own logs (agents, nginx) instead of a project's.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--context", "context_name", metavar="NAME", help="Mesh to talk to.")
def logs(
    project: str | None,
    env: str | None,
    service: str | None,
    follow: bool,
    since: str | None,
    tail: int,
    grep: str | None,
    droplet: str | None,
    of_mesh: bool,
    as_json: bool,
    context_name: str | None,
) -> None:
    """What a project's instances print, from every droplet, merged by time and prefixed with
    droplet and service (the second slot of a replacement as SERVICE.1). Narrow it with ENV
    and SERVICE, e.g. `meshctl logs shop prod backend --follow`. Lines the shipper had to drop
    (over the project's budget, or while the mesh could not take them) show as a gap."""
    if of_mesh == bool(project):
        raise click.UsageError("name a PROJECT (optionally ENV and SERVICE), or give --mesh")
    try:
        start = parse_since(since, time.time()) if since else None
        selected = (
            subjects.mesh_logs(droplet)
            if of_mesh
            else subjects.app_logs(str(project), env, service, droplet)
        )
    except (ValueError, InvalidNameError) as err:
        raise click.BadParameter(str(err)) from None
    asyncio.run(
        _logs(selected, project, start, tail, grep, follow, as_json, env is None, context_name)
    )


async def _logs(
    selected: str,
    project: str | None,
    since: float | None,
    tail: int,
    grep: str | None,
    follow: bool,
    as_json: bool,
    many_envs: bool,
    context_name: str | None,
) -> None:
    store = await connect(load_context(context_name))
    printer = Printer(as_json, many_envs)
    try:
        if project:
            await check_project(store, project)
        await _read(store, selected, since, tail, grep, follow, printer)
    finally:
        await store.close()


async def _read(
    store: Store,
    selected: str,
    since: float | None,
    tail: int,
    grep: str | None,
    follow: bool,
    printer: Printer,
) -> None:
    """The lines kept so far, sorted by time and cut to `tail`; then, following, each new one
    once FOLLOW_WINDOW_S has passed (in time order across droplets)."""
    batches: asyncio.Queue[LogBatch | None] = asyncio.Queue()

    async def pump() -> None:
        async for batch in store.read_logs(selected, since=since, follow=follow):
            await batches.put(batch)
        await batches.put(None)  # the end: what was kept is printed

    reader = asyncio.create_task(pump())
    kept: list[LogRow] = []
    live: list[tuple[float, int, LogRow]] = []  # a heap by time
    count, caught_up = 0, False
    try:
        while not (reader.done() and batches.empty()):
            batch: LogBatch | bool | None = False  # False: nothing came meanwhile
            with contextlib.suppress(TimeoutError):
                batch = await asyncio.wait_for(batches.get(), FOLLOW_WINDOW_S / 3)
            if batch is None and not caught_up:
                caught_up = True
                for row in sorted(kept, key=lambda r: r.at)[-tail if tail else None :]:
                    printer.row(row)
            elif isinstance(batch, LogBatch):
                for row in (r for r in rows(batch) if wanted(r, grep, since)):
                    count += 1
                    if caught_up:
                        heapq.heappush(live, (row.at, count, row))
                    else:
                        kept.append(row)
            horizon = time.time() - FOLLOW_WINDOW_S
            while live and live[0][0] <= horizon:
                printer.row(heapq.heappop(live)[2])
        reader.result()  # a read that failed says why
    finally:
        reader.cancel()


class Printer:
    def __init__(self, as_json: bool, many_envs: bool) -> None:
        self._json = as_json
        self._many_envs = many_envs
        self._colours: dict[str, str] = {}
        self._colour = sys.stdout.isatty()

    def row(self, row: LogRow) -> None:
        if self._json:
            click.echo(json.dumps(row.to_json()), nl=True)
            return
        when = datetime.fromtimestamp(row.at).strftime("%H:%M:%S.%f")[:-3]
        who = prefix(row, self._many_envs)
        if self._colour:
            colour = self._colours.setdefault(who, COLOURS[len(self._colours) % len(COLOURS)])
            who = click.style(who, fg=colour)
        click.echo(f"{who} | {when} {row.text}")
