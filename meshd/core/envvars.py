"""The environment variables every instance gets (seed "Dynamic Environment Variable
Generation"). Pure: values in, values out. Never secrets.

Host variables (DB_HOST, ...) name a droplet, not an address: the agent that starts the
instance resolves them, so that a droplet's address becoming known (it joins after the first
scheduling) never changes an allocation and never restarts an instance.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from meshd.core.resources import EnvResources
from meshd.core.spec import MASTER, ServiceKind
from protocol.envconfig import ConfigVars

VAULT_PORT = 8200
OPENSEARCH_PORT = 9200
# What the runtimes add themselves (`<NAME>_FILE` for each secret file, too).
RUNTIME_VARIABLES = ("SERVICE_HOST", "SERVICE_PORT", "SECRETS_DIR")
SEED_VARIABLES = frozenset(
    {
        *("DB_HOST", "REDIS_HOST", "VAULT_HOST", "OPENSEARCH_HOST"),
        *("DB_USER", "DB_NAME", "DB_PORT", "REDIS_PORT", "VAULT_PORT", "OPENSEARCH_PORT"),
        *("OPENSEARCH_INDEX", "SERVICE_NAME", "ENVIRONMENT", "PROJECT", "ASSIGNED_DROPLETS"),
        "RESOURCE_HASH",
        *RUNTIME_VARIABLES,
    }
)
CONFIG_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
MAX_CONFIG_VALUE = 4096


def instance_hosts(placed: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """Host variables -> droplet names; `placed` maps each service of the same
    project-environment to its droplets."""

    def first(service: str) -> str:
        where = placed.get(service) or [MASTER]
        return where[0]

    return {
        "DB_HOST": first("database"),
        "REDIS_HOST": first("redis"),
        "VAULT_HOST": MASTER,
        "OPENSEARCH_HOST": MASTER,
    }


def instance_environment(
    resources: EnvResources, service: str, kind: ServiceKind, droplets: Sequence[str]
) -> dict[str, str]:
    """Every other variable of the seed's list."""
    h = resources.hash
    values = {
        "DB_USER": resources.db_user,
        "DB_NAME": resources.db_name,
        "DB_PORT": str(resources.ports["database"]),
        "REDIS_PORT": str(resources.ports["redis"]),
        "VAULT_PORT": str(VAULT_PORT),
        "OPENSEARCH_PORT": str(OPENSEARCH_PORT),
        "OPENSEARCH_INDEX": f"{resources.project}-{resources.env}-logs-{h[:6]}",
        "SERVICE_NAME": f"{resources.project}-{resources.env}-{service}",
        "ENVIRONMENT": resources.env,
        "PROJECT": resources.project,
        "ASSIGNED_DROPLETS": ",".join(droplets),
        "RESOURCE_HASH": h,
    }
    if kind is ServiceKind.WEB:
        values["SERVICE_PORT"] = str(resources.ports[service])
    return values


def config_problem(name: str, value: str) -> str | None:
    """Why `name=value` cannot be one of the operator's variables, or None if it can."""
    if not CONFIG_NAME.match(name):
        return f"{name!r} is not a variable name; use letters, digits and _ (API_RATE_LIMIT)"
    if name in SEED_VARIABLES:
        return f"{name} is set by the mesh itself and cannot be overridden"
    if name.endswith("_FILE"):
        return f"{name}: names ending in _FILE point at secret files; the mesh sets them"
    if "\0" in value:
        return f"the value of {name} contains a NUL byte"
    if len(value.encode()) > MAX_CONFIG_VALUE:
        return f"the value of {name} is longer than {MAX_CONFIG_VALUE} bytes"
    return None


def operator_environment(
    template: Mapping[str, str],
    layers: Mapping[tuple[str, str | None], ConfigVars],
    project: str,
    env: str,
) -> dict[str, str]:
    """The operator's variables of one service in `project`/`env`: its env_template under
    the project's `meshctl config` values under the environment's."""
    wide, narrow = layers.get((project, None)), layers.get((project, env))
    return {**template, **(wide.values if wide else {}), **(narrow.values if narrow else {})}


def with_config(mesh: Mapping[str, str], *layers: Mapping[str, str]) -> dict[str, str]:
    """The operator's variables, wider layers first (template, project, environment), under
    the mesh's own: a later layer overrides an earlier one, none overrides the mesh's."""
    merged: dict[str, str] = {}
    for layer in layers:
        merged.update(layer)
    return {**merged, **mesh}


def resolve_hosts(hosts: Mapping[str, str], addresses: Mapping[str, str]) -> dict[str, str] | None:
    """Host variables with addresses, or None while some droplet's address is unknown."""
    if any(droplet not in addresses for droplet in hosts.values()):
        return None
    return {variable: addresses[droplet] for variable, droplet in hosts.items()}
