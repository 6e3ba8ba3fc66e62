"""An OpenSearch stand-in: the part of the REST API the `logs` role uses (`_bulk`) and the part a
test reads with (`_search`, `_count`), answering as OpenSearch 2.x documents them
(opensearch.org/docs/latest/api-reference/document-apis/bulk/ and .../search-apis/search/).
No OpenSearch server runs on the test machine (neither Debian nor PyPI ships one).

What it models: NDJSON bulk bodies that must end with a newline; `index`, `create` and `delete`
actions, the index named in the action or the path; `_id` given or generated; `_version`
counting every write of an id and `result` created/updated (a second delivery of a document
replaces it); HTTP Basic authentication answering 401 with the security plugin's challenge; a
missing index answering 404 `index_not_found_exception`; documents searchable at once (real
OpenSearch refreshes every second). `_search` takes `match_all`, `term` and `match` (one field,
exact value) queries, `size` and `from`, and sorts by `_id` when asked `"sort": ["_id"]`.

Faults for tests: `refuse_next(n, status)` answers the next n bulk requests with that status;
`refuse_items(n)` takes a bulk request but refuses its first n items with 429
(`es_rejected_execution_exception`), as a node whose write queue is full does; `hold` delays
every bulk answer after it stored the documents (a client cut off meanwhile sends them again).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Stored:
    source: dict[str, Any]
    version: int = 1
    seq_no: int = 0


@dataclass
class OpenSearchStandIn:
    """Indices in memory; `start()` serves them on 127.0.0.1 from a thread of its own."""

    user: str | None = None
    password: str | None = None
    indices: dict[str, dict[str, Stored]] = field(default_factory=dict)
    bulk_requests: int = 0
    unauthorized: int = 0  # requests refused for their credentials
    writes: int = 0  # every index/create item taken, a replacement too
    hold: float = 0.0
    _refusals: list[int] = field(default_factory=list)
    _refused_items: int = 0
    _seq: itertools.count[int] = field(default_factory=itertools.count)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _loop: asyncio.AbstractEventLoop | None = None
    _runner: web.AppRunner | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- test controls ---------------------------------------------------------------------

    def refuse_next(self, count: int, status: int = 503) -> None:
        with self._lock:
            self._refusals += [status] * count

    def refuse_items(self, count: int) -> None:
        with self._lock:
            self._refused_items += count

    def documents(self, index: str) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {doc_id: s.source for doc_id, s in self.indices.get(index, {}).items()}

    # --- serving ---------------------------------------------------------------------------

    def start(self) -> OpenSearchStandIn:
        ready = threading.Event()
        threading.Thread(target=self._serve, args=(ready,), daemon=True).start()
        if not ready.wait(10):
            raise RuntimeError("the OpenSearch stand-in did not start")
        return self

    def stop(self) -> None:
        loop, runner = self._loop, self._runner
        if loop is not None and runner is not None:
            asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)

    def _serve(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        app = web.Application(middlewares=[self._authenticated], client_max_size=100 * 2**20)
        app.router.add_route("*", "/_bulk", self._bulk)
        app.router.add_route("*", "/{index}/_bulk", self._bulk)
        app.router.add_route("*", "/{index}/_search", self._search)
        app.router.add_route("*", "/{index}/_count", self._count)
        runner = web.AppRunner(app, access_log=None)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", self.port)
        loop.run_until_complete(site.start())
        self._runner = runner
        self.port = runner.addresses[0][1]
        ready.set()
        loop.run_forever()

    @web.middleware
    async def _authenticated(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if self.user is None:
            return await handler(request)
        wanted = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        if request.headers.get("Authorization", "") != f"Basic {wanted}":
            with self._lock:
                self.unauthorized += 1
            return web.Response(
                status=401,
                text="Unauthorized",
                headers={"WWW-Authenticate": 'Basic realm="OpenSearch Security"'},
            )
        return await handler(request)

    async def _bulk(self, request: web.Request) -> web.Response:
        if request.method not in ("POST", "PUT"):
            return _error(
                405, "method_not_allowed", f"Incorrect HTTP method for uri [{request.path}]"
            )
        kind = request.headers.get("Content-Type", "").split(";")[0].strip()
        if kind not in ("application/x-ndjson", "application/json"):
            return _error(406, "content_type", f"Content-Type header [{kind}] is not supported")
        with self._lock:
            self.bulk_requests += 1
            refused = self._refusals.pop(0) if self._refusals else None
        if refused is not None:
            return _error(refused, "unavailable_exception", "refused by the stand-in's fault")
        body = await request.text()
        if not body.endswith("\n"):
            return _error(
                400,
                "illegal_argument_exception",
                "The bulk request must be terminated by a newline [\\n]",
            )
        started = time.monotonic()
        try:
            items = self._apply(body.splitlines(), request.match_info.get("index"))
        except ValueError as err:
            return _error(400, "illegal_argument_exception", str(err))
        if self.hold:
            await asyncio.sleep(self.hold)
        answer = {
            "took": int((time.monotonic() - started) * 1000),
            "errors": any(next(iter(i.values()))["status"] >= 300 for i in items),
            "items": items,
        }
        return web.json_response(answer, content_type="application/json")

    def _apply(self, lines: list[str], path_index: str | None) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        lines = [line for line in lines if line.strip()]
        position = 0
        with self._lock:
            while position < len(lines):
                action = json.loads(lines[position])
                if not isinstance(action, dict) or len(action) != 1:
                    raise ValueError(f"Malformed action/metadata line [{position + 1}]")
                verb, meta = next(iter(action.items()))
                if verb not in ("index", "create", "delete"):
                    raise ValueError(f"Unknown action [{verb}] at line [{position + 1}]")
                index = meta.get("_index") or path_index
                if not index:
                    raise ValueError("Validation Failed: 1: index is missing;")
                doc_id = meta.get("_id") or uuid.uuid4().hex[:20]
                source = None
                if verb != "delete":
                    position += 1
                    if position >= len(lines):
                        raise ValueError("The bulk request must be terminated by a newline [\\n]")
                    source = json.loads(lines[position])
                position += 1
                items.append({verb: self._item(verb, index, doc_id, source)})
        return items

    def _item(
        self, verb: str, index: str, doc_id: str, source: dict[str, Any] | None
    ) -> dict[str, Any]:
        head = {"_index": index, "_id": doc_id}
        if self._refused_items and verb != "delete":
            self._refused_items -= 1
            return head | {
                "status": 429,
                "error": {
                    "type": "es_rejected_execution_exception",
                    "reason": "rejected execution of coordinating operation",
                },
            }
        documents = self.indices.setdefault(index, {})
        found = documents.get(doc_id)
        seq_no = next(self._seq)
        shards = {"total": 2, "successful": 1, "failed": 0}
        if verb == "delete":
            if found is None:
                return head | {"_version": 1, "result": "not_found", "status": 404}
            del documents[doc_id]
            return head | {"_version": found.version + 1, "result": "deleted", "_shards": shards,
                           "_seq_no": seq_no, "_primary_term": 1, "status": 200}  # fmt: skip
        if verb == "create" and found is not None:
            return head | {
                "status": 409,
                "error": {
                    "type": "version_conflict_engine_exception",
                    "reason": f"[{doc_id}]: version conflict, document already exists",
                    "index": index,
                },
            }
        assert source is not None
        self.writes += 1
        version = found.version + 1 if found else 1
        documents[doc_id] = Stored(source, version, seq_no)
        return head | {"_version": version, "result": "updated" if found else "created",
                       "_shards": shards, "_seq_no": seq_no, "_primary_term": 1,
                       "status": 200 if found else 201}  # fmt: skip

    async def _search(self, request: web.Request) -> web.Response:
        index = request.match_info["index"]
        query = await _query(request)
        with self._lock:
            if index not in self.indices:
                return _missing(index)
            hits = [
                (doc_id, s.source)
                for doc_id, s in self.indices[index].items()
                if _matches(query.get("query"), s.source)
            ]
        if query.get("sort") in (["_id"], "_id", [{"_id": "asc"}]):
            hits.sort()
        start = int(query.get("from", 0))
        size = int(query.get("size", 10))
        return web.json_response(
            {
                "took": 1,
                "timed_out": False,
                "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
                "hits": {
                    "total": {"value": len(hits), "relation": "eq"},
                    "max_score": 1.0 if hits else None,
                    "hits": [
                        {"_index": index, "_id": doc_id, "_score": 1.0, "_source": source}
                        for doc_id, source in hits[start : start + size]
                    ],
                },
            }
        )

    async def _count(self, request: web.Request) -> web.Response:
        index = request.match_info["index"]
        query = await _query(request)
        with self._lock:
            if index not in self.indices:
                return _missing(index)
            count = sum(
                _matches(query.get("query"), s.source) for s in self.indices[index].values()
            )
        shards = {"total": 1, "successful": 1, "skipped": 0, "failed": 0}
        return web.json_response({"count": count, "_shards": shards})


async def _query(request: web.Request) -> dict[str, Any]:
    text = await request.text()
    query = json.loads(text) if text.strip() else {}
    if "size" in request.query:
        query["size"] = int(request.query["size"])
    return query if isinstance(query, dict) else {}


def _matches(query: dict[str, Any] | None, source: dict[str, Any]) -> bool:
    if not query or "match_all" in query:
        return True
    for kind in ("term", "match"):
        if kind in query:
            ((name, wanted),) = query[kind].items()
            if isinstance(wanted, dict):
                wanted = wanted.get("value", wanted.get("query"))
            return bool(source.get(name) == wanted)
    raise ValueError(f"the stand-in does not model the query {query}")


def _error(status: int, kind: str, reason: str) -> web.Response:
    cause = {"type": kind, "reason": reason}
    return web.json_response(
        {"error": {"root_cause": [cause], **cause}, "status": status}, status=status
    )


def _missing(index: str) -> web.Response:
    reason = f"no such index [{index}]"
    cause = {"type": "index_not_found_exception", "reason": reason, "index": index,
             "resource.type": "index_or_alias", "resource.id": index}  # fmt: skip
    return web.json_response({"error": {"root_cause": [cause], **cause}, "status": 404}, status=404)
