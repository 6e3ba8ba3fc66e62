"""One deploy request carried out: a build from git (push, deploy), or the artifacts of an
earlier release to a new one (promote, rollback); then the project's release command, the
rollout, the UAT tag, and the deletion of artifacts no release keeps."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshd.agent.lease import Term
from meshd.agent.meshview import MeshView
from meshd.agent.outbox import queue_critical
from meshd.agent.records import release_targets, releases_of
from meshd.agent.store import Store, StoreUnavailable
from meshd.core.deploy_refs import environment_for
from meshd.core.pushes import branch_of
from meshd.core.releases import (
    ReleaseChoiceError,
    config_digest,
    next_number,
    promotion_source,
    release_data,
    rollback_source,
)
from meshd.core.spec import ProjectSpec
from meshd.core.versions import next_uat_tag, versioning_from_config
from meshd.roles.builder.artifacts import ArtifactBuilder, BuildFailed, build_release
from meshd.roles.builder.git import GitCache, GitError
from meshd.roles.builder.release import Progress, Records, roll_out
from meshd.roles.builder.release_command import ReleaseCommandFailed, run_release_command
from meshd.roles.builder.retention import delete_unkept, keep_log
from meshd.roles.builder.source import repository_of
from protocol import subjects
from protocol.codec import encode
from protocol.releases import DeployAction, DeployRequest, Release, ReleaseStatus, ReleaseTarget

log = logging.getLogger(__name__)
TAG_ATTEMPTS = 3
TAG_RETRY_S = 5.0
LOG_TAIL_LINES = 15


@dataclass
class JobContext:
    store: Store
    view: MeshView
    runtime: ArtifactBuilder
    term: Term
    droplet: str
    work: Path
    mesh: str
    droplet_dir: Path | None = None
    key: Callable[[], bytes | None] = lambda: None  # the SSH key to master (a mesh secret)


def environment_of(request: DeployRequest, project: ProjectSpec) -> str | None:
    """Where a request deploys: its own environment, or for a push the one its branch maps to."""
    if request.action is DeployAction.PROMOTE:
        return "prod"
    if request.action is not DeployAction.PUSH:
        return request.env
    branch = branch_of(request.ref) if request.ref.startswith("refs/") else request.ref
    return environment_for(branch, project.deploy) if branch else None


class Job:
    def __init__(self, ctx: JobContext, request: DeployRequest, env: str | None) -> None:
        self.ctx = ctx
        self.request = request
        self.env = env or "uat"
        self.progress = Progress(ctx.store, request)
        self.records = Records(ctx.store, ctx.term)

    async def run(self, taken: Callable[[], Awaitable[None]]) -> None:
        """Carry the request out; `taken` acknowledges it once its release record exists."""
        try:
            project = self.ctx.view.state.project(self.request.project)  # type: ignore[union-attr]
        except (AttributeError, KeyError):
            await self._refuse(f"no project {self.request.project!r} in the published state")
            return
        found = await releases_of(self.ctx.store, project.name, self.env)
        try:
            if self.request.action in (DeployAction.PUSH, DeployAction.DEPLOY):
                release = await self._build(project, found, taken)
            else:
                release = await self._reuse(project, found, taken)
            if release is None or not await self._release_command(project, release):
                return
            release = await roll_out(
                self.ctx.store, self.ctx.view, self.ctx.term, self.records, release,
                project.health_timeout_s, self.progress.say, self._alert, self.ctx.droplet,
            )  # fmt: skip
            if release.status is ReleaseStatus.LIVE:
                await self.progress.say(f"release {release.number} is live on {self.env}")
                if self.env == "uat" and release.action is not DeployAction.ROLLBACK:
                    release = await self._tag(project, release)
                await self._retain()
            ok = release.status is ReleaseStatus.LIVE
            await self.progress.say(
                f"release {release.number}: {release.status.value}"
                + (f" (tag {release.tag})" if release.tag and ok else ""),
                final=True, ok=ok, number=release.number,
            )  # fmt: skip
        except asyncio.CancelledError:
            last = self.records.last
            if last is not None and not last.status.finished:
                await self._cancelled(last)
            raise
        except Exception as err:  # noqa: BLE001 - told, then raised for the log
            await self._crashed(err)
            raise

    async def _refuse(self, why: str) -> None:
        """The request cannot be carried out as asked (no release is made)."""
        await self.progress.say(why, final=True, ok=False, refused=True)

    async def _build(
        self, project: ProjectSpec, found: list[Release], taken: Callable[[], Awaitable[None]]
    ) -> Release | None:
        if project.git_repo is None:
            await self._refuse(f"{project.name} has no git_repo to deploy from")
            return None
        try:
            cache = self._cache(project, project.git_repo)
        except GitError as err:
            await self._refuse(str(err))
            return None
        await self.progress.say(f"fetching {cache.url}")
        try:
            await cache.fetch()
            sha = self.request.sha or await cache.commit_of(self.request.ref)
            if self.request.sha:
                await cache.commit_of(sha)
        except GitError as err:
            await self._refuse(str(err))
            return None
        release = await self._new(project, found, sha=sha, status=ReleaseStatus.BUILDING)
        await taken()
        await self.progress.say(f"release {release.number} of {project.name} {self.env}: "
                                f"building {sha[:12]}", number=release.number)  # fmt: skip
        earlier = [a for r in await releases_of(self.ctx.store, project.name) for a in r.artifacts]
        work = self.ctx.work / "build" / f"{project.name}-{release.number}"
        try:
            artifacts, output = await build_release(
                self.ctx.store, self.ctx.runtime, cache, project, sha, earlier, work,
                self.progress.say,
            )  # fmt: skip
        except (BuildFailed, GitError) as err:
            output = getattr(err, "log", "")
            tail = "\n".join(output.strip().splitlines()[-LOG_TAIL_LINES:])
            failed = dataclasses.replace(
                release,
                status=ReleaseStatus.FAILED,
                detail=f"{err}\n{tail}".strip(),
                log=await keep_log(self.ctx.store, release, f"{output}\n{err}", work),
            )
            failed = await self.records.save(failed)
            await self.ctx.store.record("release_failed", self.ctx.droplet,
                                        f"{project.name}.{self.env}", release_data(failed),
                                        self.ctx.term.fence)  # fmt: skip
            await self.progress.say(f"build failed: {err}", final=True, ok=False,
                                    number=release.number)  # fmt: skip
            await self._alert(f"Build of {project.name} {self.env} failed",
                              {"release": str(release.number), "why": str(err)})  # fmt: skip
            return None
        log_name = await keep_log(self.ctx.store, release, output, work)
        return await self.records.save(
            dataclasses.replace(release, artifacts=artifacts, log=log_name)
        )

    async def _release_command(self, project: ProjectSpec, release: Release) -> bool:
        """Run the project's release command before the cut-over; False: it failed, and so
        did the release (the environment's target is untouched: the old release serves)."""
        ctx = self.ctx
        try:
            await run_release_command(
                ctx.store, ctx.view, ctx.term, project, release, self.progress.say
            )
        except ReleaseCommandFailed as err:
            await self._release_command_failed(project, release, err)
            return False
        return True

    async def _release_command_failed(
        self, project: ProjectSpec, release: Release, err: ReleaseCommandFailed
    ) -> None:
        """Failed like a failed build: recorded with the output's tail, told, alerted."""
        ctx = self.ctx
        failed = await self.records.save(
            dataclasses.replace(release, status=ReleaseStatus.FAILED, detail=err.detail)
        )
        # Its output stays in the release's detail (it may show secrets): not in the event,
        # the progress lines (the builder's log repeats them) or the alert.
        data = {**release_data(failed), "detail": err.reason}
        await ctx.store.record("release_failed", ctx.droplet, f"{project.name}.{self.env}",
                               data, ctx.term.fence)  # fmt: skip
        await self.progress.say(f"release {release.number} failed: {err.reason}; the previous "
                                "release keeps serving (its output: meshctl releases "
                                f"{project.name} {self.env})", final=True, ok=False,
                                number=release.number)  # fmt: skip
        await self._alert(f"Release command of {project.name} {self.env} failed",
                          {"release": str(release.number), "why": err.reason})  # fmt: skip

    async def _reuse(
        self, project: ProjectSpec, found: list[Release], taken: Callable[[], Awaitable[None]]
    ) -> Release | None:
        source: Release | None
        try:
            if self.request.action is DeployAction.PROMOTE:
                uat = await releases_of(self.ctx.store, project.name, "uat")
                source = promotion_source(uat, self.request.release)
            else:
                targets = await release_targets(self.ctx.store)
                current = targets.get((project.name, self.env))
                source = rollback_source(found, current.number if current else 0,
                                         self.request.release)  # fmt: skip
        except ReleaseChoiceError as err:
            await self._refuse(str(err))
            return None
        if source is None:  # back to what publish runs: a release without artifacts
            release = await self._new(project, found, sha="", ref="",
                                      status=ReleaseStatus.ROLLING)  # fmt: skip
            await taken()
            await self.progress.say(f"release {release.number} of {project.name} {self.env}: "
                                    "back to what publish runs (no release went live before)",
                                    number=release.number)  # fmt: skip
            return release
        stored = await self.ctx.store.object_names(subjects.ARTIFACTS_STORE)
        gone = sorted({a.service for a in source.artifacts if a.digest not in stored})
        if gone:
            await self._refuse(f"the artifacts of release {source.number} are gone "
                               f"({', '.join(gone)}); deploy it anew")  # fmt: skip
            return None
        release = await self._new(
            project, found, sha=source.sha, status=ReleaseStatus.ROLLING,
            ref=source.ref, artifacts=source.artifacts, from_release=source.number,
            tag=source.tag,
        )  # fmt: skip
        await taken()
        what = "promoting UAT" if self.request.action is DeployAction.PROMOTE else "rolling back to"
        await self.progress.say(f"release {release.number} of {project.name} {self.env}: "
                                f"{what} release {source.number} (no build)",
                                number=release.number)  # fmt: skip
        return release

    async def _new(self, project: ProjectSpec, found: list[Release], **values: Any) -> Release:
        now = time.time()
        fields = {
            "project": project.name,
            "env": self.env,
            "number": next_number(found),
            "action": self.request.action
            if self.request.action is not DeployAction.PUSH
            else DeployAction.DEPLOY,
            "ref": self.request.ref,
            "requested_by": self.request.requested_by,
            "created_at": now,
            "updated_at": now,
            "request_id": self.request.request_id or uuid.uuid4().hex,
            "config_digest": config_digest(project.to_data()),
            **values,
        }
        return await self.records.save(Release(**fields))

    def _cache(self, project: ProjectSpec, git_repo: str) -> GitCache:
        ctx = self.ctx
        url, env = repository_of(
            git_repo, project.name, ctx.droplet, ctx.view, ctx.droplet_dir, ctx.key
        )
        return GitCache(self.ctx.work / "git" / f"{project.name}.git", url, env)

    async def _tag(self, project: ProjectSpec, release: Release) -> Release:
        versioning = versioning_from_config(project.versioning)
        if not versioning.auto_tag_uat or project.git_repo is None:
            return release
        try:
            cache = self._cache(project, project.git_repo)
        except GitError as err:
            await self.progress.say(f"tag not pushed ({err})")
            return release
        for attempt in range(1, TAG_ATTEMPTS + 1):
            try:
                with contextlib.suppress(GitError):
                    await cache.fetch()  # tags pushed since the build count
                tag = release.tag or next_uat_tag(await cache.tags(), time.time(), versioning)
                release = await self.records.save(dataclasses.replace(release, tag=tag))
                await cache.tag_and_push(tag, release.sha, f"UAT release {release.number}")
            except GitError as err:
                await self.progress.say(f"tag {release.tag} not pushed yet ({err}); "
                                        f"attempt {attempt} of {TAG_ATTEMPTS}")  # fmt: skip
                await self.ctx.store.record("tag_push_failed", self.ctx.droplet,
                                            f"{project.name}.uat", {"error": str(err)},
                                            self.ctx.term.fence)  # fmt: skip
                await asyncio.sleep(TAG_RETRY_S * attempt)
                continue
            await self.progress.say(f"tagged {release.sha[:12]} {tag}")
            return await self.records.save(dataclasses.replace(release, tag_pushed=True))
        return release

    async def _retain(self) -> None:
        state = self.ctx.view.state
        projects = [p.name for p in state.projects] if state else []
        running = {a.artifact for a in self.ctx.view.allocations.values() if a.artifact}
        try:
            await delete_unkept(self.ctx.store, projects, running, self.ctx.term, self.ctx.droplet)
        except StoreUnavailable as err:
            log.info("Artifact retention postponed. error=%s", err)

    async def _crashed(self, err: Exception) -> None:
        """The release cannot go on (the store refused, a bug): failed, and said so."""
        last = self.records.last
        with contextlib.suppress(Exception):
            if last is not None and not last.status.finished:
                if last.status is ReleaseStatus.ROLLING:
                    await self._restore_target(last)
                failed = dataclasses.replace(last, status=ReleaseStatus.FAILED, detail=str(err))
                await self.records.save(failed)
        with contextlib.suppress(Exception):
            number = last.number if last else 0
            await self.progress.say(f"failed: {err}", final=True, ok=False, number=number)

    async def _cancelled(self, release: Release) -> None:
        with contextlib.suppress(Exception):
            if release.status is ReleaseStatus.ROLLING:
                await self._restore_target(release)
            await self.records.save(dataclasses.replace(release, status=ReleaseStatus.CANCELLED))
            await self.progress.say(f"release {release.number} cancelled", final=True, ok=False)

    async def _restore_target(self, release: Release) -> None:
        """Back to the newest live release of the environment before `release` (or none)."""
        found = await releases_of(self.ctx.store, release.project, release.env)
        live = [r for r in found if r.status is ReleaseStatus.LIVE and r.number < release.number]
        key = subjects.release_target_key(release.project, release.env)
        entry = await self.ctx.store.get(subjects.DESIRED_BUCKET, key)
        if entry is None:
            return
        self.ctx.term.ensure_held()
        if not live:
            await self.ctx.store.delete(subjects.DESIRED_BUCKET, key, last=entry.revision)
            return
        newest = max(live, key=lambda r: r.number)
        target = ReleaseTarget(project=release.project, env=release.env, number=newest.number,
                               artifacts=newest.artifacts, fence=self.ctx.term.fence)  # fmt: skip
        await self.ctx.store.update(subjects.DESIRED_BUCKET, key, encode(target),
                                    last=entry.revision)  # fmt: skip

    async def _alert(self, what: str, details: dict[str, str]) -> None:
        origin = (self.ctx.mesh, self.ctx.droplet, self.ctx.term.fence)
        await queue_critical(self.ctx.store, self.ctx.view.notify, what, details, origin)

    @staticmethod
    async def resume_unfinished(ctx: JobContext) -> None:
        """Releases a previous builder left building or rolling: failed, their target undone."""
        try:
            await Job._fail_unfinished(ctx)
        except StoreUnavailable as err:  # the next term tries again
            log.warning("Unfinished releases not checked. error=%s", err)

    @staticmethod
    async def _fail_unfinished(ctx: JobContext) -> None:
        for project in ctx.view.state.projects if ctx.view.state else ():
            for release in await releases_of(ctx.store, project.name):
                if release.status.finished or release.fence == ctx.term.fence:
                    continue
                key = subjects.release_key(release.project, release.env, release.number)
                entry = await ctx.store.get(subjects.RELEASES_BUCKET, key)
                if entry is None:
                    continue
                job = Job(ctx, _request_of(release), release.env)
                job.records.adopt(release, entry.revision)
                if release.status is ReleaseStatus.ROLLING:
                    await job._restore_target(release)
                failed = dataclasses.replace(
                    release, status=ReleaseStatus.FAILED,
                    detail="interrupted: the builder moved to another droplet; deploy again",
                )  # fmt: skip
                await job.records.save(failed)


def _request_of(release: Release) -> DeployRequest:
    return DeployRequest(
        project=release.project, action=release.action, env=release.env, ref=release.ref,
        sha=release.sha, requested_by=release.requested_by, requested_at=release.created_at,
        request_id=release.request_id,
    )  # fmt: skip
