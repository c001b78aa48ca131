"""SCRAM-SHA-256 (RFC 5802 / RFC 7677) as PostgreSQL uses it, both sides, sans-IO.

The server side authenticates clients as *gateway users* against stored verifiers
(``SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>``, PostgreSQL's own format,
so a verifier can also be copied from pg_authid). The client side lets the gateway
log in to an upstream that asks for SCRAM. Channel binding is not offered
(``n,,``), like libpq without TLS binding.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
import stringprep
import unicodedata
from dataclasses import dataclass

MECHANISM = "SCRAM-SHA-256"
DEFAULT_ITERATIONS = 4096


class ScramError(Exception):
    pass


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


_PROHIBITED = (stringprep.in_table_c12, stringprep.in_table_c21_c22, stringprep.in_table_c3,
               stringprep.in_table_c4, stringprep.in_table_c5, stringprep.in_table_c6,
               stringprep.in_table_c7, stringprep.in_table_c8, stringprep.in_table_c9,
               stringprep.in_table_a1)


def _normalize(password: str) -> bytes:
    """SASLprep (RFC 4013) the way PostgreSQL's pg_saslprep applies it: map
    (commonly-mapped-to-nothing removed, non-ASCII spaces to space), NFKC, check
    prohibited and bidi rules; when any step fails, the raw UTF-8 bytes are used."""
    if password.isascii():
        return password.encode()
    mapped = "".join(" " if stringprep.in_table_c12(c) else c
                     for c in password if not stringprep.in_table_b1(c))
    norm = unicodedata.normalize("NFKC", mapped)
    if not norm or any(f(c) for c in norm for f in _PROHIBITED):
        return password.encode()
    if any(stringprep.in_table_d1(c) for c in norm):
        if any(stringprep.in_table_d2(c) for c in norm) or not (
                stringprep.in_table_d1(norm[0]) and stringprep.in_table_d1(norm[-1])):
            return password.encode()
    return norm.encode()


def salted_password(password: str, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", _normalize(password), salt, iterations)


@dataclass(frozen=True, slots=True)
class Verifier:
    iterations: int
    salt: bytes
    stored_key: bytes
    server_key: bytes

    @classmethod
    def parse(cls, text: str) -> "Verifier":
        try:
            mech, rest = text.split("$", 1)
            iter_salt, keys = rest.split("$", 1)
            iterations, salt = iter_salt.split(":", 1)
            stored, server = keys.split(":", 1)
            if mech != MECHANISM:
                raise ValueError
            v = cls(int(iterations), base64.b64decode(salt, validate=True),
                    base64.b64decode(stored, validate=True), base64.b64decode(server, validate=True))
        except (ValueError, TypeError):
            raise ValueError(
                "not a SCRAM-SHA-256 verifier; expected SCRAM-SHA-256$<iterations>:<salt>$"
                "<StoredKey>:<ServerKey> (make one with `piigate passwd`)") from None
        if v.iterations < 1 or len(v.stored_key) != 32 or len(v.server_key) != 32:
            raise ValueError("SCRAM-SHA-256 verifier has bad key lengths or iteration count")
        return v

    def __str__(self) -> str:
        return (f"{MECHANISM}${self.iterations}:{_b64(self.salt)}$"
                f"{_b64(self.stored_key)}:{_b64(self.server_key)}")


def make_verifier(password: str, iterations: int = DEFAULT_ITERATIONS, salt: bytes | None = None) -> str:
    """Turn a password into a stored verifier; the password itself is never kept."""
    salt = salt if salt is not None else os.urandom(16)
    salted = salted_password(password, salt, iterations)
    client_key = _hmac(salted, b"Client Key")
    stored = hashlib.sha256(client_key).digest()
    server = _hmac(salted, b"Server Key")
    return str(Verifier(iterations, salt, stored, server))


def _attrs(msg: str) -> dict:
    out = {}
    for part in msg.split(","):
        if len(part) >= 2 and part[1] == "=":
            out[part[0]] = part[2:]
    return out


class ScramServer:
    """One server-side exchange. Feed the client's messages, send what it returns.

    With ``verifier=None`` (unknown user) the exchange runs to the end with a
    made-up verifier and fails at the proof, so a client cannot tell an unknown
    user from a wrong password (and timing stays alike).
    """

    def __init__(self, verifier: Verifier | None, nonce: bytes | None = None, *,
                 mock_salt: bytes | None = None, mock_iterations: int = DEFAULT_ITERATIONS):
        self._known = verifier is not None
        # Unknown user: like PostgreSQL's mock authentication, the salt is stable per
        # user name (the caller derives it from a secret) and the iteration count is
        # the one real verifiers use, so two handshakes reveal nothing.
        self.verifier = verifier or Verifier(
            mock_iterations, mock_salt or os.urandom(16), os.urandom(32), os.urandom(32))
        self._server_nonce = _b64(nonce or os.urandom(18))
        self._client_first_bare = ""
        self._server_first = ""
        self._nonce = ""
        self.state = "initial"

    def client_first(self, data: bytes) -> bytes:
        if self.state != "initial":
            raise ScramError("SCRAM: unexpected client-first-message")
        msg = data.decode("utf-8", "replace")
        if not msg.startswith(("n,", "y,")):
            # 'p=' means the client demands channel binding, which we did not offer
            raise ScramError("SCRAM: unsupported channel binding (connect with channel_binding=disable or prefer)")
        parts = msg.split(",", 2)
        if len(parts) < 3:
            raise ScramError("SCRAM: malformed client-first-message")
        self._client_first_bare = parts[2]
        attrs = _attrs(self._client_first_bare)
        client_nonce = attrs.get("r")
        if not client_nonce:
            raise ScramError("SCRAM: client-first-message has no nonce")
        self._nonce = client_nonce + self._server_nonce
        self._server_first = f"r={self._nonce},s={_b64(self.verifier.salt)},i={self.verifier.iterations}"
        self.state = "first_sent"
        return self._server_first.encode()

    def client_final(self, data: bytes) -> bytes:
        """Returns server-final-message data; raises ScramError when the proof fails."""
        if self.state != "first_sent":
            raise ScramError("SCRAM: unexpected client-final-message")
        self.state = "done"
        msg = data.decode("utf-8", "replace")
        if ",p=" not in msg:
            raise ScramError("SCRAM: client-final-message has no proof")
        without_proof, proof_b64 = msg.rsplit(",p=", 1)
        attrs = _attrs(without_proof)
        if attrs.get("r") != self._nonce:
            raise ScramError("SCRAM: nonce mismatch")
        if attrs.get("c") not in ("biws", "eSws"):   # base64("n,,") / base64("y,,")
            raise ScramError("SCRAM: unexpected channel binding data")
        auth_message = f"{self._client_first_bare},{self._server_first},{without_proof}".encode()
        try:
            proof = base64.b64decode(proof_b64, validate=True)
        except ValueError:
            raise ScramError("SCRAM: malformed proof") from None
        signature = _hmac(self.verifier.stored_key, auth_message)
        if len(proof) != len(signature):
            raise ScramError("SCRAM: malformed proof")
        client_key = bytes(a ^ b for a, b in zip(proof, signature))
        ok = hmac.compare_digest(hashlib.sha256(client_key).digest(), self.verifier.stored_key)
        if not ok or not self._known:
            raise ScramError("password authentication failed")
        server_sig = _hmac(self.verifier.server_key, auth_message)
        return f"v={_b64(server_sig)}".encode()


class ScramClient:
    """Client side, used by the gateway to log in to an upstream that wants SCRAM."""

    def __init__(self, user: str, password: str, nonce: bytes | None = None):
        self.password = password
        self._client_nonce = _b64(nonce or os.urandom(18))
        self._client_first_bare = f"n=,r={self._client_nonce}"   # PostgreSQL ignores n=
        self._auth_message = b""
        self._salted = b""

    def first(self) -> bytes:
        return ("n,," + self._client_first_bare).encode()

    def final(self, server_first: bytes) -> bytes:
        sf = server_first.decode()
        attrs = _attrs(sf)
        nonce, salt, iterations = attrs.get("r", ""), attrs.get("s", ""), attrs.get("i", "0")
        if not nonce.startswith(self._client_nonce):
            raise ScramError("upstream SCRAM nonce does not extend ours")
        self._salted = salted_password(self.password, base64.b64decode(salt), int(iterations))
        without_proof = f"c=biws,r={nonce}"
        self._auth_message = f"{self._client_first_bare},{sf},{without_proof}".encode()
        client_key = _hmac(self._salted, b"Client Key")
        stored = hashlib.sha256(client_key).digest()
        sig = _hmac(stored, self._auth_message)
        proof = bytes(a ^ b for a, b in zip(client_key, sig))
        return f"{without_proof},p={_b64(proof)}".encode()

    def verify(self, server_final: bytes) -> None:
        attrs = _attrs(server_final.decode())
        expected = _hmac(_hmac(self._salted, b"Server Key"), self._auth_message)
        if attrs.get("v") != _b64(expected):
            raise ScramError("upstream server signature is wrong: not the server we meant to reach")


_MOCK_SECRET = os.urandom(32)


def mock_salt(user: str) -> bytes:
    """A stable, secret-derived salt for a user that does not exist."""
    return hmac.new(_MOCK_SECRET, user.encode(), hashlib.sha256).digest()[:16]


def md5_password(user: str, password: str, salt: bytes) -> bytes:
    """PostgreSQL's md5 password response: 'md5' + md5(md5(password + user) + salt)."""
    inner = hashlib.md5((password + user).encode()).hexdigest().encode()
    return b"md5" + hashlib.md5(inner + salt).hexdigest().encode()
