"""Signed one-time grant tokens. Pure: signing and checking; single use lives in Redis.

A token is ``pgt1.<payload>.<signature>``: base64url JSON, and base64url
HMAC-SHA256 over ``pgt1.<payload>`` with the configured key. The payload binds the
token to a user (``sub``), an action and a scope, an expiry (``exp``), and carries
a unique id (``jti``) that the store marks as used exactly once.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any

from catalog.model import ColumnRef
from gateway.jit.model import SCOPES, column_from_json, column_to_json
from policies.model import Action

VERSION = "pgt1"


class TokenRejected(Exception):
    """A token that must not produce a grant; the message says why."""


@dataclass(frozen=True, slots=True)
class TokenClaims:
    jti: str
    sub: str                                         # the only user who may redeem it
    action: Action
    scope: str                                       # statement | columns
    exp: float                                       # no redemption at or after this time
    duration_s: int                                  # how long the resulting grant lasts
    issued_by: str
    issued_at: float
    fingerprint: str | None = None
    columns: frozenset[ColumnRef] = frozenset()
    categories: frozenset[str] = frozenset()
    uses: int | None = 1                             # uses of the resulting grant
    statement_key: str | None = None                 # scope statement: what the grant covers
    #: the issuer's approver groups: the grant meets only requirements they could approve
    issuer_groups: frozenset[str] = frozenset()

    def to_dict(self) -> dict[str, Any]:
        return {"jti": self.jti, "sub": self.sub, "action": self.action.value,
                "scope": self.scope, "exp": self.exp, "duration_s": self.duration_s,
                "issued_by": self.issued_by, "issued_at": self.issued_at,
                "fingerprint": self.fingerprint,
                "columns": [column_to_json(c) for c in sorted(self.columns)],
                "categories": sorted(self.categories), "uses": self.uses,
                "statement_key": self.statement_key, "issuer_groups": sorted(self.issuer_groups)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TokenClaims":
        claims = cls(jti=str(d["jti"]), sub=str(d["sub"]), action=Action(d["action"]),
                     scope=str(d["scope"]), exp=float(d["exp"]), duration_s=int(d["duration_s"]),
                     issued_by=str(d.get("issued_by", "")), issued_at=float(d.get("issued_at", 0)),
                     fingerprint=d.get("fingerprint"),
                     columns=frozenset(column_from_json(c) for c in d.get("columns", ())),
                     categories=frozenset(d.get("categories", ())), uses=d.get("uses", 1),
                     statement_key=d.get("statement_key"),
                     issuer_groups=frozenset(d.get("issuer_groups") or ()))
        if claims.scope not in SCOPES:
            raise ValueError(f"scope {claims.scope!r}")
        return claims


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign(claims: TokenClaims, key: bytes) -> str:
    payload = _b64(json.dumps(claims.to_dict(), separators=(",", ":"), sort_keys=True).encode())
    signed = f"{VERSION}.{payload}"
    return f"{signed}.{_b64(hmac.new(key, signed.encode(), hashlib.sha256).digest())}"


def open_token(token: str, key: bytes) -> TokenClaims:
    """Check the signature and decode; raises TokenRejected. Does not check expiry or user."""
    parts = (token or "").strip().split(".")
    if len(parts) != 3 or parts[0] != VERSION:
        raise TokenRejected("not a piigate grant token (expected pgt1.<payload>.<signature>)")
    expected = hmac.new(key, f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).digest()
    try:
        given = _unb64(parts[2])
    except ValueError:
        given = b""
    if not hmac.compare_digest(expected, given):
        raise TokenRejected("grant token signature is invalid (altered, or signed with another key)")
    try:
        return TokenClaims.from_dict(json.loads(_unb64(parts[1])))
    except (ValueError, KeyError, TypeError) as e:
        raise TokenRejected(f"grant token payload is malformed: {e}") from None


def check_claims(claims: TokenClaims, principal: str, now: float) -> None:
    """Raise TokenRejected unless ``principal`` may redeem these claims at ``now``."""
    if claims.sub != principal:
        raise TokenRejected("this grant token was issued to another user")
    if now >= claims.exp:
        raise TokenRejected("this grant token has expired; ask an approver for a new one")
