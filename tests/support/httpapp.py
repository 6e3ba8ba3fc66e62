"""A tiny service for runtime tests, run as a script: `python httpapp.py [options]`.

It binds `SERVICE_HOST:SERVICE_PORT` and answers `GET /health` (200, JSON), `GET /` (text
naming `SERVICE_NAME`), `GET /env` (its environment as JSON) and `GET /secret/<name>` (the
SHA-256 of the secret file, never its content). Without `SERVICE_PORT` it is a
worker that only sleeps. Options: `--hang` makes `/health` never answer; `--print-secrets`
prints the names (never the contents) of the files in `SECRETS_DIR`; `--ignore-term` ignores
SIGTERM so that only SIGKILL stops it. Standard library only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    hang = False

    def do_GET(self) -> None:
        if self.path == "/health":
            if self.hang:
                threading.Event().wait()
            self.reply(200, "application/json", json.dumps({"status": "ok"}))
        elif self.path == "/":
            self.reply(200, "text/plain", f"hello from {os.environ.get('SERVICE_NAME', '?')}\n")
        elif self.path == "/env":
            self.reply(200, "application/json", json.dumps(dict(os.environ)))
        elif self.path.startswith("/secret/"):
            name = os.path.basename(self.path)
            try:
                with open(os.path.join(os.environ["SECRETS_DIR"], name), "rb") as file:
                    self.reply(200, "text/plain", hashlib.sha256(file.read()).hexdigest())
            except OSError:
                self.reply(404, "text/plain", "no such secret\n")
        else:
            self.reply(404, "text/plain", "not found\n")

    def reply(self, status: int, content_type: str, body: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hang", action="store_true", help="never answer /health")
    parser.add_argument("--print-secrets", action="store_true", help="print secret file names")
    parser.add_argument("--ignore-term", action="store_true", help="ignore SIGTERM")
    args = parser.parse_args()
    if args.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if args.print_secrets:
        for name in sorted(os.listdir(os.environ["SECRETS_DIR"])):
            print(f"secret file: {name}", flush=True)
    if "SERVICE_PORT" not in os.environ:
        print("worker running", flush=True)
        threading.Event().wait()
    Handler.hang = args.hang
    host, port = os.environ["SERVICE_HOST"], int(os.environ["SERVICE_PORT"])
    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    print(f"listening on {host}:{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
