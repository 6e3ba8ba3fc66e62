"""`meshd`, the agent's entry point: `meshd agent DIR` runs the agent of a droplet,
`meshd droplet DIR` supervises a local droplet (nats-server + agent)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from meshd import __version__


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="meshd",
        description="The meshd agent: one runs on every droplet of a mesh. It is started by "
        "the droplet's bootstrap (systemd unit, or `meshctl up`), not by hand.",
    )
    parser.add_argument("--version", action="version", version=f"meshd {__version__}")
    parser.add_argument("--debug", action="store_true", help="log at debug level")
    commands = parser.add_subparsers(dest="command", required=True)
    agent = commands.add_parser("agent", help="run the agent of the droplet in DIR")
    agent.add_argument("dir", type=Path, help="droplet directory (droplet.json, user_data)")
    droplet = commands.add_parser("droplet", help="supervise a local droplet in DIR")
    droplet.add_argument("dir", type=Path, help="droplet directory (droplet.json, user_data)")
    shell = commands.add_parser(
        "git-shell", help="the forced command of git pushers' keys on master (sshd runs it)"
    )
    shell.add_argument("dir", type=Path, help="droplet directory (its git/ keeps repositories)")
    args = parser.parse_args(argv)
    shell_only = args.command == "git-shell"
    logging.basicConfig(
        # The git shell's standard error is the pusher's terminal: only what went wrong.
        level=logging.DEBUG if args.debug else logging.WARNING if shell_only else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("nats").setLevel(logging.CRITICAL)
    try:
        if args.command == "git-shell":
            from meshd.agent.git_shell import git_shell

            sys.exit(git_shell(args.dir.resolve(), os.environ.get("SSH_ORIGINAL_COMMAND")))
        if args.command == "agent":
            from meshd.agent.app import run_agent

            asyncio.run(run_agent(args.dir.resolve()))
        else:
            from meshd.local.droplet import supervise

            supervise(args.dir.resolve())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
