"""The stand-in's state: one account's resources as the API shows them, the actions under way
on the stand-in's clock, and the knobs and faults tests turn.

Resources are kept in the API's own shapes (plain dicts, what a GET returns), so a response
is a copy of a record; what the API does not show (a droplet's user data, when it was made)
lives beside them in `DropletFacts`. Actions run in two halves: `start` answers at once with
an `in-progress` action; when the clock reaches its due time, its `finish` does the work on
the machines and the action becomes `completed` (or `errored` with what failed).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import uuid
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from typing import Any

from sim.digitalocean import catalog
from sim.digitalocean.clock import Clock
from sim.digitalocean.limits import RateLimiter
from sim.digitalocean.machines import MachineError, Machines

log = logging.getLogger(__name__)
TICK_S = 0.02
_COMPLETING: ContextVar[float | None] = ContextVar("completing", default=None)
Finish = Callable[[], Awaitable[None]]


@dataclass(slots=True)
class Delays:
    """Seconds of the stand-in's time each kind of action takes (speed 1: as measured on
    DigitalOcean, see docs/testing.md)."""

    create: float = 45.0
    power_off: float = 8.0
    shutdown: float = 10.0
    power_on: float = 20.0
    reboot: float = 25.0
    snapshot_per_gb: float = 90.0
    snapshot_min: float = 10.0
    rebuild: float = 60.0
    rebuild_per_gb: float = 30.0
    resize_per_gb: float = 60.0
    resize_min: float = 10.0
    volume: float = 10.0
    reserved_ip: float = 10.0
    quick: float = 2.0  # rename, enable_ipv6 and the like


@dataclass(slots=True)
class Knobs:
    """DigitalOcean's eventual consistency, in seconds of the stand-in's time."""

    get_404_after_create: float = 0.0  # GET /droplets/{id} says not_found this long
    list_lag: float = 0.0  # lists leave out droplets younger than this
    active_after_off: float = 3.0  # a completed power_off still reads `active` this long
    droplet_limit: int = 25


@dataclass(slots=True)
class Faults:
    """Failures on demand: shares of requests (0-1) answered with a server error before
    anything is done, done and then answered with an error (the answer is lost), or held
    `timeout_s` real seconds and then dropped; and actions of given types that error."""

    error_rate: float = 0.0
    error_status: int = 503
    lost_rate: float = 0.0
    timeout_rate: float = 0.0
    timeout_s: float = 30.0
    path_contains: str = ""  # only requests whose path contains this ("" = all)
    method: str = ""  # only requests of this method ("" = all)
    action_errors: dict[str, int] = field(default_factory=dict)  # type → how many to error

    def applies(self, method: str, path: str) -> bool:
        return (
            path.startswith("/v2/")
            and self.path_contains in path
            and self.method.upper() in ("", method.upper())
        )

    def draw(self, rate: float) -> bool:
        return rate > 0 and random.random() < rate


@dataclass(slots=True)
class DropletFacts:
    """What the stand-in knows of a droplet that its API document does not show."""

    created: float
    user_data: str | None
    public_keys: tuple[str, ...]
    used_gb: float


@dataclass(slots=True)
class Pending:
    action: dict[str, Any] | None
    due: float
    finish: Finish | None
    after: Callable[[], None] | None = None  # bookkeeping once finish is done (or failed)
    task: asyncio.Task[None] | None = None


class World:
    def __init__(self, clock: Clock, machines: Machines, token: str) -> None:
        self.clock = clock
        self.machines = machines
        self.token = token
        self.delays = Delays()
        self.knobs = Knobs()
        self.faults = Faults()
        self.limiter = RateLimiter()
        self.account_uuid = str(uuid.uuid4())
        self.inside_url: str | None = None  # where droplets reach the API (on their bridges)
        self.droplets: dict[int, dict[str, Any]] = {}
        self.facts: dict[int, DropletFacts] = {}
        self.actions: dict[int, dict[str, Any]] = {}
        self.ssh_keys: dict[int, dict[str, Any]] = {}
        self.snapshots: dict[str, dict[str, Any]] = {}  # droplet and volume snapshots
        self.tags: dict[str, dict[str, Any]] = {}
        self.firewalls: dict[str, dict[str, Any]] = {}
        self.reserved_ips: dict[str, dict[str, Any]] = {}
        self.volumes: dict[str, dict[str, Any]] = {}
        self.vpcs: dict[str, dict[str, Any]] = {}
        self._ids = {
            kind: itertools.count(start)
            for kind, start in (
                ("droplet", 500000001),
                ("action", 2000000001),
                ("ssh_key", 40000001),
                ("image", 160000001),
            )
        }
        self._pending: list[Pending] = []
        self._ticker: asyncio.Task[None] | None = None

    def next_id(self, kind: str) -> int:
        return next(self._ids[kind])

    # The clock's work -------------------------------------------------------------------

    def start_ticking(self) -> None:
        self._ticker = asyncio.get_running_loop().create_task(self._tick_forever())

    async def stop_ticking(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        for pending in self._pending:
            if pending.task is not None:
                pending.task.cancel()

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            now = self.clock.now()
            for pending in [p for p in self._pending if p.task is None and p.due <= now]:
                pending.task = asyncio.get_running_loop().create_task(self._complete(pending))

    async def _complete(self, pending: Pending) -> None:
        # Its own task: what its finish schedules counts from its due time, not from when
        # the ticker noticed (a test that jumps the clock would see follow-ups late).
        _COMPLETING.set(pending.due)
        began = self.clock.now()
        action = pending.action
        failure = ""
        kind = action["type"] if action is not None else ""
        if self.faults.action_errors.get(kind, 0) > 0:
            self.faults.action_errors[kind] -= 1
            failure = "injected fault"
        elif pending.finish is not None:
            try:
                await pending.finish()
            except MachineError as err:
                failure = str(err)
            except Exception:
                log.exception("action %s failed", kind)
                failure = "internal error"
        if action is not None:
            action["status"] = "errored" if failure else "completed"
            # Due time plus what the machine's work took on the stand-in's clock.
            action["completed_at"] = self.clock.stamp(pending.due + self.clock.now() - began)
            if failure:
                log.warning("action %s %s errored: %s", action["id"], kind, failure)
        if pending.after is not None:
            pending.after()
        self._pending.remove(pending)

    def later(self, seconds: float, work: Callable[[], None]) -> None:
        """Bookkeeping `seconds` from now (from its due time, when an action's finish asks)
        on the stand-in's clock, without an action."""
        base = _COMPLETING.get()
        start = self.clock.now() if base is None else base
        self._pending.append(Pending(None, start + seconds, None, after=work))

    def start_action(
        self,
        kind: str,
        resource_type: str,
        resource_id: int | None,
        region: str | None,
        seconds: float,
        finish: Finish | None = None,
        after: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        """An `in-progress` action, due `seconds` from now; `finish` then does its work."""
        action_id = self.next_id("action")
        action: dict[str, Any] = {
            "id": action_id,
            "status": "in-progress",
            "type": kind,
            "started_at": self.clock.stamp(),
            "completed_at": None,
            "resource_id": resource_id,
            "resource_type": resource_type,
            "region": catalog.region_document(region or "nyc3"),
            "region_slug": region,
        }
        self.actions[action_id] = action
        self._pending.append(Pending(action, self.clock.now() + seconds, finish, after))
        return action

    def actions_on(self, resource_type: str, resource_id: int) -> list[dict[str, Any]]:
        return [
            a
            for a in self.actions.values()
            if a["resource_type"] == resource_type and a["resource_id"] == resource_id
        ]

    def running(self, action_ids: list[int]) -> bool:
        """Whether one of these actions is still in progress (volumes and reserved IPs keep
        their own: their actions carry no resource id)."""
        return any(self.actions[a]["status"] == "in-progress" for a in action_ids)

    def busy(self, resource_type: str, resource_id: int | str) -> bool:
        return any(
            p.action is not None
            and p.action["resource_type"] == resource_type
            and p.action["resource_id"] == resource_id
            for p in self._pending
        )

    # Control -------------------------------------------------------------------------------

    def settings(self) -> dict[str, Any]:
        return {
            "speed": self.clock.speed,
            "now": self.clock.stamp(),
            "delays": asdict(self.delays),
            "knobs": asdict(self.knobs),
            "faults": asdict(self.faults),
            "limits": asdict(self.limiter.limits),
            "metadata_url": self.machines.metadata_url,
            "inside_url": self.inside_url,
            "networks": asdict(self.machines.networks),
        }

    def change(self, settings: dict[str, Any]) -> None:
        """Apply a control request: `speed`, `advance` (seconds), and any field of `delays`,
        `knobs`, `faults` and `limits`; an unknown name raises ValueError."""
        for name, value in settings.items():
            if name == "speed":
                self.clock.set_speed(float(value))
            elif name == "advance":
                self.clock.advance(float(value))
            elif name in ("delays", "knobs", "faults", "limits"):
                target = self.limiter.limits if name == "limits" else getattr(self, name)
                for key, item in dict(value).items():
                    if not hasattr(target, key):
                        raise ValueError(f"{name} has no field {key!r}")
                    setattr(target, key, item)
            else:
                raise ValueError(f"unknown setting {name!r}")
