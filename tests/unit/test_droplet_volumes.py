"""The volume a droplet's datastores keep their data on: one per logical droplet, made on first
use, attached and mounted here, a directory per service, never taken from another droplet."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import pytest

from meshd.agent.reconciler.instances import NotReady
from meshd.agent.reconciler.volumes import DropletVolumes
from meshd.core.volumes import NAME_MAX, volume_name
from plugins.providers import Fence, VolumeInUse, VolumeRecord, Volumes
from tests.support.reconciling import allocation

DATABASE = allocation(service="database", service_kind="database", command=None, port=5432)


class FakeVolumes:
    """Volumes kept in a dict, with DigitalOcean's rule: one droplet at a time."""

    def __init__(self, root: Path = Path("/mnt")) -> None:
        self.root = root
        self.volumes: dict[str, VolumeRecord] = {}
        self.ids = itertools.count(1)
        self.calls: list[str] = []

    def mount_path(self, name: str) -> Path:
        return self.root / name

    async def mount(self, name: str) -> None:
        self.calls.append(f"mount {name}")
        self.mount_path(name).mkdir(mode=0o700)  # a new filesystem's root: root's alone

    async def create_volume(self, name: str, size_gb: int, *, fence: Fence | None) -> VolumeRecord:
        self.calls.append(f"create {name}")
        made = VolumeRecord(f"v{next(self.ids)}", name, size_gb, None, 0.0)
        self.volumes[made.id] = made
        return made

    async def list_volumes(self) -> list[VolumeRecord]:
        return list(self.volumes.values())

    async def attach_volume(
        self, volume_id: str, droplet_id: str, *, fence: Fence | None
    ) -> VolumeRecord:
        self.calls.append(f"attach {volume_id} {droplet_id}")
        found = self.volumes[volume_id]
        if found.droplet_id not in (None, droplet_id):
            raise VolumeInUse("attach", found.droplet_id)
        self.volumes[volume_id] = dataclasses.replace(found, droplet_id=droplet_id)
        return self.volumes[volume_id]

    async def detach_volume(self, volume_id: str, *, fence: Fence | None) -> VolumeRecord:
        self.volumes[volume_id] = dataclasses.replace(self.volumes[volume_id], droplet_id=None)
        return self.volumes[volume_id]

    async def resize_volume(
        self, volume_id: str, size_gb: int, *, fence: Fence | None
    ) -> VolumeRecord:
        raise NotImplementedError

    async def delete_volume(self, volume_id: str, *, fence: Fence | None) -> None:
        raise NotImplementedError


def volumes_of(provider: FakeVolumes, droplet_id: str = "7") -> DropletVolumes:
    assert isinstance(provider, Volumes)
    return DropletVolumes(provider, "m", "web1", droplet_id, "process", lambda: None)


def test_a_volume_is_named_for_the_mesh_and_the_logical_droplet() -> None:
    assert volume_name("m", "shop-web1") == "m-shop-web1"
    odd = volume_name("m", "worker_1")
    assert odd.startswith("m-worker-1-") and len(odd) == 19
    assert odd != volume_name("m", "worker-1")
    long = volume_name("mesh", "w" * 70)
    assert len(long) == NAME_MAX and long[0].isalpha()
    assert volume_name("9m", "w").startswith("v-9m-")


def test_only_datastores_and_services_with_a_data_path_keep_data() -> None:
    volumes = volumes_of(FakeVolumes())
    assert volumes.path(DATABASE) == Path("/mnt/m-web1/shop/prod/database")
    assert volumes.path(allocation()) is None  # a web backend
    uploads = allocation(data_path="/srv/uploads")
    assert volumes.path(uploads) == Path("/mnt/m-web1/shop/prod/backend")
    own = dataclasses.replace(DATABASE, process_command="my-postgres")
    assert volumes.path(own) is None  # runs its own: where it keeps data is its business


async def test_one_volume_is_made_attached_and_mounted_for_every_service(tmp_path: Path) -> None:
    provider = FakeVolumes(tmp_path)
    volumes = volumes_of(provider)
    cache = dataclasses.replace(DATABASE, service="cache", service_kind="redis", port=6379)
    uat = dataclasses.replace(DATABASE, env="uat")
    for wanted in (DATABASE, DATABASE, cache, uat, allocation()):  # the last keeps no data
        await volumes.ensure(wanted)
    assert provider.calls == ["create m-web1", "attach v1 7", "mount m-web1"]
    top = tmp_path / "m-web1"
    for directory in (top, top / "shop", top / "shop/prod", top / "shop/prod/database"):
        assert directory.stat().st_mode & 0o777 == 0o711, directory
    assert (top / "shop/prod/cache").is_dir() and (top / "shop/uat/database").is_dir()


async def test_a_volume_attached_elsewhere_is_waited_for_never_taken(tmp_path: Path) -> None:
    provider = FakeVolumes(tmp_path)
    await volumes_of(provider, droplet_id="3").ensure(DATABASE)  # the droplet before
    replacement = volumes_of(provider, droplet_id="8")
    with pytest.raises(NotReady, match="attached to droplet 3"):
        await replacement.ensure(DATABASE)
    assert provider.volumes["v1"].droplet_id == "3"
    await provider.detach_volume("v1", fence=Fence("recovery", 4))  # fenced, then detached
    provider.mount_path("m-web1").rename(tmp_path / "elsewhere")  # the old droplet's mount
    await replacement.ensure(DATABASE)
    assert provider.volumes["v1"].droplet_id == "8"
