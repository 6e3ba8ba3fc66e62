"""A Docker mesh with its datastores apart lists the output of both runtimes' instances for the
log shipper (the demo's default: before, its containers' output never reached `meshctl logs`)."""

from __future__ import annotations

from pathlib import Path

from plugins.runtimes import LogFile, LogFiles
from plugins.runtimes.apart import DatastoresApart


class Listing:
    def __init__(self, *files: LogFile) -> None:
        self.files = list(files)

    async def log_files(self) -> list[LogFile]:
        return self.files


class Silent:
    """A runtime without log files of its own."""


async def test_both_runtimes_log_files_are_listed() -> None:
    container = LogFile("shop.prod.backend", Path("/var/lib/docker/c/c-json.log"), "json-file")
    database = LogFile("shop.prod.database", Path("/srv/shop.prod.database/output.log"))
    apart = DatastoresApart(Listing(container), Listing(database))  # type: ignore[arg-type]
    assert isinstance(apart, LogFiles)
    assert await apart.log_files() == [container, database]


async def test_a_runtime_without_log_files_adds_none() -> None:
    container = LogFile("shop.prod.backend", Path("/c-json.log"), "json-file")
    apart = DatastoresApart(Listing(container), Silent())  # type: ignore[arg-type]
    assert await apart.log_files() == [container]
