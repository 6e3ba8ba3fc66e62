"""What a droplet's runtime is asked to run for an allocation: the `InstanceSpec` of one slot,
with the host variables resolved to addresses and the secret values looked up."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from meshd.core.envvars import resolve_hosts
from meshd.core.rollout import slot_port
from meshd.core.secret_plan import REGISTRY_PASSWORD
from plugins.runtimes import InstanceSpec, RegistryAuth
from plugins.secrets import Secrets, lookup_names
from protocol.errors import MeshError
from protocol.messages import Allocation


def instance_spec(
    allocation: Allocation,
    address: str,
    hosts: Mapping[str, str],
    secrets: dict[str, bytes],
    slot: int = 0,
    build_secrets: dict[str, bytes] | None = None,
    registry_auth: RegistryAuth | None = None,
    volume: Path | None = None,
) -> InstanceSpec:
    """What the runtime of the droplet at `address` runs for `allocation` in `slot`; `hosts`
    are the resolved host variables, `secrets` and `build_secrets` the values by name,
    `registry_auth` the login its image is pulled with, `volume` where its data is kept."""
    return InstanceSpec(
        project=allocation.project,
        env=allocation.env,
        service=allocation.service,
        generation=allocation.generation,
        host=address,
        port=slot_port(allocation, slot),
        service_port=allocation.port,
        slot=slot,
        command=allocation.command,
        image=allocation.image,
        env_vars={**allocation.env_vars, **hosts},
        secrets=secrets,
        memory_mb=allocation.memory_mb,
        health_path=allocation.health_path,
        service_kind=allocation.service_kind,
        process_command=allocation.process_command,
        build_context=allocation.build_context,
        dockerfile=allocation.dockerfile,
        data_path=allocation.data_path,
        volume_path=str(volume) if volume is not None else None,
        build_secrets=build_secrets or {},
        artifact=allocation.artifact,
        registry_auth=registry_auth,
    )


class NotReady(MeshError):
    """An instance cannot start yet (e.g. a droplet it needs has no known address)."""


def spec_for(
    allocation: Allocation,
    slot: int,
    address: str,
    addresses: Mapping[str, str],
    secrets: Secrets,
    volume: Path | None = None,
) -> InstanceSpec:
    """The spec of `allocation` in `slot` on the droplet at `address` (its data kept at
    `volume`): `NotReady` while a droplet it names has no known address, `LookupError` for a
    secret not found."""
    hosts = resolve_hosts(allocation.hosts, addresses)
    if hosts is None:
        missing = sorted(set(allocation.hosts.values()) - set(addresses))
        raise NotReady(f"waiting for the address of {', '.join(missing)}")
    values = _values(allocation, allocation.secrets, secrets)
    build = _values(allocation, allocation.build_secrets, secrets)
    auth = _registry_auth(allocation, secrets)
    return instance_spec(allocation, address, hosts, values, slot, build, auth, volume)


def _registry_auth(allocation: Allocation, secrets: Secrets) -> RegistryAuth | None:
    """The login to the allocation's private registry, if its image comes from one."""
    if not allocation.registry or not allocation.registry_user:
        return None
    password = _values(allocation, [REGISTRY_PASSWORD], secrets)[REGISTRY_PASSWORD]
    return RegistryAuth(
        allocation.registry, allocation.registry_user, password.decode(errors="replace")
    )


def _values(allocation: Allocation, names: Iterable[str], secrets: Secrets) -> dict[str, bytes]:
    values: dict[str, bytes] = {}
    for name in names:
        value = secrets.get(name, allocation.project, allocation.env)
        if value is None:
            tried = ", ".join(lookup_names(name, allocation.project, allocation.env))
            raise LookupError(f"secret {name!r} not found (looked up {tried})")
        values[name] = value
    return values
