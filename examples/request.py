"""One request to a running instance of the demo: finds hostomatic's prod backend in
`meshctl status --json` and prints its page. Used by `make demo`."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

MESHCTL = str(Path(sys.executable).parent / "meshctl")


def main() -> None:
    status = json.loads(
        subprocess.run([MESHCTL, "status", "--json"], capture_output=True, check=True).stdout
    )
    addresses = {d["name"]: d["address"] for d in status["droplets"]}
    backend = next(
        s
        for s in status["services"]
        if (s["project"], s["env"], s["service"]) == ("hostomatic", "prod", "backend")
    )
    url = f"http://{addresses[backend['droplets'][0]]}:{backend['port']}/"
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - the demo's own URL
        print(f"GET {url}\n{response.read().decode()}")


if __name__ == "__main__":
    main()
