"""`python -m sim.digitalocean` as a process: it prints where it listens and the token it
accepts before loading the API description, answers with that token only, ends cleanly on
SIGTERM, refuses machines without root, and explains itself with `--help`."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pytest

from sim.digitalocean.__main__ import main as stand_in_main
from tests.support import unavailable

REPO = Path(__file__).resolve().parents[2]
FIRST_LINE_S = 2.0  # the line comes before the description loads (over a second on its own)


@dataclass
class Started:
    process: subprocess.Popen[str]
    stderr: Path
    line: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0  # from Popen to the line

    def errors(self) -> str:
        return self.stderr.read_text() if self.stderr.exists() else ""


class Start(Protocol):
    def __call__(self, *args: str, line: bool = True) -> Started: ...


def read_line(process: subprocess.Popen[str], timeout: float) -> str:
    """The first line the process prints, or "" when it prints none within `timeout`."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    return process.stdout.readline() if ready else ""


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    """Starts `python -m sim.digitalocean ARGS`; every process it started is killed at the
    end, whatever the test did."""
    if not (REPO / "sim" / "digitalocean" / "__main__.py").exists():
        unavailable("sim/digitalocean is not in this checkout")
    started: list[subprocess.Popen[str]] = []

    def run(*args: str, line: bool = True) -> Started:
        stderr = tmp_path / f"stderr-{len(started)}"
        began = time.monotonic()
        with stderr.open("w") as errors:
            process = subprocess.Popen(
                [sys.executable, "-m", "sim.digitalocean", *args],
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=errors,
                text=True,
            )
        started.append(process)
        made = Started(process, stderr)
        if line:
            text = read_line(process, 30)
            made.seconds = time.monotonic() - began
            assert text, f"no line from the stand-in; stderr:\n{made.errors()}"
            made.line = json.loads(text)
        return made

    yield run
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(10)
        if process.stdout is not None:
            process.stdout.close()


def get(url: str, token: str | None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        with err:
            return err.code, json.loads(err.read() or b"null")


def test_prints_its_url_and_token_at_once_answers_with_the_token_and_ends_on_sigterm(
    start: Start, tmp_path: Path
) -> None:
    made = start("--api-only", "--listen", "127.0.0.1:0", "--state", str(tmp_path / "state"))
    assert set(made.line) >= {"url", "token", "control"}
    assert made.seconds < FIRST_LINE_S, f"the line came after {made.seconds:.2f} s"
    url, token = made.line["url"], made.line["token"]
    assert url.startswith("http://127.0.0.1:")
    assert made.line["control"] == f"{url}/_sim"
    assert token.startswith("dop_v1_")

    status, body = get(f"{url}/v2/account", token)
    assert status == 200, body
    assert body["account"]["status"] == "active"
    status, body = get(f"{url}/v2/account", None)
    assert status == 401, body
    assert body["id"] == "Unauthorized"
    assert get(f"{url}/v2/account", token + "x")[0] == 401

    made.process.send_signal(signal.SIGTERM)
    assert made.process.wait(10) == 0, made.errors()
    assert made.errors() == ""


def test_a_given_token_is_the_one_accepted(start: Start, tmp_path: Path) -> None:
    token = "dop_v1_given_by_the_test"
    made = start("--api-only", "--token", token, "--state", str(tmp_path / "state"))
    assert made.line["token"] == token
    assert get(f"{made.line['url']}/v2/account", token)[0] == 200
    assert get(f"{made.line['url']}/v2/account", "dop_v1_another")[0] == 401


def test_machines_without_root_are_refused_with_exit_2(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """As a user without root (the check itself; a real unprivileged run needs a checkout
    and an interpreter that user may read)."""
    monkeypatch.setattr(os, "geteuid", lambda: 1000)

    status = stand_in_main(["--state", str(tmp_path / "state")])

    printed = capsys.readouterr()
    assert status == 2 and printed.out == ""
    assert "root" in printed.err and "--api-only" in printed.err


def test_help_explains_the_options() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sim.digitalocean", "--help"],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert "DigitalOcean" in done.stdout
    for option in ("--listen", "--state", "--token", "--api-only", "--speed", "--check-responses"):
        assert option in done.stdout


def test_a_very_long_query_is_answered_in_the_apis_shape(start: Start, tmp_path: Path) -> None:
    made = start("--api-only", "--listen", "127.0.0.1:0", "--state", str(tmp_path / "state"))
    query = "&".join(["per_page=%5B%5D"] * 1500)  # about 22 KB: over aiohttp's 8 KiB default

    status, body = get(f"{made.line['url']}/v2/droplets?{query}", made.line["token"])

    assert (status, body["id"]) == (400, "bad_request")
