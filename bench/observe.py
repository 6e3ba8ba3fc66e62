"""Seeing the mesh, timed. Prints one JSON object.

- `forward_lines_per_s`: the `logs` role forwarding the logs stream to the OpenSearch stand-in
  (sim/opensearch.py, on 127.0.0.1) from a real nats-server: `--batches` batches (default
  2000) of 10 lines of ~100 bytes from 10 droplets shipped first, then one forwarder leads
  until the index holds every line; `forward_s` that time, `forward_bulks` the `_bulk`
  requests it took, and `forward_documents_exact` whether the index holds each line once.
- `dashboard_render_ms_p50` / `_max`: rendering the dashboard's body (jinja2, what is sent on
  every change) for a mesh of `--droplets` droplets (default 30) and `--services` services
  (default 150) with 25 events and an hour of chart, 50 times.

Run: `.venv/bin/python bench/observe.py [--batches 2000] [--droplets 30] [--services 150]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from meshd.agent.lease import Term  # noqa: E402
from meshd.agent.store.jetstream import NatsStore  # noqa: E402
from meshd.core import dashboard as board  # noqa: E402
from meshd.roles.logs import LogForwarder  # noqa: E402
from plugins.templating import render  # noqa: E402
from protocol import subjects  # noqa: E402
from protocol.codec import encode  # noqa: E402
from protocol.logs import LogBatch, LogLine  # noqa: E402
from sim.opensearch import OpenSearchStandIn  # noqa: E402
from tests.support.nats import running_nats  # noqa: E402

INDEX = "meshd-logs"


async def forwarding(batches: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as work, running_nats(Path(work)) as server:
        store = await NatsStore.connect([server.url], "agent", server.agent_password, name="b")
        await store.ensure(replicas=1)
        cluster = OpenSearchStandIn().start()
        try:
            for b in range(batches):
                droplet = f"web{b % 10}"  # the stream keeps 1024 batches per subject
                batch = LogBatch(
                    droplet=droplet,
                    lines=tuple(LogLine(at=time.time(), text=f"{b}.{i} " + "x" * 90)
                                for i in range(10)),  # fmt: skip
                    project="shop", env="prod", service="backend", batch_id=f"{droplet}-1-{b}",
                )  # fmt: skip
                subject = subjects.app_log("shop", "prod", "backend", droplet)
                await store.ship_logs(subject, encode(batch), batch.batch_id)
            settings = {"opensearch": {"url": cluster.url, "index": INDEX}}
            view: Any = SimpleNamespace(state=SimpleNamespace(logs=settings))
            role = LogForwarder(store, view, "master", "bench", lambda _: None)
            started = time.monotonic()
            task = asyncio.create_task(role.lead(Term("logs", 1, time.monotonic() + 3600)))
            while len(cluster.documents(INDEX)) < batches * 10:  # noqa: ASYNC110  (another thread fills it)
                await asyncio.sleep(0.05)
            took = time.monotonic() - started
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            messages = sorted(d["message"].split()[0] for d in cluster.documents(INDEX).values())
            wanted = sorted(f"{b}.{i}" for b in range(batches) for i in range(10))
            return {
                "forward_lines": batches * 10,
                "forward_s": round(took, 2),
                "forward_lines_per_s": round(batches * 10 / took),
                "forward_bulks": cluster.bulk_requests,
                "forward_documents_exact": messages == wanted,
            }
        finally:
            cluster.stop()
            await store.close()


def dashboard(droplets: int, services: int) -> dict[str, Any]:
    now = time.time()
    names = ["master", *(f"web{i}" for i in range(1, droplets))]
    status = {
        "lb": "master",
        "droplets": [
            {
                "name": n,
                "address": f"10.0.0.{i}",
                "size": "s-1vcpu-1gb",
                "roles": ["lb"],
                "healthy": True,
                "heartbeat_age_s": 0.4,
                "failure": None,
                "instances": 5,
            }
            for i, n in enumerate(names)
        ],  # fmt: skip
        "services": [
            {
                "project": f"p{i // 9}",
                "env": ("prod", "uat", "test")[i % 3],
                "service": f"s{i % 3}",
                "healthy": 1,
                "desired": 1,
                "droplets": [names[i % droplets]],
                "errors": [],
                "awaiting_deploy": False,
            }
            for i in range(services)
        ],  # fmt: skip
        "failures": [],
    }
    history = board.History()
    for second in range(0, 3600, 10):
        history.add(now - 3600 + second, services, 0)
    events = [
        {"at": "12:00:00", "age_s": 1, "name": "lease_taken", "actor": "master",
         "subject": "lb", "detail": "x=1"} for _ in range(25)
    ]  # fmt: skip
    timings = []
    for _ in range(50):
        started = time.perf_counter()
        data = board.page("bench", status, [], events, history.samples, now)
        render("dashboard/body.html", **data)
        timings.append((time.perf_counter() - started) * 1000)
    return {
        "dashboard_droplets": droplets,
        "dashboard_services": services,
        "dashboard_render_ms_p50": round(statistics.median(timings), 2),
        "dashboard_render_ms_max": round(max(timings), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=2000)
    parser.add_argument("--droplets", type=int, default=30)
    parser.add_argument("--services", type=int, default=150)
    args = parser.parse_args()
    found = asyncio.run(forwarding(args.batches))
    found |= dashboard(args.droplets, args.services)
    print(json.dumps(found))


if __name__ == "__main__":
    main()
