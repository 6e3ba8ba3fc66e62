"""The deployment config's project keys that shape releases: `versioning` (UAT version tags,
`meshd.core.versions`) and `health_timeout` (how long a release has to be healthy)."""

from __future__ import annotations

from typing import Any

from meshd.core.spec import DEFAULT_RELEASE_HEALTH_TIMEOUT_S
from meshd.core.versions import VersioningError, versioning_from_config
from meshd.inputs.deploy_branches import key_path
from meshd.inputs.vault_config import Checks

HEALTH_TIMEOUT_RANGE = (5, 3600)


def release_versioning(checker: Checks, project: dict[str, Any], path: str) -> dict[str, Any]:
    """The project's `versioning` object, checked ({} when absent or wrong)."""
    if "versioning" not in project:
        return {}
    found = checker.obj(project["versioning"], f"{path}.versioning")
    if found is None:
        return {}
    try:
        versioning_from_config(found)
    except VersioningError as err:
        checker.fail(key_path(f"{path}.versioning", err.key), err.reason)
        return {}
    return dict(found)


def health_timeout(checker: Checks, project: dict[str, Any], path: str) -> int:
    """The project's `health_timeout` in seconds (the default when absent or wrong)."""
    value = project.get("health_timeout", DEFAULT_RELEASE_HEALTH_TIMEOUT_S)
    low, high = HEALTH_TIMEOUT_RANGE
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        checker.fail(
            f"{path}.health_timeout",
            f"expected a whole number of seconds from {low} to {high}, got {value!r}",
        )
        return DEFAULT_RELEASE_HEALTH_TIMEOUT_S
    return value
