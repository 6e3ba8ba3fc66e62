"""The deployment config's project keys that shape releases: `versioning` (UAT version tags,
`meshd.core.versions`), `health_timeout` (how long a release has to be healthy) and
`release_command` with `release_service` and `release_command_timeout` (what runs once before
a release rolls out)."""

from __future__ import annotations

import shlex
from typing import Any

from meshd.core.spec import (
    DEFAULT_RELEASE_COMMAND_TIMEOUT_S,
    DEFAULT_RELEASE_HEALTH_TIMEOUT_S,
    DEFAULT_RELEASE_SERVICE,
    ReleaseCommand,
    ServiceSpec,
)
from meshd.core.versions import VersioningError, versioning_from_config
from meshd.inputs.deploy_branches import key_path
from meshd.inputs.vault_config import Checks

HEALTH_TIMEOUT_RANGE = (5, 3600)
RELEASE_COMMAND_TIMEOUT_RANGE = (5, 3600)


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


def release_command(
    checker: Checks, project: dict[str, Any], path: str, services: tuple[ServiceSpec, ...]
) -> ReleaseCommand | None:
    """The project's `release_command` with its `release_service` and timeout (None when it
    has none, or when they are wrong: then the problems went to `checker`)."""
    if "release_command" not in project:
        for key in ("release_service", "release_command_timeout"):
            if key in project:
                checker.fail(f"{path}.{key}", "only with a release_command; add one or remove it")
        return None
    before = len(checker.issues)
    command = checker.text(project["release_command"], f"{path}.release_command", _unsplittable)
    service = _release_service(checker, project, path, services)
    value = project.get("release_command_timeout", DEFAULT_RELEASE_COMMAND_TIMEOUT_S)
    low, high = RELEASE_COMMAND_TIMEOUT_RANGE
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        checker.fail(
            f"{path}.release_command_timeout",
            f"expected a whole number of seconds from {low} to {high}, got {value!r}",
        )
    if len(checker.issues) > before:
        return None
    return ReleaseCommand(command, service, value)


def _release_service(
    checker: Checks, project: dict[str, Any], path: str, services: tuple[ServiceSpec, ...]
) -> str:
    """`release_service` (default `backend`): a service the project builds from its
    repository, since the command runs with that service's artifact of the release."""
    given = "release_service" in project
    name = project.get("release_service", DEFAULT_RELEASE_SERVICE)
    where = f"{path}.release_service" if given else f"{path}.release_command"
    if not isinstance(name, str) or not name:
        checker.fail(where, f"expected the name of a service, got {name!r}")
        return DEFAULT_RELEASE_SERVICE
    found = next((s for s in services if s.name == name), None)
    built = sorted(s.name for s in services if s.build_context is not None)
    choices = f"one built from the repository: {', '.join(built)}" if built else "none is"
    if found is None:
        checker.fail(where, f"runs with the service {name!r}, which the project lacks; {choices}")
    elif found.build_context is None:
        checker.fail(
            where,
            f"runs with the artifact of {name!r}, which is not built from the repository "
            f"(no build_context); name the service in release_service ({choices})",
        )
    return name


def _unsplittable(command: str) -> str | None:
    try:
        shlex.split(command)
    except ValueError as err:
        return f"cannot be split like a shell would: {err}"
    return None
