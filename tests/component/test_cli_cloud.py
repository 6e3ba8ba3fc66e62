"""`meshctl up --provider digitalocean` and `meshctl firewall` refuse what they cannot do
before touching anything, with one line that says what is missing and what would be right."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.component.test_cli_publish import ROOT, assert_no_traceback, meshctl_path

pytestmark = pytest.mark.component


def meshctl(home: Path, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if k not in {"FORCE_COLOR", "COLUMNS", "DIGITALOCEAN_TOKEN"}}  # fmt: skip
    env.update(NO_COLOR="1", HOME=str(home), MESHD_CONFIG_HOME=str(home / "config"),
               MESHD_STATE_HOME=str(home / "state"))  # fmt: skip
    if token is not None:
        env["DIGITALOCEAN_TOKEN"] = token
    return subprocess.run([str(meshctl_path()), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip


@pytest.mark.parametrize(
    ("args", "token", "said"),
    [
        (["--admin-ip", "192.0.2.7"], "t", "needs --region (e.g. fra1)"),
        (["--region", "fra1"], "t", "needs --admin-ip (your address"),
        (["--region", "fra1", "--admin-ip", "192.0.2.7"], None,
         "no API token: set DIGITALOCEAN_TOKEN or give --token-file"),
    ],
)  # fmt: skip
def test_up_on_digitalocean_says_what_is_missing_and_makes_nothing(
    tmp_path: Path, args: list[str], token: str | None, said: str
) -> None:
    result = meshctl(tmp_path, "up", "--provider", "digitalocean", *args, token=token)

    assert result.returncode == 1, result.stdout
    assert said in result.stderr
    assert_no_traceback(result)
    assert not (tmp_path / ".ssh").exists()  # not even the key
    assert not (tmp_path / "config").exists()


@pytest.mark.parametrize(
    ("spec", "said"),
    [
        ("deploy", "--ssh-key 'deploy': give NAME=FILE"),
        ("deploy={missing}", "--ssh-key deploy: cannot read"),
        ("deploy={garbage}", "is not an SSH public key (a .pub file, one line)"),
    ],
)
def test_a_wrong_additional_ssh_key_is_refused_before_anything_is_made(
    tmp_path: Path, spec: str, said: str
) -> None:
    garbage = tmp_path / "garbage.pub"
    garbage.write_text("not a key\n")
    arg = spec.format(missing=tmp_path / "none.pub", garbage=garbage)
    result = meshctl(tmp_path, "up", "--provider", "digitalocean", "--region", "fra1",
                     "--admin-ip", "192.0.2.7", "--ssh-key", arg, token="t")  # fmt: skip

    assert result.returncode == 2, result.stdout
    assert said in result.stderr
    assert_no_traceback(result)
    assert not (tmp_path / ".ssh").exists() and not (tmp_path / "config").exists()


def test_the_firewall_of_a_local_mesh_is_refused_with_the_reason(tmp_path: Path) -> None:
    result = meshctl(tmp_path, "firewall", "admin", "list")

    assert result.returncode == 1
    assert "no mesh yet" in result.stderr
    assert_no_traceback(result)
