"""A real local mesh for tests: `meshctl up` in a private config and state home,
torn down with `meshctl down` and, whatever happened, SIGKILL of every droplet's
process group that the account still records."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from meshd.agent.store.jetstream import NatsStore
from tests.support import freeze

ROOT = Path(__file__).resolve().parents[2]
HELLO = ROOT / "examples" / "app" / "hello.py"
T = TypeVar("T")


def meshctl_path() -> str:
    beside = Path(sys.executable).parent / "meshctl"
    assert beside.is_file(), "meshctl is not installed beside this interpreter"
    return str(beside)


@dataclass
class LocalMesh:
    home: Path
    name: str
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in {"FORCE_COLOR", "COLUMNS"}}
        env.update(
            NO_COLOR="1",
            MESHD_CONFIG_HOME=str(self.home / "config"),
            MESHD_STATE_HOME=str(self.home / "state"),
            **self.extra_env,
        )
        return env

    def meshctl(
        self, *args: str | Path, timeout: float = 120, input: str = ""
    ) -> subprocess.CompletedProcess[str]:
        """`input` is its standard input (a secret's value, never an argument)."""
        return subprocess.run(
            [meshctl_path(), *map(str, args)],
            cwd=ROOT,
            env=self.env,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def ok(self, *args: str | Path, timeout: float = 120, input: str = "") -> str:
        result = self.meshctl(*args, timeout=timeout, input=input)
        assert result.returncode == 0, f"meshctl {args} failed:\n{result.stdout}\n{result.stderr}"
        return result.stdout

    def status(self) -> dict[str, Any]:
        return dict(json.loads(self.ok("status", "--json")))

    def status_if_readable(self) -> dict[str, Any] | None:
        """The status, or None while it cannot be read (JetStream electing leaders after a
        core droplet died)."""
        result = self.meshctl("status", "--json")
        return dict(json.loads(result.stdout)) if result.returncode == 0 else None

    @property
    def account(self) -> dict[str, Any]:
        path = self.home / "state" / self.name / "provider" / "account.json"
        return dict(json.loads(path.read_text())) if path.exists() else {"droplets": {}}

    def droplet_dir(self, name: str) -> Path:
        for droplet in self.account["droplets"].values():
            if droplet["name"] == name:
                return Path(droplet["dir"])
        raise KeyError(name)

    def address(self, name: str) -> str:
        for droplet in self.account["droplets"].values():
            if droplet["name"] == name:
                return str(droplet["address"])
        raise KeyError(name)

    @contextlib.contextmanager
    def paused(self, name: str) -> Iterator[None]:
        """The droplet's processes frozen (SIGSTOP to its process group) inside the block: what
        `meshctl chaos pause` does, without a command's start-up time in the pause."""
        (pgid,) = [d["pgid"] for d in self.account["droplets"].values() if d["name"] == name]
        freeze(pgid, group=True)
        try:
            yield
        finally:
            os.killpg(pgid, signal.SIGCONT)

    def pid_of(self, name: str, role: str) -> int:
        """The pid of a droplet's `agent` or `nats-server` (from /proc)."""
        directory = str(self.droplet_dir(name))
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            text = [a.decode(errors="replace") for a in argv]
            if role == "agent" and "agent" in text and directory in text:
                return int(proc.name)
            if (
                role == "nats-server"
                and any(a.endswith("nats-server") for a in text[:1])
                and any(directory in a for a in text)
            ):
                return int(proc.name)
        raise LookupError(f"no {role} running for {name}")

    def in_store(self, work: Callable[[NatsStore], Awaitable[T]]) -> T:
        """`work` done with a store connected as the operator (`meshctl`'s context)."""
        context = json.loads(next((self.home / "config" / "contexts").glob("*.json")).read_text())

        async def run() -> T:
            store = await NatsStore.connect(
                context["servers"], context["user"], context["password"], name="test"
            )
            try:
                return await work(store)
            finally:
                await store.close()

        return asyncio.run(run())

    def bucket_leader(self, bucket: str) -> str | None:
        """The nats-server leading a KV bucket's stream."""
        return self.in_store(lambda store: store.bucket_leader(bucket))

    def events_about(self, subject: str, count: int = 200) -> list[dict[str, Any]] | None:
        """The recent events about `subject`, oldest first (None while unreadable)."""
        result = self.meshctl("events", "-n", str(count), "--json")
        if result.returncode != 0:
            return None
        events = [json.loads(line) for line in result.stdout.splitlines() if line]
        return [e for e in events if e["subject"] == subject]

    def recovered(self, droplet: str, after: float = 0.0) -> list[dict[str, Any]] | None:
        """The events about `droplet` once they tell its failure and its recovery (after
        `after`), else None: both can pass while `status` cannot be read, and events recorded
        in the background may arrive in any order while the events stream elects a leader."""
        events = self.events_about(droplet)
        if not events:
            return None
        told = {e["name"] for e in events if e["at"] > after}
        return events if {"failure_confirmed", "droplet_recovered"} <= told else None

    def snapshotted(self, *droplets: str) -> bool:
        """Each of `droplets` has a snapshot of its deployment: a droplet killed before its
        first snapshot is rebuilt from the bare image instead."""
        status = self.status_if_readable()
        if status is None:
            return False
        found = {d["name"]: d.get("snapshot") for d in status["droplets"]}
        return all(found.get(name) for name in droplets)

    def converged(self) -> bool:
        """Every service has as many healthy instances as it wants (and there are services)."""
        services = self.status()["services"]
        return bool(services) and all(s["healthy"] == s["desired"] for s in services)

    def agent_replaced(self, droplet: str, old: int) -> bool:
        """The droplet's agent runs again with another pid than `old`."""
        try:
            return self.pid_of(droplet, "agent") != old
        except LookupError:
            return False

    def keep_logs(self) -> None:
        """Copy every droplet's logs out of the state that `down` removes (for post-mortems)."""
        for droplet in self.account["droplets"].values():
            source = Path(droplet["dir"])
            target = self.home / "logs" / source.name
            target.mkdir(parents=True, exist_ok=True)
            for log in source.glob("*.log"):
                shutil.copy(log, target / log.name)

    def kill_everything(self) -> None:
        for droplet in self.account["droplets"].values():
            with contextlib.suppress(ProcessLookupError, TypeError, PermissionError):
                os.killpg(droplet["pgid"], signal.SIGKILL)


@contextlib.contextmanager
def local_mesh(
    home: Path,
    droplets: int = 1,
    name: str | None = None,
    runtime: str = "process",
    env: dict[str, str] | None = None,
    netns: bool = False,
) -> Iterator[LocalMesh]:
    """`env` reaches every agent (the local droplets inherit `up`'s environment): secrets.
    `netns` puts each droplet in a network namespace of its own (root only). Each mesh has a
    name of its own (tests may run side by side, `pytest -n 3`, on one Docker engine)."""
    name = name or f"t{uuid.uuid4().hex[:8]}"
    mesh = LocalMesh(home, name, dict(env or {}))
    options = ["--runtime", runtime] + (["--no-pull"] if runtime == "docker" else [])
    options += ["--netns"] if netns else []
    try:
        mesh.ok("up", "--droplets", str(droplets), "--context", name, *options)
        yield mesh
    finally:
        mesh.keep_logs()
        with contextlib.suppress(subprocess.TimeoutExpired):
            mesh.meshctl("down", "--context", name, "--delete-data", timeout=60)
        mesh.kill_everything()


def service(status: dict[str, Any], project: str, env: str, name: str) -> dict[str, Any]:
    """One service of `meshctl status --json`."""
    return next(
        s
        for s in status["services"]
        if (s["project"], s["env"], s["service"]) == (project, env, name)
    )


def http_get(url: str, timeout: float = 2.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - test URL
        return str(response.read().decode())


def answered(url: str) -> str | None:
    """The body of a GET that succeeds, else None: for `wait_for` while a load balancer
    catches up with what `publish --wait` saw (it renders a moment after)."""
    try:
        return http_get(url)
    except OSError:
        return None


def write_project(directory: Path, rows: list[str], services: dict[str, Any]) -> tuple[Path, Path]:
    """A projects CSV and a deployment config running every service as a local process."""
    csv = directory / "projects.csv"
    csv.write_text("Project,Servers,MasterSpec,WebSpec\n" + "\n".join(rows) + "\n")
    config = directory / "deployment_config.json"
    projects = {row.split(",")[0]: {"services": services} for row in rows}
    config.write_text(json.dumps({"deployment_platform": "process", "projects": projects}))
    return csv, config


def hello(*args: str) -> dict[str, Any]:
    return {"command": " ".join([sys.executable, str(HELLO), *args])}


BACKEND_ONLY: dict[str, Any] = {
    "backend": hello(),
    "frontend": {"enabled": False},
    "database": {"enabled": False},
    "redis": {"enabled": False},
}

WEB_ONLY: dict[str, Any] = {
    "backend": hello(),
    "frontend": hello(),
    "database": {"enabled": False},
    "redis": {"enabled": False},
}


@dataclass
class Load:
    """Requests one after the other until stopped; what failed and how many there were."""

    urls: list[str]
    sent: int = 0
    failed: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            for url in self.urls:
                self.sent += 1
                try:
                    http_get(url, timeout=5.0)
                except (OSError, urllib.error.URLError) as err:
                    self.failed.append(f"{time.monotonic():.2f} {url}: {err}")
            time.sleep(0.01)


@contextlib.contextmanager
def requests_to(*urls: str) -> Iterator[Load]:
    """GETs of `urls`, one after the other, in a thread until the block ends."""
    load = Load(list(urls))
    thread = threading.Thread(target=load.run, daemon=True)
    thread.start()
    try:
        yield load
    finally:
        load.stop.set()
        thread.join(timeout=30)
