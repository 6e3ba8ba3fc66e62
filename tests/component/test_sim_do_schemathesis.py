"""Property tests of the DigitalOcean stand-in against the API description it serves (the
vendored subset, mended by `sim.digitalocean.spec.load_document`): schemathesis generates
requests for every operation, from the description's examples and at random, valid and
invalid; each answer must not be a server error, and its status code, content type, headers
and body must be ones the description allows. The stand-in runs as a process, as tests of
meshd run it; its own check of every answer (`--check-responses`) must find nothing either.

Random ids name nothing (404), so half the valid requests get, in their path, the id of a
resource the test made (`Seeds`, made again when a request deleted it): the answers about
real droplets, volumes, firewalls... are checked too."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sim.digitalocean.spec import load_document
from tests.support import unavailable

try:
    import hypothesis
    import schemathesis
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        negative_data_rejection,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )
except ImportError as err:  # the test below says what is missing
    MISSING: str | None = f"{err.name} not installed (pip install schemathesis)"
else:
    MISSING = None

REPO = Path(__file__).resolve().parents[2]
EXAMPLES_PER_OPERATION = 8
NO_LIMITS = {"per_minute": 100_000, "per_hour": 1_000_000, "key_listings_per_minute": 100_000}
DROPLET = {"region": "nyc3", "size": "s-1vcpu-1gb", "image": "debian-12-x64"}
PUBLIC_KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAII+sABUPDP/ycOFAx3h9d5DDkHEU55IUmNK9v4Kw5E1B seed@test"
)
SSH_IN = {"protocol": "tcp", "ports": "22", "sources": {"addresses": ["0.0.0.0/0"]}}


@dataclass
class StandIn:
    url: str
    token: str
    log: Path  # its stderr: the traceback of a server error
    violations_seen: int = 0

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """One request with the token (`/v2/...`) or to the control endpoint (`/_sim...`)."""
        request = urllib.request.Request(
            self.url + path,
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return answer.status, json.loads(answer.read() or b"null")
        except urllib.error.HTTPError as err:
            with err:
                return err.code, json.loads(err.read() or b"null")

    def made(self, method: str, path: str, body: Any = None) -> Any:
        status, answer = self.call(method, path, body)
        assert status < 300, f"{method} {path} {body}: {status} {answer}"
        return answer

    def new_violations(self) -> list[dict[str, Any]]:
        violations: list[dict[str, Any]] = self.made("GET", "/_sim/violations")["violations"]
        fresh = violations[self.violations_seen :]
        self.violations_seen = len(violations)
        return fresh

    def finish(self, path: str, action: dict[str, Any]) -> None:
        """Move the clock on until the action at `path` completed."""
        self.made("POST", "/_sim", {"advance": 3600})
        for _ in range(250):
            if self.made("GET", path)["action"]["status"] == "completed":
                return
            time.sleep(0.02)
        raise AssertionError(f"{action} did not complete")


@dataclass
class Seeds:
    """A resource of each kind on the stand-in, made again when a request removed it."""

    stand_in: StandIn
    ids: dict[str, str] = field(default_factory=dict)
    count: int = 0

    SHOWN = {  # where each kind is read: a 404 there means it is gone
        "droplet_id": "/v2/droplets/{}",
        "action_id": "/v2/actions/{}",
        "ssh_key_identifier": "/v2/account/keys/{}",
        "firewall_id": "/v2/firewalls/{}",
        "image_id": "/v2/images/{}",
        "snapshot_id": "/v2/snapshots/{}",
        "volume_id": "/v2/volumes/{}",
        "volume_snapshot_id": "/v2/volumes/snapshots/{}",
        "reserved_ip": "/v2/reserved_ips/{}",
        "tag_id": "/v2/tags/{}",
        "vpc_id": "/v2/vpcs/{}",
    }

    def id_of(self, kind: str) -> str:
        known = self.ids.get(kind)
        if known is not None and self.stand_in.call("GET", self.SHOWN[kind].format(known))[0] < 300:
            return known
        self.count += 1
        makers: dict[str, Callable[[], None]] = {
            "droplet_id": self._droplet,
            "action_id": self._droplet,
            "image_id": self._snapshot,
            "snapshot_id": self._snapshot,
            "volume_snapshot_id": self._volume_snapshot,
        }
        makers.get(kind, lambda: self._simple(kind))()
        return self.ids[kind]

    def _droplet(self) -> None:
        body = {"name": f"seed-{self.count}", **DROPLET, "tags": ["seed"]}
        answer = self.stand_in.made("POST", "/v2/droplets", body)
        self.ids["droplet_id"] = str(answer["droplet"]["id"])
        self.ids["action_id"] = action = str(answer["links"]["actions"][0]["id"])
        self.stand_in.finish(f"/v2/actions/{action}", answer)

    def _snapshot(self) -> None:
        droplet = self.id_of("droplet_id")
        body = {"type": "snapshot", "name": f"seed-{self.count}"}
        answer = self.stand_in.made("POST", f"/v2/droplets/{droplet}/actions", body)
        self.stand_in.finish(f"/v2/actions/{answer['action']['id']}", answer)
        snapshots = self.stand_in.made("GET", f"/v2/droplets/{droplet}/snapshots")["snapshots"]
        self.ids["image_id"] = self.ids["snapshot_id"] = str(snapshots[-1]["id"])

    def _volume_snapshot(self) -> None:
        volume = self.id_of("volume_id")
        body = {"name": f"seed-{self.count}"}
        answer = self.stand_in.made("POST", f"/v2/volumes/{volume}/snapshots", body)
        self.ids["volume_snapshot_id"] = str(answer["snapshot"]["id"])

    def _simple(self, kind: str) -> None:
        name = f"seed-{self.count}"
        path, body, key, field_ = {
            "ssh_key_identifier": (
                "/v2/account/keys", {"name": name, "public_key": PUBLIC_KEY}, "ssh_key", "id"
            ),
            "firewall_id": (
                "/v2/firewalls", {"name": name, "inbound_rules": [SSH_IN]}, "firewall", "id"
            ),
            "volume_id": (
                "/v2/volumes", {"name": name, "region": "nyc3", "size_gigabytes": 10}, "volume",
                "id",
            ),
            "reserved_ip": ("/v2/reserved_ips", {"region": "nyc3"}, "reserved_ip", "ip"),
            "tag_id": ("/v2/tags", {"name": name}, "tag", "name"),
            "vpc_id": ("/v2/vpcs", {"name": name, "region": "nyc3"}, "vpc", "id"),
        }[kind]  # fmt: skip
        self.ids[kind] = str(self.stand_in.made("POST", path, body)[key][field_])

    def put_into(self, case: Any) -> None:
        """The path's ids become those of made resources."""
        for name in case.path_parameters or {}:
            kind = name
            if name == "snapshot_id" and case.path.startswith("/v2/volumes/"):
                kind = "volume_snapshot_id"
            if kind in self.SHOWN:
                case.path_parameters[name] = self.id_of(kind)


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandIn]:
    """One stand-in process for the module: API only, every answer checked, no rate limits."""
    if MISSING:
        unavailable(MISSING)
    state = tmp_path_factory.mktemp("do-schemathesis")
    command = [sys.executable, "-m", "sim.digitalocean", "--listen", "127.0.0.1:0"]
    command += ["--state", str(state / "state"), "--api-only", "--check-responses"]
    with (state / "stderr").open("w") as errors:
        process = subprocess.Popen(
            [*command, "--speed", "20"],
            cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors, text=True,
        )  # fmt: skip
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 30)
        line = process.stdout.readline() if ready else ""
        assert line, f"the stand-in printed nothing: {(state / 'stderr').read_text()}"
        started = json.loads(line)
        made = StandIn(started["url"], started["token"], state / "stderr")
        limits = {"limits": NO_LIMITS, "reset_limits": True, "knobs": {"droplet_limit": 100_000}}
        made.made("POST", "/_sim", limits)
        yield made
    finally:
        process.kill()
        process.wait(10)
        process.stdout.close()  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def seeds(stand_in: StandIn) -> Seeds:
    made = Seeds(stand_in)
    for kind in Seeds.SHOWN:
        made.id_of(kind)
    return made


def seeded(case: Any) -> bool:
    """Half the valid requests with ids in their path: the same half on every replay."""
    if not case.path_parameters or case.meta is None or not case.meta.generation.mode.is_positive:
        return False
    return zlib.crc32(repr(sorted(case.path_parameters.items())).encode()) % 2 == 0


if MISSING:

    def test_schemathesis_is_installed() -> None:
        unavailable(MISSING or "")

else:
    CONFIG = schemathesis.Config.from_dict(
        {
            "generation": {
                "mode": "all",
                "max-examples": EXAMPLES_PER_OPERATION,
                # The test sends the token itself (below): generated `Authorization` headers,
                # or their removal as "invalid" data, would only test the token check.
                "with-security-parameters": False,
                # Undeclared query parameters are not invalid (OpenAPI does not forbid them;
                # DigitalOcean ignores them, as the stand-in does): not "negative" data.
                "allow-extra-parameters": False,
            },
            # The coverage phase sends hundreds of boundary cases per operation: minutes, not
            # seconds. Examples (from the description) and fuzzing (random) remain.
            "phases": {"coverage": {"enabled": False}},
        }
    )
    SCHEMA = schemathesis.openapi.from_dict(load_document(), config=CONFIG)
    CHECKS = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
        negative_data_rejection,
    ]

    @SCHEMA.parametrize()
    @hypothesis.settings(
        max_examples=EXAMPLES_PER_OPERATION,
        # CI replays one fixed sequence (a landing must not hang on a new random find);
        # elsewhere every run explores anew.
        derandomize=os.environ.get("CI") == "true",
        deadline=None,
        database=None,
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    def test_every_answer_conforms_to_the_description(
        case: schemathesis.Case[Any], stand_in: StandIn, seeds: Seeds
    ) -> None:
        if seeded(case):
            seeds.put_into(case)
        headers = {"Authorization": f"Bearer {stand_in.token}"}
        logged = stand_in.log.stat().st_size
        response = case.call(base_url=stand_in.url, headers=headers, timeout=30)
        if response.status_code >= 500:  # its traceback, shown with the failure
            print(stand_in.log.read_bytes()[logged:].decode(errors="replace")[-3000:])
        case.validate_response(response, checks=CHECKS, headers=headers)
        assert stand_in.new_violations() == [], "answers the stand-in's own check refuses"

    def test_no_answer_broke_the_description(stand_in: StandIn) -> None:
        """After all of the above (one stand-in for the module): nothing on its ledger."""
        assert stand_in.made("GET", "/_sim/violations")["violations"] == []
