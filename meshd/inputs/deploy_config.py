"""Reading `deployment_config.json`: per project the services to run and how.

The keys each level allows, their types and defaults are the table in `config_keys` (the
seed's keys plus what the mesh needs). A project's services are the four defaults merged with
what it lists; a default is dropped with `"enabled": false`. Problems are reported all at
once with their JSON path.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from meshd.core.errors import InputErrors, InputIssue
from meshd.core.spec import (
    DEFAULT_HEALTH_PATH,
    DEFAULT_RELEASE_HEALTH_TIMEOUT_S,
    DEFAULT_SERVICES,
    DEFAULT_WORKER_MEMORY_MB,
    TEMPLATE_SECRETS,
    BackupSchedule,
    RegistryLogin,
    ReleaseCommand,
    ServiceKind,
    ServiceSpec,
)
from meshd.inputs.acme_config import acme_settings, default_acme
from meshd.inputs.backup_settings import backup_schedule
from meshd.inputs.config_keys import Level, names_at
from meshd.inputs.deploy_branches import default_deploy, deploy_branches, key_path
from meshd.inputs.logs_config import logs_settings
from meshd.inputs.project_domains import project_domains, unique_domains
from meshd.inputs.registry_login import registry_login
from meshd.inputs.release_settings import health_timeout, release_command, release_versioning
from meshd.inputs.vault_config import vault_settings

PLATFORMS = ("docker", "podman", "process")
MEMORY_RANGE = (16, 65536)
SERVICE_NAME = re.compile(r"[a-z][a-z0-9_-]*\Z")
SECRET_NAME = re.compile(r"[a-z][a-z0-9_]*\Z")
TOP_KEYS = names_at(Level.TOP)
PROJECT_KEYS = names_at(Level.PROJECT)
SERVICE_KEYS = names_at(Level.SERVICE)
json_path = key_path  # `$.projects.web` or `$.projects['my app']`
STRING_KEYS = (
    "image",
    "command",
    "process_command",
    "dockerfile_path",
    "build_context",
    "env_template",
    "data_path",
)


@dataclass(frozen=True, slots=True)
class ProjectConfig:
    services: tuple[ServiceSpec, ...]
    git_repo: str | None = None
    domains: dict[str, tuple[str, ...]] = field(default_factory=dict)
    deploy: dict[str, str] = field(default_factory=default_deploy)  # env -> branch pattern
    versioning: dict[str, Any] = field(default_factory=dict)  # meshd.core.versions
    health_timeout_s: int = DEFAULT_RELEASE_HEALTH_TIMEOUT_S
    registry: RegistryLogin | None = None  # where its images are pulled with a login
    release_command: ReleaseCommand | None = None  # runs once before each release rolls out
    backups: BackupSchedule | None = None  # None: the seed's backup schedule


@dataclass(frozen=True, slots=True)
class DeployConfig:
    platform: str = "docker"
    projects: dict[str, ProjectConfig] = field(default_factory=dict)
    vault: dict[str, Any] = field(default_factory=dict)  # plugins.secrets.vault.VaultSettings
    logs: dict[str, Any] = field(default_factory=dict)  # plugins.logsinks.OpenSearchSettings
    acme: dict[str, Any] = field(default_factory=default_acme)  # meshd.inputs.acme_config


def default_services() -> tuple[ServiceSpec, ...]:
    return tuple(_default_service(name) for name in DEFAULT_SERVICES)


def parse_deploy_config(data: bytes, filename: str) -> DeployConfig:
    """A validated deployment config; raises `InputErrors` listing every problem found."""
    checker = _Checker(filename)
    document = checker.load(data)
    config = checker.config(document)
    if checker.issues:
        raise InputErrors(checker.issues)
    return config


def _default_service(name: str) -> ServiceSpec:
    kind, memory = DEFAULT_SERVICES[name]
    health = DEFAULT_HEALTH_PATH if kind is ServiceKind.WEB else None
    return _with_template_secret(
        ServiceSpec(name=name, kind=kind, memory_mb=memory, health_path=health)
    )


def _with_template_secret(service: ServiceSpec) -> ServiceSpec:
    """A datastore run from its built-in template reads its password from a secret; it is
    listed unless the service lists its secrets itself."""
    if not service.uses_template or service.secrets:
        return service
    return replace(service, secrets=(TEMPLATE_SECRETS[service.kind],))


def _defaults(name: str) -> tuple[ServiceKind, int]:
    return DEFAULT_SERVICES.get(name, (ServiceKind.WORKER, DEFAULT_WORKER_MEMORY_MB))


def _shown(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


class _Checker:
    """Walks the document, collecting issues instead of stopping at the first."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.issues: list[InputIssue] = []

    def fail(self, path: str, message: str) -> None:
        self.issues.append(InputIssue(self.filename, path, message))

    def load(self, data: bytes) -> Any:
        duplicates: list[str] = []

        def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
            seen: dict[str, Any] = {}
            for key, value in pairs:
                if key in seen:
                    duplicates.append(key)
                seen[key] = value
            return seen

        try:
            document = json.loads(data.decode("utf-8-sig"), object_pairs_hook=no_duplicates)
        except UnicodeDecodeError:
            self.fail("1:1", "not valid UTF-8 text; save the file as UTF-8")
            return None
        except json.JSONDecodeError as err:
            self.fail(f"{err.lineno}:{err.colno}", f"not valid JSON: {err.msg}")
            return None
        except (ValueError, RecursionError) as err:  # e.g. integers of thousands of digits
            reason = "nested too deeply" if isinstance(err, RecursionError) else str(err)
            self.fail("$", f"not valid JSON: {reason}")
            return None
        for key in duplicates:
            self.fail("$", f"key {key!r} appears twice in one object; keep one")
        return document

    def obj(
        self, value: Any, path: str, allowed: tuple[str, ...] | None = None
    ) -> dict[str, Any] | None:
        """`value` if it is an object whose keys are all `allowed` (any keys when None)."""
        if not isinstance(value, dict):
            self.fail(path, f"expected an object, got {_shown(value)}")
            return None
        for key in value:
            if allowed is not None and key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(allowed)}"
                self.fail(json_path(path, key), f"unknown key {key!r}; {hint}")
        return value

    def text(self, value: Any, path: str, check: Callable[[str], str | None] | None = None) -> str:
        if not isinstance(value, str) or not value.strip():
            self.fail(path, f"expected a non-empty string, got {_shown(value)}")
            return ""
        problem = check(value) if check else None
        if problem:
            self.fail(path, problem)
        return value

    def config(self, document: Any) -> DeployConfig:
        top = self.obj(document, "$", TOP_KEYS) if document is not None else None
        if top is None:
            return DeployConfig()
        platform = top.get("deployment_platform", "docker")
        if platform not in PLATFORMS:
            self.fail(
                "$.deployment_platform",
                f"{_shown(platform)} is not supported; expected one of {', '.join(PLATFORMS)}",
            )
        projects = self.obj(top.get("projects", {}), "$.projects")
        parsed = {
            name: self.project(value, json_path("$.projects", name))
            for name, value in (projects or {}).items()
        }
        unique_domains(self, {name: config.domains for name, config in parsed.items()})
        vault = vault_settings(self, top["vault"], "$.vault") if "vault" in top else {}
        logs = logs_settings(self, top["logs"], "$.logs") if "logs" in top else {}
        acme = acme_settings(self, top.get("acme", {}), "$.acme", self.filename)
        return DeployConfig(
            platform=str(platform), projects=parsed, vault=vault, logs=logs, acme=acme
        )

    def project(self, value: Any, path: str) -> ProjectConfig:
        project = self.obj(value, path, PROJECT_KEYS)
        if project is None:
            return ProjectConfig(services=default_services())
        git_repo = project.get("git_repo")
        if git_repo is not None:
            self.text(git_repo, f"{path}.git_repo")
        versioning = release_versioning(self, project, path)
        services = self.services(project.get("services", {}), f"{path}.services")
        domains = project_domains(self, project.get("domains", {}), f"{path}.domains")
        deploy = deploy_branches(self, project, path)
        timeout = health_timeout(self, project, path)
        registry = registry_login(self, project, path)
        found = ProjectConfig(services, git_repo, domains, deploy, versioning, timeout, registry)
        return replace(
            found,
            release_command=release_command(self, project, path, services),
            backups=backup_schedule(self, project, path),
        )

    def services(self, value: Any, path: str) -> tuple[ServiceSpec, ...]:
        listed = self.obj(value, path)
        merged = {name: _default_service(name) for name in DEFAULT_SERVICES}
        for name, body in (listed or {}).items():
            service_path = json_path(path, name)
            if not SERVICE_NAME.match(name) or len(name) > 30:
                self.fail(
                    service_path,
                    f"{name!r} is not a valid service name; expected lowercase letters, "
                    "digits, '_' and '-', starting with a letter, at most 30 characters",
                )
                continue
            spec = self.service(name, body, service_path)
            if spec is None:
                merged.pop(name, None)
            else:
                merged[name] = spec
        return tuple(merged.values())

    def service(self, name: str, value: Any, path: str) -> ServiceSpec | None:
        body = self.obj(value, path, SERVICE_KEYS)
        if body is None:
            return None
        enabled = body.get("enabled", True)
        if not isinstance(enabled, bool):
            self.fail(f"{path}.enabled", f"expected true or false, got {_shown(enabled)}")
        kind = self.kind(name, body.get("type"), f"{path}.type")
        memory = self.memory(body.get("memory_mb", _defaults(name)[1]), f"{path}.memory_mb")
        health = self.health_path(kind, body, path)
        strings = self.strings(body, path)
        secrets = self.secrets(body.get("secrets", []), f"{path}.secrets")
        build_secrets = self.build_secrets(body, strings, path)
        if enabled is False:
            return None
        spec = ServiceSpec(
            name=name,
            kind=kind,
            memory_mb=memory,
            health_path=health,
            image=strings.get("image"),
            command=strings.get("command"),
            dockerfile_path=strings.get("dockerfile_path"),
            build_context=strings.get("build_context"),
            secrets=secrets,
            build_secrets=build_secrets,
            process_command=strings.get("process_command"),
            data_path=strings.get("data_path"),
            env_template=strings.get("env_template"),
        )
        return spec if "secrets" in body else _with_template_secret(spec)

    def memory(self, memory: Any, path: str) -> int:
        low, high = MEMORY_RANGE
        if isinstance(memory, bool) or not isinstance(memory, int) or not low <= memory <= high:
            self.fail(
                path, f"expected a whole number of MB from {low} to {high}, got {_shown(memory)}"
            )
            return low
        return memory

    def strings(self, body: dict[str, Any], path: str) -> dict[str, str]:
        """The service's string settings, each checked, and the rules between them."""
        strings = {
            key: self.text(body[key], f"{path}.{key}", _no_space if key == "image" else None)
            for key in STRING_KEYS
            if key in body
        }
        if "dockerfile_path" in strings and "build_context" not in strings:
            self.fail(
                f"{path}.dockerfile_path",
                "a Dockerfile needs a build_context (the directory it is built in)",
            )
        if "image" in strings and "build_context" in strings:
            self.fail(
                f"{path}.image",
                "give either an image to run or a build_context to build one, not both",
            )
        data_path = strings.get("data_path")
        if data_path and (not data_path.startswith("/") or re.search(r"\s", data_path)):
            self.fail(
                f"{path}.data_path",
                f"{_shown(data_path)} is not a path in the container; expected an absolute "
                "path like '/var/lib/data'",
            )
        for key in ("dockerfile_path", "build_context", "env_template"):
            relative = strings.get(key, "")
            if relative.startswith("/") or ".." in relative.split("/"):
                self.fail(
                    f"{path}.{key}",
                    f"{_shown(relative)} must be a path inside the repository (relative, no '..')",
                )
        return strings

    def kind(self, name: str, declared: Any, path: str) -> ServiceKind:
        expected = _defaults(name)[0]
        if declared is None or declared == expected.value:
            return expected
        if name in DEFAULT_SERVICES:
            self.fail(path, f"{name} is always of type {expected.value!r}, got {_shown(declared)}")
        else:
            self.fail(
                path,
                f"{_shown(declared)} is not possible for {name!r}: only backend and frontend are "
                "web services and only database and redis get their ports; other services "
                "must be of type 'worker'",
            )
        return expected

    def health_path(self, kind: ServiceKind, body: dict[str, Any], path: str) -> str | None:
        default = DEFAULT_HEALTH_PATH if kind is ServiceKind.WEB else None
        if "health_path" not in body:
            return default
        if kind is ServiceKind.WORKER:
            self.fail(f"{path}.health_path", "workers have no port to probe; remove health_path")
            return None
        return self.text(body["health_path"], f"{path}.health_path", _url_path) or default

    def secrets(self, value: Any, path: str) -> tuple[str, ...]:
        if not isinstance(value, list):
            self.fail(path, f"expected a list of secret names, got {_shown(value)}")
            return ()
        names: list[str] = []
        for i, item in enumerate(value):
            if not isinstance(item, str) or not SECRET_NAME.match(item):
                self.fail(
                    f"{path}[{i}]",
                    f"{_shown(item)} is not a secret name; expected lowercase letters, digits "
                    "and '_', starting with a letter (like 'db_password')",
                )
            elif item in names:
                self.fail(f"{path}[{i}]", f"secret {item!r} is listed twice")
            else:
                names.append(item)
        return tuple(names)

    def build_secrets(
        self, body: dict[str, Any], strings: dict[str, str], path: str
    ) -> tuple[str, ...]:
        if "build_secrets" not in body:
            return ()
        names = self.secrets(body["build_secrets"], f"{path}.build_secrets")
        if names and "build_context" not in strings:
            self.fail(
                f"{path}.build_secrets",
                "build secrets are for building an image; give the service a build_context",
            )
        return names


def _no_space(value: str) -> str | None:
    return "must not contain spaces" if re.search(r"\s", value) else None


def _url_path(value: str) -> str | None:
    if not value.startswith("/") or re.search(r"\s", value):
        return f"{_shown(value)} is not a URL path; expected something like '/health'"
    return None
