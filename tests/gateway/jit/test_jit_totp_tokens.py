"""TOTP (RFC 6238 appendix B vectors) and signed token checks, pure."""
import dataclasses

import pytest

from gateway.jit import tokens, totp
from policies.model import Action

SEED20 = b"12345678901234567890"
SEED32 = b"12345678901234567890123456789012"
SEED64 = b"1234567890123456789012345678901234567890123456789012345678901234"

# RFC 6238 Appendix B: time, 8-digit TOTP for SHA1, SHA256, SHA512.
VECTORS = [
    (59, "94287082", "46119246", "90693936"),
    (1111111109, "07081804", "68084774", "25091201"),
    (1111111111, "14050471", "67062674", "99943326"),
    (1234567890, "89005924", "91819424", "93441116"),
    (2000000000, "69279037", "90698825", "38618901"),
    (20000000000, "65353130", "77737706", "47863826"),
]


@pytest.mark.parametrize("t, sha1, sha256, sha512", VECTORS)
def test_rfc6238_vectors(t, sha1, sha256, sha512):
    assert totp.totp(SEED20, t, digits=8, algorithm="sha1") == sha1
    assert totp.totp(SEED32, t, digits=8, algorithm="sha256") == sha256
    assert totp.totp(SEED64, t, digits=8, algorithm="sha512") == sha512


def test_verify_window_and_garbage():
    code = totp.totp(SEED20, 1000.0)
    assert totp.verify(SEED20, code, 1000.0) == 1000 // 30
    assert totp.verify(SEED20, code, 1029.0) is not None          # one step later
    assert totp.verify(SEED20, code, 1000.0 + 95) is None          # three steps later
    assert totp.verify(SEED20, "12345", 1000.0) is None
    assert totp.verify(SEED20, "abcdef", 1000.0) is None


def test_decode_secret():
    assert totp.decode_secret("GEZD GNBV GY3T QOJQ GEZD GNBV GY3T QOJQ") == SEED20
    with pytest.raises(ValueError):
        totp.decode_secret("not base32!")
    with pytest.raises(ValueError):
        totp.decode_secret("GEZDGNBV")


def claims(**kw):
    base = dict(jti="j1", sub="ci-bot", action=Action.READ, scope="columns", exp=200.0,
                duration_s=60, issued_by="bob", issued_at=100.0, categories=frozenset({"email"}))
    base.update(kw)
    return tokens.TokenClaims(**base)


def test_token_round_trip_and_tampering():
    key = b"k" * 32
    tok = tokens.sign(claims(), key)
    assert tokens.open_token(tok, key) == claims()
    with pytest.raises(tokens.TokenRejected, match="signature"):
        tokens.open_token(tok, b"x" * 32)
    head, payload, sig = tok.split(".")
    forged = tokens.sign(claims(sub="mallory"), key).split(".")[1]
    with pytest.raises(tokens.TokenRejected, match="signature"):
        tokens.open_token(f"{head}.{forged}.{sig}", key)
    with pytest.raises(tokens.TokenRejected, match="not a piigate"):
        tokens.open_token("hello", key)


def test_token_claims_user_and_expiry():
    c = claims()
    tokens.check_claims(c, "ci-bot", 199.9)
    with pytest.raises(tokens.TokenRejected, match="another user"):
        tokens.check_claims(c, "alice", 150)
    with pytest.raises(tokens.TokenRejected, match="expired"):
        tokens.check_claims(c, "ci-bot", 200.0)
    assert dataclasses.replace(c, sub="x").sub == "x"
