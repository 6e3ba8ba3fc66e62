"""Build-time secrets (docs/secrets.md) from the deployment config to the build command: the
config key, the published spec and the allocation (older ones still load), the droplets they
are sealed to, the instance spec that carries the values to the build and never to the
container, and the `docker build` command, its environment and its scrubbed output. The
refused configs are in `tests/cases/deploy_config_cases.json`."""

from __future__ import annotations

import dataclasses
import logging
import stat
from pathlib import Path

import msgpack
import pytest

from meshd.agent.reconciler.instances import spec_for
from meshd.core.allocations import allocations_for
from meshd.core.placement import place
from meshd.core.secret_plan import Need, needs, used_by
from meshd.core.spec import ServiceSpec
from plugins.runtimes.docker.buildkit import (
    SCRATCH_PREFIX,
    SCRUBBED,
    CliBuildError,
    SecretBuilds,
    build_command,
    cli_environment,
    last_lines,
    prepare,
    scrub,
)
from plugins.runtimes.docker.containers import Build, container_spec, secret_files
from plugins.secrets.env import EnvSecrets
from protocol import subjects
from protocol.codec import decode, encode
from protocol.messages import Allocation
from tests.support.reconciling import allocation
from tests.support.states import config_from_json, state_from_csv

CSV = "Project,Servers,MasterSpec,WebSpec\nshop,1,s-1vcpu-2gb,s-1vcpu-1gb\n"
CONFIG = """{"projects": {"shop": {"services": {"backend": {
    "build_context": "app", "secrets": ["stripe_key"], "build_secrets": ["npm_token"]}}}}}"""
TOKEN = b"npm-token-value"


def backend(config: str = CONFIG) -> ServiceSpec:
    state = state_from_csv(CSV, config_from_json(config))
    return next(s for s in state.project("shop").services if s.name == "backend")


def test_a_service_lists_its_build_secrets_apart_from_its_secrets() -> None:
    service = backend()
    assert (service.secrets, service.build_secrets) == (("stripe_key",), ("npm_token",))
    assert backend('{"projects": {"shop": {}}}').build_secrets == ()


def test_a_published_spec_without_build_secrets_still_loads() -> None:
    data = backend().to_data()
    assert ServiceSpec.from_data(data) == backend()
    del data["build_secrets"]
    assert ServiceSpec.from_data(data).build_secrets == ()


def test_an_allocation_carries_build_secrets_and_one_without_them_decodes() -> None:
    state = state_from_csv(CSV, config_from_json(CONFIG))
    made = allocations_for(state, place(state), {}, fence=1)["shop.prod.backend"]
    assert (made.secrets, made.build_secrets) == (("stripe_key",), ("npm_token",))
    raw = msgpack.unpackb(encode(made))
    del raw["build_secrets"]  # as an agent before build secrets sends it
    assert decode(msgpack.packb(raw), Allocation) == dataclasses.replace(made, build_secrets=())


def test_build_secrets_are_sealed_to_every_droplet_that_builds_the_service() -> None:
    alloc = allocation(droplets=("web1", "web2"), secrets=("a",), build_secrets=("b", "a"))
    assert needs([alloc], [], set()) == {
        Need(droplet, name, "shop", "prod") for droplet in ("web1", "web2") for name in "ab"
    }


def test_a_service_using_a_value_twice_is_named_once() -> None:
    alloc = allocation(secrets=("a",), build_secrets=("a",))
    key = subjects.secret_value_key("a")
    assert used_by(key, [alloc], {key: None}) == ["shop.prod.backend"]  # type: ignore[dict-item]


def test_the_instance_gets_build_secret_values_for_its_build_only() -> None:
    alloc = allocation(
        image="shop-backend:1",
        build_context="/srv/app",
        secrets=("stripe_key",),
        build_secrets=("npm_token",),
    )
    secrets = EnvSecrets({"STRIPE_KEY": "sk", "NPM_TOKEN": TOKEN.decode()})
    spec = spec_for(alloc, 0, "127.0.0.1", {"master": "127.0.0.1"}, secrets)
    assert (spec.secrets, spec.build_secrets) == ({"stripe_key": b"sk"}, {"npm_token": TOKEN})
    assert TOKEN.decode() not in repr(spec)
    wanted = container_spec(spec, "m", "web1")
    assert wanted.build == Build(context="/srv/app", dockerfile="", secrets=("npm_token",))
    assert wanted.secrets == ("stripe_key",)
    assert secret_files(spec) == {"stripe_key": b"sk"}


def test_a_build_secret_without_a_value_keeps_the_instance_waiting() -> None:
    alloc = allocation(build_context="/srv/app", image="x:1", build_secrets=("npm_token",))
    with pytest.raises(LookupError, match="secret 'npm_token' not found"):
        spec_for(alloc, 0, "127.0.0.1", {"master": "127.0.0.1"}, EnvSecrets({}))


def test_the_build_command_names_secret_files_never_values(tmp_path: Path) -> None:
    build = Build(context="/srv/app", dockerfile="/srv/app/Dockerfile", secrets=("a", "b"))
    argv = build_command("docker", "shop:1", build, tmp_path, {"meshd.mesh": "m"})
    assert argv == [
        "docker", "build", "--progress=plain", "--tag", "shop:1", "--label", "meshd.mesh=m",
        "--secret", f"id=a,src={tmp_path / 'a'}", "--secret", f"id=b,src={tmp_path / 'b'}",
        "--file", "/srv/app/Dockerfile", "/srv/app",
    ]  # fmt: skip


def test_the_build_sees_the_engines_address_and_nothing_else_of_the_agent() -> None:
    agent = {"PATH": "/bin", "SHOP_PROD_NPM_TOKEN": "t", "DOCKER_HOST": "unix:///a.sock"}
    assert cli_environment(None, agent) == {
        "PATH": "/bin",
        "DOCKER_HOST": "unix:///a.sock",
        "DOCKER_BUILDKIT": "1",
    }
    chosen = cli_environment("unix:///run/podman.sock", agent)
    assert chosen["DOCKER_HOST"] == "unix:///run/podman.sock"


def test_secret_files_are_0400_in_a_0700_directory_and_stale_ones_go(tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    stale = tmp_path / "secrets" / f"{SCRATCH_PREFIX}old"
    stale.mkdir(parents=True)
    (stale / "npm_token").write_bytes(b"old")
    directory = tmp_path / "secrets" / f"{SCRATCH_PREFIX}new"

    prepare(Build(context=str(tmp_path / "app"), dockerfile=""), directory, {"t": TOKEN})

    assert not stale.exists()
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / "t").stat().st_mode) == 0o400
    assert (directory / "t").read_bytes() == TOKEN


def test_output_is_scrubbed_of_whole_stripped_and_multi_line_values() -> None:
    key = b"-----BEGIN KEY-----\nMIIEabcdef\n-----END KEY-----\n"
    output = b"#5 npm-token-value\n#6 MIIEabcdef\n#7 ok\n"
    scrubbed = scrub(output, [TOKEN + b"\n", key])
    assert scrubbed == b"#5 " + SCRUBBED + b"\n#6 " + SCRUBBED + b"\n#7 ok\n"


def test_the_error_keeps_the_last_meaningful_lines_and_drops_a_cut_first_line() -> None:
    output = b"en-value\n#5 step\n------\n > [2/2] RUN x:\n\nexit code: 3\n"
    assert last_lines(output, cut=True) == "#5 step | > [2/2] RUN x: | exit code: 3"
    assert last_lines(b"only\n", cut=False) == "only"


async def test_a_droplet_without_the_docker_command_says_so(tmp_path: Path) -> None:
    builds = SecretBuilds("no-such-docker", None, tmp_path, logging.getLogger(__name__))
    build = Build(context=str(tmp_path), dockerfile="", secrets=("t",))
    with pytest.raises(CliBuildError, match="'no-such-docker' not found; Debian package docker.io"):
        await builds.build("x:1", build, {"t": TOKEN}, {})


async def test_secret_files_that_cannot_be_written_are_the_builds_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    builds = SecretBuilds("sh", None, tmp_path / "file", logging.getLogger(__name__))
    build = Build(context=str(tmp_path), dockerfile="", secrets=("t",))
    with pytest.raises(CliBuildError, match="cannot write the build's secret files"):
        await builds.build("x:1", build, {"t": TOKEN}, {})
