"""Turns a bare server into a mesh node over SSH (asyncssh): `meshctl up` runs it on master,
the `provisioner` and `recovery` roles on the droplets they create or rebuild.

The steps, each logged with its duration and whether it changed anything; a step with
nothing to do changes nothing, so running it twice is harmless:

- `connect`: waits for SSH (a new droplet's sshd starts a while after the API says active);
- `system`: Debian or Ubuntu, with `python3` at 3.11 or later;
- `packages`: nginx (and Docker Engine for the docker runtime) from the distribution, when
  missing;
- `python`: meshd's dependencies in the interpreter that runs it: `/opt/meshd/venv`, made and
  filled from PyPI when missing, or an interpreter the settings name (which must have them);
- `code`: meshd itself (this very source), uploaded by SFTP as one archive and unpacked into
  `/opt/meshd/releases/<digest>`, so the droplet runs what the operator runs, offline or not;
- `files`: the droplet directory `/var/lib/meshd`: `droplet.json`, `user_data` and the
  secrets the droplet needs, all 0600;
- `unit`: `meshd.service` (from `templates/systemd/`, memory capped), enabled and restarted
  when the code or a file changed; where there is no systemd (the DigitalOcean stand-in's
  droplets) linked into `multi-user.target.wants/` and read again by PID 1 on SIGHUP;
- `reports`: waits until the agent reports, when the caller can tell.

A step that fails raises `BootstrapFailed` naming it and what the server said; the droplet is
left as it is, for inspection. The server's host key is accepted on first use (DigitalOcean
tells no host keys through its API).
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import importlib.metadata
import io
import logging
import re
import shlex
import tarfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from plugins.templating import render
from protocol.errors import MeshError

if TYPE_CHECKING:
    import asyncssh

log = logging.getLogger("meshd.bootstrap")

DROPLET_DIR = "/var/lib/meshd"
RELEASES = "/opt/meshd/releases"
VENV = "/opt/meshd/venv"
VENV_PYTHON = f"{VENV}/bin/python"
IDENTITY = "droplet.json"
# Files a running droplet follows by itself: its identity (the agent), its NATS certificate
# (the supervisor reloads nats-server); the names of meshd.agent.config's LEAF_*_FILE.
FOLLOWED = frozenset({IDENTITY, "secrets/nats.crt", "secrets/nats.key"})
UNIT = "meshd.service"
UNITS = "/etc/systemd/system"
SOURCES = ("meshd", "protocol", "plugins", "templates", "deploy/hooks", "bootstrap.py")
MEMORY_HIGH = "320M"  # meshd and nats-server together use about 110 MB (bench/converge.py)
MEMORY_MAX = "448M"  # of a 1 GB droplet; the docker runtime's services are outside this unit
CONNECT_TIMEOUT_S = 300.0
REPORT_TIMEOUT_S = 120.0


class BootstrapFailed(MeshError):
    """Step `step` of bootstrapping `host` failed; the server is left as it is."""

    def __init__(self, host: str, step: str, reason: str) -> None:
        self.host = host
        self.step = step
        self.reason = reason
        super().__init__(
            f"bootstrap {host}: step {step!r} failed: {reason} (the server is kept for "
            "inspection; run the same command again once it is fixed)"
        )


@dataclass(frozen=True, slots=True)
class Target:
    """How to reach the server: its address, the private key the account put on it, and
    the interpreter that runs meshd there (`/opt/meshd/venv/bin/python`, made if missing)."""

    host: str
    key: asyncssh.SSHKey
    user: str = "root"
    port: int = 22
    python: str = VENV_PYTHON
    connect_timeout_s: float = CONNECT_TIMEOUT_S


@dataclass(frozen=True, slots=True)
class Node:
    """What the server becomes: the files of its droplet directory (`droplet.json`,
    `user_data`, `secrets/...`; all 0600) and the runtime its services use."""

    name: str
    files: dict[str, bytes]
    runtime: str = "process"


@dataclass(frozen=True, slots=True)
class Step:
    name: str
    seconds: float
    changed: bool


@dataclass
class Report:
    """What a bootstrap did: its steps in order, and the server's host key fingerprint."""

    host: str
    steps: list[Step] = field(default_factory=list)
    host_key: str = ""

    @property
    def changed(self) -> bool:
        return any(step.changed for step in self.steps)

    @property
    def seconds(self) -> float:
        return sum(step.seconds for step in self.steps)


Reported = Callable[[], Awaitable[bool]]


async def bootstrap(target: Target, node: Node, *, reported: Reported | None = None) -> Report:
    """Make `target` the mesh node `node`; see the module docstring."""
    report = Report(target.host)
    started = time.monotonic()
    connection = await _connect(target)
    report.steps.append(Step("connect", time.monotonic() - started, False))
    key = connection.get_server_host_key()
    report.host_key = key.get_fingerprint() if key is not None else ""
    async with connection:
        run = _Remote(connection, target.host)
        await _step(report, node, "system", _check_system(run))
        await _step(report, node, "packages", _install_packages(run, node.runtime))
        await _step(report, node, "python", _install_python(run, target.python))
        name, archive = await asyncio.to_thread(code_archive)  # reads and packs every source
        release = f"{RELEASES}/{name}"
        await _step(report, node, "code", _upload_code(run, release, archive))
        await _step(report, node, "files", _write_files(run, node.files))
        unit = render_unit(target.python, release, _digest(release, node.files))
        await _step(report, node, "unit", _install_unit(run, unit))
        if reported is not None:
            await _step(report, node, "reports", _wait_reported(run, reported))
    log.info(
        "Bootstrapped. droplet=%s host=%s seconds=%.1f changed=%s",
        node.name, target.host, report.seconds, report.changed,
    )  # fmt: skip
    return report


async def write_files(target: Target, node: Node) -> Report:
    """Only `node.files` that differ written, nothing installed or restarted: a droplet's
    renewed NATS certificate, which its supervisor has nats-server reload by itself."""
    report = Report(target.host)
    started = time.monotonic()
    connection = await _connect(target)
    report.steps.append(Step("connect", time.monotonic() - started, False))
    async with connection:
        run = _Remote(connection, target.host)
        await _step(report, node, "files", _write_files(run, node.files))
    return report


async def _step(report: Report, node: Node, name: str, work: Awaitable[bool]) -> bool:
    started = time.monotonic()
    changed = await work
    step = Step(name, time.monotonic() - started, changed)
    report.steps.append(step)
    log.info(
        "Bootstrap step done. droplet=%s step=%s seconds=%.2f changed=%s",
        node.name, name, step.seconds, changed,
    )  # fmt: skip
    return changed


async def _connect(target: Target) -> asyncssh.SSHClientConnection:
    import asyncssh

    deadline = time.monotonic() + target.connect_timeout_s
    last = ""
    while time.monotonic() < deadline:
        try:
            return await asyncssh.connect(
                target.host,
                target.port,
                username=target.user,
                client_keys=[target.key],
                known_hosts=None,  # first use: DigitalOcean's API tells no host keys
                connect_timeout=10,
                keepalive_interval=15,
            )
        except asyncssh.PermissionDenied as err:
            raise BootstrapFailed(target.host, "connect", f"the key was refused: {err}") from err
        except (OSError, asyncssh.Error, TimeoutError) as err:
            last = str(err) or type(err).__name__
        await asyncio.sleep(1.0)
    raise BootstrapFailed(
        target.host, "connect", f"no SSH within {target.connect_timeout_s:.0f} s ({last})"
    )


class _Remote:
    """Commands and files on the server, failing as the step that asked."""

    def __init__(self, connection: asyncssh.SSHClientConnection, host: str) -> None:
        self.connection = connection
        self.host = host

    async def run(self, step: str, command: str, stdin: str | None = None) -> str:
        import asyncssh

        try:
            done = await self.connection.run(command, input=stdin, check=False)
        except (OSError, asyncssh.Error) as err:
            raise BootstrapFailed(self.host, step, f"connection lost: {err}") from err
        if done.exit_status != 0:
            said = str(done.stderr or done.stdout or "").strip().splitlines()[-5:]
            raise BootstrapFailed(
                self.host, step, f"`{_short(command)}` exited {done.exit_status}: "
                + (" / ".join(said) or "no output")
            )  # fmt: skip
        return str(done.stdout or "")

    async def put(self, step: str, path: str, data: bytes, mode: int = 0o600) -> None:
        """Write `path` whole, atomically (a new file renamed over the old one)."""
        import asyncssh

        partial = f"{path}.part"
        try:
            async with self.connection.start_sftp_client() as sftp:
                attrs = asyncssh.SFTPAttrs(permissions=mode)
                async with sftp.open(partial, "wb", attrs) as remote:
                    await remote.write(data)
                await sftp.chmod(partial, mode)  # an existing .part keeps its old mode
                await sftp.posix_rename(partial, path)
        except (OSError, asyncssh.Error) as err:
            raise BootstrapFailed(self.host, step, f"cannot write {path}: {err}") from err


def _short(command: str) -> str:
    line = command.strip().splitlines()[0] if command.strip() else command
    return line if len(line) <= 80 else line[:77] + "..."


async def _check_system(run: _Remote) -> bool:
    said = await run.run(
        "system",
        '. /etc/os-release; echo "$ID ${ID_LIKE:-}"; '
        "python3 -c 'import sys; print(*sys.version_info[:2])' 2>/dev/null || echo none",
    )
    lines = said.strip().splitlines()
    family = lines[0].split() if lines else []
    if not {"debian", "ubuntu"} & set(family):
        raise BootstrapFailed(
            run.host, "system", f"needs Debian or Ubuntu, found {' '.join(family) or 'unknown'}"
        )
    version = tuple(int(part) for part in lines[1].split()) if len(lines) > 1 else ()
    if len(version) != 2 or version < (3, 11):
        found = ".".join(map(str, version)) if len(version) == 2 else "no python3"
        raise BootstrapFailed(run.host, "system", f"needs Python 3.11 or later, found {found}")
    return False


def packages_needed(runtime: str) -> dict[str, str]:
    """The distribution's packages a droplet needs: command -> Debian package."""
    needed = {"nginx": "nginx-light", "iptables": "iptables"}
    if runtime == "docker":
        needed["dockerd"] = "docker.io"
    return needed


async def _install_packages(run: _Remote, runtime: str) -> bool:
    needed = packages_needed(runtime)
    checks = " ".join(
        f"command -v {shlex.quote(command)} >/dev/null || "
        f"PATH=$PATH:/usr/sbin:/sbin command -v {shlex.quote(command)} >/dev/null || "
        f"echo {shlex.quote(package)};"
        for command, package in needed.items()
    )
    missing = (await run.run("packages", checks)).split()
    if not missing:
        return False
    await run.run(
        "packages",
        "export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && "
        f"apt-get install -y -qq {' '.join(map(shlex.quote, missing))}",
    )
    return True


def requirements() -> list[str]:
    """meshd's own dependencies (no extras), as installed here: `name>=version` lines."""
    found = importlib.metadata.requires("meshd") or []
    return [line.split(";")[0].strip() for line in found if "extra ==" not in line]


def distribution(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9._-]+", requirement)
    return match.group(0) if match else requirement


async def _install_python(run: _Remote, python: str) -> bool:
    names = [distribution(r) for r in requirements()]
    probe = (
        "import importlib.metadata as m, sys\n"
        f"for name in {names!r}:\n"
        "    try:\n"
        "        m.version(name)\n"
        "    except m.PackageNotFoundError:\n"
        "        print(name)\n"
    )
    quoted = shlex.quote(python)
    missing = await run.run("python", f"test -x {quoted} && {quoted} - || echo absent", probe)
    if not missing.split():
        return False
    if python != VENV_PYTHON:
        raise BootstrapFailed(
            run.host, "python", f"{python} lacks meshd's dependencies: {' '.join(missing.split())}"
        )
    wanted = " ".join(shlex.quote(r) for r in requirements())
    await run.run(
        "python",
        f"test -x {VENV_PYTHON} || python3 -m venv {VENV}; "
        f"{VENV}/bin/pip install --quiet --disable-pip-version-check {wanted}",
    )
    return True


def _source_files() -> Iterator[tuple[str, Path]]:
    import meshd

    root = Path(meshd.__file__).resolve().parents[1]
    for name in SOURCES:
        top = root / name
        if top.is_file():
            yield name, top
            continue
        for path in sorted(top.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                yield str(path.relative_to(root)), path


@cache
def code_archive() -> tuple[str, bytes]:
    """This meshd's source as a gzipped tar, and its digest (the same bytes, the same name)."""
    buffer = io.BytesIO()
    digest = hashlib.sha256()
    with (
        gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as packed,
        tarfile.open(fileobj=packed, mode="w") as archive,
    ):
        for name, path in _source_files():
            data = path.read_bytes()
            digest.update(name.encode() + b"\0" + data + b"\0")
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            archive.addfile(info, io.BytesIO(data))
    return digest.hexdigest()[:16], buffer.getvalue()


async def _upload_code(run: _Remote, release: str, archive: bytes) -> bool:
    there = await run.run("code", f"test -f {release}/.complete && echo yes || true")
    if there.strip() == "yes":
        return False
    upload = f"{release}.tar.gz"
    await run.run("code", f"mkdir -p {RELEASES}")
    await run.put("code", upload, archive, 0o644)
    await run.run(
        "code",
        f"rm -rf {release}.new && mkdir {release}.new && tar -xzf {upload} -C {release}.new && "
        f"touch {release}.new/.complete && rm -rf {release} && mv {release}.new {release} && "
        f"rm -f {upload}",
    )
    return True


async def _write_files(run: _Remote, files: dict[str, bytes]) -> bool:
    paths = {name: f"{DROPLET_DIR}/{name}" for name in files}
    folders = sorted({str(Path(path).parent) for path in paths.values()})
    listing = await run.run(
        "files",
        f"mkdir -p {' '.join(map(shlex.quote, folders))} && "
        f"chmod 700 {' '.join(map(shlex.quote, folders))} && "
        f"cd {DROPLET_DIR} && sha256sum -- {' '.join(map(shlex.quote, files))} 2>/dev/null "
        "|| true",
    )
    there = {line.split(maxsplit=1)[1].lstrip("*"): line.split()[0]
             for line in listing.splitlines() if len(line.split()) == 2}  # fmt: skip
    changed = False
    for name, data in sorted(files.items()):
        if there.get(name) != hashlib.sha256(data).hexdigest():
            await run.put("files", paths[name], data)
            changed = True
    return changed


def _digest(release: str, files: dict[str, bytes]) -> str:
    """Of what a running agent reads only at start: the agent follows its droplet.json (a
    resize changes the size in it) and the supervisor its NATS certificate without a restart."""
    digest = hashlib.sha256(release.encode())
    for name, data in sorted(files.items()):
        if name not in FOLLOWED:
            digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return digest.hexdigest()[:16]


def render_unit(python: str, release: str, digest: str) -> str:
    """meshd.service: the droplet's supervisor (nats-server and the agent), restarted when
    it ends; `digest` (of the code and the files) changes the unit when they change, which
    restarts it."""
    return render(
        "systemd/meshd.service.j2",
        python=python,
        release=release,
        droplet_dir=DROPLET_DIR,
        digest=digest,
        memory_high=MEMORY_HIGH,
        memory_max=MEMORY_MAX,
    )


async def _install_unit(run: _Remote, unit: str) -> bool:
    path = f"{UNITS}/{UNIT}"
    there = await run.run("unit", f"cat {path} 2>/dev/null || true")
    changed = there != unit
    if changed:
        await run.run("unit", f"mkdir -p {UNITS}")
        await run.put("unit", path, unit.encode(), 0o644)
    start = "restart" if changed else "start"
    await run.run(
        "unit",
        "if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then "
        f"systemctl daemon-reload && systemctl enable --quiet {UNIT} && "
        f"systemctl {start} {UNIT}; "
        f"else mkdir -p {UNITS}/multi-user.target.wants && "
        f"ln -sfn ../{UNIT} {UNITS}/multi-user.target.wants/{UNIT} && kill -HUP 1; fi",
    )
    return changed


async def _wait_reported(run: _Remote, reported: Reported) -> bool:
    deadline = time.monotonic() + REPORT_TIMEOUT_S
    while time.monotonic() < deadline:
        if await reported():
            return False
        await asyncio.sleep(0.5)
    tail = await run.run("reports", f"tail -n 15 {DROPLET_DIR}/agent.log 2>/dev/null || true")
    raise BootstrapFailed(
        run.host,
        "reports",
        f"the agent did not report within {REPORT_TIMEOUT_S:.0f} s; its log ends: "
        + (" / ".join(tail.strip().splitlines()[-5:]) or "(empty)"),
    )
