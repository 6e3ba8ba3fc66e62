"""Desired states for tests, built the way the CLI builds them."""

from __future__ import annotations

from pathlib import Path

from meshd.core.spec import DesiredState
from meshd.inputs.csvfile import parse_projects_csv
from meshd.inputs.deploy_config import DeployConfig, parse_deploy_config
from meshd.inputs.merge import build_desired_state

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def state_from_csv(text: str, config: DeployConfig | None = None) -> DesiredState:
    rows = parse_projects_csv(text.encode(), "projects.csv")
    return build_desired_state(rows, config or DeployConfig())


def config_from_json(text: str) -> DeployConfig:
    return parse_deploy_config(text.encode(), "deployment_config.json")


def seed_state() -> DesiredState:
    rows = parse_projects_csv((EXAMPLES / "projects.csv").read_bytes(), "projects.csv")
    config = parse_deploy_config(
        (EXAMPLES / "deployment_config.json").read_bytes(), "deployment_config.json"
    )
    return build_desired_state(rows, config)
