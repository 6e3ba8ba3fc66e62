"""One-off commands run here for `meshctl exec` (docs/exec.md, protocol.oneoff): the agent
of a droplet that runs the service runs the command as the service's instance here runs (its
allocation, artifact, environment and secret files: `Runtime.run_once`), beside it, and sends
what it writes as it comes, then how it ended. A message on the request's cancel subject, or
the agent stopping, kills it.

The event `oneoff_ran` says who ran what program (the command's first word only: the rest
may hold a secret) with which exit code, never its output, which goes only to the one who
asked.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
import time
from typing import Any

from meshd.agent.asked import Asked
from meshd.agent.reconciler import Reconciler
from meshd.agent.store import Received, Store
from plugins.runtimes import OneOffTimeout
from protocol import subjects
from protocol.codec import decode, encode
from protocol.errors import MeshError, ProtocolError
from protocol.oneoff import OneOffEnd, OneOffRequest, OneOffStarted

log = logging.getLogger(__name__)
MAX_RUNNING = 4  # one-offs at once on a droplet: each is a process or a container


class OneOffs:
    """Answers `meshctl exec`'s requests on this droplet."""

    def __init__(self, store: Store, reconciler: Reconciler, droplet: str) -> None:
        self.store = store
        self.reconciler = reconciler
        self.droplet = droplet
        self._asked_for = Asked(store)

    async def run(self) -> None:
        await self._asked_for.serve({subjects.oneoff(self.droplet): self._asked})

    async def _asked(self, message: Received) -> None:
        try:
            request = decode(message.data, OneOffRequest)
        except ProtocolError as err:
            await message.respond(encode(OneOffStarted(error=f"unreadable request: {err}")))
            return
        error = self._refusal(request)
        if error is not None:
            await message.respond(encode(OneOffStarted(error=error)))
            return
        self._asked_for.start(self._carry_out(request, message), "oneoff")

    def _refusal(self, request: OneOffRequest) -> str | None:
        key = subjects.alloc_key(request.project, request.env, request.service)
        if key not in self.reconciler.allocations:
            return f"{key} does not run on {self.droplet}"
        if len(self._asked_for.tasks) >= MAX_RUNNING:
            return f"{MAX_RUNNING} one-off commands already run on {self.droplet}; try again"
        return None  # a command that cannot be parsed is the runtime's to say (`run_once`)

    async def _carry_out(self, request: OneOffRequest, asked: Received) -> None:
        runner: asyncio.Task[OneOffEnd] | None = None
        cancelled = asyncio.Event()

        async def cancel(_: Received) -> None:
            cancelled.set()
            if runner is not None:
                runner.cancel()

        # Listened to before the answer: a Ctrl-C right after it must not find nobody.
        stop = await self.store.subscribe(f"{request.output}.cancel", cancel)
        started = time.monotonic()
        try:
            await asked.respond(encode(OneOffStarted()))
            runner = asyncio.create_task(self._run(request))
            if cancelled.is_set():
                runner.cancel()
            end = await runner
        except asyncio.CancelledError:
            if not cancelled.is_set():
                raise  # the agent stops: the one-off goes with it
            end = OneOffEnd(error="cancelled", seconds=round(time.monotonic() - started, 2))
        finally:
            await stop.unsubscribe()
        await self.store.publish(f"{request.output}.end", encode(end))
        key = subjects.alloc_key(request.project, request.env, request.service)
        detail: dict[str, Any] = {"program": _program(request.command),
                                  "exit_code": end.exit_code, "seconds": end.seconds}  # fmt: skip
        if end.error is not None:
            detail["error"] = end.error
        log.info("One-off ran. service=%s by=%s %s", key, request.requested_by, detail)
        self.store.record_soon("oneoff_ran", request.requested_by, key, detail | {
            "droplet": self.droplet})  # fmt: skip

    async def _run(self, request: OneOffRequest) -> OneOffEnd:
        key = subjects.alloc_key(request.project, request.env, request.service)
        allocation = self.reconciler.allocations.get(key)
        if allocation is None:
            return OneOffEnd(error=f"{key} no longer runs on {self.droplet}")
        out = f"{request.output}.out"

        async def send(chunk: bytes) -> None:
            await self.store.publish(out, chunk)

        started = time.monotonic()
        try:
            spec = self.reconciler.spec(allocation)
            async with asyncio.timeout(request.timeout):
                await self.reconciler.artifacts.ensure(key, allocation)
            left = max(request.timeout - (time.monotonic() - started), 1.0)
            code, _ = await self.reconciler.runtime.run_once(spec, request.command, left, send)
        except TimeoutError:
            return OneOffEnd(error=f"artifact not loaded within {request.timeout:g} s")
        except OneOffTimeout:
            took = round(time.monotonic() - started, 2)
            return OneOffEnd(error=f"killed after {request.timeout:g} s", seconds=took)
        except (MeshError, LookupError) as err:  # not ready, no secret, cannot start
            return OneOffEnd(error=str(getattr(err, "reason", err)))
        return OneOffEnd(exit_code=code, seconds=round(time.monotonic() - started, 2))


def _program(command: str) -> str:
    """The command's first word: all an event may say of it."""
    try:
        return next(iter(shlex.split(command)), "")
    except ValueError:
        return ""
