"""PostgreSQL going away under a running `piigate serve` (policy and audit trail on),
and coming back on the same port: the sessions it had end with the server's own
error, connections meanwhile get a clear 08001, new sessions afterwards are decided
and masked as before, and the audit trail records all of it (including the refused
connection and the end of every session at shutdown) in a chain that verifies.

Needs a PostgreSQL of its own to stop and start: an embedded one (the wheel's
binaries), whatever server the other tests use."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import orjson
import psycopg
import pytest

from gateway import embedded

from ..conftest import SAMPLE_SQL_FILES, PgServer, create_database
from .conftest import PASSWORD
from .serve_process import REPO, free_port, start_serve, stop_serve
from .test_enforcement import _policy_config, catalogued_values


@pytest.fixture
def own_postgres():
    try:
        embedded.pg_bin_dir()
    except Exception as e:  # noqa: BLE001 - no embedded binaries: nothing to stop and start
        pytest.skip(f"no embedded PostgreSQL to stop and start: {e}")
    # parents world-searchable: the server runs as an unprivileged user under root
    base = Path(tempfile.mkdtemp(prefix="piigate-restart-"))
    os.chmod(base, 0o755)
    servers = [embedded.start_postgres(base)]
    try:
        yield base, servers
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(base, ignore_errors=True)


def _records(directory: Path) -> list[dict]:
    out = []
    for f in sorted(directory.glob("*.jsonl")):
        out += [orjson.loads(line) for line in f.read_bytes().splitlines() if line.strip()]
    return out


def test_postgres_stopped_and_started_again_under_a_policy_gateway(own_postgres, tmp_path):
    base, servers = own_postgres
    pg = servers[0]
    server = PgServer(pg.host, pg.port, pg.user, None, embedded=True)
    db = create_database(server, SAMPLE_SQL_FILES, prefix="piigate_restart")
    port = free_port()
    audit_dir = tmp_path / "audit"
    audit_dir.mkdir()
    text = _policy_config(server, db.dbname, tmp_path)
    text = text.replace("[policy]", f'[audit]\nsinks = ["file"]\nfile = "{audit_dir / "audit.jsonl"}"\n'
                        'fsync = "group"\n\n[policy]', 1)
    text = "\n".join(f'listen = "127.0.0.1:{port}"' if line.startswith("listen =") else line
                     for line in text.splitlines())
    (tmp_path / "gw.toml").write_text(text)
    proc = start_serve(tmp_path / "gw.toml", port)
    dsn = f"postgresql://ann:{PASSWORD}@127.0.0.1:{port}/{db.dbname}"
    secrets = catalogued_values()
    try:
        before = psycopg.connect(dsn, autocommit=True)
        rows = before.execute("SELECT id, email FROM customers ORDER BY id LIMIT 3").fetchall()
        assert len(rows) == 3 and not any(r[1] in secrets for r in rows), rows   # masked

        pg.stop()
        # the session it had ends with the server's own shutdown error, not a hang
        with pytest.raises(psycopg.OperationalError):
            before.execute("SELECT id FROM orders LIMIT 1")
        before.close()
        # a new connection meanwhile: a clear answer saying what to do
        with pytest.raises(psycopg.OperationalError) as refused:
            psycopg.connect(dsn, connect_timeout=10)
        assert "cannot reach the database" in str(refused.value)
        assert "check that PostgreSQL is running" in str(refused.value)

        servers.append(embedded.start_postgres(base, port=pg.port))
        with psycopg.connect(dsn, autocommit=True) as after:
            rows = after.execute("SELECT id, email FROM customers ORDER BY id LIMIT 3").fetchall()
            assert len(rows) == 3 and not any(r[1] in secrets for r in rows), rows
            assert after.execute("SELECT count(*) FROM orders").fetchone()[0] > 0
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                after.execute("COPY customers TO STDOUT")
            # a session still open when the gateway stops
            proc.terminate()
            assert proc.wait(15) == 0
    finally:
        stop_serve(proc)

    records = _records(audit_dir)
    kinds = [r["type"] for r in records]
    refused_records = [r for r in records if r["type"] == "session.refused"]
    assert len(refused_records) == 1, kinds
    assert refused_records[0]["user"] == "ann" and refused_records[0]["sqlstate"] == "08001"
    assert refused_records[0]["database"] == db.dbname
    # every session that was opened has its end recorded, the one open at shutdown too
    opened = {r["session"] for r in records if r["type"] == "session.open"}
    closed = {r["session"] for r in records if r["type"] == "session.close"}
    assert len(opened) == 2 and opened == closed, kinds
    # every decision record has its outcome
    decided = {r["seq"] for r in records if r["type"] == "statement.decision"}
    completed = {row[0] for r in records if r["type"] == "statement.complete" for row in r["statements"]}
    assert decided and decided <= completed | {r["seq"] for r in records
                                              if r["type"] == "statement.decision" and r["effect"] == "deny"}
    assert kinds[-1] == "checkpoint"
    blob = b"".join(f.read_bytes() for f in audit_dir.glob("*.jsonl"))
    assert not [v for v in secrets if v.encode() in blob]
    # the chain verifies
    cli = subprocess.run([sys.executable, "-m", "gateway.cli", "audit", "verify",
                          *map(str, sorted(audit_dir.glob("*.jsonl")))],
                         cwd=REPO, capture_output=True, text=True)
    assert cli.returncode == 0, cli.stdout + cli.stderr
