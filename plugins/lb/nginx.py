"""The `nginx` load balancer: nginx (Debian `nginx-light`) as a child of the agent.

Each `LbConfig` is rendered from `templates/nginx.conf`, written beside the running
configuration and checked with `nginx -t`; only a
configuration that passes replaces it, and a running nginx picks it up with SIGHUP, a
graceful reload (old workers finish their requests). The same text twice is not reloaded.
nginx stays in the agent's process group, so it dies with its droplet.

Config: `binary` (default: `nginx` on PATH, or /usr/sbin/nginx).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from plugins.lb import ConfigRejected, LbConfig, LbContext, LbUnavailable
from plugins.procfs import command_line, group_members, proc_stat
from plugins.templating import render

CONFIG_FILE = "nginx.conf"
CANDIDATE_FILE = "nginx.conf.new"
START_TIMEOUT_S = 5.0
STOP_GRACE_S = 5.0
TEMP_DIRS = ("body", "proxy", "fastcgi", "uwsgi", "scgi")
INSTALL_HINT = "nginx is not installed (Debian/Ubuntu: apt-get install nginx-light)"


class NginxLoadBalancer:
    name = "nginx"

    def __init__(self, ctx: LbContext) -> None:
        self._dir = ctx.directory
        self._log = ctx.logger
        self._binary = ctx.config.get("binary") or shutil.which("nginx") or "/usr/sbin/nginx"
        self._child: subprocess.Popen[bytes] | None = None
        self._served: str | None = None  # the configuration text nginx runs

    @property
    def run_dir(self) -> Path:
        return self._dir

    async def apply(self, config: LbConfig) -> bool:
        return await self.apply_text(render_config(config, self._dir))

    async def apply_text(self, config: str) -> bool:
        """Serve this configuration text (what `apply` renders)."""
        if config == self._served and self._alive():
            return False
        await asyncio.to_thread(self._prepare)
        candidate = self._dir / CANDIDATE_FILE
        await asyncio.to_thread(candidate.write_text, config)
        problem = await self._test(candidate)
        if problem is not None:
            raise ConfigRejected(f"nginx -t refused the new configuration: {problem}")
        await asyncio.to_thread(os.replace, candidate, self._dir / CONFIG_FILE)
        if self._alive():
            assert self._child is not None
            os.kill(self._child.pid, signal.SIGHUP)
            self._log.info("nginx reloaded. pid=%d", self._child.pid)
        else:
            await self._start()
        self._served = config
        return True

    async def ensure_running(self) -> bool:
        if self._alive() or self._served is None:
            return False
        self._log.warning("nginx exited; starting it again. code=%s", self._exit_code())
        await asyncio.to_thread(_kill_orphaned_workers)
        await self._start()
        return True

    async def stop(self) -> None:
        child, self._child = self._child, None
        self._served = None
        if child is None or child.poll() is not None:
            return
        child.send_signal(signal.SIGQUIT)  # graceful: finish the requests in flight
        try:
            await asyncio.wait_for(asyncio.to_thread(child.wait), STOP_GRACE_S)
        except TimeoutError:
            child.kill()
            await asyncio.to_thread(child.wait)

    @property
    def serving(self) -> bool:
        """Whether the nginx this plugin started still runs."""
        return self._alive()

    # --- helpers ------------------------------------------------------------------------------

    def _alive(self) -> bool:
        return self._child is not None and self._child.poll() is None

    def _exit_code(self) -> int | None:
        return None if self._child is None else self._child.poll()

    def _prepare(self) -> None:
        if not Path(self._binary).is_file():
            raise LbUnavailable(INSTALL_HINT)
        for name in TEMP_DIRS:
            (self._dir / "tmp" / name).mkdir(parents=True, exist_ok=True)

    def _spawn(self) -> subprocess.Popen[bytes]:
        with (self._dir / "console.log").open("ab") as log:
            try:
                return subprocess.Popen(
                    self._command(self._dir / CONFIG_FILE, "-g", "daemon off;"),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            except OSError as err:
                raise LbUnavailable(f"cannot run {self._binary}: {err.strerror}") from None

    def _command(self, config: Path, *extra: str) -> list[str]:
        prefix = f"{self._dir}/"
        error_log = str(self._dir / "error.log")
        return [self._binary, "-p", prefix, "-e", error_log, "-c", str(config), *extra]

    async def _test(self, candidate: Path) -> str | None:
        process = await asyncio.create_subprocess_exec(
            *self._command(candidate, "-t", "-q"),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await process.communicate()
        if process.returncode == 0:
            return None
        lines = [line for line in err.decode(errors="replace").splitlines() if line.strip()]
        return " | ".join(lines[-3:]) or f"exit code {process.returncode}"

    async def _start(self) -> None:
        pid_file = self._dir / "nginx.pid"
        with contextlib.suppress(FileNotFoundError):
            pid_file.unlink()
        self._child = await asyncio.to_thread(self._spawn)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not pid_file.exists():  # written once nginx listens
            if self._child.poll() is not None:
                tail = (self._dir / "error.log").read_text(errors="replace").splitlines()[-2:]
                raise LbUnavailable(f"nginx exited at start: {' | '.join(tail)}")
            if time.monotonic() > deadline:
                raise LbUnavailable(f"nginx did not start within {START_TIMEOUT_S:.0f} s")
            await asyncio.sleep(0.02)
        self._log.info("nginx started. pid=%d", self._child.pid)


def _kill_orphaned_workers() -> None:
    """Workers of a master that was killed keep its listening sockets, and a new master could
    not bind them: kill those of our process group whose master is gone."""
    for pid in group_members(os.getpgrp()):
        title = command_line(pid)
        if not title.startswith(("nginx: worker", "nginx: cache")):
            continue
        stat = proc_stat(pid)
        parent = command_line(stat.ppid) if stat else ""
        if not parent.startswith("nginx: master"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    time.sleep(0.05)  # let the kernel release their sockets


def render_config(config: LbConfig, run_dir: Path) -> str:
    """nginx.conf for `config`, keeping pid, logs and temporary files in `run_dir`."""
    return render("nginx.conf", lb=config, run_dir=str(run_dir))


def create(ctx: LbContext) -> NginxLoadBalancer:
    return NginxLoadBalancer(ctx)
