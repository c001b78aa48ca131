"""pgbench through the gateway in the three query modes: no errors, no aborted
clients, transactions processed (a correctness check, not a benchmark: see
benchmarks/ for numbers)."""
from __future__ import annotations

import os
import re
import subprocess

import pytest

from gateway import embedded

from ..conftest import PASSWORD


@pytest.fixture(scope="module")
def pgbench_bin() -> str:
    try:
        return embedded.find_pg_tool("pgbench")
    except embedded.EmbeddedServerError as e:
        pytest.skip(str(e))


@pytest.fixture
def pgbench_db(pgbench_bin, pg_server, fresh_db):
    """A fresh database initialised directly (not through the gateway) with -s 1."""
    done = subprocess.run([pgbench_bin, "-i", "-s", "1", "-q", "-h", pg_server.host, "-p", str(pg_server.port),
                           "-U", pg_server.user, fresh_db.dbname],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PGPASSWORD": pg_server.password or ""})
    assert done.returncode == 0, done.stderr
    return fresh_db


@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
def test_pgbench_select_only(pgbench_bin, pgbench_db, gateway_factory, mode):
    gw = gateway_factory()          # started after the tables exist, like a deployment
    done = subprocess.run([pgbench_bin, "-S", "-n", "-T", "2", "-c", "4", "-j", "2", "-M", mode,
                           "-h", "127.0.0.1", "-p", str(gw.port), "-U", "alice", pgbench_db.dbname],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PGPASSWORD": PASSWORD, "PGSSLMODE": "disable"})
    out = done.stdout
    assert done.returncode == 0, done.stderr + out
    assert "aborted" not in done.stderr.lower() and "error" not in done.stderr.lower(), done.stderr
    assert f"query mode: {mode}" in out
    processed = int(re.search(r"number of transactions actually processed: (\d+)", out).group(1))
    assert processed > 0
    failed = re.search(r"number of failed transactions: (\d+)", out)
    assert failed is None or int(failed.group(1)) == 0, out
    tps = float(re.search(r"tps = ([\d.]+)", out).group(1))
    assert tps > 0


def test_pgbench_tpcb_writes(pgbench_bin, pgbench_db, gateway_factory, pg_server):
    """The default TPC-B-like script (updates, insert, in a transaction) runs clean too."""
    gw = gateway_factory()
    done = subprocess.run([pgbench_bin, "-n", "-t", "50", "-c", "2", "-M", "extended",
                           "-h", "127.0.0.1", "-p", str(gw.port), "-U", "alice", pgbench_db.dbname],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PGPASSWORD": PASSWORD, "PGSSLMODE": "disable"})
    assert done.returncode == 0, done.stderr + done.stdout
    assert "number of transactions actually processed: 100/100" in done.stdout
    check = subprocess.run([embedded.find_pg_tool("psql"), "-X", "-Atc", "SELECT count(*) FROM pgbench_history",
                            f"host={pg_server.host} port={pg_server.port} user={pg_server.user} "
                            f"dbname={pgbench_db.dbname}"], capture_output=True, text=True, timeout=30)
    assert check.stdout.strip() == "100", check.stderr
