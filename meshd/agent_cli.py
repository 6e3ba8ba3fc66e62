"""`meshd`, the agent's entry point."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from meshd import __version__


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="meshd",
        description="The meshd agent: one runs on every droplet of a mesh. It is started by "
        "the droplet's bootstrap (systemd unit or `meshctl up --local`), not by hand.",
    )
    parser.add_argument("--version", action="version", version=f"meshd {__version__}")
    parser.parse_args(argv)
    parser.print_help()
