"""The droplet metadata service: what a droplet learns about itself over HTTP.

DigitalOcean serves it at 169.254.169.254; here it listens on the machine's end of both
bridges (`Networks.gateway`, `Networks.private_gateway`), and a droplet finds it in its boot
processes' `METADATA_URL`. The asker is known by its source address, as on DigitalOcean: the
document comes from a lookup the API provides (None: nobody has that address, 404).

`/metadata/v1.json` is the whole document; `/metadata/v1/<path>` one value as text, or a
directory listing (one name a line, sub-directories with a trailing `/`) for paths ending in
`/`. The path names differ from the document's keys the way DigitalOcean's do (`droplet_id`
is `id`, `user_data` is `user-data`, an interface's `ip_address` is `address`); `answer` owns
that mapping and is pure.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)

Document = dict[str, Any]
Lookup = Callable[[str], Document | None]

TOP_NAMES = {"droplet_id": "id"}  # other top-level keys: '_' becomes '-' ...
KEEP_UNDERSCORE = frozenset({"floating_ip", "reserved_ip"})  # ... except these
ADDRESS_PARENTS = frozenset({"ipv4", "ipv6", "anchor_ipv4"})  # in interfaces: ip_address
LEAF_LISTS = frozenset({"public-keys", "nameservers"})  # lists read as one text, not a dir


def answer(document: Document, path: str) -> str | None:
    """The text DigitalOcean serves at `/metadata/v1/<path>`, or None (404)."""
    node: Any = tree(document)
    parts = [part for part in path.split("/") if part]
    for part in parts:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    directory = path == "" or path.endswith("/")
    if isinstance(node, dict):
        return _listing(node) if directory else None
    if isinstance(node, list):
        if _is_tree_list(node):
            return "\n".join(f"{index}/" for index in range(len(node))) if directory else None
        return "\n".join(_text(item) for item in node)
    return None if directory else _text(node)


def tree(document: Document) -> dict[str, Any]:
    """The document with DigitalOcean's path names; absent (None) values left out."""
    named: dict[str, Any] = {}
    for key, value in document.items():
        if value is None:
            continue
        if key in TOP_NAMES:
            name = TOP_NAMES[key]
        elif key in KEEP_UNDERSCORE:
            name = key
        else:
            name = key.replace("_", "-")
        named[name] = _interfaces(value) if key == "interfaces" else value
    return named


def _interfaces(value: Any) -> Any:
    """Rename `ip_address` to `address` in every interface's address sections."""
    if not isinstance(value, dict):
        return value
    renamed: dict[str, Any] = {}
    for kind, interfaces in value.items():
        if not isinstance(interfaces, list):
            renamed[kind] = interfaces
            continue
        renamed[kind] = [
            {
                key: (
                    {("address" if k == "ip_address" else k): v for k, v in section.items()}
                    if key in ADDRESS_PARENTS and isinstance(section, dict)
                    else section
                )
                for key, section in interface.items()
            }
            if isinstance(interface, dict)
            else interface
            for interface in interfaces
        ]
    return renamed


def _listing(node: dict[str, Any]) -> str:
    names = []
    for name, value in node.items():
        if value is None:
            continue
        is_directory = isinstance(value, dict) or (
            isinstance(value, list) and (_is_tree_list(value) or name not in LEAF_LISTS)
        )
        names.append(f"{name}/" if is_directory else name)
    return "\n".join(names)


def _is_tree_list(value: list[Any]) -> bool:
    return any(isinstance(item, dict | list) for item in value)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


def make_app(lookup: Lookup) -> web.Application:
    """The service's routes; the document comes from `lookup(source address)`."""

    def document_of(request: web.Request) -> Document:
        document = lookup(request.remote or "")
        if document is None:
            raise web.HTTPNotFound(text="no droplet has this address\n")
        return document

    async def whole(request: web.Request) -> web.Response:
        return web.json_response(document_of(request))

    async def one(request: web.Request) -> web.Response:
        path = request.path.removeprefix("/metadata/v1").removeprefix("/")
        text = answer(document_of(request), path)
        if text is None:
            raise web.HTTPNotFound(text="not found\n")
        return web.Response(text=text)

    app = web.Application()
    app.router.add_get("/metadata/v1.json", whole)
    app.router.add_get("/metadata/v1", one)
    app.router.add_get("/metadata/v1/{path:.*}", one)
    return app


class MetadataServer:
    """The service listening on given addresses, all on one port."""

    def __init__(self, lookup: Lookup) -> None:
        self._runner = web.AppRunner(make_app(lookup), access_log=None)
        self.port = 0

    async def start(self, addresses: Sequence[str], port: int = 0) -> int:
        """Listen on every address, on `port` (0: the port the first address got); the port."""
        await self._runner.setup()
        for address in addresses:
            site = web.TCPSite(self._runner, address, port or self.port)
            await site.start()
            if not self.port:
                self.port = int(self._runner.addresses[0][1])
        log.info("Metadata service listening. addresses=%s port=%d", addresses, self.port)
        return self.port

    async def close(self) -> None:
        await self._runner.cleanup()
