"""Backup files encrypted on the droplet, streamed: a random data key sealed to the mesh key's
public half (`meshd.core.sealing`), then the file in ChaCha20-Poly1305 chunks. Droplets that
hold the mesh key open them; so does the operator, through the escrow key's copy of it.

Works on binary file objects opened by the caller (the core does no I/O) and never holds more
than two chunks. Layout (integers big-endian):

    header: b"MESHDBK1" | chunk size (u32) | recipient public key (32) | SHA-256 of the
            context (32) | sealed data key length (u16) | sealed data key
    body:   chunk 0 | chunk 1 | ... each `chunk size` plain bytes + a 16-byte tag; the last
            one shorter or empty (an empty file has one empty final chunk)

The data key is sealed with `sealing.seal`, bound to the context (the backup's id) and to a
digest of the header fields before it, so a changed chunk size or recipient stops the key
from opening. Chunk i has nonce = 4 zero bytes | i (u64) and associated data = SHA-256 of the
whole header | final flag (1 byte): a truncated, reordered or appended body fails, and chunks
from another backup fail already by their key. The recipient and context digest are in the
clear only to say why a file does not open ("sealed to another key", "bound to another
backup"); they are public facts and authenticated like the rest.
"""

from __future__ import annotations

import hashlib
import secrets
import struct
from dataclasses import dataclass
from enum import Enum
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from meshd.core.sealing import KEY_BYTES, KeyPair, SealError, fingerprint, open_sealed, seal

MAGIC = b"MESHDBK1"
CHUNK_SIZE = 1024 * 1024
MAX_CHUNK_SIZE = 16 * 1024 * 1024  # the header is untrusted: bounds what a read may ask for
MAX_SEALED_KEY = 1024
TAG_BYTES = 16
DIGEST_BYTES = 32
_FIELDS = struct.Struct(f">I{KEY_BYTES}s{DIGEST_BYTES}s")  # after the magic
_KEY_LENGTH = struct.Struct(">H")
_NONCE_PREFIX = bytes(4)
_NOT_FINAL, _FINAL = b"\x00", b"\x01"


class Damage(Enum):
    """Why a backup file does not open."""

    NOT_A_BACKUP = "not a meshd backup"
    OTHER_KEY = "sealed to another key"
    OTHER_BACKUP = "bound to another backup"
    DAMAGED_HEADER = "damaged header"
    TRUNCATED = "truncated"
    CORRUPT_CHUNK = "corrupt chunk"


class BackupCryptoError(SealError):
    """A backup file that does not open: `damage` says why, `chunk` which chunk (counted from
    0) for a corrupt chunk, `detail` the facts behind it. A `SealError`, so that code refusing
    sealed values that do not open refuses these too."""

    def __init__(self, damage: Damage, *, chunk: int | None = None, detail: str = "") -> None:
        self.damage = damage
        self.chunk = chunk
        self.detail = detail
        reason = damage.value if chunk is None else f"{damage.value} {chunk}"
        super().__init__(f"open backup: {reason}" + (f" ({detail})" if detail else ""))


@dataclass(frozen=True, slots=True)
class EncryptedInfo:
    """What `encrypt_stream` wrote: plain bytes read, cipher bytes written, and the SHA-256
    (hex) of the cipher bytes, as a backup target records it."""

    plain_bytes: int
    cipher_bytes: int
    sha256: str


def context_digest(context: bytes) -> bytes:
    return hashlib.sha256(b"meshd backup context\0" + context).digest()


def encrypt_stream(
    source: BinaryIO,
    target: BinaryIO,
    recipient: bytes,
    context: bytes,
    *,
    chunk_size: int = CHUNK_SIZE,
) -> EncryptedInfo:
    """Encrypt everything `source` holds into `target`, readable with the private half of
    `recipient` (raw X25519 public key: `sealing.from_text(mesh_key.public)`) and `context`
    (the backup's id). SealError if `recipient` is not a public key."""
    if not 0 < chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk size {chunk_size} is not within 1..{MAX_CHUNK_SIZE}")
    data_key = secrets.token_bytes(32)
    header = _header(recipient, context, data_key, chunk_size)
    aead = ChaCha20Poly1305(data_key)
    digest = hashlib.sha256(header).digest()
    cipher_hash = hashlib.sha256(header)
    target.write(header)
    plain_bytes, cipher_bytes = 0, len(header)
    index = 0
    chunk = _read_exact(source, chunk_size)
    while True:
        # A chunk is final when nothing follows it, so a file of k full chunks ends on a full
        # final chunk instead of an empty one: one chunk of look-ahead.
        following = _read_exact(source, chunk_size) if len(chunk) == chunk_size else b""
        final = not following
        sealed = aead.encrypt(_nonce(index), chunk, digest + (_FINAL if final else _NOT_FINAL))
        target.write(sealed)
        cipher_hash.update(sealed)
        plain_bytes += len(chunk)
        cipher_bytes += len(sealed)
        if final:
            return EncryptedInfo(plain_bytes, cipher_bytes, cipher_hash.hexdigest())
        chunk, index = following, index + 1


def decrypt_stream(source: BinaryIO, target: BinaryIO, keys: KeyPair, context: bytes) -> int:
    """Decrypt the backup in `source` into `target` with `keys` (the mesh key pair) and the
    `context` it was encrypted for; the number of plain bytes written. Every chunk is checked
    before it is written, but a damaged or truncated body shows only when reached: on
    BackupCryptoError, discard what `target` received (write to a temporary file, rename on
    success)."""
    header, chunk_size, aead = _open_header(source, keys, context)
    digest = hashlib.sha256(header).digest()
    block = chunk_size + TAG_BYTES
    written = 0
    index = 0
    sealed = _read_exact(source, block)
    while True:
        following = _read_exact(source, block) if len(sealed) == block else b""
        final = not following
        plain = _open_chunk(aead, index, sealed, digest, final=final)
        target.write(plain)
        written += len(plain)
        if final:
            return written
        sealed, index = following, index + 1


def _header(recipient: bytes, context: bytes, data_key: bytes, chunk_size: int) -> bytes:
    if len(recipient) != KEY_BYTES:
        raise SealError(f"not an X25519 public key: {len(recipient)} bytes, not {KEY_BYTES}")
    fields = MAGIC + _FIELDS.pack(chunk_size, recipient, context_digest(context))
    sealed_key = seal(recipient, data_key, _key_context(fields, context))
    return fields + _KEY_LENGTH.pack(len(sealed_key)) + sealed_key


def _key_context(fields: bytes, context: bytes) -> bytes:
    """What the sealed data key is bound to: the backup's context and the header before it."""
    return b"meshd backup v1\0" + hashlib.sha256(fields).digest() + context


def _open_header(
    source: BinaryIO, keys: KeyPair, context: bytes
) -> tuple[bytes, int, ChaCha20Poly1305]:
    """The header's bytes, the chunk size and the cipher of the body, checked in the order
    that gives the most useful reason."""
    if _read_exact(source, len(MAGIC)) != MAGIC:
        raise BackupCryptoError(Damage.NOT_A_BACKUP, detail="no MESHDBK1 header")
    raw = _read_exact(source, _FIELDS.size + _KEY_LENGTH.size)
    if len(raw) < _FIELDS.size + _KEY_LENGTH.size:
        raise BackupCryptoError(Damage.TRUNCATED, detail="in the header")
    chunk_size, recipient, bound_to = _FIELDS.unpack_from(raw)
    (key_length,) = _KEY_LENGTH.unpack_from(raw, _FIELDS.size)
    if recipient != keys.public:
        detail = f"key {fingerprint(recipient)}, not {keys.fingerprint}"
        raise BackupCryptoError(Damage.OTHER_KEY, detail=detail)
    if bound_to != context_digest(context):
        raise BackupCryptoError(Damage.OTHER_BACKUP)
    if not 0 < chunk_size <= MAX_CHUNK_SIZE or not 0 < key_length <= MAX_SEALED_KEY:
        detail = f"chunk size {chunk_size}, sealed key of {key_length} bytes"
        raise BackupCryptoError(Damage.DAMAGED_HEADER, detail=detail)
    sealed_key = _read_exact(source, key_length)
    if len(sealed_key) < key_length:
        raise BackupCryptoError(Damage.TRUNCATED, detail="in the header")
    fields = MAGIC + raw[: _FIELDS.size]
    try:
        data_key = open_sealed(keys, sealed_key, _key_context(fields, context))
    except SealError:
        raise BackupCryptoError(
            Damage.DAMAGED_HEADER, detail="the data key does not open"
        ) from None
    return MAGIC + raw + sealed_key, chunk_size, ChaCha20Poly1305(data_key)


def _open_chunk(
    aead: ChaCha20Poly1305, index: int, sealed: bytes, digest: bytes, *, final: bool
) -> bytes:
    if final and len(sealed) < TAG_BYTES:
        raise BackupCryptoError(Damage.TRUNCATED, detail=f"chunk {index} is cut short")
    nonce = _nonce(index)
    try:
        return aead.decrypt(nonce, sealed, digest + (_FINAL if final else _NOT_FINAL))
    except InvalidTag:
        pass
    if final and _opens(aead, nonce, sealed, digest + _NOT_FINAL):
        # A whole chunk that was not the last one: the file was cut at a chunk boundary.
        raise BackupCryptoError(Damage.TRUNCATED, detail=f"ends after chunk {index}")
    # A final chunk cut in the middle looks the same as a damaged one: no length to compare.
    raise BackupCryptoError(Damage.CORRUPT_CHUNK, chunk=index)


def _opens(aead: ChaCha20Poly1305, nonce: bytes, sealed: bytes, associated: bytes) -> bool:
    try:
        aead.decrypt(nonce, sealed, associated)
    except InvalidTag:
        return False
    return True


def _nonce(index: int) -> bytes:
    return _NONCE_PREFIX + index.to_bytes(8, "big")


def _read_exact(source: BinaryIO, size: int) -> bytes:
    """`size` bytes, fewer only at the end: raw streams and pipes may return short reads."""
    data = source.read(size)
    if len(data) in (0, size):
        return data
    parts = [data]
    missing = size - len(data)
    while missing and (more := source.read(missing)):
        parts.append(more)
        missing -= len(more)
    return b"".join(parts)
