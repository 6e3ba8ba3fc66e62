"""Reading the operator's files from disk into a validated `DesiredState`."""

from __future__ import annotations

from pathlib import Path

from meshd.csvfile import ProjectRow, parse_projects_csv
from meshd.deploy_config import DeployConfig, parse_deploy_config
from meshd.desired import build_desired_state
from meshd.errors import InputErrors, InputIssue
from meshd.spec import DesiredState

DEFAULT_CONFIG_NAME = "deployment_config.json"


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
        except InputErrors as err:
            issues += err.issues
    if issues:
        raise InputErrors(issues)
    return build_desired_state(rows, config, str(config_path))


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise InputErrors([InputIssue(str(path), "", f"cannot read: {reason}")]) from None
