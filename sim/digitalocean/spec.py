"""The vendored API description, loaded once, and the checks of requests and responses
against it (openapi-core). Loading takes over a second: the server starts answering first and
loads it in a thread (`SpecChecker.load`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from multidict import CIMultiDict, MultiDict

SPEC_FILE = Path(__file__).with_name("vendor") / "openapi-subset.json"
SERVER = "https://api.digitalocean.com"


def load_document(path: Path = SPEC_FILE) -> dict[str, Any]:
    """The description, mended where it refuses what DigitalOcean accepts or answers:
    - the YAML → JSON step read the droplet status `off` as the boolean false, so a droplet
      that is off would not validate;
    - request bodies given as `oneOf` whose branches overlap (`{"type": "power_off"}` on
      `/v2/droplets/actions` matches two) refuse valid requests: they are read as `anyOf`;
    - path parameters marked `readOnly` (an SSH key's id or fingerprint) are refused in
      requests by the validator: the mark is dropped there."""
    document: dict[str, Any] = json.loads(path.read_text())
    _mend_off(document)
    for operations in document["paths"].values():
        for operation in operations.values():
            if not isinstance(operation, dict):
                continue
            for content in operation.get("requestBody", {}).get("content", {}).values():
                _one_of_as_any_of(content.get("schema", {}))
            for parameter in operation.get("parameters", []):
                _drop_read_only(parameter.get("schema", {}))
    return document


def _one_of_as_any_of(schema: dict[str, Any]) -> None:
    if "oneOf" in schema:
        schema["anyOf"] = schema.pop("oneOf")


def _drop_read_only(node: Any) -> None:
    if isinstance(node, dict):
        node.pop("readOnly", None)
        for value in node.values():
            _drop_read_only(value)
    elif isinstance(node, list):
        for value in node:
            _drop_read_only(value)


def _mend_off(node: Any) -> None:
    if isinstance(node, dict):
        enum = node.get("enum")
        if isinstance(enum, list) and False in enum and "active" in enum:
            node["enum"] = ["off" if value is False else value for value in enum]
        for value in node.values():
            _mend_off(value)
    elif isinstance(node, list):
        for value in node:
            _mend_off(value)


def root_cause_400s(document: dict[str, Any]) -> set[tuple[str, str]]:
    """The operations (method, path without parameters) whose 400 is not the API's usual
    `{id, message}` but `{error, messages, root_causes}` (making a tag)."""
    found = set()
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if not isinstance(operation, dict) or "{" in path:
                continue
            schema = (
                operation.get("responses", {}).get("400", {}).get("content", {})
                .get("application/json", {}).get("schema", {})
            )  # fmt: skip
            if "root_causes" in schema.get("required", []):
                found.add((method.upper(), path))
    return found


@dataclass(frozen=True, slots=True)
class Refusal:
    """What part of a request the description refuses (`path`, `operation`, `parameter`,
    `body`, `security`, `other`) and why."""

    part: str
    reason: str


class Request:
    """What openapi-core reads of a request; the host is always DigitalOcean's own."""

    host_url = SERVER

    def __init__(
        self, method: str, path: str, query: MultiDict[str], headers: CIMultiDict[str],
        body: bytes | None, content_type: str = "application/json",
    ) -> None:  # fmt: skip
        self.method = method.lower()
        self.path = path
        self.body = body
        self.content_type = content_type
        from openapi_core.datatypes import RequestParameters

        self.parameters = RequestParameters(query=query, header=headers, cookie={}, path={})


class Response:
    def __init__(self, status: int, data: bytes, headers: CIMultiDict[str]) -> None:
        self.status_code = status
        self.data = data
        self.headers = headers
        self.content_type = "application/json" if data else ""


class SpecChecker:
    """Validation against the description; `load` before use (blocking: run it in a thread)."""

    def __init__(self) -> None:
        self._api: Any = None
        self.root_cause_400s: set[tuple[str, str]] = set()

    @property
    def loaded(self) -> bool:
        return self._api is not None

    def load(self) -> None:
        from openapi_core import OpenAPI

        document = load_document()
        self._api = OpenAPI.from_dict(document)
        self.root_cause_400s = root_cause_400s(document)

    def request_error(self, request: Request) -> Refusal | None:
        """Why the description refuses the request, or None."""
        from openapi_core.templating.paths.exceptions import OperationNotFound, PathNotFound
        from openapi_core.validation.request.exceptions import (
            ParameterValidationError,
            RequestBodyValidationError,
            SecurityValidationError,
        )

        try:
            self._api.validate_request(request)
        except PathNotFound as err:
            return Refusal("path", _describe(err))
        except OperationNotFound as err:
            return Refusal("operation", _describe(err))
        except ParameterValidationError as err:
            return Refusal("parameter", _describe(err))
        except RequestBodyValidationError as err:
            return Refusal("body", _describe(err))
        except SecurityValidationError as err:
            return Refusal("security", _describe(err))
        except Exception as err:  # openapi-core raises other kinds too; each is a refusal
            return Refusal("other", _describe(err))
        return None

    def response_error(self, request: Request, response: Response) -> str | None:
        """Why the description refuses the response to the request, or None."""
        try:
            self._api.validate_response(request, response)
        except Exception as err:
            return _describe(err)
        return None


def _describe(err: Exception) -> str:
    """The validator's message on one line; for a value that matches none of a schema's
    branches (`anyOf`), what the closest branch refuses ("'image' is a required property")."""
    errors = getattr(err.__cause__, "schema_errors", None) or ()
    found = [_closest(error) for error in errors]
    return ("; ".join(found) if found else str(err))[:2000]


def _closest(error: Any) -> str:
    """The complaints of the branch with the fewest of them, recursively."""
    context = getattr(error, "context", None)
    if not context:
        return str(error.message)
    branches: dict[Any, list[Any]] = {}
    for inner in context:
        branch = inner.relative_schema_path[0] if inner.relative_schema_path else 0
        branches.setdefault(branch, []).append(inner)
    fewest = min(branches.values(), key=len)
    return "; ".join(dict.fromkeys(_closest(inner) for inner in fewest))
