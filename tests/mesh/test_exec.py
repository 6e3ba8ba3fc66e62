"""`meshctl exec` on the shared local mesh: a one-off command runs beside the service's instance
with its environment, its output comes back while it still runs, its exit code is meshctl's;
--json gathers it; Ctrl-C stops it on the droplet; bad input is refused with what is known."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

from tests.support.mesh import ROOT, LocalMesh, meshctl_path
from tests.support.waiting import wait_for

SLOW = "echo started on $SERVICE_HOST; sleep 3; echo done; exit 3"


def popen(mesh: LocalMesh, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [meshctl_path(), *args],
        cwd=ROOT,
        env=mesh.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A run started in the background (`.ci/run &`) ignores SIGINT, and so would meshctl:
        # give it the default, as a terminal's Ctrl-C finds it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # noqa: PLW1509
    )


def test_a_one_off_streams_its_output_and_keeps_its_exit_code(seed_mesh: LocalMesh) -> None:
    running = popen(seed_mesh, "exec", "shop", "prod", "backend", "--", "sh", "-c", SLOW)
    assert running.stdout is not None
    first = running.stdout.readline()
    assert first.startswith("started on ") and running.poll() is None  # while it still runs
    assert running.wait(timeout=60) == 3
    assert running.stdout.read() == "done\n"
    events = seed_mesh.events_about("shop.prod.backend") or []
    ran = [e for e in events if e["name"] == "oneoff_ran"]
    assert ran and ran[-1]["detail"]["program"] == "sh" and ran[-1]["detail"]["exit_code"] == 3
    assert "SERVICE_HOST" not in json.dumps(ran)  # the program only: the rest may hold a secret


def test_json_gathers_the_output_and_names_the_droplet(seed_mesh: LocalMesh) -> None:
    result = seed_mesh.meshctl(
        "exec", "shop", "prod", "backend", "--json", "--", "sh", "-c", 'echo "$SECRETS_DIR"'
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["exit_code"] == 0 and found["droplet"] == "master" and found["error"] is None
    assert found["output"].strip().endswith("/secrets")  # the instance's kind of environment


def test_ctrl_c_stops_the_command_on_the_droplet(seed_mesh: LocalMesh, tmp_path: Path) -> None:
    marker = tmp_path / "still-running"
    script = f"echo waiting; while true; do touch {marker}; sleep 0.2; done"
    running = popen(seed_mesh, "exec", "shop", "prod", "backend", "--", "sh", "-c", script)
    assert running.stdout is not None and running.stdout.readline() == "waiting\n"
    running.send_signal(signal.SIGINT)
    assert running.wait(timeout=30) == 130
    time.sleep(1.0)
    touched = marker.stat().st_mtime
    time.sleep(1.0)
    assert marker.stat().st_mtime == touched  # nobody touches it any more: it was stopped
    cancelled = wait_for(
        lambda: [
            e
            for e in seed_mesh.events_about("shop.prod.backend") or []
            if e["name"] == "oneoff_ran" and e["detail"].get("error") == "cancelled"
        ],
        what="the cancelled one-off's event",
    )
    assert cancelled


def test_bad_input_is_refused_with_what_is_known(seed_mesh: LocalMesh) -> None:
    unknown = seed_mesh.meshctl("exec", "shop", "prod", "nope", "--", "true")
    assert unknown.returncode == 2 and "no service 'nope' in shop prod; known: " in unknown.stderr
    assert "backend" in unknown.stderr
    elsewhere = seed_mesh.meshctl("exec", "shop", "prod", "backend", "--droplet", "x", "--", "true")
    assert elsewhere.returncode == 2 and "'x' does not run backend" in elsewhere.stderr
    never = seed_mesh.meshctl("exec", "shop", "prod", "backend", "--timeout", "2d", "--", "true")
    assert never.returncode == 2 and "write 90s, 10m or 2h" in never.stderr
    missing = seed_mesh.meshctl("exec", "shop", "prod", "backend", "--", "no-such-program")
    assert missing.returncode == 1 and "cannot run 'no-such-program'" in missing.stderr
    assert "Traceback" not in unknown.stderr + elsewhere.stderr + missing.stderr
