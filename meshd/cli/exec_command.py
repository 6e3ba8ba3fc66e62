"""`meshctl exec PROJECT ENV SERVICE -- COMMAND...` (docs/exec.md): a one-off command beside a
running instance of a service, as that instance runs (its image or artifact, environment and
secret files), its output streamed back and its exit code kept; like Dokku's `run` and Kamal's
`app exec`. The agent of a droplet that runs the service does it (`meshd.agent.oneoffs`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import shlex
import signal
import sys
import time
from typing import Any

import click

from meshd.agent.store import Received, Store
from meshd.cli.context import load_context, who
from meshd.cli.session import check_project, connect, read_allocations, read_nodes
from meshd.core.health import STALE_AFTER_S, live_instances
from protocol import subjects
from protocol.codec import decode, encode
from protocol.errors import MeshError, ProtocolError
from protocol.messages import Allocation, NodeStatus
from protocol.oneoff import OneOffEnd, OneOffRequest, OneOffStarted

ASK_S = 10.0
END_MARGIN_S = 30.0  # past the command's timeout: the artifact's load, the kill's grace
CANCEL_WAIT_S = 10.0
DURATION = re.compile(r"^(\d+)([smh]?)$")
LONGEST_S = 24 * 3600
INTERRUPTED = 130  # as a shell says a command ended by Ctrl-C


def timeout_seconds(_ctx: click.Context, _param: click.Parameter, text: str) -> float:
    found = DURATION.match(text.strip())
    value = int(found[1]) * {"": 1, "s": 1, "m": 60, "h": 3600}[found[2]] if found else 0
    if not 0 < value <= LONGEST_S:
        raise click.BadParameter(f"{text!r} is not a duration from 1s to 24h; write 90s, 10m or 2h")
    return float(value)


@click.command(no_args_is_help=True)
@click.argument("project")
@click.argument("env")
@click.argument("service")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED, metavar="-- COMMAND")
@click.option("--droplet", metavar="NAME",
              help="Run it on this droplet (one that runs the service); default: one whose "
              "instance is healthy.")  # fmt: skip
@click.option("--timeout", "timeout_s", default="10m", show_default=True, metavar="DURATION",
              callback=timeout_seconds, help="Kill it after this long.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object at the end (output, exit_code, droplet, seconds) "
              "instead of streaming.")  # fmt: skip
@click.option("--context", "context_name", metavar="NAME", help="Mesh to talk to.")
def exec_command(
    project: str,
    env: str,
    service: str,
    command: tuple[str, ...],
    droplet: str | None,
    timeout_s: float,
    as_json: bool,
    context_name: str | None,
) -> int:
    """Run COMMAND once beside a running instance of SERVICE, as it runs.

    \b
    meshctl exec shop prod backend -- python manage.py migrate
    meshctl exec shop prod backend --droplet shop-web1 -- env
    Its output comes back as it is written (stdout and stderr together, no terminal, no
    input); meshctl exits with its exit code. Ctrl-C stops it.
    """
    line = shlex.join(command)
    try:
        return asyncio.run(
            _exec(project, env, service, line, droplet, timeout_s, as_json, context_name)
        )
    except KeyboardInterrupt:  # before the command was asked for: nothing runs
        click.echo("meshctl: interrupted", err=True)
        return INTERRUPTED


async def _exec(
    project: str,
    env: str,
    service: str,
    command: str,
    droplet: str | None,
    timeout_s: float,
    as_json: bool,
    context_name: str | None,
) -> int:
    store = await connect(load_context(context_name))
    try:
        await check_project(store, project)
        key = subjects.alloc_key(project, env, service)
        allocations = await read_allocations(store)
        allocation = allocations.get(key)
        if allocation is None:
            known = sorted(a.service for a in allocations.values()
                           if (a.project, a.env) == (project, env))  # fmt: skip
            raise click.UsageError(f"no service {service!r} in {project} {env}; known: "
                                   f"{', '.join(known) or 'none'}")  # fmt: skip
        chosen = choose_droplet(allocation, await read_nodes(store), droplet, time.time())
        run = OneOffRun(store, as_json)
        return await run.carry_out(chosen, OneOffRequest(
            project=project, env=env, service=service, command=command, timeout=timeout_s,
            output=subjects.oneoff_output(secrets.token_hex(8)), requested_by=who()))  # fmt: skip
    finally:
        await store.close()


def choose_droplet(
    allocation: Allocation, nodes: dict[str, NodeStatus], asked: str | None, now: float
) -> str:
    """`asked` if it runs the service; else the first droplet whose instance is healthy, else
    the first that reports."""
    where = list(allocation.droplets)
    if asked is not None:
        if asked not in where:
            raise click.UsageError(f"{asked!r} does not run {allocation.service}; it runs on "
                                   f"{', '.join(where) or 'no droplet'}")  # fmt: skip
        return asked
    for node, instance in live_instances(allocation, nodes, now):
        if instance.healthy:
            return node.droplet
    reporting = [d for d in where if d in nodes and now - nodes[d].updated_at < STALE_AFTER_S]
    if not reporting:
        raise MeshError(f"no droplet that runs {allocation.service} reports ({', '.join(where)})")
    return reporting[0]


class OneOffRun:
    """One command's round trip: its output written as it comes (or kept, for --json)."""

    def __init__(self, store: Store, as_json: bool) -> None:
        self.store = store
        self.as_json = as_json
        self.kept = bytearray()
        self.ended: asyncio.Future[OneOffEnd] = asyncio.get_running_loop().create_future()

    async def _out(self, message: Received) -> None:
        if self.as_json:
            self.kept += message.data
        else:
            sys.stdout.buffer.write(message.data)
            sys.stdout.buffer.flush()

    async def _end(self, message: Received) -> None:
        with contextlib.suppress(ProtocolError, asyncio.InvalidStateError):
            self.ended.set_result(decode(message.data, OneOffEnd))

    async def carry_out(self, droplet: str, request: OneOffRequest) -> int:
        # Ctrl-C sets an event rather than cancelling the task: Python 3.11's wait_for (under
        # nats' request) swallows a cancellation that lands as its answer arrives, and meshctl
        # then waited out the command's whole timeout.
        interrupted = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, interrupted.set)
        out = await self.store.subscribe(f"{request.output}.out", self._out)
        end = await self.store.subscribe(f"{request.output}.end", self._end)
        try:
            answer = await self.store.request(subjects.oneoff(droplet), encode(request), ASK_S)
            if answer is None:
                raise MeshError(f"the agent of {droplet} did not answer within {ASK_S:g} s")
            started = decode(answer, OneOffStarted)
            if started.error is not None:
                raise MeshError(f"{droplet}: {started.error}")
            if not await self._ended_unless(interrupted, request.timeout + END_MARGIN_S):
                return await self._stop(droplet, request)
            return self._result(droplet, self.ended.result())
        except TimeoutError:
            raise MeshError(f"no end from {droplet} within {request.timeout:g} s") from None
        finally:
            loop.remove_signal_handler(signal.SIGINT)
            await out.unsubscribe()
            await end.unsubscribe()

    async def _ended_unless(self, interrupted: asyncio.Event, within: float) -> bool:
        """True when the command ended, False when Ctrl-C came first."""
        stopping = asyncio.ensure_future(interrupted.wait())
        either: set[asyncio.Future[Any]] = {self.ended, stopping}
        try:
            await asyncio.wait(either, timeout=within, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if self.ended.done():
            return True
        if interrupted.is_set():
            return False
        raise TimeoutError

    async def _stop(self, droplet: str, request: OneOffRequest) -> int:
        await self.store.publish(f"{request.output}.cancel", b"")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.ended), CANCEL_WAIT_S)
        if not self.ended.done():
            click.echo(f"meshctl: interrupted; {droplet} did not say within {CANCEL_WAIT_S:g} s "
                       "that the command stopped", err=True)  # fmt: skip
            return INTERRUPTED
        if self.as_json:
            self._result(droplet, self.ended.result())
        click.echo("meshctl: interrupted; the command was stopped", err=True)
        return INTERRUPTED

    def _result(self, droplet: str, end: OneOffEnd) -> int:
        if self.as_json:
            found: dict[str, Any] = {"droplet": droplet, "exit_code": end.exit_code,
                                     "error": end.error, "seconds": end.seconds,
                                     "output": self.kept.decode(errors="replace")}  # fmt: skip
            click.echo(json.dumps(found, indent=2))
        if end.exit_code is None:
            if not self.as_json:
                click.echo(f"meshctl: {droplet}: {end.error}", err=True)
            return 1
        return end.exit_code if end.exit_code >= 0 else 128 - end.exit_code  # killed: as shells
