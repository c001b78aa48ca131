"""Installation of ``piigate.pseudonym`` (the keyed hash masking strategy). Pure:
returns SQL text; the caller (CLI, demo, tests) executes it on the upstream.

The key material is embedded in the last statement (an INSERT of the two HMAC
pads). Run it where statement logging is off for that session (a superuser can
``SET log_statement = 'none'`` first); masked queries themselves never carry it.
"""
from __future__ import annotations

from pathlib import Path

SQL_FILE = Path(__file__).with_name("masking_functions.sql")


def _split(sql: str) -> list[str]:
    """Split the install script on ';' at line ends outside $fn$ bodies."""
    out, buf, in_body = [], [], False
    for line in sql.splitlines():
        if line.lstrip().startswith("--") and not in_body:
            continue
        buf.append(line)
        if line.count("$fn$") % 2 == 1:
            in_body = not in_body
        if not in_body and line.rstrip().endswith(";"):
            out.append("\n".join(buf).strip().rstrip(";"))
            buf = []
    if "".join(buf).strip():
        out.append("\n".join(buf).strip())
    return out


def hmac_pads(key: bytes) -> tuple[bytes, bytes]:
    """RFC 2104 pads for SHA-256 (block size 64)."""
    if not key:
        raise ValueError("pseudonym key must not be empty; use at least 32 random bytes")
    if len(key) > 64:
        import hashlib
        key = hashlib.sha256(key).digest()
    key = key.ljust(64, b"\0")
    return bytes(b ^ 0x36 for b in key), bytes(b ^ 0x5C for b in key)


def install_statements(key: bytes) -> list[str]:
    """Statements that install (or re-key) ``piigate.pseudonym`` with ``key``."""
    inner, outer = hmac_pads(key)
    stmts = _split(SQL_FILE.read_text(encoding="utf-8"))
    stmts.append(
        "INSERT INTO piigate.pseudonym_key (id, inner_pad, outer_pad) "
        f"VALUES (1, '\\x{inner.hex()}'::bytea, '\\x{outer.hex()}'::bytea) "
        "ON CONFLICT (id) DO UPDATE SET inner_pad = EXCLUDED.inner_pad, outer_pad = EXCLUDED.outer_pad")
    return stmts


def reference_pseudonym(key: bytes, value: str) -> str:
    """What ``piigate.pseudonym(value)`` returns for ``key`` (for tests and tools)."""
    import hashlib
    import hmac
    return "psn_" + hmac.new(key, value.encode(), hashlib.sha256).hexdigest()[:16]
