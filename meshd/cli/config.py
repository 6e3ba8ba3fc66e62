"""`meshctl config`: the operator's plain environment variables of a project or of one of its
environments (the seed's `deploy_with_custom_env`), merged into its instances' environment
after the mesh's own (docs/configuration.md). Stored and shown in clear: secrets belong in
`meshctl secret`."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click

from meshd.agent.backoff import retries
from meshd.agent.records import config_layers
from meshd.agent.store import Conflict, Store
from meshd.cli.context import load_context, who
from meshd.cli.session import check_project, connect, read_allocations, read_published
from meshd.cli.tables import config_table, console
from meshd.core.envvars import config_problem, operator_environment
from meshd.core.spec import ENVIRONMENTS, DesiredState, ServiceKind
from protocol import subjects
from protocol.codec import decode, encode
from protocol.envconfig import ConfigVars
from protocol.errors import MeshError
from protocol.messages import Allocation

APPLIED_WAIT_S = 30.0
LOOKS_SECRET = re.compile(r"PASSWORD|SECRET|TOKEN|PRIVATE|(^|_)KEY$", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Target:
    project: str
    env: str | None

    @property
    def key(self) -> str:
        return subjects.config_key(self.project, self.env)

    def __str__(self) -> str:
        return f"{self.project} {self.env}" if self.env else f"{self.project} (every environment)"


def target_of(args: tuple[str, ...]) -> tuple[Target, list[str]]:
    """`PROJECT [ENV] REST...`: an ENV is a word of ENVIRONMENTS without `=`."""
    if not args:
        raise click.UsageError("give PROJECT [ENV] and what to change")
    project, *rest = args
    env = None
    if rest and "=" not in rest[0] and rest[0] in ENVIRONMENTS:
        env, *rest = rest
    return Target(project, env), rest


def assignments(words: list[str]) -> dict[str, str]:
    """`KEY=VALUE` words as a mapping; UsageError with what would be right."""
    if not words:
        raise click.UsageError("give at least one KEY=VALUE")
    values: dict[str, str] = {}
    for word in words:
        name, equals, value = word.partition("=")
        if not equals:
            raise click.UsageError(f"{word!r} is not KEY=VALUE (e.g. API_RATE_LIMIT=1000)")
        problem = config_problem(name, value)
        if problem:
            raise click.UsageError(problem + "; nothing was set")
        values[name] = value
    return values


@click.group()
def config() -> None:
    """Plain environment variables of a project or one of its environments.

    \b
    An environment's value wins over the project's, which wins over the service's
    env_template; none overrides the mesh's own variables (DB_HOST, SERVICE_PORT, ...).
    Datastores do not get them. A change rolls the services with no request lost.
    Values are stored and shown in clear: use `meshctl secret` for secrets.
    """


context_option = click.option("--context", "context_name", metavar="NAME", help="Mesh to talk to.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


@config.command("set", no_args_is_help=True)
@click.argument("args", nargs=-1, metavar="PROJECT [ENV] KEY=VALUE...")
@json_option
@context_option
def set_config(args: tuple[str, ...], as_json: bool, context_name: str | None) -> None:
    """Set variables and roll the services they reach.

    Example: `meshctl config set hostomatic prod FEATURE_FLAG_X=enabled API_RATE_LIMIT=1000`
    (without ENV: every environment of the project).
    """
    target, words = target_of(args)
    values = assignments(words)
    hints = [n for n in values if LOOKS_SECRET.search(n)]
    asyncio.run(_change(target, lambda old: {**old, **values}, as_json, context_name, hints))


@config.command("unset", no_args_is_help=True)
@click.argument("args", nargs=-1, metavar="PROJECT [ENV] KEY...")
@json_option
@context_option
def unset_config(args: tuple[str, ...], as_json: bool, context_name: str | None) -> None:
    """Remove variables (a name that is not set is no error)."""
    target, names = target_of(args)
    if not names:
        raise click.UsageError("give at least one KEY to unset")
    gone = set(names)
    asyncio.run(
        _change(
            target,
            lambda old: {k: v for k, v in old.items() if k not in gone},
            as_json,
            context_name,
            [],
        )
    )


@config.command("list")
@click.argument("args", nargs=-1, metavar="[PROJECT [ENV]]")
@json_option
@context_option
def list_config(args: tuple[str, ...], as_json: bool, context_name: str | None) -> None:
    """The variables set, where (project, environment or a service's env_template), by whom
    and when."""
    target = target_of(args)[0] if args else None
    if args and len(args) > (2 if target and target.env else 1):
        raise click.UsageError("list takes at most PROJECT and ENV")
    asyncio.run(_list(target, as_json, context_name))


async def _change(
    target: Target,
    change: Callable[[dict[str, str]], dict[str, str]],
    as_json: bool,
    context_name: str | None,
    hints: list[str],
) -> None:
    store = await connect(load_context(context_name))
    try:
        state = await check_project(store, target.project)
        before = await read_allocations(store)
        old, new = await _write(store, target, change)
        changed = sorted(k for k in {*old, *new} if old.get(k) != new.get(k))
        detail = {"project": target.project, "env": target.env, "changed": changed}
        if changed:
            await store.record("config_changed", who(), target.key, detail)
            rolled = await _wait_applied(store, target, changed, before, state)
        else:
            rolled = []
    finally:
        await store.close()
    if as_json:
        click.echo(json.dumps({**detail, "values": new, "rolled": rolled}, indent=2))
        return
    if not changed:
        console.print(f"Nothing changed for {target}.")
        return
    console.print(f"Changed {', '.join(changed)} for {target}.")
    for key in rolled:
        console.print(f"Rolling {key} (follow with `meshctl status`).")
    where = " ".join(p for p in (target.project, target.env) if p)
    for name in hints:
        console.print(
            f"[yellow]{name} looks like a secret[/]: config values are stored and shown in "
            f"clear; `meshctl secret set {where} {name.lower()}` keeps it sealed."
        )


async def _write(
    store: Store, target: Target, change: Callable[[dict[str, str]], dict[str, str]]
) -> tuple[dict[str, str], dict[str, str]]:
    """The variables before and after, written over what was read (another operator's change
    meanwhile is read again, not lost)."""
    async for _ in retries(0.05, 0.5, attempts=5):
        entry = await store.get(subjects.DESIRED_BUCKET, target.key)
        old = dict(decode(entry.value, ConfigVars).values) if entry and entry.value else {}
        new = change(old)
        if new == old:
            return old, new
        try:
            if not new:
                assert entry is not None  # `old` had values
                await store.delete(subjects.DESIRED_BUCKET, target.key, last=entry.revision)
            elif entry is None or entry.value is None:
                await store.create(subjects.DESIRED_BUCKET, target.key, encode(_vars(target, new)))
            else:
                await store.update(
                    subjects.DESIRED_BUCKET,
                    target.key,
                    encode(_vars(target, new)),
                    last=entry.revision,
                )
        except Conflict:
            continue
        return old, new
    raise MeshError(f"variables of {target}: others kept changing them at the same time; try again")


def _vars(target: Target, values: dict[str, str]) -> ConfigVars:
    return ConfigVars(
        project=target.project, env=target.env, values=values, set_by=who(), set_at=time.time()
    )


def _affected(target: Target, allocations: dict[str, Allocation]) -> dict[str, Allocation]:
    return {
        key: a
        for key, a in allocations.items()
        if a.project == target.project
        and (target.env is None or a.env == target.env)
        and not ServiceKind(a.service_kind).is_datastore
    }


async def _wait_applied(
    store: Store,
    target: Target,
    changed: list[str],
    before: dict[str, Allocation],
    state: DesiredState,
) -> list[str]:
    """The services the scheduler rolls for the change, once it has applied it."""
    layers = await config_layers(store)
    wanted = {
        key: {k: operator_values(a, layers, state).get(k) for k in changed}
        for key, a in _affected(target, before).items()
    }
    deadline = time.monotonic() + APPLIED_WAIT_S
    with console.status(f"Applying the variables of {target} ..."):
        while True:
            now = _affected(target, await read_allocations(store))
            if all(
                {k: now[key].env_vars.get(k) for k in changed} == values
                for key, values in wanted.items()
                if key in now
            ):
                return sorted(
                    key
                    for key, a in now.items()
                    if key in before and a.generation != before[key].generation
                )
            if time.monotonic() > deadline:
                raise MeshError(
                    f"variables of {target}: stored, but the scheduler has not applied them "
                    f"within {APPLIED_WAIT_S:.0f} s (`meshctl status`)"
                )
            await asyncio.sleep(0.3)


def operator_values(
    allocation: Allocation,
    layers: dict[tuple[str, str | None], ConfigVars],
    state: DesiredState | None,
) -> dict[str, str]:
    """What the scheduler gives `allocation` of the operator's variables."""
    template: dict[str, str] = {}
    if state is not None:
        project = state.project(allocation.project)
        template = next(s.env for s in project.services if s.name == allocation.service)
    return operator_environment(template, layers, allocation.project, allocation.env)


def config_rows(
    state: DesiredState | None,
    layers: dict[tuple[str, str | None], ConfigVars],
    target: Target | None,
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for project in state.projects if state else ():
        if target and project.name != target.project:
            continue
        for service in project.services:
            for name, value in sorted(service.env.items()):
                rows.append(
                    {
                        "project": project.name,
                        "env": None,
                        "source": f"template:{service.name}",
                        "name": name,
                        "value": value,
                        "set_by": None,
                        "set_at": None,
                    }
                )
    for (project_name, env), found in sorted(
        layers.items(), key=lambda i: (i[0][0], i[0][1] or "")
    ):
        if target and (project_name != target.project or (target.env and env != target.env)):
            continue
        for name, value in sorted(found.values.items()):
            rows.append(
                {
                    "project": project_name,
                    "env": env,
                    "source": "env" if env else "project",
                    "name": name,
                    "value": value,
                    "set_by": found.set_by,
                    "set_at": found.set_at,
                }
            )
    return rows


async def _list(target: Target | None, as_json: bool, context_name: str | None) -> None:
    store = await connect(load_context(context_name))
    try:
        if target is not None:
            state: DesiredState | None = await check_project(store, target.project)
        else:
            state = await read_published(store)
        rows = config_rows(state, await config_layers(store), target)
    finally:
        await store.close()
    if as_json:
        for row in rows:
            click.echo(json.dumps(row))
        return
    if not rows:
        console.print("No variables set: `meshctl config set --help`.")
        return
    console.print(config_table(rows))
