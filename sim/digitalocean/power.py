"""A droplet's processes: booted in fresh PID, mount and UTS namespaces, killed all at once.

The launcher is `unshare --pid --fork ...` (entered into the droplet's network namespace by
`nsenter`), started in a session of its own; its one child is the droplet's PID 1 (`boot`).
SIGKILL to that PID 1 ends every process of its PID namespace, as pulling a machine's plug
does; power off then waits until no process of that namespace is left. A thread per launcher
reaps it, so no zombie stays behind. Blocking; worker threads only.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sim.digitalocean.machines import MachineError

READY_TIMEOUT = 20.0
KILL_TIMEOUT = 10.0
POLL = 0.05
SSH_PORT = 22
TCP_LISTEN = "0A"
CONSOLE_TAIL = 20  # lines of console output in a boot error
DEAD_STATES = frozenset("ZXx")  # a zombie or dead process: it holds its number, nothing else


@dataclass(frozen=True, slots=True)
class Running:
    """A booted droplet, as the machine knows it."""

    launcher: subprocess.Popen[bytes]
    reaper: threading.Thread
    init_pid: int  # PID 1 of the droplet, as this machine numbers it
    init_ticks: int  # its start time: a pid number is ours only with it
    pid_namespace: str  # `pid:[inode]`, shared by every process of the droplet

    def alive(self) -> bool:
        return is_alive(self.init_pid, self.init_ticks)


def boot(argv: Sequence[str], console: Path, cwd: Path, environment: dict[str, str]) -> Running:
    """Run the launcher, find the droplet's PID 1 and wait until its sshd listens."""
    with console.open("ab") as output:
        output.write(f"[machines] power on at {time.ctime()}\n".encode())
        output.flush()
        start = output.tell()
        try:
            launcher = subprocess.Popen(
                list(argv),
                cwd=cwd,
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own session: no terminal signal reaches it
            )
        except OSError as err:
            raise MachineError(f"cannot run {argv[0]!r}: {err.strerror or err}") from err
    reaper = threading.Thread(target=launcher.wait, name=f"reap-{launcher.pid}", daemon=True)
    reaper.start()
    try:
        init = _child_of(launcher, reaper)
        state = proc_state(init)
        namespace = os.readlink(f"/proc/{init}/ns/pid")
        if state is None:
            raise FileNotFoundError(f"/proc/{init}")
    except (MachineError, OSError) as err:
        _stop(launcher, reaper)
        raise MachineError("the droplet did not boot", _tail(console, start)) from err
    running = Running(launcher, reaper, init, state[1], namespace)
    deadline = time.monotonic() + READY_TIMEOUT
    while not _listening(init, SSH_PORT):
        if not running.alive() or time.monotonic() > deadline:
            kill(running)
            raise MachineError("the droplet's sshd did not start", _tail(console, start))
        time.sleep(POLL)
    return running


def kill(running: Running) -> None:
    """SIGKILL the droplet's PID 1 (so every process of its PID namespace) and the launcher;
    return once none of them is left."""
    if running.alive():
        with contextlib.suppress(ProcessLookupError):
            os.kill(running.init_pid, signal.SIGKILL)
    _stop(running.launcher, running.reaper)
    deadline = time.monotonic() + KILL_TIMEOUT
    while left := members(running.pid_namespace):
        if time.monotonic() > deadline:
            raise MachineError(f"processes {left} survived SIGKILL to their PID 1")
        time.sleep(POLL)


def members(pid_namespace: str) -> list[int]:
    """The live processes of a PID namespace, as this machine numbers them."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry.name}/ns/pid") != pid_namespace:
                continue
        except OSError:
            continue  # gone meanwhile
        state = proc_state(int(entry.name))
        if state is not None and state[0] not in DEAD_STATES:
            found.append(int(entry.name))
    return found


def proc_state(pid: int) -> tuple[str, int] | None:
    """State letter and start time (clock ticks) of `pid`, or None if there is none. (Not
    meshd's `plugins.procfs`: the stand-in does not lean on the code it tests.)"""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    fields = raw.rpartition(")")[2].split()  # the command name may hold spaces and ')'
    try:
        return fields[0], int(fields[19])  # fields 3 and 22 of proc(5)
    except (IndexError, ValueError):
        return None


def is_alive(pid: int, start_ticks: int) -> bool:
    state = proc_state(pid)
    return state is not None and state[0] not in DEAD_STATES and state[1] == start_ticks


def _child_of(launcher: subprocess.Popen[bytes], reaper: threading.Thread) -> int:
    """The launcher's child (PID 1 of the droplet), once it has forked it."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        try:
            children = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text()
        except OSError:
            children = ""
        if children.split():
            return int(children.split()[0])
        if not reaper.is_alive():
            raise MachineError(f"the launcher ended with {launcher.returncode}")
        time.sleep(0.01)
    raise MachineError("the launcher started no PID 1")


def _stop(launcher: subprocess.Popen[bytes], reaper: threading.Thread) -> None:
    if reaper.is_alive():
        with contextlib.suppress(ProcessLookupError):
            os.kill(launcher.pid, signal.SIGKILL)
    reaper.join(KILL_TIMEOUT)
    if reaper.is_alive():
        raise MachineError(f"launcher {launcher.pid} survived SIGKILL")


def _listening(pid: int, port: int) -> bool:
    """True if something listens on TCP `port` (any address) in `pid`'s network namespace."""
    try:
        table = Path(f"/proc/{pid}/net/tcp").read_text()
    except OSError:
        return False
    wanted = f":{port:04X}"
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) > 3 and fields[1].endswith(wanted) and fields[3] == TCP_LISTEN:
            return True
    return False


def _tail(console: Path, start: int) -> list[str]:
    try:
        with console.open("rb") as output:
            output.seek(start)
            text = output.read().decode(errors="replace")
    except OSError:
        return []
    return text.splitlines()[-CONSOLE_TAIL:]
