"""Backup files encrypted to the mesh key open with it and its context, whatever their size
(empty, one byte, whole chunks, part chunks); every truncation, reordering, swap and header
change is refused with its reason; encrypting and decrypting stream in bounded memory."""

from __future__ import annotations

import hashlib
import io
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshd.core.backup_crypto import (
    CHUNK_SIZE,
    MAGIC,
    TAG_BYTES,
    BackupCryptoError,
    Damage,
    EncryptedInfo,
    decrypt_stream,
    encrypt_stream,
)
from meshd.core.sealing import (
    KeyPair,
    SealError,
    from_text,
    holder_context,
    open_mesh_key,
    seal,
    to_text,
)

MESH = KeyPair.new()
BACKUP = b"db/shop/prod/database/20261201-2200-7f3a"
MiB = 1024 * 1024
T = TypeVar("T")
HEADER = len(MAGIC) + 4 + 32 + 32 + 2 + (1 + 32 + 12 + 32 + 16)  # sealed 32-byte data key


def encrypt(plain: bytes, context: bytes = BACKUP, **kwargs: int) -> tuple[bytes, EncryptedInfo]:
    out = io.BytesIO()
    info = encrypt_stream(io.BytesIO(plain), out, MESH.public, context, **kwargs)
    return out.getvalue(), info


def decrypt(cipher: bytes, keys: KeyPair = MESH, context: bytes = BACKUP) -> bytes:
    out = io.BytesIO()
    written = decrypt_stream(io.BytesIO(cipher), out, keys, context)
    assert written == len(out.getvalue())
    return out.getvalue()


def refused(cipher: bytes, keys: KeyPair = MESH, context: bytes = BACKUP) -> BackupCryptoError:
    with pytest.raises(BackupCryptoError) as caught:
        decrypt(cipher, keys, context)
    return caught.value


def chunk_at(index: int) -> slice:
    start = HEADER + index * (CHUNK_SIZE + TAG_BYTES)
    return slice(start, start + CHUNK_SIZE + TAG_BYTES)


PLAIN = bytes(range(256)) * (7 * MiB // 512)  # 3.5 MiB: chunks 0..2 whole, 3 a half
CIPHER, INFO = encrypt(PLAIN)


@pytest.mark.parametrize(
    ("size", "chunks"),
    [(0, 1), (1, 1), (CHUNK_SIZE, 1), (2 * CHUNK_SIZE, 2), (7 * MiB // 2, 4)],
    ids=["empty", "1 byte", "1 MiB", "2 MiB", "3.5 MiB"],
)
def test_a_backup_opens_with_the_mesh_key_and_its_context(size: int, chunks: int) -> None:
    plain = PLAIN[:size]
    cipher, info = encrypt(plain)
    assert cipher.startswith(MAGIC)
    assert len(cipher) == HEADER + size + chunks * TAG_BYTES  # whole chunks: no empty last one
    assert info == EncryptedInfo(size, len(cipher), hashlib.sha256(cipher).hexdigest())
    assert decrypt(cipher) == plain


@given(st.binary(max_size=300), st.integers(min_value=1, max_value=64))
def test_any_file_opens_whatever_the_chunk_size(plain: bytes, chunk_size: int) -> None:
    assert decrypt(encrypt(plain, chunk_size=chunk_size)[0]) == plain


def test_a_source_that_returns_short_reads_is_read_to_its_end() -> None:
    cipher = io.BytesIO()
    info = encrypt_stream(Generated(3 * MiB + 5, block=1000), cipher, MESH.public, BACKUP)
    assert info.plain_bytes == 3 * MiB + 5
    assert decrypt(cipher.getvalue()) == b"".join(Generated(3 * MiB + 5, block=1000).blocks())


def test_the_same_file_encrypts_differently_each_time_and_hides_its_content() -> None:
    again, _ = encrypt(PLAIN)
    assert again != CIPHER
    assert PLAIN[:64] not in CIPHER


def test_the_operator_opens_a_backup_through_the_escrow_key() -> None:
    escrow = KeyPair.new()
    held = to_text(seal(escrow.public, MESH.private, holder_context("escrow", escrow.fingerprint)))
    mesh = open_mesh_key(escrow, "escrow", escrow.fingerprint, held)
    cipher = io.BytesIO()
    encrypt_stream(io.BytesIO(b"dump"), cipher, from_text(MESH.public_text), BACKUP)
    assert decrypt(cipher.getvalue(), keys=mesh) == b"dump"


def test_a_backup_does_not_open_with_another_key() -> None:
    error = refused(CIPHER, keys=KeyPair.new())
    assert error.damage is Damage.OTHER_KEY
    assert isinstance(error, SealError)
    assert "sealed to another key" in str(error)


def test_a_backup_does_not_open_as_another_backup() -> None:
    error = refused(CIPHER, context=b"db/shop/prod/database/20261202-2200-91cc")
    assert error.damage is Damage.OTHER_BACKUP
    assert str(error) == "open backup: bound to another backup"


@pytest.mark.parametrize("cipher", [b"", b"PGDMP\x01\x0e", b"MESHDBK2" + CIPHER[8:]])
def test_a_file_that_is_no_backup_is_refused(cipher: bytes) -> None:
    assert refused(cipher).damage is Damage.NOT_A_BACKUP


@pytest.mark.parametrize(
    "end",
    [20, HEADER - 1, HEADER, HEADER + 10, chunk_at(0).stop, chunk_at(2).stop],
    ids=["in the fields", "in the key", "no body", "in a tag", "after chunk 0", "after 2"],
)
def test_a_truncated_backup_is_refused(end: int) -> None:
    assert refused(CIPHER[:end]).damage is Damage.TRUNCATED


def test_a_backup_cut_inside_its_last_chunk_is_refused_as_corrupt() -> None:
    error = refused(CIPHER[:-1])
    assert (error.damage, error.chunk) == (Damage.CORRUPT_CHUNK, 3)
    assert str(error) == "open backup: corrupt chunk 3"


@pytest.mark.parametrize("index", [0, 2, 3])
def test_a_changed_byte_in_a_chunk_is_refused_with_that_chunk(index: int) -> None:
    position = min(chunk_at(index).start + 100, len(CIPHER) - 1)
    damaged = bytearray(CIPHER)
    damaged[position] ^= 1
    error = refused(bytes(damaged))
    assert (error.damage, error.chunk) == (Damage.CORRUPT_CHUNK, index)


def test_reordered_chunks_are_refused() -> None:
    swapped = (
        CIPHER[:HEADER] + CIPHER[chunk_at(1)] + CIPHER[chunk_at(0)] + CIPHER[chunk_at(2).start :]
    )
    error = refused(swapped)
    assert (error.damage, error.chunk) == (Damage.CORRUPT_CHUNK, 0)


def test_a_dropped_middle_chunk_is_refused() -> None:
    dropped = CIPHER[: chunk_at(1).start] + CIPHER[chunk_at(2).start :]
    assert (refused(dropped).damage, refused(dropped).chunk) == (Damage.CORRUPT_CHUNK, 1)


def test_a_chunk_from_another_backup_is_refused() -> None:
    other, _ = encrypt(PLAIN)  # same key, same context, same content
    mixed = CIPHER[: chunk_at(1).start] + other[chunk_at(1)] + CIPHER[chunk_at(2).start :]
    error = refused(mixed)
    assert (error.damage, error.chunk) == (Damage.CORRUPT_CHUNK, 1)


def test_the_header_of_another_backup_is_refused() -> None:
    other, _ = encrypt(PLAIN)
    error = refused(other[:HEADER] + CIPHER[HEADER:])
    assert (error.damage, error.chunk) == (Damage.CORRUPT_CHUNK, 0)


def test_data_after_the_last_chunk_is_refused() -> None:
    whole, _ = encrypt(PLAIN[: 2 * CHUNK_SIZE])
    error = refused(whole + b"\x00" * 100)
    assert (error.damage, error.chunk) == (Damage.CORRUPT_CHUNK, 1)


@pytest.mark.parametrize(
    ("position", "damage"),
    [
        (len(MAGIC) + 2, Damage.DAMAGED_HEADER),  # chunk size, still within bounds
        (len(MAGIC), Damage.DAMAGED_HEADER),  # chunk size, out of bounds
        (len(MAGIC) + 4, Damage.OTHER_KEY),  # recipient
        (len(MAGIC) + 4 + 32, Damage.OTHER_BACKUP),  # context digest
        (len(MAGIC) + 4 + 64 + 1, Damage.DAMAGED_HEADER),  # sealed key length
        (HEADER - 5, Damage.DAMAGED_HEADER),  # sealed key
    ],
    ids=["chunk size", "huge chunk size", "recipient", "context", "key length", "sealed key"],
)
def test_a_changed_header_is_refused(position: int, damage: Damage) -> None:
    damaged = bytearray(CIPHER)
    damaged[position] ^= 0x40
    assert refused(bytes(damaged)).damage is damage


def test_encrypting_refuses_what_is_not_a_public_key_or_a_chunk_size() -> None:
    with pytest.raises(SealError):
        encrypt_stream(io.BytesIO(b"x"), io.BytesIO(), b"short", BACKUP)
    with pytest.raises(ValueError, match="chunk size"):
        encrypt_stream(io.BytesIO(b"x"), io.BytesIO(), MESH.public, BACKUP, chunk_size=0)


def test_encrypting_and_decrypting_64_mib_stays_within_10_mib(tmp_path: Path) -> None:
    size = 64 * MiB
    cipher = tmp_path / "backup.enc"
    with cipher.open("wb") as target:
        info, peak = traced(lambda: encrypt_stream(Generated(size), target, MESH.public, BACKUP))
    assert peak < 10 * MiB
    assert (info.plain_bytes, info.cipher_bytes) == (size, cipher.stat().st_size)
    sink = Sink()
    with cipher.open("rb") as source:
        written, peak = traced(lambda: decrypt_stream(source, sink, MESH, BACKUP))
    assert peak < 10 * MiB
    assert written == sink.size == size
    expected = hashlib.sha256()
    for block in Generated(size).blocks():
        expected.update(block)
    assert sink.digest.hexdigest() == expected.hexdigest()


def test_throughput_of_100_mib(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    size = 100 * MiB
    cipher = tmp_path / "backup.enc"
    start = time.perf_counter()
    with cipher.open("wb") as target:
        encrypt_stream(Generated(size), target, MESH.public, BACKUP)
    encrypted = time.perf_counter()
    with cipher.open("rb") as source:
        assert decrypt_stream(source, Sink(), MESH, BACKUP) == size
    decrypted = time.perf_counter()
    with capsys.disabled():
        print(
            f"\n100 MiB backup: encrypt {size / MiB / (encrypted - start):.0f} MiB/s, "
            f"decrypt {size / MiB / (decrypted - encrypted):.0f} MiB/s, "
            f"both {decrypted - start:.2f} s"
        )


class Generated(io.RawIOBase):
    """`size` bytes made as they are read, at most `block` per read (like a pipe)."""

    def __init__(self, size: int, block: int = 64 * 1024) -> None:
        self.size = size
        self.block = block
        self._blocks = self.blocks()
        self._pending = b""

    def blocks(self) -> Iterator[bytes]:
        for start in range(0, self.size, self.block):
            seed = (start // self.block).to_bytes(8, "big")
            yield (hashlib.sha256(seed).digest() * (self.block // 32 + 1))[
                : min(self.block, self.size - start)
            ]

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if not self._pending:
            self._pending = next(self._blocks, b"")
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


class Sink(io.RawIOBase):
    """Counts and hashes what is written, and keeps nothing."""

    def __init__(self) -> None:
        self.size = 0
        self.digest = hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.digest.update(data)
        self.size += len(data)
        return len(data)


def traced(run: Callable[[], T]) -> tuple[T, int]:
    tracemalloc.start()
    try:
        result = run()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
