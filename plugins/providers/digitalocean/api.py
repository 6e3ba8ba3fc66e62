"""DigitalOcean's API through `pydo.aio`, as the provider needs it: one rate budget per token,
no request retried by pydo itself, and each failure sorted into what the caller can do.

- 429: not done; wait as the budget says (`retry-after`, or the hourly reset) and send again.
- not sent at all (no connection): sent again after a jittered backoff, whatever it is;
- 5xx or no answer: a read is sent again after a jittered backoff; a request that changes
  something raises `Uncertain` (it may have been done: a create must be looked up by name and
  tag before it is sent again, or the account gets two droplets).
- any other refusal: `Refused`, with DigitalOcean's status, `id` and message.

The token goes only into the `Authorization` header: no message, log line or error carries it.
An agent's token is read before every request (it is a mesh secret, which arrives after the
agent starts and may be rotated): a new one is used from the next request on.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any

from plugins.providers import ProviderError
from plugins.providers.digitalocean.budget import RateBudget, backoff_s

READ_ATTEMPTS = 6
PER_PAGE = 200
REQUEST_TIMEOUT_S = 30.0
Operation = Callable[..., Awaitable[Any]]
TokenSource = Callable[[], str | None]
NO_TOKEN = "no API token here yet (the mesh secret has not reached this droplet)"


class Uncertain(ProviderError):
    """A request that changes something got no clear answer: it may have been done."""


class Refused(ProviderError):
    """DigitalOcean refused the request (4xx other than 429)."""

    def __init__(self, action: str, status: int, error_id: str, message: str) -> None:
        self.status = status
        self.error_id = error_id
        self.message = message
        super().__init__(action, f"DigitalOcean refused it ({status} {error_id}): {message}")

    @property
    def pending_event(self) -> bool:
        return self.status == 422 and "pending event" in self.message.lower()


class Api:
    """A pydo client with the budget and the failure rules above. `sleep` and `clock` are
    injectable for tests."""

    def __init__(
        self,
        token: str | TokenSource,
        url: str,
        *,
        timeout_s: float = REQUEST_TIMEOUT_S,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        import pydo.aio
        from azure.core.credentials import AzureKeyCredential
        from azure.core.pipeline.policies import AzureKeyCredentialPolicy

        self._token: TokenSource = token if callable(token) else (lambda: token)
        self._sent = self._token() or "-"
        self._credential = AzureKeyCredential(self._sent)
        # pydo's default policy refuses to send the token over plain HTTP (the stand-in).
        policy = AzureKeyCredentialPolicy(self._credential, "Authorization", prefix="Bearer")
        self.do = pydo.aio.Client(
            "-",  # unused: `policy` authenticates
            endpoint=url.rstrip("/"),
            authentication_policy=policy,
            retry_total=0,  # every retry is decided here, where a create is never blind
            connection_timeout=timeout_s,
            read_timeout=timeout_s,
        )
        self.budget = RateBudget()
        self.requests = 0
        self._sleep = sleep
        self._clock = clock

    async def close(self) -> None:
        await self.do.close()

    async def read(self, action: str, operation: Operation) -> Any:
        """A request that changes nothing: sent again on 429, 5xx and silence."""
        return await self._send(action, operation, changes=False)

    async def change(self, action: str, operation: Operation) -> Any:
        """A request that changes something: sent again only on 429; `Uncertain` otherwise."""
        return await self._send(action, operation, changes=True)

    async def _send(self, action: str, operation: Operation, *, changes: bool) -> Any:
        from azure.core.exceptions import (
            HttpResponseError,
            ServiceRequestError,
            ServiceResponseError,
        )

        attempt = 0
        while True:
            attempt += 1
            self._authorize(action)
            wait = self.budget.wait_s(self._clock())
            if wait > 0:
                await self._sleep(wait)
            self.requests += 1
            try:
                return await operation(cls=self._capture)
            except HttpResponseError as err:
                status = int(err.status_code or 0)
                headers = dict(getattr(err.response, "headers", None) or {})
                if status == 429:
                    self.budget.note_refused(headers, self._clock())
                    continue
                self.budget.note(headers, self._clock())
                if status < 500:
                    raise _refused(action, status, err) from None
                failure = f"DigitalOcean answered {status}"
            except ServiceRequestError as err:  # never sent: safe to send again, even a create
                if attempt >= READ_ATTEMPTS:
                    raise ProviderError(action, f"cannot reach DigitalOcean: {err}") from None
                await self._sleep(backoff_s(attempt))
                continue
            except (ServiceResponseError, TimeoutError) as err:
                failure = f"no answer from DigitalOcean ({type(err).__name__})"
            if changes:
                raise Uncertain(action, f"{failure}: it may or may not have been done")
            if attempt >= READ_ATTEMPTS:
                raise ProviderError(action, f"{failure}, {attempt} times")
            await self._sleep(backoff_s(attempt))

    def _authorize(self, action: str) -> None:
        """The current token in the header; ProviderError when there is none."""
        token = self._token()
        if not token:
            raise ProviderError(action, NO_TOKEN)
        if token != self._sent:
            self._credential.update(token)
            self._sent = token
            self.budget = RateBudget()  # DigitalOcean's limits are per token

    async def every(
        self, what: str, list_call: Operation, key: str, **filters: Any
    ) -> list[dict[str, Any]]:
        """Every item of a list, page after page (`per_page` at its most, 200)."""
        found: list[dict[str, Any]] = []
        page = 1
        while True:
            answer = await self.read(
                what, functools.partial(list_call, per_page=PER_PAGE, page=page, **filters)
            )
            found += answer.get(key) or []
            if not (answer.get("links") or {}).get("pages", {}).get("next"):
                return found
            page += 1

    def _capture(self, pipeline_response: Any, deserialized: Any, _headers: Any) -> Any:
        self.budget.note(dict(pipeline_response.http_response.headers), self._clock())
        return deserialized


def as_json(value: object) -> Any:
    """pydo types some path parameters (a snapshot's or an SSH key's id) as a JSON document,
    from the description's `anyOf` of integer and string: hand them over as they are."""
    return value


def _refused(action: str, status: int, err: Any) -> Refused:
    try:
        body = err.response.json() if err.response is not None else {}
    except ValueError:
        body = {}
    body = body if isinstance(body, dict) else {}
    error_id = str(body.get("id") or body.get("error") or "error")
    return Refused(action, status, error_id, str(body.get("message") or body.get("error") or ""))
