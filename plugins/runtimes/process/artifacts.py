"""The process runtime's artifacts: a build context as a reproducible tarball (the same files
give the same bytes, so the same digest), unpacked on a droplet into
`<data_dir>/artifacts/<digest>/`, the working directory of the instances that run it.

A tarball holds directories, regular files and symbolic links only, sorted by name, with
mtime 0, owner 0:0 and no user or group names; the gzip header carries no time or name either.
Unpacking refuses absolute names, `..`, devices and links that lead outside (the tarfile
module's `data` filter as well), and is atomic: into a directory beside the target, renamed
into place once complete.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import stat
import tarfile
from pathlib import Path, PurePosixPath

from plugins.runtimes import ArtifactError, InstanceSpec, InstanceStartError

DIGEST = re.compile(r"[0-9a-f]{64}")
PARTIAL_SUFFIX = ".partial"
GZIP_LEVEL = 6


def _members(context: Path) -> list[Path]:
    """Every directory, file and link under `context`, sorted (links are not followed)."""
    found = []
    for directory, dirnames, filenames in os.walk(context):
        found += [Path(directory) / name for name in [*dirnames, *filenames]]
    return sorted(found, key=lambda p: p.relative_to(context).parts)


def _tar_info(path: Path, name: str) -> tarfile.TarInfo | None:
    """The entry of `path`: mtime 0, owner 0:0, no names (a file hard-linked to another is
    a file of its own, so that links in a checkout change nothing); None for a socket, a
    device or a fifo, which nothing ships."""
    status = path.lstat()
    info = tarfile.TarInfo(name)
    if stat.S_ISREG(status.st_mode):
        info.size = status.st_size
        info.mode = stat.S_IMODE(status.st_mode) & 0o755 | 0o644
    elif stat.S_ISDIR(status.st_mode):
        info.type, info.mode = tarfile.DIRTYPE, 0o755
    elif stat.S_ISLNK(status.st_mode):
        info.type, info.mode, info.linkname = tarfile.SYMTYPE, 0o777, os.readlink(path)
    else:
        return None
    return info


def pack(context: Path, out: Path) -> str:
    """Write the files of `context` to `out` as a reproducible .tar.gz; a line saying what."""
    if not context.is_dir():
        raise ArtifactError(f"pack {context}", "the build context is not a directory")
    count = size = 0
    with (
        out.open("wb") as raw,
        gzip.GzipFile("", "wb", GZIP_LEVEL, raw, mtime=0) as zipped,
        tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for path in _members(context):
            info = _tar_info(path, path.relative_to(context).as_posix())
            if info is None:
                continue
            if info.isfile():
                with path.open("rb") as content:
                    tar.addfile(info, content)
                count, size = count + 1, size + info.size
            else:
                tar.addfile(info)
    return f"packed {count} files ({size} bytes) of {context}\n"


def artifact_directory(root: Path, digest: str) -> Path:
    if not DIGEST.fullmatch(digest):
        raise ArtifactError(f"artifact {digest[:16]!r}", "not a SHA-256 digest in hex")
    return root / digest


def unpacked(root: Path, digest: str) -> bool:
    return artifact_directory(root, digest).is_dir()


def unpack(root: Path, digest: str, path: Path) -> None:
    """Unpack the tarball at `path` into `root/<digest>/`, atomically; nothing if it is there."""
    target = artifact_directory(root, digest)
    if target.is_dir():
        return
    partial = target.with_name(f".{digest}{PARTIAL_SUFFIX}")
    shutil.rmtree(partial, ignore_errors=True)  # left by an agent killed while unpacking
    partial.mkdir(parents=True, mode=0o755)
    try:
        with tarfile.open(path, mode="r:*") as tar:
            for member in tar.getmembers():
                _check(member, digest)
            tar.extractall(partial, filter="data")
        os.rename(partial, target)
    except (tarfile.TarError, OSError, EOFError) as err:
        shutil.rmtree(partial, ignore_errors=True)
        if target.is_dir():
            return  # another process unpacked it meanwhile
        raise ArtifactError(
            f"unpack artifact {digest[:12]}", str(err) or type(err).__name__
        ) from None
    except ArtifactError:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def _check(member: tarfile.TarInfo, digest: str) -> None:
    name = PurePosixPath(member.name)
    problem = None
    if name.is_absolute():
        problem = f"{member.name!r} is an absolute path"
    elif ".." in name.parts:
        problem = f"{member.name!r} leads outside with '..'"
    elif member.isdev():
        problem = f"{member.name!r} is a device or a fifo"
    if problem is not None:
        raise ArtifactError(f"unpack artifact {digest[:12]}", f"refused: {problem}")


def working_directory(spec: InstanceSpec, root: Path, instance: Path) -> Path:
    """Where an instance runs: its artifact's directory, else its build context when that is
    a directory of this machine (a build from the operator's disk), else `instance`."""
    if spec.artifact is not None:
        try:
            directory = artifact_directory(root, spec.artifact)
        except ArtifactError as err:
            raise InstanceStartError(spec.key, str(err)) from None
        if not directory.is_dir():
            reason = f"its artifact {spec.artifact[:12]} is not loaded on this droplet"
            raise InstanceStartError(spec.key, reason)
        return directory
    if spec.build_context is not None and os.path.isabs(spec.build_context):
        if not os.path.isdir(spec.build_context):
            reason = f"its build context {spec.build_context} is not a directory here"
            raise InstanceStartError(spec.key, reason)
        return Path(spec.build_context)
    return instance
