"""OpenSearch through its `_bulk` API (one request per batch of documents, NDJSON of `index`
actions with the documents' ids), with aiohttp. A bulk answer may be a success with failed
items: those refused for lack of room or time (429, 5xx) are sent again, others (a mapping
conflict) are dropped, counted and said, since sending them again cannot help."""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

import aiohttp

from plugins.logsinks import OpenSearchSettings, SinkError

log = logging.getLogger(__name__)
TIMEOUT_S = 30.0


class OpenSearchSink:
    def __init__(self, settings: OpenSearchSettings, password: str | None) -> None:
        self.settings = settings
        self._headers = {"Content-Type": "application/x-ndjson"}
        if settings.user:
            login = f"{settings.user}:{password or ''}".encode()
            self._headers["Authorization"] = "Basic " + base64.b64encode(login).decode()
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S))
        self.rejected = 0  # documents refused for good

    async def send(self, documents: list[tuple[str, dict[str, Any]]]) -> None:
        if not documents:
            return
        lines = []
        for doc_id, document in documents:
            lines.append(json.dumps({"index": {"_index": self.settings.index, "_id": doc_id}}))
            lines.append(json.dumps(document))
        body = ("\n".join(lines) + "\n").encode()
        url = f"{self.settings.url.rstrip('/')}/_bulk"
        try:
            async with self._http.post(url, data=body, headers=self._headers) as response:
                text = await response.text()
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as err:
            raise SinkError(f"OpenSearch at {self.settings.url} not reached: {err}") from None
        if status == 401:
            raise SinkError("OpenSearch refused the login (mesh secret opensearch_password)")
        if status >= 400:
            raise SinkError(f"OpenSearch answered {status}: {text[:200]}")
        try:
            answer = json.loads(text)
        except ValueError:
            raise SinkError(f"OpenSearch answered {status} with no JSON: {text[:200]}") from None
        self._check_items(answer)

    def _check_items(self, answer: dict[str, Any]) -> None:
        if not answer.get("errors"):
            return
        again, refused = 0, []
        for item in answer.get("items", []):
            result = next(iter(item.values()))
            status = int(result.get("status", 200))
            if status == 429 or status >= 500:
                again += 1
            elif status >= 400:
                refused.append(str(result.get("error", {}).get("reason", status)))
        if refused:
            self.rejected += len(refused)
            log.warning("OpenSearch refused documents; dropped. count=%d first=%s",
                        len(refused), refused[0])  # fmt: skip
        if again:
            raise SinkError(f"OpenSearch could not take {again} documents now; sending again")

    async def close(self) -> None:
        await self._http.close()
