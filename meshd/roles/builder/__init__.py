"""The `builder` role: deploy requests (stream `MESH_DEPLOY`) -> numbered releases.

A request is taken from the work queue and handed to its project's worker: one release per
project at a time, in order; when a project has several requests waiting for the same
environment only the newest runs (the others are answered "superseded"). A push is mapped to
an environment by the project's `deploy` setting (prod never: only a promotion deploys it).
A request is acknowledged once its release record exists or it was answered, so a builder
that dies before that leaves it to the next one. `--cancel` stops the environment's waiting
and running requests; the old release keeps serving.

What a release does is in `job` (build, promote, rollback), `release` (roll out, health gate)
and `artifacts` (builds); the artifacts of old releases are deleted in `retention`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from meshd.agent.lease import Term, TermEnded
from meshd.agent.meshview import MeshView
from meshd.agent.store import Delivery, Store, StoreUnavailable, WorkQueue
from meshd.roles.builder.artifacts import ArtifactBuilder
from meshd.roles.builder.job import Job, JobContext, environment_of
from meshd.roles.builder.release import Progress
from protocol import subjects
from protocol.codec import decode
from protocol.errors import ProtocolError
from protocol.releases import DeployRequest

log = logging.getLogger(__name__)
TAKE_WAIT_S = 1.0


@dataclass
class Waiting:
    request: DeployRequest
    delivery: Delivery
    env: str | None


@dataclass
class ProjectLine:
    """A project's requests waiting, and the one running."""

    waiting: list[Waiting] = field(default_factory=list)
    running: tuple[str | None, asyncio.Task[None]] | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class Builder:
    role = subjects.Role.BUILDER

    def __init__(
        self,
        store: Store,
        view: MeshView,
        runtime: ArtifactBuilder,
        droplet: str,
        work: Path,
        mesh: str,
        droplet_dir: Path | None = None,
        key: Callable[[], bytes | None] = lambda: None,
    ) -> None:
        self.mesh = mesh
        self.key = key  # the SSH key that reaches master's repositories
        self.store = store
        self.view = view
        self.runtime = runtime
        self.droplet = droplet
        self.work = work
        self.droplet_dir = droplet_dir  # where master keeps the mesh's repositories
        self.lines: dict[str, ProjectLine] = {}

    async def lead(self, term: Term) -> None:
        self.lines = {}
        queue = await self.store.work_queue(
            subjects.DEPLOY_STREAM, subjects.DEPLOY_SUBJECTS, subjects.DEPLOY_CONSUMER
        )
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(Job.resume_unfinished(self._job_context(term)))
                while True:
                    term.ensure_held()
                    try:
                        delivery = await queue.take(TAKE_WAIT_S)
                    except StoreUnavailable as err:
                        log.info("Deploy requests not readable. error=%s", err)
                        await asyncio.sleep(TAKE_WAIT_S)
                        continue
                    if delivery is not None:
                        await self._arrived(term, tasks, queue, delivery)
        finally:
            await queue.close()

    async def _arrived(
        self, term: Term, tasks: asyncio.TaskGroup, queue: WorkQueue, delivery: Delivery
    ) -> None:
        try:
            request = decode(delivery.data, DeployRequest)
        except ProtocolError as err:
            log.error("Unreadable deploy request dropped. error=%s", err)
            await queue.done(delivery)
            return
        progress = Progress(self.store, request)
        state = self.view.state
        try:
            project = state.project(request.project) if state else None
        except KeyError:
            project = None
        if project is None:
            await progress.say(f"no project {request.project!r} in the mesh", final=True, ok=False)
            await queue.done(delivery)
            return
        env = environment_of(request, project)
        if request.cancel:
            await self._cancel(request.project, env, progress)
            await queue.done(delivery)
            return
        if env is None:
            await progress.say(
                f"{request.ref}: no environment deploys from this branch "
                f"(deploy: {project.deploy}); nothing to do",
                final=True,
            )
            await queue.done(delivery)
            return
        line = self.lines.setdefault(request.project, ProjectLine())
        line.waiting.append(Waiting(request, delivery, env))
        line.wake.set()
        if len(line.waiting) == 1 and line.running is None:
            tasks.create_task(self._work(term, request.project, line, queue))
        await progress.say(
            f"queued for {env}" + (" behind a running release" if line.running else "")
        )

    async def _work(self, term: Term, project: str, line: ProjectLine, queue: WorkQueue) -> None:
        while line.waiting:
            term.ensure_held()
            waiting = line.waiting.pop(0)
            if any(w.env == waiting.env for w in line.waiting):
                await Progress(self.store, waiting.request).say(
                    "superseded by a newer request for the same environment", final=True, ok=False
                )
                await queue.done(waiting.delivery)
                continue
            job = Job(self._job_context(term), waiting.request, waiting.env)
            task = asyncio.create_task(job.run(functools.partial(queue.done, waiting.delivery)))
            line.running = (waiting.env, task)
            try:
                await task
            except asyncio.CancelledError:
                me = asyncio.current_task()
                if me is not None and me.cancelling():  # the term ends: the release with it
                    task.cancel()
                    raise
                if not task.cancelled():
                    raise
                # `deploy --cancel` stopped the release: the next request goes on.
            except TermEnded:
                raise
            except Exception as err:  # one release's bug must not stop the others
                log.exception("Release crashed. project=%s error=%s", project, err)
            finally:
                line.running = None
                with contextlib.suppress(Exception):
                    await queue.done(waiting.delivery)

    async def _cancel(self, project: str, env: str | None, progress: Progress) -> None:
        line = self.lines.get(project)
        stopped = 0
        if line is not None:
            for waiting in [w for w in line.waiting if w.env == env]:
                line.waiting.remove(waiting)
                await Progress(self.store, waiting.request).say("cancelled", final=True, ok=False)
                stopped += 1
            if line.running is not None and line.running[0] == env:
                line.running[1].cancel()
                stopped += 1
        text = f"cancelled {stopped} request(s) of {env}" if stopped else f"nothing runs for {env}"
        await progress.say(text, final=True, ok=True)

    def _job_context(self, term: Term) -> JobContext:
        return JobContext(
            self.store, self.view, self.runtime, term, self.droplet, self.work, self.mesh,
            self.droplet_dir, self.key,
        )  # fmt: skip
