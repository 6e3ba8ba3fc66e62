"""The log shipper against a real nats-server: a noisy project's lines over its budget are
dropped and counted while a quiet one keeps every line; with the server stopped (SIGSTOP)
batches wait and are delivered once, in order, when it is back (a batch sent again is kept
once); while the agent has no connection a full buffer drops the oldest, and the reader sees
the gap."""

from __future__ import annotations

from pathlib import Path

from meshd.agent.logship import LogShipper
from meshd.agent.store import Store
from meshd.core.logs import ByteBudget, rows
from plugins.runtimes import LogFile
from protocol import subjects
from tests.support.nats import NatsServer


class Files:
    """A runtime that has only instances' log files."""

    name = "files"

    def __init__(self, files: list[LogFile]) -> None:
        self.files = files

    async def log_files(self) -> list[LogFile]:
        return self.files


def shipper(store: Store, tmp_path: Path, files: list[LogFile], **more: object) -> LogShipper:
    return LogShipper(
        lambda: store,
        "web1",
        Files(files),
        tmp_path / "lb",
        tmp_path,
        **more,  # type: ignore[arg-type]
    )


async def read(store: Store, project: str) -> list[str]:
    found = []
    async for batch in store.read_logs(subjects.app_logs(project), since=None, follow=False):
        assert batch is not None
        found += [row.text for row in rows(batch)]
    return found


def write(path: Path, lines: list[str]) -> None:
    with path.open("a") as f:
        f.writelines(f"{line}\n" for line in lines)


async def test_a_noisy_project_cannot_crowd_out_a_quiet_one(store: Store, tmp_path: Path) -> None:
    noisy, quiet = tmp_path / "noisy.log", tmp_path / "quiet.log"
    files = [LogFile("noisy.prod.web", noisy), LogFile("quiet.prod.web", quiet)]
    logs = shipper(store, tmp_path, files, budget=ByteBudget(rate=1000, burst=20_000))
    noisy.touch()
    quiet.touch()
    await logs.ship_once()  # seen empty: read from their start from now on
    write(noisy, [f"noise {i} " + "x" * 100 for i in range(2000)])
    write(quiet, [f"quiet {i}" for i in range(50)])
    await logs.ship_once()

    assert await read(store, "quiet") == [f"quiet {i}" for i in range(50)]
    noise = await read(store, "noisy")
    assert logs.dropped["budget"] > 1500
    assert f"[{logs.dropped['budget']} lines dropped by the shipper]" in noise
    assert len([t for t in noise if t.startswith("noise")]) == 2000 - logs.dropped["budget"]


async def test_lines_wait_while_the_stream_is_away_then_arrive_once(
    store: Store, nats_server: NatsServer, tmp_path: Path
) -> None:
    out = tmp_path / "output.log"
    logs = shipper(store, tmp_path, [LogFile("shop.prod.web", out)])
    write(out, ["first"])
    await logs.ship_once()
    nats_server.pause()
    try:
        write(out, ["second", "third"])
        await logs.ship_once()  # not acknowledged: kept
        assert logs.waiting == 1 and logs.dropped["buffer"] == 0
    finally:
        nats_server.resume()
    write(out, ["fourth"])
    await logs.ship_once()
    assert logs.waiting == 0
    assert await read(store, "shop") == ["first", "second", "third", "fourth"]


async def test_a_full_buffer_drops_the_oldest_and_says_so(store: Store, tmp_path: Path) -> None:
    out = tmp_path / "output.log"
    away = True  # the agent has no connection to the mesh (between two)
    logs = LogShipper(
        lambda: None if away else store,
        "web1",
        Files([LogFile("shop.prod.web", out)]),  # type: ignore[arg-type]
        tmp_path / "lb",
        tmp_path,
        buffer_bytes=1200,
    )
    for n in range(3):
        write(out, [f"pass {n} line {i} " + "y" * 40 for i in range(10)])
        await logs.ship_once()
    away = False
    await logs.ship_once()
    assert logs.dropped["buffer"] == 10  # the first pass's batch went
    shown = await read(store, "shop")
    assert shown[0] == "[10 lines dropped by the shipper]"
    assert [t.split(" y")[0] for t in shown[1:]] == [
        f"pass {n} line {i}" for n in (1, 2) for i in range(10)
    ]
