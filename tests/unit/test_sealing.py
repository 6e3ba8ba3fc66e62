"""Sealed boxes open only with the key they were sealed to and in the context they were
sealed for; every damage is refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshd.core.sealing import (
    KeyPair,
    SealError,
    fingerprint,
    from_text,
    open_sealed,
    random_secret,
    seal,
    to_text,
)

DROPLET = KeyPair.new()


@given(st.binary(max_size=4096), st.binary(max_size=64))
def test_a_box_opens_with_its_key_and_context(value: bytes, context: bytes) -> None:
    assert open_sealed(DROPLET, seal(DROPLET.public, value, context), context) == value


def test_another_key_another_context_or_damage_does_not_open() -> None:
    box = seal(DROPLET.public, b"canary", b"sealed.web1.shop.prod.api_key@3")
    with pytest.raises(SealError):
        open_sealed(KeyPair.new(), box, b"sealed.web1.shop.prod.api_key@3")
    with pytest.raises(SealError):
        open_sealed(DROPLET, box, b"sealed.web2.shop.prod.api_key@3")  # copied to web2
    with pytest.raises(SealError):
        open_sealed(DROPLET, box, b"sealed.web1.shop.prod.api_key@2")  # an older version
    for damaged in (box[:-1] + bytes([box[-1] ^ 1]), box[:20], b"\x02" + box[1:]):
        with pytest.raises(SealError):
            open_sealed(DROPLET, damaged, b"sealed.web1.shop.prod.api_key@3")


def test_each_box_is_new_and_holds_no_clear_text() -> None:
    first = seal(DROPLET.public, b"canary-value", b"c")
    assert first != seal(DROPLET.public, b"canary-value", b"c")
    assert b"canary-value" not in first


def test_keys_round_trip_as_text_and_have_stable_fingerprints() -> None:
    again = KeyPair.from_private(DROPLET.private)
    assert again == DROPLET and again.fingerprint == fingerprint(DROPLET.public)
    assert from_text(DROPLET.public_text, "key") == DROPLET.public
    with pytest.raises(SealError, match="not base64"):
        from_text("not base64!", "key")
    with pytest.raises(SealError):
        seal(b"short", b"x", b"")
    with pytest.raises(SealError):
        seal(bytes(32), b"x", b"")  # the all-zero point: no shared secret
    assert to_text(b"\x00") == "AA=="


def test_generated_secrets_are_long_and_distinct() -> None:
    made = {random_secret() for _ in range(100)}
    assert len(made) == 100 and {len(s) for s in made} == {43}
