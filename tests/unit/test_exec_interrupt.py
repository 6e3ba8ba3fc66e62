"""Ctrl-C in `meshctl exec` stops the command on the droplet, whenever it comes: while the
command runs, or while the agent has not answered yet (the answer then is followed by the
stop). A real SIGINT to this process, a stand-in agent on the in-memory store."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from meshd.agent.store import Received
from meshd.cli import exec_command
from meshd.cli.exec_command import INTERRUPTED, OneOffRun
from protocol import subjects
from protocol.codec import decode, encode
from protocol.oneoff import OneOffEnd, OneOffRequest, OneOffStarted
from tests.support.memstore import MemoryStore
from tests.support.waiting import until

REQUEST = OneOffRequest(project="shop", env="prod", service="backend", command="sleep 600",
                        timeout=600.0, output="mesh.oneoff.out.t1", requested_by="op")  # fmt: skip


class StandInAgent:
    """Answers once `answer` is set, writes a line, and ends only when told to stop."""

    def __init__(self, store: MemoryStore, *, stops: bool = True) -> None:
        self.store = store
        self.stops = stops
        self.answer = asyncio.Event()
        self.answer.set()
        self.cancelled = asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()

    async def listen(self) -> None:
        await self.store.subscribe(subjects.oneoff("web1"), self._asked)

    async def _asked(self, message: Received) -> None:
        request = decode(message.data, OneOffRequest)
        await self.store.subscribe(f"{request.output}.cancel", self._cancel)
        task = asyncio.create_task(self._run(request, message))
        self.tasks.add(task)

    async def _run(self, request: OneOffRequest, message: Received) -> None:
        await self.answer.wait()
        await message.respond(encode(OneOffStarted()))
        await self.store.publish(f"{request.output}.out", b"waiting\n")
        await self.cancelled.wait()
        if self.stops:
            end = OneOffEnd(error="cancelled", seconds=0.5)
            await self.store.publish(f"{request.output}.end", encode(end))

    async def _cancel(self, _: Received) -> None:
        self.cancelled.set()


async def test_ctrl_c_while_the_command_runs_stops_it(capsys: pytest.CaptureFixture[str]) -> None:
    store = MemoryStore()
    agent = StandInAgent(store)
    await agent.listen()
    run = OneOffRun(store, as_json=True)
    carried = asyncio.create_task(run.carry_out("web1", REQUEST))
    await until(lambda: bool(run.kept), what="the command's first line")
    os.kill(os.getpid(), signal.SIGINT)
    assert await asyncio.wait_for(carried, 10) == INTERRUPTED
    assert agent.cancelled.is_set()
    printed = capsys.readouterr()
    assert '"error": "cancelled"' in printed.out and '"output": "waiting\\n"' in printed.out
    assert "the command was stopped" in printed.err


async def test_ctrl_c_before_the_agent_answers_stops_the_command_once_it_starts() -> None:
    store = MemoryStore()
    agent = StandInAgent(store)
    agent.answer.clear()
    await agent.listen()
    run = OneOffRun(store, as_json=False)
    carried = asyncio.create_task(run.carry_out("web1", REQUEST))
    await until(lambda: bool(agent.tasks), what="the request at the agent")
    os.kill(os.getpid(), signal.SIGINT)
    await asyncio.sleep(0.1)
    assert not agent.cancelled.is_set()  # nothing runs yet that could be stopped
    agent.answer.set()
    assert await asyncio.wait_for(carried, 10) == INTERRUPTED
    assert agent.cancelled.is_set()


async def test_an_agent_that_does_not_confirm_the_stop_is_said(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(exec_command, "CANCEL_WAIT_S", 0.2)
    store = MemoryStore()
    agent = StandInAgent(store, stops=False)
    await agent.listen()
    run = OneOffRun(store, as_json=False)
    carried = asyncio.create_task(run.carry_out("web1", REQUEST))
    await until(lambda: "waiting" in capsys.readouterr().out, what="the command's first line")
    os.kill(os.getpid(), signal.SIGINT)
    assert await asyncio.wait_for(carried, 10) == INTERRUPTED
    assert "web1 did not say within 0.2 s that the command stopped" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Ctrl-C is Python's again
