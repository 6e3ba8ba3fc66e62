"""What a container of one instance looks like: pure values, shared by the `docker` runtime
(which creates it) and `meshctl compose` (which prints the compose file equivalent to it).

Names: container `meshd-<mesh>-<droplet>-<project>-<env>-<service>`, network
`meshd-<mesh>-<droplet>-<project>-<env>` (one per project-environment on each droplet), volume
like the container. Every object carries the `meshd.*` labels, so that a runtime only ever
touches its own mesh's and droplet's objects on a shared engine.

A datastore that names nothing to run of its own uses a built-in template (the seed's
PostgreSQL and Redis): image, port inside the container, data volume and password file.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from plugins.runtimes import InstanceSpec, builtin_datastore, secret_file_variables
from protocol import subjects

LABEL_MESH = "meshd.mesh"
LABEL_DROPLET = "meshd.local.droplet"
LABEL_PROJECT = "meshd.project"
LABEL_ENV = "meshd.env"
LABEL_SERVICE = "meshd.service"
LABEL_GENERATION = "meshd.generation"
LABEL_SLOT = "meshd.slot"
SECRETS_TARGET = "/run/secrets"
RESTART_POLICY = "unless-stopped"
SECOND_NS = 1_000_000_000


class ContainerSpecError(ValueError):
    """The instance cannot become a container (no image, a build that is not here, ...)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Template:
    """A built-in datastore: what the deployment config need not say."""

    image: str
    container_port: int
    data_path: str
    secret: str  # the password's secret name
    secret_uid: int  # the image's server user, who must read the secret files
    environment: Callable[[Mapping[str, str]], dict[str, str]]
    command: tuple[str, ...] | None = None
    derived_files: Callable[[Mapping[str, bytes]], dict[str, bytes]] | None = None


def _postgres_environment(env: Mapping[str, str]) -> dict[str, str]:
    return {
        "POSTGRES_DB": env.get("DB_NAME", ""),
        "POSTGRES_USER": env.get("DB_USER", ""),
        "POSTGRES_PASSWORD_FILE": f"{SECRETS_TARGET}/db_password",
    }


def _redis_conf(secrets: Mapping[str, bytes]) -> dict[str, bytes]:
    # Given as a config file, the password never appears in the server's command line.
    password = secrets["redis_password"].strip()
    return {"redis.conf": b'requirepass "' + password.replace(b'"', b'\\"') + b'"\n'}


TEMPLATES: dict[str, Template] = {
    "database": Template(
        image="postgres:16-alpine",
        container_port=5432,
        data_path="/var/lib/postgresql/data",
        secret="db_password",
        secret_uid=70,  # postgres in the alpine image
        environment=_postgres_environment,
    ),
    "redis": Template(
        image="redis:7-alpine",
        container_port=6379,
        data_path="/data",
        secret="redis_password",
        secret_uid=999,  # redis in the alpine image
        environment=lambda env: {},
        command=("redis-server", f"{SECRETS_TARGET}/redis.conf", "--appendonly", "yes"),
        derived_files=_redis_conf,
    ),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Build:
    """Where the image is built from; `secrets` names what the build alone reads (`docker
    build --secret`), never mounted into the container."""

    context: str
    dockerfile: str
    secrets: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ContainerSpec:
    """One instance's container. Secret *names* only: the values never get here."""

    name: str
    image: str
    build: Build | None
    command: tuple[str, ...] | None
    environment: dict[str, str]
    labels: dict[str, str]
    ports: dict[str, tuple[str, int]]  # "<port>/tcp" inside -> (droplet address, port)
    network: str
    alias: str
    volume: str | None
    data_path: str | None
    secrets: tuple[str, ...]  # files at /run/secrets/<name>
    secret_uid: int | None  # owner of the secret files; None: the image's user
    memory_mb: int
    healthcheck: dict[str, object] | None
    restart_policy: str = RESTART_POLICY


def container_name(mesh: str, droplet: str, key: str) -> str:
    """`meshd-<mesh>-<droplet>-<project>-<env>-<service>`, `.1` appended in the second slot
    (a dot, which no service name has, so that no slot can take another service's name)."""
    project, env, service, slot = subjects.parse_instance_key(key)
    return f"meshd-{mesh}-{droplet}-{project}-{env}-{service}" + (".1" if slot else "")


def instance_key_of(labels: Mapping[str, str]) -> str:
    """The instance key a container's labels give (no slot label: the first slot)."""
    return subjects.instance_key(
        labels[LABEL_PROJECT],
        labels[LABEL_ENV],
        labels[LABEL_SERVICE],
        int(labels.get(LABEL_SLOT) or 0),
    )


def network_name(mesh: str, droplet: str, project: str, env: str) -> str:
    return f"meshd-{mesh}-{droplet}-{project}-{env}"


def owner_labels(mesh: str, droplet: str | None = None) -> dict[str, str]:
    labels = {LABEL_MESH: mesh}
    if droplet is not None:
        labels[LABEL_DROPLET] = droplet
    return labels


def label_filter(labels: Mapping[str, str]) -> list[str]:
    """Docker's `label` filter; several labels must all match."""
    return [f"{k}={v}" for k, v in labels.items()]


def container_spec(spec: InstanceSpec, mesh: str, droplet: str) -> ContainerSpec:
    """The container for `spec` on `droplet`; raises ContainerSpecError if there is none."""
    template = TEMPLATES.get(spec.service_kind) if _wants_template(spec) else None
    image, build = _image(spec, template)
    environment = dict(spec.env_vars)
    try:
        command = tuple(shlex.split(spec.command)) if spec.command else None
    except ValueError as err:
        raise ContainerSpecError(f"cannot parse command {spec.command!r}: {err}") from None
    secrets = tuple(sorted(spec.secrets))
    data_path = spec.data_path
    secret_uid: int | None = None
    ports: dict[str, tuple[str, int]] = {}
    if template is not None:
        if template.secret not in spec.secrets:
            raise ContainerSpecError(
                f"the built-in {spec.service_kind} template ({template.image}) reads its "
                f"password from the secret {template.secret!r}; list it in the service's secrets"
            )
        environment.update(template.environment(spec.env_vars))
        command = command or template.command
        derived = template.derived_files(spec.secrets) if template.derived_files else {}
        secrets = tuple(sorted({*secrets, *derived}))
        data_path = data_path or template.data_path
        secret_uid = template.secret_uid
    environment.update(secret_file_variables(spec.secrets, SECRETS_TARGET))
    if spec.port is not None:
        ports[f"{_inside_port(spec, template)}/tcp"] = (spec.host, spec.port)
    labels = {
        **owner_labels(mesh, droplet),
        LABEL_PROJECT: spec.project,
        LABEL_ENV: spec.env,
        LABEL_SERVICE: spec.service,
        LABEL_GENERATION: str(spec.generation),
    }
    if spec.slot:
        labels[LABEL_SLOT] = str(spec.slot)
    name = container_name(mesh, droplet, spec.key)
    return ContainerSpec(
        name=name,
        image=image,
        build=build,
        command=command,
        environment=environment,
        labels=labels,
        ports=ports,
        network=network_name(mesh, droplet, spec.project, spec.env),
        alias=spec.service,
        volume=name if data_path else None,
        data_path=data_path,
        secrets=secrets,
        secret_uid=secret_uid,
        memory_mb=spec.memory_mb,
        healthcheck=_healthcheck(spec),
    )


def secret_files(spec: InstanceSpec) -> dict[str, bytes]:
    """Every file to mount under /run/secrets: the secrets and what a template derives."""
    template = TEMPLATES.get(spec.service_kind) if _wants_template(spec) else None
    if template is None or template.derived_files is None or template.secret not in spec.secrets:
        return dict(spec.secrets)
    return {**spec.secrets, **template.derived_files(spec.secrets)}


def _inside_port(spec: InstanceSpec, template: Template | None) -> int | None:
    """Where the service listens inside its container: the same in both slots."""
    if template is not None:
        return template.container_port
    return spec.service_port or spec.port


def _wants_template(spec: InstanceSpec) -> bool:
    return builtin_datastore("docker", spec) is not None


def _image(spec: InstanceSpec, template: Template | None) -> tuple[str, Build | None]:
    if template is not None:
        return template.image, None
    if spec.build_context is not None:
        if not spec.build_context.startswith("/") or spec.image is None:
            raise ContainerSpecError(
                f"waiting for a deploy: the build context {spec.build_context!r} comes from "
                "the project's git repository"
            )
        return spec.image, Build(
            context=spec.build_context,
            dockerfile=spec.dockerfile or "",
            secrets=tuple(sorted(spec.build_secrets)),
        )
    if spec.image is None:
        raise ContainerSpecError("no image to run; give the service an image or a build_context")
    return spec.image, None


def _healthcheck(spec: InstanceSpec) -> dict[str, object] | None:
    """Docker's own view of a web service's health, shown by `docker ps`; the agent's probe
    from outside the container is what decides restarts."""
    port = _inside_port(spec, None)
    if spec.service_kind != "web" or port is None or not spec.health_path:
        return None
    url = f"http://127.0.0.1:{port}{spec.health_path}"
    return {
        "test": ["CMD-SHELL", f"wget -q -O /dev/null {url} || exit 1"],
        "interval": 10 * SECOND_NS,
        "timeout": 3 * SECOND_NS,
        "retries": 3,
        "start_period": 10 * SECOND_NS,
    }


def secret_owner(user: str, template_uid: int | None) -> int:
    """Owner of the secret files: the template's server user, else the image's numeric user,
    else root (an image whose USER is a name should use its number to read its secrets)."""
    if template_uid is not None:
        return template_uid
    head = user.split(":", 1)[0]
    return int(head) if head.isdigit() else 0
