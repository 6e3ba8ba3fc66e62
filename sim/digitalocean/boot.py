"""A droplet's PID 1: `python -m sim.digitalocean.boot DISK --id N --hostname NAME
--metadata-url URL [--volume DIR=NAME ...]`, run by `hosts` inside the droplet's fresh PID,
mount and UTS namespaces (and its network namespace).

It does what a droplet's init does, the little meshd relies on:
- binds the disk's directories over the paths the droplet owns (`disks.OWNED`), a private
  tmpfs on `/run` and on `/mnt` (attached volumes are bound under it), `/usr` read-only,
  and its own `/etc/hosts` and `/etc/resolv.conf` (see `RESOLV`);
- gives the droplet its own sshd host key (new when the disk came from another droplet's
  snapshot, as cloud-init makes new keys for a new instance) and starts sshd;
- on the droplet's first boot only, runs its user data when it is a script (`#!`), with the
  output in `/var/log/cloud-init-output.log`, as cloud-init does;
- starts every unit enabled in `/etc/systemd/system` (a `*.service` linked or copied into
  `multi-user.target.wants/`), again once the user data has finished (a bootstrap that
  enables units expects them to run), with `ExecStartPre=`, `ExecStart=`, `Environment=`,
  `EnvironmentFile=`, `WorkingDirectory=` and `Restart=`/`RestartSec=`;
- then reaps every process that ends (orphans come to PID 1) and restarts units that ask;
- on SIGHUP (what `systemctl daemon-reload` and `restart` are on a droplet without
  systemd: a bootstrap that links or changes a unit sends it) reads the units again: starts
  those newly enabled, restarts those whose file changed, stops those no longer enabled.

Boot processes get `METADATA_URL`; their output goes to the droplet's console (this
process's stdout). Standard library only: it starts on every boot.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import shlex
import signal
import socket
import string
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from sim.digitalocean.disks import OWNED, USER_DATA

UNITS = Path("/etc/systemd/system")
WANTS = UNITS / "multi-user.target.wants"
HOST_KEY = Path("/etc/ssh/ssh_host_ed25519_key")
KEY_OWNER = Path("/etc/ssh/.droplet-id")  # which droplet the host key was made for
SSHD_CONFIG = Path("/etc/ssh/sshd_config")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CLOUD_LOG = "/var/log/cloud-init-output.log"
SSHD_UNIT = "ssh.service"  # started by boot itself, whatever the units on disk say
SAFETY_WAKE = 5.0  # seconds: reap even if a SIGCHLD wake-up was lost

# The machine's name servers are out of a droplet's reach (nothing routes further than the
# bridge): asking them would hang each lookup for seconds. Ask the droplet's own loopback
# instead, where nothing answers: lookups fail at once, and /etc/hosts knows the droplet.
RESOLV = "# The DigitalOcean stand-in's droplets have no name server.\nnameserver 127.0.0.1\n"
HOSTS = "127.0.0.1 localhost\n127.0.1.1 {hostname}\n::1 localhost ip6-localhost ip6-loopback\n"

SSHD_CONFIG_TEXT = f"""\
# Written at first boot by the DigitalOcean stand-in.
ListenAddress 0.0.0.0
Port 22
HostKey {HOST_KEY}
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AuthorizedKeysFile /root/.ssh/authorized_keys
PidFile /run/sshd.pid
Subsystem sftp internal-sftp
"""


@dataclass(frozen=True, slots=True)
class Unit:
    """What boot needs of a systemd service unit."""

    name: str
    exec_start: tuple[str, ...]
    exec_start_pre: tuple[tuple[str, ...], ...] = ()
    environment: tuple[tuple[str, str], ...] = ()
    environment_files: tuple[str, ...] = ()
    working_directory: str | None = None
    restart: str = "no"  # no | always | on-failure
    restart_sec: float = 1.0


def parse_unit(name: str, text: str) -> Unit | None:
    """The `[Service]` section of a unit file; None without `ExecStart=`."""
    values: dict[str, list[str]] = {}
    section = ""
    for line in _logical_lines(text):
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif section == "Service" and "=" in line:
            key, _, value = line.partition("=")
            values.setdefault(key.strip(), []).append(value.strip())
    commands = [_command(value) for value in values.get("ExecStart", []) if value]
    if not commands or not commands[0]:
        return None
    environment = [
        tuple(item.split("=", 1))
        for value in values.get("Environment", [])
        for item in shlex.split(value)
        if "=" in item
    ]
    restart = (values.get("Restart") or ["no"])[-1]
    return Unit(
        name=name,
        exec_start=commands[0],
        exec_start_pre=tuple(_command(v) for v in values.get("ExecStartPre", []) if v),
        environment=tuple((key, value) for key, value in environment),
        environment_files=tuple(values.get("EnvironmentFile", [])),
        working_directory=values["WorkingDirectory"][-1] if "WorkingDirectory" in values else None,
        restart=restart if restart in {"always", "on-failure"} else "no",
        restart_sec=_seconds((values.get("RestartSec") or ["1"])[-1]),
    )


def parse_environment_file(text: str) -> dict[str, str]:
    """`KEY=value` lines (quotes as the shell reads them; `#` comments)."""
    found: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")) or "=" not in line:
            continue
        key, _, value = line.partition("=")
        words = shlex.split(value) if value.strip() else [""]
        found[key.strip()] = " ".join(words)
    return found


def enabled_units(units: Path = UNITS) -> list[Unit]:
    """The units linked (or copied) into `multi-user.target.wants/`, by name."""
    wants = units / WANTS.name
    if not wants.is_dir():
        return []
    found = []
    for entry in sorted(wants.iterdir(), key=lambda path: path.name):
        if not entry.name.endswith(".service") or "@" in entry.name:
            continue
        source = units / entry.name if (units / entry.name).is_file() else entry
        try:
            unit = parse_unit(entry.name, source.read_text())
        except (OSError, ValueError) as err:
            say(f"unit {entry.name}: cannot read: {err}")
            continue
        if unit is not None:
            found.append(unit)
    return found


def _logical_lines(text: str) -> list[str]:
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith(("#", ";"))):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    if pending:
        lines.append(pending.strip())
    return lines


def _command(value: str) -> tuple[str, ...]:
    return tuple(shlex.split(value.lstrip("@-:+!")))


def _seconds(value: str) -> float:
    text = value.strip().removesuffix("s").removesuffix("ms")
    try:
        number = float(text)
    except ValueError:
        return 1.0
    return number / 1000 if value.strip().endswith("ms") else number


def say(message: str) -> None:
    print(f"[boot] {message}", flush=True)


class Supervisor:
    """Children of PID 1: started, reaped, restarted when their unit asks."""

    def __init__(self, environment: dict[str, str], units: Path = UNITS) -> None:
        self.environment = environment
        self.units = units
        self.children: dict[int, tuple[subprocess.Popen[bytes], Callable[[int], None]]] = {}
        self.due: list[tuple[float, Unit]] = []
        self.started: set[str] = set()
        self.running: dict[str, tuple[Unit, int]] = {}  # units from disk: definition, pid
        self.reload_wanted = False

    def spawn(
        self,
        argv: Sequence[str],
        on_exit: Callable[[int], None],
        *,
        env: dict[str, str],
        cwd: str,
        output: IO[bytes] | None = None,
    ) -> int:
        """Start a child in a session of its own; `on_exit(code)` once it is reaped."""
        child = subprocess.Popen(
            list(argv),
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT if output is not None else None,
            start_new_session=True,
        )
        self.children[child.pid] = (child, on_exit)
        return child.pid

    def start_unit(self, unit: Unit) -> None:
        self.started.add(unit.name)
        environment = dict(self.environment)
        for path in unit.environment_files:
            optional = path.startswith("-")
            try:
                environment.update(parse_environment_file(Path(path.lstrip("-")).read_text()))
            except OSError as err:
                if not optional:
                    say(f"unit {unit.name}: environment file {path}: {err}; not started")
                    return
        environment.update(dict(unit.environment))
        expand = string.Template
        cwd = unit.working_directory.lstrip("-") if unit.working_directory else "/"
        try:
            for command in unit.exec_start_pre:
                argv = [expand(word).safe_substitute(environment) for word in command]
                subprocess.run(argv, env=environment, cwd=cwd, check=True)
            argv = [expand(word).safe_substitute(environment) for word in unit.exec_start]
            pid = self.spawn(argv, lambda code: self.ended(unit, code), env=environment, cwd=cwd)
            self.running[unit.name] = (unit, pid)
        except (OSError, subprocess.CalledProcessError) as err:
            say(f"unit {unit.name}: did not start: {err}")
            self.ended(unit, 1)
            return
        say(f"unit {unit.name} started: {shlex.join(argv)}")

    def ended(self, unit: Unit, code: int) -> None:
        current = self.running.get(unit.name)
        if (current is not None and current[0] != unit) or unit.name not in self.started:
            return  # replaced or stopped by a reload
        again = unit.restart == "always" or (unit.restart == "on-failure" and code != 0)
        say(f"unit {unit.name} ended with {code}" + ("; restarting" if again else ""))
        if again:
            self.due.append((time.monotonic() + unit.restart_sec, unit))

    def start_enabled(self) -> None:
        for unit in enabled_units(self.units):
            if unit.name not in self.started:
                self.start_unit(unit)

    def reload(self) -> None:
        """Units as they are on disk now: new ones started, changed ones restarted, those no
        longer enabled stopped (their whole session, as systemd stops a unit's cgroup)."""
        enabled = {unit.name: unit for unit in enabled_units(self.units)}
        for name, (unit, pid) in list(self.running.items()):
            if name != SSHD_UNIT and enabled.get(name) != unit:
                del self.running[name]
                self.started.discard(name)
                self.due = [(when, due) for when, due in self.due if due.name != name]
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGTERM)
                say(f"unit {name} stopped for a reload")
        for name, unit in enabled.items():
            if name not in self.running:
                self.started.discard(name)
                self.start_unit(unit)

    def run_forever(self) -> None:
        """Reap every child that ends (PID 1's duty), and restart units when due."""
        wake_read, wake_write = os.pipe()
        os.set_blocking(wake_read, False)
        os.set_blocking(wake_write, False)
        signal.set_wakeup_fd(wake_write)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGHUP, lambda *_: setattr(self, "reload_wanted", True))
        while True:
            self.reap()
            if self.reload_wanted:
                self.reload_wanted = False
                self.reload()
            now = time.monotonic()
            for when, unit in [item for item in self.due if item[0] <= now]:
                self.due.remove((when, unit))
                self.start_unit(unit)
            wait = min([SAFETY_WAKE, *(when - now for when, _ in self.due)])
            readable, _, _ = select.select([wake_read], [], [], max(wait, 0.0))
            if readable:
                with contextlib.suppress(BlockingIOError):
                    while os.read(wake_read, 512):  # drained: the wake-ups are read
                        pass

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            known = self.children.pop(pid, None)
            if known is not None:
                child, on_exit = known
                child.returncode = os.waitstatus_to_exitcode(status)
                on_exit(child.returncode)


def mount(*argv: str) -> None:
    subprocess.run(["mount", *argv], check=True)


def mount_disk(disk: Path, hostname: str, volumes: Sequence[tuple[str, str]]) -> None:
    """The droplet's view of the machine's files (this mount namespace only)."""
    for relative in OWNED:
        source, target = disk / relative, Path("/") / relative
        source.mkdir(parents=True, exist_ok=True)
        target.mkdir(parents=True, exist_ok=True)  # an empty mount point on the machine
        mount("--bind", str(source), str(target))
    mount("-t", "tmpfs", "-o", "mode=0755,nosuid,nodev", "tmpfs", "/run")
    for directory in ("/run/sshd", "/run/lock"):
        Path(directory).mkdir(mode=0o755)
    for name, text in (("hosts", HOSTS.format(hostname=hostname)), ("resolv.conf", RESOLV)):
        own, shared = Path("/run/droplet") / name, Path("/etc") / name
        own.parent.mkdir(exist_ok=True)
        own.write_text(text)
        if shared.is_file() and not shared.is_symlink():  # a link into /run dangles now
            mount("--bind", str(own), str(shared))
    mount("-t", "tmpfs", "-o", "mode=0755", "tmpfs", "/mnt")
    for source_dir, name in volumes:
        (Path("/mnt") / name).mkdir()
        mount("--bind", source_dir, f"/mnt/{name}")
    mount("--bind", "/usr", "/usr")
    mount("-o", "remount,bind,ro", "/usr")


def ensure_sshd(droplet_id: str) -> None:
    """A host key of this droplet's own, and an sshd configuration unless it has one."""
    owner = KEY_OWNER.read_text().strip() if KEY_OWNER.exists() else ""
    if not HOST_KEY.exists() or owner != droplet_id:
        for old in HOST_KEY.parent.glob("ssh_host_*"):
            old.unlink()
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(HOST_KEY)], check=True
        )
        KEY_OWNER.write_text(f"{droplet_id}\n")
    if not SSHD_CONFIG.exists():
        SSHD_CONFIG.write_text(SSHD_CONFIG_TEXT)


def start_user_data(supervisor: Supervisor, droplet_id: str) -> bool:
    """Run the user data if it is a script and this droplet never ran it; True if started.
    Marked as run before it starts: a crash does not run it twice."""
    instance = Path(f"/var/lib/cloud/instances/{droplet_id}")
    marker = instance / "sem" / "user-data"
    source = Path("/") / USER_DATA
    if marker.exists() or not source.exists():
        return False
    text = source.read_text()
    if not text.startswith("#!"):
        return False
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"{time.time()}\n")
    script = instance / "scripts" / "user-data"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(text)
    script.chmod(0o700)

    def finished(code: int) -> None:
        (instance / "boot-finished").write_text(f"{time.time()}\n")
        say(f"user data ended with {code}")
        supervisor.start_enabled()

    with open(CLOUD_LOG, "ab") as output:
        supervisor.spawn(
            [str(script)], finished, env=supervisor.environment, cwd="/", output=output
        )
    say("user data started")
    return True


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sim.digitalocean.boot")
    parser.add_argument("disk", type=Path)
    parser.add_argument("--id", required=True)
    parser.add_argument("--hostname", required=True)
    parser.add_argument("--metadata-url", default="")
    parser.add_argument("--volume", action="append", default=[], metavar="DIR=NAME")
    args = parser.parse_args(argv)
    volumes = [(source, name) for source, _, name in (v.rpartition("=") for v in args.volume)]
    say(f"droplet {args.id} ({args.hostname}) booting")
    socket.sethostname(args.hostname)
    mount_disk(args.disk, args.hostname, volumes)
    ensure_sshd(args.id)
    environment = {"PATH": PATH, "HOME": "/root", "LANG": "C.UTF-8", "USER": "root"}
    if args.metadata_url:
        environment["METADATA_URL"] = args.metadata_url
    supervisor = Supervisor(environment)
    sshd = ("/usr/sbin/sshd", "-D", "-e", "-f", str(SSHD_CONFIG))
    supervisor.start_unit(Unit(SSHD_UNIT, sshd, restart="always"))
    start_user_data(supervisor, args.id)
    supervisor.start_enabled()
    say("booted")
    supervisor.run_forever()


if __name__ == "__main__":
    try:
        main()
    except (OSError, subprocess.CalledProcessError) as failure:
        say(f"boot failed: {failure}")
        sys.exit(1)
