"""Images built from a directory: where the build context is and what its content is.

A service with a `build_context` runs the image `<project>-<service>:<digest>`, where the
digest covers every file of the context and the Dockerfile. Publishing a changed context thus
changes the allocation and rolls the service; publishing the same content changes nothing.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

DIGEST_LENGTH = 12
SKIPPED_DIRS = frozenset({".git"})


class BuildContextError(ValueError):
    """A build context or its Dockerfile cannot be read."""


def context_digest(context: Path, dockerfile: Path) -> str:
    """A hex digest of the relative paths, modes, link targets and contents of every file under
    `context` (but `.git`), and of `dockerfile` wherever it is."""
    if not context.is_dir():
        raise BuildContextError(f"build context {context} is not a directory")
    if not dockerfile.is_file():
        raise BuildContextError(f"Dockerfile {dockerfile} not found")
    digest = hashlib.sha256()
    try:
        digest.update(b"dockerfile\0" + dockerfile.read_bytes() + b"\0")
        for path in sorted(_files(context)):
            info = path.lstat()
            relative = path.relative_to(context).as_posix().encode()
            digest.update(relative + b"\0" + oct(stat.S_IMODE(info.st_mode)).encode() + b"\0")
            if stat.S_ISLNK(info.st_mode):
                digest.update(b"link\0" + os.readlink(path).encode() + b"\0")
            else:
                digest.update(_file_digest(path) + b"\0")
    except OSError as err:
        raise BuildContextError(f"cannot read {err.filename}: {err.strerror}") from None
    return digest.hexdigest()[:DIGEST_LENGTH]


def image_tag(project: str, service: str, digest: str) -> str:
    return f"{project}-{service}:{digest}"


def _files(root: Path) -> list[Path]:
    found: list[Path] = []
    for directory, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in SKIPPED_DIRS]
        found += [Path(directory, name) for name in files]
        found += [Path(directory, d) for d in dirs if Path(directory, d).is_symlink()]
    return found


def _file_digest(path: Path) -> bytes:
    file_hash = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            file_hash.update(block)
    return file_hash.digest()
