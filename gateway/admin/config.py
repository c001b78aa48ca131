"""The ``[admin]`` section of the gateway TOML, validated with errors naming the key.

Example::

    [admin]
    listen = "127.0.0.1:8080"
    public_url = "http://127.0.0.1:8080/"     # what held clients are told to open
    token_issuer_groups = ["security"]         # who may issue one-time tokens (default: any approver)

    [[admin.approvers]]
    name = "bob"
    token_sha256 = "9f86d0...64 hex"           # sha256 of the bearer token; never the token
    groups = ["dba"]
    totp_secret = "JBSWY3DPEHPK3PXP..."        # optional: for policies with approver_totp

``hash_token(token)`` gives the value for ``token_sha256``; ``new_token()`` makes a
token worth hashing.
"""
from __future__ import annotations

import hashlib
import re
import secrets
import unicodedata
from dataclasses import dataclass
from typing import Any, Mapping

from gateway.jit import totp as totp_mod
from gateway.jit.config import ConfigError
from gateway.jit.model import identity

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_KEYS = {"listen", "public_url", "approvers", "token_issuer_groups"}
_APPROVER_KEYS = {"name", "token_sha256", "groups", "totp_secret"}


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return "pga_" + secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class Approver:
    name: str
    token_sha256: str
    groups: frozenset[str] = frozenset()
    totp_secret: bytes | None = None


@dataclass(frozen=True)
class AdminConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str = ""
    approvers: tuple[Approver, ...] = ()
    token_issuer_groups: frozenset[str] = frozenset()

    def approver_for_token(self, token: str) -> Approver | None:
        digest = hash_token(token)
        found = None
        for a in self.approvers:
            # Compare every entry in constant time so timing says nothing about which matched.
            if secrets.compare_digest(a.token_sha256, digest):
                found = a
        return found

    @classmethod
    def from_table(cls, table: Mapping[str, Any] | None, where: str = "config") -> "AdminConfig":
        t = dict(table or {})
        unknown = sorted(set(t) - _KEYS)
        if unknown:
            raise ConfigError(f"{where}: [admin]: unknown key(s) {', '.join(unknown)}; "
                              f"expected some of {', '.join(sorted(_KEYS))}")
        listen = t.get("listen", "127.0.0.1:8080")
        if not isinstance(listen, str) or ":" not in listen:
            raise ConfigError(f"{where}: [admin].listen: expected \"host:port\", got {listen!r}")
        host, _, port_text = listen.rpartition(":")
        if not port_text.isdigit() or not 0 <= int(port_text) <= 65535 or not host:
            raise ConfigError(f"{where}: [admin].listen: expected \"host:port\", got {listen!r}")
        public_url = t.get("public_url", "")
        if not isinstance(public_url, str):
            raise ConfigError(f"{where}: [admin].public_url: expected a URL string")
        issuers = t.get("token_issuer_groups", [])
        if not isinstance(issuers, list) or not all(isinstance(g, str) for g in issuers):
            raise ConfigError(f"{where}: [admin].token_issuer_groups: expected a list of group names")
        raw = t.get("approvers", [])
        if not isinstance(raw, list):
            raise ConfigError(f"{where}: [admin].approvers: expected [[admin.approvers]] tables")
        approvers, names, hashes = [], {}, set()
        for i, entry in enumerate(raw, 1):
            at = f"{where}: [[admin.approvers]] #{i}"
            approvers.append(_approver(entry, at))
            who = identity(approvers[-1].name)
            if who in names:
                same = names[who]
                raise ConfigError(f"{at}.name: approver {approvers[-1].name!r} appears twice"
                                  + ("" if same == approvers[-1].name else
                                     f" (as {same!r}: names are compared ignoring case, width and "
                                     "invisible characters, so one person cannot count twice)"))
            if approvers[-1].token_sha256 in hashes:
                raise ConfigError(f"{at}.token_sha256: the same token hash is used twice; "
                                  "give each approver their own token")
            names[who] = approvers[-1].name
            hashes.add(approvers[-1].token_sha256)
        return cls(host=host, port=int(port_text), public_url=public_url,
                   approvers=tuple(approvers), token_issuer_groups=frozenset(issuers))


def _approver(entry: Any, at: str) -> Approver:
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{at}: expected a table with name, token_sha256, groups")
    unknown = sorted(set(entry) - _APPROVER_KEYS)
    if unknown:
        raise ConfigError(f"{at}: unknown key(s) {', '.join(unknown)}")
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{at}.name: expected the approver's user name")
    if name != name.strip() or any(unicodedata.category(ch) in ("Cc", "Cf") for ch in name):
        raise ConfigError(f"{at}.name: {name!r} has surrounding spaces or invisible/control "
                          "characters; use the approver's plain user name")
    digest = entry.get("token_sha256")
    if not isinstance(digest, str) or not _HEX64.match(digest.lower()):
        raise ConfigError(f"{at}.token_sha256: expected 64 hex characters (sha256 of the token; "
                          "plain tokens are never stored)")
    groups = entry.get("groups", [])
    if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
        raise ConfigError(f"{at}.groups: expected a list of group names")
    secret = None
    if "totp_secret" in entry:
        if not isinstance(entry["totp_secret"], str):
            raise ConfigError(f"{at}.totp_secret: expected a base32 string")
        try:
            secret = totp_mod.decode_secret(entry["totp_secret"])
        except ValueError as e:
            raise ConfigError(f"{at}.totp_secret: {e}") from None
    return Approver(name, digest.lower(), frozenset(groups), secret)
