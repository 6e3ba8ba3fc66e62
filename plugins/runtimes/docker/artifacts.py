"""Artifacts of the docker runtime: an image built from a build context and saved, with its
tag, as one `docker save` archive; such an archive loaded into a droplet's engine. Archives
stream both ways (`image.save()` is written chunk by chunk, `images.load()` reads a generator
over the file), so an image is never whole in memory. Builds, saves and loads run one at a
time on the engine's slow worker."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import docker
import docker.errors

from plugins.runtimes import ArtifactError
from plugins.runtimes.docker.containers import Build, owner_labels
from plugins.runtimes.docker.engine import Engine, short
from plugins.runtimes.docker.images import dockerfile_argument

CHUNK = 1024 * 1024


class DockerArtifacts:
    def __init__(self, engine: Engine, mesh: str, log: logging.Logger) -> None:
        self._engine = engine
        self._mesh = mesh
        self._log = log

    async def build(self, context: Path, dockerfile: Path | None, image: str, out: Path) -> str:
        return await self._engine.call_slow(self._build, context, dockerfile, image, out)

    async def has(self, digest: str, image: str | None) -> bool:
        return await self._engine.call(_has_image, _image_of(digest, image))

    async def load(self, digest: str, image: str | None, path: Path) -> None:
        await self._engine.call_slow(self._load, digest, _image_of(digest, image), path)

    def _build(
        self,
        client: docker.DockerClient,
        context: Path,
        dockerfile: Path | None,
        image: str,
        out: Path,
    ) -> str:
        what = f"build image {image}"
        build = Build(context=str(context), dockerfile=str(dockerfile or ""))
        self._log.info("Building artifact. image=%s context=%s", image, context)
        try:
            _, stream = client.images.build(
                path=str(context),
                dockerfile=dockerfile_argument(build),
                tag=image,
                rm=True,
                forcerm=True,
                labels=owner_labels(self._mesh),
            )
        except docker.errors.BuildError as err:
            raise ArtifactError(what, err.msg, build_log(err.build_log)) from None
        except (docker.errors.APIError, TypeError) as err:  # TypeError: no such context
            raise ArtifactError(what, short(err)) from None
        log = build_log(stream)
        target = _open(out, "wb", f"save image {image}")
        with target:
            try:
                for chunk in client.images.get(image).save(chunk_size=CHUNK, named=image):
                    target.write(chunk)
            except docker.errors.APIError as err:
                raise ArtifactError(f"save image {image}", short(err), log) from None
        return log

    def _load(self, client: docker.DockerClient, digest: str, image: str, path: Path) -> None:
        what = f"load artifact {digest[:12]}"
        source = _open(path, "rb", what)

        def chunks() -> Iterator[bytes]:
            with source:
                while chunk := source.read(CHUNK):
                    yield chunk

        try:
            client.images.load(chunks())
        except (docker.errors.APIError, docker.errors.ImageLoadError) as err:
            raise ArtifactError(what, short(err)) from None
        finally:
            source.close()
        if not _has_image(client, image):
            raise ArtifactError(what, f"the archive holds no image {image}")
        self._log.info("Artifact loaded. digest=%s image=%s", digest[:12], image)


def build_log(stream: Iterable[Any]) -> str:
    """The text of a build's output (the engine's JSON lines: `stream`, `error`)."""
    lines = []
    for step in stream:
        if isinstance(step, dict):
            lines.append(str(step.get("stream") or step.get("error") or ""))
    return "".join(lines)


def _image_of(digest: str, image: str | None) -> str:
    if not image:
        raise ArtifactError(f"artifact {digest[:12]}", "a docker artifact names its image")
    return image


def _has_image(client: docker.DockerClient, image: str) -> bool:
    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        return False
    return True


def _open(path: Path, mode: str, what: str) -> BinaryIO:
    """The file at `path`; an `ArtifactError` if it cannot be (an OSError in an engine call
    would read as an engine that does not answer)."""
    try:
        return path.open(mode)  # type: ignore[return-value]
    except OSError as err:
        raise ArtifactError(what, f"{path}: {err.strerror or err}") from None
