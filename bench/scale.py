"""What an agent and a JetStream server cost as the mesh grows. Prints one JSON object.

For every size N (default 3, 9 and 27), a local mesh of N droplets is started
(`meshctl up --droplets N`, process runtime) in a private home, and once every agent reports and
JetStream has its three servers the mesh idles for `--idle` seconds (default 120). Over that
window, from /proc (CPU from `/proc/<pid>/schedstat`: nanoseconds on a CPU, not ticks):
- `agent_cpu_pct`: the median over the agents that hold no role; `agent_cpu_pct_roles_max`:
  the highest of the role holders apart;
- `nats_cpu_pct`: the median of the JetStream servers; `nats_msgs_per_s`: the messages in
  and out per second of the busiest server (from its `/varz`);
- `agent_rss_mb`: the median RSS of all agents.
Then a CSV of N one-droplet projects (`Servers=1`, one web service: all three environments of
every project on master, 3N instances) is published and timed until `publish --wait` returns
(`converge_s`), with what it cost: CPU seconds and messages received of a roleless agent
(medians, `publish_agent_cpu_s`, `publish_agent_msgs`: its connection's `out_msgs` in the
servers' `/connz`) and messages through the busiest JetStream server (`publish_msgs`).
The service is busybox's httpd (`--app busybox`, the default: the mesh's
time) or the demo app (`--app python`: 81 interpreters starting on two cores add seconds).

Last, the failure detector's protocol simulation (sim/detector.py, 1 % loss, 120 simulated
seconds with crashes and 2 s pauses): at 100 droplets five seeds of 20 crashes each, at 1,000
one seed of 5: `sim_detect_p99_s` (crash to decision) and `sim_false_confirmations`.

Run: `.venv/bin/python bench/scale.py [--sizes 3,9,27] [--idle 120] [--no-publish]
[--app busybox|python]`.
The largest mesh takes about two cores for a minute to start; run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from converge import HELLO, MESHCTL, cpu_ns, meshctl, processes, rss_mb  # noqa: E402

from meshd.agent.config import MONITOR_PORT  # noqa: E402
from sim.detector import Scenario, percentile, simulate  # noqa: E402

SETTLE_S = 15.0  # after the mesh is whole: the first snapshots, leases settled
START_TIMEOUT_S = 600.0


def status(env: dict[str, str], context: str) -> dict[str, Any] | None:
    done = subprocess.run(
        [MESHCTL, "status", "--json", "--context", context],
        env=env, capture_output=True, text=True, cwd=ROOT, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        return None
    found: dict[str, Any] = json.loads(done.stdout)
    return found


def wait_whole(env: dict[str, str], context: str, size: int) -> dict[str, Any]:
    """The mesh's status once all `size` agents report and JetStream has its servers."""
    servers = 3 if size >= 3 else 1
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        found = status(env, context)
        if found is not None:
            healthy = [d for d in found["droplets"] if d["healthy"]]
            if len(healthy) == size and len(found["jetstream"]["servers"]) == servers:
                return found
        time.sleep(2)
    raise SystemExit(f"scale: the mesh of {size} never had every agent and {servers} servers")


def app_command(directory: Path, app: str) -> str:
    """What each project's web service runs: `busybox`'s httpd serving a `health` file (starts
    in a millisecond: what is timed is the mesh), or `python`, the demo app (an interpreter
    start costs about 0.15 s of CPU here, which 81 instances on two cores feel)."""
    if app == "python":
        return f"python3 {HELLO}"
    www = directory / "www"
    www.mkdir()
    (www / "health").write_text("ok\n")
    httpd = f'exec busybox httpd -f -p "$SERVICE_HOST:$SERVICE_PORT" -h {www}'
    return f"sh -c {shlex.quote(httpd)}"


def one_droplet_projects(directory: Path, count: int, app: str) -> Path:
    rows = ["Project,Servers,MasterSpec,WebSpec"]
    rows += [f"p{i:02d},1,s-8vcpu-32gb-amd,s-1vcpu-2gb" for i in range(count)]
    csv = directory / "projects.csv"
    csv.write_text("\n".join(rows) + "\n")
    (directory / "app").symlink_to(HELLO.parent)
    # One web service: the default frontend and datastores are turned off.
    off = {"enabled": False}
    services = {
        "backend": {"build_context": "app", "process_command": app_command(directory, app)},
        "frontend": off,
        "database": off,
        "redis": off,
    }
    config = {"projects": {f"p{i:02d}": {"services": services} for i in range(count)}}
    (directory / "deployment_config.json").write_text(json.dumps(config))
    return csv


def nats_messages(addresses: list[str]) -> dict[str, int]:
    """Messages in and out so far, by server address (from its monitoring port)."""
    found: dict[str, int] = {}
    for address in addresses:
        with urllib.request.urlopen(f"http://{address}:{MONITOR_PORT}/varz", timeout=5) as answer:
            varz = json.load(answer)
        found[address] = int(varz["in_msgs"]) + int(varz["out_msgs"])
    return found


def agent_deliveries(addresses: list[str]) -> dict[str, int]:
    """Messages each agent's connection has received so far, by droplet (`/connz`)."""
    found: dict[str, int] = {}
    for address in addresses:
        url = f"http://{address}:{MONITOR_PORT}/connz?limit=1024"
        with urllib.request.urlopen(url, timeout=5) as answer:
            for connection in json.load(answer)["connections"]:
                name = connection.get("name", "")
                if name.startswith("meshd-"):
                    found[name.removeprefix("meshd-")] = int(connection["out_msgs"])
    return found


def roleless_and_servers(home: Path, whole: dict[str, Any]) -> tuple[dict[int, str], list[str]]:
    """The agents that hold no role (pid -> droplet), the JetStream servers' addresses."""
    holders = {d["name"] for d in whole["droplets"] if d["roles"]}
    by_name = {d["name"]: d["address"] for d in whole["droplets"]}
    agents = processes(home / "state")["meshd"]
    # A droplet's directory is named after it, with a suffix of its life.
    named = {pid: directory.rsplit("-", 1)[0] for pid, directory in agents.items()}
    roleless = {pid: name for pid, name in named.items() if name not in holders}
    return roleless, [by_name[name] for name in whole["jetstream"]["servers"]]


def publish_costs(
    env: dict[str, str], context: str, csv: Path, roleless: dict[int, str], servers: list[str]
) -> dict[str, Any]:
    """The publish of `csv`, timed until `--wait` returns: what it cost an agent that holds
    no role (CPU seconds and messages received, medians) and the busiest JetStream server
    (messages in and out)."""
    before = {pid: cpu_ns(pid) for pid in roleless}
    messages_before, received_before = nats_messages(servers), agent_deliveries(servers)
    took = meshctl(env, "publish", str(csv), "--wait", "--force", "--context", context,
                   "--timeout", "600")  # fmt: skip
    messages_after, received_after = nats_messages(servers), agent_deliveries(servers)
    spent = [(cpu_ns(pid) - ns) / 1e9 for pid, ns in before.items()]
    received = [
        received_after[name] - received_before[name]
        for name in roleless.values()
        if name in received_before and name in received_after
    ]
    return {
        "converge_s": round(took, 2),
        "publish_agent_cpu_s": round(statistics.median(spent), 3) if spent else None,
        "publish_agent_msgs": statistics.median(received) if received else None,
        "publish_msgs": max(messages_after[a] - messages_before[a] for a in servers),
    }


def idle_costs(home: Path, whole: dict[str, Any], idle: float) -> dict[str, Any]:
    named, servers = roleless_and_servers(home, whole)
    found = processes(home / "state")
    started = time.monotonic()
    before = {pid: cpu_ns(pid) for pids in found.values() for pid in pids}
    messages_before = nats_messages(servers)
    time.sleep(idle)
    took = time.monotonic() - started
    cpu = {pid: (cpu_ns(pid) - ns) / 1e9 / took * 100 for pid, ns in before.items()}
    messages_after = nats_messages(servers)
    agents = found["meshd"]
    roleless = [p for p in named if p in agents]
    holding = [p for p in agents if p not in roleless]
    return {
        "agent_cpu_pct": round(statistics.median(cpu[p] for p in roleless or agents), 2),
        "agent_cpu_pct_roles_max": round(max(cpu[p] for p in holding), 2) if holding else None,
        "nats_cpu_pct": round(statistics.median(cpu[p] for p in found["nats"]), 2),
        "nats_msgs_per_s": round(
            max(messages_after[a] - messages_before[a] for a in servers) / took, 1
        ),
        "agent_rss_mb": round(statistics.median(rss_mb(p) for p in agents), 1),
        "agents": len(agents),
        "roleless_agents": len(roleless),
        "idle_s": round(took, 1),
    }


def measure(size: int, idle: float, app: str | None) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix=f"meshd-scale{size}-"))
    context = f"scale{size}"
    env = dict(
        os.environ,
        MESHD_CONFIG_HOME=str(home / "config"),
        MESHD_STATE_HOME=str(home / "state"),
        NO_COLOR="1",
    )
    result: dict[str, Any] = {}
    try:
        up = ["up", "--context", context, "--runtime", "process", "--droplets", str(size)]
        result["up_s"] = round(meshctl(env, *up), 2)
        whole = wait_whole(env, context, size)
        time.sleep(SETTLE_S)
        result.update(idle_costs(home, whole, idle))
        if app is not None:
            csv = one_droplet_projects(home, size, app)
            result.update(publish_costs(env, context, csv, *roleless_and_servers(home, whole)))
    finally:
        subprocess.run(
            [MESHCTL, "down", "--context", context, "--delete-data"],
            env=env, capture_output=True, check=False, cwd=ROOT,
        )  # fmt: skip
        shutil.rmtree(home, ignore_errors=True)
    return result


def simulated(droplets: int, seeds: int) -> dict[str, Any]:
    """The detector's protocol simulation (sim/detector.py) under 1 % loss: crashes and 2 s
    pauses, `seeds` runs; p99 over every crash, false confirmations summed."""
    detections: list[float] = []
    false = 0
    for seed in range(1, seeds + 1):
        faults = 5 if droplets >= 1000 else 20
        outcome = simulate(
            Scenario(droplets=droplets, seconds=120.0, loss=0.01, crashes=faults,
                     pauses=faults, seed=seed)
        )  # fmt: skip
        detections += outcome.detection_s
        false += outcome.false_confirmations
    return {"p99": percentile(detections, 0.99), "false": false, "crashes": len(detections)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="3,9,27", help="mesh sizes, comma-separated")
    parser.add_argument("--idle", type=float, default=120.0)
    parser.add_argument("--no-publish", action="store_true", help="skip the projects' publish")
    parser.add_argument("--no-sim", action="store_true", help="skip the protocol simulation")
    parser.add_argument(
        "--app", choices=("busybox", "python"), default="busybox",
        help="what the projects run (busybox httpd: the mesh's time; python: the demo app)",
    )  # fmt: skip
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    app = None if args.no_publish else args.app
    per_size = {size: measure(size, args.idle, app) for size in sizes}
    figures = ("agent_cpu_pct", "agent_cpu_pct_roles_max", "nats_cpu_pct", "nats_msgs_per_s",
               "agent_rss_mb", "converge_s", "publish_agent_cpu_s", "publish_agent_msgs",
               "publish_msgs", "up_s")  # fmt: skip
    result: dict[str, Any] = {
        name: {str(size): found.get(name) for size, found in per_size.items()} for name in figures
    }
    result["idle_s"] = args.idle
    result["app"] = app
    sims = (
        {} if args.no_sim else {str(n): simulated(n, seeds) for n, seeds in ((100, 5), (1000, 1))}
    )
    result["sim_detect_p99_s"] = {n: found["p99"] for n, found in sims.items()}
    result["sim_false_confirmations"] = {n: found["false"] for n, found in sims.items()}
    result["sim_crashes"] = {n: found["crashes"] for n, found in sims.items()}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
