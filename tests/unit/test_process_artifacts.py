"""The process runtime's artifacts: the same build context always packs to the same bytes, an
artifact unpacks whole or not at all, and a tarball that would write outside its directory (or
make a device) is refused."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

import pytest

from plugins.runtimes import ArtifactError, InstanceSpec, InstanceStartError
from plugins.runtimes.process.artifacts import pack, unpack, unpacked, working_directory

DIGEST = "a" * 64


def context(directory: Path) -> Path:
    (directory / "bin").mkdir(parents=True)
    (directory / "bin" / "run").write_text("#!/bin/sh\necho hello\n")
    (directory / "bin" / "run").chmod(0o755)
    (directory / "app.py").write_text("print('hi')\n")
    (directory / "empty").mkdir()
    (directory / "link").symlink_to("app.py")
    return directory


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_same_context_packs_to_the_same_bytes(tmp_path: Path) -> None:
    first = context(tmp_path / "one")
    second = context(tmp_path / "two")  # other inodes, other times
    os.utime(second / "app.py", (1, 1))
    os.link(second / "app.py", tmp_path / "hard-link-outside")  # a second link changes nothing
    pack(first, tmp_path / "one.tar.gz")
    log = pack(second, tmp_path / "two.tar.gz")
    assert sha256(tmp_path / "one.tar.gz") == sha256(tmp_path / "two.tar.gz")
    assert "packed 2 files" in log
    with tarfile.open(tmp_path / "one.tar.gz") as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == ["app.py", "bin", "bin/run", "empty", "link"]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {(0, 0, 0, "", "")}


def test_an_artifact_unpacks_into_its_digests_directory(tmp_path: Path) -> None:
    pack(context(tmp_path / "ctx"), tmp_path / "a.tar.gz")
    root = tmp_path / "artifacts"
    assert not unpacked(root, DIGEST)
    unpack(root, DIGEST, tmp_path / "a.tar.gz")
    assert unpacked(root, DIGEST)
    target = root / DIGEST
    assert (target / "bin" / "run").stat().st_mode & 0o111
    assert (target / "link").readlink() == Path("app.py")
    assert (target / "empty").is_dir()
    assert sorted(p.name for p in root.iterdir()) == [DIGEST]  # nothing half-done beside it
    unpack(root, DIGEST, tmp_path / "missing.tar.gz")  # there already: nothing to do


def tarball(path: Path, *members: tarfile.TarInfo) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        tar.addfile(tarfile.TarInfo("fine.txt"), io.BytesIO(b""))
        for member in members:
            tar.addfile(member, io.BytesIO(b"x" * member.size) if member.isfile() else None)
    return path


def member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    info.size = 1 if kind == tarfile.REGTYPE else 0
    return info


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        (member("/etc/cron.d/evil"), "absolute path"),
        (member("../../evil"), "'..'"),
        (member("sub/../../evil"), "'..'"),
        (member("dev", tarfile.CHRTYPE), "device"),
        (member("escape", tarfile.SYMTYPE, "/etc/passwd"), "unpack artifact"),
        (member("escape", tarfile.SYMTYPE, "../../x"), "unpack artifact"),
    ],
)
def test_a_tarball_that_would_write_outside_is_refused_and_leaves_nothing(
    tmp_path: Path, bad: tarfile.TarInfo, problem: str
) -> None:
    root = tmp_path / "artifacts"
    with pytest.raises(ArtifactError, match=problem):
        unpack(root, DIGEST, tarball(tmp_path / "bad.tar.gz", bad))
    assert list(root.iterdir()) == []
    assert not (tmp_path / "evil").exists()


def test_a_broken_tarball_is_an_artifact_error(tmp_path: Path) -> None:
    (tmp_path / "broken.tar.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(ArtifactError, match=f"unpack artifact {DIGEST[:12]}"):
        unpack(tmp_path / "artifacts", DIGEST, tmp_path / "broken.tar.gz")
    assert list((tmp_path / "artifacts").iterdir()) == []


def test_a_digest_that_is_no_digest_names_no_directory(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="not a SHA-256"):
        unpacked(tmp_path, "../../etc")


def spec(**more: object) -> InstanceSpec:
    return InstanceSpec(
        project="shop", env="prod", service="backend", generation=1, host="127.0.0.1", **more
    )  # type: ignore[arg-type]


def test_an_instance_runs_in_its_artifact_else_its_build_context_else_its_own_directory(
    tmp_path: Path,
) -> None:
    root, own = tmp_path / "artifacts", tmp_path / "instance"
    (root / DIGEST).mkdir(parents=True)
    assert working_directory(spec(artifact=DIGEST), root, own) == root / DIGEST
    assert working_directory(spec(build_context=str(tmp_path)), root, own) == tmp_path
    assert working_directory(spec(build_context="relative/app"), root, own) == own
    assert working_directory(spec(), root, own) == own
    with pytest.raises(InstanceStartError, match="not loaded on this droplet"):
        working_directory(spec(artifact="b" * 64), root, own)
    with pytest.raises(InstanceStartError, match="not a directory here"):
        working_directory(spec(build_context=str(tmp_path / "gone")), root, own)
