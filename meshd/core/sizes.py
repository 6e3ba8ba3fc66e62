"""DigitalOcean's standard droplet sizes: memory, vCPUs, disk and monthly price by slug.

The table is what the CSV is checked against before anything is published, so that a typo
is caught on the operator's machine rather than by a failed API call halfway through a plan.
Prices are DigitalOcean's list prices in USD per month.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass

# Memory that every droplet keeps for the OS, nats-server and meshd.
SYSTEM_RESERVED_MB = 256


@dataclass(frozen=True, slots=True)
class DropletSize:
    slug: str
    memory_mb: int
    vcpus: int
    disk_gb: int
    monthly_usd: float

    @property
    def allocatable_mb(self) -> int:
        """Memory left for services once the system's share is taken."""
        return max(0, self.memory_mb - SYSTEM_RESERVED_MB)

    @property
    def rank(self) -> tuple[int, int, float, str]:
        """Order used to pick "the largest" size: memory, then vCPUs."""
        return (self.memory_mb, self.vcpus, self.monthly_usd, self.slug)


def _size(slug: str, memory_mb: int, vcpus: int, disk_gb: int, usd: float) -> DropletSize:
    return DropletSize(slug, memory_mb, vcpus, disk_gb, usd)


SIZES: dict[str, DropletSize] = {
    s.slug: s
    for s in (
        # Basic (regular SSD)
        _size("s-1vcpu-512mb-10gb", 512, 1, 10, 4.0),
        _size("s-1vcpu-1gb", 1024, 1, 25, 6.0),
        _size("s-1vcpu-2gb", 2048, 1, 50, 12.0),
        _size("s-2vcpu-2gb", 2048, 2, 60, 18.0),
        _size("s-2vcpu-4gb", 4096, 2, 80, 24.0),
        _size("s-4vcpu-8gb", 8192, 4, 160, 48.0),
        _size("s-8vcpu-16gb", 16384, 8, 320, 96.0),
        # Basic premium AMD
        _size("s-1vcpu-1gb-amd", 1024, 1, 25, 7.0),
        _size("s-1vcpu-2gb-amd", 2048, 1, 50, 14.0),
        _size("s-2vcpu-2gb-amd", 2048, 2, 60, 21.0),
        _size("s-2vcpu-4gb-amd", 4096, 2, 80, 28.0),
        _size("s-2vcpu-8gb-amd", 8192, 2, 100, 42.0),
        _size("s-4vcpu-8gb-amd", 8192, 4, 160, 56.0),
        _size("s-4vcpu-16gb-amd", 16384, 4, 200, 84.0),
        _size("s-8vcpu-16gb-amd", 16384, 8, 320, 112.0),
        _size("s-8vcpu-32gb-amd", 32768, 8, 400, 168.0),
        # Basic premium Intel
        _size("s-1vcpu-1gb-intel", 1024, 1, 25, 7.0),
        _size("s-1vcpu-2gb-intel", 2048, 1, 50, 14.0),
        _size("s-2vcpu-2gb-intel", 2048, 2, 60, 21.0),
        _size("s-2vcpu-4gb-intel", 4096, 2, 80, 28.0),
        _size("s-4vcpu-8gb-intel", 8192, 4, 160, 56.0),
        _size("s-8vcpu-16gb-intel", 16384, 8, 320, 112.0),
        # General purpose, CPU-optimized, memory-optimized
        _size("g-2vcpu-8gb", 8192, 2, 25, 63.0),
        _size("g-4vcpu-16gb", 16384, 4, 50, 126.0),
        _size("g-8vcpu-32gb", 32768, 8, 100, 252.0),
        _size("c-2", 4096, 2, 25, 42.0),
        _size("c-4", 8192, 4, 50, 84.0),
        _size("c-8", 16384, 8, 100, 168.0),
        _size("m-2vcpu-16gb", 16384, 2, 50, 84.0),
        _size("m-4vcpu-32gb", 32768, 4, 100, 168.0),
    )
}


def suggest_sizes(slug: str, limit: int = 3) -> list[str]:
    """The valid slugs closest to a wrong one, for error messages."""
    close = difflib.get_close_matches(slug.strip().lower(), SIZES, n=limit, cutoff=0.6)
    return close or ["s-1vcpu-1gb", "s-2vcpu-4gb", "s-4vcpu-8gb"]


def largest(slugs: list[str]) -> DropletSize:
    """The largest of known sizes by memory, then vCPUs (ties broken by price, then slug)."""
    return max((SIZES[s] for s in slugs), key=lambda size: size.rank)


def roomiest(sizes: Mapping[str, str], reserved_mb: Mapping[str, int]) -> str | None:
    """The droplet with the most memory left once its services' reservations are taken
    (ties: by name), from each droplet's size slug; None when none is known."""
    free = {
        name: SIZES[slug].allocatable_mb - reserved_mb.get(name, 0)
        for name, slug in sizes.items()
        if slug in SIZES
    }
    return max(sorted(free), key=lambda name: free[name], default=None)
