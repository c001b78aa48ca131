"""Regenerate clients.json: the bytes real clients (psql, psycopg 3, asyncpg) and a real
PostgreSQL exchanged, recorded by a pass-through TCP proxy. test_codec.py parses them.

    .venv/bin/python tests/data/protocol/make_corpus.py postgresql://postgres@127.0.0.1:5432/postgres

The server must accept the given user without a password (trust) over TCP. The
recording is deterministic enough to review in a diff but not byte-stable (pids,
keys, timestamps change): regenerate only when adding clients or cases.
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent


class Recorder:
    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.sessions: list[dict] = []
        self.label = ""

    async def handle(self, reader, writer):
        up_r, up_w = await asyncio.open_connection(self.host, self.port)
        rec = {"client": self.label, "frontend": bytearray(), "backend": bytearray()}
        self.sessions.append(rec)

        async def pipe(src, dst, buf):
            try:
                while data := await src.read(65536):
                    buf += data
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                try:
                    dst.close()
                except Exception:
                    pass
        await asyncio.gather(pipe(reader, up_w, rec["frontend"]), pipe(up_r, writer, rec["backend"]))


def main(dsn: str) -> None:
    parts = urlsplit(dsn)
    rec = Recorder(parts.hostname or "127.0.0.1", parts.port or 5432)
    user = parts.username or "postgres"
    loop = asyncio.new_event_loop()
    started = threading.Event()
    box = {}

    def run():
        asyncio.set_event_loop(loop)
        server = loop.run_until_complete(asyncio.start_server(rec.handle, "127.0.0.1", 0))
        box["port"] = server.sockets[0].getsockname()[1]
        started.set()
        loop.run_forever()

    threading.Thread(target=run, daemon=True).start()
    started.wait()
    port = box["port"]
    conninfo = f"host=127.0.0.1 port={port} user={user} dbname=postgres sslmode=disable gssencmode=disable"
    psql = shutil.which("psql")
    env = {**os.environ, "PGCLIENTENCODING": "UTF8", "PAGER": ""}
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "x.csv"
        for label, args in (
            ("psql simple query + multi-statement", ["-c", "SELECT 1 AS one, 'é' AS e; SELECT now() IS NOT NULL"]),
            ("psql error verbose", ["-c", "\\set VERBOSITY verbose", "-c", "SELECT * FROM no_such_table"]),
            ("psql \\d", ["-c", "\\d pg_class"]),
            ("psql copy out", ["-c", f"\\copy (SELECT g, md5(g::text) FROM generate_series(1, 200) g) TO '{csv}'"]),
            ("psql copy in + notice", ["-c", "CREATE TEMP TABLE t(a int, b text)", "-c", f"\\copy t FROM '{csv}'",
                                       "-c", "DO $$ BEGIN RAISE NOTICE 'hello'; END $$"]),
        ):
            rec.label = label
            subprocess.run([psql, "-X", conninfo, *args], env=env, capture_output=True, timeout=60)

    import psycopg
    rec.label = "psycopg binary, pipeline, copy, listen/notify"
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.cursor(binary=True).execute("SELECT %s::int, %s::text, %s::bytea, %s::numeric",
                                         (1, "two", b"\x00\x03", 4.5)).fetchall()
        try:
            with conn.pipeline():
                conn.execute("SELECT 1")
                conn.execute("SELECT 1/0")
        except psycopg.Error:
            pass
        with conn.cursor().copy("COPY (SELECT generate_series(1, 50)) TO STDOUT") as copy:
            for _ in copy:
                pass
        conn.execute("LISTEN corpus")
        conn.execute("NOTIFY corpus, 'payload'")
        with conn.transaction():
            with conn.cursor(name="srv") as cur:
                cur.execute("SELECT generate_series(1, 30)")
                cur.fetchmany(10)

    import asyncpg

    async def apg():
        conn = await asyncpg.connect(host="127.0.0.1", port=port, user=user, database="postgres", ssl=False)
        try:
            stmt = await conn.prepare("SELECT $1::int + 1, $2::text[]")
            await stmt.fetch(41, ["a", None])
            await conn.execute("CREATE TEMP TABLE r(a int, b text)")
            await conn.copy_records_to_table("r", records=[(i, str(i)) for i in range(100)])
            async with conn.transaction():
                async for _ in conn.cursor("SELECT generate_series(1, 20)", prefetch=7):
                    pass
        finally:
            await conn.close()
    rec.label = "asyncpg prepared, copy records, cursor"
    asyncio.run(apg())

    loop.call_soon_threadsafe(loop.stop)
    out = [{"client": s["client"], "frontend": s["frontend"].hex(), "backend": s["backend"].hex()}
           for s in rec.sessions if s["frontend"]]
    (HERE / "clients.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"recorded {len(out)} sessions into {HERE / 'clients.json'}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "postgresql://postgres@127.0.0.1:5432/postgres")
