"""``piigate demo``: the whole product on one machine, with nothing installed by hand.

Starts an embedded PostgreSQL and Redis, loads a shop database with obviously
synthetic PII, writes a catalog-by-comment, a policy and a gateway config into a
work folder, starts the gateway and its admin API, and prints what to try.
Ctrl-C stops everything it started (by PID) and leaves nothing running.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import shutil
import signal
import sys
import tempfile
import textwrap
from importlib import resources
from pathlib import Path

DEMO_USERS = {
    # name: (roles, what they show)
    "ann": (["analyst"], "analyst: PII comes back masked; SSNs and cards need approval"),
    "sam": (["support"], "support: every PII read needs approval (with a reason)"),
    "dba": (["dba"], "DBA: not under PII policy (still audited)"),
}
APPROVER = ("pat", ["privacy", "support-leads"])


def _policy_text() -> str:
    return resources.files("gateway.demo_data").joinpath("policy.toml").read_text()


def _shop_sql() -> str:
    return resources.files("gateway.demo_data").joinpath("shop.sql").read_text()


async def _load(pg, key: bytes) -> None:
    import asyncpg
    conn = await asyncpg.connect(pg.dsn("postgres"))
    try:
        await conn.execute("CREATE DATABASE shop")
    finally:
        await conn.close()
    conn = await asyncpg.connect(pg.dsn("shop"))
    try:
        await conn.execute(_shop_sql())
        # the gateway's own upstream role: ordinary table privileges, no superuser
        await conn.execute("""
            CREATE ROLE piigate_upstream LOGIN;
            GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO piigate_upstream;
            GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO piigate_upstream;
        """)
        try:
            from .rewrite.pseudonym import install_statements
            for stmt in install_statements(key):
                await conn.execute(stmt)
            await conn.execute("GRANT USAGE ON SCHEMA piigate TO piigate_upstream")
            await conn.execute("GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA piigate TO piigate_upstream")
        except Exception as e:       # the hash strategy then falls back to redact
            print(f"  (keyed pseudonyms not installed: {e})")
    finally:
        await conn.close()


def _config(work: Path, pg, redis, port: int, admin_port: int, passwords: dict, token: str) -> Path:
    from .protocol.scram import make_verifier
    (work / "policy.toml").write_text(_policy_text())
    (work / "audit").mkdir(exist_ok=True)
    users = "".join(
        f'\n[users.{name}]\npassword_verifier = "{make_verifier(passwords[name])}"\n'
        f'roles = [{", ".join(repr(r).replace(chr(39), chr(34)) for r in roles)}]\n'
        for name, (roles, _) in DEMO_USERS.items())
    token_hash = hashlib.sha256(token.encode()).hexdigest()
    text = textwrap.dedent(f"""\
        # piigate demo config (written by `piigate demo`; everything here is throwaway)
        [server]
        listen = "127.0.0.1:{port}"

        [upstream]
        host = "{pg.host}"
        port = {pg.port}
        user = "piigate_upstream"
        database = "shop"

        [policy]
        file = "policy.toml"

        [catalog]
        comment_tags = true          # COMMENT ON COLUMN ... IS 'pii:<category>'

        [redis]
        url = "{redis.url}"
        prefix = "piigate-demo:"

        [jit]
        hold_timeout_s = 300

        [audit]
        sinks = ["file"]
        file = "audit/audit.jsonl"
        fsync = "group"

        [admin]
        listen = "127.0.0.1:{admin_port}"
        [[admin.approvers]]
        name = "{APPROVER[0]}"
        token_sha256 = "{token_hash}"
        groups = {APPROVER[1]!r}
        """).replace("'", '"') + users
    path = work / "piigate.toml"
    path.write_text(text)
    return path


def run_demo(args) -> int:
    from .embedded import find_pg_tool, start_postgres, start_redis
    work = Path(tempfile.mkdtemp(prefix="piigate-demo-"))
    os.chmod(work, 0o755)
    print("piigate demo: starting embedded PostgreSQL and Redis ...", flush=True)
    pg = redis = None
    try:
        pg = start_postgres()
        redis = start_redis()
        key = secrets.token_bytes(32)
        asyncio.run(_load(pg, key))
        passwords = {name: f"{name}-demo" for name in DEMO_USERS}
        token = "demo-" + secrets.token_urlsafe(18)
        cfg_path = _config(work, pg, redis, args.port, args.admin_port, passwords, token)
        from .config import load_config
        from .server import install_uvloop
        cfg = load_config(str(cfg_path))
        install_uvloop()
        return asyncio.run(_serve(cfg, pg, work, passwords, token, args))
    except KeyboardInterrupt:
        return 0
    finally:
        for server in (redis, pg):
            if server is not None:
                server.stop()
        shutil.rmtree(work, ignore_errors=True)
        print("piigate demo: stopped; nothing left running.")


async def _serve(cfg, pg, work: Path, passwords: dict, token: str, args) -> int:
    from .app import Runtime, build_components
    from .embedded import find_pg_tool
    runtime = Runtime(cfg, build_components(cfg))
    gw = await runtime.start()
    psql = find_pg_tool("psql")
    dsn = lambda u: f"postgresql://{u}:{passwords[u]}@127.0.0.1:{gw.port}/shop"
    admin = f"http://127.0.0.1:{runtime.admin_port}" if runtime.admin_port else "(admin API not running)"
    print(textwrap.dedent(f"""
        piigate is running.
          gateway   postgresql://127.0.0.1:{gw.port}/shop
          admin     {admin}   (approver token for user {APPROVER[0]}: {token})
          work dir  {work}    (config, policy, audit trail)

        Try, in another terminal:
          {psql} "{dsn('dba')}" -c "SELECT id, full_name, email, ssn FROM customers LIMIT 3"
              -> unmasked: dba is not under PII policy (every statement still audited)
          {psql} "{dsn('ann')}" -c "SELECT id, full_name, email, phone, dob FROM customers LIMIT 3"
              -> masked in the database itself: names pseudonymised, e-mail domain only, year of birth
          {psql} "{dsn('ann')}" -c "SELECT count(*) FROM customers WHERE email LIKE 'customer00%'"
              -> 0: predicates only ever see masked values, so nothing can be inferred
          {psql} "{dsn('ann')}" -c "SELECT sum(amount) FROM orders"
              -> exactly what PostgreSQL returns: no PII, no change
          {psql} "{dsn('ann')}" -c "COPY customers TO STDOUT"
              -> refused with 42501 and the rule's name
          {psql} "{dsn('sam')}" -c "SET piigate.reason = 'TICKET-42 refund'" -c "SELECT email FROM customers WHERE id = 7"
              -> held: the NOTICE shows a request id. Approve it from a third terminal:
          PIIGATE_ADMIN_URL={admin} PIIGATE_ADMIN_TOKEN={token} {sys.executable} -m gateway.cli requests list
          PIIGATE_ADMIN_URL={admin} PIIGATE_ADMIN_TOKEN={token} {sys.executable} -m gateway.cli requests approve <id> --duration 15m
              -> sam's statement runs at once, in the same session
          {sys.executable} -m gateway.cli audit verify {work}/audit/*.jsonl
              -> the tamper-evident trail of all of the above (no PII in it)

        Ctrl-C stops the gateway, PostgreSQL and Redis.
        """), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if args.no_wait:
        await _self_check(gw.port, passwords)
        stop.set()
    try:
        await stop.wait()
    finally:
        await runtime.close()
    return 0


async def _self_check(port: int, passwords: dict) -> None:
    """--no-wait (used by the tests): prove the demo works, then stop."""
    import asyncpg
    conn = await asyncpg.connect(f"postgresql://dba:{passwords['dba']}@127.0.0.1:{port}/shop")
    try:
        clear = await conn.fetchval("SELECT email FROM customers WHERE id = 1")
    finally:
        await conn.close()
    conn = await asyncpg.connect(f"postgresql://ann:{passwords['ann']}@127.0.0.1:{port}/shop")
    try:
        masked = await conn.fetchval("SELECT email FROM customers WHERE id = 1")
    finally:
        await conn.close()
    print(f"demo self-check: dba sees {clear!r}, ann sees {masked!r}", flush=True)
    if masked == clear:
        raise SystemExit("demo self-check failed: ann saw an unmasked e-mail")
