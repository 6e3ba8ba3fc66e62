"""`meshctl hold`: hold off the failure detection of one droplet for a while. Its monitors
still suspect it when it falls silent, but none confirms, so the mesh does not fence and
rebuild it: an agent upgrade or a reboot that takes longer than the few seconds of silence
that otherwise mean death (docs/failure-detection.md)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

import click

from meshd.agent.holds import end_hold, take_hold
from meshd.agent.store import Store
from meshd.cli.context import load_context, who
from meshd.cli.session import connect, read_nodes
from meshd.cli.tables import console
from protocol.messages import DetectionHold

LONGEST_S = 24 * 3600.0
UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smh]?)$")


def seconds(text: str) -> float:
    """`90`, `90s`, `10m`, `2h` in seconds; ValueError with what would be right."""
    found = DURATION.match(text.strip())
    if not found:
        raise ValueError(f"{text!r} is not a duration; write 90s, 10m or 2h")
    value = float(found.group(1)) * UNITS[found.group(2) or "s"]
    if not 0 < value <= LONGEST_S:
        raise ValueError(f"{text!r} is out of range; a hold lasts more than 0 s and at most 24h")
    return value


def _duration(_ctx: click.Context, _param: click.Parameter, text: str) -> float:
    try:
        return seconds(text)
    except ValueError as err:
        raise click.BadParameter(str(err)) from None


@click.command(no_args_is_help=True)
@click.argument("droplet")
@click.option(
    "--for",
    "duration_s",
    default="10m",
    show_default=True,
    metavar="DURATION",
    callback=_duration,
    help="How long: 90s, 10m, 2h (at most 24h). Past it the droplet is watched again.",
)
@click.option("--reason", default="", help="Why, shown by `status` and recorded in the events.")
@click.option("--off", is_flag=True, help="End the hold now: the droplet is watched again.")
@click.option("--json", "as_json", is_flag=True, help="Print the hold as JSON.")
@click.option("--context", "context_name", metavar="NAME", help="Mesh to talk to.")
def hold(
    droplet: str,
    duration_s: float,
    reason: str,
    off: bool,
    as_json: bool,
    context_name: str | None,
) -> None:
    """Hold off the failure detection of DROPLET: silent, it is suspected but not declared
    dead, fenced or rebuilt until the hold ends (`--for`, or `--off`).

    For work that silences a droplet's agent longer than the few seconds that otherwise mean
    death: an agent upgrade, a reboot. A droplet that really dies meanwhile is rebuilt once
    the hold ends. `meshctl status` shows the holds.
    """
    asyncio.run(_hold(droplet, duration_s, reason, off, as_json, context_name))


async def _hold(
    droplet: str,
    duration_s: float,
    reason: str,
    off: bool,
    as_json: bool,
    context_name: str | None,
) -> None:
    store = await connect(load_context(context_name))
    try:
        known = sorted(await read_nodes(store))
        if droplet not in known:
            raise click.UsageError(f"no droplet {droplet!r}; known: {', '.join(known) or 'none'}")
        if off:
            result = await _release(store, droplet)
        else:
            result = await _take(store, droplet, duration_s, reason)
    finally:
        await store.close()
    if as_json:
        click.echo(json.dumps(result, indent=2))
    elif not result["held"]:
        console.print(
            f"{droplet} is watched again." if result.get("ended") else f"{droplet} is not held."
        )
    else:
        until = time.strftime("%H:%M:%S", time.localtime(result["until"]))
        console.print(
            f"Held [bold]{droplet}[/]: it is not declared dead before {until}. "
            f"`meshctl hold {droplet} --off` ends the hold sooner."
        )


async def _take(store: Store, droplet: str, duration_s: float, reason: str) -> dict[str, Any]:
    held = await take_hold(store, droplet, duration_s, reason, who())
    detail = {"until": held.until, "reason": reason}
    await store.record("droplet_held", held.held_by, droplet, detail)
    return hold_data(held, held.held_at)


async def _release(store: Store, droplet: str) -> dict[str, Any]:
    ended = await end_hold(store, droplet)  # an expired one too: nothing left over
    if ended is None or not ended.holds(time.time()):
        return {"droplet": droplet, "held": False, "ended": False}
    await store.record("droplet_hold_ended", who(), droplet, {})
    return {"droplet": droplet, "held": False, "ended": True}


def hold_data(held: DetectionHold, now: float) -> dict[str, Any]:
    return {
        "droplet": held.droplet,
        "held": held.holds(now),
        "until": held.until,
        "remaining_s": round(max(0.0, held.until - now), 1),
        "reason": held.reason,
        "held_by": held.held_by,
        "held_at": held.held_at,
    }
