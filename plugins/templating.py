"""The only owner of the jinja2 Environment: renders the files in the repository's `templates/`
(nginx.conf for the nginx plugin, the compose file for the docker plugin, nats-server.conf and
the operator's mails for meshd). Shared by plugins and meshd, so it lives at the bottom."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import jinja2

TEMPLATES = Path(__file__).resolve().parents[1] / "templates"


@cache
def _environment() -> jinja2.Environment:
    import jinja2  # imported on first use: agents that render nothing do not pay for it

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html", "html.j2", "xml")),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def render(template: str, /, **values: Any) -> str:
    return _environment().get_template(template).render(**values)
