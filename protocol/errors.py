"""The project's root error and the errors of the wire protocol.

`MeshError` is the root of every error meshd raises on purpose; other packages subclass it.
`ProtocolError` (also a `ValueError`) says that a name or a message is not what the protocol
allows. Each error carries its facts in attributes; `str(err)` is one sentence that says what
was being done and what is wrong, e.g. "decode heartbeat: field 'seq': expected an integer,
got str".
"""

from __future__ import annotations


class MeshError(Exception):
    """Root of every error meshd raises on purpose."""


class ProtocolError(MeshError, ValueError):
    """A name or message that the protocol does not allow.

    `what` is what was being done ("decode heartbeat", "heartbeat subject"), `reason` what is
    wrong, `field` the dotted path of the offending field when there is one.
    """

    def __init__(self, what: str, reason: str, *, field: str | None = None) -> None:
        self.what = what
        self.reason = reason
        self.field = field
        where = f"field {field!r}: " if field else ""
        super().__init__(f"{what}: {where}{reason}")


class InvalidNameError(ProtocolError):
    """A subject token, key part or role that is not a valid name; `value` is the bad name."""

    def __init__(self, what: str, value: object, reason: str) -> None:
        self.value = value
        super().__init__(what, reason)


class MalformedMessageError(ProtocolError):
    """Bytes that are not a valid message of the expected kind and version."""


class UnknownVersionError(ProtocolError):
    """A message whose schema version this agent cannot read.

    `kind` is the message kind, `got` the version on the wire, `supported` the version this
    agent writes. A newer `got` means this agent must be upgraded; an older one means the
    message type has no upgrade from that version.
    """

    def __init__(self, kind: str, got: int, supported: int) -> None:
        self.kind = kind
        self.got = got
        self.supported = supported
        if got > supported:
            reason = (
                f"schema version {got} is newer than this agent understands ({supported}); "
                "upgrade meshd"
            )
        else:
            reason = (
                f"schema version {got} is older than this agent understands ({supported}) "
                "and cannot be upgraded; republish it with a current meshd"
            )
        super().__init__(f"decode {kind}", reason)

    @property
    def newer(self) -> bool:
        """True when the message comes from a newer meshd than this one."""
        return self.got > self.supported
