"""Git deploys timed on a local mesh, on Docker and then as processes. Prints one JSON object.

Per runtime, a local mesh of one droplet (its own context and home) runs project `shop`,
whose backend is built from examples/app in a local bare repository with `meshctl hook
install`. While two threads GET the UAT and prod pages through the entry every 20 ms:

- five pushes, each changing app/release.txt: `push_to_serving_s` is from starting `git push`
  until the UAT page shows the new text (`_p50`: their median);
- `meshctl promote shop --follow` until prod's page shows the promoted text (`promote_s`);
- `meshctl rollback shop uat --follow` until UAT shows the text before (`rollback_s`);
- `failed_requests`: answers other than 200 and connection errors, counted for each page
  from its first good answer on (`requests_sent`: every GET of both pages).

`artifact_mb` is the size of UAT's backend artifact (`meshctl releases --json`, 10^6 bytes);
`fetch_mb_per_s` the bytes over the seconds of the agent's `artifact_fetched` events (null
when there were none or they took no measurable time). `phases` places each step's milestones,
in seconds from its start, from the release record and the events: `created` (the builder
made the record: hook or CLI, request, git fetch), `rolling` (built and stored; the target
written), `fetched` (the droplet has the artifact), `live` (the builder saw it healthy),
`served` (the page through the entry showed it) and `returned` (the command exited; a push's
hook also waits for the UAT tag). Top-level figures are Docker's, `process` holds the same
keys, `targets_met` compares both with issue #16's targets. Needs nginx; Docker needs an engine
and a static /bin/busybox (else `{"error": ...}`). Run: `.venv/bin/python bench/deploy.py`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MESHCTL = str(Path(sys.executable).parent / "meshctl")
BUSYBOX = Path("/bin/busybox")
INTERVAL_S = 0.02
PUSHES = 5
WAIT_S = 120.0
MB = 1_000_000
TARGETS = {"push_to_serving_s_p50": 10.0, "promote_s": 5.0, "rollback_s": 3.0}
KEYS = ("number", "release")  # a release's number in the details of its events
RELEASE = re.compile(r"release: ([^<\n]*)")
log = logging.getLogger("bench.deploy")


class BenchError(Exception):
    """A step of the bench that did not happen; ends that runtime's part."""


@dataclass(frozen=True, slots=True)
class Answer:
    at: float  # wall clock, when the answer came
    ok: bool
    release: str | None


class Page:
    """GETs `url` every INTERVAL_S in a thread until the block ends; what each answer said."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.answers: list[Answer] = []
        self.failures: list[str] = []  # after the first good answer
        self._good = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Page:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        due = time.monotonic()
        while not self._stop.is_set():
            body, why = "", ""
            try:
                with urllib.request.urlopen(self.url, timeout=2) as response:  # noqa: S310
                    body = response.read().decode(errors="replace")
                    ok = response.status == 200
            except (OSError, ValueError) as err:  # HTTPError (non-2xx) is an OSError too
                ok, why = False, str(err)
            if ok:
                self._good = True
            elif self._good:
                self.failures.append(f"{time.time():.2f} {why}")
            found = RELEASE.search(body)
            self.answers.append(Answer(time.time(), ok, found.group(1).strip() if found else None))
            due = max(due + INTERVAL_S, time.monotonic())
            time.sleep(max(0.0, due - time.monotonic()))

    def shows(self, text: str, since: float, timeout: float = WAIT_S) -> float:
        """Seconds from `since` (wall clock) until an answer showed release `text`."""
        seen = 0
        while time.time() < since + timeout:
            answers = self.answers[seen:]
            seen += len(answers)
            for answer in answers:
                if answer.at >= since and answer.ok and answer.release == text:
                    return answer.at - since
            time.sleep(INTERVAL_S / 2)
        raise BenchError(f"{self.url} did not show release {text!r} within {timeout:.0f} s")


class Command:
    """A command run in the background, its output lines stamped with the seconds since its
    start (a push's `remote:` lines are the builder's progress)."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.args = args
        self.started = time.time()
        self.ended: float | None = None
        self.lines: list[tuple[float, str]] = []
        self.process = subprocess.Popen(
            args, cwd=cwd, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append((round(time.time() - self.started, 2), line.rstrip()))
        self.ended = time.time()

    def finish(self, timeout: float = WAIT_S) -> float:
        """Seconds from the start until it exited; BenchError unless it exited 0."""
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self._reader.join()
        for at, line in self.lines:
            log.info("  %6.2f %s", at, line)
        if code:
            raise BenchError(f"{' '.join(self.args[:3])} exited {code}: {self.lines[-3:]}")
        return (self.ended or time.time()) - self.started


@dataclass
class Mesh:
    home: Path
    name: str
    images: set[str] = field(default_factory=set)

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in {"FORCE_COLOR", "COLUMNS"}}
        env |= {"NO_COLOR": "1", "PYTHONUNBUFFERED": "1",  # progress lines stamped as they come
                "MESHD_CONFIG_HOME": str(self.home / "config"),
                "MESHD_STATE_HOME": str(self.home / "state")}  # fmt: skip
        return env

    def ok(self, *args: str | Path, timeout: float = 180) -> str:
        done = subprocess.run(
            [MESHCTL, *map(str, args), "--context", self.name],
            cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
        if done.returncode:
            said = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:]
            raise BenchError(f"meshctl {args[0]} exited {done.returncode}: {said}")
        return done.stdout

    def start(self, *args: str) -> Command:
        return Command([MESHCTL, *args, "--context", self.name], ROOT, self.env)

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.ok("events", "-n", "500", "--json").splitlines()]

    def down(self) -> None:
        """`meshctl down`, then SIGKILL to any process group still running from this home."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run([MESHCTL, "down", "--context", self.name, "--delete-data"], cwd=ROOT,
                           env=self.env, capture_output=True, timeout=120, check=False)  # fmt: skip
        for group in groups_under(self.home):
            log.warning("Killing a process group left behind. pgid=%d", group)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)
        if self.images and shutil.which("docker"):
            subprocess.run(["docker", "rmi", *sorted(self.images)],
                           capture_output=True, timeout=120, check=False)  # fmt: skip


def groups_under(home: Path) -> set[int]:
    """Process groups but this one with a process whose arguments or directory are in `home`."""
    groups = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().decode(errors="replace")
            cwd = os.readlink(proc / "cwd")
            group = os.getpgid(int(proc.name))
        except OSError:
            continue
        if str(home) in argv or cwd.startswith(str(home)):
            groups.add(group)
    return groups - {os.getpgrp()}


def git_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "MESHD_"))}
    env |= {"PYTHONUNBUFFERED": "1", "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull, "GIT_AUTHOR_NAME": "Bench",
            "GIT_AUTHOR_EMAIL": "bench@example.org", "GIT_COMMITTER_NAME": "Bench",
            "GIT_COMMITTER_EMAIL": "bench@example.org"}  # fmt: skip
    return env


def git(cwd: Path, *args: str | Path) -> str:
    done = subprocess.run(["git", *map(str, args)], cwd=cwd, env=git_env(),
                          capture_output=True, text=True, timeout=WAIT_S, check=False)  # fmt: skip
    if done.returncode:
        raise BenchError(f"git {args[0]}: {done.stderr.strip()}")
    return done.stdout.strip()


def make_repository(home: Path, runtime: str) -> tuple[Path, Path, Path]:
    """The bare repository with the example app and its config, a clone to change and push,
    and the operator's checkout that `publish` reads (a process runs its disk build in place)."""
    bare, work, published = home / "shop.git", home / "shop", home / "published"
    git(home, "init", "--quiet", "--bare", "-b", "main", bare)
    (work / "app").mkdir(parents=True)
    for name in ("hello.py", "visits.py", "Dockerfile", "serve", "work"):
        shutil.copy(ROOT / "examples" / "app" / name, work / "app" / name)
    backend: dict[str, str] = {"build_context": "app", "process_command": "python3 hello.py"}
    if runtime == "docker":
        if not BUSYBOX.is_file() or b"/lib" in BUSYBOX.read_bytes()[:4096]:
            raise BenchError("no static busybox at /bin/busybox (Debian busybox-static)")
        shutil.copy(BUSYBOX, work / "app" / "busybox")
        backend = {"build_context": "app"}
    (work / "app" / "release.txt").write_text("first\n")
    off = {"enabled": False}
    services = {"backend": backend, "frontend": off, "database": off, "redis": off}
    config = {"deployment_platform": runtime, "projects": {"shop": {
        "git_repo": str(bare), "health_timeout": 30, "services": services}}}  # fmt: skip
    (work / "deployment_config.json").write_text(json.dumps(config))
    (work / "projects.csv").write_text(
        "Project,Servers,MasterSpec,WebSpec\nshop,1,s-1vcpu-2gb,s-1vcpu-1gb\n"
    )
    git(work, "init", "--quiet", "-b", "main")
    git(work, "add", ".")
    git(work, "commit", "--quiet", "-m", "first")
    git(work, "remote", "add", "origin", bare)
    git(work, "push", "--quiet", "origin", "main")
    git(home, "clone", "--quiet", bare, published)
    return bare, work, published


def push(work: Path, uat: Page, note: str) -> tuple[str, Command, float]:
    """Commit release `note` and push it: its sha, the push, seconds until UAT showed it."""
    (work / "app" / "release.txt").write_text(note + "\n")
    git(work, "commit", "--quiet", "-am", note)
    sha = git(work, "rev-parse", "HEAD")
    pushed = Command(["git", "push", "origin", "main"], work, git_env())
    took = uat.shows(note, pushed.started)
    pushed.finish(300)
    log.info("Pushed. release=%s push_to_serving_s=%.2f", note, took)
    return sha, pushed, took


def phases(
    events: list[dict[str, Any]], step: Command, served: float, release: dict[str, Any]
) -> dict[str, Any]:
    """When `release` reached each milestone, in seconds from the start of `step`."""

    def first(name: str) -> float | None:
        env, number = release["env"], release["number"]
        found = [e for e in events if e["name"] == name and e["subject"].startswith(f"shop.{env}")]
        found = [e for e in found if number in {(e["detail"] or {}).get(k) for k in KEYS}]
        return min((e["at"] for e in found), default=None)

    marks = {"created": release["created_at"], "rolling": first("release_rolling"),
             "fetched": first("artifact_fetched"), "live": release["live_at"],
             "served": step.started + served, "returned": step.ended}  # fmt: skip
    return {k: None if v is None else round(v - step.started, 2) for k, v in marks.items()}


def fetch_rate(events: list[dict[str, Any]]) -> tuple[float | None, list[dict[str, Any]]]:
    fetches = [e["detail"] for e in events if e["name"] == "artifact_fetched"]
    seconds = sum(float(f["seconds"]) for f in fetches)
    rate = sum(int(f["bytes"]) for f in fetches) / MB / seconds if seconds else None
    return (None if rate is None else round(rate, 1)), fetches


def measure(mesh: Mesh, work: Path, entry: str) -> dict[str, Any]:
    uat, prod = Page(f"{entry}/shop-uat/backend/"), Page(f"{entry}/shop-prod/backend/")
    steps: list[tuple[Command, float, str]] = []  # the step, when served, its release's sha
    with uat, prod:
        uat.shows("first", time.time() - 1)
        prod.shows("first", time.time() - 1)
        for i in range(1, PUSHES + 1):
            sha, pushed, served = push(work, uat, f"push-{i}")
            steps.append((pushed, served, sha))
        promote = mesh.start("promote", "shop", "--follow")
        promote_s = prod.shows(f"push-{PUSHES}", promote.started)
        promote.finish()
        rollback = mesh.start("rollback", "shop", "uat", "--follow")
        rollback_s = uat.shows(f"push-{PUSHES - 1}", rollback.started)
        rollback.finish()
        time.sleep(1)
    uat_releases = json.loads(mesh.ok("releases", "shop", "uat", "--json"))["releases"]
    (prod_release,) = json.loads(mesh.ok("releases", "shop", "prod", "--json"))["releases"]
    pushes = [next(r for r in uat_releases if r["sha"] == sha and r["action"] in ("push", "deploy"))
              for _, _, sha in steps]  # fmt: skip
    mesh.images |= {a["image"] for r in pushes for a in r["artifacts"].values() if a["image"]}
    events = mesh.events()
    rate, fetches = fetch_rate(events)
    took = [round(t, 2) for _, t, _ in steps]
    failures = uat.failures + prod.failures
    return {
        "push_to_serving_s_p50": round(statistics.median(took), 2),
        "push_to_serving_s": took,
        "promote_s": round(promote_s, 2),
        "rollback_s": round(rollback_s, 2),
        "failed_requests": len(failures),
        "requests_sent": len(uat.answers) + len(prod.answers),
        "artifact_mb": round(pushes[-1]["artifacts"]["backend"]["size"] / MB, 3),
        "fetch_mb_per_s": rate,
        "fetches": len(fetches),
        "phases": {
            "pushes": [phases(events, s, t, r) for (s, t, _), r in zip(steps, pushes, strict=True)],
            "promote": phases(events, promote, promote_s, prod_release),
            "rollback": phases(events, rollback, rollback_s, uat_releases[0]),
        },
        "failures": failures[:10],
    }


def bench(runtime: str) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix=f"meshd-bench-deploy-{runtime}-"))
    mesh = Mesh(home, f"bdeploy{uuid.uuid4().hex[:6]}")
    try:
        bare, work, published = make_repository(home, runtime)
        log.info("Starting a mesh. runtime=%s context=%s home=%s", runtime, mesh.name, home)
        pull = ["--no-pull"] if runtime == "docker" else []
        mesh.ok("up", "--droplets", "1", "--runtime", runtime, *pull, timeout=300)
        mesh.ok("publish", published / "projects.csv", "--deploy-config",
                published / "deployment_config.json", "--wait", timeout=300)  # fmt: skip
        mesh.ok("hook", "install", bare)
        entry = json.loads(mesh.ok("status", "--json"))["entry_url"]
        if not entry:
            raise BenchError("the mesh has no entry address (is nginx installed?)")
        found = measure(mesh, work, entry)
    finally:
        mesh.down()
        shutil.rmtree(home, ignore_errors=True)
    notes = ["promote and rollback run with --follow; their clocks stop at the page"]
    if found["fetches"] == 0:
        notes.append(f"no artifact_fetched event: the {runtime} droplet had every artifact "
                     "(on Docker the builder builds into the one shared engine)")  # fmt: skip
    elif found["artifact_mb"] < 1:
        notes.append("an artifact this small: fetch_mb_per_s is a fetch's fixed cost, not a rate")
    if found["fetches"] and found["fetch_mb_per_s"] is None:
        notes.append("the fetches took under 10 ms each (their seconds round to 0.00)")
    return found | {"notes": notes}


def targets_met(found: dict[str, Any]) -> dict[str, bool]:
    if "error" in found:
        return {}
    met = {key: found[key] <= limit for key, limit in TARGETS.items()}
    return met | {"failed_requests": found["failed_requests"] == 0}


def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    results: dict[str, dict[str, Any]] = {}
    for runtime in ("docker", "process"):
        try:
            results[runtime] = bench(runtime)
        except BenchError as err:
            log.error("The %s part failed: %s", runtime, err)
            results[runtime] = {"error": str(err)}
    docker, process = results["docker"], results["process"]
    met = targets_met(docker) | {"process": targets_met(process)}
    print(json.dumps(docker | {"process": process, "targets_met": met}))


if __name__ == "__main__":
    main()
