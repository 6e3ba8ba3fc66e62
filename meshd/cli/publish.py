"""`meshctl publish`: validate the projects CSV and deployment config, show the plan, publish."""

from __future__ import annotations

import json
from pathlib import Path

import click

from meshd.cli.render import console, render_plan
from meshd.inputs import find_deploy_config, load_desired_state
from meshd.placement import place
from meshd.plan import make_plan
from protocol.errors import MeshError

_PATH = click.Path(path_type=Path, dir_okay=False)


class NoMeshError(MeshError):
    """There is no mesh to talk to."""


@click.command(no_args_is_help=True)
@click.argument("csv_file", metavar="FILE", type=_PATH)
@click.option(
    "--deploy-config",
    metavar="F",
    type=_PATH,
    help="Deployment config JSON (services, images, memory, domains). "
    "Default: deployment_config.json beside FILE, if there is one.",
)
@click.option("--dry-run", is_flag=True, help="Validate and print the plan; publish nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON (docs/plan-json.md).")
def publish(csv_file: Path, deploy_config: Path | None, dry_run: bool, as_json: bool) -> None:
    """Validate FILE (Project,Servers,MasterSpec,WebSpec), print what would change (droplets,
    instances, ports, monthly cost) and publish it as the mesh's desired state.

    Every problem of the input is reported at once with file, line and column; bad input exits
    with code 2 and changes nothing.
    """
    config_path = deploy_config or find_deploy_config(csv_file)
    state = load_desired_state(csv_file, config_path)
    plan = make_plan(None, place(state))
    if as_json:
        click.echo(json.dumps(plan.to_json(), indent=2))
    else:
        render_plan(plan, source=str(csv_file), config=str(config_path) if config_path else None)
    if dry_run:
        if not as_json:
            console.print("Dry run: nothing was published.")
        return
    raise NoMeshError(
        f"publish {csv_file}: there is no mesh to publish to yet; use --dry-run to see the plan"
    )
