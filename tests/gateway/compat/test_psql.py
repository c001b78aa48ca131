"""psql through the gateway gives exactly what it gives directly: queries, several
statements in one -c, \\copy both ways, \\d, errors (verbose, with SQLSTATE) and a
Ctrl-C cancel of a running statement."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from gateway import embedded

from ..conftest import PASSWORD


@pytest.fixture(scope="module")
def psql_bin() -> str:
    try:
        return embedded.find_pg_tool("psql")
    except embedded.EmbeddedServerError as e:
        pytest.skip(str(e))


def direct(pg_server, dbname: str) -> str:
    return f"host={pg_server.host} port={pg_server.port} user={pg_server.user} dbname={dbname} sslmode=disable"


def run(psql_bin, conninfo: str, *args: str, stdin: str | None = None,
        cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PGPASSWORD": PASSWORD, "PGCLIENTENCODING": "UTF8", "PAGER": "",
           "PGTZ": "UTC", "LC_ALL": "C.UTF-8"}
    env.pop("PGOPTIONS", None)
    return subprocess.run([psql_bin, "-X", "--no-psqlrc", conninfo, *args], input=stdin,
                          capture_output=True, text=True, env=env, timeout=60, cwd=cwd)


def both(psql_bin, pg_server, gateway, dbname, *args, **kw):
    d = run(psql_bin, direct(pg_server, dbname), *args, **kw)
    g = run(psql_bin, gateway.libpq(dbname), *args, **kw)
    return d, g


def assert_same(d, g):
    assert (g.returncode, g.stdout, g.stderr) == (d.returncode, d.stdout, d.stderr)


def test_queries(psql_bin, pg_server, gateway, sample_db):
    for sql in ("SELECT * FROM customers ORDER BY id",
                "SELECT c.full_name, sum(o.amount) FROM customers c JOIN orders o ON o.customer_id = c.id "
                "GROUP BY 1 ORDER BY 1",
                "SELECT city, count(*) FROM customers GROUP BY city ORDER BY 2 DESC, 1",
                "SELECT 1::numeric / 3, 'a''b', NULL, now() IS NOT NULL, '\\x00ff'::bytea, "
                "ARRAY[1,2,3], '{\"a\": [1, 2]}'::jsonb, 'é日本'"):
        d, g = both(psql_bin, pg_server, gateway, sample_db.dbname, "-c", sql)
        assert d.returncode == 0 and d.stdout, d.stderr
        assert_same(d, g)


def test_several_statements_in_one_c(psql_bin, pg_server, gateway, fresh_db):
    sql = ("CREATE TEMP TABLE t(x int, y text); INSERT INTO t VALUES (1, 'one'), (2, 'two'); "
           "SELECT * FROM t ORDER BY x; UPDATE t SET y = upper(y); SELECT y FROM t ORDER BY x")
    d, g = both(psql_bin, pg_server, gateway, fresh_db.dbname, "-c", sql)
    assert d.returncode == 0 and "TWO" in d.stdout
    assert_same(d, g)


def test_script_on_stdin_with_transactions(psql_bin, pg_server, gateway, fresh_db):
    script = """\
CREATE TABLE IF NOT EXISTS s(x int);
BEGIN;
INSERT INTO s VALUES (1);
SAVEPOINT a;
INSERT INTO s VALUES (2);
ROLLBACK TO a;
COMMIT;
SELECT count(*) FROM s;
DROP TABLE s;
"""
    d, g = both(psql_bin, pg_server, gateway, fresh_db.dbname, "-f", "-", stdin=script)
    assert d.returncode == 0 and " 1\n" in d.stdout
    assert_same(d, g)


def test_copy_to_and_from_a_file(psql_bin, pg_server, gateway, sample_db_fresh, tmp_path):
    db = sample_db_fresh.dbname
    results = {}
    for name, conninfo in (("direct", direct(pg_server, db)), ("gateway", gateway.libpq(db))):
        out = tmp_path / f"customers-{name}.csv"
        done = run(psql_bin, conninfo, "-c", f"\\copy (SELECT * FROM customers ORDER BY id) TO '{out}' CSV HEADER")
        assert done.returncode == 0, done.stderr
        results[name] = (done.stdout, out.read_bytes())
    assert results["direct"] == results["gateway"]
    assert results["direct"][1].count(b"\n") > 10
    # and back in: the gateway's file into a new table, through the gateway, then compared
    src = tmp_path / "customers-gateway.csv"
    for name, conninfo in (("direct", direct(pg_server, db)), ("gateway", gateway.libpq(db))):
        done = run(psql_bin, conninfo, "-c", f"CREATE TABLE copy_in_{name} (LIKE customers)")
        assert done.returncode == 0, done.stderr
        done = run(psql_bin, conninfo, "-c", f"\\copy copy_in_{name} FROM '{src}' CSV HEADER")
        assert done.returncode == 0, done.stderr
        results[name] = done.stdout
    assert results["direct"] == results["gateway"] and results["direct"].startswith("COPY ")
    d = run(psql_bin, direct(pg_server, db), "-Atc", "SELECT * FROM copy_in_direct ORDER BY id")
    g = run(psql_bin, direct(pg_server, db), "-Atc", "SELECT * FROM copy_in_gateway ORDER BY id")
    assert d.stdout == g.stdout and d.stdout


def test_copy_stdin_text_format_and_copy_fail(psql_bin, pg_server, gateway, fresh_db):
    script = "CREATE TABLE IF NOT EXISTS c(a int, b text);\nTRUNCATE c;\n" \
             "COPY c FROM STDIN;\n1\tone\n2\t\\N\n3\tthree\\ttab\n\\.\n" \
             "COPY c FROM STDIN;\n4\tnot-a-number-row\nx\ty\n\\.\n" \
             "SELECT * FROM c ORDER BY a;\nCOPY c TO STDOUT;\nDROP TABLE c;\n"
    d, g = both(psql_bin, pg_server, gateway, fresh_db.dbname, "-f", "-", stdin=script)
    assert "invalid input syntax for type integer" in d.stderr
    assert_same(d, g)


def test_describe(psql_bin, pg_server, gateway, sample_db):
    for cmd in ("\\d", "\\d customers", "\\d+ orders", "\\dn", "\\df pg_sleep"):
        d, g = both(psql_bin, pg_server, gateway, sample_db.dbname, "-c", cmd)
        assert d.returncode == 0, d.stderr
        assert_same(d, g)
    d, _ = both(psql_bin, pg_server, gateway, sample_db.dbname, "-c", "\\d customers")
    assert "card_number" in d.stdout and "customers_pkey" in d.stdout


def test_errors_verbose(psql_bin, pg_server, gateway, sample_db):
    script = "\\set VERBOSITY verbose\n" \
             "SELECT * FROM no_such_table;\n" \
             "SELECT 1/0;\n" \
             "SELECT nosuchcolumn FROM customers;\n" \
             "SELEC 1;\n" \
             "DO $$ BEGIN RAISE NOTICE 'hello %', 42; RAISE WARNING 'careful'; END $$;\n" \
             "DO $$ BEGIN RAISE EXCEPTION 'custom failure' USING ERRCODE = 'P0042', HINT = 'a hint', DETAIL = 'a detail'; END $$;\n" \
             "SELECT 'still alive';\n"
    d, g = both(psql_bin, pg_server, gateway, sample_db.dbname, "-f", "-", stdin=script)
    for expected in ("ERROR:  42P01: relation \"no_such_table\" does not exist", "22012: division by zero",
                     "42703:", "42601: syntax error", "NOTICE:  00000: hello 42", "P0042: custom failure",
                     "HINT:  a hint", "DETAIL:  a detail", "LOCATION:  "):
        assert expected in d.stderr, expected
    assert "still alive" in d.stdout
    assert_same(d, g)


def test_on_error_stop_exit_code(psql_bin, pg_server, gateway, sample_db):
    d, g = both(psql_bin, pg_server, gateway, sample_db.dbname, "-v", "ON_ERROR_STOP=1", "-f", "-",
                stdin="SELECT 1;\nSELECT 1/0;\nSELECT 2;\n")
    assert d.returncode == 3
    assert_same(d, g)


def test_ctrl_c_cancels_a_running_statement(psql_bin, gateway):
    env = {**os.environ, "PGPASSWORD": PASSWORD}
    proc = subprocess.Popen([psql_bin, "-X", gateway.libpq("postgres"), "-c", "SELECT pg_sleep(30)"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        time.sleep(1.5)
        assert proc.poll() is None, proc.communicate()
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)             # what Ctrl-C does: psql sends a CancelRequest
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert time.monotonic() - t0 < 5
    assert "canceling statement due to user request" in err
    assert proc.returncode == 1


def test_ctrl_c_under_a_pty_in_interactive_psql(psql_bin, gateway):
    """The interactive case: psql on a terminal, Ctrl-C typed, and the session goes on."""
    import pty
    import select

    pid, fd = pty.fork()
    if pid == 0:                                          # child: psql on the pty
        os.environ.update({"PGPASSWORD": PASSWORD, "PAGER": "", "TERM": "dumb"})
        os.execv(psql_bin, [psql_bin, "-X", "-n", gateway.libpq("postgres")])
    out = b""

    def read_until(marker: bytes, timeout: float) -> bytes:
        nonlocal out
        deadline = time.monotonic() + timeout
        while marker not in out:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{marker!r} not seen; psql said {out.decode(errors='replace')!r}")
            r, _, _ = select.select([fd], [], [], left)
            if r:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                out += chunk
        return out

    try:
        read_until(b"postgres=", 15)           # prompt: =# or => by role
        os.write(fd, b"SELECT pg_sleep(30);\n")
        time.sleep(1.5)
        t0 = time.monotonic()
        os.write(fd, b"\x03")                            # Ctrl-C
        read_until(b"canceling statement due to user request", 10)
        assert time.monotonic() - t0 < 5
        os.write(fd, b"SELECT 'after' || 'cancel';\n")
        read_until(b"aftercancel", 10)
        os.write(fd, b"\\q\n")
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(pid, 0)
        os.close(fd)


def test_large_objects_use_function_call(psql_bin, pg_server, gateway, fresh_db, tmp_path):
    """\\lo_import and \\lo_export go through libpq's fast-path FunctionCall messages."""
    blob = tmp_path / "blob.bin"
    blob.write_bytes(os.urandom(300_000))
    exported = {}
    for name, conninfo in (("direct", direct(pg_server, fresh_db.dbname)), ("gateway", gateway.libpq(fresh_db.dbname))):
        done = run(psql_bin, conninfo, "-c", f"\\lo_import {blob}")
        assert done.returncode == 0 and done.stdout.startswith("lo_import "), done.stderr
        oid = done.stdout.split()[1]
        out = tmp_path / f"out-{name}.bin"
        done = run(psql_bin, conninfo, "-c", f"\\lo_export {oid} {out}")
        assert done.returncode == 0, done.stderr
        exported[name] = out.read_bytes()
        done = run(psql_bin, conninfo, "-c", f"\\lo_unlink {oid}")
        assert done.stdout.strip() == f"lo_unlink {oid}", done.stderr
    assert exported["direct"] == exported["gateway"] == blob.read_bytes()
