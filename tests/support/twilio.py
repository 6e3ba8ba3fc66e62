"""A local stand-in for Twilio's Messages API (a paid outside API, so the one kind of fake the
tests allow), shaped like the published one: `POST /2010-04-01/Accounts/{sid}/Messages.json`
with form fields To, From and Body and HTTP basic auth (account SID, auth token); 201 with the
message's sid, or 401 with Twilio's error body. It runs on a loop of its own thread."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from aiohttp import web

SID = "AC" + "0123456789abcdef" * 2
TOKEN = "tok3n-for-tests"


@dataclass
class Texts:
    url: str = ""
    sent: list[dict[str, str]] = field(default_factory=list)
    refused: int = 0


async def _serve(texts: Texts, ready: queue.Queue[object], stop: asyncio.Event) -> None:
    async def messages(request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        user, _, token = base64.b64decode(auth.removeprefix("Basic ")).decode().partition(":")
        if (user, token) != (SID, TOKEN):
            texts.refused += 1
            return web.json_response(
                {"code": 20003, "message": "Authenticate", "status": 401}, status=401
            )
        form = await request.post()
        texts.sent.append({k: str(v) for k, v in form.items()})
        return web.json_response({"sid": "SM" + "0" * 32, "status": "queued"}, status=201)

    app = web.Application()
    app.router.add_post(f"/2010-04-01/Accounts/{SID}/Messages.json", messages)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    texts.url = f"http://127.0.0.1:{port}"
    ready.put(texts)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


@contextlib.contextmanager
def twilio_in_thread() -> Iterator[Texts]:
    loop = asyncio.new_event_loop()
    ready: queue.Queue[object] = queue.Queue()
    stop = asyncio.Event()
    texts = Texts()
    thread = threading.Thread(
        target=loop.run_until_complete, args=(_serve(texts, ready, stop),), daemon=True
    )
    thread.start()
    ready.get(timeout=10)
    try:
        yield texts
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=10)
        loop.close()
