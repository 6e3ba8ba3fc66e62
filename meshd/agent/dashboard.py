"""The dashboard at `/_mesh/` (docs/dashboard.md), on every agent's API; the lb holder's nginx
passes the entry address's `/_mesh/` to its own agent, so it moves with the entry.

Behind a login: the mesh secret `dashboard_password` (trusted droplets have it; the lb holder is
one). A request without a valid session cookie gets 401 with the login form as its body; wrong
passwords are limited per client (`LoginThrottle`, 429 with Retry-After). The page is rendered
by jinja2 on the server (it reads without JavaScript); a few lines of script take the same body,
rendered anew, from `/_mesh/stream` (server-sent events) whenever it changes, at most once a
second. Everything shown comes from the agent's view of the mesh, the leases (read every 2 s),
the last events (every second) and the releases (every 10 s), read once for all viewers.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from meshd.agent.meshview import MeshView
from meshd.agent.records import decoded
from meshd.agent.store import Store, StoreUnavailable
from meshd.core import dashboard as board
from meshd.core.status import mesh_status
from plugins.templating import render
from protocol import subjects
from protocol.messages import Event, Lease
from protocol.releases import Release

log = logging.getLogger(__name__)
PREFIX = "/_mesh/"
COOKIE = "meshd_session"
PUSH_EVERY_S = 1.0
KEEPALIVE_S = 15.0
READ_EVERY_S = {"leases": 2.0, "events": 1.0, "releases": 10.0}
EVENTS_SHOWN = 25
MAX_FORM = 4096


class Dashboard:
    def __init__(
        self,
        view: MeshView,
        store: Callable[[], Store | None],
        secret: Callable[[str], bytes | None],
        mesh: str,
        address: str,
    ) -> None:
        self.address = address  # this droplet's: nginx passes requests on from it
        self.view = view
        self.store = store
        self.secret = secret
        self.mesh = mesh
        self.history = board.History()
        self.throttle = board.LoginThrottle()
        self._leases: dict[str, Lease] = {}
        self._events: list[Event] = []
        self._releases: list[dict[str, Any]] = []
        self._read_at: dict[str, float] = {}
        self._reading = asyncio.Lock()

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get(PREFIX, self.page),
            web.post(PREFIX + "login", self.login),
            web.post(PREFIX + "logout", self.logout),
            web.get(PREFIX + "stream", self.stream),
            web.route("*", PREFIX + "{anything:.*}", self.other),  # after the hooks' route
        ]

    async def sample(self) -> None:
        """The instance counts of this agent's view, for the chart: sampled by every agent that
        could serve the page (it holds the password: a trusted droplet), so that a new lb
        holder has the hour at once; a droplet that only runs projects pays nothing."""
        while True:
            if self.view.ready and self._password() is not None:
                status = self._status({})
                self.history.add(time.time(), *board.instance_counts(status))
            await asyncio.sleep(board.SAMPLE_S)

    # --- login ---------------------------------------------------------------------------

    def _password(self) -> bytes | None:
        return self.secret(board.PASSWORD_SECRET)

    def _signed_in(self, request: web.Request) -> bool:
        password = self._password()
        token = request.cookies.get(COOKIE, "")
        return password is not None and board.session_valid(token, password, time.time())

    def _login_form(self, status: int, message: str | None = None) -> web.Response:
        body = render(
            "dashboard/login.html",
            mesh=self.mesh,
            message=message,
            unset=self._password() is None,
        )
        headers = {"Cache-Control": "no-store"}
        return web.Response(status=status, text=body, content_type="text/html", headers=headers)

    async def login(self, request: web.Request) -> web.Response:
        client = _client(request, self.address)
        now = time.time()
        wait = self.throttle.wait(client, now)
        if wait > 0:
            response = self._login_form(429, f"Too many wrong passwords: wait {wait:.0f} s.")
            response.headers["Retry-After"] = str(int(wait) + 1)
            return response
        if (request.content_length or 0) > MAX_FORM:
            return self._login_form(413, "That form is too large.")
        form = await request.post()
        given = str(form.get("password", ""))
        password = self._password()
        if password is None or not board.password_matches(given, password):
            self.throttle.failed(client, now)
            log.warning("Dashboard login refused. client=%s", client)
            return self._login_form(401, "Wrong password." if password else None)
        response = web.Response(status=303, headers={"Location": PREFIX})
        response.set_cookie(COOKIE, board.new_session(password, now), max_age=int(board.SESSION_S),
                            path=PREFIX, httponly=True, samesite="Strict",
                            secure=request.headers.get("X-Forwarded-Proto") == "https")  # fmt: skip
        log.info("Dashboard login. client=%s", client)
        return response

    async def logout(self, _: web.Request) -> web.Response:
        response = web.Response(status=303, headers={"Location": PREFIX})
        response.del_cookie(COOKIE, path=PREFIX)
        return response

    # --- the page ------------------------------------------------------------------------

    async def page(self, request: web.Request) -> web.Response:
        if not self._signed_in(request):
            return self._login_form(401)
        data = await self._page_data()
        body = render("dashboard/page.html", **data, body=render("dashboard/body.html", **data))
        return web.Response(
            text=body, content_type="text/html", headers={"Cache-Control": "no-store"}
        )

    async def stream(self, request: web.Request) -> web.StreamResponse:
        if not self._signed_in(request):
            return self._login_form(401)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-store",
                                               "X-Accel-Buffering": "no"})  # fmt: skip
        await response.prepare(request)
        sent, quiet_since = "", time.monotonic()
        with contextlib.suppress(ConnectionResetError):
            while self._signed_in(request):  # a new password ends the stream too
                body = render("dashboard/body.html", **await self._page_data())
                if body != sent:
                    data = "".join(f"data: {line}\n" for line in body.split("\n"))
                    await response.write(f"event: body\n{data}\n".encode())
                    sent, quiet_since = body, time.monotonic()
                elif time.monotonic() - quiet_since > KEEPALIVE_S:
                    await response.write(b": still here\n\n")
                    quiet_since = time.monotonic()
                await asyncio.sleep(PUSH_EVERY_S)
        return response

    async def other(self, request: web.Request) -> web.Response:
        if not self._signed_in(request):
            return self._login_form(401)
        raise web.HTTPNotFound()

    def _status(self, leases: dict[str, Lease]) -> dict[str, Any]:
        view = self.view
        return mesh_status(view.nodes, view.allocations, leases, time.time(), view.failures)

    async def _page_data(self) -> dict[str, Any]:
        await self._read()
        now = time.time()
        status = self._status(self._leases)
        events = board.event_rows(self._events, now)
        return board.page(self.mesh, status, self._releases, events, self.history.samples, now)

    async def _read(self) -> None:
        """What the view does not hold, read at most every `READ_EVERY_S` for all viewers; a
        store that does not answer leaves the last reading."""
        store = self.store()
        if store is None:
            return
        async with self._reading:
            due = {
                part
                for part, every in READ_EVERY_S.items()
                if time.monotonic() - self._read_at.get(part, -every) >= every
            }
            try:
                if "leases" in due:
                    leases = await decoded(store, subjects.LEASES_BUCKET, ">", Lease)
                    self._leases = {lease.role: lease for lease in leases}
                if "events" in due:
                    self._events = await store.recent_events(EVENTS_SHOWN)
                if "releases" in due:
                    found = await decoded(store, subjects.RELEASES_BUCKET, ">", Release)
                    self._releases = board.live_releases(found)
            except StoreUnavailable as err:
                log.debug("Dashboard reading left as it was. error=%s", err)
            for part in due:
                self._read_at[part] = time.monotonic()


def _client(request: web.Request, own: str) -> str:
    """The client's address: nginx's X-Real-IP when nginx passed the request on (from this
    droplet), else the peer's."""
    peer = request.remote or ""
    forwarded = request.headers.get("X-Real-IP")
    with contextlib.suppress(ValueError):
        if forwarded and (peer == own or ipaddress.ip_address(peer).is_loopback):
            return forwarded
    return peer
