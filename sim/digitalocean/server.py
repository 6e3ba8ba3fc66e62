"""The stand-in's HTTP server: every `/v2` request passes the gate (token, rate limits,
faults, the API description) before its handler, and every answer leaves with the rate-limit
headers; `/_sim/...` is the control endpoint for tests (not part of DigitalOcean's API).

Requests that the description refuses are answered in the API's error shape (422 for a
body, 400 for parameters, 404 for a path) and counted. With `check_responses`, every answer
is checked against the description too, and what it refuses is kept as a violation: tests
assert there is none.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from multidict import CIMultiDict, MultiDict

from sim.digitalocean import (
    droplet_actions,
    droplets,
    firewalls,
    images,
    keys,
    networking,
    tags,
    volumes,
)
from sim.digitalocean.http import JSON_BODY, WORLD, ApiError, reply
from sim.digitalocean.spec import Request, Response, SpecChecker
from sim.digitalocean.tags import root_cause_error
from sim.digitalocean.world import World

log = logging.getLogger(__name__)
LOG_KEPT = 10000
NOWHERE = "no such operation"  # an answer the description has nothing to say about
REFUSALS = {
    "path": (404, "not_found"),
    "operation": (405, "method_not_allowed"),
    "parameter": (400, "bad_request"),
    "body": (422, "unprocessable_entity"),
    "security": (401, "unauthorized"),
    "other": (400, "bad_request"),
}


@dataclass(slots=True)
class Ledger:
    """What the gate saw: the request log, refused requests, answers the description refuses."""

    requests: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=LOG_KEPT))
    counted: int = 0
    invalid: list[dict[str, Any]] = field(default_factory=list)
    violations: list[dict[str, Any]] = field(default_factory=list)


@dataclass(slots=True)
class Gate:
    spec: SpecChecker
    ready: asyncio.Event
    check_responses: bool
    ledger: Ledger = field(default_factory=Ledger)
    failure: str = ""  # why the description or the machines could not start


GATE: web.AppKey[Gate] = web.AppKey("gate")
PREPARING: web.AppKey[asyncio.Task[None]] = web.AppKey("preparing")


def make_app(
    world: World, check_responses: bool = False, spec: SpecChecker | None = None
) -> web.Application:
    """The API and its control endpoint. The description loads (and the machines start) in
    the background once the server runs; `/v2` requests wait for both."""
    app = web.Application(middlewares=[gate], client_max_size=2 * 1024 * 1024)
    app[WORLD] = world
    app[GATE] = Gate(spec or SpecChecker(), asyncio.Event(), check_responses)
    for module in (keys, droplets, droplet_actions, firewalls, images, networking, tags, volumes):
        app.add_routes(module.routes)
    app.add_routes(control)
    app.on_startup.append(_start)
    app.on_cleanup.append(_stop)
    return app


async def _start(app: web.Application) -> None:
    async def prepare() -> None:
        gate = app[GATE]
        try:
            if not gate.spec.loaded:
                await asyncio.to_thread(gate.spec.load)
            await app[WORLD].machines.start()
        except Exception as err:
            log.exception("the stand-in cannot start")
            gate.failure = f"{type(err).__name__}: {err}"
        gate.ready.set()

    app[PREPARING] = asyncio.get_running_loop().create_task(prepare())
    app[WORLD].start_ticking()


async def _stop(app: web.Application) -> None:
    world = app[WORLD]
    await world.stop_ticking()
    await world.machines.close()


@web.middleware
async def gate(request: web.Request, handler: Any) -> web.StreamResponse:
    if not request.path.startswith("/v2"):
        return await handler(request)  # type: ignore[no-any-return]
    started = time.monotonic()
    world = request.app[WORLD]
    checks = request.app[GATE]
    body = await request.read() if request.can_read_body else None
    response, note = await _answer(request, handler, body)
    if response.status not in (401, 429):
        headers = world.limiter.headers_for(world.token, time.time())
        response.headers.update(headers)
    checkable = note != NOWHERE and isinstance(response, web.Response)
    if checks.check_responses and checks.ready.is_set() and checkable:
        _check_response(checks, request, body, response)
    checks.ledger.counted += 1
    checks.ledger.requests.append(
        {
            "n": checks.ledger.counted,
            "at": time.time(),
            "method": request.method,
            "path": request.path,
            "query": request.query_string,
            "status": response.status,
            "ms": round((time.monotonic() - started) * 1000, 1),
            **({"note": note} if note else {}),
        }
    )
    return response


async def _answer(
    request: web.Request, handler: Any, body: bytes | None
) -> tuple[web.Response, str]:
    world = request.app[WORLD]
    checks = request.app[GATE]
    if request.headers.get("Authorization", "") != f"Bearer {world.token}":
        return reply({"id": "Unauthorized", "message": "Unable to authenticate you"}, 401), ""
    lists_keys = request.method == "GET" and request.path.rstrip("/") == "/v2/account/keys"
    verdict = world.limiter.check(world.token, time.time(), lists_keys)
    if not verdict.allowed:
        refused = reply({"id": "too_many_requests", "message": verdict.message}, 429)
        refused.headers.update(verdict.headers)
        return refused, "rate limited"
    faults = world.faults
    if faults.applies(request.method, request.path):
        if faults.draw(faults.error_rate):
            return _server_error(faults.error_status), "injected error"
        if faults.draw(faults.timeout_rate):
            await asyncio.sleep(faults.timeout_s)
            return _server_error(504), "injected timeout"
    await asyncio.wait_for(checks.ready.wait(), timeout=60)
    if checks.failure:
        return _server_error(503), checks.failure
    if body:
        try:
            request[JSON_BODY] = json.loads(body)
        except ValueError:
            return _bad_request(request, "The body is not JSON."), "bad json"
    refusal = checks.spec.request_error(_spec_request(request, body))
    if refusal is not None:
        status, error_id = REFUSALS[refusal.part]
        checks.ledger.invalid.append(
            {"method": request.method, "path": request.path, "reason": refusal.reason}
        )
        if refusal.part in ("path", "operation"):
            return reply({"id": error_id, "message": "Not found."}, status), NOWHERE
        if status == 400:
            return _bad_request(request, refusal.reason), "invalid"
        return reply({"id": error_id, "message": refusal.reason}, status), "invalid"
    try:
        response: web.Response = await handler(request)
    except ApiError as err:
        return err.response(), err.message
    if faults.applies(request.method, request.path) and faults.draw(faults.lost_rate):
        return _server_error(faults.error_status), "done, answer lost"
    return response, ""


def _bad_request(request: web.Request, message: str) -> web.Response:
    """400 in the operation's own shape (the description says which differ)."""
    where = (request.method, request.path.rstrip("/"))
    if where in request.app[GATE].spec.root_cause_400s:
        return root_cause_error(message)
    return reply({"id": "bad_request", "message": message}, 400)


def _server_error(status: int) -> web.Response:
    return reply({"id": "server_error", "message": "Unexpected server-side error"}, status)


def _spec_request(request: web.Request, body: bytes | None) -> Request:
    return Request(
        request.method,
        request.path,
        MultiDict(request.query),
        CIMultiDict(request.headers),
        body or None,
    )


def _check_response(
    checks: Gate, request: web.Request, body: bytes | None, response: web.Response
) -> None:
    data = response.body if isinstance(response.body, bytes) else b""
    answer = Response(response.status, data, CIMultiDict(response.headers))
    error = checks.spec.response_error(_spec_request(request, body), answer)
    if error is not None:
        log.error("the description refuses the answer to %s %s: %s", request.method,
                  request.path, error)  # fmt: skip
        checks.ledger.violations.append(
            {"method": request.method, "path": request.path, "status": response.status,
             "error": error}
        )  # fmt: skip


# Control ------------------------------------------------------------------------------------

control = web.RouteTableDef()


@control.get("/_sim")
async def settings(request: web.Request) -> web.Response:
    world = request.app[WORLD]
    ledger = request.app[GATE].ledger
    return reply(
        {
            **world.settings(),
            "ready": request.app[GATE].ready.is_set(),
            "failure": request.app[GATE].failure,
            "requests": ledger.counted,
            "invalid": len(ledger.invalid),
            "violations": len(ledger.violations),
        }
    )


@control.post("/_sim")
async def change(request: web.Request) -> web.Response:
    """Change the clock, delays, knobs, faults or limits: `{"speed": 20, "faults": {...}}`;
    `{"reset_limits": true}` forgets the requests counted so far."""
    world = request.app[WORLD]
    try:
        settings_ = await request.json()
        if settings_.pop("reset_limits", False):
            world.limiter.reset()
        world.change(settings_)
    except (ValueError, TypeError, AttributeError) as err:
        return reply({"id": "bad_request", "message": str(err)}, 400)
    return reply(world.settings())


@control.get("/_sim/requests")
async def requests_seen(request: web.Request) -> web.Response:
    since = int(request.query.get("since", 0))
    ledger = request.app[GATE].ledger
    return reply({"requests": [r for r in ledger.requests if r["n"] > since]})


@control.get("/_sim/invalid")
async def invalid(request: web.Request) -> web.Response:
    return reply({"invalid": request.app[GATE].ledger.invalid})


@control.get("/_sim/violations")
async def violations(request: web.Request) -> web.Response:
    return reply({"violations": request.app[GATE].ledger.violations})
