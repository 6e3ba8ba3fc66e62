"""The seed's mesh on the DigitalOcean stand-in, with its default delays at speed 1 (create 45 s,
power off 8 s, power on 20 s, rebuild 60 s + 30 s a GB, snapshot 90 s a GB): what a user of a
real account waits for. Prints one JSON object:

- `up_s`: `meshctl up --provider digitalocean` (key, firewall, master, reserved IP, bootstrap);
- `publish_seed_s`: `meshctl publish examples/projects.csv --wait` (three droplets created and
  bootstrapped over SSH, 45 services healthy, master resized and back);
- `bootstrap_s_p50`: a droplet's bootstrap over SSH (the events `droplet_bootstrapped`);
- `detect_web_s`, `detect_master_s`: from the machine's death to `failure_confirmed` (the
  seed promises 30 s for a web droplet, 60 s for master);
- `recover_web_s`, `recover_master_s`: from the machine's death (its PID 1 killed) to
  `droplet_recovered` (confirmed dead, powered off, rebuilt from its snapshot, bootstrapped,
  its agent back); the seed promises 3-5 minutes;
- `api_requests_per_recovery`: every API request the mesh made from a death to its recovery
  (the mesh's routine polling included), the larger of the two;
- `invalid_requests`: requests DigitalOcean's description refuses (target 0);
- `duplicate_droplets`: droplets of one name in the account (target 0);
- `rate_limited`: answers 429 (the budget exceeded: target 0).

Run as root: `.venv/bin/python bench/digitalocean.py [--speed 1]` (about 17 minutes at 1).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.digitalocean import (  # noqa: E402
    StandProcess,
    kill_machine,
    resized,
    start_process,
)
from tests.support.mesh import LocalMesh, http_get  # noqa: E402
from tests.support.waiting import wait_for  # noqa: E402

BACKEND = "/hostomatic-prod/backend/"


def timed(mesh: LocalMesh, *args: str, timeout: float) -> float:
    started = time.monotonic()
    mesh.ok(*args, timeout=timeout)
    return round(time.monotonic() - started, 1)


def events(mesh: LocalMesh) -> list[dict[str, Any]]:
    result = mesh.meshctl("events", "-n", "2000", "--json", timeout=60)
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def recovery(
    mesh: LocalMesh, stand: StandProcess, name: str, timeout: float
) -> tuple[float, float, int]:
    """Once its post-deployment snapshot is taken (it is rebuilt from it), kill the
    droplet's machine; seconds to its confirmed failure and to its recovery, and the API
    requests meanwhile."""

    def snapshotted() -> bool:
        return any(e["name"] == "snapshot_taken" and e["subject"] == name for e in events(mesh))

    wait_for(snapshotted, timeout, f"{name}'s snapshot", every=5.0)
    requests = stand.settings()["requests"]
    killed = time.time()
    kill_machine(stand.droplets()[name]["id"])

    def at(what: str) -> float | None:
        for event in events(mesh):
            if event["subject"] == name and event["name"] == what and event["at"] > killed:
                return float(event["at"])
        return None

    recovered_at = wait_for(lambda: at("droplet_recovered"), timeout, f"{name} recovered", 2.0)
    confirmed_at = at("failure_confirmed") or recovered_at
    return (round(confirmed_at - killed, 1), round(recovered_at - killed, 1),
            stand.settings()["requests"] - requests)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speed", default="1", help="the stand-in's clock speed")
    args = parser.parse_args()
    limit = 1800.0 / float(args.speed) + 300
    with tempfile.TemporaryDirectory(prefix="bench-do-") as scratch:
        home = Path(scratch)
        (home / "operator").mkdir()
        stand = start_process(home / "stand", "--speed", args.speed)
        mesh = LocalMesh(home / "mesh", "bench-do", {"HOME": str(home / "operator"),
                         "DIGITALOCEAN_TOKEN": stand.token})  # fmt: skip
        try:
            url = wait_for(lambda: stand.settings()["ready"] and stand.settings()["inside_url"],
                           30, "the stand-in")  # fmt: skip
            admin = url.split("//")[1].split(":")[0]
            up_s = timed(mesh, "up", "--provider", "digitalocean", "--region", "fra1",
                         "--api-url", url, "--admin-ip", admin, "--runtime", "process",
                         "--droplet-python", sys.executable, timeout=limit)  # fmt: skip
            publish_s = timed(mesh, "publish", str(ROOT / "examples" / "projects.csv"), "--wait",
                              "--timeout", str(limit), timeout=limit + 60)  # fmt: skip
            if not resized(mesh, "master"):  # publish --wait waits for it
                raise SystemExit("publish --wait returned before master had its CSV size")
            reserved = mesh.status()["entry_url"].split("//")[1].rstrip("/")
            wait_for(lambda: _served(f"http://{reserved}{BACKEND}"), 120, "served")
            web_seen_s, web_s, web_requests = recovery(mesh, stand, "hostomatic-web2", limit)
            master_seen_s, master_s, master_requests = recovery(mesh, stand, "master", limit)
            booted = [e["detail"]["seconds"] for e in events(mesh)
                      if e["name"] == "droplet_bootstrapped"]  # fmt: skip
            names = Counter(d["name"] for d in stand.get("/v2/droplets?per_page=200")["droplets"])
            ledger = stand.settings()
            limited = sum(1 for r in _requests(stand) if r.get("status") == 429)
        finally:
            mesh.meshctl("down", "--delete-data", timeout=600)
            stand.stop()
    print(json.dumps({
        "speed": float(args.speed),
        "up_s": up_s,
        "publish_seed_s": publish_s,
        "bootstrap_s_p50": round(statistics.median(booted), 2) if booted else None,
        "bootstraps": len(booted),
        "detect_web_s": web_seen_s,
        "detect_master_s": master_seen_s,
        "recover_web_s": web_s,
        "recover_master_s": master_s,
        "api_requests_per_recovery": max(web_requests, master_requests),
        "api_requests_total": ledger["requests"],
        "invalid_requests": ledger["invalid"],
        "duplicate_droplets": sum(count - 1 for count in names.values()),
        "rate_limited": limited,
    }))  # fmt: skip


def _served(url: str) -> bool:
    try:
        return "hostomatic-prod-backend" in http_get(url, timeout=3)
    except OSError:
        return False


def _requests(stand: StandProcess) -> list[dict[str, Any]]:
    import urllib.request

    with urllib.request.urlopen(f"{stand.url}/_sim/requests", timeout=30) as answer:  # noqa: S310
        return list(json.loads(answer.read())["requests"])


if __name__ == "__main__":
    main()
