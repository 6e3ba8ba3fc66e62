"""Prometheus metrics on a real local mesh: every agent's /metrics in the text format, a real
Prometheus (Debian's) scraping every agent from `meshctl metrics targets` with the scrape
configuration and alert rules of deploy/prometheus/, and a query of `meshd_instances` by
state that counts what runs."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests import support
from tests.support.mesh import WEB_ONLY, answered, http_get, local_mesh, write_project
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
EXPECTED = {
    "meshd_instances",
    "meshd_instance_restarts",
    "meshd_leases_held",
    "meshd_lease_terms",
    "meshd_health_probe_duration_seconds",
    "meshd_detector_suspicions",
    "meshd_nats_round_trip_seconds",
    "meshd_jetstream_answers",
    "meshd_service_instances_desired",
    "meshd_log_lines_shipped",
    "meshd_process_resident_memory_bytes",
    "meshd_process_cpu_seconds",
}


def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        support.unavailable("prometheus not installed (Debian: apt-get install prometheus)")
    return found


@contextlib.contextmanager
def prometheus(directory: Path, targets: list[dict[str, Any]]) -> Iterator[str]:
    """A Prometheus with deploy/prometheus/'s configuration, scraping every second."""
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    config["global"]["scrape_interval"] = config["global"]["evaluation_interval"] = "1s"
    shutil.copy(ROOT / "deploy/prometheus/alerts.yml", directory / "alerts.yml")
    (directory / "meshd-targets.json").write_text(json.dumps(targets))
    (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = support.free_port("127.0.0.1")
    with (directory / "prometheus.log").open("wb") as log:
        process = subprocess.Popen(
            [
                prometheus_binary(),
                f"--config.file={directory / 'prometheus.yml'}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            cwd=directory,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)


def api(base: str, path: str, **query: str) -> Any:
    url = f"{base}/api/v1/{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    try:
        return json.loads(http_get(url))["data"]
    except OSError:
        return None


def test_prometheus_scrapes_every_agent_and_counts_instances_by_state(tmp_path: Path) -> None:
    csv, config = write_project(tmp_path, ["shop,1,s-1vcpu-2gb,s-1vcpu-1gb"], WEB_ONLY)
    with local_mesh(tmp_path / "mesh", droplets=2) as mesh:
        mesh.ok("publish", csv, "--deploy-config", config, "--wait")
        targets = json.loads(mesh.ok("metrics", "targets"))
        assert {t["labels"]["droplet"] for t in targets} == {"master", "mesh-2"}

        text = http_get(f"http://{mesh.address('master')}:8080/metrics")
        families = {f.name: f for f in text_string_to_metric_families(text)}
        assert set(families) >= EXPECTED, EXPECTED - set(families)
        running = [s for s in families["meshd_instances"].samples if s.labels["state"] == "running"]
        reported = json.loads(http_get(f"http://{mesh.address('master')}:8080/status"))
        on_master = len([i for i in reported["instances"] if i["state"] == "running"])
        assert running[0].value == on_master >= 2  # backend, frontend and the rest
        # The scheduler's holder says so (on a loaded machine a lease may be between terms).
        wait_for(
            lambda: any(
                'meshd_leases_held{role="scheduler"} 1.0' in (answered(f"{url}/metrics") or "")
                for url in (f"http://{mesh.address(d)}:8080" for d in ("master", "mesh-2"))
            ),
            timeout=30,
            what="the scheduler's holder counting its lease",
        )

        (tmp_path / "prometheus").mkdir()
        with prometheus(tmp_path / "prometheus", targets) as base:
            wait_for(
                lambda: (
                    (found := api(base, "targets"))
                    and sorted(
                        t["labels"]["droplet"]
                        for t in found["activeTargets"]
                        if t["health"] == "up"
                    )
                    == ["master", "mesh-2"]
                ),
                timeout=60,
                what="both agents scraped",
            )
            result = wait_for(
                lambda: (
                    (found := api(base, "query", query="sum by (state) (meshd_instances)"))
                    and found["result"]
                ),
                timeout=30,
                what="meshd_instances in Prometheus",
            )
            by_state = {r["metric"]["state"]: float(r["value"][1]) for r in result}
            assert by_state["running"] == on_master and by_state["crashed"] == 0
            rules = api(base, "rules")["groups"][0]["rules"]
            assert {r["name"] for r in rules} == {
                "MeshdDropletDown",
                "MeshdServiceNotWhole",
                "MeshdBackupOverdue",
                "MeshdQuorumLost",
            }
            assert all(r["health"] == "ok" for r in rules)
