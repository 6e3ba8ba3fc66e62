"""The deployment config's project key `domains`: the host names routed to each environment
by nginx, each used once across the projects. Checked here with the JSON path of each
problem."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from meshd.core.spec import ENVIRONMENTS
from meshd.inputs.deploy_branches import key_path
from meshd.inputs.vault_config import Checks

HOSTNAME = re.compile(r"(?=.{1,253}\Z)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}\Z")


def project_domains(checker: Checks, value: Any, path: str) -> dict[str, tuple[str, ...]]:
    """The `domains` object at `path`: environment -> its host names."""
    envs = checker.obj(value, path, ENVIRONMENTS)
    result: dict[str, tuple[str, ...]] = {}
    for env, names in (envs or {}).items():
        if env not in ENVIRONMENTS:
            continue
        if not isinstance(names, list) or not names:
            checker.fail(f"{path}.{env}", f"expected a list of domain names, got {_shown(names)}")
            continue
        for i, name in enumerate(names):
            if isinstance(name, str) and name.startswith("*.") and HOSTNAME.match(name[2:]):
                checker.fail(
                    f"{path}.{env}[{i}]",
                    f"{name!r} is a wildcard, and certificates come by the HTTP-01 challenge, "
                    "which cannot issue one; list each name (like 'www.example.com')",
                )
            elif not isinstance(name, str) or not HOSTNAME.match(name):
                checker.fail(
                    f"{path}.{env}[{i}]",
                    f"{_shown(name)} is not a domain name; expected lowercase like "
                    "'app.example.com'",
                )
            elif name in names[:i]:
                checker.fail(f"{path}.{env}[{i}]", f"domain {name!r} is listed twice")
        result[env] = tuple(n for n in names if isinstance(n, str))
    return result


def unique_domains(checker: Checks, domains: Mapping[str, Mapping[str, tuple[str, ...]]]) -> None:
    """Each host name used by one project environment only (`domains`: project -> its
    `domains`)."""
    owner: dict[str, str] = {}
    for project, found in domains.items():
        for env, names in found.items():
            for name in names:
                where = f"{project!r} {env}"
                if name in owner and owner[name] != where:
                    checker.fail(
                        key_path(key_path("$.projects", project), "domains") + f".{env}",
                        f"domain {name!r} is already used by {owner[name]}",
                    )
                owner.setdefault(name, where)


def _shown(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."
