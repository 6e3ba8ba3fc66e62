"""Failure detection under real faults. Prints one JSON object.

A local mesh of 5 droplets runs two projects (`shop,3` and `blog,3`: master and two droplets
of each, process runtime) behind the entry address; `meshctl up` makes master alone and the
publish the rest, so JetStream runs on master and two project droplets (`jetstream_servers`),
as on any mesh of three droplets or more. Then:

- `--kills` times (default 20): a random droplet (master included) is SIGKILLed with its
  instances (`LocalProvider.crash`, what `meshctl chaos kill` does). Measured from the kill:
  `detect` (to the failure record's `confirmed_at`), `restore` (to `meshctl status` showing
  as many healthy instances of every service as before the kill, on the survivors: the
  displaced ones count), `replace` (to the record's removal by the recovery leader: the
  rebuilt droplet reports every instance allocated to it healthy); and the requests through
  the entry address (every 20 ms) that failed meanwhile, apart for kills of the lb holder
  (whose entry point moves: about 2 s of refused connections).
- a soak of `--soak` seconds (default 600): one droplet loses 10 % of the packets sent to it
  (iptables, root only) and is paused with SIGSTOP for 2 s at random intervals of 5-15 s;
  every droplet that gets a failure record meanwhile is a false confirmation.

As root the droplets live in network namespaces (`meshctl up --netns`), so the loss
hits everything the droplet receives; `--loopback` (or no root) uses loopback droplets, where
iptables can only drop what is sent to the droplet's address.

Run: `.venv/bin/python bench/detect.py [--kills 20] [--soak 600]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
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

from lb import MESHCTL, Requests, meshctl, operator_store, write_inputs  # noqa: E402

from meshd.agent.store import Store  # noqa: E402
from plugins.providers import ProviderError  # noqa: E402
from protocol import subjects  # noqa: E402
from protocol.codec import decode  # noqa: E402
from protocol.messages import FailureRecord, Lease, NodeStatus  # noqa: E402

LOSS = 0.1


async def failure_of(store: Store, droplet: str) -> FailureRecord | None:
    try:
        entry = await store.get(subjects.FAILURES_BUCKET, subjects.failure_key(droplet))
    except Exception:  # electing: ask again
        return None
    return decode(entry.value, FailureRecord) if entry and entry.value else None


async def incarnation_of(store: Store, droplet: str) -> int | None:
    try:
        entry = await store.get(subjects.NODES_BUCKET, subjects.node_key(droplet))
    except Exception:  # electing: ask again
        return None
    return decode(entry.value, NodeStatus).incarnation if entry and entry.value else None


async def confirmed_at(store: Store, droplet: str, after: float) -> float | None:
    """When the failure of `droplet` after `after` was confirmed, from the events."""
    try:
        events = await store.recent_events(300)
    except Exception:
        return None
    times = [
        e.at
        for e in events
        if e.name == "failure_confirmed" and e.subject == droplet and e.at > after
    ]
    return min(times, default=None)


async def replaced_since(store: Store, droplet: str, life: int) -> bool:
    """A newer life of the droplet reports, and its failure record is gone."""
    newer = (await incarnation_of(store, droplet) or 0) > life
    return newer and await failure_of(store, droplet) is None


async def lb_holder(store: Store) -> str | None:
    entry = await store.get(subjects.LEASES_BUCKET, subjects.lease_key("lb"))
    return decode(entry.value, Lease).holder if entry and entry.value else None


async def failures(store: Store) -> list[str]:
    try:
        return sorted((await store.entries(subjects.FAILURES_BUCKET)).keys())
    except Exception:
        return []


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def status(env: dict[str, str]) -> dict[str, Any] | None:
    """`meshctl status --json`, or None while it cannot be read."""
    done = subprocess.run(
        [MESHCTL, "status", "--json"], env=env, capture_output=True, text=True, check=False
    )
    return json.loads(done.stdout) if done.returncode == 0 else None


def healthy(found: dict[str, Any] | None) -> dict[tuple[str, str, str], int]:
    """Healthy instances per service (nothing while the status cannot be read)."""
    services = found["services"] if found else []
    return {(s["project"], s["env"], s["service"]): s["healthy"] for s in services}


def whole(env: dict[str, str]) -> bool:
    """`meshctl status` answers, shows no failure and every service whole."""
    found = status(env)
    return (
        found is not None
        and not found["failures"]
        and all(s["healthy"] == s["desired"] for s in found["services"])
    )


def served_as_before(env: dict[str, str], before: dict[tuple[str, str, str], int]) -> bool:
    now = healthy(status(env))
    return bool(now) and all(now.get(key, 0) >= count for key, count in before.items())


async def kills(
    store: Store, provider: Any, tag: str, env: dict[str, str], url: str, count: int
) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {
        "victims": [],
        "detect": [],
        "replace": [],
        "restore": [],
        "failed": [],
        "failed_lb_holder": [],
    }
    for _ in range(count):
        records = {r.name: r for r in await provider.list(tag)}
        victim = random.choice(sorted(records))
        holder = await lb_holder(store)
        before = healthy(await asyncio.to_thread(status, env))
        life = await incarnation_of(store, victim) or 0
        with Requests(url) as load:
            killed_at = time.time()
            killed = time.monotonic()
            await provider.crash(records[victim].id)

            # The record can come and go within two seconds, while the store elects a new
            # leader for it: a replacement that reports is proof enough that it existed.
            record = None
            while record is None and time.monotonic() < killed + 60:
                await asyncio.sleep(0.05)
                record = await failure_of(store, victim)
                if record is None and await replaced_since(store, victim, life):
                    break
            restored: float | None = None
            if record is not None:
                # While the record exists, the victim's instances no longer count as healthy.
                while not await asyncio.to_thread(served_as_before, env, before):
                    if time.monotonic() > killed + 180:
                        raise RuntimeError(f"the services of {victim} never served again")
                    await asyncio.sleep(0.1)
                restored = time.monotonic() - killed
            while not await replaced_since(store, victim, life):
                if time.monotonic() > killed + 180:
                    raise RuntimeError(f"{victim} was never recovered")
                await asyncio.sleep(0.1)
            replaced = time.monotonic() - killed
            while not await asyncio.to_thread(whole, env):
                if time.monotonic() > killed + 180:
                    raise RuntimeError(f"the mesh never became whole after {victim}")
                await asyncio.sleep(0.2)
        confirmed = record.confirmed_at if record else await confirmed_at(store, victim, killed_at)
        if confirmed is None:
            raise RuntimeError(f"{victim} was replaced, yet no failure_confirmed event tells when")
        found["victims"].append(victim)
        found["detect"].append(confirmed - killed_at)
        found["replace"].append(replaced)
        found["restore"].append(restored if restored is not None else replaced)
        failed = sum(1 for t, ok in load.results if t >= killed and not ok)
        found["failed_lb_holder" if victim == holder else "failed"].append(failed)
        await asyncio.sleep(5)  # every monitor hears the new incarnation
    return found


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
    # In a network namespace the droplet loses a tenth of all it receives; on loopback, only
    # what is sent to its address (its routes' replies come back to 127.0.0.1).
    lossy: str | None = None
    try:
        await provider.lose(records[victim].id, LOSS)
        lossy = "netns"
    except ProviderError:
        if os.geteuid() == 0 and iptables("-I", *rule):
            lossy = "loopback"
    seen: set[str] = set()
    pauses = 0
    deadline = time.monotonic() + seconds

    async def watch() -> None:
        while True:
            seen.update(await failures(store))
            await asyncio.sleep(0.5)

    watcher = asyncio.create_task(watch())
    try:
        while time.monotonic() < deadline:
            await asyncio.sleep(random.uniform(5, 15))
            await provider.pause(records[victim].id)
            await asyncio.sleep(2.0)
            await provider.pause(records[victim].id, resume=True)
            pauses += 1
        await asyncio.sleep(5)
    finally:
        watcher.cancel()
        if lossy == "netns":
            await provider.heal(records[victim].id)
        elif lossy == "loopback":
            iptables("-D", *rule)
    return {
        "false_confirmations": len(seen),
        "soak_s": seconds,
        "soak_pauses": pauses,
        "soak_packet_loss": LOSS if lossy else None,
        "soak_packet_loss_on": lossy,
    }


async def measure(
    home: Path, env: dict[str, str], url: str, kill_count: int, soak_s: float, servers: list[str]
) -> dict[str, Any]:
    from meshd.agent.config import mesh_tag
    from meshd.cli.context import load_context
    from meshd.cli.joining import open_provider

    store: Store = await operator_store(home / "config")
    context = load_context(None)
    provider = open_provider(context.mesh, context.provider)
    tag = mesh_tag(context.mesh)
    try:
        found = await kills(store, provider, tag, env, url, kill_count)
        result: dict[str, Any] = {
            "kills": len(found["detect"]),
            "jetstream_servers": servers,
            "jetstream_server_kills": sum(1 for v in found["victims"] if v in servers),
            "detect_p50_s": round(statistics.median(found["detect"]), 2),
            "detect_p99_s": round(percentile(found["detect"], 0.99), 2),
            "restore_p50_s": round(statistics.median(found["restore"]), 2),
            "restore_max_s": round(max(found["restore"]), 2),
            "replace_p50_s": round(statistics.median(found["replace"]), 2),
            "replace_max_s": round(max(found["replace"]), 2),
            "failed_requests_during_kill": int(sum(found["failed"])),
            "failed_requests_per_kill_max": int(max(found["failed"], default=0)),
            "lb_holder_kills": len(found["failed_lb_holder"]),
            "failed_requests_during_lb_holder_kill": int(sum(found["failed_lb_holder"])),
        }
        result.update(await soak(store, provider, tag, soak_s))
        return result
    finally:
        await provider.close()
        await store.close()


def keep_logs(home: Path) -> Path:
    """Copy every droplet's logs out of the state that `down` removes."""
    kept = Path(tempfile.mkdtemp(prefix="meshd-bench-detect-logs-"))
    for log in home.glob("state/*/provider/droplets/*/*.log"):
        target = kept / log.parent.name
        target.mkdir(exist_ok=True)
        shutil.copy(log, target / log.name)
    return kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--soak", type=float, default=600.0)
    parser.add_argument(
        "--loopback",
        action="store_true",
        help="loopback droplets even as root (default as root: network namespaces)",
    )
    args = parser.parse_args()
    netns = os.geteuid() == 0 and not args.loopback
    home = Path(tempfile.mkdtemp(prefix="meshd-bench-detect-"))
    env = dict(
        os.environ,
        MESHD_CONFIG_HOME=str(home / "config"),
        MESHD_STATE_HOME=str(home / "state"),
        NO_COLOR="1",
    )
    write_inputs(home, ("shop", "blog"))
    try:
        network = ["--netns"] if netns else ["--runtime", "process"]
        meshctl(env, "up", "--context", "detect", *network)
        meshctl(env, "publish", str(home / "projects.csv"), "--wait")
        status = json.loads(meshctl(env, "status", "--json"))
        servers = status["jetstream"]["servers"]
        url = f"{status['entry_url']}/shop-prod/backend/"
        time.sleep(3)
        try:
            result = asyncio.run(measure(home, env, url, args.kills, args.soak, servers))
        except BaseException:
            kept = keep_logs(home)
            print(f"detect: failed; the droplets' logs are kept in {kept}", file=sys.stderr)
            raise
    finally:
        subprocess.run(
            [MESHCTL, "down", "--context", "detect", "--delete-data"],
            env=env,
            capture_output=True,
            check=False,
            cwd=ROOT,
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
