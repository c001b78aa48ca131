"""Run a PostgreSQL part of SQLAlchemy's own test suite, with psycopg 3 and with asyncpg,
directly against PostgreSQL and through the gateway, and print the tests whose
outcome differs (what the gateway breaks for SQLAlchemy applications).

    .venv/bin/python tests/client_suites/run_sqlalchemy_suite.py [--policy | --restricted]
        [-k EXPR] [--driver psycopg|asyncpg ...] [--version V] [--full]

Not part of the pytest run (it downloads SQLAlchemy's sdist from PyPI; 10 to 12 minutes
for both drivers, each directly and through the gateway, half that with one
``--driver``). PostgreSQL is the server named by PIIGATE_TEST_PG_DSN (as for the tests),
else an embedded one. ``--policy`` runs the gateway with a policy and an audit trail
(the suite's user is under an allow-all rule for role dba: every statement is
analysed, decided and audited, none is refused). ``--restricted`` puts the suite's
user under PII policy instead (_suite.RESTRICTED_POLICY), to see what such a user
meets.

What runs: SQLAlchemy's sdist's ``test/`` with its own pytest plugin and
configuration, from the extracted sdist's root (its conftest puts the sdist's
``lib/`` first on sys.path, so the tests run the code they came with), with
``--dburi postgresql+psycopg://...`` and then ``postgresql+asyncpg://...`` (the
drivers at the versions installed beside piigate, the ones the other runners test)
and ``--backend-only`` (tests that only compile SQL need no server, gateway or not).
The selection is SELECTION below: the PostgreSQL dialect's tests (types, reflection,
ON CONFLICT, the dialect's own behaviour, asyncpg's specifics) and the core
query/types/result/RETURNING/insert/sequence tests, ORM queries, engine execution
and transactions; ``--full`` runs test/sql, test/orm and test/engine whole instead
(much longer). SQLAlchemy's own test/requirements.py decides what to skip for the
server, the same in both runs.

The database: a scratch one (``piigate_sqlalchemy_suite``, UTF8, dropped afterwards)
laid out as README.unittests.rst asks, the schemas ``test_schema`` and
``test_schema_2`` and the hstore and citext extensions. Through the gateway it is the
gateway's upstream database too, since under policy a user may only open sessions on
the database whose schema the gateway reads. No pytest-xdist: SQLAlchemy's plugin
would then create a database per worker, and the machine's two cores are shared.

Last runs (SQLAlchemy 2.1.9, psycopg 3.3.9, asyncpg 0.32.0, PostgreSQL 15): no test
differs, with or without ``--policy``: psycopg 4474 passed, 10 failed, 46 skipped,
directly and through the gateway alike; asyncpg 4584 passed, 2 failed, 91 skipped,
alike (about 11 minutes for the four runs).
The failures are the server's, in both runs alike: two-phase commit (the server's
max_prepared_transactions is 0) and ``test_array_str_collation`` (no "en_US"
collation). Through the gateway SQLAlchemy's teardown warns now and then that a
session is "idle in transaction": the gateway's schema reader, which reads the
catalogs after DDL in one read-only REPEATABLE READ transaction (a few milliseconds).

With ``--restricted`` (last run, psycopg only): the run through the gateway did not end
within pytest's 30 minutes (92 % done: 1817 passed, 1276 failed, 357 teardown errors,
against 4474 passed directly in 90 s). Every refusal in its audit trail is one by
design, for a user under policy:

- SQLAlchemy's fixtures create each test's tables inside the test's own transaction
  (or in a transaction on another connection), and the gateway resolves names against
  the schema it read, which holds only committed objects: a statement naming such a
  table is unknown and refused (42501, ``default:unknown``; 1,378 of the 1,409
  refusals, and the failures that follow them);
- tables named on purpose that do not exist, SQL that does not parse, a column alias
  used inside an ORDER BY expression (PostgreSQL refuses those as well, with another
  SQLSTATE), ``SET search_path`` inside a transaction block, ``lo_create``, a
  function body the analyzer cannot attribute;
- and it is slow: while one connection holds DDL uncommitted, a statement under policy
  on another connection waits for the schema to be read again after it, at most 5 s
  (gateway.session's schema hold), and SQLAlchemy's tests keep DDL open on one
  connection while they use another (21 such waits in the run).

The gateway's log shows nothing else (no error, no hang beyond those bounded waits),
and no statement in the audit trail failed with a protocol error.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tarfile
from pathlib import Path

from _suite import WORK, PgTarget, clean_env, client_venv, direct_and_through, download_sdist, run_pytest

VERSION = "2.1.9"
DATABASE = "piigate_sqlalchemy_suite"
SELECTION = ["test/dialect/postgresql", "test/sql/test_query.py", "test/sql/test_types.py",
             "test/sql/test_resultset.py", "test/sql/test_returning.py", "test/sql/test_insert_exec.py",
             "test/sql/test_sequences.py", "test/sql/test_defaults.py", "test/orm/test_query.py",
             "test/engine/test_execute.py", "test/engine/test_transaction.py", "test/engine/test_reconnect.py",
             "test/engine/test_reflection.py", "test/ext/asyncio/test_engine.py",
             "test/ext/asyncio/test_cancellation.py"]
#: the range types' operator tests compare each pair of 30-odd ranges under ten
#: operators: 1,200 tests per range type, most of a run's time, which send the same
#: messages with other values. Kept: equality and value containment (every range
#: type's values both ways, with every bound) and the types' other tests (round
#: trips, casts, multiranges)
TRIM = ("not (RangeRoundTripTest and (test_adjacent or test_difference or test_intersection"
        " or test_contains_range or test_not_extend_left_or_right_of or test_strictly_left_or_right_of"
        " or test_overlaps or test_union))")
FULL = ["test/dialect/postgresql", "test/sql", "test/orm", "test/engine", "test/ext/asyncio"]
DRIVERS = {"psycopg": "postgresql+psycopg", "asyncpg": "postgresql+asyncpg"}
#: a pytest plugin for --restricted runs (both of them): SQLAlchemy's teardown asks
#: pg_stat_activity, before it drops a test's tables, whether another session is idle
#: in a transaction, only to warn about it. A user under PII policy may not read other
#: sessions' SQL there (refused by design), and the refusal would fail the teardown,
#: leave the tables behind and fail the tests after it: the plugin lets the check
#: find nothing, in both runs alike. What the tests themselves send is unchanged.
RESTRICTED_PLUGIN = '''"""piigate's client-suite runner: SQLAlchemy's pre-drop diagnostic off."""
import pytest


@pytest.hookimpl(trylast=True)
def pytest_sessionstart(session):
    from sqlalchemy.testing import provision
    import sqlalchemy.dialects.postgresql.provision  # noqa: F401  (registers the postgresql one)
    provision.prepare_for_drop_tables.fns["postgresql"] = lambda cfg, connection: None
'''


def suite_env(work: Path, version: str) -> tuple[Path, Path]:
    """A venv of its own (SQLAlchemy's dependencies, psycopg and asyncpg at piigate's
    versions, pytest), and the extracted sdist (test/, lib/ and the root's setup.cfg
    and pyproject.toml, whose pytest sections SQLAlchemy's plugin reads)."""
    import asyncpg
    import psycopg
    venv = client_venv(work, "sqlalchemy", version,
                       [f"sqlalchemy[asyncio]=={version}", f"psycopg[binary]=={psycopg.__version__}",
                        f"asyncpg=={asyncpg.__version__}", "pytest"])
    root = work / f"sqlalchemy-{version}"
    if not root.exists():
        sdist = download_sdist(venv, work, f"sqlalchemy=={version}")
        with tarfile.open(sdist) as tar:
            top = f"sqlalchemy-{version}/"
            members = [m for m in tar.getmembers()
                       if m.name.startswith((top + "test/", top + "lib/")) or m.name in (
                           top + "setup.cfg", top + "pyproject.toml", top + "README.unittests.rst")]
            tar.extractall(work / "sdist", members=members, filter="data")
        shutil.copytree(work / "sdist" / f"sqlalchemy-{version}", root)
    return venv, root


def prepare_database(pg: PgTarget) -> None:
    """The scratch database as README.unittests.rst describes it."""
    import psycopg
    pg.psql(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
    pg.psql(f"CREATE DATABASE {DATABASE} ENCODING 'UTF8' TEMPLATE template0")
    with psycopg.connect(host=pg.host, port=pg.port, user=pg.user, dbname=DATABASE, autocommit=True) as conn:
        for sql in ("CREATE SCHEMA test_schema", "CREATE SCHEMA test_schema_2",
                    "CREATE EXTENSION IF NOT EXISTS hstore", "CREATE EXTENSION IF NOT EXISTS citext",
                    f"ALTER DATABASE {DATABASE} SET default_text_search_config = 'pg_catalog.english'"):
            conn.execute(sql)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", action="store_true", help="policy + audit trail in the gateway")
    ap.add_argument("--restricted", action="store_true",
                    help="the suite's user under PII policy (see _suite.RESTRICTED_POLICY)")
    ap.add_argument("-k", help="pytest -k expression for the suite")
    ap.add_argument("--driver", action="append", choices=sorted(DRIVERS),
                    help="run with this driver only (repeatable; default: psycopg and asyncpg)")
    ap.add_argument("--full", action="store_true", help="FULL instead of SELECTION (much longer)")
    ap.add_argument("--version", default=VERSION, help=f"SQLAlchemy's version (default {VERSION})")
    ap.add_argument("--work", default=str(WORK), help="cache for the venv and the sdist")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(exist_ok=True)
    venv, root = suite_env(work, args.version)
    drivers = args.driver or list(DRIVERS)
    plugin = []
    if args.restricted:
        (root / "piigate_restricted_plugin.py").write_text(RESTRICTED_PLUGIN)
        plugin = ["-p", "piigate_restricted_plugin"]
    k = " and ".join(f"({e})" for e in ([] if args.full else [TRIM]) + ([args.k] if args.k else []))
    # --maxfail=0: SQLAlchemy's addopts stop at 250 failures, and a run that stops
    # early cannot be compared (options given here win over addopts)
    extra = [*plugin, *(FULL if args.full else SELECTION), "--backend-only", "--dropfirst", "--maxfail=0",
             "--tb=short", *(["-k", k] if k else [])]
    pg = PgTarget.from_env()

    def run(host: str, port: int, password: str | None) -> dict[str, str]:
        where = "direct" if password is None else "gateway"
        # a password in both URLs: tests that rebuild the URL (multiple hosts) need
        # one, and the server's trust authentication ignores it
        outcomes: dict[str, str] = {}
        for driver in drivers:
            print(f" with {driver}:")
            uri = f"{DRIVERS[driver]}://{pg.user}:{password or 'unused'}@{host}:{port}/{DATABASE}"
            got = run_pytest(venv, root, clean_env(), ["--dburi", uri, *extra], f"{where}-{driver}",
                             timeout=1800)
            outcomes.update({f"[{driver}] {test}": outcome for test, outcome in got.items()})
        return outcomes

    try:
        prepare_database(pg)
        return direct_and_through("sqlalchemy", pg, args.policy, run, database=DATABASE,
                                  restricted=args.restricted)
    finally:
        try:
            pg.psql(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        finally:
            pg.stop()


if __name__ == "__main__":
    sys.exit(main())
