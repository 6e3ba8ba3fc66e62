"""Helpers shared by the tests: real components, started by the tests themselves."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import time
from pathlib import Path
from typing import NoReturn

import pytest


def unavailable(reason: str) -> NoReturn:
    """A real component the test needs is missing: skip on a laptop, fail in CI (`CI=true`),
    where `.ci/run` installs every one."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: this test must run)")
    pytest.skip(reason)


def nginx_binary() -> str:
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if os.path.isfile("/usr/sbin/nginx") else None
    )
    if found is None:
        unavailable("nginx not installed (Debian: apt-get install nginx-light)")
    return found


def namespaces_allowed() -> None:
    """Network-namespace droplets need root and the `ip`, `nsenter` and `iptables` tools."""
    if os.geteuid() != 0:
        unavailable("network namespaces need root")
    missing = [tool for tool in ("ip", "nsenter", "iptables") if shutil.which(tool) is None]
    if missing:
        unavailable(f"{', '.join(missing)} not installed (Debian: iproute2 util-linux iptables)")


PORTS_PER_WORKER = 2500  # below the kernel's ephemeral range (32768-60999)


def free_port(address: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on at `address` right now, from a range of this test
    worker's own (`pytest -n`): two workers never pick the same port between the check and
    the listen."""
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    low = 10000 + (worker % 8) * PORTS_PER_WORKER
    for _ in range(500):
        port = random.randrange(low, low + PORTS_PER_WORKER)
        with socket.socket() as probe:
            try:
                probe.bind((address, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {low}-{low + PORTS_PER_WORKER} at {address}")


def freeze(pid: int, group: bool = False) -> None:
    """SIGSTOP to a process (or its group), returning once every thread has stopped: the
    kernel stops a multi-threaded process's threads one after the other, and on a loaded
    machine a Go server's network thread answered a request after `kill` had returned."""
    if group:
        os.killpg(pid, signal.SIGSTOP)
    else:
        os.kill(pid, signal.SIGSTOP)
    pids = group_members(pid) if group else [pid]
    deadline = time.monotonic() + 10
    while not all(stopped(p) for p in pids):
        if time.monotonic() > deadline:
            raise RuntimeError(f"process {pid} did not stop within 10 s of SIGSTOP")
        time.sleep(0.005)


def stopped(pid: int) -> bool:
    """Every thread of `pid` stopped (state T), or the process gone."""
    try:
        states = [
            (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
            for task in Path(f"/proc/{pid}/task").iterdir()
        ]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return True
    return all(state in ("T", "t", "Z", "X") for state in states)


def group_members(pgid: int) -> list[int]:
    members = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(fields[2]) == pgid:
            members.append(int(proc.name))
    return members
