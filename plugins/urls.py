"""Checks of the http(s) addresses that plugins are configured with (Vault, OpenSearch)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit


def http_url_problem(url: str, example: str) -> str | None:
    """Why `url` is not a plain http(s):// address like `example` (None: it is one)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError for a bad port)
    except ValueError:
        return f"{url!r} is not a URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"{url!r} is not an http(s):// URL like {example!r}"
    if parts.query or parts.fragment or re.search(r"\s", url):
        return f"{url!r} must be a plain http(s):// URL, without query or spaces"
    return None
