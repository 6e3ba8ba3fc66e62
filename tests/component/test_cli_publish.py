"""`meshctl publish` run as the operator runs it: the installed console script in a subprocess.

Exit codes: 0 ok, 1 failure, 2 bad input; errors one per line on stderr, never a traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_CSV = "examples/projects.csv"
HEADER = "Project,Servers,MasterSpec,WebSpec\n"
WORKERS = {"worker_email", "worker_reports", "scheduler"}


def meshctl_path() -> Path:
    # The script beside this interpreter first: PyPI has an unrelated package named meshctl.
    beside = Path(sys.executable).parent / "meshctl"
    if beside.is_file():
        return beside
    found = shutil.which("meshctl")
    if found is None:
        pytest.fail("meshctl is not installed; run `pip install -e .[test]` in the repository")
    return Path(found)


def meshctl(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in {"FORCE_COLOR", "COLUMNS"}}
    env["NO_COLOR"] = "1"
    # No mesh: these tests must never find (or touch) a real context of the user's.
    env["MESHD_CONFIG_HOME"] = env["MESHD_STATE_HOME"] = "/nonexistent/meshd"
    return subprocess.run(
        [str(meshctl_path()), *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def seed_plan() -> dict[str, Any]:
    result = meshctl("publish", "--dry-run", "--json", EXAMPLE_CSV)
    assert result.returncode == 0, result.stderr
    plan: dict[str, Any] = json.loads(result.stdout)
    return plan


def assert_no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr
    assert "Traceback" not in result.stdout


# --- good input ---------------------------------------------------------------------------


def test_publish_dry_run_of_the_example_csv_prints_the_droplets_and_exits_0() -> None:
    result = meshctl("publish", "--dry-run", EXAMPLE_CSV)
    assert result.returncode == 0, result.stderr
    for droplet in ("master", "hostomatic-web1", "hostomatic-web2", "hostomatic-web3"):
        assert droplet in result.stdout
    assert "s-8vcpu-16gb" in result.stdout
    assert "168.00" in result.stdout
    assert "nothing was published" in result.stdout
    assert result.stderr == ""


def test_publish_json_has_exactly_the_documented_top_level_keys(seed_plan: dict[str, Any]) -> None:
    assert set(seed_plan) == {"droplets", "instances", "allocations", "cost"}
    assert set(seed_plan["cost"]) == {"monthly_usd", "previous_monthly_usd"}


def test_publish_json_items_have_exactly_the_documented_keys(seed_plan: dict[str, Any]) -> None:
    for droplet in seed_plan["droplets"]:
        assert set(droplet) == {"name", "size", "action"}
    for instance in seed_plan["instances"]:
        assert set(instance) == {"project", "env", "service", "droplet", "port", "action"}
    for allocation in seed_plan["allocations"]:
        assert set(allocation) == {"project", "env", "hash", "ports", "db_name", "db_user"}
        assert set(allocation["ports"]) == {"backend", "frontend", "database", "redis"}


def test_publish_json_places_the_seed_csv_as_the_seed_did(seed_plan: dict[str, Any]) -> None:
    droplets = {d["name"]: (d["size"], d["action"]) for d in seed_plan["droplets"]}
    assert droplets == {
        "master": ("s-8vcpu-16gb", "create"),
        "hostomatic-web1": ("s-2vcpu-4gb", "create"),
        "hostomatic-web2": ("s-2vcpu-4gb", "create"),
        "hostomatic-web3": ("s-2vcpu-4gb", "create"),
    }
    assert seed_plan["cost"] == {"monthly_usd": 168.0, "previous_monthly_usd": 0.0}


def test_publish_json_gives_workers_no_port_and_every_other_service_one(
    seed_plan: dict[str, Any],
) -> None:
    instances = seed_plan["instances"]
    assert {i["action"] for i in instances} == {"start"}
    assert {i["service"] for i in instances} >= WORKERS
    for instance in instances:
        if instance["service"] in WORKERS:
            assert instance["port"] is None, instance
        else:
            assert isinstance(instance["port"], int), instance


def test_publish_json_lists_one_allocation_per_project_environment_in_csv_order(
    seed_plan: dict[str, Any],
) -> None:
    keys = [(a["project"], a["env"]) for a in seed_plan["allocations"]]
    projects = ["digitalpixo", "hostomatic", "newstartup"]
    assert keys == [(p, env) for p in projects for env in ("prod", "uat", "test")]
    for allocation in seed_plan["allocations"]:
        short = allocation["hash"][:8]
        assert allocation["db_user"] == f"user_{short}"
        assert allocation["db_name"] == f"{allocation['project']}_{allocation['env']}_{short}"


def test_publish_uses_an_explicit_deploy_config(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"projects": {"newstartup": {"services": {"cron": {}}}}}))
    result = meshctl("publish", "--dry-run", "--json", "--deploy-config", config, EXAMPLE_CSV)
    assert result.returncode == 0, result.stderr
    services = {i["service"] for i in json.loads(result.stdout)["instances"]}
    assert "cron" in services
    assert "worker_email" not in services  # the example config beside the CSV is not used


def test_help_exits_0() -> None:
    result = meshctl("publish", "--help")
    assert result.returncode == 0
    assert "--dry-run" in result.stdout
    assert meshctl("--help").returncode == 0


# --- bad input and failures ---------------------------------------------------------------


def test_publish_refuses_a_bad_csv_with_one_line_per_problem_and_exit_2(tmp_path: Path) -> None:
    csv_path = tmp_path / "projects.csv"
    csv_path.write_text(
        HEADER
        + "# comment\n"
        + "Web,1,s-1vcpu-1gb,s-1vcpu-1gb\n"
        + "api,0,s-1vcpu-1gb,s-1vcpu-1gbb\n"
        + "\n"
        + "api,1\n"
    )
    result = meshctl("publish", "--dry-run", csv_path)
    assert result.returncode == 2
    assert_no_traceback(result)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert [line.split(": ", 1)[0] for line in lines[:-1]] == [
        f"{csv_path}:3",
        f"{csv_path}:4",
        f"{csv_path}:4",
        f"{csv_path}:6",
    ]
    assert "column 1 (Project)" in lines[0]
    assert "column 2 (Servers)" in lines[1]
    assert "column 4 (WebSpec)" in lines[2]
    assert "expected 4 fields" in lines[3]
    assert lines[-1] == "meshctl: 4 problems in the input; nothing was published"


def test_publish_refuses_a_csv_with_duplicate_project(tmp_path: Path) -> None:
    csv_path = tmp_path / "projects.csv"
    csv_path.write_text(HEADER + "web,1,s-1vcpu-1gb,s-1vcpu-1gb\nweb,2,s-1vcpu-1gb,c-2\n")
    result = meshctl("publish", "--dry-run", "--json", csv_path)
    assert result.returncode == 2
    assert_no_traceback(result)
    assert result.stderr.splitlines()[0].startswith(f"{csv_path}:3: column 1 (Project)")


def test_publish_refuses_an_empty_csv(tmp_path: Path) -> None:
    csv_path = tmp_path / "projects.csv"
    csv_path.write_text(HEADER)
    result = meshctl("publish", "--dry-run", csv_path)
    assert result.returncode == 2
    assert f"{csv_path}:1: no projects" in result.stderr


def test_publish_refuses_a_bad_deploy_config_naming_its_json_path(tmp_path: Path) -> None:
    config = tmp_path / "deployment_config.json"
    config.write_text(
        json.dumps({"projects": {"hostomatic": {"services": {"x": {"type": "web"}}}}})
    )
    result = meshctl("publish", "--dry-run", "--deploy-config", config, EXAMPLE_CSV)
    assert result.returncode == 2
    assert_no_traceback(result)
    assert result.stderr.startswith(f"{config}:$.projects.hostomatic.services.x.type: ")


def test_publish_refuses_a_missing_file_with_exit_2() -> None:
    result = meshctl("publish", "--dry-run", "no/such/projects.csv")
    assert result.returncode == 2
    assert_no_traceback(result)
    assert result.stderr.startswith("no/such/projects.csv: cannot read")


def test_publish_without_a_mesh_exits_1_saying_how_to_start_one() -> None:
    result = meshctl("publish", EXAMPLE_CSV)
    assert result.returncode == 1
    assert_no_traceback(result)
    (line,) = result.stderr.splitlines()
    assert line.startswith("meshctl: no mesh yet")
    assert "meshctl up" in line


def test_unknown_option_exits_2() -> None:
    result = meshctl("publish", "--no-such-option", EXAMPLE_CSV)
    assert result.returncode == 2
    assert_no_traceback(result)
    assert "--no-such-option" in result.stderr


def test_publish_without_a_file_shows_usage_and_exits_2() -> None:
    result = meshctl("publish")
    assert result.returncode == 2
    assert "Usage:" in result.stdout + result.stderr
    assert_no_traceback(result)


def test_publish_dry_run_accepts_a_csv_path_with_square_brackets(tmp_path: Path) -> None:
    folder = tmp_path / "[" / "x]"
    folder.mkdir(parents=True)
    csv_path = folder / "projects.csv"
    csv_path.write_text(HEADER + "web,1,s-1vcpu-1gb,s-1vcpu-1gb\n")
    result = meshctl("publish", "--dry-run", csv_path)
    assert result.returncode == 0, result.stderr
    assert str(csv_path).replace(" ", "") in "".join(result.stdout.split())
