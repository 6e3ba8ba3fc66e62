"""Desired state and placement -> one allocation per service (pure; the `scheduler` role
writes them). Environments whose inputs did not change since the last pass are not built
again (`EnvMemo`), so that a pass costs what changed rather than the mesh's size beyond
comparing inputs (docs/scale.md)."""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from meshd.core.envvars import (
    instance_environment,
    instance_hosts,
    operator_environment,
    with_config,
)
from meshd.core.placement import Placement
from meshd.core.registries import login_for
from meshd.core.releases import with_release
from meshd.core.resources import EnvResources
from meshd.core.spec import DesiredState, ProjectSpec
from protocol import subjects
from protocol.envconfig import ConfigVars
from protocol.messages import Allocation
from protocol.releases import ReleaseTarget

ENVIRONMENTS = ("prod", "uat", "test")
ConfigLayers = dict[tuple[str, str | None], ConfigVars]
ReleaseTargets = dict[tuple[str, str], ReleaseTarget]
# What an allocation may change without a new generation (its instances restart with one).
_NO_RESTART = ("backup_every_s", "backup_keep_s")


@dataclasses.dataclass(frozen=True, slots=True)
class EnvInputs:
    """Everything one environment's allocations are made of: equal inputs, equal output."""

    project: ProjectSpec
    env: str
    placed: dict[str, tuple[str, ...]]  # service -> droplets
    resources: EnvResources
    restarts: tuple[int, ...]  # per service, in the project's order
    config: tuple[ConfigVars | None, ConfigVars | None]  # the project's, the environment's
    target: ReleaseTarget | None
    previous: tuple[Allocation | None, ...]  # per service
    fence: int


EnvMemo = dict[tuple[str, str], tuple[EnvInputs, dict[str, Allocation]]]


def allocations_for(
    state: DesiredState,
    placement: Placement,
    previous: Mapping[str, Allocation],
    fence: int,
    restarts: Mapping[str, int] | None = None,
    config: ConfigLayers | None = None,
    targets: ReleaseTargets | None = None,
    memo: EnvMemo | None = None,
) -> dict[str, Allocation]:
    """One allocation per service; unchanged ones are returned as they were (same generation),
    changed ones with the next generation, but for a datastore's new backup schedule alone
    (written with the same generation: nothing restarts). `restarts` counts the restart
    requests of each allocation key: one more request is one more generation. `config` holds
    the operator's variables (`meshctl config`) of projects and environments, for all but
    datastores; `targets` the release each environment runs (its services' artifacts win).
    `memo` (kept by the caller between passes) holds each environment's last inputs and
    allocations: an environment whose inputs are equal is not built again."""
    restarts = restarts or {}
    config = config or {}
    targets = targets or {}
    memo = {} if memo is None else memo
    droplets: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    for instance in placement.instances:
        droplets[instance.service_key].append(instance.droplet)
    env_resources = placement.resources_by_env()
    result: dict[str, Allocation] = {}
    for project in state.projects:
        for env in ENVIRONMENTS:
            keys = [subjects.alloc_key(project.name, env, s.name) for s in project.services]
            inputs = EnvInputs(
                project=project,
                env=env,
                placed={s.name: tuple(droplets[(project.name, env, s.name)])
                        for s in project.services},
                resources=env_resources[(project.name, env)],
                restarts=tuple(restarts.get(key, 0) for key in keys),
                config=(config.get((project.name, None)), config.get((project.name, env))),
                target=targets.get((project.name, env)),
                previous=tuple(previous.get(key) for key in keys),
                fence=fence,
            )  # fmt: skip
            known = memo.get((project.name, env))
            made = known[1] if known and known[0] == inputs else _env_allocations(inputs)
            memo[(project.name, env)] = (inputs, made)
            result.update(made)
    for gone in memo.keys() - {(p.name, env) for p in state.projects for env in ENVIRONMENTS}:
        del memo[gone]
    return result


def _env_allocations(inputs: EnvInputs) -> dict[str, Allocation]:
    project, env, resources = inputs.project, inputs.env, inputs.resources
    wide, narrow = inputs.config
    layers: ConfigLayers = {}
    if wide is not None:
        layers[(project.name, None)] = wide
    if narrow is not None:
        layers[(project.name, env)] = narrow
    placed = {name: list(droplets) for name, droplets in inputs.placed.items()}
    result: dict[str, Allocation] = {}
    for service, restart, old in zip(
        project.services, inputs.restarts, inputs.previous, strict=True
    ):
        key = subjects.alloc_key(project.name, env, service.name)
        backups = project.backups if service.kind.is_datastore else None
        login = login_for(project.registry, service.image)
        fresh = with_release(
            Allocation(
                project=project.name,
                env=env,
                service=service.name,
                generation=1,
                droplets=inputs.placed[service.name],
                port=resources.ports.get(service.name),
                spare_port=resources.spare_ports.get(service.name),
                restart=restart,
                image=service.image,
                command=service.command,
                memory_mb=service.memory_mb,
                env_vars=with_config(
                    instance_environment(
                        resources, service.name, service.kind, placed[service.name]
                    ),
                    operator_environment(
                        service.env, {} if service.kind.is_datastore else layers, project.name, env
                    ),
                ),
                hosts=instance_hosts(placed),
                health_path=service.health_path,
                secrets=service.secrets,
                fence=inputs.fence,
                service_kind=service.kind.value,
                process_command=service.process_command,
                build_context=service.build_context,
                dockerfile=service.dockerfile_path,
                data_path=service.data_path,
                build_secrets=service.build_secrets,
                registry=login.server if login else None,
                registry_user=login.username if login else None,
                backup_every_s=backups.every_s if backups else None,
                backup_keep_s=backups.keep_s if backups else None,
            ),
            inputs.target,
        )
        result[key] = _next(old, fresh)
    return result


def _next(old: Allocation | None, fresh: Allocation) -> Allocation:
    """`fresh` as it is written: `old` itself when nothing changed; with `old`'s generation
    when only its backup schedule did (the `backups` leader's business: nothing restarts);
    else with the next generation."""
    if old is None:
        return fresh
    if _same(old, fresh, *_NO_RESTART):
        return old if _same(old, fresh) else dataclasses.replace(fresh, generation=old.generation)
    return dataclasses.replace(fresh, generation=old.generation + 1)


def _same(a: Allocation, b: Allocation, *ignored: str) -> bool:
    """Equal but for the generation, the fence and the `ignored` fields."""
    blank: dict[str, Any] = {"generation": 0, "fence": 0, **dict.fromkeys(ignored)}
    return dataclasses.replace(a, **blank) == dataclasses.replace(b, **blank)
