"""The deployment config's project key `registry`: the private registry the project's images
come from and the user to log in as (`meshd.core.registries`); its password is the project's
secret `registry_password`, never in the config. Checked here with the JSON path of each
problem; its keys are the `registry` level of `config_keys`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from meshd.core.registries import server_problem, username_problem
from meshd.core.spec import RegistryLogin
from meshd.inputs.config_keys import Level, names_at
from meshd.inputs.vault_config import Checks

REGISTRY_KEYS = names_at(Level.REGISTRY)
CHECKS: dict[str, Callable[[str], str | None]] = {
    "server": server_problem,
    "username": username_problem,
}


def registry_login(checker: Checks, project: dict[str, Any], path: str) -> RegistryLogin | None:
    """The `registry` of the project object at `path`, or None when it has none; problems go
    to `checker` (then the result is None)."""
    if "registry" not in project:
        return None
    where = f"{path}.registry"
    found = checker.obj(project["registry"], where, REGISTRY_KEYS)
    if found is None:
        return None
    before = len(checker.issues)
    values: dict[str, str] = {}
    for key, check in CHECKS.items():
        if key in found:
            values[key] = checker.text(found[key], f"{where}.{key}", check)
        else:
            checker.fail(where, f"missing {key!r}; a registry login needs a server and a username")
    if len(checker.issues) > before:
        return None
    return RegistryLogin(server=values["server"], username=values["username"])
