"""Time to converge and idle cost of a local mesh. Prints one JSON object.

A local mesh (`--runtime process`, the default, or `docker`) is started with master alone in a
private home; the seed CSV is published and timed until the publish returns (every instance
healthy and JetStream grown to three servers: `converge_seed_s`). From the provider's last
`droplet_created` event: `instances_seed_after_droplets_s` until every droplet's agent tells
(on `/health`) as many healthy instances as the plan puts there, and
`converge_seed_after_droplets_s` until the publish returns; `jetstream_grow_s` is the move
alone (from the `jetstream_grown` event). Over the
next `--idle` seconds (default 60) the RSS and CPU of every meshd agent and nats-server are
read from /proc (CPU from `/proc/<pid>/schedstat`: nanoseconds on a CPU, not scheduler ticks),
both the maxima over all agents and over the agents that hold no role (what a droplet that only
runs projects pays); then a generated 10-project CSV is published and timed. Run:
`.venv/bin/python bench/converge.py [--idle 60] [--runtime docker]` (docker needs
examples/app/busybox, which `make demo` puts there).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from meshd.agent.config import AGENT_HTTP_PORT

ROOT = Path(__file__).resolve().parents[1]
MESHCTL = str(Path(sys.executable).parent / "meshctl")
HELLO = ROOT / "examples" / "app" / "hello.py"


def meshctl(env: dict[str, str], *args: str) -> float:
    started = time.monotonic()
    done = subprocess.run(
        [MESHCTL, *args], env=env, capture_output=True, text=True, cwd=ROOT, check=False
    )
    if done.returncode != 0:
        sys.exit(f"meshctl {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
    return time.monotonic() - started


def ten_projects(directory: Path) -> Path:
    rows = ["Project,Servers,MasterSpec,WebSpec"]
    rows += [f"bench{i},{1 + i % 2},s-8vcpu-32gb-amd,s-1vcpu-2gb" for i in range(10)]
    csv = directory / "ten.csv"
    csv.write_text("\n".join(rows) + "\n")
    (directory / "app").symlink_to(HELLO.parent)
    run = f"python3 {HELLO}"

    def store(variable: str) -> dict[str, str]:
        return {
            "build_context": "app",
            "command": f"serve {variable}",
            "process_command": f"{run} --port-from {variable}",
            "health_path": "/health",
        }

    services = {
        "backend": {"build_context": "app", "process_command": run},
        "frontend": {"build_context": "app", "process_command": run},
        "database": store("DB_PORT"),
        "redis": store("REDIS_PORT"),
    }
    config = {
        "projects": {f"bench{i}": {"services": services} for i in range(10)},
    }
    (directory / "deployment_config.json").write_text(json.dumps(config))
    return csv


def planned_instances(env: dict[str, str], csv: str) -> Counter[str]:
    """How many instances the plan puts on each droplet."""
    result = subprocess.run(
        [MESHCTL, "publish", csv, "--dry-run", "--json", "--context", "bench"],
        env=env, capture_output=True, text=True, check=True, cwd=ROOT,
    )  # fmt: skip
    return Counter(i["droplet"] for i in json.loads(result.stdout)["instances"])


def every_instance_healthy(account: Path, wanted: Counter[str]) -> bool:
    """Every droplet's agent tells (on `/health`, not through the store, which a JetStream
    move pauses) as many healthy instances as the plan puts there."""
    try:
        droplets = json.loads(account.read_text())["droplets"].values()
    except (OSError, ValueError):
        return False
    addresses = {d["name"]: d["address"] for d in droplets}
    for name, count in wanted.items():
        if name not in addresses:
            return False
        url = f"http://{addresses[name]}:{AGENT_HTTP_PORT}/health"
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                found = json.load(response)["instances"]
        except (OSError, ValueError):
            return False
        if sum(1 for i in found if i["healthy"] and not i["draining"]) < count:
            return False
    return True


def processes(state: Path) -> dict[str, dict[int, str]]:
    """pid -> droplet directory name, of every agent and nats-server under `state`."""
    found: dict[str, dict[int, str]] = {"meshd": {}, "nats": {}}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        text = [a.decode(errors="replace") for a in argv]
        where = next((a for a in text if str(state) in a), None)
        if where is None:
            continue
        droplet = Path(where.split("/droplets/", 1)[-1].split("/")[0]).name
        if "agent" in text and any(a in ("meshd.agent", "meshd.agent_cli") for a in text):
            found["meshd"][int(proc.name)] = droplet
        elif text and text[0].endswith("nats-server"):
            found["nats"][int(proc.name)] = droplet
    return found


def cpu_ns(pid: int) -> int:
    """Nanoseconds the process has run on a CPU (all its threads)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        total += int((task / "schedstat").read_text().split()[0])
    return total


def role_holders(env: dict[str, str]) -> set[str]:
    """Droplets (their directory's name prefix) that hold a role now."""
    result = subprocess.run(
        [MESHCTL, "status", "--json"], env=env, capture_output=True, text=True, check=True, cwd=ROOT
    )
    return {d["name"] for d in json.loads(result.stdout)["droplets"] if d["roles"]}


def events_named(env: dict[str, str], name: str) -> list[dict[str, Any]]:
    """The mesh's events called `name`, oldest first."""
    result = subprocess.run(
        [MESHCTL, "events", "-n", "500", "--json", "--context", "bench"],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    events = [json.loads(line) for line in result.stdout.splitlines() if line]
    return [e for e in events if e["name"] == name]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def time_seed(env: dict[str, str], home: Path) -> dict[str, float]:
    """The seed CSV published on master alone, timed (see the module's docstring)."""
    found: dict[str, float] = {}
    wanted = planned_instances(env, "examples/projects.csv")
    started = time.time()
    publish = subprocess.Popen(
        [MESHCTL, "publish", "examples/projects.csv", "--wait"],
        env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    account = home / "state" / "bench" / "provider" / "account.json"
    healthy_at: float | None = None
    converged_at: float | None = None
    while converged_at is None or healthy_at is None:
        if healthy_at is None and every_instance_healthy(account, wanted):
            healthy_at = time.time()
        if converged_at is None and publish.poll() is not None:
            if publish.returncode:
                raise SystemExit(f"converge: publish failed ({publish.returncode})")
            converged_at = time.time()
        if time.time() - started > 600:
            raise SystemExit("converge: the agents never told every instance healthy")
        time.sleep(0.2)
    found["converge_seed_s"] = round(converged_at - started, 2)
    # From the provider's last droplet (its boot included locally): every instance healthy
    # as the agents tell, and the publish done (JetStream's growth included).
    created = max([e["at"] for e in events_named(env, "droplet_created")], default=started)
    found["instances_seed_after_droplets_s"] = round(healthy_at - created, 2)
    found["converge_seed_after_droplets_s"] = round(converged_at - created, 2)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--idle", type=float, default=60.0)
    parser.add_argument("--runtime", choices=["process", "docker"], default="process")
    parser.add_argument("--idle-only", action="store_true", help="skip the 10-project publish")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="meshd-bench-"))
    env = dict(
        os.environ,
        MESHD_CONFIG_HOME=str(home / "config"),
        MESHD_STATE_HOME=str(home / "state"),
        NO_COLOR="1",
    )
    result: dict[str, Any] = {"runtime": args.runtime}
    try:
        up = ["up", "--context", "bench", "--runtime", args.runtime, "--no-pull"]
        result["up_s"] = round(meshctl(env, *up), 2)
        result.update(time_seed(env, home))
        # JetStream grows from master alone to three servers meanwhile (part of the above).
        grown = events_named(env, "jetstream_grown")
        result["jetstream_grow_s"] = grown[0]["detail"]["seconds"] if grown else -1.0
        # Idle cost with the seed's 49 instances running.
        time.sleep(5)  # the first snapshots after the deployment are taken
        found = processes(home / "state")
        holders = role_holders(env)
        started = time.monotonic()
        before = {pid: cpu_ns(pid) for pids in found.values() for pid in pids}
        time.sleep(args.idle)
        took = time.monotonic() - started
        cpu = {pid: (cpu_ns(pid) - ns) / 1e9 / took * 100 for pid, ns in before.items()}
        agents = found["meshd"]
        roleless = [p for p, d in agents.items() if d.rsplit("-", 1)[0] not in holders]
        result["meshd_rss_mb_max"] = round(max(rss_mb(p) for p in agents), 1)
        result["meshd_cpu_pct_max"] = round(max(cpu[p] for p in agents), 2)
        # None when every agent holds a role (the builder goes to the roomiest droplet).
        result["meshd_rss_mb_roleless_max"] = (
            round(max(rss_mb(p) for p in roleless), 1) if roleless else None
        )
        result["meshd_cpu_pct_roleless_max"] = (
            round(max(cpu[p] for p in roleless), 2) if roleless else None
        )
        result["nats_rss_mb_max"] = round(max(rss_mb(p) for p in found["nats"]), 1)
        result["nats_cpu_pct_max"] = round(max(cpu[p] for p in found["nats"]), 2)
        result["agents"] = len(agents)
        result["roleless_agents"] = len(roleless)
        result["nats_servers"] = len(found["nats"])
        result["idle_s"] = round(took, 1)
        result["per_agent_cpu_pct"] = {d: round(cpu[p], 2) for p, d in sorted(agents.items())}
        result["per_nats_cpu_pct"] = {d: round(cpu[p], 2) for p, d in sorted(found["nats"].items())}
        if not args.idle_only:
            csv = ten_projects(home)
            result["converge_10_projects_s"] = round(
                meshctl(env, "publish", str(csv), "--wait", "--force", "--timeout", "300"), 2
            )
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
