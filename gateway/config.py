"""The gateway's configuration: one TOML file, validated at start.

Every error names the file, the key (and the line where the key can be found) and
what was expected, e.g.::

    piigate.toml:7: upstream.port: expected an integer between 1 and 65535, got "x"

Sections owned by other parts (``[audit]``, ``[admin]``, ``[jit]``) are kept as raw
tables here and parsed by their owners, which raise ``ValueError("key: problem")``;
``load_config`` turns those into ``ConfigError`` with the file and line.
"""
from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .protocol.scram import DEFAULT_ITERATIONS, Verifier

DEFAULT_LISTEN = "127.0.0.1:6432"


class ConfigError(Exception):
    """A configuration problem, with where it is and what to do."""


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 6432
    tls_cert: str | None = None
    tls_key: str | None = None
    require_tls: bool = False
    max_message_size: int = 64 << 20      # PostgreSQL allows 1 GiB; big Binds/COPY rows are normal
    startup_timeout_s: float = 15.0       # whole handshake must finish within this
    idle_timeout_s: float = 0.0           # 0 = never close idle sessions
    tcp_keepalive: bool = True            # detects half-open peers
    instance_id: str = ""
    server_version: str = ""              # reported before upstream answers (rarely needed)


@dataclass(frozen=True)
class UpstreamConfig:
    host: str = "127.0.0.1"
    port: int = 5432
    user: str = "postgres"
    password: str | None = None
    database: str = "postgres"
    sslmode: str = "disable"              # disable | prefer | require | verify-ca | verify-full
    sslrootcert: str | None = None
    connect_timeout_s: float = 10.0


@dataclass(frozen=True)
class GatewayUser:
    name: str
    verifier: Verifier
    roles: frozenset[str] = frozenset()
    databases: frozenset[str] = frozenset()   # empty = any


@dataclass(frozen=True)
class Config:
    path: str
    server: ServerConfig
    upstream: UpstreamConfig
    users: Mapping[str, GatewayUser]
    catalog_file: str | None = None
    catalog_comment_tags: bool = True
    catalog_refresh_s: float = 60.0
    policy_file: str | None = None
    redis_url: str | None = None
    redis_prefix: str = "piigate:"
    sections: Mapping[str, Any] = field(default_factory=dict)   # raw [audit], [admin], [jit], ...

    def resolve_path(self, p: str | None) -> str | None:
        """Paths in the config are relative to the config file's folder."""
        if p is None:
            return None
        path = Path(p)
        if not path.is_absolute():
            path = Path(self.path).resolve().parent / path
        return str(path)


# --- validation helpers --------------------------------------------------------------

class _Where:
    def __init__(self, path: str, text: str):
        self.path = path
        self.lines = text.splitlines()

    def line_of(self, key: str) -> int | None:
        """Best-effort line of a dotted key: find the deepest section header that the
        key lives under (or is), then the key's own line after it."""
        parts = key.split(".")
        start = None
        for depth in range(len(parts), 0, -1):
            header = ".".join(parts[:depth])
            pat = re.compile(r"^\s*\[+\s*" + re.escape(header).replace(r"\.", r"\s*\.\s*") + r"\s*\]+")
            for i, line in enumerate(self.lines):
                if pat.match(line):
                    start = i
                    break
            if start is not None:
                if depth == len(parts):
                    return start + 1          # the key is a section itself
                break
        leaf = re.compile(r"^\s*\"?" + re.escape(parts[-1]) + r"\"?\s*=")
        for i in range(start or 0, len(self.lines)):
            if leaf.match(self.lines[i]):
                return i + 1
        return start + 1 if start is not None else None

    def error(self, key: str, problem: str) -> ConfigError:
        line = self.line_of(key)
        loc = f"{self.path}:{line}" if line else self.path
        return ConfigError(f"{loc}: {key}: {problem}")


def _get(table: Mapping, key: str, kind, default, where: _Where, prefix: str):
    if key not in table:
        return default
    value = table[key]
    full = f"{prefix}.{key}" if prefix else key
    if kind is bool:
        if not isinstance(value, bool):
            raise where.error(full, f"expected true or false, got {value!r}")
    elif kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise where.error(full, f"expected an integer, got {value!r}")
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise where.error(full, f"expected a number, got {value!r}")
        value = float(value)
    elif kind is str:
        if not isinstance(value, str):
            raise where.error(full, f"expected a string, got {value!r}")
    elif kind is list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise where.error(full, f"expected a list of strings, got {value!r}")
    return value


def _check_keys(table: Mapping, allowed: set[str], where: _Where, prefix: str) -> None:
    for key in table:
        if key not in allowed:
            full = f"{prefix}.{key}" if prefix else key
            raise where.error(full, "unknown key; expected one of " + ", ".join(sorted(allowed)))


def _parse_listen(text: str, where: _Where) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not (0 <= int(port) < 65536):
        raise where.error("server.listen", f"expected HOST:PORT such as {DEFAULT_LISTEN!r}, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _secret(table: Mapping, key: str, where: _Where, prefix: str) -> str | None:
    """A secret given inline (``password``) or by environment (``password_env``)."""
    env_key = key + "_env"
    if env_key in table:
        name = _get(table, env_key, str, None, where, prefix)
        if name not in os.environ:
            raise where.error(f"{prefix}.{env_key}", f"environment variable {name} is not set")
        return os.environ[name]
    return _get(table, key, str, None, where, prefix)


# --- sections ---------------------------------------------------------------------------

def _server(t: Mapping, w: _Where) -> ServerConfig:
    _check_keys(t, {"listen", "tls_cert", "tls_key", "require_tls", "max_message_size",
                    "startup_timeout", "idle_timeout", "tcp_keepalive", "instance_id",
                    "server_version"}, w, "server")
    host, port = _parse_listen(_get(t, "listen", str, DEFAULT_LISTEN, w, "server"), w)
    cert = _get(t, "tls_cert", str, None, w, "server")
    key = _get(t, "tls_key", str, None, w, "server")
    if bool(cert) != bool(key):
        raise w.error("server.tls_cert", "tls_cert and tls_key must be given together")
    require = _get(t, "require_tls", bool, False, w, "server")
    if require and not cert:
        raise w.error("server.require_tls", "require_tls needs tls_cert and tls_key")
    size = _get(t, "max_message_size", int, 64 << 20, w, "server")
    if size < 1024:
        raise w.error("server.max_message_size", f"expected at least 1024 bytes, got {size}")
    import socket
    startup = _get(t, "startup_timeout", float, 15.0, w, "server")
    if startup <= 0:
        raise w.error("server.startup_timeout", f"expected a number of seconds above 0, got {startup:g}")
    idle = _get(t, "idle_timeout", float, 0.0, w, "server")
    if idle < 0:
        raise w.error("server.idle_timeout", f"expected 0 (never) or a number of seconds, got {idle:g}")
    return ServerConfig(
        host=host, port=port, tls_cert=cert, tls_key=key, require_tls=require,
        max_message_size=size,
        startup_timeout_s=startup,
        idle_timeout_s=idle,
        tcp_keepalive=_get(t, "tcp_keepalive", bool, True, w, "server"),
        instance_id=_get(t, "instance_id", str, "", w, "server") or f"{socket.gethostname()}:{port}",
        server_version=_get(t, "server_version", str, "", w, "server"),
    )


def _upstream(t: Mapping, w: _Where) -> UpstreamConfig:
    _check_keys(t, {"host", "port", "user", "password", "password_env", "database", "sslmode",
                    "sslrootcert", "connect_timeout"}, w, "upstream")
    port = _get(t, "port", int, 5432, w, "upstream")
    if not 0 < port < 65536:
        raise w.error("upstream.port", f"expected a port between 1 and 65535, got {port}")
    sslmode = _get(t, "sslmode", str, "disable", w, "upstream")
    modes = ("disable", "prefer", "require", "verify-ca", "verify-full")
    if sslmode not in modes:
        raise w.error("upstream.sslmode", f"expected one of {', '.join(modes)}, got {sslmode!r}")
    connect_timeout = _get(t, "connect_timeout", float, 10.0, w, "upstream")
    if connect_timeout <= 0:
        raise w.error("upstream.connect_timeout", f"expected a number of seconds above 0, got {connect_timeout:g}")
    return UpstreamConfig(
        host=_get(t, "host", str, "127.0.0.1", w, "upstream"), port=port,
        user=_get(t, "user", str, "postgres", w, "upstream"),
        password=_secret(t, "password", w, "upstream"),
        database=_get(t, "database", str, "postgres", w, "upstream"),
        sslmode=sslmode, sslrootcert=_get(t, "sslrootcert", str, None, w, "upstream"),
        connect_timeout_s=connect_timeout,
    )


def _users(t: Mapping, w: _Where) -> dict[str, GatewayUser]:
    users = {}
    for name, u in t.items():
        prefix = f"users.{name}"
        if not isinstance(u, dict):
            raise w.error(prefix, "expected a table with password_verifier and roles")
        _check_keys(u, {"password_verifier", "roles", "databases"}, w, prefix)
        text = _get(u, "password_verifier", str, None, w, prefix)
        if not text:
            raise w.error(prefix + ".password_verifier",
                          "missing; create one with `piigate passwd` (plain passwords are never stored)")
        try:
            verifier = Verifier.parse(text)
        except ValueError as e:
            raise w.error(prefix + ".password_verifier", str(e)) from None
        users[name] = GatewayUser(
            name, verifier, frozenset(_get(u, "roles", list, [], w, prefix)),
            frozenset(_get(u, "databases", list, [], w, prefix)))
    return users


def config_warnings(cfg: "Config") -> list[str]:
    """What is valid but will surprise someone: ``piigate check`` prints these and
    ``piigate serve`` logs them."""
    out = []
    for name, user in sorted(cfg.users.items()):
        if user.verifier.iterations < DEFAULT_ITERATIONS:
            out.append(f"users.{name}.password_verifier has {user.verifier.iterations} iterations: pgJDBC "
                       f"(and other clients that follow RFC 7677) refuse fewer than {DEFAULT_ITERATIONS}, so "
                       f"they cannot log in as {name}; make a new verifier with `piigate passwd`")
    return out


KNOWN_SECTIONS = {"server", "upstream", "users", "catalog", "policy", "redis", "audit", "admin", "jit"}


def parse_config(text: str, path: str = "<config>") -> Config:
    w = _Where(path, text)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    for section in data:
        if section not in KNOWN_SECTIONS:
            raise w.error(section, "unknown section; expected one of " + ", ".join(sorted(KNOWN_SECTIONS)))
        if not isinstance(data[section], dict):
            raise w.error(section, "expected a table ([" + section + "])")
    server = _server(data.get("server", {}), w)
    upstream = _upstream(data.get("upstream", {}), w)
    users = _users(data.get("users", {}), w)
    cat = data.get("catalog", {})
    _check_keys(cat, {"file", "comment_tags", "refresh_interval"}, w, "catalog")
    pol = data.get("policy", {})
    _check_keys(pol, {"file"}, w, "policy")
    red = data.get("redis", {})
    _check_keys(red, {"url", "prefix"}, w, "redis")
    cfg = Config(
        path=path, server=server, upstream=upstream, users=users,
        catalog_file=_get(cat, "file", str, None, w, "catalog"),
        catalog_comment_tags=_get(cat, "comment_tags", bool, True, w, "catalog"),
        catalog_refresh_s=_get(cat, "refresh_interval", float, 60.0, w, "catalog"),
        policy_file=_get(pol, "file", str, None, w, "policy"),
        redis_url=_get(red, "url", str, None, w, "redis"),
        redis_prefix=_get(red, "prefix", str, "piigate:", w, "redis"),
        sections={k: data[k] for k in ("audit", "admin", "jit") if k in data},
    )
    for key in ("catalog.file", "policy.file"):
        rel = cfg.catalog_file if key == "catalog.file" else cfg.policy_file
        if rel and path != "<config>" and not os.path.exists(cfg.resolve_path(rel)):
            raise w.error(key, f"file {cfg.resolve_path(rel)} does not exist")
    return _resolve_tls(cfg, w)


def _resolve_tls(cfg: Config, w: _Where) -> Config:
    """TLS files are relative to the config file, and must be readable now (not at the
    first client's handshake)."""
    from dataclasses import replace
    s, u = cfg.server, cfg.upstream
    base = cfg.path != "<config>"
    cert = cfg.resolve_path(s.tls_cert) if s.tls_cert and base else s.tls_cert
    key = cfg.resolve_path(s.tls_key) if s.tls_key and base else s.tls_key
    root = cfg.resolve_path(u.sslrootcert) if u.sslrootcert and base else u.sslrootcert
    if cert:
        import ssl
        try:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(cert, key)
        except FileNotFoundError as e:
            which = "server.tls_key" if e.filename == key or (e.filename is None and os.path.exists(cert)) \
                else "server.tls_cert"
            raise w.error(which, f"cannot read {e.filename or cert}: no such file") from None
        except (ssl.SSLError, OSError) as e:
            raise w.error("server.tls_cert", f"cannot load the certificate/key pair {cert} / {key}: {e}") from None
    if root and not os.path.exists(root):
        raise w.error("upstream.sslrootcert", f"file {root} does not exist")
    return replace(cfg, server=replace(s, tls_cert=cert, tls_key=key), upstream=replace(u, sslrootcert=root))


def load_config(path: str) -> Config:
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file: {e.strerror}") from None
    return parse_config(text, path)


def section_error(cfg: Config, section: str, err: ValueError) -> ConfigError:
    """Turn an owner's ``ValueError("key: problem")`` into a ConfigError with a line."""
    w = _Where(cfg.path, Path(cfg.path).read_text() if os.path.exists(cfg.path) else "")
    msg = str(err)
    key, sep, problem = msg.partition(": ")
    if not sep:
        key, problem = section, msg
    if not key.startswith(section):
        key = f"{section}.{key}"
    return w.error(key, problem)
