"""What a container costs per instance over a plain process. Prints one JSON object.

The same program (busybox httpd serving a page) is started `--count` times (default 20) by
the process runtime and by the docker runtime, one at a time and then all at once (the
reconciler's 8 in parallel), and timed from `ensure` until its port answers HTTP 200; then
stopped and timed again. Needs a Docker engine and a static /bin/busybox (Debian
busybox-static). Run: `.venv/bin/python bench/instance_start.py [--count 20]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from plugins.runtimes import InstanceSpec, Runtime, RuntimeContext  # noqa: E402
from plugins.runtimes.docker import DockerRuntime  # noqa: E402
from plugins.runtimes.docker.admin import remove_objects  # noqa: E402
from plugins.runtimes.process import ProcessRuntime  # noqa: E402

ADDRESS = "127.0.0.1"
PARALLEL = 8


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((ADDRESS, 0))
        port: int = probe.getsockname()[1]
        return port


def specs(count: int, image: str, www: Path, round_: int) -> list[InstanceSpec]:
    result = []
    for i in range(count):
        port = free_port()
        result.append(
            InstanceSpec(
                project=f"bench{round_}",
                env="test",
                service=f"s{i}",
                generation=1,
                host=ADDRESS,
                port=port,
                image=image,
                command=f"httpd -f -p {port} -h /www",
                process_command=f"/bin/busybox httpd -f -p {ADDRESS}:{port} -h {www}",
                env_vars={"SERVICE_PORT": str(port)},
                memory_mb=32,
                service_kind="worker",  # no Docker healthcheck: the same work on both sides
            )
        )
    return result


async def answered(http: aiohttp.ClientSession, port: int) -> None:
    while True:
        try:
            async with http.get(f"http://{ADDRESS}:{port}/") as response:
                if response.status == 200:
                    return
        except (aiohttp.ClientError, OSError):
            pass
        await asyncio.sleep(0.005)


async def start_one(runtime: Runtime, http: aiohttp.ClientSession, spec: InstanceSpec) -> float:
    started = time.perf_counter()
    await runtime.ensure(spec)
    assert spec.port is not None
    await answered(http, spec.port)
    return time.perf_counter() - started


async def measure(runtime: Runtime, batches: list[list[InstanceSpec]]) -> dict[str, float]:
    sequential, together = batches
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        one_by_one = [await start_one(runtime, http, spec) for spec in sequential]
        limit = asyncio.Semaphore(PARALLEL)

        async def limited(spec: InstanceSpec) -> float:
            async with limit:
                return await start_one(runtime, http, spec)

        began = time.perf_counter()
        await asyncio.gather(*(limited(spec) for spec in together))
        all_at_once = time.perf_counter() - began
    began = time.perf_counter()
    for spec in sequential + together:
        await runtime.stop(spec.key, grace=1)
    stop_each = (time.perf_counter() - began) / len(sequential + together)
    return {
        "start_median_s": round(statistics.median(one_by_one), 3),
        "start_p90_s": round(sorted(one_by_one)[int(len(one_by_one) * 0.9) - 1], 3),
        "start_all_parallel_s": round(all_at_once, 3),
        "stop_each_s": round(stop_each, 3),
    }


def build_image(client: object, directory: Path) -> str:
    context = directory / "image"
    (context / "www").mkdir(parents=True)
    (context / "www" / "index.html").write_text("bench\n")
    shutil.copy2("/bin/busybox", context / "busybox")
    (context / "Dockerfile").write_text(
        "FROM scratch\nCOPY busybox /bin/busybox\n"
        'RUN ["/bin/busybox", "--install", "-s", "/bin"]\nCOPY www /www\n'
    )
    client.images.build(path=str(context), tag="meshd-bench-httpd:1", rm=True)  # type: ignore[attr-defined]
    return "meshd-bench-httpd:1"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=20)
    args = parser.parse_args()
    import docker

    client = docker.from_env()
    directory = Path(tempfile.mkdtemp(prefix="meshd-bench-"))
    www = directory / "www"
    www.mkdir()
    (www / "index.html").write_text("bench\n")
    image = build_image(client, directory)
    result: dict[str, object] = {"count": args.count, "parallel": PARALLEL}
    try:
        for name, cls in (("process", ProcessRuntime), ("docker", DockerRuntime)):
            runtime = cls(
                RuntimeContext(
                    mesh="bench", droplet="d", data_dir=directory / name, config={"pull": False}
                )
            )
            try:
                batches = [specs(args.count, image, www, r) for r in (1, 2)]
                result[name] = await measure(runtime, batches)
            finally:
                await runtime.close()
        process, container = result["process"], result["docker"]
        assert isinstance(process, dict) and isinstance(container, dict)
        result["container_overhead_per_instance_s"] = round(
            container["start_median_s"] - process["start_median_s"], 3
        )
    finally:
        remove_objects("bench", None, volumes=True)
        client.images.remove(image, force=True)
        shutil.rmtree(directory, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main())
