"""What every account sees: regions, sizes (meshd's own table of DigitalOcean's list prices)
and the distribution images a droplet can start from."""

from __future__ import annotations

from typing import Any

from meshd.core.sizes import SIZES

REGIONS = {
    "nyc1": "New York 1",
    "nyc3": "New York 3",
    "sfo3": "San Francisco 3",
    "ams3": "Amsterdam 3",
    "fra1": "Frankfurt 1",
    "lon1": "London 1",
    "sgp1": "Singapore 1",
    "tor1": "Toronto 1",
    "blr1": "Bangalore 1",
    "syd1": "Sydney 1",
}
REGION_FEATURES = ["backups", "ipv6", "metadata", "install_agent", "storage", "image_transfer"]
HOURS_A_MONTH = 672  # DigitalOcean bills hourly up to 672 hours, the monthly price

# id, slug, name, distribution, GB used by a fresh droplet from it
DISTRIBUTIONS = [
    (100000001, "debian-12-x64", "12 x64", "Debian", 2.5),
    (100000002, "ubuntu-24-04-x64", "24.04 (LTS) x64", "Ubuntu", 3.0),
    (100000003, "ubuntu-22-04-x64", "22.04 (LTS) x64", "Ubuntu", 2.8),
]
IMAGES_CREATED_AT = "2026-01-01T00:00:00Z"


def size_document(slug: str) -> dict[str, Any]:
    size = SIZES[slug]
    return {
        "slug": slug,
        "memory": size.memory_mb,
        "vcpus": size.vcpus,
        "disk": size.disk_gb,
        "transfer": max(0.5, size.memory_mb / 1024),
        "price_monthly": size.monthly_usd,
        "price_hourly": round(size.monthly_usd / HOURS_A_MONTH, 5),
        "regions": sorted(REGIONS),
        "available": True,
        "description": "Basic" if slug.startswith("s-") else "Premium",
        "disk_info": [{"type": "local", "size": {"amount": size.disk_gb, "unit": "gib"}}],
    }


def sizes() -> list[dict[str, Any]]:
    return [size_document(slug) for slug in SIZES]


def region_document(slug: str) -> dict[str, Any]:
    return {
        "slug": slug,
        "name": REGIONS[slug],
        "features": REGION_FEATURES,
        "available": True,
        "sizes": list(SIZES),
    }


def regions() -> list[dict[str, Any]]:
    return [region_document(slug) for slug in REGIONS]


def distribution_images() -> list[dict[str, Any]]:
    return [
        {
            "id": image_id,
            "name": name,
            "type": "base",
            "distribution": distribution,
            "slug": slug,
            "public": True,
            "regions": sorted(REGIONS),
            "created_at": IMAGES_CREATED_AT,
            "min_disk_size": 10,
            "size_gigabytes": used,
            "description": f"{distribution} {name}",
            "tags": [],
            "status": "available",
            "error_message": "",
        }
        for image_id, slug, name, distribution, used in DISTRIBUTIONS
    ]


def size_slugs() -> list[str]:
    return list(SIZES)
