"""The deployment config's project key `deploy`: which branch a push deploys to which
environment (`meshd.core.deploy_refs` says how a branch is matched). Checked here with the
JSON path of each problem; a project without the key gets the default mapping."""

from __future__ import annotations

import re
from typing import Any

from meshd.core.deploy_refs import DEFAULT_DEPLOY, validate_deploy_mapping
from meshd.inputs.vault_config import Checks


def default_deploy() -> dict[str, str]:
    """The mapping of a project that sets none: main to UAT, any other branch to test."""
    return dict(DEFAULT_DEPLOY)


def deploy_branches(checker: Checks, project: dict[str, Any], path: str) -> dict[str, str]:
    """The `deploy` mapping of the project object at `path`, or the default when it has
    none; problems go to `checker` (then the result is the default)."""
    if "deploy" not in project:
        return default_deploy()
    value = project["deploy"]
    problems = validate_deploy_mapping(value)
    for problem in problems:
        where = f"{path}.deploy"
        if problem.environment is not None:
            where = key_path(where, problem.environment)
        checker.fail(where, problem.message)
    return default_deploy() if problems else dict(value)


def key_path(parent: str, key: str) -> str:
    """`parent.key`, or `parent['key']` for a key that is not a plain name (deploy_config's
    `json_path`)."""
    return f"{parent}.{key}" if re.fullmatch(r"[A-Za-z0-9_-]+", key) else f"{parent}[{key!r}]"
