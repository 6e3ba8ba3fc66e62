"""What every resource's handlers share: the world they act on, the request's JSON, answers
and errors in DigitalOcean's shapes, and pagination."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from aiohttp import web

if TYPE_CHECKING:
    from sim.digitalocean.world import World

WORLD: web.AppKey[World] = web.AppKey("world")
JSON_BODY: web.RequestKey[Any] = web.RequestKey("json_body")
K = TypeVar("K")
V = TypeVar("V")
MAX_PER_PAGE = 200
DEFAULT_PER_PAGE = 20


class ApiError(Exception):
    """An answer in DigitalOcean's error shape: `{"id": ..., "message": ...}`."""

    def __init__(self, status: int, error_id: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_id = error_id
        self.message = message

    def response(self) -> web.Response:
        return reply({"id": self.error_id, "message": self.message}, self.status)


def not_found(what: str = "The resource you were accessing could not be found.") -> ApiError:
    return ApiError(404, "not_found", what)


def unprocessable(message: str) -> ApiError:
    return ApiError(422, "unprocessable_entity", message)


def existing(records: Mapping[K, V], key: K) -> V:
    """The record under `key`, or the API's 404."""
    record = records.get(key)
    if record is None:
        raise not_found()
    return record


def world_of(request: web.Request) -> World:
    return request.app[WORLD]


class Body(dict[str, Any]):
    """A request's JSON object. The description leaves some bodies optional, or untyped, so
    a field a handler needs may be missing: that is the request's fault (422), not ours."""

    def __missing__(self, key: str) -> Any:
        raise unprocessable(f"The request needs the field {key!r}.")


def body_of(request: web.Request) -> Body:
    """The request's JSON object (parsed and checked by the middleware); empty without one."""
    body = request.get(JSON_BODY)
    return Body(body if isinstance(body, dict) else {})


def reply(data: Any, status: int = 200) -> web.Response:
    if status == 204:
        return web.Response(status=204)
    return web.Response(
        status=status, body=json.dumps(data).encode(), content_type="application/json"
    )


def no_content() -> web.Response:
    return web.Response(status=204)


def int_path(request: web.Request, name: str) -> int:
    try:
        return int(request.match_info[name])
    except ValueError:
        raise not_found() from None


def page(request: web.Request, key: str, items: list[Any]) -> dict[str, Any]:
    """One page of `items` under `key`, with `links.pages` and `meta.total` as the API has
    them (`per_page` defaults to 20, at most 200; `page` from 1)."""
    per_page = min(MAX_PER_PAGE, int(request.query.get("per_page", DEFAULT_PER_PAGE)))
    number = int(request.query.get("page", 1))
    last = max(1, -(-len(items) // per_page))
    start = (number - 1) * per_page
    pages: dict[str, str] = {}

    def link(n: int) -> str:
        return str(request.url.update_query(page=str(n), per_page=str(per_page)))

    if number > 1:
        pages["first"] = link(1)
        pages["prev"] = link(min(number - 1, last))
    if number < last:
        pages["next"] = link(number + 1)
        pages["last"] = link(last)
    return {
        key: items[start : start + per_page],
        "links": {"pages": pages} if pages else {},
        "meta": {"total": len(items)},
    }
