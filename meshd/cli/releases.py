"""`meshctl releases`: the numbered releases of a project's environments (KV
`mesh_releases`), newest first: what each ran, who asked, how it ended."""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path

import click
from rich import box
from rich.markup import escape
from rich.table import Table

from meshd.cli.context import load_context
from meshd.cli.deploy import environment, published_project
from meshd.cli.session import connect
from meshd.cli.tables import console
from meshd.core.deploys import DeployInputError, newest_first, release_row
from meshd.core.releases import release_data, with_snapshots
from protocol import subjects
from protocol.codec import decode
from protocol.errors import MeshError
from protocol.messages import SnapshotIndex
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
@click.option("--log", "log_of", type=click.IntRange(min=1), metavar="N",
              help="Print the build log of release N of ENV instead.")  # fmt: skip
@click.option("--context", "context_name", metavar="NAME", help="Mesh to talk to.")
def releases(
    project: str,
    env: str | None,
    limit: int,
    as_json: bool,
    log_of: int | None,
    context_name: str | None,
) -> None:
    """List PROJECT's releases (of ENV only, if given), newest first.

    Each is numbered per environment (v1, v2, ...) and says what made it (push, deploy,
    promote, rollback), its status, the ref and commit, the UAT version tag, who asked, its
    age, and for a promotion or rollback the release whose artifacts it reuses. A failed
    release says why. `--json` gives the records whole: commit, release, artifacts and
    snapshots. `--log N` prints the whole build log of release N (kept with the newest
    releases of each environment, like their artifacts).
    """
    if env is not None:
        environment(env)
    if log_of is not None:
        if env is None:
            raise DeployInputError(
                "--log needs the environment: meshctl releases PROJECT ENV --log N"
            )
        asyncio.run(_log(project, env, log_of, context_name))
        return
    asyncio.run(_releases(project, env, limit, as_json, context_name))


async def _log(project: str, env: str, number: int, context_name: str | None) -> None:
    store = await connect(load_context(context_name))
    try:
        await published_project(store, project)
        entry = await store.get(
            subjects.RELEASES_BUCKET, subjects.release_key(project, env, number)
        )
        if entry is None or entry.value is None:
            raise DeployInputError(f"{project} {env} has no release {number}")
        release = decode(entry.value, Release)
        if release.log is None:
            raise MeshError(
                f"release {number} of {project} {env} has no build log (it built nothing)"
            )
        with tempfile.TemporaryDirectory() as directory:
            path = Path(directory) / "log"
            if not await store.get_object(subjects.ARTIFACTS_STORE, release.log, path):
                raise MeshError(f"the build log of release {number} is gone (only the newest "
                                "releases keep theirs)")  # fmt: skip
            click.echo(path.read_text(errors="replace"), nl=False)
    finally:
        await store.close()


async def _releases(
    project: str, env: str | None, limit: int, as_json: bool, context_name: str | None
) -> None:
    context = load_context(context_name)
    store = await connect(context)
    try:
        await published_project(store, project)
        keys = f"{subjects.token(project, 'project')}.>"
        entries = await store.entries(subjects.RELEASES_BUCKET, keys)
        indexes = [
            decode(e.value, SnapshotIndex)
            for e in (await store.entries(subjects.SNAPSHOTS_BUCKET)).values()
            if e.value is not None
        ]
    finally:
        await store.close()
    found = [decode(e.value, Release) for e in entries.values() if e.value is not None]
    chosen = [with_snapshots(r, indexes) for r in newest_first(found, env, limit)]
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
