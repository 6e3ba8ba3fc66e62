"""How long validation, placement and planning take for a large CSV. Prints one JSON object.

Run: `make bench` (or `.venv/bin/python bench/plan.py [projects]`).
"""

from __future__ import annotations

import json
import sys
import time
import tracemalloc

from meshd.core.placement import place
from meshd.core.plan import make_plan
from meshd.inputs.csvfile import parse_projects_csv
from meshd.inputs.deploy_config import DeployConfig
from meshd.inputs.merge import build_desired_state


def generated_csv(projects: int) -> bytes:
    rows = ["Project,Servers,MasterSpec,WebSpec"]
    rows += [f"project-{i},{1 + i % 4},s-8vcpu-32gb-amd,s-2vcpu-4gb" for i in range(projects)]
    return "\n".join(rows).encode()


def main() -> None:
    projects = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    data = generated_csv(projects)
    tracemalloc.start()
    started = time.perf_counter()
    rows = parse_projects_csv(data, "generated.csv")
    parsed = time.perf_counter()
    state = build_desired_state(rows, DeployConfig())
    placement = place(state)
    placed = time.perf_counter()
    replanned = make_plan(placement, place(state, previous=placement))
    done = time.perf_counter()
    peak = tracemalloc.get_traced_memory()[1]
    print(
        json.dumps(
            {
                "projects": projects,
                "instances": len(placement.instances),
                "parse_ms": round((parsed - started) * 1000, 2),
                "place_ms": round((placed - parsed) * 1000, 2),
                "replan_ms": round((done - placed) * 1000, 2),
                "changes_on_republish": replanned.changes,
                "peak_memory_mb": round(peak / 2**20, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
