"""The ``[audit]`` section of the gateway's TOML config, validated. Pure (reads the
signing key file, nothing else).

    [audit]
    sinks = ["file", "redis"]          # any of file, redis, stdout
    instance = "gw-1"                  # default: the host name
    on_failure = "fail_closed"         # or "fail_open": see AuditTrail.record
    signing_key_file = "audit.key"     # PEM Ed25519 private key, or a base64 32-byte seed
    # signing_key = "base64 seed"      # inline alternative (keep the file out of VCS)
    checkpoint_every = 1000            # records between signed checkpoints
    checkpoint_seconds = 60.0          # and at most this long
    sink_timeout_ms = 2000             # a sink slower than this is failed
    retry_ms = 1000                    # how often a failed sink is retried

    [audit.file]
    path = "/var/log/piigate/audit.jsonl"   # files: audit.000001.jsonl, audit.000002.jsonl, ...
    fsync = "group"                    # always | group | none
    group_ms = 5.0
    rotate_bytes = 268435456
    rotate_seconds = 86400
    required = true

    [audit.redis]
    url = "redis://127.0.0.1:6379/0"   # default: the gateway's [redis] url
    stream = "piigate:audit"
    maxlen = 1000000                   # XADD MAXLEN ~ cap
    required = true

    [audit.stdout]
    required = false

The short form is accepted too (one file sink, flat keys)::

    [audit]
    sinks = ["file", "redis"]
    file = "audit/audit.jsonl"         # = [audit.file] path
    fsync = "group"                    # group_ms, rotate_bytes, rotate_seconds likewise
    stream = "piigate:audit"           # maxlen, redis_url likewise for [audit.redis]
"""
from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.audit.chain import load_signing_key

SINK_KINDS = ("file", "redis", "stdout")
FSYNC_POLICIES = ("always", "group", "none")
ON_FAILURE = ("fail_closed", "fail_open")


@dataclass(frozen=True, slots=True)
class FileSinkConfig:
    path: Path
    fsync: str = "group"
    group_ms: float = 5.0
    rotate_bytes: int = 256 * 1024 * 1024
    rotate_seconds: float = 86400.0
    required: bool = True


@dataclass(frozen=True, slots=True)
class RedisSinkConfig:
    url: str
    stream: str = "piigate:audit"
    maxlen: int = 1_000_000
    required: bool = True


@dataclass(frozen=True, slots=True)
class StdoutSinkConfig:
    required: bool = False


@dataclass(frozen=True)
class AuditConfig:
    instance: str
    file: FileSinkConfig | None = None
    redis: RedisSinkConfig | None = None
    stdout: StdoutSinkConfig | None = None
    on_failure: str = "fail_closed"
    signing_key: Ed25519PrivateKey | None = None
    checkpoint_every: int = 1000
    checkpoint_seconds: float = 60.0
    sink_timeout_ms: float = 2000.0
    retry_ms: float = 1000.0

    @property
    def sinks(self) -> tuple[str, ...]:
        return tuple(k for k in SINK_KINDS if getattr(self, k) is not None)

    @classmethod
    def from_table(cls, table: Mapping[str, Any], where: str = "<config>",
                   default_redis_url: str | None = None, instance: str | None = None,
                   base_dir: str | Path | None = None) -> "AuditConfig":
        """Parse the ``[audit]`` table. ``where`` names the config file; relative
        paths resolve against ``base_dir`` (default: the config file's directory).
        ``instance`` is the default instance id (the gateway's), used when the
        table does not set one. Raises ValueError whose message starts with the
        key path, says what is expected and where."""
        table = _unflatten(table, where)
        t = _Table(table, "audit", where)
        t.only("sinks", "instance", "on_failure", "signing_key_file", "signing_key",
               "checkpoint_every", "checkpoint_seconds", "sink_timeout_ms", "retry_ms",
               "file", "redis", "stdout")
        sinks = t.get("sinks", list, ["file"])
        for s in sinks:
            if s not in SINK_KINDS:
                t.fail("sinks", f"unknown sink {s!r}; expected any of {', '.join(SINK_KINDS)}")
        if not sinks:
            t.fail("sinks", "expected at least one sink (file, redis, stdout)")
        if base_dir is not None:
            base = Path(base_dir)
        else:
            base = Path(where).parent if where and not where.startswith("<") else Path(".")

        file_cfg = redis_cfg = stdout_cfg = None
        if "file" in sinks:
            f = t.sub("file")
            f.only("path", "fsync", "group_ms", "rotate_bytes", "rotate_seconds", "required")
            path = Path(f.get("path", str, None, required=True))
            fsync = f.get("fsync", str, "group")
            if fsync not in FSYNC_POLICIES:
                f.fail("fsync", f"expected one of {', '.join(FSYNC_POLICIES)}, got {fsync!r}")
            file_cfg = FileSinkConfig(
                path=path if path.is_absolute() else base / path, fsync=fsync,
                group_ms=f.number("group_ms", 5.0, minimum=0.1),
                rotate_bytes=int(f.number("rotate_bytes", 256 * 1024 * 1024, minimum=1024, integer=True)),
                rotate_seconds=f.number("rotate_seconds", 86400.0, minimum=1.0),
                required=f.get("required", bool, True))
        elif "file" in table:
            t.fail("file", "a [audit.file] table is given but 'file' is not in audit.sinks")
        if "redis" in sinks:
            r = t.sub("redis")
            r.only("url", "stream", "maxlen", "required")
            url = r.get("url", str, default_redis_url)
            if not url:
                r.fail("url", "expected a redis:// URL (or a [redis] url in the gateway config)")
            redis_cfg = RedisSinkConfig(
                url=url, stream=r.get("stream", str, "piigate:audit"),
                maxlen=int(r.number("maxlen", 1_000_000, minimum=1000, integer=True)),
                required=r.get("required", bool, True))
        if "stdout" in sinks:
            s = t.sub("stdout")
            s.only("required")
            stdout_cfg = StdoutSinkConfig(required=s.get("required", bool, False))

        on_failure = t.get("on_failure", str, "fail_closed")
        if on_failure not in ON_FAILURE:
            t.fail("on_failure", f"expected one of {', '.join(ON_FAILURE)}, got {on_failure!r}")
        key = None
        if "signing_key_file" in table and "signing_key" in table:
            t.fail("signing_key", "give signing_key_file or signing_key, not both")
        if "signing_key_file" in table:
            kp = Path(t.get("signing_key_file", str, None))
            kp = kp if kp.is_absolute() else base / kp
            try:
                key = load_signing_key(kp.read_bytes())
            except OSError as e:
                t.fail("signing_key_file", f"cannot read {kp}: {e.strerror or e}")
            except ValueError as e:
                t.fail("signing_key_file", f"{kp}: {e}")
        elif "signing_key" in table:
            try:
                key = load_signing_key(t.get("signing_key", str, None))
            except ValueError as e:
                t.fail("signing_key", str(e))
        return cls(
            instance=t.get("instance", str, instance or socket.gethostname()),
            file=file_cfg, redis=redis_cfg, stdout=stdout_cfg, on_failure=on_failure,
            signing_key=key,
            checkpoint_every=int(t.number("checkpoint_every", 1000, minimum=1, integer=True)),
            checkpoint_seconds=t.number("checkpoint_seconds", 60.0, minimum=0.1),
            sink_timeout_ms=t.number("sink_timeout_ms", 2000.0, minimum=1.0),
            retry_ms=t.number("retry_ms", 1000.0, minimum=1.0))


_FLAT_FILE = {"fsync": "fsync", "group_ms": "group_ms", "rotate_bytes": "rotate_bytes",
              "rotate_seconds": "rotate_seconds"}
_FLAT_REDIS = {"stream": "stream", "maxlen": "maxlen", "redis_url": "url"}


def _unflatten(table: Mapping[str, Any], where: str) -> dict:
    """The short form (``file = "path"``, ``fsync = ...`` at the top) as sub-tables."""
    if not isinstance(table, Mapping):
        raise ValueError(f"audit: expected a table, got {type(table).__name__} ({where})")
    out = dict(table)
    file_t = out.get("file")
    if isinstance(file_t, str):
        out["file"] = file_t = {"path": file_t}
    for flat, key, sub in [(k, v, "file") for k, v in _FLAT_FILE.items()] + \
                          [(k, v, "redis") for k, v in _FLAT_REDIS.items()]:
        if flat not in out:
            continue
        target = out.get(sub)
        if target is None:
            target = out[sub] = {}
        elif not isinstance(target, Mapping):
            continue               # reported as "expected a table" by the parser
        if key in target:
            raise ValueError(f"audit.{flat}: also given as audit.{sub}.{key}; keep one ({where})")
        out[sub] = {**target, key: out.pop(flat)}
    return out


class _Table:
    """A TOML table with its key path, for errors that say exactly what is wrong."""

    def __init__(self, table: Mapping[str, Any], path: str, where: str):
        if not isinstance(table, Mapping):
            raise ValueError(f"{path}: expected a table, got {type(table).__name__} ({where})")
        self.table, self.path, self.where = table, path, where

    def fail(self, key: str, what: str):
        raise ValueError(f"{self.path}.{key}: {what} ({self.where})")

    def only(self, *keys: str) -> None:
        for k in self.table:
            if k not in keys:
                self.fail(k, f"unknown key; expected one of {', '.join(keys)}")

    def sub(self, key: str) -> "_Table":
        return _Table(self.table.get(key, {}), f"{self.path}.{key}", self.where)

    def get(self, key: str, typ: type, default: Any, required: bool = False) -> Any:
        if key not in self.table:
            if required:
                self.fail(key, f"required ({typ.__name__})")
            return default
        v = self.table[key]
        if typ is bool and not isinstance(v, bool) or typ is not bool and not isinstance(v, typ):
            self.fail(key, f"expected {'a ' + typ.__name__ if typ is not list else 'a list'}, "
                           f"got {type(v).__name__} {v!r}")
        if typ is list and not all(isinstance(x, str) for x in v):
            self.fail(key, f"expected a list of strings, got {v!r}")
        return v

    def number(self, key: str, default: float, minimum: float, integer: bool = False) -> float:
        if key not in self.table:
            return default
        v = self.table[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
            self.fail(key, f"expected {'an integer' if integer else 'a number'}, got {v!r}")
        if v < minimum:
            self.fail(key, f"expected at least {minimum}, got {v!r}")
        return v
