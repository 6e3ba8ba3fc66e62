"""The pure parts of scheduling and observing: environments, allocations, status views."""

from __future__ import annotations

import subprocess
from pathlib import Path

from meshd.agent.config import CoreServer, MeshConfig, nats_server_conf, new_passwords
from tests.support.nats import nats_server_binary

SEED_VARIABLES = {
    "DB_USER", "DB_NAME", "DB_PORT", "REDIS_PORT", "VAULT_PORT", "OPENSEARCH_PORT",
    "OPENSEARCH_INDEX", "SERVICE_NAME", "ENVIRONMENT", "PROJECT", "ASSIGNED_DROPLETS",
    "RESOURCE_HASH",
}  # fmt: skip
HOST_VARIABLES = {"DB_HOST", "REDIS_HOST", "VAULT_HOST", "OPENSEARCH_HOST"}


def test_rendered_nats_configurations_are_valid_for_one_and_three_core_droplets(
    tmp_path: Path,
) -> None:
    for count in (1, 3):
        core = tuple(CoreServer(f"n{i}", f"127.0.0.{i + 2}") for i in range(count))
        config = MeshConfig(mesh="m", core=core, passwords=new_passwords())
        text = nats_server_conf(config, core[0], tmp_path / "js")
        assert ("routes" in text) == (count == 3)
        assert 'publish: ["mesh.deploy.>"]' in text and "no_auth_user" not in text
        path = tmp_path / f"n{count}.conf"
        path.write_text(text)
        check = subprocess.run(
            [nats_server_binary(), "-c", str(path), "-t"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert check.returncode == 0, check.stderr
