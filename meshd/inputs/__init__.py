"""The operator's files -> a validated `DesiredState` (runs in `meshctl` only).

`csvfile` parses `projects.csv`, `deploy_config` the deployment config, `merge` combines them,
`buildcontext` fingerprints build contexts into image tags and `notify_files` reads the
notification files. Every problem of every file is reported at once (`InputErrors`). This
module reads them from disk.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from meshd.core.errors import InputErrors, InputIssue
from meshd.core.git_hosting import MESH_HOSTED
from meshd.core.spec import DesiredState, ServiceSpec
from meshd.inputs.buildcontext import BuildContextError, context_digest, image_tag
from meshd.inputs.csvfile import ProjectRow, parse_projects_csv
from meshd.inputs.deploy_config import DeployConfig, parse_deploy_config
from meshd.inputs.envfile import parse_env_file
from meshd.inputs.merge import build_desired_state

DEFAULT_CONFIG_NAME = "deployment_config.json"
CONFIG_DIR = "${CONFIG_DIR}"


def find_deploy_config(csv_path: Path) -> Path | None:
    """`deployment_config.json` beside the CSV, the seed's layout, if there is one."""
    candidate = csv_path.parent / DEFAULT_CONFIG_NAME
    return candidate if candidate.is_file() else None


def load_desired_state(csv_path: Path, config_path: Path | None) -> DesiredState:
    """Raises `InputErrors` with every problem of both files (nothing partial is returned)."""
    issues: list[InputIssue] = []
    rows: tuple[ProjectRow, ...] = ()
    config = DeployConfig()
    try:
        rows = parse_projects_csv(_read(csv_path), str(csv_path))
    except InputErrors as err:
        issues += err.issues
    if config_path is not None:
        try:
            config = parse_deploy_config(_read(config_path), str(config_path))
            directory = config_path.resolve().parent
            config = expand_config_dir(config, directory)
            config = resolve_git_repos(config, directory)
            config = resolve_builds(config, directory, str(config_path))
            config = read_env_templates(config, directory, str(config_path))
        except InputErrors as err:
            issues += err.issues
    if issues:
        raise InputErrors(issues)
    return build_desired_state(rows, config, str(config_path))


def resolve_git_repos(config: DeployConfig, directory: Path) -> DeployConfig:
    """A `git_repo` that is a relative path (not a URL, not `host:path`) is a repository on
    this disk, relative to the deployment config like every other path in it; `"mesh"` is
    the repository the mesh hosts on master (docs/deploys.md)."""

    def resolved(url: str | None) -> str | None:
        if url is None or url == MESH_HOSTED or "://" in url or ":" in url.split("/")[0]:
            return url
        if Path(url).is_absolute():
            return url
        return str((directory / url).resolve())

    projects = {
        name: replace(project, git_repo=resolved(project.git_repo))
        for name, project in config.projects.items()
    }
    return replace(config, projects=projects)


def expand_config_dir(config: DeployConfig, directory: Path) -> DeployConfig:
    """`${CONFIG_DIR}` in a command is the directory of the deployment config, so that local
    meshes can run programs shipped beside it (the examples do)."""

    def expand(command: str | None) -> str | None:
        return command.replace(CONFIG_DIR, str(directory)) if command else command

    def service(spec: ServiceSpec) -> ServiceSpec:
        return replace(
            spec, command=expand(spec.command), process_command=expand(spec.process_command)
        )

    return _each_service(config, lambda project, spec: service(spec))


def resolve_builds(config: DeployConfig, directory: Path, config_name: str) -> DeployConfig:
    """Builds whose Dockerfile is found beside the deployment config (the repository root) get
    absolute paths and their image tag (`<project>-<service>:<content digest>`). A build that
    is not there is left to the deploy from `git_repo`, or refused without one."""
    issues: list[InputIssue] = []

    def service(project: str, spec: ServiceSpec) -> ServiceSpec:
        if spec.build_context is None:
            return spec
        context = directory / spec.build_context
        dockerfile = directory / (spec.dockerfile_path or f"{spec.build_context}/Dockerfile")
        where = f"$.projects.{project}.services.{spec.name}.build_context"
        if not dockerfile.is_file():
            if config.projects[project].git_repo is None:
                issues.append(
                    InputIssue(
                        config_name,
                        where,
                        f"no Dockerfile at {dockerfile} and the project has no git_repo to "
                        "build from; paths are relative to the deployment config",
                    )
                )
            return spec
        try:
            digest = context_digest(context, dockerfile)
        except BuildContextError as err:
            issues.append(InputIssue(config_name, where, str(err)))
            return spec
        return replace(
            spec,
            source_context=spec.build_context,
            source_dockerfile=spec.dockerfile_path,
            image=image_tag(project, spec.name, digest),
            build_context=str(context.resolve()),
            dockerfile_path=str(dockerfile.resolve()),
        )

    resolved = _each_service(config, service)
    if issues:
        raise InputErrors(issues)
    return resolved


def read_env_templates(config: DeployConfig, directory: Path, config_name: str) -> DeployConfig:
    """Each service's `env_template`, read from beside the deployment config (the repository
    root) into its variables. One that is not there is left to the deploy from `git_repo`, or
    refused without one."""
    issues: list[InputIssue] = []

    def service(project: str, spec: ServiceSpec) -> ServiceSpec:
        if spec.env_template is None:
            return spec
        path = directory / spec.env_template
        if not path.is_file():
            if config.projects[project].git_repo is None:
                where = f"$.projects.{project}.services.{spec.name}.env_template"
                issues.append(
                    InputIssue(
                        config_name,
                        where,
                        f"no file at {path} and the project has no git_repo to read it from; "
                        "paths are relative to the deployment config",
                    )
                )
            return spec
        try:
            text = _read(path).decode()
        except UnicodeDecodeError:
            issues.append(InputIssue(str(path), "", "not UTF-8 text"))
            return spec
        except InputErrors as err:
            issues.extend(err.issues)
            return spec
        try:
            return replace(spec, env=parse_env_file(text, str(path)))
        except InputErrors as err:
            issues.extend(err.issues)
            return spec

    resolved = _each_service(config, service)
    if issues:
        raise InputErrors(issues)
    return resolved


def _each_service(
    config: DeployConfig, change: Callable[[str, ServiceSpec], ServiceSpec]
) -> DeployConfig:
    projects = {
        name: replace(project, services=tuple(change(name, s) for s in project.services))
        for name, project in config.projects.items()
    }
    return replace(config, projects=projects)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise InputErrors([InputIssue(str(path), "", f"cannot read: {reason}")]) from None
