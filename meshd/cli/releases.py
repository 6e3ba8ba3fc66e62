"""`meshctl releases`: the numbered releases of a project's environments (KV
`mesh_releases`), newest first: what each ran, who asked, how it ended."""

from __future__ import annotations

import asyncio
import json
import time

import click
from rich import box
from rich.markup import escape
from rich.table import Table

from meshd.cli.context import load_context
from meshd.cli.deploy import environment, published_project
from meshd.cli.session import connect
from meshd.cli.tables import console
from meshd.core.deploys import newest_first, release_row
from meshd.core.releases import release_data
from protocol import subjects
from protocol.codec import decode
from protocol.releases import Release, ReleaseStatus

COLUMNS = ("release", "env", "action", "status", "ref", "sha", "tag", "by", "age", "from")
DETAIL_LINES = 12  # of a failed release's detail (a build log's tail)
STATUS_STYLE = {
    ReleaseStatus.LIVE: "green",
    ReleaseStatus.FAILED: "red",
    ReleaseStatus.BUILDING: "yellow",
    ReleaseStatus.ROLLING: "yellow",
    ReleaseStatus.QUEUED: "yellow",
}


@click.command(no_args_is_help=True)
@click.argument("project")
@click.argument("env", metavar="[ENV]", required=False)
@click.option("--limit", default=20, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="Print the release records as JSON.")
@click.option("--context", "context_name", metavar="NAME", help="Mesh to talk to.")
def releases(
    project: str, env: str | None, limit: int, as_json: bool, context_name: str | None
) -> None:
    """List PROJECT's releases (of ENV only, if given), newest first.

    Each is numbered per environment (v1, v2, ...) and says what made it (push, deploy,
    promote, rollback), its status, the ref and commit, the UAT version tag, who asked, its
    age, and for a promotion or rollback the release whose artifacts it reuses. A failed
    release says why. `--json` gives the records whole: commit, release, artifacts and
    snapshots.
    """
    if env is not None:
        environment(env)
    asyncio.run(_releases(project, env, limit, as_json, context_name))


async def _releases(
    project: str, env: str | None, limit: int, as_json: bool, context_name: str | None
) -> None:
    context = load_context(context_name)
    store = await connect(context)
    try:
        await published_project(store, project)
        keys = f"{subjects.token(project, 'project')}.>"
        entries = await store.entries(subjects.RELEASES_BUCKET, keys)
    finally:
        await store.close()
    found = [decode(e.value, Release) for e in entries.values() if e.value is not None]
    chosen = newest_first(found, env, limit)
    if as_json:
        click.echo(json.dumps({"releases": [release_data(r) for r in chosen]}, indent=2))
        return
    if not chosen:
        where = f"{project} {env}" if env else project
        console.print(f"No releases of {escape(where)} yet: push a branch or `meshctl deploy`.")
        return
    console.print(_table(project, chosen))
    for release in chosen:
        if release.status is ReleaseStatus.FAILED and release.detail:
            first, *more = release.detail.strip().splitlines()[-DETAIL_LINES:]
            console.print(f"[red]v{release.number} {release.env} failed:[/] {escape(first)}")
            for line in more:
                console.print(f"  {escape(line)}")


def _table(project: str, chosen: list[Release]) -> Table:
    table = Table(
        title=f"Releases of {escape(project)}",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        title_style="bold",
    )
    for column in COLUMNS:
        table.add_column(column.capitalize() if column != "sha" else "SHA")
    now = time.time()
    for release in chosen:
        row = release_row(release, now)
        cells = [escape(row[c]) for c in COLUMNS]
        style = STATUS_STYLE.get(release.status)
        if style:
            cells[COLUMNS.index("status")] = f"[{style}]{cells[COLUMNS.index('status')]}[/]"
        table.add_row(*cells)
    return table
