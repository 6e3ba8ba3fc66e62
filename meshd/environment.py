"""The environment variables every instance gets (seed "Dynamic Environment Variable
Generation", DESIGN.md Allocation). Pure: values in, a dict out. Never secrets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from meshd.allocation import EnvAllocation
from meshd.spec import MASTER, ServiceKind

VAULT_PORT = 8200
OPENSEARCH_PORT = 9200


def instance_environment(
    alloc: EnvAllocation,
    service: str,
    kind: ServiceKind,
    droplets: Sequence[str],
    placed: Mapping[str, Sequence[str]],
    addresses: Mapping[str, str],
) -> dict[str, str]:
    """`placed` maps each service of the same project-environment to its droplets;
    `addresses` maps droplet names to addresses (a droplet not yet known is named instead)."""

    def host(of_service: str) -> str:
        where = placed.get(of_service) or [MASTER]
        return addresses.get(where[0], where[0])

    h = alloc.hash
    values = {
        "DB_USER": alloc.db_user,
        "DB_NAME": alloc.db_name,
        "DB_HOST": host("database"),
        "DB_PORT": str(alloc.ports["database"]),
        "REDIS_HOST": host("redis"),
        "REDIS_PORT": str(alloc.ports["redis"]),
        "VAULT_HOST": addresses.get(MASTER, MASTER),
        "VAULT_PORT": str(VAULT_PORT),
        "OPENSEARCH_HOST": addresses.get(MASTER, MASTER),
        "OPENSEARCH_PORT": str(OPENSEARCH_PORT),
        "OPENSEARCH_INDEX": f"{alloc.project}-{alloc.env}-logs-{h[:6]}",
        "SERVICE_NAME": f"{alloc.project}-{alloc.env}-{service}",
        "ENVIRONMENT": alloc.env,
        "PROJECT": alloc.project,
        "ASSIGNED_DROPLETS": ",".join(droplets),
        "RESOURCE_HASH": h,
    }
    if kind is ServiceKind.WEB:
        values["SERVICE_PORT"] = str(alloc.ports[service])
    return values
