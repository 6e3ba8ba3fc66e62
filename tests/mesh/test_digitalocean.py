"""The seed's mesh on the DigitalOcean stand-in (root), driven only by `meshctl` as a user
drives it: `up --provider digitalocean` bootstraps master over SSH, `publish` of the seed CSV
creates and bootstraps three more droplets while a tenth of the droplet requests fail (503,
or done with the answer lost) and the burst limit is low: no droplet twice, none missing; the
examples answer on the reserved IP; NATS is TLS from the mesh CA (a plain client is refused by
every JetStream server, routes are TLS and verified, the keys are 0600); the cloud token and
keys are mesh secrets that no droplet's file holds, and `--ssh-key`'s key reaches master; a
push to master over SSH (the key that may only run the git shell) deploys newstartup's uat;
SSH (and so the operator's tunnel) is refused to an address that is not an administrator's; a killed
web droplet is powered off, rebuilt from its snapshot and served again; a killed master
gives the reserved IP to another droplet; `down --delete-data` leaves only the SSH keys it
says it keeps. The stand-in checked every request against DigitalOcean's description."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from tests.support import namespaces_allowed, nginx_binary, unavailable
from tests.support.digitalocean import (
    StandProcess,
    kill_machine,
    resized,
    run_over_ssh,
    start_process,
)
from tests.support.git_repos import git
from tests.support.mesh import ROOT, LocalMesh, http_get
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.mesh, pytest.mark.alone]
SPEED = "10"  # the stand-in's delays (create 45 s, rebuild 60 s, ...) ten times faster
BACKEND = "/hostomatic-prod/backend/"


def page(url: str) -> str | None:
    try:
        return http_get(url, timeout=3)
    except OSError:
        return None


def served(url: str) -> str | None:
    found = page(url)
    return found if found and "hostomatic-prod-backend" in found else None


def recovered(mesh: LocalMesh, droplet: str, after: float) -> bool:
    events = mesh.events_about(droplet, 600) or []
    return any(e["name"] == "droplet_recovered" and e["at"] > after for e in events)


def post_mortem(state: Path, stand: StandProcess) -> str:
    """What a failure's report needs and `down` would remove: where the reserved IP points,
    and what each droplet's agent logged as an error (its last lines of them)."""
    lines = []
    try:
        for reserved in stand.get("/v2/reserved_ips")["reserved_ips"]:
            lines.append(
                f"reserved IP {reserved['ip']} -> {(reserved.get('droplet') or {}).get('name')}"
            )
    except (OSError, KeyError, ValueError) as err:
        lines.append(f"reserved IPs not readable: {err}")
    for log in sorted(state.glob("droplets/*/disk/var/lib/meshd/agent.log")):
        text = log.read_text(errors="replace").splitlines()
        bad = [line for line in text if " ERROR " in line or " CRITICAL " in line
               or line.split(":", 1)[0].endswith(("Error", "Exception", "Refused"))]  # fmt: skip
        lines += [f"droplet {log.parents[4].name}: {line[:300]}" for line in bad[-12:]]
    return "\n".join(lines)


def holder_of(stand: StandProcess, address: str) -> str | None:
    found = stand.get(f"/v2/reserved_ips/{address}")["reserved_ip"].get("droplet") or {}
    return found.get("name")


def test_the_seed_mesh_on_digitalocean(tmp_path: Path) -> None:
    namespaces_allowed()
    for path in ("/usr/sbin/sshd", nginx_binary()):
        if not Path(path).exists():
            unavailable(f"{path} not installed (Debian: openssh-server nginx-light)")
    stand = start_process(tmp_path / "stand", "--speed", SPEED)
    home = tmp_path / "operator"
    home.mkdir()
    mesh = LocalMesh(tmp_path / "mesh", "seed-do", {"HOME": str(home),
                     "DIGITALOCEAN_TOKEN": stand.token})  # fmt: skip
    try:
        settings = wait_for(lambda: stand.settings() if stand.settings()["ready"] else None, 30,
                            "the stand-in is ready")  # fmt: skip
        url = settings["inside_url"]  # the API as droplets reach it, and this machine too
        admin = url.split("//")[1].split(":")[0]
        deploy = asyncssh.generate_private_key("ssh-ed25519")  # the seed's additional key
        (home / "deploy.pub").write_bytes(deploy.export_public_key())
        (home / "deploy").write_bytes(deploy.export_private_key())
        mesh.ok("up", "--provider", "digitalocean", "--region", "fra1", "--api-url", url,
                "--admin-ip", admin, "--runtime", "process", "--droplet-python", sys.executable,
                "--ssh-key", f"deploy={home / 'deploy.pub'}", "--context", mesh.name,
                timeout=300)  # fmt: skip
        assert (home / ".ssh" / "infrastructure_key").stat().st_mode & 0o777 == 0o600

        examples = hosted_on_the_mesh(tmp_path / "examples", "newstartup")
        publish_through_faults(mesh, stand, examples / "projects.csv")

        # publish --wait returns once master has grown to the CSV's size (off meanwhile) and
        # is back: a droplet killed before that would be a second fault.
        assert resized(mesh, "master")
        made = stand.droplets()  # each once, none lost
        assert sorted(made) == ["hostomatic-web1", "hostomatic-web2", "hostomatic-web3", "master"]
        nats_is_tls_only(mesh, home)
        cloud_secrets_are_sealed(mesh, home, stand.token)

        reserved = mesh.status()["entry_url"].split("//")[1].split(":")[0].rstrip("/")
        assert wait_for(lambda: served(f"http://{reserved}{BACKEND}"), 60, "the reserved IP")

        pushed_to_master(mesh, tmp_path / "newstartup", home, reserved)
        only_administrators_reach_it(mesh, admin)

        # A web droplet dies: fenced, rebuilt in place from its snapshot, bootstrapped, served.
        killed = time.time()
        kill_machine(made["hostomatic-web2"]["id"])
        wait_for(lambda: recovered(mesh, "hostomatic-web2", killed), 300, "web2 recovered")
        after = stand.droplets()
        assert after["hostomatic-web2"]["id"] == made["hostomatic-web2"]["id"]  # in place
        assert len(after) == 4
        assert wait_for(lambda: served(f"http://{reserved}{BACKEND}"), 60, "served again")

        master_dies(mesh, stand, made["master"]["id"], reserved)

        ledger = stand.settings()
        assert ledger["invalid"] == 0, "requests DigitalOcean would refuse"
        assert ledger["violations"] == 0

        down_leaves_only_the_key(mesh, stand)
    except Exception:  # a wait that timed out, a meshctl that failed: shown with the failure
        print(post_mortem(tmp_path / "stand", stand))
        raise
    finally:
        if mesh.meshctl("status", "--context", mesh.name).returncode == 0:
            mesh.meshctl("down", "--delete-data", "--context", mesh.name, timeout=300)
        assert stand.stop() == 0


def master_dies(mesh: LocalMesh, stand: StandProcess, master: int, reserved: str) -> None:
    """Master dies: the reserved IP moves to another droplet, and master comes back."""
    killed = time.time()
    kill_machine(master)

    def moved() -> bool:
        away = (holder_of(stand, reserved) or "master") != "master"
        return away and served(f"http://{reserved}{BACKEND}") is not None

    wait_for(moved, 120, "the reserved IP on another droplet, serving")
    wait_for(lambda: recovered(mesh, "master", killed), 300, "master recovered")


def hosted_on_the_mesh(examples: Path, project: str) -> Path:
    """The examples, with `project`'s repository hosted by the mesh (`"git_repo": "mesh"`)."""
    shutil.copytree(ROOT / "examples", examples, ignore=shutil.ignore_patterns("__pycache__"))
    config = json.loads((examples / "deployment_config.json").read_text())
    config["projects"][project]["git_repo"] = "mesh"
    (examples / "deployment_config.json").write_text(json.dumps(config))
    return examples


def pushed_to_master(mesh: LocalMesh, work: Path, home: Path, reserved: str) -> None:
    """`git push` of newstartup to master with the push key: the first push makes the
    repository, the hook queues the deploy and shows it to the pusher, uat serves it; the
    same key gets no shell."""
    remote = json.loads(mesh.ok("git", "remote", "newstartup", "--json", "--context", mesh.name))
    ssh = f"{remote['ssh_command']} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"
    env = {**os.environ, "GIT_SSH_COMMAND": ssh, "HOME": str(home)}
    shutil.copytree(ROOT / "examples" / "app", work / "app",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    (work / "app" / "release.txt").write_text("pushed to master\n")
    git(work, "init", "--quiet", "-b", "main")
    git(work, "add", ".")
    git(work, "commit", "--quiet", "-m", "pushed to master")
    pushed = subprocess.run(["git", "push", remote["remote"], "main"], cwd=work, env=env,
                            capture_output=True, text=True, timeout=900, check=False)  # fmt: skip
    assert pushed.returncode == 0, pushed.stderr
    assert "deploy queued" in pushed.stderr, pushed.stderr
    assert "remote: meshd: release 1 is live on uat" in pushed.stderr, pushed.stderr
    url = f"http://{reserved}/newstartup-uat/backend/"
    wait_for(lambda: "release: pushed to master" in (page(url) or ""), 300,
             "uat serves the pushed release")  # fmt: skip
    host = remote["remote"].split(":")[0]
    login = [
        *shlex.split(remote["ssh_command"]),
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        host,
        "id",
    ]

    def refused() -> str | None:
        shell = subprocess.run(login, capture_output=True, text=True, timeout=60,
                               env={**os.environ, "HOME": str(home)}, check=False)  # fmt: skip
        assert shell.returncode != 0, shell
        return shell.stderr if "'id' is not allowed" in shell.stderr else None

    wait_for(refused, 30, "the push key refused a shell")


def publish_through_faults(mesh: LocalMesh, stand: StandProcess, csv: Path) -> None:
    """Publish through a bad day of the API: droplet requests failing (503 before anything is
    done, or done with the answer lost) and a burst limit low enough to be hit."""
    stand.change({"faults": {"error_rate": 0.1, "lost_rate": 0.1, "path_contains": "/v2/droplets"},
                  "limits": {"per_minute": 120}})  # fmt: skip
    mesh.ok("publish", csv, "--wait", "--timeout", "600",
            "--context", mesh.name, timeout=700)  # fmt: skip
    stand.change({"faults": {"error_rate": 0.0, "lost_rate": 0.0}, "limits": {"per_minute": 250}})
    answered = stand.answered()
    assert answered.get(503, 0) > 0, answered  # the faults did happen


# Run on master: what each JetStream server says to a client that speaks no TLS (its INFO,
# then whatever answers a CONNECT and a PING), and its monitoring page's TLS settings.
PLAIN_CLIENT = """
import json, socket, sys, urllib.request
found = {}
for address in sys.argv[1:]:
    with socket.create_connection((address, 4222), timeout=5) as sock:
        info = json.loads(sock.recv(65536).decode().removeprefix("INFO ").strip())
        sock.sendall(b'CONNECT {"verbose":false}\\r\\nPING\\r\\n')
        answer = b""
        try:
            while chunk := sock.recv(4096):
                answer += chunk
        except OSError:
            pass
    with urllib.request.urlopen(f"http://{address}:8222/varz", timeout=5) as page:
        varz = json.load(page)
    found[address] = {"tls_required": info.get("tls_required", False),
                      "pong": b"PONG" in answer, "routes_tls": varz["cluster"].get("tls_required"),
                      "routes_verify": varz["cluster"].get("tls_verify")}
print(json.dumps(found))
"""


def nats_is_tls_only(mesh: LocalMesh, home: Path) -> None:
    """Every JetStream server refuses a plain client and routes over verified TLS; the CA is
    kept beside the context and the droplets' keys are 0600."""
    contexts = mesh.home / "config" / "contexts"

    def followed() -> dict[str, Any] | None:
        """The context once a command has followed JetStream to its three servers."""
        mesh.status()
        context: dict[str, Any] = json.loads((contexts / f"{mesh.name}.json").read_text())
        return context if len(context["servers"]) >= 3 else None

    context = wait_for(followed, 120, "the context knows the three JetStream servers")
    assert "BEGIN CERTIFICATE" in context["tls_ca"]
    assert (contexts / f"{mesh.name}.ca.pem").stat().st_mode & 0o777 == 0o600
    servers = [url.split("//")[1].split(":")[0] for url in context["servers"]][:3]
    key = asyncssh.read_private_key(str(home / ".ssh" / "infrastructure_key"))
    host = context["tunnel"]["host"]
    command = shlex.join([sys.executable, "-c", PLAIN_CLIENT, *servers])
    found = json.loads(asyncio.run(run_over_ssh(key, host, command)))
    for address, seen in found.items():
        assert seen == {"tls_required": True, "pong": False, "routes_tls": True,
                        "routes_verify": True}, address  # fmt: skip
    modes = asyncio.run(run_over_ssh(key, host, "stat -c '%a %n' /var/lib/meshd/secrets/*"))
    assert {line.split()[1].rsplit("/", 1)[1] for line in modes.splitlines()} == {
        "mesh-ca.crt", "nats.crt", "nats.key"}  # fmt: skip
    assert {line.split()[0] for line in modes.splitlines()} == {"600"}, modes


def cloud_secrets_are_sealed(mesh: LocalMesh, home: Path, token: str) -> None:
    """The token, the infrastructure key and the mesh CA's key are mesh secrets, set by `up`;
    no file of master's agent holds the token in clear (sealed in JetStream, opened in memory)."""
    listed = mesh.ok("secret", "list", "--json", "--context", mesh.name).splitlines()
    scopes = {row["name"]: row["scope"] for row in map(json.loads, listed)}
    for name in ("digitalocean_token", "infrastructure_key", "mesh_ca_key"):
        assert scopes.get(name) == "mesh", name
    key = asyncssh.read_private_key(str(home / ".ssh" / "infrastructure_key"))
    host = json.loads((mesh.home / "config" / "contexts" / f"{mesh.name}.json").read_text())
    command = f"grep -rlsF {shlex.quote(token)} /var/lib/meshd /etc/systemd || echo none"
    assert asyncio.run(run_over_ssh(key, host["tunnel"]["host"], command)).strip() == "none"
    deploy = asyncssh.import_private_key((home / "deploy").read_bytes())  # given to `up`
    assert asyncio.run(run_over_ssh(deploy, host["tunnel"]["host"], "echo in")) == "in"


def only_administrators_reach_it(mesh: LocalMesh, admin: str) -> None:
    """SSH, and so the operator's tunnel to NATS, only from the administrators' addresses."""
    mesh.ok("firewall", "admin", "update", admin, "192.0.2.1", "--context", mesh.name)
    refused = wait_for(lambda: _refused(mesh), 30, "the tunnel refused")
    assert "cannot open the SSH tunnel" in refused
    mesh.ok("firewall", "admin", "update", "192.0.2.1", admin, "--context", mesh.name)
    assert json.loads(mesh.ok("firewall", "admin", "list", "--json")) == [f"{admin}/32"]


def down_leaves_only_the_key(mesh: LocalMesh, stand: StandProcess) -> None:
    said = mesh.ok("down", "--delete-data", "--context", mesh.name, timeout=300)
    assert "Reserved IP" in said and "Firewall" in said
    for kind in ("droplets", "firewalls", "reserved_ips", "volumes", "snapshots"):
        assert stand.get(f"/v2/{kind}")[kind] == [], kind
    keys = stand.get("/v2/account/keys")["ssh_keys"]
    assert sorted(k["name"] for k in keys) == ["deploy", "infrastructure_key"]
    assert "SSH key infrastructure_key" in said and "SSH key deploy" in said  # said kept


def _refused(mesh: LocalMesh) -> str | None:
    result = mesh.meshctl("status", "--context", mesh.name, timeout=60)
    return result.stderr if result.returncode != 0 else None
