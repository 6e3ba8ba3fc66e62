"""Droplets that are real machines on this one (root only): `NamespaceMachines`.

A droplet is a network namespace cabled to two bridges (`namespaces`), a disk directory bound
over the paths it owns (`disks`), and, while it is on, a PID namespace whose PID 1 is `boot`
(`power`). The metadata service (`metadata`) listens on the machine's end of both bridges.

The state directory holds, per droplet, `droplets/<id>/disk/`, its console
(`console.log`, everything its boot processes print) and `machine.json` (its spec and
attached volumes, so it can be powered on by a later stand-in); snapshots are copies of a
disk in `snapshots/<id>/`, volumes directories in `volumes/<id>/`. Disks, snapshots and
volumes outlive `close()`; namespaces, bridges, routes and processes do not.

Operations on one droplet run one at a time (a lock each); every blocking step runs in a
worker thread. Failures raise `MachineError` saying what failed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import sys
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sim.digitalocean import disks, namespaces, power
from sim.digitalocean.machines import FirewallPolicy, MachineError, MachineSpec, Networks
from sim.digitalocean.metadata import MetadataServer

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]  # where `python -m sim.digitalocean.boot` imports
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # a volume's id or name
HOSTNAME_MAX = 63


@dataclass(slots=True)
class Droplet:
    spec: MachineSpec
    volumes: dict[str, str] = field(default_factory=dict)  # volume id -> name under /mnt
    running: power.Running | None = None


class NamespaceMachines:
    """Droplets in namespaces of this machine; see the module docstring."""

    def __init__(
        self,
        state_dir: Path,
        metadata: Callable[[str], dict[str, Any] | None],
        networks: Networks | None = None,
        *,
        metadata_port: int = 0,
    ) -> None:
        self.networks = networks or namespaces.pick_networks()
        self.metadata_url: str | None = None
        self._layout = namespaces.Layout(self.networks)
        self._state = Path(state_dir)
        self._server = MetadataServer(metadata)
        self._metadata_port = metadata_port
        self._droplets: dict[int, Droplet] = {}
        self._locks: dict[int, asyncio.Lock] = {}
        self._reserved: dict[str, int] = {}  # reserved IP -> the droplet it routes to
        self._policies: dict[int, FirewallPolicy] = {}
        self._started = False

    async def start(self) -> None:
        if self._started:
            return
        await asyncio.to_thread(namespaces.ensure_bridges, self._layout)
        self._started = True
        try:
            addresses = [self.networks.gateway, self.networks.private_gateway]
            self._metadata_port = await self._server.start(addresses, self._metadata_port)
        except OSError as err:
            await self.close()
            raise MachineError(f"metadata service: {err.strerror or err}") from err
        self.metadata_url = f"http://{self.networks.gateway}:{self._metadata_port}/metadata/v1/"
        log.info("Machines ready. networks=%s metadata=%s", self.networks, self.metadata_url)

    async def close(self) -> None:
        if not self._started:
            return
        self._started = False
        problems: list[str] = []
        for droplet_id, droplet in list(self._droplets.items()):
            problems += await self._attempt(self._power_off(droplet))
            problems += await self._attempt(
                asyncio.to_thread(namespaces.remove_namespace, self._layout, droplet_id)
            )
        for ip in list(self._reserved):
            problems += await self._attempt(
                asyncio.to_thread(namespaces.route_reserved, self._layout, ip, None)
            )
        self._reserved.clear()
        problems += await self._attempt(asyncio.to_thread(namespaces.remove_bridges, self._layout))
        problems += await self._attempt(self._server.close())
        self.metadata_url = None
        if problems:
            raise MachineError("machines not all cleaned up", problems)

    async def create(self, spec: MachineSpec, snapshot_id: int | None) -> None:
        async with self._lock(spec.id):
            if spec.id in self._droplets:
                raise MachineError(f"droplet {spec.id} already has a machine")
            # Files of an earlier stand-in's droplet with this id are replaced.
            source = self._snapshot_dir(snapshot_id) if snapshot_id is not None else None
            droplet = Droplet(spec)
            await asyncio.to_thread(self._write_disk, droplet, source)
            self._droplets[spec.id] = droplet
            await self._power_on(droplet)

    async def power_on(self, droplet_id: int) -> None:
        async with self._lock(droplet_id):
            await self._power_on(await asyncio.to_thread(self._droplet, droplet_id))

    async def power_off(self, droplet_id: int) -> None:
        async with self._lock(droplet_id):
            await self._power_off(await asyncio.to_thread(self._droplet, droplet_id))

    async def destroy(self, droplet_id: int) -> None:
        async with self._lock(droplet_id):
            droplet = await asyncio.to_thread(self._droplet, droplet_id)
            await self._power_off(droplet)
            for ip in [ip for ip, holder in self._reserved.items() if holder == droplet_id]:
                await asyncio.to_thread(namespaces.route_reserved, self._layout, ip, None)
                del self._reserved[ip]
            self._policies.pop(droplet_id, None)
            await asyncio.to_thread(namespaces.remove_namespace, self._layout, droplet_id)
            await asyncio.to_thread(disks.remove, self._droplet_dir(droplet_id))
            del self._droplets[droplet_id]
        log.info("Droplet destroyed. id=%d", droplet_id)

    async def snapshot(self, droplet_id: int, snapshot_id: int) -> float:
        droplet = await asyncio.to_thread(self._droplet, droplet_id)
        return await asyncio.to_thread(self._snapshot, droplet.spec.id, snapshot_id)

    async def delete_snapshot(self, snapshot_id: int) -> None:
        await asyncio.to_thread(disks.remove, self._state / "snapshots" / str(snapshot_id))

    async def rebuild(self, droplet_id: int, snapshot_id: int | None) -> None:
        async with self._lock(droplet_id):
            droplet = await asyncio.to_thread(self._droplet, droplet_id)
            source = self._snapshot_dir(snapshot_id) if snapshot_id is not None else None
            await self._power_off(droplet)
            await asyncio.to_thread(self._write_disk, droplet, source)
            await self._power_on(droplet)

    async def attach_volume(self, volume_id: str, name: str, droplet_id: int) -> None:
        for what, text in (("name", name), ("id", volume_id)):
            if not SAFE_NAME.fullmatch(text):
                raise MachineError(f"volume {what} {text!r}: letters, digits, '.', '_', '-' only")
        holder = self._holder(volume_id)
        if holder is not None and holder != droplet_id:
            raise MachineError(f"volume {volume_id} is attached to droplet {holder}")
        async with self._lock(droplet_id):
            droplet = await asyncio.to_thread(self._droplet, droplet_id)
            await asyncio.to_thread(self._volume_dir(volume_id).mkdir, parents=True, exist_ok=True)
            if droplet.running is not None:
                await asyncio.to_thread(self._mount, droplet.running, volume_id, name)
            droplet.volumes[volume_id] = name
            await asyncio.to_thread(self._save, droplet)

    async def detach_volume(self, volume_id: str, droplet_id: int) -> None:
        async with self._lock(droplet_id):
            droplet = await asyncio.to_thread(self._droplet, droplet_id)
            name = droplet.volumes.pop(volume_id, None)
            await asyncio.to_thread(self._save, droplet)
            if name is None or droplet.running is None:
                return
            await asyncio.to_thread(self._unmount, droplet.running, name)

    async def delete_volume(self, volume_id: str) -> None:
        holder = self._holder(volume_id)
        if holder is not None:
            raise MachineError(f"volume {volume_id} is attached to droplet {holder}")
        await asyncio.to_thread(disks.remove, self._volume_dir(volume_id))

    async def assign_reserved_ip(self, ip: str, droplet_id: int | None) -> None:
        previous = self._reserved.get(ip)
        if previous is not None and previous != droplet_id:
            await asyncio.to_thread(namespaces.release_reserved, self._layout, ip, previous)
            del self._reserved[ip]
        holder = None
        if droplet_id is not None:
            holder = (await asyncio.to_thread(self._droplet, droplet_id)).spec
        await asyncio.to_thread(namespaces.route_reserved, self._layout, ip, holder)
        if droplet_id is not None:
            self._reserved[ip] = droplet_id

    async def apply_firewalls(self, policies: dict[int, FirewallPolicy]) -> None:
        previous, self._policies = self._policies, dict(policies)
        for droplet_id in sorted(set(previous) | set(policies)):
            if droplet_id not in self._droplets:
                continue  # applied when its machine is created or powered on
            async with self._lock(droplet_id):
                await self._firewall(droplet_id)

    # --- one droplet, its lock held ---

    async def _power_on(self, droplet: Droplet) -> None:
        if droplet.running is not None and droplet.running.alive():
            return
        droplet.running = None
        spec = droplet.spec
        await asyncio.to_thread(namespaces.ensure_namespace, self._layout, spec)
        await self._firewall(spec.id)
        for ip in [ip for ip, holder in self._reserved.items() if holder == spec.id]:
            await asyncio.to_thread(namespaces.route_reserved, self._layout, ip, spec)
        try:
            droplet.running = await asyncio.to_thread(
                power.boot,
                self._boot_argv(droplet),
                self._droplet_dir(spec.id) / "console.log",
                ROOT,
                self._launcher_environment(),
            )
        except MachineError as err:
            raise MachineError(f"power on droplet {spec.id}: {err}", err.details) from err
        log.info("Droplet on. id=%d pid=%d", spec.id, droplet.running.init_pid)

    async def _power_off(self, droplet: Droplet) -> None:
        if droplet.running is None:
            return
        try:
            await asyncio.to_thread(power.kill, droplet.running)
        except MachineError as err:
            raise MachineError(f"power off droplet {droplet.spec.id}: {err}") from err
        droplet.running = None
        log.info("Droplet off. id=%d", droplet.spec.id)

    async def _firewall(self, droplet_id: int) -> None:
        policy = self._policies.get(droplet_id)
        if policy is None:
            await asyncio.to_thread(namespaces.clear_firewall, self._layout, droplet_id)
            return
        port = self._metadata_port
        always = [(self.networks.gateway, port), (self.networks.private_gateway, port)]
        await asyncio.to_thread(
            namespaces.apply_firewall, self._layout, droplet_id, policy, always if port else []
        )

    @staticmethod
    def _launcher_environment() -> dict[str, str]:
        """Only what the launcher needs: `boot` gives the droplet's processes their own."""
        path = os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        return {"PATH": path, "PYTHONPATH": str(ROOT), "LANG": "C.UTF-8"}

    def _boot_argv(self, droplet: Droplet) -> list[str]:
        spec = droplet.spec
        volumes = [
            f"--volume={self._volume_dir(volume_id)}={name}"
            for volume_id, name in sorted(droplet.volumes.items())
        ]
        return [
            *self._layout.enter(spec.id),
            *("unshare", "--pid", "--fork", "--mount", "--uts", "--propagation", "private"),
            *("--mount-proc", sys.executable, "-m", "sim.digitalocean.boot"),
            str(self._disk(spec.id)),
            *(f"--id={spec.id}", f"--hostname={spec.name[:HOSTNAME_MAX]}"),
            f"--metadata-url={self.metadata_url or ''}",
            *volumes,
        ]

    # --- files (worker threads) ---

    def _write_disk(self, droplet: Droplet, snapshot: Path | None) -> None:
        """The droplet's disk new (empty or the snapshot's), root's keys and its user data."""
        disk = self._disk(droplet.spec.id)
        disk.parent.mkdir(parents=True, exist_ok=True)
        try:
            disks.reset(disk, snapshot)
            disks.add_keys(disk, droplet.spec.ssh_keys)
            disks.write_user_data(disk, droplet.spec.user_data)
        except OSError as err:
            raise MachineError(f"disk of droplet {droplet.spec.id}: {err}") from err
        self._save(droplet)

    def _snapshot(self, droplet_id: int, snapshot_id: int) -> float:
        target = self._state / "snapshots" / str(snapshot_id)
        if target.exists():
            raise MachineError(f"snapshot {snapshot_id} exists already")
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            disks.copy(self._disk(droplet_id), target)
        except OSError as err:  # shutil.Error too: files that changed while copied
            raise MachineError(f"snapshot of droplet {droplet_id}: {err}") from err
        return disks.used_gb(target)

    def _save(self, droplet: Droplet) -> None:
        record = {"spec": asdict(droplet.spec), "volumes": droplet.volumes}
        path = self._record(droplet.spec.id)
        path.write_text(json.dumps(record, indent=2) + "\n")

    def _droplet(self, droplet_id: int) -> Droplet:
        """The droplet, from its record if an earlier stand-in made it."""
        if droplet_id in self._droplets:
            return self._droplets[droplet_id]
        try:
            record = json.loads(self._record(droplet_id).read_text())
        except (OSError, ValueError) as err:
            raise MachineError(f"droplet {droplet_id} has no machine") from err
        spec = record["spec"]
        droplet = Droplet(
            MachineSpec(**{**spec, "ssh_keys": tuple(spec["ssh_keys"])}), record["volumes"]
        )
        return self._droplets.setdefault(droplet_id, droplet)

    def _snapshot_dir(self, snapshot_id: int) -> Path:
        path = self._state / "snapshots" / str(snapshot_id)
        if not path.is_dir():
            raise MachineError(f"snapshot {snapshot_id} has no disk copy")
        return path

    def _droplet_dir(self, droplet_id: int) -> Path:
        return self._state / "droplets" / str(droplet_id)

    def _disk(self, droplet_id: int) -> Path:
        return self._droplet_dir(droplet_id) / "disk"

    def _record(self, droplet_id: int) -> Path:
        return self._droplet_dir(droplet_id) / "machine.json"

    def _volume_dir(self, volume_id: str) -> Path:
        return self._state / "volumes" / volume_id

    def _holder(self, volume_id: str) -> int | None:
        for droplet_id, droplet in self._droplets.items():
            if volume_id in droplet.volumes:
                return droplet_id
        return None

    def _lock(self, droplet_id: int) -> asyncio.Lock:
        return self._locks.setdefault(droplet_id, asyncio.Lock())

    @staticmethod
    def _enter_mounts(running: power.Running) -> list[str]:
        """Run a command in the droplet's mount namespace, and its PID namespace so that its
        `/proc/self` (which mount tools read) exists."""
        return ["nsenter", f"--target={running.init_pid}", "--mount", "--pid", "--"]

    def _mount(self, running: power.Running, volume_id: str, name: str) -> None:
        """Bind the volume at `/mnt/<name>` in the running droplet's mount namespace."""
        source = self._volume_dir(volume_id)
        source.mkdir(parents=True, exist_ok=True)
        enter = self._enter_mounts(running)
        namespaces.run(*enter, "mkdir", "-p", f"/mnt/{name}")
        namespaces.run(*enter, "mount", "--bind", str(source), f"/mnt/{name}")

    def _unmount(self, running: power.Running, name: str) -> None:
        """Lazily: the volume leaves the droplet's tree now, even with files open in it."""
        enter = self._enter_mounts(running)
        namespaces.run(*enter, "umount", "-l", f"/mnt/{name}", check=False)
        namespaces.run(*enter, "rmdir", f"/mnt/{name}", check=False)

    @staticmethod
    async def _attempt(step: Awaitable[object]) -> list[str]:
        """Run a clean-up step; what went wrong, if anything (clean-up goes on)."""
        try:
            await step
        except (MachineError, OSError, RuntimeError) as err:
            return [str(err)]
        return []
