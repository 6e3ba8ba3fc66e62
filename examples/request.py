"""One request through the mesh's entry point, as a visitor would make it: finds the entry
URL in `meshctl status --json` and prints hostomatic's prod backend page from
`<entry>/hostomatic-prod/backend/`. Used by `make demo`. Without a load balancer (nginx not
installed) it says so and asks one instance directly."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

MESHCTL = str(Path(sys.executable).parent / "meshctl")
WAIT_S = 15.0


def fetch(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - the demo's URL
            return str(response.read().decode())
    except OSError:
        return None


def main() -> None:
    status = json.loads(
        subprocess.run([MESHCTL, "status", "--json"], capture_output=True, check=True).stdout
    )
    url = f"{status['entry_url']}/hostomatic-prod/backend/"
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        page = fetch(url)
        if page is not None:
            print(f"GET {url}\n{page}")
            return
        time.sleep(0.5)
    addresses = {d["name"]: d["address"] for d in status["droplets"]}
    backend = next(
        s
        for s in status["services"]
        if (s["project"], s["env"], s["service"]) == ("hostomatic", "prod", "backend")
    )
    direct = f"http://{addresses[backend['droplets'][0]]}:{backend['port']}/"
    print(
        f"The entry point {status['entry_url']} does not answer (is nginx installed? "
        "Debian/Ubuntu: apt-get install nginx-light; see `meshctl events`). One instance:"
    )
    print(f"GET {direct}\n{fetch(direct)}")


if __name__ == "__main__":
    main()
