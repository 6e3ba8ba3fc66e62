"""The base of every top-level message (protocol.messages says how messages are written)."""

from __future__ import annotations

from typing import ClassVar


class Message:
    """Base of every top-level message; subclasses are frozen slotted dataclasses."""

    __slots__ = ()
    KIND: ClassVar[str]
    VERSION: ClassVar[int] = 1
