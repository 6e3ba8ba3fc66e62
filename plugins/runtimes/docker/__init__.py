"""The `docker` runtime: each instance as a container of the droplet's Docker Engine.

Containers are found again by their labels (`containers`), so a restarted agent adopts the
running ones untouched, and objects of other meshes or droplets on the same engine are never
listed, changed or removed. Secrets are files under `<data_dir>/secrets/<container>/`, mode
0400, owned by the image's user, bind-mounted read-only at `/run/secrets/<name>`; they never
reach the container's environment. Images come from the engine, from a build of the
instance's build context (once per tag) or, where allowed, a pull (`images`); a build with
build secrets runs `docker build --secret` (`buildkit`). The SDK blocks: every call runs in the
runtime's own threads (`engine`).

Modules: `engine` (threads, die events), `images`, `artifacts` (images saved to and loaded
from files, for deploys), `networks`, `containers` (pure container specs), `compose`, `admin`
(what the command line may ask of an engine without a runtime) and `logfiles`. An instance
whose spec names an artifact runs its loaded image, never pulled.

Config (`RuntimeContext.config`):
- `docker_host`: default `DOCKER_HOST` or the local socket (podman's works too).
- `pull`: fetch missing images from a registry (default true).
- `docker_cli`: the docker command that builds images with build secrets (default `docker`).
- `init`: a tiny init as PID 1 that passes signals on, so that a program which ignores
  SIGTERM as PID 1 still stops at once (default true; podman needs `catatonit` for it).
- `timeout`: seconds per engine request (default 120).
- `ulimits`: name -> limit for every container, e.g. `{"nofile": 20000, "nproc": 32768}`
  for rootful podman, whose defaults exceed the host's hard limits.
"""

from __future__ import annotations

import builtins
import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import docker
import docker.errors
from docker.types import Mount, Ulimit

from plugins.fs import remove_tree, write_secret_files
from plugins.runtimes import (
    InstanceInfo,
    InstancePhase,
    InstanceSpec,
    InstanceStartError,
    InstanceStopError,
    LogFile,
    Runtime,
    RuntimeConfigError,
    RuntimeContext,
    RuntimeUnavailable,
)
from plugins.runtimes.docker.artifacts import DockerArtifacts
from plugins.runtimes.docker.buildkit import SecretBuilds
from plugins.runtimes.docker.containers import (
    LABEL_DROPLET,
    LABEL_ENV,
    LABEL_GENERATION,
    LABEL_MESH,
    LABEL_PROJECT,
    LABEL_SERVICE,
    SECRETS_TARGET,
    ContainerSpec,
    ContainerSpecError,
    container_spec,
    instance_key_of,
    label_filter,
    owner_labels,
    secret_files,
    secret_owner,
)
from plugins.runtimes.docker.engine import DETAIL_CHARS, Engine, short
from plugins.runtimes.docker.images import Images
from plugins.runtimes.docker.logfiles import LogPaths
from plugins.runtimes.docker.networks import Networks
from plugins.runtimes.docker.once import OneOffs
from protocol import subjects
from protocol.errors import ProtocolError

Raw = dict[str, Any]  # a container as the engine lists it
Raws = list[Raw]  # spelled once: `list` is also a method of the runtime
Mounts = list[Mount]
RUNNING_STATES = frozenset({"running", "restarting", "paused"})
LOG_TAIL_LINES = 5
SETTINGS = frozenset({"docker_host", "docker_cli", "pull", "init", "timeout", "ulimits"})


class DockerRuntime(OneOffs):  # `run_once`: one-off containers (`once`)
    name = "docker"

    def __init__(self, ctx: RuntimeContext) -> None:
        self._mesh = ctx.mesh
        self._droplet = ctx.droplet
        self._secrets_root = ctx.data_dir / "secrets"
        self._log = ctx.logger
        self._init = bool(ctx.config.get("init", True))
        self._ulimits = [
            Ulimit(name=name, soft=int(limit), hard=int(limit))
            for name, limit in dict(ctx.config.get("ulimits") or {}).items()
        ]
        host = ctx.config.get("docker_host") or None
        timeout = int(ctx.config.get("timeout", 120))
        self._engine = Engine(host, timeout, ctx.mesh, ctx.droplet, ctx.logger)
        cli = str(ctx.config.get("docker_cli") or "docker")
        builds = SecretBuilds(cli, host, self._secrets_root, ctx.logger)
        pull = bool(ctx.config.get("pull", True))
        self._images = Images(self._engine, ctx.mesh, pull, ctx.logger, builds)
        self._networks = Networks(self._engine, ctx.mesh, ctx.droplet)
        self._artifacts = DockerArtifacts(self._engine, ctx.mesh, ctx.logger)
        self._exits: dict[str, tuple[int | None, str | None]] = {}  # exited container -> why
        self._logs = LogPaths()

    # --- the Runtime interface ----------------------------------------------------------------

    async def ensure(self, spec: InstanceSpec) -> InstanceInfo:
        try:
            wanted = container_spec(spec, self._mesh, self._droplet)
        except ContainerSpecError as err:
            raise InstanceStartError(spec.key, str(err)) from None
        try:
            return await self._ensure(spec, wanted)
        except docker.errors.APIError as err:
            raise InstanceStartError(spec.key, short(err)) from None

    async def _ensure(self, spec: InstanceSpec, wanted: ContainerSpec) -> InstanceInfo:
        current = await self._engine.call(self._find, spec.key)
        for raw in current:
            info = self._info(raw)
            if info.generation == spec.generation and info.phase is InstancePhase.RUNNING:
                await self._remove([c for c in current if c is not raw], grace=5.0)
                return info
        await self._remove(current, grace=5.0)
        pull = spec.artifact is None  # an artifact's image is loaded, never pulled
        user = await self._images.ensure(
            spec.key, wanted, spec.build_secrets, pull=pull, auth=spec.registry_auth
        )
        async with self._networks.joined(wanted):
            return await self._engine.call(self._create, spec, wanted, user)

    async def stop(self, key: str, *, grace: float = 5.0) -> None:
        try:
            current = await self._engine.call(self._find, key)
        except docker.errors.APIError as err:
            raise InstanceStopError(key, short(err)) from None
        await self._remove(current, grace=grace)

    async def restart(self, spec: InstanceSpec) -> InstanceInfo:
        await self.stop(spec.key)
        return await self.ensure(spec)

    async def list(self) -> builtins.list[InstanceInfo]:
        try:
            return await self._list()
        except docker.errors.APIError as err:
            reason = f"Docker engine failed to list containers: {short(err)}"
            raise RuntimeUnavailable(reason) from None

    async def _list(self) -> builtins.list[InstanceInfo]:
        raws = await self._engine.call(_list_raw, owner_labels(self._mesh, self._droplet))
        infos = []
        for raw in raws:
            if not _is_instance(raw):
                continue
            if raw.get("State") not in RUNNING_STATES and raw["Id"] not in self._exits:
                self._exits[raw["Id"]] = await self._engine.call(_why_exited, raw["Id"])
            infos.append(self._info(raw))
        listed = {raw["Id"] for raw in raws}
        for gone in set(self._exits) - listed:
            del self._exits[gone]
        for gone in set(self._engine.dies) - listed:  # a die event of a container we removed
            self._engine.forget(gone)
        return infos

    async def close(self) -> None:
        await self._engine.close()

    async def build_artifact(
        self, context: Path, dockerfile: Path | None, image: str, out: Path
    ) -> str:
        return await self._artifacts.build(context, dockerfile, image, out)

    async def has_artifact(self, digest: str, image: str | None) -> bool:
        return await self._artifacts.has(digest, image)

    async def load_artifact(self, digest: str, image: str | None, path: Path) -> None:
        await self._artifacts.load(digest, image, path)

    async def log_files(self) -> builtins.list[LogFile]:
        return await self._engine.call(self._logs.files, owner_labels(self._mesh, self._droplet))

    @property
    def follows_events(self) -> bool:
        """Whether the engine's die events reach this runtime (restarts are counted)."""
        return self._engine.following.is_set()

    # --- containers --------------------------------------------------------------------------

    def _find(self, client: docker.DockerClient, key: str) -> Raws:
        project, env, service, _ = subjects.parse_instance_key(key)
        labels = {
            **owner_labels(self._mesh, self._droplet),
            LABEL_PROJECT: project,
            LABEL_ENV: env,
            LABEL_SERVICE: service,
        }
        # Containers made before slots have no slot label: filtered here, not by Docker.
        return [raw for raw in _list_raw(client, labels) if _key_of(raw) == key]

    def _info(self, raw: Raw) -> InstanceInfo:
        labels = raw.get("Labels") or {}
        running = raw.get("State") in RUNNING_STATES
        container = raw["Id"]
        exit_code, detail = (None, None) if running else self._exits.get(container, (None, None))
        dies = self._engine.dies.get(container, 0)
        if running and dies:
            exit_code = self._engine.last_exit.get(container)
        return InstanceInfo(
            key=instance_key_of(labels),
            generation=int(labels.get(LABEL_GENERATION, 0)),
            runtime_id=container[:12],
            phase=InstancePhase.RUNNING if running else InstancePhase.EXITED,
            started_at=float(raw.get("Created", 0)),
            exit_code=exit_code,
            detail=detail,
            restarts=dies if running else 0,
        )

    def _create(
        self, client: docker.DockerClient, spec: InstanceSpec, wanted: ContainerSpec, user: str
    ) -> InstanceInfo:
        mounts = self._secret_mounts(spec, wanted, secret_owner(user, wanted.secret_uid))
        if spec.volume_path and wanted.data_path:  # the provider's volume, attached here
            mounts.append(Mount(target=wanted.data_path, source=spec.volume_path, type="bind"))
        elif wanted.volume and wanted.data_path:
            if not client.volumes.list(filters={"name": wanted.volume}):
                client.volumes.create(
                    name=wanted.volume,
                    labels={k: v for k, v in wanted.labels.items() if k != LABEL_GENERATION},
                )
            mounts.append(Mount(target=wanted.data_path, source=wanted.volume, type="volume"))
        options = self._options(client, wanted, mounts)
        try:
            container = client.containers.create(wanted.image, **options)
        except docker.errors.APIError as err:
            if err.status_code != 409 or not self._remove_stale(client, wanted.name):
                raise InstanceStartError(spec.key, short(err)) from None
            container = client.containers.create(wanted.image, **options)
        try:
            container.start()
        except docker.errors.APIError as err:
            with contextlib.suppress(docker.errors.APIError):
                container.remove(force=True)
            raise InstanceStartError(spec.key, short(err)) from None
        self._log.info(
            "Container started. key=%s generation=%d container=%s",
            spec.key,
            spec.generation,
            container.id[:12] if container.id else "?",
        )
        return InstanceInfo(
            key=spec.key,
            generation=spec.generation,
            runtime_id=(container.id or "")[:12],
            phase=InstancePhase.RUNNING,
            started_at=time.time(),
        )

    def _options(
        self, client: docker.DockerClient, wanted: ContainerSpec, mounts: Mounts
    ) -> dict[str, Any]:
        options: dict[str, Any] = {
            "name": wanted.name,
            "command": list(wanted.command) if wanted.command else None,
            "environment": wanted.environment,
            "labels": wanted.labels,
            "ports": dict(wanted.ports),
            "restart_policy": {"Name": wanted.restart_policy},
            "mem_limit": f"{wanted.memory_mb}m",
            "init": self._init,
            "mounts": mounts,
            "network": wanted.network,
            "networking_config": {
                wanted.network: client.api.create_endpoint_config(aliases=[wanted.alias])
            },
            "detach": True,
        }
        if wanted.healthcheck:
            options["healthcheck"] = wanted.healthcheck
        if self._ulimits:
            options["ulimits"] = self._ulimits
        return options

    def _secret_mounts(self, spec: InstanceSpec, wanted: ContainerSpec, uid: int) -> Mounts:
        directory = self._secrets_root / wanted.name
        files = secret_files(spec)
        try:
            remove_tree(directory)
            write_secret_files(directory, files, uid)
        except ValueError as err:
            raise InstanceStartError(spec.key, str(err)) from None
        except OSError as err:  # this droplet's disk, not the engine
            raise InstanceStartError(spec.key, f"cannot write its secret files: {err}") from None
        return [
            Mount(
                target=f"{SECRETS_TARGET}/{name}",
                source=str(directory / name),
                type="bind",
                read_only=True,
            )
            for name in sorted(files)
        ]

    def _remove_stale(self, client: docker.DockerClient, name: str) -> bool:
        """Remove a leftover container of this droplet that holds `name`; never another's."""
        try:
            labels = client.api.inspect_container(name)["Config"].get("Labels") or {}
        except docker.errors.NotFound:
            return True
        if labels.get(LABEL_MESH) != self._mesh or labels.get(LABEL_DROPLET) != self._droplet:
            return False
        client.api.remove_container(name, force=True)
        return True

    async def _remove(self, containers: Raws, *, grace: float) -> None:
        for raw in containers:
            await self._engine.call(self._stop_and_remove, raw, grace)
            labels = raw.get("Labels") or {}
            await self._networks.left(labels[LABEL_PROJECT], labels[LABEL_ENV])

    def _stop_and_remove(self, client: docker.DockerClient, raw: Raw, grace: float) -> None:
        container = raw["Id"]
        try:
            if raw.get("State") in RUNNING_STATES:
                client.api.stop(container, timeout=max(0, round(grace)))
            client.api.remove_container(container, force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as err:
            raise InstanceStopError(_key_of(raw), short(err)) from None
        name = (raw.get("Names") or ["/"])[0].lstrip("/")
        remove_tree(self._secrets_root / name)
        self._exits.pop(container, None)
        self._engine.forget(container)
        self._log.info("Container removed. key=%s container=%s", _key_of(raw), container[:12])


def _list_raw(client: docker.DockerClient, labels: dict[str, str]) -> Raws:
    result: Raws = client.api.containers(all=True, filters={"label": label_filter(labels)})
    return result


def _why_exited(client: docker.DockerClient, container: str) -> tuple[int | None, str]:
    try:
        state = client.api.inspect_container(container)["State"]
        logs = client.api.logs(container, tail=LOG_TAIL_LINES).decode(errors="replace")
    except docker.errors.NotFound:
        return None, "container removed"
    detail = " | ".join(line for line in logs.strip().splitlines() if line)[-DETAIL_CHARS:]
    if state.get("OOMKilled"):
        detail = f"killed: out of memory. {detail}".strip()
    elif state.get("Error"):
        detail = f"{state['Error']}. {detail}".strip()
    return state.get("ExitCode"), detail or "no output"


def _is_instance(raw: Raw) -> bool:
    labels = raw.get("Labels") or {}
    return all(labels.get(k) for k in (LABEL_PROJECT, LABEL_ENV, LABEL_SERVICE))


def _key_of(raw: Raw) -> str:
    labels = raw.get("Labels") or {}
    try:
        return instance_key_of(labels)
    except (KeyError, ValueError, ProtocolError):
        return f"{labels.get(LABEL_PROJECT)}.{labels.get(LABEL_ENV)}.{labels.get(LABEL_SERVICE)}"


def create(ctx: RuntimeContext) -> DockerRuntime:
    """The plugin factory; see the module docstring for its settings."""
    unknown = sorted(set(ctx.config) - SETTINGS)
    if unknown:
        raise RuntimeConfigError("docker", f"unknown settings: {', '.join(unknown)}")
    timeout = ctx.config.get("timeout", 120)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise RuntimeConfigError("docker", "timeout must be a number of seconds above 0")
    if not isinstance(ctx.config.get("docker_cli", ""), str):
        raise RuntimeConfigError("docker", "docker_cli must be a command name or path")
    ulimits = ctx.config.get("ulimits") or {}
    if not isinstance(ulimits, dict) or not all(isinstance(v, int) for v in ulimits.values()):
        raise RuntimeConfigError("docker", "ulimits must map limit names to integers")
    return DockerRuntime(ctx)


if TYPE_CHECKING:
    _check_factory: Callable[[RuntimeContext], Runtime] = create  # DockerRuntime is a Runtime
