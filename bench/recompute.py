"""What one change costs the scheduler and the entry point in CPU, as the mesh's projects
grow. Prints one JSON object.

For N projects (default 27, 100 and 150; the ports of a mesh run out before 200: 1,000 per
service family), each with the seed's four services, a domain and `Servers=2`, on the
process's clock (best of five):
- `place_ms`: placing every service (`meshd.core.placement.place`, sticky to the last one),
  which a pass does when the desired state or the last placement changed;
- `build_all_ms`: building every allocation (`allocations_for` without a memo: what every
  pass did before issue 22); `build_one_changed_ms`: the same with the scheduler's memo
  when one project's image changed (what a publish of one project costs);
  `build_unchanged_ms`: with the memo when nothing changed (the resync);
- `entry_render_ms`: the lb holder's upstreams, sites and nginx configuration text, which it
  does on every change of reports or allocations (it reloads only when the text differs).

Run: `.venv/bin/python bench/recompute.py [--projects 27,100,150]`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from meshd.core.allocations import EnvMemo, allocations_for  # noqa: E402
from meshd.core.placement import place  # noqa: E402
from meshd.core.routes import sites, upstreams  # noqa: E402
from meshd.core.spec import DesiredState  # noqa: E402
from meshd.inputs.csvfile import parse_projects_csv  # noqa: E402
from meshd.inputs.deploy_config import parse_deploy_config  # noqa: E402
from meshd.inputs.merge import build_desired_state  # noqa: E402
from plugins.lb import LbConfig  # noqa: E402
from plugins.lb.nginx import render_config  # noqa: E402

T = TypeVar("T")
SERVICES = ("backend", "frontend", "database", "redis")


def desired(projects: int, image: str = "backend:1") -> DesiredState:
    rows = "".join(f"p{i},2,m-4vcpu-32gb,s-1vcpu-2gb\n" for i in range(projects))
    services: dict[str, Any] = {name: {"memory_mb": 16} for name in SERVICES}
    config = {
        "projects": {
            f"p{i}": {
                "domains": {"prod": [f"p{i}.example.com"]},
                "services": {**services, "backend": {"memory_mb": 16, "image": image}}
                if i == 0
                else services,
            }
            for i in range(projects)
        }
    }
    csv = ("Project,Servers,MasterSpec,WebSpec\n" + rows).encode()
    deploy = parse_deploy_config(json.dumps(config).encode(), "deployment_config.json")
    return build_desired_state(parse_projects_csv(csv, "projects.csv"), deploy)


def best_ms(action: Callable[[], T], repeat: int = 5) -> tuple[float, T]:
    best, result = float("inf"), None
    for _ in range(repeat):
        started = time.perf_counter()
        result = action()
        best = min(best, time.perf_counter() - started)
    assert result is not None
    return round(best * 1e3, 2), result


def measure(projects: int) -> dict[str, Any]:
    state = desired(projects)
    placement = place(state, None)
    place_ms, _ = best_ms(lambda: place(state, placement))
    allocations = allocations_for(state, placement, {}, 1)
    build_all_ms, _ = best_ms(lambda: allocations_for(state, placement, allocations, 1))
    memo: EnvMemo = {}
    allocations_for(state, placement, allocations, 1, memo=memo)
    unchanged_ms, _ = best_ms(lambda: allocations_for(state, placement, allocations, 1, memo=memo))
    changed = desired(projects, image="backend:2")

    def one_changed() -> dict[str, Any]:
        fresh = dict(memo)  # each repeat starts from the pass before the change
        return allocations_for(changed, placement, allocations, 1, memo=fresh)

    one_changed_ms, _ = best_ms(one_changed)

    def render() -> str:
        found = upstreams(allocations.values(), {}, time.time())
        config = LbConfig(
            listen="127.0.0.1:80",
            upstreams=found,
            sites=sites(state, found, {}),
            agent="127.0.0.1:8080",
        )
        return render_config(config, Path("/nonexistent"))

    render_ms, text = best_ms(render)
    return {
        "services": len(allocations),
        "place_ms": place_ms,
        "build_all_ms": build_all_ms,
        "build_one_changed_ms": one_changed_ms,
        "build_unchanged_ms": unchanged_ms,
        "entry_render_ms": render_ms,
        "entry_config_kb": len(text) // 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--projects", default="27,100,150", help="comma-separated")
    args = parser.parse_args()
    found = {int(n): measure(int(n)) for n in args.projects.split(",")}
    names = next(iter(found.values())).keys()
    print(json.dumps({name: {str(n): f[name] for n, f in found.items()} for name in names}))


if __name__ == "__main__":
    main()
