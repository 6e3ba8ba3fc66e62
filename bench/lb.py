"""The entry point under faults. Prints one JSON object.

A local mesh (process runtime; `meshctl up`'s droplets, then the CSV's) runs one
project whose backend has two instances behind the lb holder's nginx. A bounded request
loop (loopback only, every 20 ms) runs through the entry address while, in turn:

- `meshctl restart` replaces both instances (`rolling_restart_failed`: requests that
  failed; `rolling_restart_s`: how long the command took, waiting included);
- one backend instance is SIGKILLed (`crash_failed_gets`; nginx retries on the other);
- the nats-server leading the leases stream (not on the lb holder's droplet) is paused
  with SIGSTOP for 8 s (`election_pause_failed`: requests that failed while JetStream
  elected a new leader and the holder could not renew);
- the lb holder's droplet is SIGKILLed (`lb_failover_gap_s`: from the kill to the first
  good answer after it; `lb_failover_failed`).

`reload_ms` is the median time the nginx plugin takes to test and reload a changed
configuration. Needs nginx (Debian nginx-light). Run: `.venv/bin/python bench/lb.py`.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MESHCTL = str(Path(sys.executable).parent / "meshctl")
HELLO = ROOT / "examples" / "app" / "hello.py"
INTERVAL_S = 0.02


def meshctl(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [MESHCTL, *args], env=env, check=True, capture_output=True, text=True, cwd=ROOT
    )
    return done.stdout


class Requests:
    """GETs `url` every INTERVAL_S in a thread, recording (time, ok)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.results: list[tuple[float, bool]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Requests:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with urllib.request.urlopen(self.url, timeout=1) as response:  # noqa: S310
                    ok = response.status == 200
            except OSError:
                ok = False
            self.results.append((time.monotonic(), ok))
            time.sleep(INTERVAL_S)

    def failed(self) -> int:
        return sum(1 for _, ok in self.results if not ok)


def instance_pid(address: str, key: str) -> int:
    with urllib.request.urlopen(f"http://{address}:8080/health", timeout=2) as r:  # noqa: S310
        body = json.load(r)
    for i in body["instances"]:
        if f"{i['project']}.{i['env']}.{i['service']}" == key:
            return int(i["runtime_id"])
    raise LookupError(key)


async def operator_store(config_home: Path) -> Any:
    """A connection to the bench's mesh with the operator's context."""
    os.environ["MESHD_CONFIG_HOME"] = str(config_home)
    from meshd.agent.store.jetstream import NatsStore
    from meshd.cli.context import load_context

    context = load_context(None)
    return await NatsStore.connect(context.servers, context.user, context.password, name="bench")


def leases_leader(config_home: Path) -> str:
    """The nats-server that leads the leases stream."""

    async def ask() -> str:
        store = await operator_store(config_home)
        try:
            leader = await store.bucket_leader("mesh_leases")
            assert leader is not None, "the leases stream has no leader"
            return str(leader)
        finally:
            await store.close()

    return asyncio.run(ask())


def nats_pid(droplet_dir: str) -> int:
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if argv[0].endswith("nats-server") and any(droplet_dir in a for a in argv):
            return int(proc.name)
    raise LookupError(droplet_dir)


def reload_ms(directory: Path) -> float:
    from plugins.lb import LbConfig, LbContext, Upstream
    from plugins.lb.nginx import NginxLoadBalancer

    async def measure() -> float:
        lb = NginxLoadBalancer(LbContext(directory=directory))
        timings = []
        try:
            for i in range(11):
                upstream = Upstream("shop", "prod", "backend", (f"127.0.0.1:{9000 + i}",))
                text = LbConfig("127.0.0.1:18123", (upstream,))
                started = time.perf_counter()
                await lb.apply(text)
                timings.append(time.perf_counter() - started)
        finally:
            await lb.stop()
        return statistics.median(timings[1:]) * 1000  # the first one starts nginx

    return round(asyncio.run(measure()), 1)


def rolling_restart(env: dict[str, str], url: str) -> dict[str, Any]:
    with Requests(url) as rolling:
        time.sleep(1)
        started = time.monotonic()
        meshctl(env, "restart", "shop", "prod", "backend")
        took = round(time.monotonic() - started, 1)
        time.sleep(1)
    return {
        "rolling_restart_s": took,
        "rolling_restart_failed": rolling.failed(),
        "rolling_restart_requests": len(rolling.results),
    }


def instance_crash(url: str, victim: str) -> dict[str, Any]:
    with Requests(url) as crash:
        time.sleep(1)
        os.kill(instance_pid(victim, "shop.prod.backend"), signal.SIGKILL)
        time.sleep(3)
    return {"crash_failed_gets": crash.failed(), "crash_requests": len(crash.results)}


def election_pause(url: str, leader_dir: str) -> dict[str, Any]:
    paused = nats_pid(leader_dir)
    with Requests(url) as election:
        os.kill(paused, signal.SIGSTOP)
        time.sleep(8)
        os.kill(paused, signal.SIGCONT)
        time.sleep(2)
    time.sleep(5)
    return {"election_pause_failed": election.failed()}


def holder_kill(url: str, pgid: int) -> dict[str, Any]:
    with Requests(url) as failover:
        time.sleep(1)
        killed = time.monotonic()
        os.killpg(pgid, signal.SIGKILL)
        deadline = killed + 30
        back = None
        while time.monotonic() < deadline and back is None:
            time.sleep(0.1)
            back = next((t for t, ok in failover.results if t > killed and ok), None)
        time.sleep(0.5)
    failed_after = [t for t, ok in failover.results if t > killed and not ok]
    return {
        "lb_failover_gap_s": round(back - killed, 2) if back else None,
        "lb_failover_failed": len(failed_after),
    }


def write_inputs(home: Path, projects: tuple[str, ...] = ("shop",)) -> None:
    """A CSV of `projects` (each on master and two droplets of its own) that run only a
    backend."""
    rows = "".join(f"{name},3,s-1vcpu-2gb,s-1vcpu-1gb\n" for name in projects)
    (home / "projects.csv").write_text(f"Project,Servers,MasterSpec,WebSpec\n{rows}")
    services = {
        "backend": {"command": f"python3 {HELLO}"},
        "frontend": {"enabled": False},
        "database": {"enabled": False},
        "redis": {"enabled": False},
    }
    config = {"projects": {name: {"services": services} for name in projects}}
    (home / "deployment_config.json").write_text(json.dumps(config))


def main() -> None:
    home = Path(tempfile.mkdtemp(prefix="meshd-bench-lb-"))
    env = dict(
        os.environ,
        MESHD_CONFIG_HOME=str(home / "config"),
        MESHD_STATE_HOME=str(home / "state"),
        NO_COLOR="1",
    )
    write_inputs(home)
    result: dict[str, Any] = {}
    try:
        meshctl(env, "up", "--context", "bench", "--runtime", "process")
        meshctl(env, "publish", str(home / "projects.csv"), "--wait")
        status = json.loads(meshctl(env, "status", "--json"))
        url = f"{status['entry_url']}/shop-prod/backend/"
        account = json.loads((home / "state" / "bench" / "provider" / "account.json").read_text())
        droplets = {d["name"]: d for d in account["droplets"].values()}
        backend = next(
            s for s in status["services"] if s["service"] == "backend" and s["env"] == "prod"
        )
        time.sleep(1)
        result.update(rolling_restart(env, url))
        result.update(instance_crash(url, droplets[backend["droplets"][0]]["address"]))
        holder = json.loads(meshctl(env, "status", "--json"))["lb"]
        leader = leases_leader(home / "config")
        result["election_paused"] = leader
        if leader != holder:
            result.update(election_pause(url, droplets[leader]["dir"]))
        holder = json.loads(meshctl(env, "status", "--json"))["lb"]
        result["lb_holder_killed"] = holder
        result.update(holder_kill(url, droplets[holder]["pgid"]))
        result["reload_ms"] = reload_ms(home / "reload")
    finally:
        subprocess.run(
            [MESHCTL, "down", "--context", "bench", "--delete-data"],
            env=env,
            capture_output=True,
            check=False,
            cwd=ROOT,
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
