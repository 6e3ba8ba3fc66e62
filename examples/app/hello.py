"""A tiny service for the demo, standard library only.

Web mode (default): serves `GET /health` (JSON, touching nothing else) and `GET /` (a page
naming its project, environment and service) on SERVICE_HOST:SERVICE_PORT. Each `GET /`
counts a visit in the instance's PostgreSQL and redis when it was given their passwords
(visits.py beside this file) and shows both totals, or why a store is unavailable.
`--port-from VAR` listens on the port in another variable (the demo's stand-in database and
redis use DB_PORT and REDIS_PORT; they count nothing).
It prints a line at start and one per request other than `/health` (see `meshctl logs`).
Worker mode (`--worker`): no port; logs a line every 30 seconds. `--hang` makes `/health`
never answer (to show an unhealthy instance being restarted).
"""

from __future__ import annotations

import argparse
import html
import json
import os
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def identity() -> dict[str, str]:
    return {
        "service": os.environ.get("SERVICE_NAME", "hello"),
        "project": os.environ.get("PROJECT", ""),
        "environment": os.environ.get("ENVIRONMENT", ""),
        "host": os.environ.get("SERVICE_HOST", "127.0.0.1"),
    }


def settings() -> str:
    """The page's lines about what runs and its configuration: the release note beside this
    file (`release.txt`: edit it, push, see it change), GREETING (`meshctl config` or the
    env_template) and which secrets this instance was given as files (names only)."""
    lines = []
    note = Path(__file__).with_name("release.txt")
    if note.is_file():
        lines.append(f"<p>release: {html.escape(note.read_text().strip())}</p>")
    if os.environ.get("GREETING"):
        lines.append(f"<p>{html.escape(os.environ['GREETING'])}</p>")
    names = sorted(
        name[: -len("_FILE")].lower()
        for name, path in os.environ.items()
        if name.endswith("_FILE") and os.access(path, os.R_OK)
    )
    if names:
        lines.append(f"<p>secrets given: {', '.join(names)}</p>")
    return "\n".join(lines) + ("\n" if lines else "")


def visit_lines() -> str:
    """The page's lines about this visit, counted in the datastores. Imported here, not at the
    top: `/health` and a start never depend on visits.py, which some copies of the app lack."""
    try:
        from visits import count_visit
    except ImportError:
        return "<p>visits: not counted (no visits.py beside hello.py)</p>\n"
    return "".join(f"<p>{html.escape(line)}</p>\n" for line in count_visit().lines())


class Handler(BaseHTTPRequestHandler):
    hang = False
    count_visits = False

    def do_GET(self) -> None:  # noqa: N802 - the standard library's name
        path = self.path.split("?", 1)[0]
        if path.rstrip("/").endswith("/health"):
            if self.hang:
                time.sleep(3600)
            self._send(200, "application/json", json.dumps({"status": "ok", **identity()}))
            return
        me = identity()
        print(f"{me['service']}: GET {self.path} from {self.client_address[0]}", flush=True)
        page = (
            f"<!doctype html><title>{me['service']}</title>"
            f"<h1>{me['service']}</h1><p>project {me['project']}, environment "
            f"{me['environment']}, served from {me['host']} by meshd.</p>\n"
            f"{settings()}"
            f"{visit_lines() if self.count_visits and path == '/' else ''}"
        )
        self._send(200, "text/html; charset=utf-8", page)

    def _send(self, status: int, content_type: str, body: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--worker", action="store_true", help="run without a port")
    parser.add_argument("--port-from", default="SERVICE_PORT", help="variable holding the port")
    parser.add_argument("--hang", action="store_true", help="never answer /health (for tests)")
    args = parser.parse_args()
    if args.worker:
        while True:
            print(f"{identity()['service']}: working", flush=True)
            time.sleep(30)
    host = os.environ.get("SERVICE_HOST", "127.0.0.1")
    port = int(os.environ[args.port_from])
    Handler.hang = args.hang
    # A stand-in datastore has the store's password too, but its DB_PORT is its own.
    Handler.count_visits = args.port_from == "SERVICE_PORT"
    print(f"{identity()['service']}: listening on {host}:{port}", flush=True)
    ThreadingHTTPServer((host, port), Handler).serve_forever()


if __name__ == "__main__":
    main()
