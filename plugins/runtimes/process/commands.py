"""How the process runtime starts an instance that runs its own command: `process_command`,
else `command` unless that is meant to run inside an image."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from pathlib import Path

from plugins.runtimes import InstanceSpec, InstanceStartError
from plugins.runtimes.process.datastores import Launch


def process_command(spec: InstanceSpec) -> str:
    """`process_command`, else `command` unless that is meant to run inside an image."""
    if spec.process_command:
        return spec.process_command
    in_image = spec.image is not None or spec.build_context is not None
    return "" if in_image or spec.command is None else spec.command


def command_launch(spec: InstanceSpec, cwd: Callable[[], Path]) -> Launch:
    """The instance's command, run in `cwd()` (asked only once the command is known good)."""
    command = process_command(spec)
    try:
        argv = shlex.split(command)
    except ValueError as err:
        raise InstanceStartError(spec.key, f"cannot parse command {command!r}: {err}") from err
    if not argv:
        what = f"runs the image {spec.image}" if spec.image else "has no command"
        raise InstanceStartError(
            spec.key,
            f"{what}; the process runtime needs a process_command to run it without Docker",
        )
    return Launch(argv, cwd())
