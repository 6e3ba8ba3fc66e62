"""The desired state: the values an operator publishes, after validation.

Plain frozen values with a lossless plain-data form (`to_data` / `from_data`) so that the
same state travels through KV and is compared across publishes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from meshd.core.backup_policy import DAY_S, HOUR_S

ENVIRONMENTS: tuple[str, ...] = ("prod", "uat", "test")
MASTER = "master"


class ServiceKind(StrEnum):
    WEB = "web"  # backend, frontend: load balanced, get SERVICE_PORT
    DATABASE = "database"
    REDIS = "redis"
    WORKER = "worker"  # no port, not load balanced

    @property
    def is_datastore(self) -> bool:
        """Stateful, one instance: never rolled for a setting the operator changes."""
        return self in (ServiceKind.DATABASE, ServiceKind.REDIS)


# The seed's default services of every project, with memory reservations small enough that
# all three environments of one project fit on a $6 droplet (1024 MB minus 256 MB system).
DEFAULT_SERVICES: dict[str, tuple[ServiceKind, int]] = {
    "backend": (ServiceKind.WEB, 64),
    "frontend": (ServiceKind.WEB, 32),
    "database": (ServiceKind.DATABASE, 96),
    "redis": (ServiceKind.REDIS, 32),
}
DEFAULT_WORKER_MEMORY_MB = 32
# The secret each built-in datastore template reads its password from.
TEMPLATE_SECRETS: dict[ServiceKind, str] = {
    ServiceKind.DATABASE: "db_password",
    ServiceKind.REDIS: "redis_password",
}
DEFAULT_HEALTH_PATH = "/health"
DEFAULT_RELEASE_HEALTH_TIMEOUT_S = 60  # a release not healthy by then fails (the old serves)
DEFAULT_DEPLOY = {"uat": "main", "test": "*"}  # branch -> environment (meshd.core.deploy_refs)
DEFAULT_RELEASE_SERVICE = "backend"  # whose artifact, environment and secrets it runs with
DEFAULT_RELEASE_COMMAND_TIMEOUT_S = 300  # a release command still running then is killed


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    name: str
    kind: ServiceKind
    memory_mb: int
    health_path: str | None = None
    image: str | None = None
    command: str | None = None
    dockerfile_path: str | None = None
    build_context: str | None = None
    secrets: tuple[str, ...] = ()
    process_command: str | None = None  # what the process runtime runs instead of the image
    data_path: str | None = None  # where a named volume is mounted in the container
    build_secrets: tuple[str, ...] = ()  # read by the image's build only (docs/secrets.md)
    env_template: str | None = None  # the seed's `.env` file, as the config names it
    env: dict[str, str] = field(default_factory=dict)  # ... its variables, read at publish
    # `build_context` and `dockerfile_path` as the config writes them (relative to the
    # repository root): where a deploy builds from git when the paths above point at a disk.
    source_context: str | None = None
    source_dockerfile: str | None = None

    @property
    def repository_context(self) -> str | None:
        """Where a deploy finds this service's build context in the project's repository."""
        return self.source_context or self.build_context

    @property
    def repository_dockerfile(self) -> str | None:
        """... and its Dockerfile (None: `Dockerfile` in the context), if it has one."""
        return self.source_dockerfile if self.source_context else self.dockerfile_path

    @property
    def uses_template(self) -> bool:
        """Whether the docker runtime runs this service from its built-in template (the seed's
        PostgreSQL and Redis): a datastore that names nothing to run of its own."""
        own = (self.image, self.build_context, self.command, self.process_command)
        return self.kind in TEMPLATE_SECRETS and not any(own)

    def to_data(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind.value,
            "memory_mb": self.memory_mb,
            "health_path": self.health_path,
            "image": self.image,
            "command": self.command,
            "dockerfile_path": self.dockerfile_path,
            "build_context": self.build_context,
            "secrets": list(self.secrets),
            "process_command": self.process_command,
            "data_path": self.data_path,
            "build_secrets": list(self.build_secrets),
            "env_template": self.env_template,
            "env": dict(self.env),
            "source_context": self.source_context,
            "source_dockerfile": self.source_dockerfile,
        }

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> ServiceSpec:
        return cls(
            name=data["name"],
            kind=ServiceKind(data["kind"]),
            memory_mb=int(data["memory_mb"]),
            health_path=data.get("health_path"),
            image=data.get("image"),
            command=data.get("command"),
            dockerfile_path=data.get("dockerfile_path"),
            build_context=data.get("build_context"),
            secrets=tuple(data.get("secrets", ())),
            process_command=data.get("process_command"),
            data_path=data.get("data_path"),
            build_secrets=tuple(data.get("build_secrets", ())),
            env_template=data.get("env_template"),
            env=dict(data.get("env") or {}),
            source_context=data.get("source_context"),
            source_dockerfile=data.get("source_dockerfile"),
        )


@dataclass(frozen=True, slots=True)
class RegistryLogin:
    """The private registry a project's images come from (its `registry` key): `server`
    (`host[:port]`) and `username`; the password is the project's secret `registry_password`
    (docs/secrets.md, "Private registries"), never part of the spec."""

    server: str
    username: str

    def to_data(self) -> dict[str, Any]:
        return {"server": self.server, "username": self.username}

    @classmethod
    def from_data(cls, data: dict[str, Any] | None) -> RegistryLogin | None:
        return cls(server=data["server"], username=data["username"]) if data else None


@dataclass(frozen=True, slots=True)
class ReleaseCommand:
    """What runs once before each release of a project rolls out (its `release_command`:
    migrations): `command`, with the release's artifact and the environment and secrets of
    `service` (`release_service`), killed after `timeout_s` seconds; a failure fails the
    release (docs/deploys.md, "Release command")."""

    command: str
    service: str = DEFAULT_RELEASE_SERVICE
    timeout_s: int = DEFAULT_RELEASE_COMMAND_TIMEOUT_S

    def to_data(self) -> dict[str, Any]:
        return {"command": self.command, "service": self.service, "timeout_s": self.timeout_s}

    @classmethod
    def from_data(cls, data: dict[str, Any] | None) -> ReleaseCommand | None:
        if not data:
            return None
        return cls(data["command"], data["service"], int(data["timeout_s"]))


@dataclass(frozen=True, slots=True)
class BackupSchedule:
    """How often a project's datastores are backed up and how long their backups are kept
    (its `backups` key); None for either: the seed's (`meshd.core.backup_policy.SCHEDULES`:
    every 6 hours, kept 14 days)."""

    every_hours: int | None = None
    keep_days: int | None = None

    @property
    def every_s(self) -> float | None:
        return self.every_hours * HOUR_S if self.every_hours is not None else None

    @property
    def keep_s(self) -> float | None:
        return self.keep_days * DAY_S if self.keep_days is not None else None

    def to_data(self) -> dict[str, Any]:
        return {"every_hours": self.every_hours, "keep_days": self.keep_days}

    @classmethod
    def from_data(cls, data: dict[str, Any] | None) -> BackupSchedule | None:
        if not data:
            return None
        every, keep = data.get("every_hours"), data.get("keep_days")
        return cls(
            int(every) if every is not None else None, int(keep) if keep is not None else None
        )


@dataclass(frozen=True, slots=True)
class ProjectSpec:
    name: str
    servers: int
    master_size: str
    web_size: str
    services: tuple[ServiceSpec, ...]
    git_repo: str | None = None
    domains: dict[str, tuple[str, ...]] = field(default_factory=dict)
    deploy: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_DEPLOY))
    versioning: dict[str, Any] = field(default_factory=dict)
    health_timeout_s: int = DEFAULT_RELEASE_HEALTH_TIMEOUT_S
    registry: RegistryLogin | None = None
    release_command: ReleaseCommand | None = None
    backups: BackupSchedule | None = None  # None: the seed's schedule

    @property
    def dedicated_droplets(self) -> tuple[str, ...]:
        """Droplets of this project alone: `<project>-web1` .. `<project>-web<N-1>`."""
        return tuple(f"{self.name}-web{i}" for i in range(1, self.servers))

    def to_data(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "servers": self.servers,
            "master_size": self.master_size,
            "web_size": self.web_size,
            "services": [s.to_data() for s in self.services],
            "git_repo": self.git_repo,
            "domains": {env: list(names) for env, names in self.domains.items()},
            "deploy": dict(self.deploy),
            "versioning": dict(self.versioning),
            "health_timeout_s": self.health_timeout_s,
            "registry": self.registry.to_data() if self.registry else None,
            "release_command": self.release_command.to_data() if self.release_command else None,
            "backups": self.backups.to_data() if self.backups else None,
        }

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> ProjectSpec:
        return cls(
            name=data["name"],
            servers=int(data["servers"]),
            master_size=data["master_size"],
            web_size=data["web_size"],
            services=tuple(ServiceSpec.from_data(s) for s in data["services"]),
            git_repo=data.get("git_repo"),
            domains={env: tuple(names) for env, names in data.get("domains", {}).items()},
            deploy=dict(data.get("deploy", DEFAULT_DEPLOY)),
            versioning=dict(data.get("versioning") or {}),
            health_timeout_s=int(data.get("health_timeout_s", DEFAULT_RELEASE_HEALTH_TIMEOUT_S)),
            registry=RegistryLogin.from_data(data.get("registry")),
            release_command=ReleaseCommand.from_data(data.get("release_command")),
            backups=BackupSchedule.from_data(data.get("backups")),
        )


@dataclass(frozen=True, slots=True)
class DesiredState:
    projects: tuple[ProjectSpec, ...]
    platform: str = "docker"
    notify: dict[str, Any] = field(
        default_factory=dict
    )  # meshd.core.notify_settings.NotifySettings
    vault: dict[str, Any] = field(default_factory=dict)  # plugins.secrets.vault.VaultSettings
    logs: dict[str, Any] = field(default_factory=dict)  # where logs are forwarded (docs/logs.md)
    acme: dict[str, Any] = field(default_factory=dict)  # where certificates come from (docs/tls.md)

    def project(self, name: str) -> ProjectSpec:
        for project in self.projects:
            if project.name == name:
                return project
        raise KeyError(name)

    def to_data(self) -> dict[str, Any]:
        return {
            "platform": self.platform,
            "projects": [p.to_data() for p in self.projects],
            "notify": dict(self.notify),
            "vault": dict(self.vault),
            "logs": dict(self.logs),
            "acme": dict(self.acme),
        }

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> DesiredState:
        return cls(
            projects=tuple(ProjectSpec.from_data(p) for p in data["projects"]),
            platform=data.get("platform", "docker"),
            notify=dict(data.get("notify") or {}),
            vault=dict(data.get("vault") or {}),
            logs=dict(data.get("logs") or {}),
            acme=dict(data.get("acme") or {}),
        )
