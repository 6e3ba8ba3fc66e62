"""TLS on a real local mesh with real nginx against a real ACME CA (pebble): the domains that
examples/deployment_config.json gives hostomatic's prod get a certificate, one order for five
droplets; it is served over HTTPS
on the entry address and plain HTTP redirects there; a forced renewal swaps it without a
failed request; a CA that refuses (the domain no longer points at the entry) leaves the old
certificate serving and says why; killing the lb holder moves the entry, and HTTPS goes on
with the same certificate."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.support import nginx_binary
from tests.support.mesh import BACKEND_ONLY, LocalMesh, local_mesh, write_project
from tests.support.pebble import Pebble, running_pebble
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = json.loads((ROOT / "examples" / "deployment_config.json").read_text())
DOMAINS = EXAMPLE["projects"]["hostomatic"]["domains"]["prod"]  # pebble's DNS answers them
NOWHERE = "127.0.0.254"  # nothing listens there: validation fails


@pytest.fixture(autouse=True)
def nginx_installed() -> None:
    nginx_binary()


@dataclass(frozen=True)
class Answer:
    status: int
    certificate: str  # sha256 of the served leaf
    headers: str
    body: str


def https_get(address: str, port: int, domain: str, cafile: str, path: str = "/") -> Answer:
    """GET over TLS from `address:port` as `domain` (SNI and Host), the chain checked
    against `cafile`."""
    context = ssl.create_default_context(cafile=cafile)
    with (
        socket.create_connection((address, port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=domain) as tls,
    ):
        leaf = tls.getpeercert(binary_form=True) or b""
        tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {domain}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    head, _, body = data.decode(errors="replace").partition("\r\n\r\n")
    return Answer(int(head.split(" ", 2)[1]), hashlib.sha256(leaf).hexdigest(), head, body)


def http_head(address: str, port: int, domain: str, path: str) -> str:
    """The status line and headers of a plain-HTTP GET as `domain`."""
    with socket.create_connection((address, port), timeout=5) as raw:
        raw.sendall(f"GET {path} HTTP/1.1\r\nHost: {domain}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := raw.recv(65536):
            data += chunk
    return data.decode(errors="replace").partition("\r\n\r\n")[0]


@dataclass
class TlsLoad:
    """HTTPS requests one after the other until stopped; which certificates answered."""

    target: tuple[str, int, str, str]
    sent: int = 0
    failed: list[str] = field(default_factory=list)
    seen: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            self.sent += 1
            try:
                answer = https_get(*self.target)
                if answer.status != 200:
                    self.failed.append(f"status {answer.status}")
                elif not self.seen or self.seen[-1] != answer.certificate:
                    self.seen.append(answer.certificate)
            except (OSError, ValueError) as err:
                self.failed.append(f"{time.monotonic():.2f}: {err}")
            time.sleep(0.02)


@contextmanager
def https_load(target: tuple[str, int, str, str]) -> Iterator[TlsLoad]:
    load = TlsLoad(target)
    thread = threading.Thread(target=load.run, daemon=True)
    thread.start()
    try:
        yield load
    finally:
        load.stop.set()
        thread.join(timeout=10)


def certs(mesh: LocalMesh, pebble: Pebble) -> dict[str, Any]:
    """`meshctl certs --json`, asking pebble's DNS server where the domains point."""
    (only,) = json.loads(mesh.ok("certs", "--json", "--dns", pebble.dns_server))
    return dict(only)


def events(mesh: LocalMesh, name: str) -> list[dict[str, Any]]:
    found = mesh.events_about("hostomatic-prod") or []
    return [e for e in found if e["name"] == name]


def lb_holder(mesh: LocalMesh) -> str | None:
    status = mesh.status_if_readable()
    return status["lb"] if status else None


@dataclass(frozen=True)
class Setup:
    mesh: LocalMesh
    pebble: Pebble
    target: tuple[str, int, str, str]  # entry address, HTTPS port, domain, pebble's root
    http_port: int


@contextmanager
def tls_mesh(home: Path, project: str, droplets: int, domains: list[str]) -> Iterator[Setup]:
    """A local mesh of `droplets` running `project` (backend only) with `domains` for prod,
    its certificates from a pebble of its own, published and converged."""
    row = f"{project},{droplets},s-1vcpu-2gb,s-1vcpu-1gb"
    csv, config = write_project(home, [row], BACKEND_ONLY)
    with local_mesh(home / "mesh", droplets=droplets) as mesh:
        entry = urlsplit(mesh.status()["entry_url"])
        address, http_port = str(entry.hostname), int(entry.port or 80)
        tls_port = 443 if http_port == 80 else 8443
        with running_pebble(home / "pebble", address, http_port) as pebble:
            document = json.loads(config.read_text())
            document["projects"][project]["domains"] = {"prod": domains}
            document["acme"] = pebble.config_for(home)
            config.write_text(json.dumps(document))
            mesh.ok("publish", csv, "--deploy-config", config, "--wait", timeout=240)
            root = home / "pebble-root.pem"
            root.write_text(pebble.issuing_root())
            yield Setup(mesh, pebble, (address, tls_port, domains[0], str(root)), http_port)


def test_a_domain_is_served_over_https_renewed_kept_on_refusal_and_moved_with_the_entry(
    tmp_path: Path,
) -> None:
    with tls_mesh(tmp_path, "hostomatic", 5, DOMAINS) as setup:
        first = issued_once_and_served(setup)
        renewed = renewed_under_load(setup, first)
        kept_when_the_ca_refuses(setup, renewed)
        moved_with_the_entry(setup, renewed)


def issued_once_and_served(setup: Setup) -> str:
    """One order for five droplets; HTTPS for both names, plain HTTP redirects."""
    mesh, pebble, target = setup.mesh, setup.pebble, setup.target
    address, tls_port, domain, root = target
    first = wait_for(lambda: _served(target), timeout=120, what="HTTPS with pebble's certificate")
    assert "served from" in first.body
    assert https_get(address, tls_port, DOMAINS[1], root).certificate == first.certificate
    assert pebble.issued() == 1
    assert len(events(mesh, "certificate_issued")) == 1
    head = http_head(address, setup.http_port, domain, "/shop?x=1")
    suffix = "" if tls_port == 443 else f":{tls_port}"
    assert head.startswith("HTTP/1.1 301"), head
    assert f"Location: https://{domain}{suffix}/shop?x=1" in head
    shown = certs(mesh, pebble)
    assert shown["state"] == "valid" and "Pebble" in shown["issuer"]
    assert shown["dns_problems"] == {} and shown["attention"] is None
    assert sorted(shown["covers"]) == sorted(DOMAINS)
    return first.certificate


def renewed_under_load(setup: Setup, first: str) -> str:
    """A forced renewal swaps the certificate without a failed request."""
    with https_load(setup.target) as load:
        setup.mesh.ok("certs", "renew", "hostomatic", "prod")
        wait_for(lambda: len(load.seen) >= 2, timeout=90, what="the renewed certificate")
        time.sleep(1)
    assert load.failed == [], load.failed[:5]
    assert load.sent > 20
    assert load.seen[0] == first and load.seen[-1] != first
    assert len(events(setup.mesh, "certificate_renewed")) == 1
    return load.seen[-1]


def kept_when_the_ca_refuses(setup: Setup, renewed: str) -> None:
    """The domains point elsewhere, so validation fails: the old certificate serves on."""
    mesh, pebble = setup.mesh, setup.pebble
    pebble.answer_with(NOWHERE)
    mesh.ok("certs", "renew", "hostomatic", "prod")
    failed = wait_for(lambda: events(mesh, "certificate_failed"), timeout=90, what="the failure")
    assert "validation failed" in failed[0]["detail"]["error"]
    assert https_get(*setup.target).certificate == renewed
    shown = certs(mesh, pebble)
    assert shown["state"] == "failing" and "validation failed" in shown["last_error"]
    assert set(shown["dns_problems"]) == set(DOMAINS)
    (cert_status,) = mesh.status()["certificates"]
    assert cert_status["state"] == "failing" and cert_status["attention"]
    assert pebble.issued() == 2


def moved_with_the_entry(setup: Setup, renewed: str) -> None:
    """The lb holder dies: another droplet serves the entry with the same certificate."""
    mesh = setup.mesh
    holder = wait_for(lambda: lb_holder(mesh), what="the lb holder")
    group = next(d["pgid"] for d in mesh.account["droplets"].values() if d["name"] == holder)
    os.killpg(group, signal.SIGKILL)
    moved = wait_for(lambda: _served(setup.target), timeout=60, what="HTTPS from the new holder")
    assert moved.certificate == renewed
    wait_for(lambda: lb_holder(mesh) not in (None, holder), what="a new lb holder")
    assert setup.pebble.issued() == 2


def _served(target: tuple[str, int, str, str]) -> Answer | None:
    try:
        answer = https_get(*target)
    except (OSError, ValueError):
        return None
    return answer if answer.status == 200 else None
