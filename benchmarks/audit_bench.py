"""Audit records per second on one core, per durability policy (always / group / none).

Run: .venv/bin/python benchmarks/audit_bench.py [--seconds 2] [--clients 64] [--cpu 0]

Each policy gets a fresh directory and a fresh AuditTrail (file sink, signed
checkpoints every 1000 records); ``--clients`` coroutines each await
``trail.record(statement_decision(...))`` in a loop, as gateway sessions do before
forwarding. Reported: records/s acknowledged, the latency of ``record()`` (p50,
p99), and fsyncs per second. The process is pinned to one CPU (``--cpu``) so the
number is "per core". Building the record (redaction of the SQL, cached by text)
is included, as in the gateway.

Then, for group and none, the gateway's own hot path: ``append_template`` of a
session's prepared decision record plus ``completed`` for its outcome, per statement.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import os
import pathlib
import statistics
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from gateway.audit import AuditConfig, AuditTrail, records  # noqa: E402


def event(i: int) -> dict:
    return records.statement_decision(
        session_id=f"s{i % 64}", user="bench", roles=["app"], client_addr="127.0.0.1",
        application_name="pgbench", database="bench",
        sql="SELECT abalance FROM pgbench_accounts WHERE aid = 12345;", fingerprint="0f1e2d3c4b5a6978",
        action="read", relations=["public.pgbench_accounts"],
        columns=[("public.pgbench_accounts.abalance", {"returned"}, None)], effect="allow",
        rule="default:allow-non-pii")


def _config(directory: str, policy: str, group_ms: float) -> AuditConfig:
    """A file sink with signed checkpoints every 1000 records, as a gateway would run."""
    return AuditConfig.from_table({
        "sinks": ["file"], "instance": "bench", "checkpoint_every": 1000,
        "signing_key": base64.b64encode(os.urandom(32)).decode(),
        "file": {"path": f"{directory}/audit.jsonl", "fsync": policy, "group_ms": group_ms}}, "<bench>")


async def run_policy(policy: str, seconds: float, clients: int, group_ms: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="audit-bench-") as d:
        trail = await AuditTrail(_config(d, policy, group_ms)).start()
        latencies: list[float] = []
        stop = time.perf_counter() + seconds
        count = 0

        async def client(n: int) -> None:
            nonlocal count
            i = n
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                await trail.record(event(i))
                latencies.append(time.perf_counter() - t0)
                count += 1
                i += clients

        t0 = time.perf_counter()
        fs0 = trail.file.fsyncs
        await asyncio.gather(*(client(n) for n in range(clients)))
        elapsed = time.perf_counter() - t0
        fsyncs = trail.file.fsyncs - fs0
        await trail.close()
    latencies.sort()
    return {"policy": policy, "records_s": count / elapsed, "records": count,
            "p50_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
            "fsyncs_s": fsyncs / elapsed}


async def run_hot_path(policy: str, seconds: float, group_ms: float) -> dict:
    """What the gateway does per statement under policy: append its decision record
    from the session's template (sealed and written before forwarding), then hand
    its outcome to ``completed`` (written per session every group_ms)."""
    with tempfile.TemporaryDirectory(prefix="audit-bench-") as d:
        trail = await AuditTrail(_config(d, policy, group_ms)).start()
        templates = [trail.template(event(i)) for i in range(64)]
        count = 0
        t0 = time.perf_counter()
        stop = t0 + seconds
        while time.perf_counter() < stop:
            for i in range(1000):
                seq = trail.append_template(templates[i % 64])
                trail.completed(f"s{i % 64}", (seq, "0f1e2d3c4b5a6978", "ok", 1, 120, 0.2, "I"))
            count += 1000
            await asyncio.sleep(0)          # let the syncer run, as the event loop would
        elapsed = time.perf_counter() - t0
        records = trail.stats["records"]
        await trail.close()
    return {"policy": policy, "statements_s": count / elapsed, "us_per_statement": elapsed / count * 1e6,
            "records": records}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="per policy")
    ap.add_argument("--clients", type=int, default=64, help="concurrent sessions")
    ap.add_argument("--group-ms", type=float, default=5.0)
    ap.add_argument("--cpu", type=int, default=0, help="pin to this CPU (-1: do not pin)")
    ap.add_argument("--policies", default="always,group,none")
    args = ap.parse_args()
    if args.cpu >= 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    print(f"audit records per second, one core, {args.clients} concurrent sessions, "
          f"{args.seconds:g}s per policy, group_ms={args.group_ms:g}")
    print(f"{'fsync':<8}{'records/s':>12}{'p50 ms':>10}{'p99 ms':>10}{'fsyncs/s':>10}")
    for policy in args.policies.split(","):
        r = asyncio.run(run_policy(policy, args.seconds, args.clients, args.group_ms))
        print(f"{r['policy']:<8}{r['records_s']:>12,.0f}{r['p50_ms']:>10.2f}{r['p99_ms']:>10.2f}"
              f"{r['fsyncs_s']:>10,.0f}")
    print("\nthe gateway's hot path per statement (decision record from a template, written before "
          "forwarding; outcome batched per session):")
    for policy in [p for p in args.policies.split(",") if p != "always"]:
        r = asyncio.run(run_hot_path(policy, args.seconds, args.group_ms))
        print(f"{r['policy']:<8}{r['statements_s']:>12,.0f} statements/s  {r['us_per_statement']:.2f} us each")


if __name__ == "__main__":
    main()
