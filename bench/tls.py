"""HTTPS on the entry point against a real ACME CA. Prints one JSON object.

A local mesh of three droplets (process runtime) publishes one project whose prod has two
domains, its certificates from Debian's pebble (`PEBBLE_VA_NOSLEEP=1`; pebble's DNS answers
the entry address). Measured, loopback only:

- `first_certificate_s`: from the end of `publish --wait` to the first good HTTPS answer
  (the role's round, the order, validation through the entry, sealing the key, nginx reload);
- `renewal_s`: from `meshctl certs renew` to the first answer with the new certificate, and
  `renewal_failed`: requests of a loop (every 20 ms) that failed meanwhile;
- `https_ms_p50` / `http_ms_p50`: a GET through the entry over a new TLS connection and over
  plain HTTP (200 each), the same backend behind;
- `failover_gap_s`: from SIGKILL of the lb holder to the first good HTTPS answer from the
  next one, and `failover_same_certificate`;
- `orders`: certificates pebble issued (one for the mesh, one for the renewal).

Needs nginx and pebble (Debian nginx-light, pebble). Run: `.venv/bin/python bench/tls.py`.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.mesh.test_tls import Answer, http_head, https_get, https_load, tls_mesh  # noqa: E402

DOMAINS = ["shop.meshd.test", "www.shop.meshd.test"]
SAMPLES = 200


def served(target: tuple[str, int, str, str]) -> Answer | None:
    try:
        answer = https_get(*target)
    except (OSError, ValueError):
        return None
    return answer if answer.status == 200 else None


def until(check: Callable[[], object], timeout: float) -> float:
    """Seconds until `check()` is true (polled every 20 ms)."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise TimeoutError("not within the bench's limit")
        time.sleep(0.02)
    return time.monotonic() - start


def main() -> None:
    with (
        tempfile.TemporaryDirectory() as scratch,
        tls_mesh(Path(scratch), "shop", 3, DOMAINS) as setup,
    ):
        mesh, pebble, target = setup.mesh, setup.pebble, setup.target
        address = target[0]
        first_s = until(lambda: served(target), 180)
        first = https_get(*target).certificate

        with https_load(target) as load:
            mesh.ok("certs", "renew", "shop", "prod")
            renewal_s = until(lambda: load.seen and load.seen[-1] != first, 120)
        renewed = load.seen[-1]

        https, http = [], []
        for _ in range(SAMPLES):
            start = time.perf_counter()
            https_get(*target)
            https.append((time.perf_counter() - start) * 1000)
            start = time.perf_counter()
            http_head(address, setup.http_port, "shop-prod.invalid", "/shop-prod/backend/")
            http.append((time.perf_counter() - start) * 1000)

        holder = mesh.status()["lb"]
        group = next(d["pgid"] for d in mesh.account["droplets"].values() if d["name"] == holder)
        os.killpg(group, signal.SIGKILL)
        gap_s = until(lambda: served(target), 60)
        after = https_get(*target).certificate
        result = {
            "first_certificate_s": round(first_s, 2),
            "renewal_s": round(renewal_s, 2),
            "renewal_failed": len(load.failed),
            "renewal_requests": load.sent,
            "https_ms_p50": round(statistics.median(https), 2),
            "http_ms_p50": round(statistics.median(http), 2),
            "failover_gap_s": round(gap_s, 2),
            "failover_same_certificate": after == renewed,
            "orders": pebble.issued(),
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
