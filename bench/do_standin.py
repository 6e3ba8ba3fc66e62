"""The DigitalOcean stand-in's own costs, so that tests and benches built on it know what it
adds. Prints one JSON object.

One stand-in process (`python -m sim.digitalocean`, root: droplets are machines) with every
answer checked against the description, as tests run it:

- `first_line_s`: from start to its URL line; `ready_s`: to its first answered `/v2` request
  (the description loaded, the bridges made);
- `checked_ms`: latency of `GET /v2/droplets/{id}` and `GET /v2/droplets` (p50, p95) over
  `--requests` requests, each request validated and each answer checked against the
  description (`--check-responses`, as tests run it);
- with the API's delays set to 0, so that only the machine is measured, over `--droplets`
  droplets: `create_to_ssh_s` (POST to an SSH command answered), `power_off_s`, `power_on_s`
  (to SSH answered), `snapshot_s` and `rebuild_s` (the action polled to completed);
- `rss_mb`: the stand-in's memory, and each droplet's (its sshd and PID 1) on average.

Run (root): `.venv/bin/python bench/do_standin.py [--droplets 5] [--requests 500]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncssh

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.digitalocean import (  # noqa: E402
    StandProcess,
    finished,
    host_pids_running,
    pydo_client,
    run_over_ssh,
    start_process,
)

DROPLET = {"region": "nyc3", "size": "s-1vcpu-1gb", "image": "debian-12-x64"}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50": round(statistics.median(ordered), 2),
        "p95": round(ordered[int(len(ordered) * 0.95) - 1], 2),
    }


async def timed_gets(stand: StandProcess, path: str, count: int) -> list[float]:
    headers = {"Authorization": f"Bearer {stand.token}"}
    took = []
    async with aiohttp.ClientSession(headers=headers) as session:
        for _ in range(count):
            began = time.perf_counter()
            async with session.get(stand.url + path) as answer:
                await answer.read()
                assert answer.status == 200, answer.status
            took.append((time.perf_counter() - began) * 1000)
    return took


async def status_is(do: Any, droplet_id: int, status: str) -> None:
    while True:
        if (await do.droplets.get(droplet_id))["droplet"]["status"] == status:
            return
        await asyncio.sleep(0.02)


async def ssh_ready(key: asyncssh.SSHKey, address: str) -> None:
    while True:
        try:
            await run_over_ssh(key, address, "true")
            return
        except (OSError, asyncssh.Error):
            await asyncio.sleep(0.02)


async def act(do: Any, droplet_id: int, body: dict[str, Any]) -> float:
    began = time.perf_counter()
    action = (await do.droplet_actions.post(droplet_id, body))["action"]
    await finished(do, every=0.02, action_id=action["id"])
    return time.perf_counter() - began


async def machines(stand: StandProcess, count: int) -> dict[str, Any]:
    zero = {name: 0 for name in ("create", "power_off", "power_on", "snapshot_min",
                                 "snapshot_per_gb", "rebuild", "rebuild_per_gb")}  # fmt: skip
    await stand.control({"delays": zero, "knobs": {"active_after_off": 0}})
    key = asyncssh.generate_private_key("ssh-ed25519")
    figures: dict[str, list[float]] = {
        k: [] for k in ("create_to_ssh_s", "power_off_s", "power_on_s", "snapshot_s", "rebuild_s")
    }
    async with pydo_client(stand.url, stand.token) as do:
        public = key.export_public_key().decode().strip()
        fingerprint = (await do.ssh_keys.create({"name": "bench", "public_key": public}))[
            "ssh_key"
        ]["fingerprint"]
        droplets = []
        for n in range(count):
            began = time.perf_counter()
            made = await do.droplets.create(
                {"name": f"bench-{n}", **DROPLET, "ssh_keys": [fingerprint]}
            )
            await finished(do, every=0.02, action_id=made["links"]["actions"][0]["id"])
            droplet = (await do.droplets.get(made["droplet"]["id"]))["droplet"]
            address = next(a["ip_address"] for a in droplet["networks"]["v4"]
                           if a["type"] == "public")  # fmt: skip
            await ssh_ready(key, address)
            figures["create_to_ssh_s"].append(time.perf_counter() - began)
            droplets.append((droplet["id"], address))
        stand_rss = rss_mb(stand.process.pid)
        boots = [p for d, _ in droplets for p in host_pids_running(f"--id={d}\x00")]
        sshds = host_pids_running("/usr/sbin/sshd")
        per_droplet = sum(rss_mb(pid) for pid in [*boots, *sshds]) / len(droplets)
        for droplet_id, address in droplets:
            figures["power_off_s"].append(await act(do, droplet_id, {"type": "power_off"}))
            await status_is(do, droplet_id, "off")  # a completed power_off may still read active
            began = time.perf_counter()
            await act(do, droplet_id, {"type": "power_on"})
            await ssh_ready(key, address)
            figures["power_on_s"].append(time.perf_counter() - began)
            figures["snapshot_s"].append(await act(do, droplet_id, {"type": "snapshot"}))
            snapshot = (await do.droplets.list_snapshots(droplet_id))["snapshots"][-1]["id"]
            body = {"type": "rebuild", "image": snapshot}
            figures["rebuild_s"].append(await act(do, droplet_id, body))
        for droplet_id, _ in droplets:
            await do.droplets.destroy(droplet_id)
    return {
        **{name: percentiles(values) for name, values in figures.items()},
        "rss_mb": {
            "stand_in": round(stand_rss, 1),
            "per_droplet": round(per_droplet, 1),
        },
    }


async def api(stand: StandProcess, count: int) -> dict[str, Any]:
    async with pydo_client(stand.url, stand.token) as do:
        made = await do.droplets.create({"name": "api-bench", **DROPLET})
        await finished(do, every=0.02, action_id=made["links"]["actions"][0]["id"])
        droplet_id = made["droplet"]["id"]
        one = await timed_gets(stand, f"/v2/droplets/{droplet_id}", count)
        listed = await timed_gets(stand, "/v2/droplets", count)
        await do.droplets.destroy(droplet_id)
    return {"get_droplet": percentiles(one), "list_droplets": percentiles(listed)}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--droplets", type=int, default=5)
    parser.add_argument("--requests", type=int, default=500)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/do_standin.py: droplets that are machines need root")
    with tempfile.TemporaryDirectory(prefix="do-bench-") as state:
        began = time.perf_counter()
        stand = start_process(Path(state), "--speed", "20")
        first_line = time.perf_counter() - began
        try:
            async with pydo_client(stand.url, stand.token) as do:
                await do.account.get()
            ready = time.perf_counter() - began
            await stand.control({"limits": {"per_minute": 10**6, "per_hour": 10**7}})
            checked = await api(stand, args.requests)
            figures = await machines(stand, args.droplets)
            violations = (await stand.control(path="/violations"))["violations"]
        finally:
            status = stand.stop()
    print(
        json.dumps(
            {
                "first_line_s": round(first_line, 2),
                "ready_s": round(ready, 2),
                "checked_ms": checked,
                **figures,
                "droplets": args.droplets,
                "requests": args.requests,
                "violations": len(violations),
                "exit": status,
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
