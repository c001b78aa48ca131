"""The ``[jit]`` section of the gateway TOML, validated with errors naming the key.

Example::

    [jit]
    hold_timeout_s = 300          # how long a held statement waits for a decision
    request_ttl_s = 86400         # a pending request expires after this
    redis_url = "redis://127.0.0.1:6379/0"
    redis_prefix = "piigate:"
    approve_url = "http://127.0.0.1:8080/"    # shown to held clients
    webhook_urls = ["https://hooks.example/piigate"]
    slack_webhook_urls = ["https://hooks.slack.com/services/..."]
    webhook_retries = 5
    webhook_backoff_s = 0.5
    hook_url = "https://tickets.example/piigate-decide"
    hook_secret = "..."           # or hook_secret_env = "PIIGATE_HOOK_SECRET"
    hook_timeout_s = 5
    token_key = "..."             # or token_key_env; signs one-time grant tokens
    token_max_ttl_s = 86400
    totp_grant_s = 900            # TOTP self-service grants last this long at most

    [jit.totp]                    # TOTP enrolments: user = base32 secret
    alice = "JBSWY3DPEHPK3PXP..."
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from gateway.jit import totp as totp_mod


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the file and key."""


_KEYS = {"hold_timeout_s", "request_ttl_s", "redis_url", "redis_prefix", "approve_url",
         "webhook_urls", "slack_webhook_urls", "webhook_retries", "webhook_backoff_s",
         "hook_url", "hook_secret", "hook_secret_env", "hook_timeout_s", "token_key",
         "token_key_env", "token_max_ttl_s", "totp_grant_s", "totp", "sweep_interval_s",
         "prefix", "end_sessions_on_revoke"}


@dataclass(frozen=True)
class JitConfig:
    hold_timeout_s: float = 300.0
    request_ttl_s: float = 86400.0
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "piigate:"
    approve_url: str = ""
    webhook_urls: tuple[str, ...] = ()
    slack_webhook_urls: tuple[str, ...] = ()
    webhook_retries: int = 5
    webhook_backoff_s: float = 0.5
    hook_url: str | None = None
    hook_secret: bytes | None = None
    hook_timeout_s: float = 5.0
    token_key: bytes | None = None
    token_max_ttl_s: float = 86400.0
    totp_grant_s: int = 900
    totp_secrets: Mapping[str, bytes] = field(default_factory=dict)
    sweep_interval_s: float = 5.0
    #: a revocation also ends sessions inside a transaction or cursor opened under the grant
    end_sessions_on_revoke: bool = False

    @classmethod
    def from_table(cls, table: Mapping[str, Any] | None, where: str = "config") -> "JitConfig":
        """Parse the ``[jit]`` table; ``where`` (the file name) prefixes every error."""
        t = dict(table or {})
        v = _Reader(t, f"{where}: [jit]")
        unknown = sorted(set(t) - _KEYS)
        if unknown:
            raise ConfigError(f"{where}: [jit]: unknown key(s) {', '.join(unknown)}; "
                              f"expected some of {', '.join(sorted(_KEYS))}")
        hook_url = v.string("hook_url", None)
        hook_secret = v.secret("hook_secret")
        if hook_url and not hook_secret:
            raise ConfigError(f"{where}: [jit].hook_url is set but hook_secret (or hook_secret_env) "
                              "is not: the hook's answers must be signed")
        totp_table = t.get("totp", {})
        if not isinstance(totp_table, Mapping):
            raise ConfigError(f"{where}: [jit].totp: expected a table of user = \"BASE32SECRET\"")
        secrets: dict[str, bytes] = {}
        for user, text in totp_table.items():
            if not isinstance(text, str):
                raise ConfigError(f"{where}: [jit.totp].{user}: expected a base32 string")
            try:
                secrets[user] = totp_mod.decode_secret(text)
            except ValueError as e:
                raise ConfigError(f"{where}: [jit.totp].{user}: {e}") from None
        # "prefix" is what the gateway copies in from [redis].prefix; redis_prefix wins.
        prefix = v.string("redis_prefix", v.string("prefix", cls.redis_prefix))
        if not prefix:
            raise ConfigError(f"{where}: [jit].redis_prefix: must not be empty")
        return cls(
            hold_timeout_s=v.number("hold_timeout_s", cls.hold_timeout_s),
            request_ttl_s=v.number("request_ttl_s", cls.request_ttl_s),
            redis_url=v.string("redis_url", cls.redis_url),
            redis_prefix=prefix,
            approve_url=v.string("approve_url", ""),
            webhook_urls=v.urls("webhook_urls"),
            slack_webhook_urls=v.urls("slack_webhook_urls"),
            webhook_retries=int(v.number("webhook_retries", cls.webhook_retries, integer=True, minimum=0)),
            webhook_backoff_s=v.number("webhook_backoff_s", cls.webhook_backoff_s),
            hook_url=hook_url, hook_secret=hook_secret,
            hook_timeout_s=v.number("hook_timeout_s", cls.hook_timeout_s),
            token_key=v.secret("token_key", min_len=16),
            token_max_ttl_s=v.number("token_max_ttl_s", cls.token_max_ttl_s),
            totp_grant_s=int(v.number("totp_grant_s", cls.totp_grant_s, integer=True)),
            totp_secrets=secrets,
            sweep_interval_s=v.number("sweep_interval_s", cls.sweep_interval_s),
            end_sessions_on_revoke=_boolean(t, "end_sessions_on_revoke", where),
        )


def _boolean(t: Mapping[str, Any], key: str, where: str) -> bool:
    value = t.get(key, False)
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: [jit].{key}: expected true or false, got {value!r}")
    return value


class _Reader:
    def __init__(self, table: dict[str, Any], where: str):
        self.t, self.where = table, where

    def number(self, key: str, default: float, integer: bool = False, minimum: float | None = None) -> float:
        value = self.t.get(key, default)
        ok = isinstance(value, int) if integer else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok:
            kind = "an integer" if integer else "a number"
            raise ConfigError(f"{self.where}.{key}: expected {kind}, got {value!r}")
        low = 0 if minimum is None else minimum
        if value < low or (minimum is None and value == 0):
            raise ConfigError(f"{self.where}.{key}: expected a positive value, got {value!r}")
        return value

    def string(self, key: str, default: str | None) -> str | None:
        value = self.t.get(key, default)
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{self.where}.{key}: expected a string, got {value!r}")
        return value

    def urls(self, key: str) -> tuple[str, ...]:
        value = self.t.get(key, [])
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(u, str) for u in value):
            raise ConfigError(f"{self.where}.{key}: expected a list of URLs, got {value!r}")
        for u in value:
            if not u.startswith(("http://", "https://")):
                raise ConfigError(f"{self.where}.{key}: {u!r} is not an http(s) URL")
        return tuple(value)

    def secret(self, key: str, min_len: int = 1) -> bytes | None:
        direct, env = self.t.get(key), self.t.get(f"{key}_env")
        if direct is not None and env is not None:
            raise ConfigError(f"{self.where}: set {key} or {key}_env, not both")
        if env is not None:
            if not isinstance(env, str):
                raise ConfigError(f"{self.where}.{key}_env: expected an environment variable name")
            direct = os.environ.get(env)
            if direct is None:
                raise ConfigError(f"{self.where}.{key}_env: environment variable {env} is not set")
        if direct is None:
            return None
        if not isinstance(direct, str):
            raise ConfigError(f"{self.where}.{key}: expected a string, got {type(direct).__name__}")
        if len(direct) < min_len:
            raise ConfigError(f"{self.where}.{key}: too short; use at least {min_len} characters")
        return direct.encode()
