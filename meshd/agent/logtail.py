"""Reading a log file as it grows, from where the last read stopped: only whole lines (a
partial last line waits for its end), and from the start again when the file was truncated or
replaced. Offsets are kept in a small file so that a restarted agent neither repeats nor
skips what instances wrote meanwhile. Blocking: called in a thread."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from plugins.fs import atomic_write

FIRST_READ_BYTES = 64 * 1024  # a file met for the first time: its last lines, not all of it
READ_BYTES = 256 * 1024  # at most this much of one file per pass


@dataclass(slots=True)
class Position:
    inode: int
    offset: int


class Tails:
    def __init__(self, offsets_file: Path) -> None:
        self._file = offsets_file
        self._positions: dict[str, Position] = {}
        self._changed = False
        if offsets_file.exists():
            try:
                saved = json.loads(offsets_file.read_text())
                self._positions = {k: Position(*v) for k, v in saved.items()}
            except (ValueError, TypeError):
                self._positions = {}

    def read(self, path: Path) -> list[str]:
        """The whole lines added to `path` since the last read."""
        key = str(path)
        try:
            with path.open("rb") as f:
                stat = os.fstat(f.fileno())
                known = self._positions.get(key)
                if known is None:
                    known = Position(stat.st_ino, self._first_offset(f, stat.st_size))
                elif known.inode != stat.st_ino or stat.st_size < known.offset:
                    known = Position(stat.st_ino, 0)  # replaced or truncated: from its start
                f.seek(known.offset)
                data = f.read(READ_BYTES)
        except FileNotFoundError:
            self._forget(key)
            return []
        end = data.rfind(b"\n")
        if end < 0:
            self._positions[key] = known
            return []
        self._positions[key] = Position(known.inode, known.offset + end + 1)
        self._changed = True
        return data[:end].decode(errors="replace").split("\n")

    def keep_only(self, paths: set[str]) -> None:
        for gone in set(self._positions) - paths:
            self._forget(gone)

    def save(self) -> None:
        if self._changed:
            state = {k: [p.inode, p.offset] for k, p in self._positions.items()}
            atomic_write(self._file, json.dumps(state).encode())
            self._changed = False

    def _forget(self, key: str) -> None:
        if self._positions.pop(key, None) is not None:
            self._changed = True

    @staticmethod
    def _first_offset(f: BinaryIO, size: int) -> int:
        """The start of the first whole line in the file's last FIRST_READ_BYTES."""
        if size <= FIRST_READ_BYTES:
            return 0
        f.seek(size - FIRST_READ_BYTES)
        skipped = f.read(FIRST_READ_BYTES).find(b"\n")
        return size if skipped < 0 else size - FIRST_READ_BYTES + skipped + 1
