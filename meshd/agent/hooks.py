"""Push webhooks from hosted repositories (GitHub, Gitea) on the agent's API: `POST
/_mesh/hooks/git/<project>`, which the entry point's nginx passes to its own droplet's agent
(docs/deploys.md, "Webhooks").

A delivery is verified with the project's `webhook_secret` (project scope; sealed to the
trusted droplets only, `meshd.core.secret_plan`) before anything in it is believed
(`meshd.core.webhooks`); a branch it pushed becomes a deploy request on `MESH_DEPLOY`, the
request the post-receive hook sends (`meshd.core.deploys.push_request`), which nobody follows.
A refused delivery publishes nothing; it is recorded as `webhook_refused`, at most once per
project every `REFUSED_EVERY_S` (a flood must not fill the events stream).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from meshd.agent.meshview import MeshView
from meshd.agent.store import Store, StoreUnavailable
from meshd.core.deploys import push_request
from meshd.core.secret_plan import PROJECT_WIDE, WEBHOOK_SECRET
from meshd.core.webhooks import (
    PUSH_EVENT,
    PayloadError,
    SignatureError,
    event_of,
    parse_push_payload,
    payload_of,
    verify_signature,
)
from plugins.secrets import Secrets
from protocol import subjects
from protocol.codec import encode

log = logging.getLogger(__name__)
ROUTE = "/_mesh/hooks/git/{project}"
MAX_BODY = 1024 * 1024  # GitHub caps a delivery's payload at 25 MB; a push's is far smaller
REFUSED_EVERY_S = 60.0
PING_EVENT = "ping"  # sent once when the hook is made on the host
CHUNK = 64 * 1024


@dataclass(slots=True)
class Refusals:
    """Which refusals become events: the first of a project, then at most one every `every`
    seconds; an event counts the refusals left out before it."""

    every: float = REFUSED_EVERY_S
    _last: dict[str, float] = field(default_factory=dict)
    _left_out: dict[str, int] = field(default_factory=dict)

    def admit(self, project: str, now: float) -> int | None:
        """How many refusals of `project` were left out since its last event, when this one
        is to be recorded; None when it is to be left out too."""
        last = self._last.get(project)
        if last is not None and now - last < self.every:
            self._left_out[project] = self._left_out.get(project, 0) + 1
            return None
        self._last[project] = now
        return self._left_out.pop(project, 0)


class BodyTooLarge(Exception):
    """The request's body is over the limit (HTTP 413)."""


class GitHooks:
    """The endpoint, with what it needs of its agent: the droplet's name (events), the store
    while connected, the mesh view (the desired state's projects) and the sealed secrets."""

    def __init__(
        self,
        droplet: str,
        store: Callable[[], Store | None],
        view: MeshView,
        secrets: Secrets,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.droplet = droplet
        self.store = store
        self.view = view
        self.secrets = secrets
        self.clock = clock
        self.refusals = Refusals()

    async def handle(self, request: web.Request) -> web.Response:
        project = request.match_info["project"]
        state = self.view.state
        if state is None:
            return _text(503, "the desired state is not known here yet; deliver again soon")
        if project not in {p.name for p in state.projects}:
            return _text(404, f"no project {project!r} is published")
        secret = self.secrets.get(WEBHOOK_SECRET, project, PROJECT_WIDE)
        if secret is None:
            return await self._no_secret(project)
        try:
            body = await read_body(request, MAX_BODY)
        except BodyTooLarge:
            return _text(413, f"the body is over {MAX_BODY} bytes")
        try:
            verify_signature(request.headers, body, secret)
        except SignatureError as err:
            self._refused(project, err.reason, request)
            return _text(401, err.reason)
        return await self._deliver(project, request, body)

    async def _deliver(self, project: str, request: web.Request, body: bytes) -> web.Response:
        """A delivery signed with the project's secret: deploy the branch it pushed."""
        event = event_of(request.headers)
        if event == PING_EVENT:
            return web.json_response({"pong": True, "project": project})
        if event is not None and event != PUSH_EVENT:
            return web.json_response({"queued": [], "ignored": f"a {event!r} event"})
        try:
            pushed = parse_push_payload(payload_of(request.headers, body))
        except PayloadError as err:
            return _text(400, err.reason)
        if pushed is None:
            return web.json_response({"queued": [], "ignored": "not a branch push (tag, deletion)"})
        deploy = push_request(project, pushed, progress=None, now=self.clock())
        store = self.store()
        try:
            if store is None:
                raise StoreUnavailable("not connected to the mesh yet")
            await store.enqueue(subjects.deploy(project), encode(deploy))
        except StoreUnavailable as err:
            log.warning("Webhook not queued. project=%s error=%s", project, err)
            return _text(503, f"the deploy request could not be queued: {err}; deliver again")
        log.info(
            "Webhook queued a deploy. project=%s ref=%s sha=%s request=%s pusher=%s",
            project, deploy.ref, deploy.sha, deploy.request_id, deploy.requested_by,
        )  # fmt: skip
        queued = {"ref": deploy.ref, "sha": deploy.sha, "request_id": deploy.request_id}
        return web.json_response({"queued": [queued]}, status=202)

    async def _no_secret(self, project: str) -> web.Response:
        """404 when the project has no webhook secret; 503 when it has one that is not sealed
        to this droplet (yet: the `secrets` role seals within seconds of `secret set`)."""
        store = self.store()
        try:
            if store is None:
                raise StoreUnavailable("not connected to the mesh yet")
            entry = await store.get(
                subjects.SECRETS_BUCKET, subjects.secret_value_key(WEBHOOK_SECRET, project)
            )
        except StoreUnavailable as err:
            return _text(503, f"cannot tell whether {project!r} takes webhooks: {err}")
        if entry is None or entry.value is None:
            hint = f"meshctl secret set {project} {WEBHOOK_SECRET}"
            return _text(404, f"webhooks are off for this project: {hint}")
        return _text(503, f"{project}'s {WEBHOOK_SECRET} is not sealed to this droplet yet")

    def _refused(self, project: str, reason: str, request: web.Request) -> None:
        left_out = self.refusals.admit(project, self.clock())
        if left_out is None:
            return
        sender = _sender(request)
        log.warning("Webhook refused. project=%s from=%s reason=%s", project, sender, reason)
        store = self.store()
        if store is not None:
            detail = {"reason": reason, "from": sender, "left_out": left_out}
            store.record_soon("webhook_refused", self.droplet, project, detail)


async def read_body(request: web.Request, limit: int) -> bytes:
    """The request's body; `BodyTooLarge` as soon as it is known to be over `limit` bytes."""
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge
    body = bytearray()
    async for chunk in request.content.iter_chunked(CHUNK):
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge
    return bytes(body)


def _sender(request: web.Request) -> str:
    """Who sent the delivery: the address nginx saw (`X-Real-IP`) when it came through this
    droplet's own nginx (from its own address, or loopback's on a local mesh), else the
    peer's address."""
    peer = request.remote or "?"
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    with contextlib.suppress(ValueError):
        if (sockname and sockname[0] == peer) or ipaddress.ip_address(peer).is_loopback:
            return request.headers.get("X-Real-IP", peer)[:64]
    return peer


def _text(status: int, message: str) -> web.Response:
    return web.Response(status=status, text=message + "\n", content_type="text/plain")
