"""RFC 6238 time-based one-time passwords (TOTP), with hmac and struct only. Pure.

Secrets are configured as base32 text (what authenticator apps enrol with).
``verify`` accepts the current step and ``window`` steps either side, to absorb
clock drift between the phone and the gateway.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import struct

_DIGESTS = {"sha1": hashlib.sha1, "sha256": hashlib.sha256, "sha512": hashlib.sha512}


def decode_secret(text: str) -> bytes:
    """Base32 (spaces and case ignored, padding optional) to bytes; ValueError if invalid."""
    cleaned = text.replace(" ", "").upper()
    cleaned += "=" * (-len(cleaned) % 8)
    try:
        secret = base64.b32decode(cleaned)
    except (ValueError, base64.binascii.Error):
        raise ValueError("TOTP secret is not valid base32 (letters A-Z and digits 2-7)") from None
    if len(secret) < 10:
        raise ValueError("TOTP secret is too short: use at least 80 bits (16 base32 characters)")
    return secret


def hotp(secret: bytes, counter: int, digits: int = 6, algorithm: str = "sha1") -> str:
    """RFC 4226 HOTP value for ``counter``."""
    mac = hmac.new(secret, struct.pack(">Q", counter), _DIGESTS[algorithm]).digest()
    offset = mac[-1] & 0x0F
    code = struct.unpack(">I", mac[offset:offset + 4])[0] & 0x7FFFFFFF
    return str(code % (10 ** digits)).zfill(digits)


def totp(secret: bytes, now: float, step: int = 30, digits: int = 6, algorithm: str = "sha1") -> str:
    return hotp(secret, int(now // step), digits, algorithm)


def verify(secret: bytes, code: str, now: float, window: int = 1, step: int = 30,
           digits: int = 6, algorithm: str = "sha1") -> int | None:
    """The matching time step (for replay protection), or None when ``code`` is wrong."""
    code = (code or "").strip()
    if len(code) != digits or not code.isdigit():
        return None
    current = int(now // step)
    for counter in range(current - window, current + window + 1):
        if hmac.compare_digest(hotp(secret, counter, digits, algorithm), code):
            return counter
    return None
