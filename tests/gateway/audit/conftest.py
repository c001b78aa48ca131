"""Helpers for the audit tests: a signing key, configs, writing a real trail."""
from __future__ import annotations

import asyncio
import base64
import os
from dataclasses import replace
from pathlib import Path

import orjson
import pytest

from gateway.audit import AuditConfig, AuditTrail, records
from gateway.audit.chain import Line, record_hash, split_lines
from gateway.audit.query import read_trail


@pytest.fixture
def seed_b64() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def file_config(path: Path, seed_b64: str | None = None, **file_kw) -> AuditConfig:
    file_table = {"path": str(path), "fsync": "none", **{k: v for k, v in file_kw.items()
                                                         if k in ("fsync", "group_ms", "rotate_bytes",
                                                                  "rotate_seconds", "required")}}
    table = {"sinks": ["file"], "instance": "gw-test", "file": file_table,
             **{k: v for k, v in file_kw.items() if k in ("checkpoint_every", "checkpoint_seconds",
                                                          "sink_timeout_ms", "retry_ms", "on_failure")}}
    if seed_b64:
        table["signing_key"] = seed_b64
    return AuditConfig.from_table(table, "<test>")


def decision(i: int, user: str = "alice") -> dict:
    cat = ("ssn", "email", "phone")[i % 3]
    return records.statement_decision(
        session_id=f"s{i % 5}", user=user, roles=["analyst"], client_addr="127.0.0.1",
        application_name="psql", database="app", sql=f"SELECT {cat} FROM customers WHERE id = {i}",
        fingerprint=f"fp{i % 3}", action="read", relations=["public.customers"],
        columns=[(f"public.customers.{cat}", {"returned"}, cat)], effect="mask", rule="default:mask",
        grant_id=f"g{i % 2}" if i % 4 == 0 else None, reason="INC-1" if i % 4 == 0 else None)


async def write_trail(cfg: AuditConfig, n: int, start: int = 0) -> list[dict]:
    async with AuditTrail(cfg) as trail:
        return list(await asyncio.gather(*(trail.record(decision(i)) for i in range(start, start + n))))


def trail_files(path: Path) -> list[Path]:
    return sorted(path.parent.glob(path.stem + ".*" + path.suffix))


def load_lines(path: Path) -> list[Line]:
    return read_trail(trail_files(path))


def dicts(lines: list[Line]) -> list[dict]:
    return [orjson.loads(l.raw) for l in lines]


def as_lines(recs: list[dict], source: str = "trail.jsonl") -> list[Line]:
    data = b"".join(orjson.dumps(r) + b"\n" for r in recs)
    return split_lines(source, data)


def rechain(recs: list[dict], start: int, key=None) -> list[dict]:
    """What an attacker without the signing key does after editing record ``start``:
    recompute prev/hash of it and everything after (re-signing only with ``key``)."""
    from gateway.audit.chain import sign_record
    out = [dict(r) for r in recs]
    for i in range(start, len(out)):
        r = out[i]
        if i > 0:
            r["prev"] = out[i - 1]["hash"]
            if r["type"] == "checkpoint":
                r["head"] = r["prev"]
                if key is not None:
                    r["sig"] = sign_record(r, key)
        r["hash"] = record_hash(r)
    return out
