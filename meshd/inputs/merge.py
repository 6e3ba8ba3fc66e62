"""Combining the projects CSV and the deployment config into one `DesiredState`."""

from __future__ import annotations

import difflib
from collections.abc import Sequence

from meshd.core.errors import InputErrors, InputIssue
from meshd.core.spec import DesiredState, ProjectSpec
from meshd.inputs.csvfile import ProjectRow
from meshd.inputs.deploy_config import DeployConfig, ProjectConfig, default_services, json_path


def build_desired_state(
    rows: Sequence[ProjectRow], config: DeployConfig, config_name: str = "deployment config"
) -> DesiredState:
    """The desired state; a config naming a project the CSV lacks is refused (likely a typo
    that would otherwise silently give that project the default services)."""
    names = [row.name for row in rows]
    issues = []
    for name in config.projects:
        if name not in names:
            close = difflib.get_close_matches(name, names, n=1)
            hint = f"did you mean {close[0]!r}?" if close else "add it to the CSV or remove it"
            issues.append(
                InputIssue(
                    config_name,
                    json_path("$.projects", name),
                    f"project {name!r} is not in the projects CSV; {hint}",
                )
            )
    if issues:
        raise InputErrors(issues)
    fallback = ProjectConfig(services=default_services())
    projects = tuple(_project(row, config.projects.get(row.name, fallback)) for row in rows)
    return DesiredState(
        projects=projects,
        platform=config.platform,
        vault=dict(config.vault),
        logs=config.logs,
        acme=dict(config.acme),
    )


def _project(row: ProjectRow, config: ProjectConfig) -> ProjectSpec:
    return ProjectSpec(
        name=row.name,
        servers=row.servers,
        master_size=row.master_size,
        web_size=row.web_size,
        services=config.services,
        git_repo=config.git_repo,
        domains=dict(config.domains),
        deploy=dict(config.deploy),
        versioning=dict(config.versioning),
        health_timeout_s=config.health_timeout_s,
        registry=config.registry,
        release_command=config.release_command,
        backups=config.backups,
    )
