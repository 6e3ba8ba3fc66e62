"""Human-readable output of `meshctl` as rich tables."""

from __future__ import annotations

import sys
from collections import defaultdict
from datetime import datetime
from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from meshd.core.plan import DropletAction, InstanceAction, InstanceChange, Plan
from meshd.core.sizes import SIZES
from protocol.messages import Event

# Pipes and CI logs get a fixed width wide enough for the allocation table.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)

_ACTION_STYLE = {
    "create": "green",
    "start": "green",
    "resize": "yellow",
    "move": "yellow",
    "restart": "yellow",
    "destroy": "red",
    "stop": "red",
    "keep": "dim",
}


def _table(title: str) -> Table:
    return Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, title_style="bold")


def _action(value: str) -> str:
    return f"[{_ACTION_STYLE[value]}]{value}[/]"


def render_plan(plan: Plan, source: str, config: str | None) -> None:
    with_config = f" with {escape(config)}" if config else ""
    console.print(f"Plan for [bold]{escape(source)}[/]{with_config}")
    console.print(_droplet_table(plan))
    console.print(_instance_table(plan))
    console.print(_allocation_table(plan))
    delta = plan.monthly_usd - plan.previous_monthly_usd
    console.print(
        f"Monthly cost: [bold]${plan.monthly_usd:,.2f}[/] "
        f"(now ${plan.previous_monthly_usd:,.2f}, change {delta:+,.2f})"
    )


def _droplet_table(plan: Plan) -> Table:
    table = _table("Droplets")
    for column in ("Droplet", "Size", "Memory", "vCPUs", "$/month", "Action"):
        table.add_column(
            column, justify="right" if column in {"Memory", "vCPUs", "$/month"} else "left"
        )
    for change in plan.droplets:
        size = SIZES[change.size]
        action = _action(change.action.value)
        if change.action is DropletAction.RESIZE:
            action += f" from {change.previous_size}"
        table.add_row(
            change.name,
            change.size,
            f"{size.memory_mb} MB",
            str(size.vcpus),
            f"{size.monthly_usd:.2f}",
            action,
        )
    return table


def _instance_table(plan: Plan) -> Table:
    """One row per service and action, with the droplets it touches."""
    grouped: dict[tuple[str, str, str, InstanceAction], list[InstanceChange]] = defaultdict(list)
    for change in plan.instances:
        grouped[(change.project, change.env, change.service, change.action)].append(change)
    table = _table("Instances")
    for column in ("Project", "Env", "Service", "Port", "Droplets", "Action"):
        table.add_column(column)
    unchanged = 0
    for (project, env, service, action), changes in grouped.items():
        if action is InstanceAction.KEEP:
            unchanged += len(changes)
            continue
        droplets = ", ".join(
            f"{c.from_droplet} → {c.droplet}" if c.from_droplet else c.droplet for c in changes
        )
        port = changes[0].port
        table.add_row(
            project, env, service, "-" if port is None else str(port), droplets, _action(action)
        )
    if unchanged:
        table.caption = f"{unchanged} instances unchanged"
    return table


def _allocation_table(plan: Plan) -> Table:
    table = _table("Allocations")
    for column in ("Project", "Env", "Hash", "backend", "frontend", "database", "redis", "DB name"):
        table.add_column(column, no_wrap=True)
    table.caption = "DB user is user_ + the first 8 characters of the hash"
    for a in plan.allocations:
        table.add_row(
            a.project,
            a.env,
            a.hash,
            *(str(a.ports[f]) for f in ("backend", "frontend", "database", "redis")),
            a.db_name,
        )
    return table


def _snapshot(newest: dict[str, Any] | None) -> str:
    if newest is None:
        return "-"
    return f"{_age(newest['age_s'])} ago ({newest['kept']} kept)"


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.0f}h"


def status_tables(view: dict[str, Any]) -> list[Table]:
    droplets = _table("Droplets")
    for column in (
        "Droplet",
        "Address",
        "Size",
        "Roles",
        "Report",
        "Instances",
        "Monitored by",
        "Snapshot",
    ):
        droplets.add_column(column)
    for d in view["droplets"]:
        beat = f"{d['heartbeat_age_s']:.0f}s ago"
        if d.get("failure"):
            beat = f"[red]failed ({d['failure']})[/]"
        elif not d["healthy"]:
            beat = f"[red]{beat}[/]"
        droplets.add_row(
            d["name"],
            d["address"],
            d["size"],
            ", ".join(d["roles"]) or "-",
            beat,
            str(d["instances"]),
            ", ".join(d.get("monitored_by", [])) or "-",
            _snapshot(d.get("snapshot")),
        )
    services = _table("Services")
    columns = (
        "Project",
        "Env",
        "Service",
        "Port",
        "Healthy",
        "Restarts",
        "Droplets",
        "Upstream",
        "Last error",
    )
    for column in columns:
        services.add_column(column)
    for s in view["services"]:
        ok = s["healthy"] == s["desired"]
        count = f"{s['healthy']}/{s['desired']}"
        if s.get("awaiting_deploy") and not ok:
            count = f"[yellow]{count} awaiting first deploy[/]"
        services.add_row(
            s["project"],
            s["env"],
            s["service"],
            "-" if s["port"] is None else str(s["port"]),
            f"[green]{count}[/]"
            if ok
            else count
            if s.get("awaiting_deploy")
            else f"[red]{count}[/]",
            str(s.get("restarts", 0)),
            ", ".join(s["droplets"]),
            "-" if s.get("upstream") is None else ", ".join(s["upstream"]) or "[red]none[/]",
            escape(s["errors"][0]) if s["errors"] else "",
        )
    tables = [droplets, services]
    if view.get("failures"):
        failures = _table("Failures")
        steps = ("Droplet", "Step", "Confirmed by", "Since confirmed", "In this step", "Displaced")
        for column in steps:
            failures.add_column(column)
        for f in view["failures"]:
            moved = sorted(f.get("displaced", {}).items())
            failures.add_row(
                f["droplet"],
                f"[red]{f['state']}[/]",
                ", ".join(f["confirmed_by"]),
                f"{f['age_s']:.0f}s",
                f"{f['step_age_s']:.0f}s",
                ", ".join(f"{key} -> {to}" for key, to in moved) or "-",
            )
        tables.append(failures)
    return tables


def events_table(events: list[Event]) -> Table:
    table = _table("Recent events")
    for column in ("Time", "Event", "Subject", "By", "Fence"):
        table.add_column(column)
    for e in events:
        table.add_row(
            datetime.fromtimestamp(e.at).strftime("%H:%M:%S"),
            e.name,
            escape(e.subject),
            escape(e.actor),
            "-" if e.fence is None else str(e.fence),
        )
    return table


def secrets_table(rows: list[dict[str, Any]]) -> Table:
    """`meshctl secret list`: names, scopes and versions, never values."""
    table = _table("Secrets")
    for column in ("Name", "Scope", "Version", "Set by", "Set at", "Used by"):
        table.add_column(column)
    for row in rows:
        where = " ".join(p for p in (row["project"], row["env"]) if p) or "mesh"
        by = "generated" if row["generated"] else escape(row["set_by"])
        at = datetime.fromtimestamp(row["set_at"]).strftime("%Y-%m-%d %H:%M")
        used = escape(", ".join(row["used_by"])) or "[dim]nothing[/]"
        table.add_row(escape(row["name"]), where, str(row["version"]), by, at, used)
    return table


def config_table(rows: list[dict[str, Any]]) -> Table:
    """`meshctl config list`: the operator's variables and where each is set."""
    table = _table("Variables")
    for column in ("Project", "Env", "Name", "Value", "From", "Set by", "Set at"):
        table.add_column(column)
    for row in rows:
        at = (
            datetime.fromtimestamp(row["set_at"]).strftime("%Y-%m-%d %H:%M")
            if row["set_at"]
            else ""
        )
        table.add_row(
            escape(row["project"]),
            row["env"] or "all",
            escape(row["name"]),
            escape(row["value"]),
            escape(row["source"]),
            escape(row["set_by"] or ""),
            at,
        )
    return table
