"""Time to converge and idle cost of a local mesh. Prints one JSON object.

A mesh of 3 local droplets (`--runtime process`, the default, or `docker`) is started in a
private home; the seed CSV is published and timed until every instance is healthy; over the
next `--idle` seconds (default 60) the RSS and CPU of every meshd agent and nats-server are
read from /proc; then a generated 10-project CSV is published and timed. Run:
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MESHCTL = str(Path(sys.executable).parent / "meshctl")
HELLO = ROOT / "examples" / "app" / "hello.py"


def meshctl(env: dict[str, str], *args: str) -> float:
    started = time.monotonic()
    subprocess.run([MESHCTL, *args], env=env, check=True, capture_output=True, cwd=ROOT)
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


def processes(state: Path) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {"meshd": [], "nats": []}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        text = [a.decode(errors="replace") for a in argv]
        if not any(str(state) in a for a in text):
            continue
        if "agent" in text and any(a in ("meshd.agent", "meshd.agent_cli") for a in text):
            found["meshd"].append(int(proc.name))
        elif text and text[0].endswith("nats-server"):
            found["nats"].append(int(proc.name))
    return found


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--idle", type=float, default=60.0)
    parser.add_argument("--runtime", choices=["process", "docker"], default="process")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="meshd-bench-"))
    env = dict(
        os.environ,
        MESHD_CONFIG_HOME=str(home / "config"),
        MESHD_STATE_HOME=str(home / "state"),
        NO_COLOR="1",
    )
    result: dict[str, float | str] = {"runtime": args.runtime}
    try:
        up = ["up", "--context", "bench", "--runtime", args.runtime, "--no-pull"]
        result["up_s"] = round(meshctl(env, *up), 2)
        seed = meshctl(env, "publish", "examples/projects.csv", "--wait")
        result["converge_seed_s"] = round(seed, 2)
        # Idle cost with the seed's 49 instances running.
        found = processes(home / "state")
        before = {pid: cpu_ticks(pid) for pids in found.values() for pid in pids}
        time.sleep(args.idle)
        ticks = os.sysconf("SC_CLK_TCK")
        cpu = {pid: (cpu_ticks(pid) - t) / ticks / args.idle * 100 for pid, t in before.items()}
        result["meshd_rss_mb_max"] = round(max(rss_mb(p) for p in found["meshd"]), 1)
        result["meshd_cpu_pct_max"] = round(max(cpu[p] for p in found["meshd"]), 2)
        result["nats_rss_mb_max"] = round(max(rss_mb(p) for p in found["nats"]), 1)
        result["nats_cpu_pct_max"] = round(max(cpu[p] for p in found["nats"]), 2)
        result["agents"] = len(found["meshd"])
        result["nats_servers"] = len(found["nats"])
        csv = ten_projects(home)
        result["converge_10_projects_s"] = round(
            meshctl(env, "publish", str(csv), "--wait", "--force", "--timeout", "300"), 2
        )
    finally:
        subprocess.run(
            [MESHCTL, "down", "--context", "bench"],
            env=env,
            capture_output=True,
            check=False,
            cwd=ROOT,
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
