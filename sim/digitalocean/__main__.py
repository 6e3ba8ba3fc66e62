"""`python -m sim.digitalocean --listen 127.0.0.1:PORT --state DIR [--token T] [--api-only]`:
the stand-in of DigitalOcean's API. It prints one JSON line (`url`, `token`, `control`) as soon
as it listens, then loads the API description and starts the machines; requests wait for
both. Root is needed for droplets that are machines (network namespaces); `--api-only`
makes droplets that are records only."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import signal
import sys
from pathlib import Path

from aiohttp import web

from sim.digitalocean.clock import Clock
from sim.digitalocean.droplet_docs import metadata_document
from sim.digitalocean.machines import Machines, NoMachines
from sim.digitalocean.server import GATE, make_app
from sim.digitalocean.world import World

LINE_MAX = 1 << 20


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m sim.digitalocean",
        description="A stand-in of DigitalOcean's API v2 whose droplets are network-namespace "
        "machines (root), or records only (--api-only). See docs/testing.md.",
    )
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (port 0: any free)")
    parser.add_argument("--state", required=True, type=Path, help="disks, snapshots, volumes")
    parser.add_argument("--token", default=None, help="the API token to accept (default: new)")
    parser.add_argument("--speed", type=float, default=1.0, help="clock speed (tests: 20)")
    parser.add_argument("--api-only", action="store_true", help="droplets without machines")
    parser.add_argument(
        "--check-responses", action="store_true", help="check every answer against the spec"
    )
    parser.add_argument("--log-level", default="WARNING")
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    host, _, port = args.listen.rpartition(":")
    token = args.token or f"dop_v1_{secrets.token_hex(32)}"
    args.state.mkdir(parents=True, exist_ok=True)
    holder: dict[str, World] = {}
    machines: Machines
    if args.api_only:
        machines = NoMachines()
    else:
        from sim.digitalocean.hosts import NamespaceMachines

        machines = NamespaceMachines(
            args.state, lambda source: metadata_document(holder["world"], source)
        )
    world = World(Clock(args.speed), machines, token)
    holder["world"] = world
    app = make_app(world, check_responses=args.check_responses)
    # DigitalOcean answers long query strings in its own shape; aiohttp's default (8 KiB)
    # would answer them itself, in plain text, before the gate sees them.
    runner = web.AppRunner(app, access_log=None, max_line_size=LINE_MAX, max_field_size=LINE_MAX)
    await runner.setup()
    site = web.TCPSite(runner, host or "127.0.0.1", int(port or 0))
    await site.start()
    bound = site._server.sockets[0].getsockname()  # type: ignore[union-attr]
    url = f"http://{bound[0]}:{bound[1]}"
    print(json.dumps({"url": url, "token": token, "control": f"{url}/_sim"}), flush=True)
    await asyncio.wait_for(app[GATE].ready.wait(), timeout=120)
    if app[GATE].failure:
        print(f"sim.digitalocean: cannot start: {app[GATE].failure}", file=sys.stderr)
        await runner.cleanup()
        raise SystemExit(1)
    if not args.api_only:
        await _listen_inside(runner, world, bound[1])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


async def _listen_inside(runner: web.AppRunner, world: World, port: int) -> None:
    """Droplets reach the API on their bridges' gateways, at the same port (`GET /_sim`
    says where: `inside_url`)."""
    networks = world.machines.networks
    for address in (networks.gateway, networks.private_gateway):
        await web.TCPSite(runner, address, port).start()
    world.inside_url = f"http://{networks.gateway}:{port}"


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    if not args.api_only and os.geteuid() != 0:
        print(
            "sim.digitalocean: droplets that are machines need root (network namespaces); "
            "run as root, or add --api-only for droplets that are records only",
            file=sys.stderr,
        )
        return 2
    try:
        asyncio.run(serve(args))
    except OSError as err:
        print(f"sim.digitalocean: cannot listen on {args.listen}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
