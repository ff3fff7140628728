"""The sender's RFC 8291 encryption, checked against http_ece, an independent implementation.

The journey and browser tests show real browsers decrypting the same bytes; these
check the format and the edge cases a browser would only show as a silent drop.
"""

from __future__ import annotations

import secrets

import http_ece
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from flask_webpush_targeted.payload import MAX_PLAINTEXT
from flask_webpush_targeted.transport.b64url import b64url_encode
from flask_webpush_targeted.transport.encryption import encrypt


def browser_keys() -> tuple[ec.EllipticCurvePrivateKey, str, bytes, str]:
    """A browser's private key and auth secret, and the p256dh and auth it gives out."""
    private = ec.generate_private_key(ec.SECP256R1())
    public = private.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    auth = secrets.token_bytes(16)
    return private, b64url_encode(public), auth, b64url_encode(auth)


@pytest.mark.parametrize("size", [0, 1, 313, MAX_PLAINTEXT])
def test_http_ece_decrypts_what_the_sender_encrypts(size: int) -> None:
    private, p256dh, auth, auth_b64 = browser_keys()
    payload = secrets.token_bytes(size)
    body = encrypt(payload, p256dh, auth_b64)
    assert http_ece.decrypt(body, private_key=private, auth_secret=auth,
                            version="aes128gcm") == payload
    # salt 16 + rs 4 + idlen 1 + key id 65, then the payload, its delimiter and the GCM tag
    assert len(body) == 86 + size + 1 + 16
    assert len(body) <= 4096


def test_the_header_carries_rs_4096_and_a_fresh_ephemeral_key_and_salt_per_message() -> None:
    _private, p256dh, _auth, auth_b64 = browser_keys()
    first, second = (encrypt(b"same text", p256dh, auth_b64) for _ in range(2))
    assert first[16:21] == second[16:21] == b"\x00\x00\x10\x00\x41"
    assert first[21] == second[21] == 0x04  # uncompressed point
    assert first[:16] != second[:16], "the salt must be new for every message"
    assert first[21:86] != second[21:86], "the ephemeral key must be new for every message"


def test_a_key_for_another_browser_does_not_decrypt() -> None:
    _private, p256dh, auth, auth_b64 = browser_keys()
    other, _p, _a, _ab = browser_keys()
    body = encrypt(b"for someone else", p256dh, auth_b64)
    with pytest.raises(http_ece.ECEException, match="InvalidTag"):
        http_ece.decrypt(body, private_key=other, auth_secret=auth, version="aes128gcm")


def test_a_p256dh_that_is_not_a_curve_point_is_refused() -> None:
    _private, p256dh, _auth, auth_b64 = browser_keys()
    bad = b64url_encode(b"\x04" + b"\x01" * 64)
    with pytest.raises(ValueError):
        encrypt(b"x", bad, auth_b64)


def test_a_payload_over_one_record_is_refused() -> None:
    _private, p256dh, _auth, auth_b64 = browser_keys()
    with pytest.raises(ValueError, match="too large"):
        encrypt(b"x" * (MAX_PLAINTEXT + 1), p256dh, auth_b64)
