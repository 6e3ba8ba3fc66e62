"""Droplet actions polled to their end: DigitalOcean answers an action at once `in-progress`
and does it later; it refuses a second one while the first runs ("already has a pending
event"), which is waited out here, not reported."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from plugins.providers import ProviderError
from plugins.providers.digitalocean.api import Api, Operation, Refused, Uncertain

POLL_S = 2.0
TIMEOUT_S = 900.0


@dataclass(frozen=True, slots=True)
class Pace:
    """How the provider waits: poll every `poll_s` (growing to `poll_max_s`), give an action
    `timeout_s` in all."""

    poll_s: float = POLL_S
    poll_max_s: float = 10.0
    timeout_s: float = TIMEOUT_S
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    clock: Callable[[], float] = time.monotonic


async def settle(api: Api, action_id: int, what: str, pace: Pace) -> dict[str, Any]:
    """Poll the action until it is `completed`; ProviderError when it errors or times out."""
    deadline = pace.clock() + pace.timeout_s
    interval = pace.poll_s
    while True:
        found = await api.read(what, lambda **kw: api.do.actions.get(action_id, **kw))
        action: dict[str, Any] = found.get("action") or {}
        status = action.get("status")
        if status == "completed":
            return action
        if status == "errored":
            raise ProviderError(what, f"DigitalOcean's action {action_id} errored")
        if pace.clock() > deadline:
            raise ProviderError(
                what, f"action {action_id} still {status} after {pace.timeout_s:.0f} s"
            )
        await pace.sleep(interval)
        interval = min(pace.poll_max_s, interval * 1.5)


async def act(api: Api, droplet_id: int, body: dict[str, Any], what: str, pace: Pace) -> None:
    """Start the droplet action and wait for its end (see `start_and_settle`)."""
    await start_and_settle(
        api, lambda **kw: api.do.droplet_actions.post(droplet_id, body, **kw), what, pace
    )


async def start_and_settle(api: Api, post: Operation, what: str, pace: Pace) -> dict[str, Any]:
    """Start an action with `post` and wait for its end. A pending event is waited out; an
    action whose answer was lost is sent again (the ones used here can be: a second one is
    refused as pending, or finds the work done)."""
    deadline = pace.clock() + pace.timeout_s
    interval = pace.poll_s
    while True:
        try:
            answer = await api.change(what, post)
        except Refused as err:
            if not err.pending_event or pace.clock() > deadline:
                raise
        except Uncertain:
            if pace.clock() > deadline:
                raise
        else:
            if "action" not in answer:  # a 404 that pydo hands back as a dict
                raise Refused(what, 404, str(answer.get("id")), str(answer.get("message")))
            return await settle(api, int(answer["action"]["id"]), what, pace)
        await pace.sleep(interval)
        interval = min(pace.poll_max_s, interval * 1.5)
