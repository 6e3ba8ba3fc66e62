"""Volumes of the `local` provider with real droplets (process groups): one droplet at a time,
fenced like droplets, detached when their droplet is destroyed or replaced, kept as
directories outside every droplet (so outside snapshots)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from plugins.providers import (
    DropletNotFound,
    Fence,
    ProviderError,
    StaleFence,
    VolumeInUse,
    VolumeNotFound,
    Volumes,
)
from tests.component.test_provider_local import account, droplet_dir, provider_on

__all__ = ["account"]  # the fixture, used by name


@pytest.fixture
def volumed(account: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    return {**account, "volumes": str(tmp_path / "volumes")}


async def test_a_volume_is_attached_to_one_droplet_at_a_time(volumed: dict[str, Any]) -> None:
    provider = provider_on(volumed)
    assert isinstance(provider, Volumes)
    web1 = await provider.create("web1", "s-1", tags=[], user_data="", fence=None)
    web2 = await provider.create("web2", "s-1", tags=[], user_data="", fence=None)
    volume = await provider.create_volume("m-web1-shop-prod-database", 1, fence=None)
    assert volume.droplet_id is None
    path = provider.mount_path(volume.name)
    assert path.is_dir() and path.parent == Path(volumed["volumes"])
    assert not path.is_relative_to(droplet_dir(volumed, "web1", web1.id).parent)

    attached = await provider.attach_volume(volume.id, web1.id, fence=None)
    assert attached.droplet_id == web1.id
    assert (await provider.attach_volume(volume.id, web1.id, fence=None)) == attached  # again
    with pytest.raises(VolumeInUse, match=f"attached to droplet {web1.id}"):
        await provider.attach_volume(volume.id, web2.id, fence=None)
    with pytest.raises(VolumeInUse):
        await provider.delete_volume(volume.id, fence=None)
    assert (await provider.detach_volume(volume.id, fence=None)).droplet_id is None
    with pytest.raises(DropletNotFound):
        await provider.attach_volume(volume.id, "999", fence=None)
    assert (await provider.list_volumes())[0].droplet_id is None

    moved = await provider.attach_volume(volume.id, web2.id, fence=None)
    assert moved.droplet_id == web2.id
    (path / "rows").write_text("committed")
    await provider.destroy(web2.id, fence=None)
    (left,) = await provider.list_volumes()
    assert left.droplet_id is None  # destroying a droplet lets go of its volumes
    assert (path / "rows").read_text() == "committed"


async def test_a_replaced_droplet_lets_go_of_its_volumes(volumed: dict[str, Any]) -> None:
    provider = provider_on(volumed)
    web1 = await provider.create("web1", "s-1", tags=[], user_data="", fence=None)
    volume = await provider.create_volume("data", 1, fence=None)
    await provider.attach_volume(volume.id, web1.id, fence=None)
    new = await provider.rebuild(web1.id, fence=None)
    (left,) = await provider.list_volumes()
    assert left.droplet_id is None
    assert (await provider.attach_volume(volume.id, new.id, fence=None)).droplet_id == new.id


async def test_volume_actions_are_fenced_and_checked(volumed: dict[str, Any]) -> None:
    provider = provider_on(volumed)
    web1 = await provider.create("web1", "s-1", tags=[], user_data="", fence=None)
    volume = await provider.create_volume("data", 2, fence=None)
    await provider.attach_volume(volume.id, web1.id, fence=Fence("recovery", 7))
    with pytest.raises(StaleFence):
        await provider.detach_volume(volume.id, fence=Fence("recovery", 6))
    assert (await provider.list_volumes())[0].droplet_id == web1.id  # the stale one did nothing
    await provider.detach_volume(volume.id, fence=Fence("recovery", 8))

    with pytest.raises(ProviderError, match="a volume of that name exists"):
        await provider.create_volume("data", 1, fence=None)
    for bad in ("Data", "9lives", "a" * 65, "with_underscore"):
        with pytest.raises(ProviderError, match="lowercase letters"):
            await provider.create_volume(bad, 1, fence=None)
    with pytest.raises(ProviderError, match="whole number of GB"):
        await provider.create_volume("other", 0, fence=None)
    assert (await provider.resize_volume(volume.id, 5, fence=None)).size_gb == 5
    with pytest.raises(ProviderError, match="never shrink"):
        await provider.resize_volume(volume.id, 4, fence=None)

    await provider.delete_volume(volume.id, fence=None)
    assert not provider.mount_path("data").exists()
    with pytest.raises(VolumeNotFound):
        await provider.delete_volume(volume.id, fence=None)


async def test_a_volume_made_again_under_a_kept_name_finds_its_data(
    volumed: dict[str, Any],
) -> None:
    first = provider_on(volumed)
    volume = await first.create_volume("data", 1, fence=None)
    (first.mount_path("data") / "rows").write_text("kept")
    # `meshctl down` without --delete-data: the account goes, the directory stays.
    (Path(volumed["dir"]) / "account.json").unlink()
    again = await provider_on(volumed).create_volume("data", 1, fence=None)
    assert again.name == volume.name and again.droplet_id is None
    assert (first.mount_path("data") / "rows").read_text() == "kept"
