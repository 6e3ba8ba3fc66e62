"""The local provider's settings, checked (`dir`, `launcher`, `block`, `network`, `volumes`),
and the
checks of what a droplet may be called and tagged."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from plugins.providers import ProviderConfigError, ProviderContext, ProviderError
from protocol import subjects
from protocol.errors import InvalidNameError

_BLOCK = re.compile(r"127\.(\d{1,3})\.(\d{1,3})")
_NETNS_BLOCK = re.compile(r"10\.213\.(\d{1,3})")
NETWORKS = ("loopback", "netns")
SETTINGS = frozenset({"dir", "launcher", "block", "network", "volumes"})
# Run as root, volumes live where the datastores' own users (postgres, redis) can reach them.
SYSTEM_VOLUMES = Path("/var/lib/meshd")
_TAG = re.compile(r"[A-Za-z0-9:_-]{1,255}")


@dataclass(frozen=True, slots=True)
class Settings:
    root: Path  # the account directory
    launcher: list[str]  # argv that powers a droplet on, its directory appended
    block: str | None  # "127.A.B" or "10.213.B"; None: picked when the account is made
    network: str = "loopback"
    volumes: Path | None = None  # the volumes' directories; None: the default (`volumes_dir`)

    def volumes_dir(self, mesh: str) -> Path:
        """As root `/var/lib/meshd/<mesh>/volumes` (0711 parents: the servers' users pass),
        else `<account>/volumes`; never inside a droplet's directory, so never in a snapshot."""
        if self.volumes is not None:
            return self.volumes
        if os.geteuid() == 0:
            return SYSTEM_VOLUMES / mesh / "volumes"
        return self.root / "volumes"


def parse_settings(ctx: ProviderContext) -> Settings:
    """Config: `dir` (account directory), `launcher` (argv list), optional `block`
    ("127.A.B", or "10.213.B" with `network: netns`), `network` and `volumes` (directory)."""
    unknown = sorted(set(ctx.config) - SETTINGS)
    if unknown:
        raise ProviderConfigError("local", f"unknown settings: {', '.join(unknown)}")
    root = ctx.config.get("dir")
    if not isinstance(root, str | os.PathLike) or not str(root):
        raise ProviderConfigError("local", "dir must name the account directory")
    launcher = ctx.config.get("launcher")
    if not isinstance(launcher, list) or not launcher:
        raise ProviderConfigError("local", "launcher must be a non-empty list of arguments")
    if not all(isinstance(arg, str) and arg for arg in launcher):
        raise ProviderConfigError("local", "launcher arguments must be non-empty strings")
    network = ctx.config.get("network", "loopback")
    if network not in NETWORKS:
        raise ProviderConfigError(
            "local", f"network {network!r} is not one of {', '.join(NETWORKS)}"
        )
    if network == "netns" and os.geteuid() != 0:
        raise ProviderConfigError("local", "network namespaces need root")
    block = ctx.config.get("block")
    if block is not None:
        pattern = _NETNS_BLOCK if network == "netns" else _BLOCK
        form = "10.213.B" if network == "netns" else "127.A.B"
        match = pattern.fullmatch(block) if isinstance(block, str) else None
        if match is None or not all(int(part) <= 255 for part in match.groups()):
            raise ProviderConfigError("local", f"block {block!r} is not of the form {form}")
    if not Path("/proc/self/stat").is_file():
        raise ProviderConfigError("local", "needs a Linux /proc to watch droplet processes")
    volumes = ctx.config.get("volumes")
    if volumes is not None and (not isinstance(volumes, str) or not volumes):
        raise ProviderConfigError("local", "volumes must name a directory")
    path = Path(os.fspath(root)).expanduser().absolute()
    return Settings(
        root=path,
        launcher=list(launcher),
        block=block,
        network=network,
        volumes=Path(volumes).expanduser().absolute() if volumes else None,
    )


def check_droplet_args(action: str, name: str, size: str, tags: Sequence[str]) -> None:
    """Refuse a name that is not a DNS label (it becomes a directory name), an empty size and
    tags DigitalOcean would refuse."""
    try:
        subjects.token(name, "droplet")
    except InvalidNameError as err:
        raise ProviderError(action, err.reason) from err
    check_size(action, size)
    if isinstance(tags, str):
        raise ProviderError(action, "tags must be a list of tags, not one string")
    for tag in tags:
        if not isinstance(tag, str) or not _TAG.fullmatch(tag):
            raise ProviderError(action, f"tag {tag!r} is not letters, digits, ':', '_' or '-'")


def check_size(action: str, size: str) -> None:
    if not isinstance(size, str) or not size:
        raise ProviderError(action, "size must be a non-empty string")
