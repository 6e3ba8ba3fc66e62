"""Release commands run on this droplet (docs/deploys.md, "Release command").

Before a release rolls out, the builder asks the agent of a droplet that runs the project's
`release_service` to run the project's release command once (a core NATS request on
`mesh.release.<droplet>`, `ReleaseCommandRequest`). The agent runs it as its instance of that
service would run the release: its allocation here with the release's artifact
(`meshd.core.releases.with_release`), the artifact fetched and loaded first as the reconciler
does, the instance's environment and secret files; then it answers (`ReleaseCommandAnswer`:
the exit code and the tail of the output). One command per project environment at a time.

The event `release_command_ran` says how it went (exit code, seconds, what went wrong around
it), never its output, which may show secrets: that goes only to the builder, which keeps the
tail of a failed one in the release's detail.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any

from meshd.agent.asked import Asked
from meshd.agent.reconciler import Reconciler
from meshd.agent.store import Received, Store
from meshd.core.releases import with_release
from plugins.runtimes import OneOffTimeout
from protocol import subjects
from protocol.codec import decode, encode
from protocol.errors import MeshError, ProtocolError
from protocol.releases import ReleaseCommandAnswer, ReleaseCommandRequest, ReleaseTarget

log = logging.getLogger(__name__)
Answer = ReleaseCommandAnswer


class ReleaseCommands:
    """Answers the builder's requests to run release commands on this droplet."""

    def __init__(self, store: Store, reconciler: Reconciler, droplet: str) -> None:
        self.store = store
        self.reconciler = reconciler
        self.droplet = droplet
        self._running: set[tuple[str, str]] = set()  # project environments
        self._asked_for = Asked(store)

    async def run(self) -> None:
        await self._asked_for.serve({subjects.release_command(self.droplet): self._asked})

    async def _asked(self, message: Received) -> None:
        self._asked_for.start(self._answer(message), "release-command")

    async def _answer(self, message: Received) -> None:
        try:
            request = decode(message.data, ReleaseCommandRequest)
        except ProtocolError as err:
            log.warning("Unreadable release command request. error=%s", err)
            await message.respond(encode(Answer(error=f"unreadable request: {err}")))
            return
        try:
            answer = await self.carry_out(request)
        except Exception as err:  # a bug: said at once, not left to the builder's timeout
            log.exception("Release command failed on a bug. project=%s", request.project)
            answer = Answer(error=f"failed: {err}")
        await message.respond(encode(answer))

    async def carry_out(self, request: ReleaseCommandRequest) -> ReleaseCommandAnswer:
        """Run the command of `request` once here; how it went."""
        environment = (request.project, request.env)
        if environment in self._running:
            return Answer(error=f"a release command of {' '.join(environment)} still runs on "
                                f"{self.droplet}")  # fmt: skip
        self._running.add(environment)
        try:
            answer = await self._run(request)
        finally:
            self._running.discard(environment)
        log.info(
            "Release command ran. project=%s env=%s release=%d exit_code=%s seconds=%.1f error=%s",
            request.project,
            request.env,
            request.release,
            answer.exit_code,
            answer.seconds,
            answer.error,
        )
        detail: dict[str, Any] = {"service": request.service, "release": request.release}
        detail |= {"exit_code": answer.exit_code, "seconds": answer.seconds}
        if answer.error is not None:
            detail["error"] = answer.error
        self.store.record_soon("release_command_ran", self.droplet, f"{request.project}."
                               f"{request.env}", detail, request.fence)  # fmt: skip
        return answer

    async def _run(self, request: ReleaseCommandRequest) -> ReleaseCommandAnswer:
        key = subjects.alloc_key(request.project, request.env, request.service)
        allocation = self.reconciler.allocations.get(key)
        if allocation is None:
            return Answer(error=f"{key} is not allocated to {self.droplet}")
        artifact = dataclasses.replace(request.artifact, service=request.service)
        target = ReleaseTarget(project=request.project, env=request.env, number=request.release,
                               artifacts=(artifact,), fence=request.fence)  # fmt: skip
        allocation = with_release(allocation, target)
        reconciler = self.reconciler
        deadline = time.monotonic() + request.timeout  # the artifact's fetch counts too
        started = time.monotonic()
        try:
            spec = reconciler.spec(allocation)
            async with asyncio.timeout(request.timeout):
                await reconciler.artifacts.ensure(key, allocation)
            started = time.monotonic()
            code, output = await reconciler.runtime.run_once(
                spec, request.command, max(deadline - started, 1.0)
            )
        except TimeoutError:
            return Answer(error=f"artifact not loaded within {request.timeout:g} s")
        except OneOffTimeout as err:
            took = round(time.monotonic() - started, 2)
            return Answer(
                output=err.output, error=f"killed after {request.timeout:g} s", seconds=took
            )
        except (MeshError, LookupError) as err:  # not ready, no secret, cannot start
            return Answer(error=str(getattr(err, "reason", err)))
        return Answer(exit_code=code, output=output, seconds=round(time.monotonic() - started, 2))
