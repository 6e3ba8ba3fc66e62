"""The `process` runtime: a service's `command` as a supervised subprocess of the agent.

For machines without Docker and for the local demo. Each instance owns a directory
`<data_dir>/instances/<key>/` holding `state.json` (generation, pid, the pid's start time from
`/proc/<pid>/stat` so that a reused pid is never taken for ours), `output.log` (stdout and
stderr, capped on start) and `secrets/` (0700, one 0400 file per secret). Secrets reach the
process only as files named by `SECRETS_DIR`, never through the environment, logs or state.
An instance runs in its artifact's directory `<data_dir>/artifacts/<digest>/` (`artifacts`),
else in its build context when that is a directory here, else in its own directory.

Instances stay in the agent's process group, so killing a local droplet's group kills them
too. A new runtime over the same directory (the agent restarted) re-adopts running instances
from `state.json` and `/proc` instead of restarting them; it cannot wait for those, so it polls
`/proc`, and their exit codes are known only if the previous runtime saw them.

`subprocess.Popen`, not `asyncio.create_subprocess_exec`: an asyncio subprocess transport kills
its child when it is closed or garbage collected, which would defeat re-adoption.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import os
import pwd
import re
import shlex
import shutil
import subprocess
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from plugins.fs import atomic_write, cap_log, tail_text, write_secret_files
from plugins.procfs import is_alive, proc_stat
from plugins.runtimes import (
    InstanceInfo,
    InstancePhase,
    InstanceSpec,
    InstanceStartError,
    LogFile,
    OutputSink,
    RuntimeConfigError,
    RuntimeContext,
    secret_file_variables,
)
from plugins.runtimes.process import datastores
from plugins.runtimes.process.artifacts import pack, unpack, unpacked, working_directory
from plugins.runtimes.process.commands import command_launch
from plugins.runtimes.process.datastore_calls import BuiltinDatastores
from plugins.runtimes.process.datastores import Launch, Places, builtin_kind
from plugins.runtimes.process.once import ONCE_DIR, arguments, run_command
from plugins.runtimes.process.records import ProcessRecord
from plugins.runtimes.process.termination import terminate
from protocol import subjects

if TYPE_CHECKING:
    from collections.abc import Callable

    from plugins.runtimes import Runtime

STATE_FILE = "state.json"
LOG_FILE = "output.log"
SECRETS_DIR = "secrets"
DEFAULT_LOG_MAX_BYTES = 5 * 1024 * 1024
DEFAULT_GRACE = 5.0
DETAIL_CHARS = 300
# Instances yield the CPU to the droplet's agent and NATS server: a droplet busy starting its
# datastores still answers its monitors, to whom three seconds of silence is a death.
WORKLOAD_NICE = 10
PASSED_THROUGH = ("PATH", "HOME", "LANG")
_SECRET_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}")


class ProcessRuntime(BuiltinDatastores):
    """Runs each instance's command as a child process; see the module docstring."""

    name = "process"

    def __init__(self, ctx: RuntimeContext, *, log_max_bytes: int = DEFAULT_LOG_MAX_BYTES):
        self._root = ctx.data_dir / "instances"
        self._artifacts = ctx.data_dir / "artifacts"  # <digest>/: an unpacked build context
        self._once = ctx.data_dir / ONCE_DIR  # <key>/: a one-off command's files (`once`)
        configured = ctx.config.get("datastore_root")
        root = Path(configured) if configured else None
        self._places = Places.default(ctx.mesh, ctx.droplet, ctx.data_dir, root)
        self._log = ctx.logger
        self._log_max_bytes = log_max_bytes
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._closed = False
        # state.json of every instance, read from disk once (re-adoption), then kept here.
        self._states: dict[str, ProcessRecord] | None = None

    async def ensure(self, spec: InstanceSpec) -> InstanceInfo:
        key = spec.key
        async with self._lock(key):
            found = await self._observe(key)
            if found is not None:
                state, info = found
                if info.phase is InstancePhase.RUNNING:
                    if state.generation == spec.generation:
                        return info
                    self._log.info(
                        "Replacing instance. key=%s old_generation=%d generation=%d",
                        key,
                        state.generation,
                        spec.generation,
                    )
                    await self._terminate(state, DEFAULT_GRACE)
            return await self._start(spec)

    async def restart(self, spec: InstanceSpec) -> InstanceInfo:
        key = spec.key
        async with self._lock(key):
            found = await self._observe(key)
            if found is not None and found[1].phase is InstancePhase.RUNNING:
                self._log.info("Restarting instance. key=%s pid=%d", key, found[0].pid)
                await self._terminate(found[0], DEFAULT_GRACE)
            return await self._start(spec)

    async def stop(self, key: str, *, grace: float = DEFAULT_GRACE) -> None:
        subjects.parse_instance_key(key)  # a valid key is also a safe directory name
        async with self._lock(key):
            found = await self._observe(key)
            if found is not None and found[1].phase is InstancePhase.RUNNING:
                await self._terminate(found[0], grace)
                self._log.info("Instance stopped. key=%s pid=%d", key, found[0].pid)
            self._drop_child(key)
            await asyncio.to_thread(self._forget, key)  # output.log stays

    async def list(self) -> list[InstanceInfo]:
        infos = []
        if self._states is None:
            await asyncio.to_thread(self._cached_states)  # the first read globs the disk
        for key in self._known_keys():
            async with self._lock(key):
                found = await self._observe(key)
            if found is not None:
                infos.append(found[1])
        return infos

    async def log_files(self) -> builtins.list[LogFile]:
        """Each known instance's `output.log` (nothing before the first `list`)."""
        keys = self._known_keys() if self._states is not None else []
        return [LogFile(key, self._root / key / LOG_FILE) for key in keys]

    async def close(self) -> None:
        # Children that still run stay referenced: a dropped Popen of a running child goes to
        # the subprocess module's reaper, which would swallow its exit code.
        self._closed = True
        for key, child in builtins.list(self._children.items()):
            if child.poll() is not None:
                del self._children[key]

    async def run_once(
        self,
        spec: InstanceSpec,
        command: str,
        timeout: float,  # noqa: ASYNC109
        output: OutputSink | None = None,
    ) -> tuple[int, str]:
        if self._closed:
            raise InstanceStartError(spec.key, "the process runtime is closed")
        directory = self._once / spec.key
        argv = arguments(spec.key, command)
        cwd = working_directory(spec, self._artifacts, directory)
        env = self._environment(spec, directory / SECRETS_DIR)
        self._log.info("Running once. key=%s command=%s", spec.key, argv[0])
        return await run_command(
            spec.key, argv, cwd, env, spec.secrets, directory, limit_s=timeout, output=output
        )

    async def build_artifact(
        self, context: Path, dockerfile: Path | None, image: str, out: Path
    ) -> str:
        return await asyncio.to_thread(pack, context, out)  # a Dockerfile means nothing here

    async def has_artifact(self, digest: str, image: str | None) -> bool:
        return await asyncio.to_thread(unpacked, self._artifacts, digest)

    async def load_artifact(self, digest: str, image: str | None, path: Path) -> None:
        await asyncio.to_thread(unpack, self._artifacts, digest, path)
        self._log.info("Artifact unpacked. digest=%s", digest[:12])

    def _lock(self, key: str) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    def _known_keys(self) -> builtins.list[str]:
        return sorted(self._cached_states())

    def _cached_states(self) -> dict[str, ProcessRecord]:
        if self._states is None:
            found = self._root.glob(f"*/{STATE_FILE}") if self._root.is_dir() else []
            loaded = {entry.parent.name: self._load_state(entry) for entry in found}
            self._states = {key: state for key, state in loaded.items() if state is not None}
        return self._states

    def _child(self, state: ProcessRecord) -> subprocess.Popen[bytes] | None:
        """This runtime's Popen of `state`'s process, or None if another runtime started it."""
        child = self._children.get(state.key)
        if child is None or child.pid == state.pid:
            return child
        if child.poll() is not None:  # an older process of ours, replaced by another runtime
            del self._children[state.key]
        return None

    def _drop_child(self, key: str) -> None:
        child = self._children.pop(key, None)
        if child is not None:
            child.poll()  # reap it now if it has exited, so that no zombie is left behind

    async def _observe(self, key: str) -> tuple[ProcessRecord, InstanceInfo] | None:
        """Read the state of `key` and look whether its process still runs (the files of
        one that exited are written and read in a thread)."""
        state = self._read_state(key)
        if state is None:
            return None
        child = self._child(state)
        if child is not None:
            code = child.poll()
            running = code is None
        else:
            running = is_alive(state.pid, state.start_ticks)
            code = state.exit_code
        if running:
            return state, state.info(InstancePhase.RUNNING)
        self._drop_child(key)
        if code is not None and state.exit_code is None:
            state = replace(state, exit_code=code)
            await asyncio.to_thread(self._write_state, state)
        detail = await asyncio.to_thread(tail_text, self._root / key / LOG_FILE, 0, DETAIL_CHARS)
        return state, state.info(InstancePhase.EXITED, detail or None)

    async def _start(self, spec: InstanceSpec) -> InstanceInfo:
        key = spec.key
        if self._closed:
            raise InstanceStartError(key, "the process runtime is closed")
        self._drop_child(key)
        try:
            child, state = await asyncio.to_thread(self._spawn, spec)
        except InstanceStartError as err:
            self._log.warning("Instance did not start. key=%s reason=%s", key, err.reason)
            raise
        self._children[key] = child
        self._log.info(
            "Instance started. key=%s generation=%d pid=%d", key, state.generation, state.pid
        )
        return state.info(InstancePhase.RUNNING)

    def _launch(self, spec: InstanceSpec, directory: Path) -> Launch:
        """How the instance starts: a built-in datastore, else its command."""
        kind = builtin_kind(spec)
        if kind is not None:
            return datastores.launch(kind, spec, self._places, directory)
        return command_launch(spec, lambda: working_directory(spec, self._artifacts, directory))

    def _spawn(self, spec: InstanceSpec) -> tuple[subprocess.Popen[bytes], ProcessRecord]:
        """Prepare the instance directory and start the process (runs in a worker thread)."""
        key = spec.key
        for name in spec.secrets:
            if not _SECRET_NAME.fullmatch(name):
                raise InstanceStartError(key, f"secret name {name!r} is not a plain file name")
        directory = self._root / key
        start = self._launch(spec, directory)
        argv, command = start.argv, shlex.join(start.argv)
        directory.mkdir(parents=True, exist_ok=True)
        self._forget_state(key)
        write_secret_files(directory / SECRETS_DIR, spec.secrets)
        cap_log(directory / LOG_FILE, self._log_max_bytes)
        with (directory / LOG_FILE).open("ab") as out:
            out.write(f"[meshd] starting generation {spec.generation}\n".encode())
            out.flush()
            try:
                child = subprocess.Popen(
                    argv,
                    cwd=start.cwd,
                    stdin=subprocess.DEVNULL if start.stdin is None else subprocess.PIPE,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=self._environment(spec, directory / SECRETS_DIR),
                    start_new_session=False,  # die with the droplet's process group
                    user=start.user,
                    group=pwd.getpwnam(start.user).pw_gid if start.user else None,
                    extra_groups=[] if start.user else None,  # none of root's groups
                )
                with contextlib.suppress(OSError):  # gone already: its exit says why
                    os.setpriority(os.PRIO_PROCESS, child.pid, WORKLOAD_NICE)
                if child.stdin is not None:
                    with child.stdin:  # what it reads at start (a configuration with a password)
                        child.stdin.write(start.stdin or b"")
            except (OSError, ValueError) as err:
                shutil.rmtree(directory / SECRETS_DIR, ignore_errors=True)
                reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
                out.write(f"[meshd] cannot run {argv[0]!r}: {reason}\n".encode())
                raise InstanceStartError(key, f"cannot run {argv[0]!r}: {reason}") from err
        stat = proc_stat(child.pid)
        state = ProcessRecord(
            key=key,
            generation=spec.generation,
            pid=child.pid,
            start_ticks=stat.start_ticks if stat else -1,
            started_at=time.time(),
            command=command,
            stop_signal=start.stop_signal,
        )
        self._write_state(state)
        return child, state

    def _environment(self, spec: InstanceSpec, secrets_dir: Path) -> dict[str, str]:
        env = {name: os.environ[name] for name in PASSED_THROUGH if name in os.environ}
        env.update(spec.env_vars)
        env.pop("SERVICE_PORT", None)
        if spec.port is not None:
            env["SERVICE_PORT"] = str(spec.port)
        env |= {"SERVICE_HOST": spec.host, "SECRETS_DIR": str(secrets_dir)}
        return env | secret_file_variables(spec.secrets, str(secrets_dir))

    async def _terminate(self, state: ProcessRecord, grace: float) -> None:
        await terminate(state, self._child(state), grace, self._log)

    def _read_state(self, key: str) -> ProcessRecord | None:
        return self._cached_states().get(key)

    def _forget(self, key: str) -> None:
        shutil.rmtree(self._root / key / SECRETS_DIR, ignore_errors=True)
        self._forget_state(key)

    def _forget_state(self, key: str) -> None:
        self._cached_states().pop(key, None)
        (self._root / key / STATE_FILE).unlink(missing_ok=True)

    def _load_state(self, path: Path) -> ProcessRecord | None:
        try:
            data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
            return ProcessRecord(**data)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as err:
            self._log.warning("Ignoring unreadable instance state. path=%s error=%s", path, err)
            return None

    def _write_state(self, state: ProcessRecord) -> None:
        path = self._root / state.key / STATE_FILE
        atomic_write(path, (json.dumps(asdict(state), indent=2) + "\n").encode())
        self._cached_states()[state.key] = state


def create(ctx: RuntimeContext) -> ProcessRuntime:
    """The plugin factory. Config: `log_max_bytes` (output.log cap, default 5 MB) and
    `datastore_root` (where built-in datastores keep their data; `datastores.Places`)."""
    unknown = sorted(set(ctx.config) - {"log_max_bytes", "datastore_root"})
    if unknown:
        raise RuntimeConfigError("process", f"unknown settings: {', '.join(unknown)}")
    log_max_bytes = ctx.config.get("log_max_bytes", DEFAULT_LOG_MAX_BYTES)
    if type(log_max_bytes) is not int or log_max_bytes < 4096:
        raise RuntimeConfigError("process", "log_max_bytes must be an integer of at least 4096")
    if not Path("/proc/self/stat").is_file():
        raise RuntimeConfigError("process", "needs a Linux /proc to supervise processes")
    return ProcessRuntime(ctx, log_max_bytes=log_max_bytes)


if TYPE_CHECKING:
    _check_factory: Callable[[RuntimeContext], Runtime] = create  # ProcessRuntime is a Runtime
