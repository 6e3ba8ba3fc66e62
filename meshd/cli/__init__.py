"""`meshctl`, the operator's command line. This module is the only place where errors become
exit codes: 0 ok, 1 failure, 2 bad input. Commands live one per module beside it."""

from __future__ import annotations

import importlib
import sys
import traceback
from collections.abc import Sequence

import click

from meshd import __version__
from meshd.agent.store import StoreUnavailable, Unreachable
from meshd.core.errors import CapacityError, InputError, InputErrors
from protocol.errors import MeshError

EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


# Each command's module is imported only when the command runs (or `--help` lists them): a
# command does not pay for the libraries of all the others.
COMMANDS = {
    "up": "meshd.cli.up:up",
    "publish": "meshd.cli.publish:publish",
    "restart": "meshd.cli.restart:restart",
    "status": "meshd.cli.status:status",
    "events": "meshd.cli.status:events",
    "logs": "meshd.cli.logs:logs",
    "dashboard": "meshd.cli.dashboard:dashboard",
    "certs": "meshd.cli.certs:certs",
    "exec": "meshd.cli.exec_command:exec_command",
    "metrics": "meshd.cli.metrics:metrics",
    "chaos": "meshd.cli.chaos:chaos",
    "hold": "meshd.cli.hold:hold",
    "secret": "meshd.cli.secret:secret",
    "config": "meshd.cli.config:config",
    "notify": "meshd.cli.notify:notify",
    "compose": "meshd.cli.compose:compose",
    "down": "meshd.cli.down:down",
    "deploy": "meshd.cli.deploy:deploy",
    "promote": "meshd.cli.deploy:promote",
    "rollback": "meshd.cli.deploy:rollback",
    "releases": "meshd.cli.releases:releases",
    "hook": "meshd.cli.hook:hook",
    "backup": "meshd.cli.backup:backup",
    "firewall": "meshd.cli.firewall:firewall",
    "git": "meshd.cli.git:git",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, _, attribute = target.partition(":")
        command = getattr(importlib.import_module(module), attribute)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=LazyGroup, context_settings=CONTEXT_SETTINGS)
@click.option("--debug", is_flag=True, help="Show tracebacks of errors.")
@click.version_option(__version__, prog_name="meshctl")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Operate a meshd personal cloud: publish your projects, watch the mesh, let it heal.

    Start with `meshctl publish --dry-run projects.csv` to see what a CSV would create.
    """
    ctx.obj = {"debug": debug}


def cause_chain(err: BaseException) -> str:
    """`outer: inner: root cause` on one line."""
    parts: list[str] = []
    current: BaseException | None = err
    while current is not None:
        text = str(current) or type(current).__name__
        if text not in parts:
            parts.append(text)
        current = current.__cause__
    return ": ".join(parts)


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        # Without standalone mode click returns the exit code of `--help` and friends.
        code = cli.main(args=args, prog_name="meshctl", standalone_mode=False)
    except click.ClickException as err:
        err.show()
        sys.exit(EXIT_BAD_INPUT if isinstance(err, click.UsageError) else EXIT_FAILURE)
    except click.exceptions.Abort:
        print("meshctl: aborted", file=sys.stderr)
        sys.exit(EXIT_FAILURE)
    except InputErrors as err:
        _report_input_errors(err)
        sys.exit(EXIT_BAD_INPUT)
    except InputError as err:
        print(f"meshctl: {cause_chain(err)}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except CapacityError as err:
        for line in str(err).splitlines():
            print(f"meshctl: {line}", file=sys.stderr)
        print("meshctl: the plan does not fit; nothing was published", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except MeshError as err:
        _fail(err, debug)
    except KeyboardInterrupt:
        print("meshctl: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as err:  # the last line of defence: no traceback without --debug
        _fail(err, debug, prefix="internal error: ")
    sys.exit(code if isinstance(code, int) else 0)


def _report_input_errors(err: InputErrors) -> None:
    for issue in err.issues:
        print(issue, file=sys.stderr)
    count = len(err.issues)
    noun = "problem" if count == 1 else "problems"
    print(f"meshctl: {count} {noun} in the input; nothing was published", file=sys.stderr)


def _fail(err: BaseException, debug: bool, prefix: str = "") -> None:
    if debug:
        traceback.print_exception(err)
    print(f"meshctl: {prefix}{cause_chain(err)}", file=sys.stderr)
    if isinstance(err, StoreUnavailable) and not isinstance(err, Unreachable):
        # Connected, but JetStream did not answer in time: seconds, mostly.
        print(
            "meshctl: JetStream did not answer: it elects a leader or moves to other droplets "
            "(the mesh grew or shrank) for a few seconds; try again (`meshctl status` shows it)",
            file=sys.stderr,
        )
    sys.exit(EXIT_FAILURE)
