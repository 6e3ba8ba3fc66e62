"""The Docker Engine behind the docker SDK, which blocks: every call runs in a thread of the
runtime's own small executor, never in the event loop's default one, so that engine calls
cannot starve the agent's other threads (saving allocations, nginx reloads, the local
provider). Builds and pulls, which take minutes, have a single worker of their own: five
concurrent pulls never hold every thread while an instance waits to be stopped.

A thread follows the engine's `die` events of this droplet's containers: that is how restarts
made by Docker's restart policy are counted without inspecting every container on every pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import threading
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import docker
import docker.errors

from plugins.runtimes import RuntimeUnavailable
from plugins.runtimes.docker.containers import LABEL_DROPLET, label_filter, owner_labels

T = TypeVar("T")
WORKERS = 4  # engine calls at once: the reconciler starts up to 8 instances, two calls each
EVENTS_RETRY_S = 1.0
DETAIL_CHARS = 400


def engine_client(docker_host: str | None, timeout: float) -> docker.DockerClient:
    """A client of the engine at `docker_host`, else `DOCKER_HOST` or the local socket."""
    if docker_host:
        return docker.DockerClient(base_url=docker_host, timeout=timeout)
    return docker.from_env(timeout=timeout)


def short(err: Exception) -> str:
    """The engine's explanation of an error, on one line."""
    if isinstance(err, docker.errors.APIError) and err.explanation:
        return str(err.explanation)
    return str(err).splitlines()[0][:DETAIL_CHARS] if str(err) else type(err).__name__


class Engine:
    """One droplet's connection to its engine: calls in threads, and the die events."""

    def __init__(
        self, host: str | None, timeout: float, mesh: str, droplet: str, log: logging.Logger
    ) -> None:
        self._host = host
        self._timeout = timeout
        self._mesh = mesh
        self._droplet = droplet
        self._log = log
        self._client: docker.DockerClient | None = None
        self._client_lock = threading.Lock()
        self._calls = ThreadPoolExecutor(WORKERS, thread_name_prefix="docker")
        self._slow = ThreadPoolExecutor(1, thread_name_prefix="docker-build")
        self._events: threading.Thread | None = None
        self._stream: Any = None
        self._closing = threading.Event()
        self.following = threading.Event()  # set while the die events are subscribed to
        self.dies: defaultdict[str, int] = defaultdict(int)  # container -> die events seen
        self.last_exit: dict[str, int] = {}  # container -> exit code of its last death

    async def call(self, function: Callable[..., T], *args: Any) -> T:
        """`function(client, *args)` in a worker thread; an engine that does not answer
        becomes `RuntimeUnavailable`."""
        return await self._run(self._calls, function, *args)

    async def call_slow(self, function: Callable[..., T], *args: Any) -> T:
        """`call` for builds and pulls: one at a time, on a worker of their own."""
        return await self._run(self._slow, function, *args)

    async def _run(self, executor: ThreadPoolExecutor, function: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                executor, functools.partial(self._with_client, loop, function, *args)
            )
        except docker.errors.DockerException:
            raise  # the engine answered (APIError is also an OSError, through requests)
        except OSError as err:  # requests' connection errors and timeouts are OSErrors
            raise RuntimeUnavailable(f"Docker engine not answering: {err}") from None

    def _with_client(
        self, loop: asyncio.AbstractEventLoop, function: Callable[..., T], *args: Any
    ) -> T:
        client = self._connect()
        self._follow_events(client, loop)
        return function(client, *args)

    def _connect(self) -> docker.DockerClient:
        with self._client_lock:
            if self._client is None:
                try:
                    self._client = engine_client(self._host, self._timeout)
                except docker.errors.DockerException as err:
                    where = self._host or os.environ.get("DOCKER_HOST", "the local socket")
                    raise RuntimeUnavailable(
                        f"no Docker engine answers at {where}: {short(err)}"
                    ) from None
            return self._client

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
        self._calls.shutdown(wait=False, cancel_futures=True)
        self._slow.shutdown(wait=False, cancel_futures=True)

    def forget(self, container: str) -> None:
        """A container was removed: its deaths no longer count."""
        self.dies.pop(container, None)
        self.last_exit.pop(container, None)

    # --- die events ------------------------------------------------------------------------

    def _follow_events(self, client: docker.DockerClient, loop: asyncio.AbstractEventLoop) -> None:
        with self._client_lock:
            if self._events is not None or self._closing.is_set():
                return
            self._events = threading.Thread(
                target=self._events_loop, args=(client, loop), name="docker-events", daemon=True
            )
        self._events.start()

    def _events_loop(self, client: docker.DockerClient, loop: asyncio.AbstractEventLoop) -> None:
        # Filtered by the mesh's label only, and by kind and droplet here: podman ignores an
        # `event` filter (nothing arrives) where Docker applies it.
        filters = {"type": "container", "label": label_filter(owner_labels(self._mesh))}
        reported: str | None = None
        while not self._closing.is_set():
            try:
                self._stream = client.events(decode=True, filters=filters)
                self.following.set()
                for event in self._stream:
                    attributes = (event.get("Actor") or {}).get("Attributes") or {}
                    if event.get("Action") != "die":
                        continue
                    if attributes.get(LABEL_DROPLET) != self._droplet:
                        continue
                    container = event.get("id") or ""
                    loop.call_soon_threadsafe(self._died, container, attributes.get("exitCode"))
            except Exception as err:  # the engine restarted or went away: follow it again
                self.following.clear()
                if not self._closing.is_set() and str(err) != reported:
                    reported = str(err)  # said once per distinct error, not once a second
                    self._log.warning("Engine events interrupted; following again. error=%s", err)
                if self._closing.wait(EVENTS_RETRY_S):
                    return

    def _died(self, container: str, code: str | None) -> None:
        self.dies[container] += 1
        with contextlib.suppress(TypeError, ValueError):
            self.last_exit[container] = int(code)  # type: ignore[arg-type]
