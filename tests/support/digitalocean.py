"""The DigitalOcean stand-in (`sim/digitalocean`) in the test's own event loop, and pydo
clients for it: `api_only` droplets are records (no root), on a clock that stands still until
the test moves it (`Stand.advance`). Every answer is checked against the API description;
`Stand.violations()` lists what it refused."""

from __future__ import annotations

import asyncio
import json
import os
import select
import shlex
import signal
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest_asyncio
from multidict import CIMultiDict

from sim.digitalocean.spec import SpecChecker

if TYPE_CHECKING:  # the rest is imported when used: every test session loads this module
    import asyncssh
    from aiohttp import web

    from sim.digitalocean.machines import Machines
    from sim.digitalocean.world import World
    from tests.support.mesh import LocalMesh

TOKEN = "dop_v1_test"
_SPEC = SpecChecker()  # loaded once per test process: over a second each time otherwise


async def finished(
    do: Any, action_id: int, timeout: float = 60, every: float = 0.2
) -> dict[str, Any]:
    """Poll the action as a provider does until it is no longer in progress; it completed."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        action: dict[str, Any] = (await do.actions.get(action_id))["action"]
        if action["status"] != "in-progress":
            assert action["status"] == "completed", action
            return action
        assert asyncio.get_running_loop().time() < deadline, action
        await asyncio.sleep(every)


def pydo_client(url: str, token: str, **options: Any) -> Any:
    """A `pydo.aio.Client` on the stand-in: plain HTTP needs a policy that sends the token;
    no retries unless asked (a test sees each answer)."""
    import pydo.aio
    from azure.core.credentials import AzureKeyCredential
    from azure.core.pipeline.policies import AzureKeyCredentialPolicy

    policy = AzureKeyCredentialPolicy(AzureKeyCredential(token), "Authorization", prefix="Bearer")
    options.setdefault("retry_total", 0)
    return pydo.aio.Client(token, endpoint=url, authentication_policy=policy, **options)


@dataclass
class Stand:
    url: str
    token: str
    world: World
    app: web.Application

    def client(self, token: str | None = None, **options: Any) -> Any:
        return pydo_client(self.url, token or self.token, **options)

    async def advance(self, seconds: float) -> None:
        """Move the stand-in's clock and let every action that fell due complete."""
        from sim.digitalocean.world import TICK_S

        self.world.clock.advance(seconds)
        await asyncio.sleep(TICK_S * 3)
        for _ in range(100):
            if not [p for p in self.world._pending if p.due <= self.world.clock.now()]:
                return
            await asyncio.sleep(TICK_S)

    def _ledger(self) -> Any:
        from sim.digitalocean.server import GATE

        return self.app[GATE].ledger

    def violations(self) -> list[dict[str, Any]]:
        return self._ledger().violations

    def log(self) -> list[dict[str, Any]]:
        """Every request so far: method, path, query, status."""
        return list(self._ledger().requests)

    def invalid(self) -> list[dict[str, Any]]:
        return self._ledger().invalid

    async def raw(
        self, method: str, path: str, body: Any = None, token: str | None = TOKEN
    ) -> tuple[int, CIMultiDict[str], Any]:
        """One request without pydo: status, headers, JSON body (None when empty)."""
        import aiohttp

        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        async with (
            aiohttp.ClientSession() as session,
            session.request(method, self.url + path, json=body, headers=headers) as answer,
        ):
            data = await answer.read()
            headers_ = CIMultiDict(answer.headers)
            return answer.status, headers_, json.loads(data) if data else None


async def start_stand(
    machines: Machines | None = None, speed: float = 0.0
) -> tuple[Stand, web.AppRunner]:
    from aiohttp import web

    from sim.digitalocean.clock import Clock
    from sim.digitalocean.machines import NoMachines
    from sim.digitalocean.server import GATE, make_app
    from sim.digitalocean.world import World

    world = World(Clock(speed), machines or NoMachines(), TOKEN)
    if not _SPEC.loaded:
        await asyncio.to_thread(_SPEC.load)
    app = make_app(world, check_responses=True, spec=_SPEC)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    stand = Stand(f"http://127.0.0.1:{port}", TOKEN, world, app)
    await asyncio.wait_for(app[GATE].ready.wait(), 30)
    return stand, runner


@pytest_asyncio.fixture
async def stand() -> AsyncIterator[Stand]:
    """An API-only stand-in, its clock stopped; the test fails if any answer broke the spec."""
    made, runner = await start_stand()
    try:
        yield made
    finally:
        await runner.cleanup()
    assert made.violations() == [], "answers the API description refuses"


# Droplets that are machines, reached as DigitalOcean's are ---------------------------------


async def run_over_ssh(key: asyncssh.SSHKey, address: str, command: str) -> str:
    """Run `command` as root on the droplet at `address`; its output, stripped."""
    import asyncssh

    async with asyncssh.connect(
        address, username="root", client_keys=[key], known_hosts=None, connect_timeout=10
    ) as connection:
        result = await connection.run(command, check=True, timeout=30)
    return str(result.stdout).strip()


async def reachable(address: str, port: int, timeout: float = 1.0) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(address, port), timeout)
    except (OSError, TimeoutError):
        return False
    writer.close()
    await writer.wait_closed()
    return True


def host_pids_running(marker: str) -> list[int]:
    """Processes of the whole machine with `marker` in their command line."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


FETCH = """\
import sys, urllib.error, urllib.request
for url in sys.argv[1:]:
    try:
        print(urllib.request.urlopen(url, timeout=10).read().decode())
    except urllib.error.HTTPError as error:
        print(error.code)
"""


def fetch(*urls: str) -> str:
    """A shell command printing each URL's body (or its HTTP error code), a line each, with
    the machine's Python (the droplet shares it)."""
    return shlex.join([sys.executable, "-c", FETCH, *urls])


# The stand-in as its own process, as benches and later meshes use it ---------------------------


@dataclass
class StandProcess:
    process: subprocess.Popen[bytes]
    url: str
    token: str
    stderr: Path

    async def control(self, body: dict[str, Any] | None = None, path: str = "") -> Any:
        """GET (or, with a body, POST) the control endpoint `/_sim{path}`."""
        import aiohttp

        async with aiohttp.ClientSession() as session:
            method = "POST" if body is not None else "GET"
            async with session.request(method, f"{self.url}/_sim{path}", json=body) as answer:
                return await answer.json()

    def client(self, **options: Any) -> Any:
        return pydo_client(self.url, self.token, **options)

    def get(self, path: str) -> dict[str, Any]:
        """GET an API path with the token, without a loop (tests and benches driving meshctl)."""
        request = urllib.request.Request(
            self.url + path, headers={"Authorization": f"Bearer {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310 - the stand-in
            return dict(json.loads(answer.read()))

    def settings(self) -> dict[str, Any]:
        """`GET /_sim`: its settings, readiness and the requests counted and refused."""
        with urllib.request.urlopen(f"{self.url}/_sim", timeout=10) as answer:  # noqa: S310
            return dict(json.loads(answer.read()))

    def change(self, settings: dict[str, Any]) -> None:
        """`POST /_sim`: delays, knobs, faults, limits (`World.change`)."""
        request = urllib.request.Request(
            f"{self.url}/_sim", json.dumps(settings).encode(), method="POST",
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
            answer.read()

    def answered(self) -> dict[int, int]:
        """How many `/v2` requests got each status so far."""
        with urllib.request.urlopen(f"{self.url}/_sim/requests", timeout=30) as answer:  # noqa: S310
            seen = json.loads(answer.read())["requests"]
        counts: dict[int, int] = {}
        for request in seen:
            counts[request["status"]] = counts.get(request["status"], 0) + 1
        return counts

    def droplets(self) -> dict[str, dict[str, Any]]:
        """The account's droplets by name."""
        return {d["name"]: d for d in self.get("/v2/droplets?per_page=200")["droplets"]}

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, then the exit status (SIGKILL if it does not end in time)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise


def kill_machine(droplet_id: int) -> None:
    """The droplet dies as a machine does: its PID 1 killed (every process of it goes with
    it); the API still says it is active."""
    killed = 0
    for pid in host_pids_running(f"--id={droplet_id}"):
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if argv[0] != b"unshare" and b"sim.digitalocean.boot" in argv:
            os.kill(pid, signal.SIGKILL)
            killed += 1
    assert killed == 1, f"droplet {droplet_id}'s PID 1 not found"


def start_process(state: Path, *options: str, timeout: float = 10) -> StandProcess:
    """`python -m sim.digitalocean --listen 127.0.0.1:0 --state STATE --check-responses
    OPTIONS...` from the repository root; returns once it printed its URL and token."""
    root = Path(__file__).resolve().parents[2]
    stderr = state / "stand-in.err"
    state.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [sys.executable, "-m", "sim.digitalocean", "--listen", "127.0.0.1:0",
         "--state", str(state), "--check-responses", "--log-level", "INFO", *options],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=stderr.open("wb"),
    )  # fmt: skip
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    line = process.stdout.readline() if ready else b""
    if not line:
        process.kill()
        process.wait()
        raise AssertionError(f"the stand-in printed nothing: {stderr.read_text()[-2000:]}")
    printed = json.loads(line)
    return StandProcess(process, printed["url"], printed["token"], stderr)


def resized(mesh: LocalMesh, droplet: str) -> bool:
    """`droplet` resized (DigitalOcean powers it off meanwhile) and back, healthy: a mesh's
    master grows to the CSV's size after `publish --wait` has placed the services."""
    if not any(e["name"] == "droplet_resized" for e in mesh.events_about(droplet, 600) or []):
        return False
    status = mesh.status_if_readable() or {"droplets": []}
    return any(d["name"] == droplet and d["healthy"] for d in status["droplets"])
