"""A real ACME CA for tests: Debian's `pebble` (2.4) with `pebble-challtestsrv` as its DNS
server, on loopback ports of this test worker. Every test domain resolves to `answer` (the
address the HTTP-01 validation connects to, on `http_port`: the entry point's); the
directory's own HTTPS certificate comes from a CA made here (`directory_ca`, what the `acme`
config's `directory_ca` names), and the certificates pebble issues chain to a root it makes
at start (`issuing_root()`, for `curl --cacert`). `PEBBLE_VA_NOSLEEP=1` keeps validation fast,
`PEBBLE_WFE_NONCEREJECT=0` keeps pebble from refusing good nonces (its default is 5 %) and
`PEBBLE_AUTHZREUSE=0` validates every order afresh (by default pebble reuses half of the
valid authorizations, and a renewal would not notice that the names point elsewhere).
Skipped with a reason where pebble is missing, a failure in CI (`CI=true`).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from meshd.core.meshca import issue_leaf, make_ca
from tests.support import free_port, unavailable
from tests.support.nats import wait_for_port

INSTALL_HINT = "pebble is not installed (Debian: apt-get install pebble)"
VALIDITY_S = 90 * 24 * 3600


@dataclass
class Pebble:
    directory: str  # the ACME directory's URL
    directory_ca: Path  # the CA of its HTTPS certificate (PEM file)
    management: str  # https://127.0.0.1:<port>
    dns: str  # challtestsrv's management API, http://127.0.0.1:<port>
    dns_server: str  # its DNS server, 127.0.0.1:<port> (`meshctl certs --dns`)
    log: Path
    processes: list[subprocess.Popen[bytes]] = field(repr=False)

    def issuing_root(self) -> str:
        """The root pebble's certificates chain to (made at its start), PEM."""
        context = ssl.create_default_context(cafile=str(self.directory_ca))
        with urllib.request.urlopen(f"{self.management}/roots/0", context=context) as answer:  # noqa: S310
            return str(answer.read().decode())

    def answer_with(self, address: str) -> None:
        """Resolve every test domain to `address` from now on."""
        body = json.dumps({"ip": address}).encode()
        request = urllib.request.Request(f"{self.dns}/set-default-ipv4", data=body)  # noqa: S310
        with urllib.request.urlopen(request, timeout=5):  # noqa: S310
            pass

    def issued(self) -> int:
        """How many certificates pebble has issued (its log says each)."""
        return self.log.read_text(errors="replace").count("Issued certificate serial")

    def config_for(self, directory: Path) -> dict[str, str]:
        """The deployment config's `acme` object for this CA, its CA file copied into
        `directory` (where the config is)."""
        shutil.copy(self.directory_ca, directory / "pebble-directory-ca.pem")
        return {"directory": self.directory, "directory_ca": "pebble-directory-ca.pem",
                "email": "ops@meshd.test"}  # fmt: skip


def pebble_binaries() -> tuple[str, str]:
    found = shutil.which("pebble"), shutil.which("pebble-challtestsrv")
    if found[0] is None or found[1] is None:
        unavailable(INSTALL_HINT)
    return found[0], found[1]


@contextlib.contextmanager
def running_pebble(
    directory: Path, answer: str, http_port: int, env: dict[str, str] | None = None
) -> Iterator[Pebble]:
    """pebble validating HTTP-01 at `answer:http_port`; `env` adds pebble's knobs."""
    ca_binary, dns_binary = pebble_binaries()
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca = make_ca("pebble", now)
    cert, key = issue_leaf(ca, "pebble", "pebble", "127.0.0.1", now)
    (directory / "ca.pem").write_bytes(ca.cert_pem)
    (directory / "cert.pem").write_bytes(cert)
    (directory / "key.pem").write_bytes(key)
    listen, management, dns, dns_api = (free_port() for _ in range(4))
    config = {
        "pebble": {
            "listenAddress": f"127.0.0.1:{listen}",
            "managementListenAddress": f"127.0.0.1:{management}",
            "certificate": str(directory / "cert.pem"),
            "privateKey": str(directory / "key.pem"),
            "httpPort": http_port,
            "tlsPort": 5001,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
            "certificateValidityPeriod": VALIDITY_S,
        }
    }
    (directory / "pebble.json").write_text(json.dumps(config))
    log = directory / "pebble.log"
    processes: list[subprocess.Popen[bytes]] = []
    try:
        with (directory / "challtestsrv.log").open("ab") as out:
            processes.append(
                subprocess.Popen(
                    [
                        dns_binary,
                        "-defaultIPv4",
                        answer,
                        "-defaultIPv6",
                        "",
                        "-dns01",
                        f"127.0.0.1:{dns}",
                        "-management",
                        f"127.0.0.1:{dns_api}",
                        "-http01",
                        "",
                        "-https01",
                        "",
                        "-tlsalpn01",
                        "",
                    ],  # fmt: skip
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
        wait_for_port("127.0.0.1", dns_api)
        knobs = {"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0",
                 "PEBBLE_AUTHZREUSE": "0", **(env or {})}  # fmt: skip
        with log.open("ab") as out:
            processes.append(
                subprocess.Popen(
                    [
                        ca_binary,
                        "-config",
                        str(directory / "pebble.json"),
                        "-dnsserver",
                        f"127.0.0.1:{dns}",
                    ],  # fmt: skip
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, **knobs},
                )
            )
        wait_for_port("127.0.0.1", listen)
        wait_for_port("127.0.0.1", management)
        yield Pebble(
            directory=f"https://127.0.0.1:{listen}/dir",
            directory_ca=directory / "ca.pem",
            management=f"https://127.0.0.1:{management}",
            dns=f"http://127.0.0.1:{dns_api}",
            dns_server=f"127.0.0.1:{dns}",
            log=log,
            processes=processes,
        )
    finally:
        for process in reversed(processes):
            process.terminate()
        deadline = time.monotonic() + 5
        for process in processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
