"""What masking costs: a point query on catalogued columns through one gateway, by a
user who gets it masked and by one a policy rule lets read it in clear, side by side.

    python -m benchmarks.masking_bench [--seconds N] [--reps R] [--clients C]
                                       [--modes simple,extended,prepared] [--rows N]

Both users are under PII policy, so their statements take the same path (analysis,
decision) and differ only in the rewrite (each reference to ``customers`` becomes a
subquery of masked expressions: partial e-mail, phone redacted, date of birth to the
year, name redacted) and in PostgreSQL evaluating it. No audit trail, so nothing else
differs. PostgreSQL is the server named by PIIGATE_BENCH_PG_DSN, else an embedded one;
the query is ``SELECT id, full_name, email, phone, dob, city FROM customers WHERE id =
:id`` with a random id (pgbench ``-f``). Prints TPS, latency and the gateway's CPU per
transaction for both users and the ratio masked/clear (median of R runs, alternating);
writes benchmarks/results/<UTC date>-<host>-masking.md unless --no-save.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import platform
import statistics
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from gateway import embedded
from gateway.protocol.scram import make_verifier

from .pgbench import MODES, PgbenchOutputError, parse_output
from .processes import StartError, cpu_seconds, free_port, start_service
from .run import RESULTS_DIR, _git_rev, _pg_env, log, start_upstream
from .targets import REPO

PASSWORD = "mask-bench-only-password"
USERS = {"masked": "analyst", "clear": "reader"}

POLICY = """
[defaults]
pii_read = "mask"
unknown = "deny"

[masking]
email = "partial_email"
phone = "redact"
dob = "year"
name = "redact"
default = "redact"

[[rule]]
name = "readers-see-pii"
roles = ["reader"]
actions = ["read"]
categories = ["*"]
effect = "allow"
"""

SCHEMA = """
CREATE TABLE customers(id int PRIMARY KEY, full_name text, email text, phone text, dob date, city text);
COMMENT ON COLUMN customers.full_name IS 'pii:name';
COMMENT ON COLUMN customers.email IS 'pii:email';
COMMENT ON COLUMN customers.phone IS 'pii:phone';
COMMENT ON COLUMN customers.dob IS 'pii:dob';
INSERT INTO customers
SELECT i, 'Synthetic Person ' || i, 'customer' || i || '@example.invalid', '+1-555-' || lpad((i % 10000)::text, 4, '0'),
       date '1950-01-01' + (i % 20000), (ARRAY['Mockburg', 'Fakeport', 'Testville'])[1 + i % 3]
FROM generate_series(1, {rows}) i;
ANALYZE customers;
"""

QUERY = "SELECT id, full_name, email, phone, dob, city FROM customers WHERE id = :id;\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.masking_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--rows", type=int, default=10_000)
    p.add_argument("--modes", default=",".join(MODES),
                   help="pgbench -M modes, comma-separated (default: all three)")
    p.add_argument("--no-save", action="store_true")
    args = p.parse_args(argv)
    args.modes = [m for m in args.modes.split(",") if m]
    bad = [m for m in args.modes if m not in MODES]
    if bad:
        p.error(f"unknown mode(s) {', '.join(bad)}; expected some of {', '.join(MODES)}")
    if min(args.seconds, args.reps, args.clients, args.rows) < 1:
        p.error("--seconds, --reps, --clients and --rows must be at least 1")
    return args


def gateway_config(upstream, port: int, work: Path) -> str:
    (work / "policy.toml").write_text(POLICY)
    users = "".join(f'\n[users.{name}]\npassword_verifier = "{make_verifier(PASSWORD)}"\nroles = ["{role}"]\n'
                    for name, role in USERS.items())
    auth = f'password = "{upstream.password}"\n' if upstream.password else ""
    return (f'[server]\nlisten = "127.0.0.1:{port}"\n\n[upstream]\nhost = "{upstream.host}"\n'
            f'port = {upstream.port}\nuser = "{upstream.user}"\n{auth}database = "{upstream.dbname}"\n\n'
            f'[policy]\nfile = "{work / "policy.toml"}"\n\n[catalog]\ncomment_tags = true\n' + users)


async def _check_masking(port: int, dbname: str) -> None:
    """The two users really differ the way the benchmark says (else it measures nothing)."""
    import asyncpg
    seen = {}
    for user in USERS:
        conn = await asyncpg.connect(host="127.0.0.1", port=port, user=user, password=PASSWORD, database=dbname)
        try:
            seen[user] = await conn.fetchrow("SELECT email, phone FROM customers WHERE id = 7")
        finally:
            await conn.close()
    if seen["clear"]["email"] != "customer7@example.invalid":
        raise SystemExit(f"user 'clear' did not get the e-mail in clear: {dict(seen['clear'])}")
    if seen["masked"]["email"] == seen["clear"]["email"] or "555" in (seen["masked"]["phone"] or ""):
        raise SystemExit(f"user 'masked' did not get masked values: {dict(seen['masked'])}")


async def _load(upstream, rows: int) -> None:
    import asyncpg
    conn = await asyncpg.connect(host=upstream.host, port=upstream.port, user=upstream.user,
                                 password=upstream.password, database=upstream.dbname)
    try:
        await conn.execute(SCHEMA.format(rows=rows))      # several statements: simple protocol
    finally:
        await conn.close()


def run_one(pgbench: str, script: Path, port: int, dbname: str, user: str, mode: str, args, pid: int) -> dict:
    cmd = [pgbench, "-n", "-f", str(script), "-T", str(args.seconds), "-c", str(args.clients),
           "-j", str(min(args.clients, 2)), "-M", mode, "-h", "127.0.0.1", "-p", str(port), "-U", user, dbname]
    before = cpu_seconds(pid)
    done = subprocess.run(cmd, env=_pg_env(PASSWORD), capture_output=True, text=True, timeout=args.seconds + 120)
    after = cpu_seconds(pid)
    if done.returncode != 0:
        raise SystemExit(f"pgbench as {user} ({mode}) exited {done.returncode}:\n{done.stderr[-1500:]}")
    try:
        r = parse_output(done.stdout)
    except PgbenchOutputError as e:
        raise SystemExit(str(e)) from None
    cpu_us = 1e6 * (after - before) / r.transactions if before is not None and after is not None else None
    return {"tps": r.tps, "latency_ms": r.latency_ms, "cpu_us": cpu_us}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    pgbench = embedded.find_pg_tool("pgbench")
    started = dt.datetime.now(dt.timezone.utc)
    rows: list[tuple[str, dict, dict]] = []
    with ExitStack() as stack:
        upstream, source = start_upstream(stack, scale=1)
        asyncio.run(_load(upstream, args.rows))
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="piigate-maskbench-")))
        script = work / "point.sql"
        script.write_text(f"\\set id random(1, {args.rows})\n" + QUERY)
        port = free_port()
        (work / "piigate.toml").write_text(gateway_config(upstream, port, work))
        try:
            service = start_service("gateway", [sys.executable, "-m", "gateway.cli", "serve", "--config",
                                                str(work / "piigate.toml")],
                                    port=port, log_path=work / "gateway.log", cwd=REPO)
        except StartError as e:
            raise SystemExit(str(e)) from None
        stack.callback(service.stop)
        asyncio.run(_check_masking(port, upstream.dbname))
        for mode in args.modes:
            runs: dict[str, list[dict]] = {u: [] for u in USERS}
            for rep in range(args.reps):
                order = list(USERS) if rep % 2 == 0 else list(reversed(USERS))
                for user in order:
                    r = run_one(pgbench, script, port, upstream.dbname, user, mode, args, service.pid)
                    runs[user].append(r)
                    log(f"{mode:8} {user:6} tps={r['tps']:9.1f} lat={r['latency_ms']:.3f} ms")

            def med(user: str, key: str):
                vals = [r[key] for r in runs[user] if r[key] is not None]
                return statistics.median(vals) if vals else None
            rows.append((mode, {k: med("masked", k) for k in ("tps", "latency_ms", "cpu_us")},
                         {k: med("clear", k) for k in ("tps", "latency_ms", "cpu_us")}))
    lines = [f"# piigate masking benchmark, {started:%Y-%m-%dT%H:%M:%SZ}", "",
             f"`python -m benchmarks.masking_bench {' '.join(argv if argv is not None else sys.argv[1:])}`", "",
             f"`{QUERY.strip()}` with a random id of {args.rows} rows, pgbench -f, {args.clients} clients, "
             f"{args.seconds} s, median of {args.reps}; one gateway (policy, no audit), PostgreSQL {source}; "
             f"piigate {_git_rev()}, {platform.node()}.", "",
             "| mode | masked TPS | clear TPS | masked/clear | masked latency ms | clear latency ms "
             "| gateway CPU µs/txn masked | clear |", "|---|---|---|---|---|---|---|---|"]
    for mode, m, c in rows:
        cpu = (f"{m['cpu_us']:.1f} | {c['cpu_us']:.1f}" if m["cpu_us"] is not None and c["cpu_us"] is not None
               else "- | -")
        lines.append(f"| {mode} | {m['tps']:,.0f} | {c['tps']:,.0f} | {m['tps'] / c['tps']:.2f} | "
                     f"{m['latency_ms']:.3f} | {c['latency_ms']:.3f} | {cpu} |")
    report = "\n".join(lines) + "\n"
    print(report)
    if not args.no_save:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        path = RESULTS_DIR / f"{started:%Y-%m-%d}-{platform.node() or 'host'}-masking.md"
        path.write_text(report)
        log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
