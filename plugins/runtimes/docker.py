"""The `docker` runtime: each instance as a container of the droplet's Docker Engine.

Containers are found again by their labels (`plugins.runtimes.containers`), so a restarted
agent adopts the running ones untouched, and objects of other meshes or droplets on the same
engine are never listed, changed or removed. Secrets are files under
`<data_dir>/secrets/<container>/`, mode 0400, owned by the image's user, bind-mounted read-only
at `/run/secrets/<name>`; they never reach the container's environment. Images come from the
engine, from a build of the instance's build context (once per tag) or, where allowed, a pull.

The docker SDK blocks: every call runs in a worker thread. A thread follows the engine's `die`
events of this droplet's containers, which is how restarts made by Docker's restart policy are
counted without inspecting every container on every pass.

Config (`RuntimeContext.config`):
- `docker_host`: default `DOCKER_HOST` or the local socket; podman's Docker-compatible
  socket works too.
- `pull`: fetch missing images from a registry (default true).
- `init`: a tiny init as PID 1 that passes signals on, so that a program which ignores
  SIGTERM as PID 1 still stops at once (default true; podman needs `catatonit` for it).
- `timeout`: seconds per engine request (default 120).
- `ulimits`: name -> limit for every container, e.g. `{"nofile": 20000, "nproc": 32768}`
  for rootful podman, whose defaults exceed the host's hard limits.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import os
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import docker
import docker.errors
from docker.types import Mount, Ulimit

from plugins.runtimes import (
    InstanceInfo,
    InstancePhase,
    InstanceSpec,
    InstanceStartError,
    InstanceStopError,
    RuntimeContext,
    RuntimeUnavailable,
)
from plugins.runtimes.containers import (
    LABEL_DROPLET,
    LABEL_ENV,
    LABEL_GENERATION,
    LABEL_MESH,
    LABEL_PROJECT,
    LABEL_SERVICE,
    SECRETS_TARGET,
    Build,
    ContainerSpec,
    ContainerSpecError,
    container_spec,
    instance_key_of,
    label_filter,
    network_name,
    owner_labels,
    secret_files,
)
from protocol import subjects
from protocol.errors import ProtocolError

Raw = dict[str, Any]  # a container as the engine lists it
Raws = list[Raw]  # spelled once: `list` is also a method of the runtime
Mounts = list[Mount]
RUNNING_STATES = frozenset({"running", "restarting", "paused"})
LOG_TAIL_LINES = 5
DETAIL_CHARS = 400
EVENTS_RETRY_S = 1.0


class DockerRuntime:
    name = "docker"

    def __init__(self, ctx: RuntimeContext) -> None:
        self._mesh = ctx.mesh
        self._droplet = ctx.droplet
        self._secrets_root = ctx.data_dir / "secrets"
        self._log = ctx.logger
        self._host = ctx.config.get("docker_host") or None
        self._pull = bool(ctx.config.get("pull", True))
        self._timeout = int(ctx.config.get("timeout", 120))
        self._init = bool(ctx.config.get("init", True))
        self._ulimits = [
            Ulimit(name=name, soft=int(limit), hard=int(limit))
            for name, limit in dict(ctx.config.get("ulimits") or {}).items()
        ]
        self._client: docker.DockerClient | None = None
        self._client_lock = threading.Lock()
        self._image_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._network_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._joining: defaultdict[str, int] = defaultdict(int)  # network -> instances joining
        self._exits: dict[str, tuple[int | None, str | None]] = {}  # exited container -> why
        self._dies: defaultdict[str, int] = defaultdict(int)  # container -> die events seen
        self._last_exit: dict[str, int] = {}
        self._events: threading.Thread | None = None
        self._stream: Any = None
        self._closing = threading.Event()

    # --- the Runtime interface ----------------------------------------------------------------

    async def ensure(self, spec: InstanceSpec) -> InstanceInfo:
        try:
            wanted = container_spec(spec, self._mesh, self._droplet)
        except ContainerSpecError as err:
            raise InstanceStartError(spec.key, str(err)) from None
        try:
            return await self._ensure(spec, wanted)
        except docker.errors.APIError as err:
            raise InstanceStartError(spec.key, _short(err)) from None

    async def _ensure(self, spec: InstanceSpec, wanted: ContainerSpec) -> InstanceInfo:
        current = await self._call(self._find, spec.key)
        for raw in current:
            info = self._info(raw)
            if info.generation == spec.generation and info.phase is InstancePhase.RUNNING:
                await self._remove([c for c in current if c is not raw], grace=5.0)
                return info
        await self._remove(current, grace=5.0)
        user = await self._ensure_image(spec.key, wanted)
        self._joining[wanted.network] += 1  # the network is not removed while we join it
        try:
            async with self._network_locks[wanted.network]:
                await self._call(self._ensure_network, wanted)
            started: InstanceInfo = await self._call(self._create, spec, wanted, user)
        finally:
            self._joining[wanted.network] -= 1
        return started

    async def stop(self, key: str, *, grace: float = 5.0) -> None:
        try:
            current = await self._call(self._find, key)
        except docker.errors.APIError as err:
            raise InstanceStopError(key, _short(err)) from None
        await self._remove(current, grace=grace)

    async def restart(self, spec: InstanceSpec) -> InstanceInfo:
        await self.stop(spec.key)
        return await self.ensure(spec)

    async def list(self) -> builtins.list[InstanceInfo]:
        try:
            return await self._list()
        except docker.errors.APIError as err:
            reason = f"Docker engine failed to list containers: {_short(err)}"
            raise RuntimeUnavailable(reason) from None

    async def _list(self) -> builtins.list[InstanceInfo]:
        raws = await self._call(self._list_raw, owner_labels(self._mesh, self._droplet))
        infos = []
        for raw in raws:
            if not _is_instance(raw):
                continue
            if raw.get("State") not in RUNNING_STATES and raw["Id"] not in self._exits:
                self._exits[raw["Id"]] = await self._call(self._why_exited, raw["Id"])
            infos.append(self._info(raw))
        listed = {raw["Id"] for raw in raws}
        for gone in set(self._exits) - listed:
            del self._exits[gone]
        for gone in set(self._dies) - listed:  # a die event of a container we removed
            del self._dies[gone]
            self._last_exit.pop(gone, None)
        return infos

    async def close(self) -> None:
        self._closing.set()
        stream, self._stream = self._stream, None
        if stream is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(stream.close)
        if self._client is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self._client.close)
            self._client = None

    # --- engine access -----------------------------------------------------------------------

    async def _call(self, function: Any, *args: Any) -> Any:
        """`function(client, *args)` in a worker thread; an engine that does not answer
        becomes `RuntimeUnavailable`."""
        client = await asyncio.to_thread(self._connect)
        self._follow_events(client)
        try:
            return await asyncio.to_thread(function, client, *args)
        except docker.errors.DockerException:
            raise  # the engine answered (APIError is also an OSError, through requests)
        except OSError as err:  # requests' connection errors and timeouts are OSErrors
            raise RuntimeUnavailable(f"Docker engine not answering: {err}") from None

    def _connect(self) -> docker.DockerClient:
        with self._client_lock:
            if self._client is None:
                try:
                    self._client = engine_client(self._host, self._timeout)
                except docker.errors.DockerException as err:
                    where = self._host or os.environ.get("DOCKER_HOST", "the local socket")
                    raise RuntimeUnavailable(
                        f"no Docker engine answers at {where}: {_short(err)}"
                    ) from None
            return self._client

    def _list_raw(self, client: docker.DockerClient, labels: dict[str, str]) -> Raws:
        result: Raws = client.api.containers(all=True, filters={"label": label_filter(labels)})
        return result

    def _find(self, client: docker.DockerClient, key: str) -> Raws:
        project, env, service, _ = subjects.parse_instance_key(key)
        labels = {
            **owner_labels(self._mesh, self._droplet),
            LABEL_PROJECT: project,
            LABEL_ENV: env,
            LABEL_SERVICE: service,
        }
        # Containers made before slots have no slot label: filtered here, not by Docker.
        return [raw for raw in self._list_raw(client, labels) if _key_of(raw) == key]

    def _why_exited(self, client: docker.DockerClient, container: str) -> tuple[int | None, str]:
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

    def _info(self, raw: dict[str, Any]) -> InstanceInfo:
        labels = raw.get("Labels") or {}
        key = instance_key_of(labels)
        running = raw.get("State") in RUNNING_STATES
        container = raw["Id"]
        exit_code, detail = (None, None) if running else self._exits.get(container, (None, None))
        if running and self._dies.get(container):
            exit_code = self._last_exit.get(container)
        return InstanceInfo(
            key=key,
            generation=int(labels.get(LABEL_GENERATION, 0)),
            runtime_id=container[:12],
            phase=InstancePhase.RUNNING if running else InstancePhase.EXITED,
            started_at=float(raw.get("Created", 0)),
            exit_code=exit_code,
            detail=detail,
            restarts=self._dies.get(container, 0) if running else 0,
        )

    # --- images ------------------------------------------------------------------------------

    async def _ensure_image(self, key: str, wanted: ContainerSpec) -> str:
        """The image's user (for the owner of secret files), building or pulling it first."""
        async with self._image_locks[wanted.image]:
            try:
                return str(await self._call(self._image_or_fetch, wanted))
            except (docker.errors.BuildError, docker.errors.APIError, ValueError) as err:
                raise InstanceStartError(key, _image_problem(wanted, err)) from None

    def _image_or_fetch(self, client: docker.DockerClient, wanted: ContainerSpec) -> str:
        try:
            image = client.images.get(wanted.image)
        except docker.errors.ImageNotFound:
            if wanted.build is not None:
                if not Path(wanted.build.context).is_dir():
                    raise ValueError(
                        f"the build context {wanted.build.context} is not on this droplet; "
                        "it is built where the context is (a deploy from git brings it)"
                    ) from None
                self._log.info("Building image. image=%s context=%s", wanted.image, wanted.build)
                image, _ = client.images.build(
                    path=wanted.build.context,
                    dockerfile=_dockerfile_argument(wanted.build),
                    tag=wanted.image,
                    rm=True,
                    forcerm=True,
                    labels=owner_labels(self._mesh),
                )
            elif self._pull:
                self._log.info("Pulling image. image=%s", wanted.image)
                image = client.images.pull(wanted.image)
            else:
                raise ValueError("not on this engine, and pulling is off") from None
        user = (image.attrs.get("Config") or {}).get("User") or ""
        return str(user)

    # --- containers --------------------------------------------------------------------------

    def _ensure_network(self, client: docker.DockerClient, wanted: ContainerSpec) -> None:
        if client.networks.list(names=[wanted.network]):
            return
        labels = {k: v for k, v in wanted.labels.items() if k in (LABEL_PROJECT, LABEL_ENV)}
        client.networks.create(
            wanted.network,
            driver="bridge",
            labels={**owner_labels(self._mesh, self._droplet), **labels},
            check_duplicate=True,
        )

    def _create(
        self, client: docker.DockerClient, spec: InstanceSpec, wanted: ContainerSpec, user: str
    ) -> InstanceInfo:
        mounts = self._write_secrets(spec, wanted, _uid(user, wanted.secret_uid))
        if wanted.volume and wanted.data_path:
            if not client.volumes.list(filters={"name": wanted.volume}):
                client.volumes.create(
                    name=wanted.volume,
                    labels={k: v for k, v in wanted.labels.items() if k != LABEL_GENERATION},
                )
            mounts.append(Mount(target=wanted.data_path, source=wanted.volume, type="volume"))
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
        try:
            container = client.containers.create(wanted.image, **options)
        except docker.errors.APIError as err:
            if err.status_code != 409 or not self._remove_stale(client, wanted.name):
                raise InstanceStartError(spec.key, _short(err)) from None
            container = client.containers.create(wanted.image, **options)
        try:
            container.start()
        except docker.errors.APIError as err:
            with contextlib.suppress(docker.errors.APIError):
                container.remove(force=True)
            raise InstanceStartError(spec.key, _short(err)) from None
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
            await self._call(self._stop_and_remove, raw, grace)
            labels = raw.get("Labels") or {}
            network = network_name(
                self._mesh, self._droplet, labels[LABEL_PROJECT], labels[LABEL_ENV]
            )
            async with self._network_locks[network]:
                if not self._joining[network]:
                    await self._call(self._remove_network_if_unused, network)

    def _remove_network_if_unused(self, client: docker.DockerClient, network: str) -> None:
        for found in client.networks.list(names=[network]):
            if found.name == network and not found.attrs.get("Containers"):
                found.reload()  # the list leaves out the containers
                if not found.attrs.get("Containers"):
                    with contextlib.suppress(docker.errors.APIError):
                        found.remove()

    def _stop_and_remove(
        self, client: docker.DockerClient, raw: dict[str, Any], grace: float
    ) -> None:
        container = raw["Id"]
        try:
            if raw.get("State") in RUNNING_STATES:
                client.api.stop(container, timeout=max(0, round(grace)))
            client.api.remove_container(container, force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as err:
            key = _key_of(raw)
            raise InstanceStopError(key, _short(err)) from None
        name = (raw.get("Names") or ["/"])[0].lstrip("/")
        _remove_tree(self._secrets_root / name)
        self._exits.pop(container, None)
        self._dies.pop(container, None)
        self._last_exit.pop(container, None)
        self._log.info("Container removed. key=%s container=%s", _key_of(raw), container[:12])

    def _write_secrets(self, spec: InstanceSpec, wanted: ContainerSpec, uid: int) -> Mounts:
        directory = self._secrets_root / wanted.name
        mounts: Mounts = []
        try:
            _remove_tree(directory)
            directory.mkdir(parents=True, mode=0o700)
            for name, value in sorted(secret_files(spec).items()):
                if "/" in name or name.startswith("."):
                    raise InstanceStartError(spec.key, f"secret name {name!r} is not a file name")
                path = directory / name
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
                try:
                    os.write(fd, value)
                    if uid and os.geteuid() == 0:
                        os.fchown(fd, uid, uid)
                finally:
                    os.close(fd)
                target = f"{SECRETS_TARGET}/{name}"
                mounts.append(Mount(target=target, source=str(path), type="bind", read_only=True))
        except OSError as err:  # this droplet's disk, not the engine
            raise InstanceStartError(spec.key, f"cannot write its secret files: {err}") from None
        return mounts

    # --- engine events -----------------------------------------------------------------------

    def _follow_events(self, client: docker.DockerClient) -> None:
        if self._events is None and not self._closing.is_set():
            loop = asyncio.get_running_loop()
            self._events = threading.Thread(
                target=self._events_loop, args=(client, loop), name="docker-events", daemon=True
            )
            self._events.start()

    def _events_loop(self, client: docker.DockerClient, loop: asyncio.AbstractEventLoop) -> None:
        # Filtered by the mesh's label only, and by kind and droplet here: podman ignores an
        # `event` filter (nothing arrives) where Docker applies it.
        filters = {"type": "container", "label": label_filter(owner_labels(self._mesh))}
        while not self._closing.is_set():
            try:
                self._stream = client.events(decode=True, filters=filters)
                for event in self._stream:
                    attributes = (event.get("Actor") or {}).get("Attributes") or {}
                    if event.get("Action") != "die":
                        continue
                    if attributes.get(LABEL_DROPLET) != self._droplet:
                        continue
                    container = event.get("id") or ""
                    loop.call_soon_threadsafe(self._died, container, attributes.get("exitCode"))
            except Exception:  # the engine restarted or went away: follow it again
                if self._closing.wait(EVENTS_RETRY_S):
                    return

    def _died(self, container: str, code: str | None) -> None:
        self._dies[container] += 1
        with contextlib.suppress(TypeError, ValueError):
            self._last_exit[container] = int(code)  # type: ignore[arg-type]


def _is_instance(raw: Raw) -> bool:
    labels = raw.get("Labels") or {}
    return all(labels.get(k) for k in (LABEL_PROJECT, LABEL_ENV, LABEL_SERVICE))


def _key_of(raw: Raw) -> str:
    labels = raw.get("Labels") or {}
    try:
        return instance_key_of(labels)
    except (KeyError, ValueError, ProtocolError):
        return f"{labels.get(LABEL_PROJECT)}.{labels.get(LABEL_ENV)}.{labels.get(LABEL_SERVICE)}"


def _dockerfile_argument(build: Build) -> str | None:
    """The Dockerfile relative to its context when it is inside (podman reads an absolute
    path outside the context wrongly); docker-py sends one from outside itself."""
    if not build.dockerfile:
        return None
    path, context = Path(build.dockerfile), Path(build.context)
    return str(path.relative_to(context)) if path.is_relative_to(context) else build.dockerfile


def _uid(user: str, template_uid: int | None) -> int:
    """Owner of the secret files: the template's server user, else the image's numeric user,
    else root (an image whose USER is a name should use its number to read its secrets)."""
    if template_uid is not None:
        return template_uid
    head = user.split(":", 1)[0]
    return int(head) if head.isdigit() else 0


def _remove_tree(directory: Path) -> None:
    if not directory.exists():
        return
    for path in directory.iterdir():
        path.unlink(missing_ok=True)
    directory.rmdir()


def _image_problem(wanted: ContainerSpec, err: Exception) -> str:
    if isinstance(err, docker.errors.BuildError):
        lines = [str(step.get("stream", "")).strip() for step in err.build_log if "stream" in step]
        tail = " | ".join(line for line in lines[-3:] if line)
        return f"cannot build image {wanted.image}: {err.msg}{f' ({tail})' if tail else ''}"
    return f"image {wanted.image} not available: {_short(err)}"


def _short(err: Exception) -> str:
    if isinstance(err, docker.errors.APIError) and err.explanation:
        return str(err.explanation)
    return str(err).splitlines()[0][:DETAIL_CHARS] if str(err) else type(err).__name__


def engine_client(docker_host: str | None, timeout: float) -> docker.DockerClient:
    """A client of the engine at `docker_host`, else `DOCKER_HOST` or the local socket."""
    if docker_host:
        return docker.DockerClient(base_url=docker_host, timeout=timeout)
    return docker.from_env(timeout=timeout)


def engine_version(docker_host: str | None = None, timeout: float = 3.0) -> str | None:
    """What answers at `docker_host` (default: `DOCKER_HOST` or the local socket), like
    "Docker Engine 20.10.24" or "Podman Engine 4.3.1", or None if nothing does. Blocking."""
    try:
        client = engine_client(docker_host, timeout)
        try:
            version = client.version()
        finally:
            client.close()
    except (docker.errors.DockerException, OSError):
        return None
    for component in version.get("Components") or []:
        name = str(component.get("Name", ""))
        if name.endswith("Engine") and name != "Engine":  # Docker's is just "Engine"
            return f"{name} {component.get('Version', '?')}"
    return f"Docker Engine {version.get('Version', '?')}"


def signal_containers(
    mesh: str, droplet: str, action: str, *, docker_host: str | None = None
) -> int:
    """`kill`, `pause` or `unpause` the droplet's running containers (fault drills on local
    droplets: a dead or frozen machine takes its containers with it); how many. Blocking."""
    try:
        client = engine_client(docker_host, 60)
    except (docker.errors.DockerException, OSError):
        return 0
    done = 0
    labels = {"label": label_filter(owner_labels(mesh, droplet))}
    try:
        for container in client.containers.list(filters=labels):
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                getattr(container, action)()
                done += 1
    finally:
        client.close()
    return done


def remove_objects(
    mesh: str, droplet: str | None, *, docker_host: str | None = None, volumes: bool
) -> int:
    """Remove the containers and networks (and, if `volumes`, the volumes) labelled with
    `mesh` (and `droplet`, if given); the number of objects removed. Blocking; for the local
    provider (a destroyed droplet runs nothing) and `meshctl down --local`."""
    try:
        client = engine_client(docker_host, 60)
    except (docker.errors.DockerException, OSError):
        return 0  # no engine: nothing of ours can be running on it
    removed = 0
    labels = {"label": label_filter(owner_labels(mesh, droplet))}
    try:
        for container in client.containers.list(all=True, filters=labels):
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)
                removed += 1
        for network in client.networks.list(filters=labels):
            with contextlib.suppress(docker.errors.NotFound):
                network.remove()
                removed += 1
        if volumes:
            for volume in client.volumes.list(filters=labels):
                with contextlib.suppress(docker.errors.NotFound):
                    volume.remove(force=True)
                    removed += 1
    finally:
        client.close()
    return removed


def create(ctx: RuntimeContext) -> DockerRuntime:
    return DockerRuntime(ctx)
