"""Images of the docker runtime: taken from the engine, built from the instance's build context
(once per tag) or, where allowed, pulled. Builds and pulls run one at a time on the engine's
slow worker; a build with build secrets runs the docker CLI instead (`buildkit`), in turn with
the others. An image from a private registry is pulled with the instance's login, given to the
engine with that pull only (no `docker login`, nothing written to ~/.docker/config.json)."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path

import docker
import docker.errors

from plugins.runtimes import InstanceStartError, RegistryAuth
from plugins.runtimes.docker.buildkit import CliBuildError, SecretBuilds
from plugins.runtimes.docker.containers import Build, ContainerSpec, owner_labels
from plugins.runtimes.docker.engine import Engine, short

# What registries answer to a login they refuse (registry 2.x, Docker Hub, ...), as the engine
# passes it on (a 500 with the registry's words).
REFUSALS = ("unauthorized", "authentication required", "incorrect username or password")


class Images:
    def __init__(
        self, engine: Engine, mesh: str, pull: bool, log: logging.Logger, builds: SecretBuilds
    ) -> None:
        self._engine = engine
        self._mesh = mesh
        self._pull = pull
        self._log = log
        self._builds = builds
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._slow = asyncio.Lock()  # one build or pull at a time, whichever way it runs

    async def ensure(
        self,
        key: str,
        wanted: ContainerSpec,
        build_secrets: Mapping[str, bytes] | None = None,
        *,
        pull: bool = True,
        auth: RegistryAuth | None = None,
    ) -> str:
        """The image's user (for the owner of secret files), building or pulling it first
        (not pulling it if `pull` is false, with the login `auth` if given); `build_secrets`
        are the values of `wanted.build.secrets`."""
        async with self._locks[wanted.image]:
            try:
                found = await self._engine.call(_user_of, wanted.image)
                if found is not None:
                    return found
                if wanted.build is None and not pull:
                    raise InstanceStartError(key, f"image {wanted.image} is not loaded here")
                async with self._slow:
                    if wanted.build is not None and wanted.build.secrets:
                        return await self._build_with_secrets(wanted, build_secrets or {})
                    return await self._engine.call_slow(self._fetch, wanted, auth)
            except (docker.errors.BuildError, docker.errors.APIError, ValueError) as err:
                raise InstanceStartError(key, image_problem(wanted, err, auth)) from None
            except CliBuildError as err:
                raise InstanceStartError(key, f"cannot build image {wanted.image}: {err}") from None

    async def _build_with_secrets(self, wanted: ContainerSpec, values: Mapping[str, bytes]) -> str:
        assert wanted.build is not None
        self._log.info(
            "Building image with build secrets. image=%s context=%s secrets=%s",
            wanted.image,
            wanted.build.context,
            ",".join(wanted.build.secrets),
        )
        await self._builds.build(wanted.image, wanted.build, values, owner_labels(self._mesh))
        found = await self._engine.call(_user_of, wanted.image)
        if found is None:
            raise CliBuildError(
                "docker build succeeded, but the engine has no such image: does the docker "
                "command reach another engine?"
            )
        return found

    def _fetch(
        self, client: docker.DockerClient, wanted: ContainerSpec, auth: RegistryAuth | None
    ) -> str:
        if wanted.build is not None:
            if not Path(wanted.build.context).is_dir():
                raise ValueError(
                    f"the build context {wanted.build.context} is not on this droplet; "
                    "it is built where the context is (a deploy from git brings it)"
                )
            self._log.info("Building image. image=%s context=%s", wanted.image, wanted.build)
            image, _ = client.images.build(
                path=wanted.build.context,
                dockerfile=dockerfile_argument(wanted.build),
                tag=wanted.image,
                rm=True,
                forcerm=True,
                labels=owner_labels(self._mesh),
            )
        elif self._pull and auth is not None:
            self._log.info(
                "Pulling image with a registry login. image=%s registry=%s user=%s",
                wanted.image,
                auth.server,
                auth.username,
            )
            login = {"username": auth.username, "password": auth.password}
            repository, tag = docker.utils.parse_repository_tag(wanted.image)
            image = client.images.pull(repository, tag, auth_config=login)
        elif self._pull:
            self._log.info("Pulling image. image=%s", wanted.image)
            image = client.images.pull(wanted.image)
        else:
            raise ValueError("not on this engine, and pulling is off")
        return _user(image)


def _user_of(client: docker.DockerClient, image: str) -> str | None:
    """The user of `image` if the engine has it; None if it does not."""
    try:
        return _user(client.images.get(image))
    except docker.errors.ImageNotFound:
        return None


def _user(image: docker.models.images.Image) -> str:
    return str((image.attrs.get("Config") or {}).get("User") or "")


def dockerfile_argument(build: Build) -> str | None:
    """The Dockerfile relative to its context when it is inside (podman reads an absolute
    path outside the context wrongly); docker-py sends one from outside itself."""
    if not build.dockerfile:
        return None
    path, context = Path(build.dockerfile), Path(build.context)
    return str(path.relative_to(context)) if path.is_relative_to(context) else build.dockerfile


def image_problem(wanted: ContainerSpec, err: Exception, auth: RegistryAuth | None = None) -> str:
    if auth is not None and refused_login(err):
        return f"registry {auth.server} refused the login for {auth.username} ({short(err)})"
    if isinstance(err, docker.errors.BuildError):
        lines = [str(step.get("stream", "")).strip() for step in err.build_log if "stream" in step]
        tail = " | ".join(line for line in lines[-3:] if line)
        return f"cannot build image {wanted.image}: {err.msg}{f' ({tail})' if tail else ''}"
    return f"image {wanted.image} not available: {short(err)}"


def refused_login(err: Exception) -> bool:
    """Whether the engine's error says the registry refused the pull's credentials."""
    if not isinstance(err, docker.errors.APIError):
        return False
    said = short(err).lower()
    return err.status_code == 401 or any(sign in said for sign in REFUSALS)
