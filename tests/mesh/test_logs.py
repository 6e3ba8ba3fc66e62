"""`meshctl logs` on a real local mesh: an instance's lines from two droplets, followed as they
are printed and merged by time; narrowed by --grep and --droplet; the mesh's own lines (the
agents', nginx's access log through the entry point); bad input refused with exit 2."""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from tests.support.mesh import (
    WEB_ONLY,
    answered,
    http_get,
    local_mesh,
    meshctl_path,
    service,
    write_project,
)
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]


class Follower:
    """`meshctl logs ... --follow --json` in the background, its lines as they come."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.process = subprocess.Popen(
            [meshctl_path(), "logs", *args, "--follow", "--json"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        self.taken: list[dict[str, Any]] = []  # what `until` returned (each row once)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(json.loads(line))

    def until(self, text: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        for row in self.seen:
            if text in row["text"] and row not in self.taken:
                self.taken.append(row)
                return row
        while time.monotonic() < deadline:
            try:
                row = self.lines.get(timeout=0.1)
            except queue.Empty:
                continue
            self.seen.append(row)
            if text in row["text"]:
                self.taken.append(row)
                return row
        raise AssertionError(f"no line with {text!r} within {timeout} s; seen {self.seen[-5:]}")

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


def test_logs_follow_two_droplets_merged_and_the_mesh_has_its_own(tmp_path: Path) -> None:
    csv, config = write_project(tmp_path, ["shop,3,s-1vcpu-2gb,s-1vcpu-1gb"], WEB_ONLY)
    with local_mesh(tmp_path / "mesh") as mesh:
        mesh.ok("publish", csv, "--deploy-config", config, "--wait", "--timeout", "120")
        backend = service(mesh.status(), "shop", "prod", "backend")
        assert backend["droplets"] == ["shop-web1", "shop-web2"]
        follower = Follower(mesh.env, "shop", "prod", "backend")
        try:
            # What the instances printed at start is kept, from both droplets.
            started = {follower.until("listening on", 30)["droplet"] for _ in range(2)}
            assert started == {"shop-web1", "shop-web2"}
            marks = {}
            for droplet in ("shop-web1", "shop-web2", "shop-web1"):
                mark = uuid.uuid4().hex
                http_get(f"http://{mesh.address(droplet)}:{backend['port']}/?mark={mark}")
                marks[mark] = droplet
                time.sleep(1.0)  # lines are timed when read: each pass after the last
            followed = [follower.until(mark, 10) for mark in marks]
        finally:
            follower.stop()
        assert [row["droplet"] for row in followed] == list(marks.values())
        assert all(row["source"] == "backend" and row["env"] == "prod" for row in followed)
        live = follower.seen[follower.seen.index(followed[0]) :]
        assert [row["at"] for row in live] == sorted(row["at"] for row in live)

        first = next(iter(marks))
        found = [
            json.loads(line)
            for line in mesh.ok("logs", "shop", "--grep", first, "--json").splitlines()
        ]
        assert [(r["droplet"], r["project"]) for r in found] == [("shop-web1", "shop")]
        assert (
            mesh.ok("logs", "shop", "prod", "backend", "--droplet", "shop-web2", "--grep", first)
            == ""
        )

        # The mesh's own lines: each agent's, and nginx's access log on the entry point.
        wait_for(
            lambda: (
                {
                    json.loads(line)["droplet"]
                    for line in mesh.ok(
                        "logs", "--mesh", "--grep", "Agent started", "--json"
                    ).splitlines()
                }
                == {"master", "shop-web1", "shop-web2"}
            ),
            timeout=30,
            what="every agent's start in the logs",
        )
        entry_mark = uuid.uuid4().hex
        entry = f"{mesh.status()['entry_url']}/shop-prod/backend/?mark={entry_mark}"
        wait_for(lambda: answered(entry), timeout=30, what="the entry point serving the backend")
        wait_for(
            lambda: (
                '"GET /shop-prod/backend/?mark=' in mesh.ok("logs", "--mesh", "--grep", entry_mark)
            ),
            timeout=30,
            what="the entry point's access log line",
        )

        unknown = mesh.meshctl("logs", "nosuch")
        assert (
            unknown.returncode == 2
            and "shop" in unknown.stderr
            and "Traceback" not in unknown.stderr
        )
        bad_since = mesh.meshctl("logs", "shop", "--since", "yesterday")
        assert bad_since.returncode == 2 and "30s, 10m" in bad_since.stderr
        neither = mesh.meshctl("logs")
        assert neither.returncode == 2 and "--mesh" in neither.stderr
