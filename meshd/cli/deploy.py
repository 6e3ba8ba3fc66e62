"""`meshctl deploy`, `promote` and `rollback`: ask the builder for a release by hand. Each
queues one deploy request in `MESH_DEPLOY` and prints its id; with `--follow` it prints the
builder's progress and exits 0 when the release is live, 1 when it failed. A project or
environment that is not published is refused (exit 2) before anything is sent."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any, TypeVar

import click

from meshd.agent.store import Store
from meshd.cli.context import load_context, who
from meshd.cli.following import ProgressInbox, send
from meshd.cli.session import connect, read_published
from meshd.core.deploys import DeployInputError, deploy_ref, operator_request, progress_text
from meshd.core.spec import ENVIRONMENTS, ProjectSpec
from protocol.errors import MeshError
from protocol.releases import DeployAction, DeployProgress, DeployRequest

FOLLOW_S = 3600.0
F = TypeVar("F", bound=Callable[..., Any])
Make = Callable[[ProjectSpec, str | None], DeployRequest]


class DeployFailed(MeshError):
    """The builder answered that the release failed."""


def following(command: F) -> F:
    """The options every deploy command shares."""
    for option in reversed(
        [
            click.option(
                "--follow", is_flag=True, help="Print the progress; exit 1 if the release fails."
            ),
            click.option(
                "--timeout",
                "wait_s",
                default=FOLLOW_S,
                show_default=True,
                help="Seconds --follow waits (the deploy goes on after).",
            ),
            click.option("--json", "as_json", is_flag=True, help="Print the request as JSON."),
            click.option("--context", "context_name", metavar="NAME", help="Mesh to talk to."),
        ]
    ):
        command = option(command)
    return command


def environment(env: str) -> str:
    if env not in ENVIRONMENTS:
        raise DeployInputError(f"environment {env!r} is not one of {', '.join(ENVIRONMENTS)}")
    return env


@click.command(no_args_is_help=True)
@click.argument("project")
@click.argument("env", metavar="ENV")
@click.option(
    "--ref",
    help="Branch, tag or commit to build. Default: the branch the project's `deploy` mapping "
    "names for ENV (main for uat).",
)
@click.option(
    "--cancel",
    is_flag=True,
    help="Stop ENV's queued or running build or rollout instead; the release before it keeps "
    "serving.",
)
@following
def deploy(
    project: str,
    env: str,
    ref: str | None,
    cancel: bool,
    follow: bool,
    wait_s: float,
    as_json: bool,
    context_name: str | None,
) -> None:
    """Build PROJECT at a ref of its git_repo and roll it out to ENV (uat or test), as a push
    does: a new numbered release (`meshctl releases`), live once healthy everywhere.

    Prod is deployed only by `meshctl promote`. `--cancel` stops ENV's queued or running
    build or rollout (prod's too).
    """
    environment(env)
    if cancel and ref is not None:
        raise DeployInputError("--cancel takes no --ref: it stops whatever ENV is deploying")

    def make(spec: ProjectSpec, progress: str | None) -> DeployRequest:
        if cancel:
            return operator_request(project, DeployAction.DEPLOY, env, cancel=True, **_by(progress))
        resolved = deploy_ref(env, ref, spec.deploy)
        return operator_request(project, DeployAction.DEPLOY, env, ref=resolved, **_by(progress))

    if not cancel:
        _check_ref(env, ref)
    asyncio.run(_ask(context_name, project, make, follow, wait_s, as_json))


@click.command(no_args_is_help=True)
@click.argument("project")
@click.option(
    "--release",
    "number",
    type=click.IntRange(min=1),
    help="The UAT release to promote. Default: the newest live, healthy one.",
)
@following
def promote(
    project: str,
    number: int | None,
    follow: bool,
    wait_s: float,
    as_json: bool,
    context_name: str | None,
) -> None:
    """Deploy a UAT release of PROJECT to prod with the same artifacts: no build.

    Prod's new release records the UAT release's version tag.
    """

    def make(spec: ProjectSpec, progress: str | None) -> DeployRequest:
        return operator_request(
            project, DeployAction.PROMOTE, "prod", release=number or 0, **_by(progress)
        )

    asyncio.run(_ask(context_name, project, make, follow, wait_s, as_json))


@click.command(no_args_is_help=True)
@click.argument("project")
@click.argument("env", metavar="ENV")
@click.option(
    "--to",
    "number",
    type=click.IntRange(min=1),
    help="The release whose artifacts to run again. Default: the live one before the current.",
)
@following
def rollback(
    project: str,
    env: str,
    number: int | None,
    follow: bool,
    wait_s: float,
    as_json: bool,
    context_name: str | None,
) -> None:
    """Run an earlier release's artifacts in PROJECT's ENV again, as a new release: no build,
    seconds. The release it replaces stays in `meshctl releases`."""
    environment(env)

    def make(spec: ProjectSpec, progress: str | None) -> DeployRequest:
        return operator_request(
            project, DeployAction.ROLLBACK, env, release=number or 0, **_by(progress)
        )

    asyncio.run(_ask(context_name, project, make, follow, wait_s, as_json))


def _check_ref(env: str, ref: str | None) -> None:
    """Refuse prod and an empty --ref before connecting (the default ref needs the mesh)."""
    if env == "prod" or ref is not None:
        deploy_ref(env, ref)


async def published_project(store: Store, project: str) -> ProjectSpec:
    """`project` as published; a one-line DeployInputError naming the known ones if it is
    not."""
    state = await read_published(store)
    known = sorted(p.name for p in state.projects) if state else []
    if state is None or project not in known:
        raise DeployInputError(
            f"no project {project!r} is published (known: {', '.join(known) or 'none'})"
        )
    return state.project(project)


def _by(progress: str | None) -> dict[str, Any]:
    return {"requested_by": who(), "now": time.time(), "progress": progress}


async def _ask(
    context_name: str | None,
    project: str,
    make: Make,
    follow: bool,
    wait_s: float,
    as_json: bool,
) -> None:
    context = load_context(context_name)
    store = await connect(context)
    try:
        spec = await published_project(store, project)
        async with AsyncExitStack() as stack:
            inbox = await stack.enter_async_context(ProgressInbox(store)) if follow else None
            request = make(spec, inbox.subject if inbox else None)
            await send(store, request)
            if inbox is None:
                _queued(request, as_json)
                return
            if not as_json:
                click.echo(f"Request {request.request_id} queued; following it.")
            lines: list[str] = []
            finals = await inbox.follow(
                {request.request_id}, lambda p: _show(p, lines, as_json), wait_s
            )
    finally:
        await store.close()
    _finish(request, finals.get(request.request_id), lines, wait_s, as_json)


def _what(request: DeployRequest) -> str:
    verb = "cancel" if request.cancel else request.action.value
    return f"{verb} {request.project} {request.env}"


def _request_data(request: DeployRequest) -> dict[str, Any]:
    return {
        "request_id": request.request_id,
        "project": request.project,
        "env": request.env,
        "action": request.action.value,
        "ref": request.ref,
        "release": request.release,
        "cancel": request.cancel,
    }


def _queued(request: DeployRequest, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(_request_data(request), indent=2))
        return
    ref = f" (ref {request.ref})" if request.ref else ""
    release = f" (release {request.release})" if request.release else ""
    click.echo(f"Queued: {_what(request)}{ref}{release}, request {request.request_id}.")
    click.echo(f"See how it goes: meshctl releases {request.project} {request.env}")


def _show(progress: DeployProgress, lines: list[str], quiet: bool) -> None:
    lines.append(progress.line)
    if not quiet:
        click.echo(progress_text(progress))


def _finish(
    request: DeployRequest,
    final: DeployProgress | None,
    lines: list[str],
    wait_s: float,
    as_json: bool,
) -> None:
    if as_json:
        data = _request_data(request)
        data |= {
            "finished": final is not None,
            "ok": final.ok if final else None,
            "release": final.release if final else request.release,
            "lines": lines,
        }
        click.echo(json.dumps(data, indent=2))
    if final is None:
        raise MeshError(
            f"{_what(request)}: no final word within {wait_s:.0f} s; it goes on: "
            f"meshctl releases {request.project} {request.env}"
        )
    if final.refused:
        raise DeployInputError(f"{_what(request)}: {final.line}")
    if not final.ok:
        raise DeployFailed(f"{_what(request)}: {final.line}")
