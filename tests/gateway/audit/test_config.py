"""The [audit] config section: values and errors that name the key."""
from __future__ import annotations

import base64
import os

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.audit import AuditConfig


def test_full_section(tmp_path):
    key = Ed25519PrivateKey.generate()
    (tmp_path / "audit.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    cfg = AuditConfig.from_table({
        "sinks": ["file", "redis", "stdout"], "instance": "gw-1", "on_failure": "fail_open",
        "signing_key_file": "audit.key", "checkpoint_every": 50, "checkpoint_seconds": 5,
        "file": {"path": "logs/audit.jsonl", "fsync": "always", "group_ms": 2, "rotate_bytes": 4096,
                 "rotate_seconds": 60},
        "redis": {"stream": "s", "maxlen": 5000, "required": False},
    }, str(tmp_path / "piigate.toml"), default_redis_url="redis://127.0.0.1:6379/0")
    assert cfg.sinks == ("file", "redis", "stdout")
    assert cfg.file.path == tmp_path / "logs" / "audit.jsonl"          # relative to the config file
    assert (cfg.file.fsync, cfg.file.rotate_bytes, cfg.file.rotate_seconds) == ("always", 4096, 60)
    assert cfg.redis.url == "redis://127.0.0.1:6379/0" and cfg.redis.maxlen == 5000
    assert cfg.redis.required is False and cfg.stdout.required is False
    assert cfg.on_failure == "fail_open" and cfg.checkpoint_every == 50
    assert cfg.signing_key.public_key().public_bytes_raw() == key.public_key().public_bytes_raw()


def test_defaults():
    cfg = AuditConfig.from_table({"file": {"path": "/var/log/a.jsonl"}}, "<t>")
    assert cfg.sinks == ("file",) and cfg.file.fsync == "group" and cfg.on_failure == "fail_closed"
    assert cfg.instance and cfg.signing_key is None


def test_inline_seed():
    seed = base64.b64encode(os.urandom(32)).decode()
    assert AuditConfig.from_table({"signing_key": seed, "file": {"path": "/a"}}, "<t>").signing_key


@pytest.mark.parametrize("table, key, what", [
    ({"sinks": ["file", "kafka"], "file": {"path": "/a"}}, "audit.sinks:", "unknown sink 'kafka'"),
    ({"sinks": []}, "audit.sinks:", "at least one sink"),
    ({"sinks": "file"}, "audit.sinks:", "expected a list"),
    ({"file": {}}, "audit.file.path:", "required"),
    ({"file": {"path": "/a", "fsync": "sometimes"}}, "audit.file.fsync:", "always, group, none"),
    ({"file": {"path": "/a", "group_ms": "5"}}, "audit.file.group_ms:", "expected a number"),
    ({"file": {"path": "/a", "rotate_bytes": 10}}, "audit.file.rotate_bytes:", "at least 1024"),
    ({"file": {"path": "/a", "rotate_bytes": 1.5e6}}, "audit.file.rotate_bytes:", "an integer"),
    ({"file": {"path": "/a", "colour": 1}}, "audit.file.colour:", "unknown key"),
    ({"sinks": ["redis"]}, "audit.redis.url:", "redis:// URL"),
    ({"sinks": ["redis"], "redis": {"url": "redis://x", "maxlen": 10}}, "audit.redis.maxlen:", "at least"),
    ({"file": {"path": "/a"}, "on_failure": "ignore"}, "audit.on_failure:", "fail_closed, fail_open"),
    ({"file": {"path": "/a"}, "checkpoint_every": 0}, "audit.checkpoint_every:", "at least 1"),
    ({"file": {"path": "/a"}, "signing_key_file": "nope.key"}, "audit.signing_key_file:", "cannot read"),
    ({"file": {"path": "/a"}, "signing_key": "c2hvcnQ="}, "audit.signing_key:", "32"),
    ({"file": {"path": "/a"}, "bogus": 1}, "audit.bogus:", "unknown key"),
    ({"sinks": ["stdout"], "file": {"path": "/a"}}, "audit.file:", "not in audit.sinks"),
])
def test_errors_name_the_key(table, key, what, tmp_path):
    with pytest.raises(ValueError) as exc:
        AuditConfig.from_table(table, str(tmp_path / "piigate.toml"))
    msg = str(exc.value)
    assert msg.startswith(key), msg
    assert what in msg and "piigate.toml" in msg


def test_short_form_and_gateway_defaults(tmp_path):
    cfg = AuditConfig.from_table({"sinks": ["file", "redis"], "file": "audit/audit.jsonl", "fsync": "always",
                                  "rotate_bytes": 8192, "stream": "st", "redis_url": "redis://h:1/0"},
                                 str(tmp_path / "piigate.toml"), instance="host:6432",
                                 base_dir=str(tmp_path / "base"))
    assert cfg.file.path == tmp_path / "base" / "audit" / "audit.jsonl"
    assert (cfg.file.fsync, cfg.file.rotate_bytes) == ("always", 8192)
    assert (cfg.redis.stream, cfg.redis.url) == ("st", "redis://h:1/0")
    assert cfg.instance == "host:6432"
    assert AuditConfig.from_table({"file": "/a", "instance": "mine"}, "<t>", instance="host").instance == "mine"
    with pytest.raises(ValueError, match=r"^audit\.fsync: also given as audit\.file\.fsync"):
        AuditConfig.from_table({"file": {"path": "/a", "fsync": "none"}, "fsync": "always"}, "<t>")
