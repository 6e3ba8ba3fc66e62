"""Failure detection under real faults. Prints one JSON object.

A local mesh of 5 droplets (`meshctl up --local --droplets 5`, process runtime) runs one
project (`shop,3`: its backend on two more droplets) behind the entry address. Then:

- `--kills` times (default 20): a random droplet other than master is SIGKILLed with its
  instances (`LocalProvider.crash`, what `meshctl chaos kill` does), the time to its failure
  record's `confirmed_at` is measured, requests through the entry address (every 20 ms) that
  fail from the kill until 2 s after the confirmation are counted, then the droplet is
  powered on again and its failure record removed (recovery, issue 6's next part, will do
  that itself).
- a soak of `--soak` seconds (default 600): one droplet loses 10 % of the packets sent to it
  (iptables, root only) and is paused with SIGSTOP for 2 s at random intervals of 5-15 s;
  every failure record that appears is a false confirmation.

`restore_p50_s` and `replace_p50_s` stay null until recovery exists. Run:
`.venv/bin/python bench/detect.py [--kills 20] [--soak 600]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from lb import MESHCTL, Requests, meshctl, write_inputs  # noqa: E402

from meshd.store import Store  # noqa: E402
from protocol import subjects  # noqa: E402
from protocol.codec import decode  # noqa: E402
from protocol.messages import FailureRecord  # noqa: E402

LOSS = 0.1


async def open_store(config_home: Path) -> Store:
    os.environ["MESHD_CONFIG_HOME"] = str(config_home)
    from meshd.context import load_context

    context = load_context(None)
    return await Store.connect(context.servers, context.user, context.password, name="bench")


async def failure_of(store: Store, droplet: str) -> FailureRecord | None:
    try:
        entry = await store.get(subjects.FAILURES_BUCKET, subjects.failure_key(droplet))
    except Exception:  # electing: ask again
        return None
    return decode(entry.value, FailureRecord) if entry and entry.value else None


async def failures(store: Store) -> list[str]:
    try:
        return sorted((await store.entries(subjects.FAILURES_BUCKET)).keys())
    except Exception:
        return []


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def kills(
    store: Store, provider: Any, tag: str, url: str, count: int
) -> tuple[list[float], list[int]]:
    detected: list[float] = []
    failed: list[int] = []
    for _ in range(count):
        records = {r.name: r for r in await provider.list(tag)}
        victim = random.choice(sorted(n for n in records if n != "master"))
        with Requests(url) as load:
            killed_at = time.time()
            killed = time.monotonic()
            await provider.crash(records[victim].id)
            record = None
            while record is None and time.monotonic() < killed + 60:
                await asyncio.sleep(0.05)
                record = await failure_of(store, victim)
            await asyncio.sleep(2)
        if record is None:
            raise RuntimeError(f"{victim} was never confirmed dead")
        detected.append(record.confirmed_at - killed_at)
        failed.append(sum(1 for t, ok in load.results if t >= killed and not ok))
        await provider.power_on(records[victim].id, fence=None)
        await remove_failure(store, victim)
        await asyncio.sleep(6)  # it reports again and every monitor has heard it
    return detected, failed


async def remove_failure(store: Store, droplet: str) -> None:
    for _ in range(100):
        try:
            await store.delete(subjects.FAILURES_BUCKET, subjects.failure_key(droplet))
            return
        except Exception:
            await asyncio.sleep(0.2)


def iptables(*args: str) -> bool:
    done = subprocess.run(["iptables", *args], capture_output=True, check=False)
    return done.returncode == 0


async def soak(store: Store, provider: Any, tag: str, seconds: float) -> dict[str, Any]:
    records = {r.name: r for r in await provider.list(tag)}
    victim = sorted(n for n in records if n != "master")[-1]
    rule = [
        "INPUT", "-d", records[victim].address, "-m", "statistic", "--mode", "random",
        "--probability", str(LOSS), "-j", "DROP",
    ]  # fmt: skip
    lossy = os.geteuid() == 0 and iptables("-I", *rule)
    before = await failures(store)
    pauses = 0
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            await asyncio.sleep(random.uniform(5, 15))
            await provider.pause(records[victim].id)
            await asyncio.sleep(2.0)
            await provider.pause(records[victim].id, resume=True)
            pauses += 1
    finally:
        if lossy:
            iptables("-D", *rule)
    await asyncio.sleep(5)
    after = await failures(store)
    return {
        "false_confirmations": len(set(after) - set(before)),
        "soak_s": seconds,
        "soak_pauses": pauses,
        "soak_packet_loss": LOSS if lossy else None,
    }


async def measure(home: Path, url: str, kill_count: int, soak_s: float) -> dict[str, Any]:
    from meshd.cli.up import open_provider
    from meshd.context import load_context
    from meshd.provisioner import mesh_tag

    store = await open_store(home / "config")
    context = load_context(None)
    provider = open_provider(context.mesh, context.provider)
    tag = mesh_tag(context.mesh)
    try:
        detected, failed = await kills(store, provider, tag, url, kill_count)
        result: dict[str, Any] = {
            "kills": len(detected),
            "detect_p50_s": round(statistics.median(detected), 2),
            "detect_p99_s": round(percentile(detected, 0.99), 2),
            "detect_max_s": round(max(detected), 2),
            "restore_p50_s": None,
            "replace_p50_s": None,
            "failed_requests_during_kill": sum(failed),
            "failed_requests_per_kill_max": max(failed),
        }
        result.update(await soak(store, provider, tag, soak_s))
        return result
    finally:
        await provider.close()
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--soak", type=float, default=600.0)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="meshd-bench-detect-"))
    env = dict(
        os.environ,
        MESHD_CONFIG_HOME=str(home / "config"),
        MESHD_STATE_HOME=str(home / "state"),
        NO_COLOR="1",
    )
    write_inputs(home)
    try:
        meshctl(env, "up", "--local", "--droplets", "5", "--name", "detect", "--runtime", "process")
        meshctl(env, "publish", str(home / "projects.csv"), "--wait")
        status = json.loads(meshctl(env, "status", "--json"))
        url = f"{status['entry_url']}/shop-prod/backend/"
        time.sleep(3)
        result = asyncio.run(measure(home, url, args.kills, args.soak))
    finally:
        subprocess.run(
            [MESHCTL, "down", "--local", "--name", "detect"],
            env=env,
            capture_output=True,
            check=False,
            cwd=ROOT,
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
