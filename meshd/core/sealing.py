"""Sealed boxes: a value encrypted to one X25519 public key, readable only with its private
key (docs/secrets.md). Each box has a fresh ephemeral key pair; the shared secret goes through
HKDF-SHA256 (salted with both public keys) into a ChaCha20-Poly1305 key. `context` is
authenticated, not encrypted: the entry's key and version, so that a box copied to another
entry (another droplet, secret or version) does not open there.

Wire form, then base64 for text fields: version byte 1 | ephemeral public key (32) | nonce
(12) | ciphertext with its 16-byte tag. Keys travel as base64 of their 32 raw bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from protocol.errors import MeshError

BOX_VERSION = 1
KEY_BYTES = 32
NONCE_BYTES = 12
INFO = b"meshd sealed box v1"


class SealError(MeshError):
    """A box that does not open: another key, another context, or damaged."""


@dataclass(frozen=True, slots=True)
class KeyPair:
    """Raw X25519 keys. `private` never leaves the machine that made it, except sealed."""

    private: bytes
    public: bytes

    @classmethod
    def new(cls) -> KeyPair:
        return cls.from_private(X25519PrivateKey.generate().private_bytes_raw())

    @classmethod
    def from_private(cls, private: bytes) -> KeyPair:
        key = _private_key(private)
        return cls(private, key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))

    @property
    def public_text(self) -> str:
        return to_text(self.public)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public)


def fingerprint(public: bytes) -> str:
    """A short name of a public key (first 16 hex digits of its SHA-256)."""
    return hashlib.sha256(public).hexdigest()[:16]


def to_text(data: bytes) -> str:
    return base64.b64encode(data).decode()


def from_text(text: str, what: str = "box") -> bytes:
    try:
        return base64.b64decode(text.encode(), validate=True)
    except (binascii.Error, ValueError):
        raise SealError(f"{what} is not base64") from None


def seal(public: bytes, value: bytes, context: bytes) -> bytes:
    """`value` sealed to the holder of `public`'s private key, bound to `context`."""
    ephemeral = X25519PrivateKey.generate()
    ephemeral_public = ephemeral.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    key = _box_key(_exchange(ephemeral, public), ephemeral_public, public)
    nonce = secrets.token_bytes(NONCE_BYTES)
    sealed = ChaCha20Poly1305(key).encrypt(nonce, value, context)
    return bytes([BOX_VERSION]) + ephemeral_public + nonce + sealed


def open_sealed(keys: KeyPair, box: bytes, context: bytes) -> bytes:
    """The value in `box`; SealError when it was not sealed to `keys` with `context`."""
    head = 1 + KEY_BYTES + NONCE_BYTES
    if len(box) < head + 16 or box[0] != BOX_VERSION:
        raise SealError("not a sealed box of this version")
    ephemeral_public = box[1 : 1 + KEY_BYTES]
    nonce = box[1 + KEY_BYTES : head]
    shared = _exchange(_private_key(keys.private), ephemeral_public)
    key = _box_key(shared, ephemeral_public, keys.public)
    try:
        return ChaCha20Poly1305(key).decrypt(nonce, box[head:], context)
    except InvalidTag:
        raise SealError("the box does not open with this key and context") from None


def entry_context(key: str, version: int | str) -> bytes:
    """What a box kept in the store is bound to: its entry's key and the version of what it
    holds (or, for the mesh key sealed to a droplet, that droplet key's fingerprint)."""
    return f"{key}@{version}".encode()


def seal_value(mesh_public: bytes, key: str, version: int, value: bytes) -> str:
    """A secret's value as its entry `key` keeps it: sealed to the mesh key, as text."""
    return to_text(seal(mesh_public, value, entry_context(key, version)))


def open_value(mesh: KeyPair, key: str, version: int, sealed: str) -> bytes:
    return open_sealed(mesh, from_text(sealed), entry_context(key, version))


def holder_context(droplet: str, key: str) -> bytes:
    """The mesh key's private half sealed to `droplet`'s key `key` (a fingerprint); the
    operator's escrow key is the droplet `escrow`."""
    return entry_context(f"holder.{droplet}", key)


def open_mesh_key(keys: KeyPair, droplet: str, key: str, sealed: str) -> KeyPair:
    """The mesh key pair from its private half sealed to `keys` (SealError if it does not
    open with them)."""
    return KeyPair.from_private(open_sealed(keys, from_text(sealed), holder_context(droplet, key)))


def random_secret() -> str:
    """A generated secret: 32 random bytes as URL-safe text (43 characters)."""
    return secrets.token_urlsafe(32)


def _box_key(shared: bytes, ephemeral_public: bytes, public: bytes) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=ephemeral_public + public, info=INFO)
    return hkdf.derive(shared)


def _exchange(private: X25519PrivateKey, public: bytes) -> bytes:
    try:
        return private.exchange(_public_key(public))
    except ValueError:  # a low-order point: no shared secret
        raise SealError("no shared secret with this public key") from None


def _private_key(raw: bytes) -> X25519PrivateKey:
    try:
        return X25519PrivateKey.from_private_bytes(raw)
    except ValueError:
        raise SealError("not an X25519 private key") from None


def _public_key(raw: bytes) -> X25519PublicKey:
    try:
        return X25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise SealError("not an X25519 public key") from None
