"""`meshctl publish`: validate the projects CSV and deployment config, show the plan, publish
it as the mesh's desired state (compare-and-set on its revision), optionally wait."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from pathlib import Path

import click

from meshd.agent.records import last_placement
from meshd.agent.store import Store, StoreUnavailable
from meshd.cli.context import load_context, who
from meshd.cli.publishing import StalePublish, write_desired
from meshd.cli.session import connect, jetstream_settled, read_mesh, read_nodes
from meshd.cli.tables import console, render_plan
from meshd.core.placement import place
from meshd.core.plan import DropletAction, Plan, make_plan
from meshd.core.spec import DesiredState
from meshd.core.status import unconverged, unresized
from meshd.inputs import find_deploy_config, load_desired_state
from meshd.inputs.notify_files import EMAIL_FILE, SMS_FILE, find_beside, load_notify_settings
from protocol import subjects
from protocol.errors import MeshError
from protocol.messages import PublishedSpec

_PATH = click.Path(path_type=Path, dir_okay=False)


class PublishRefused(MeshError):
    """The publish would do something the operator must confirm."""


@click.command(no_args_is_help=True)
@click.argument("csv_file", metavar="FILE", type=_PATH)
@click.option(
    "--deploy-config",
    metavar="F",
    type=_PATH,
    help="Deployment config JSON (services, images, memory, domains). "
    "Default: deployment_config.json beside FILE, if there is one.",
)
@click.option(
    "--email-config",
    metavar="F",
    type=_PATH,
    help="How heartbeats and alerts are mailed (SMTP). Default: email_config.json beside FILE, "
    "if there is one. No passwords in it: agents read the secret smtp_password.",
)
@click.option(
    "--sms-config",
    metavar="F",
    type=_PATH,
    help="How critical alerts are texted (Twilio). Default: sms_config.json beside FILE, if "
    "there is one. No token in it: agents read the secret twilio_auth_token.",
)
@click.option("--dry-run", is_flag=True, help="Validate and print the plan; publish nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON (docs/plan-json.md).")
@click.option("--wait", is_flag=True, help="Wait until every instance is healthy.")
@click.option("--timeout", default=120.0, show_default=True, help="Seconds --wait waits.")
@click.option("--force", is_flag=True, help="Publish even if droplets would be destroyed.")
@click.option("--context", "context_name", metavar="NAME", help="Mesh to publish to.")
def publish(
    csv_file: Path,
    deploy_config: Path | None,
    email_config: Path | None,
    sms_config: Path | None,
    dry_run: bool,
    as_json: bool,
    wait: bool,
    timeout: float,
    force: bool,
    context_name: str | None,
) -> None:
    """Validate FILE (Project,Servers,MasterSpec,WebSpec), print what would change (droplets,
    instances, ports, monthly cost) and publish it as the mesh's desired state.

    Every problem of the input is reported at once with file, line and column; bad input exits
    with code 2 and changes nothing. Without a mesh, --dry-run plans against an empty one.
    """
    config_path = deploy_config or find_deploy_config(csv_file)
    state = load_desired_state(csv_file, config_path)
    notify = load_notify_settings(
        email_config or find_beside(csv_file, EMAIL_FILE),
        sms_config or find_beside(csv_file, SMS_FILE),
    )
    state = dataclasses.replace(state, notify=notify.to_data())
    shown = str(config_path) if config_path else None
    if dry_run and _no_mesh(context_name):
        _show(make_plan(None, place(state)), as_json, str(csv_file), shown)
        if not as_json:
            console.print("Dry run: nothing was published.")
        return
    asyncio.run(
        _publish(state, csv_file, shown, dry_run, as_json, wait, timeout, force, context_name)
    )


def _no_mesh(context_name: str | None) -> bool:
    try:
        load_context(context_name)
    except MeshError:
        return True
    return False


def _show(plan: Plan, as_json: bool, source: str, config: str | None) -> None:
    if as_json:
        click.echo(json.dumps(plan.to_json(), indent=2))
    else:
        render_plan(plan, source=source, config=config)


async def _publish(
    state: DesiredState,
    csv_file: Path,
    config: str | None,
    dry_run: bool,
    as_json: bool,
    wait: bool,
    wait_s: float,
    force: bool,
    context_name: str | None,
) -> None:
    context = load_context(context_name)
    store = await connect(context)
    try:
        current = await store.get(subjects.DESIRED_BUCKET, subjects.DESIRED_KEY)
        last = await last_placement(store)
        previous = last.placement if last else None
        running = {name: node.size for name, node in (await read_nodes(store)).items()}
        plan = make_plan(previous, place(state, previous), running)
        _show(plan, as_json, str(csv_file), config)
        if dry_run:
            if not as_json:
                console.print("Dry run: nothing was published.")
            return
        destroyed = [d.name for d in plan.droplets if d.action is DropletAction.DESTROY]
        if destroyed and not force:
            raise PublishRefused(
                f"publish {csv_file}: this would destroy {', '.join(destroyed)}; "
                "re-run with --force if that is what you want"
            )
        message = PublishedSpec(
            spec=state.to_data(),
            published_by=who(),
            published_at=time.time(),
        )
        try:
            revision = await write_desired(store, message, current)
        except StalePublish as err:
            raise PublishRefused(f"publish {csv_file}: {err}") from None
        await store.record("published", message.published_by, "spec", {"revision": revision})
        if not as_json:
            console.print(f"Published revision {revision}.")
        if wait:
            await wait_converged(store, revision, wait_s, quiet=as_json)
    finally:
        await store.close()


async def wait_converged(
    store: Store, revision: int, wait_s: float, quiet: bool, what: str = "publish"
) -> None:
    """Until every service is healthy at this revision, every droplet has the size the
    placement gives it (a resize powers a DigitalOcean droplet off: a mesh is not whole before)
    and JetStream runs on the servers the mesh's droplets call for (a growth or shrink pauses
    the control plane for seconds: a read that is not answered meanwhile is tried again).
    `what` names the command in its error."""
    deadline = time.monotonic() + wait_s
    missing = ["the scheduler has not placed this revision yet"]
    with console.status("Waiting for the mesh to converge ...") as progress:
        while time.monotonic() < deadline:
            try:
                placed = await last_placement(store)
                scheduled = placed is not None and placed.spec_revision >= revision
                reading = await read_mesh(store)
                settled = await jetstream_settled(store, reading, placed)
            except StoreUnavailable:
                progress.update("Waiting for the mesh to converge ... (JetStream busy)")
                await asyncio.sleep(0.5)
                continue
            view = reading.status()
            healthy = sum(s["healthy"] for s in view["services"])
            desired = sum(s["desired"] for s in view["services"])
            sizes = {d.name: d.size for d in placed.placement.droplets} if placed else {}
            resizing = unresized(sizes, view)
            more = "" if settled else ", JetStream moving"
            more += f", {len(resizing)} resizing" if resizing else ""
            progress.update(
                f"Waiting for the mesh to converge ... {healthy}/{desired} healthy{more}"
            )
            missing = [
                *([] if scheduled else ["the scheduler has not placed this revision yet"]),
                *unconverged(view),
                *resizing,
                *([] if settled else ["JetStream is still moving to the servers it wants"]),
            ]
            if not missing:
                if not quiet:
                    console.print(f"Converged: {healthy}/{desired} instances healthy.")
                return
            await asyncio.sleep(0.5)
    shown = "\n  ".join(missing[:12]) + (
        f"\n  ... and {len(missing) - 12} more" if len(missing) > 12 else ""
    )
    raise MeshError(
        f"{what}: not converged within {wait_s:.0f} s; missing:\n  {shown}\n"
        "(`meshctl status` shows the whole mesh)"
    )
