"""Run psycopg2's own test suite directly against PostgreSQL and through the gateway,
and print the tests whose outcome differs (what the gateway breaks for psycopg2).

    .venv/bin/python tests/client_suites/run_psycopg2_suite.py [--policy | --restricted] [-k EXPR]
        [--fast] [--green] [--replication] [--version V]

Not part of the pytest run (it downloads psycopg2's sdist from PyPI and takes a few
minutes). psycopg2 is libpq-based, the most used Python driver: what it sends is what
libpq sends (the simple protocol for every statement, parameters interpolated
client-side; COPY in and out; asynchronous connections; PQcancel; large objects through
the lo_* functions). PostgreSQL is the server named by PIIGATE_TEST_PG_DSN (as for the
tests), else an embedded one; the suite runs in a scratch database
(``piigate_psycopg2_suite``, dropped afterwards), which is also the gateway's upstream
database (with the hstore extension, which the hstore adapter's tests need, created in it
when the server has it). ``--policy`` runs the gateway with a policy and an audit trail (the suite's
user is under an allow-all rule for role dba: every statement is analysed, decided and
audited, none is refused); ``--restricted`` puts the suite's user under PII policy
instead (_suite.RESTRICTED_POLICY), to see what such a user meets.

psycopg2 is not a dependency of piigate, so the version is the runner's (``--version``;
the default is the one last run). The client runs in a venv of its own:
psycopg2-binary at that version (the bundled libpq is the one the gateway meets in
practice), pytest and pytest-timeout (``--timeout`` per test, so a hang fails one test
instead of stalling the run). The tests come from psycopg2's sdist's ``tests/``,
unchanged (a unittest package, which pytest collects); they find the server through
PSYCOPG2_TESTDB, PSYCOPG2_TESTDB_HOST, _PORT, _USER and _PASSWORD (tests/testconfig.py).
Replication tests are off, as psycopg2's suite has them by default
(PSYCOPG2_TEST_REPL_DSN unset): the gateway refuses replication connections by design.
``--replication`` runs them (on the suite's own DSN), to see that refusal; directly
they need wal_level=logical and a pg_hba.conf line for replication.
The tests psycopg2 marks slow run too (cancel, COPY, NOTIFY, deadlock: what a proxy
meets most); ``--fast`` skips them (PSYCOPG2_TEST_FAST=1), as psycopg2's quick runs do.

Last runs (psycopg2 2.9.13, libpq 17 bundled, PostgreSQL 15, 774 tests): directly,
through the transparent gateway and with ``--policy`` alike 723 passed, 1 failed, 50
skipped; no test differs. Against a server with max_prepared_transactions = 10 and
wal_level = logical (the 30 two-phase-commit tests run), ``--replication``: 763 passed
directly, 753 through the gateway with and without ``--policy``; the 10 that differ
are the replication tests (EXPECTED). ``--green`` (every test on psycopg2's
non-blocking path, which skips COPY): 690 passed both ways, with and without
``--policy``, none differs. The suite found one gateway bug, fixed: its
green test ``test_errors_on_connection`` drops connections at every step of the
startup, and under uvloop a client reset while the gateway connected upstream left
that upstream session open and logged an "unexpected error"
(tests/gateway/test_serve_process.py).

Failing or skipped in both runs alike (the environment):

- ``test_pgconn_ptr``: it calls PQserverVersion through ctypes on the system's libpq
  with the PGconn of psycopg2-binary's bundled libpq, and gets 0;
- two-phase commit (30 tests) skip where max_prepared_transactions is 0, as on a
  default server; the hstore tests skip when the server has no hstore extension.

With ``--restricted`` (last run on the server above: 753 passed directly, 558 through
the gateway, 193 failed, 3 skipped where they passed; no hang, no protocol error),
every difference is a refusal or a change by design, each with a message naming it:

- the tests' tables are temporary or made by the test itself (``create temp table``,
  ``CREATE TABLE`` in the test's transaction), or absent on purpose: the gateway
  resolves names against the schema it read, so a statement naming them is unknown
  and refused (42501, rule ``default:unknown``), where PostgreSQL would have answered
  42P01/42601/23514; most differences (dbapi20, DictCursor, NamedTupleCursor,
  execute_batch/values, COPY, named cursors, composite and range types, diagnostics);
- large objects: libpq's lo_* functions use the FunctionCall message, refused for a
  session under policy (41 tests);
- DO blocks and function bodies the analyzer cannot attribute; ``search_path`` set
  inside a transaction; ``options=-c standard_conforming_strings=off`` at startup (it
  changes how literals parse);
- ``pg_terminate_backend`` (a dangerous function): the tests that use it skip
  (psycopg2 reads InsufficientPrivilege as "not superuser");
- notice text reaches the session scrubbed (quoted names become "…": the notices
  tests look for table names in them), and a NOTIFY's payload arrives empty.
"""
from __future__ import annotations

import argparse
import sys
import tarfile
from pathlib import Path

from _suite import (WORK, PgTarget, clean_env, client_venv, direct_and_through, download_sdist,
                    own_pytest_ini, run_pytest)

VERSION = "2.9.13"
DATABASE = "piigate_psycopg2_suite"
#: tests that differ by design or by environment (test-id prefix: why); they are
#: listed with their reason and do not make the run fail
EXPECTED = {
    "tests/test_replication.py::": "the gateway refuses replication connections by design (run with --replication)",
}


def suite_env(work: Path, version: str) -> tuple[Path, Path]:
    """A venv of its own with psycopg2-binary at ``version``, pytest and pytest-timeout,
    and that version's ``tests/`` (from psycopg2's sdist) in a folder of their own."""
    venv = client_venv(work, "psycopg2", version, [f"psycopg2-binary=={version}", "pytest", "pytest-timeout"])
    tests = work / f"psycopg2-{version}-tests"
    if not tests.exists():
        sdist = download_sdist(venv, work, f"psycopg2=={version}")
        staging = work / f"psycopg2-{version}-tests.partial"
        with tarfile.open(sdist) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(f"psycopg2-{version}/tests/")]
            tar.extractall(staging, members=members, filter="data")
        (staging / f"psycopg2-{version}").rename(tests)
        staging.rmdir()
    own_pytest_ini(tests)
    return venv, tests


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", action="store_true", help="policy + audit trail in the gateway")
    ap.add_argument("--restricted", action="store_true",
                    help="the suite's user under PII policy (see _suite.RESTRICTED_POLICY)")
    ap.add_argument("-k", help="pytest -k expression for the suite")
    ap.add_argument("--replication", action="store_true",
                    help="run psycopg2's replication tests too (refused through the gateway)")
    ap.add_argument("--green", action="store_true",
                    help="every test on psycopg2's green path (PSYCOPG2_TEST_GREEN=1: non-blocking libpq, wait_select)")
    ap.add_argument("--fast", action="store_true", help="skip the tests psycopg2 marks slow")
    ap.add_argument("--version", default=VERSION, help=f"psycopg2's version (default {VERSION})")
    ap.add_argument("--work", default=str(WORK), help="cache for the venv and the tests")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(exist_ok=True)
    venv, tests = suite_env(work, args.version)
    extra = ["tests", "--timeout=120", *(["-k", args.k] if args.k else [])]
    pg = PgTarget.from_env()

    def run(host: str, port: int, password: str | None) -> dict[str, str]:
        env = clean_env()
        env.update(PSYCOPG2_TESTDB=DATABASE, PSYCOPG2_TESTDB_HOST=host, PSYCOPG2_TESTDB_PORT=str(port),
                   PSYCOPG2_TESTDB_USER=pg.user, PGSSLMODE="disable")
        if password:
            env["PSYCOPG2_TESTDB_PASSWORD"] = password
        if args.replication:
            env["PSYCOPG2_TEST_REPL_DSN"] = ""         # testconfig: the same DSN as the other tests
        if args.green:
            env["PSYCOPG2_TEST_GREEN"] = "1"
        if args.fast:
            env["PSYCOPG2_TEST_FAST"] = "1"
        return run_pytest(venv, tests, env, extra, "direct" if password is None else "gateway", timeout=1800)

    try:
        pg.psql(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        pg.psql(f"CREATE DATABASE {DATABASE}")
        try:
            pg.psql("CREATE EXTENSION IF NOT EXISTS hstore", dbname=DATABASE)
        except Exception as exc:  # noqa: BLE001 - a server without contrib: the hstore tests skip
            print(f"no hstore in {DATABASE} ({exc}): its tests skip in both runs")
        return direct_and_through("psycopg2", pg, args.policy, run, database=DATABASE,
                                  restricted=args.restricted, expected=EXPECTED)
    finally:
        try:
            pg.psql(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        finally:
            pg.stop()


if __name__ == "__main__":
    sys.exit(main())
