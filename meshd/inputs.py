"""Reading the operator's files from disk into a validated `DesiredState`."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from meshd.csvfile import ProjectRow, parse_projects_csv
from meshd.deploy_config import DeployConfig, parse_deploy_config
from meshd.desired import build_desired_state
from meshd.errors import InputErrors, InputIssue
from meshd.spec import DesiredState, ServiceSpec

DEFAULT_CONFIG_NAME = "deployment_config.json"
CONFIG_DIR = "${CONFIG_DIR}"


def find_deploy_config(csv_path: Path) -> Path | None:
    """`deployment_config.json` beside the CSV, the seed's layout, if there is one."""
    candidate = csv_path.parent / DEFAULT_CONFIG_NAME
    return candidate if candidate.is_file() else None


def load_desired_state(csv_path: Path, config_path: Path | None) -> DesiredState:
    """Raises `InputErrors` with every problem of both files (nothing partial is returned)."""
    issues: list[InputIssue] = []
    rows: tuple[ProjectRow, ...] = ()
    config = DeployConfig()
    try:
        rows = parse_projects_csv(_read(csv_path), str(csv_path))
    except InputErrors as err:
        issues += err.issues
    if config_path is not None:
        try:
            config = parse_deploy_config(_read(config_path), str(config_path))
            config = expand_config_dir(config, config_path.resolve().parent)
        except InputErrors as err:
            issues += err.issues
    if issues:
        raise InputErrors(issues)
    return build_desired_state(rows, config, str(config_path))


def expand_config_dir(config: DeployConfig, directory: Path) -> DeployConfig:
    """`${CONFIG_DIR}` in a command is the directory of the deployment config, so that local
    meshes can run programs shipped beside it (the examples do)."""

    def expand(service: ServiceSpec) -> ServiceSpec:
        if service.command is None or CONFIG_DIR not in service.command:
            return service
        return replace(service, command=service.command.replace(CONFIG_DIR, str(directory)))

    projects = {
        name: replace(project, services=tuple(expand(s) for s in project.services))
        for name, project in config.projects.items()
    }
    return replace(config, projects=projects)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise InputErrors([InputIssue(str(path), "", f"cannot read: {reason}")]) from None
