"""Run pg8000's own test suite directly against PostgreSQL and through the gateway, and
print the tests whose outcome differs (what the gateway breaks for pg8000).

    .venv/bin/python tests/client_suites/run_pg8000_suite.py [--policy | --restricted] [-k EXPR]
        [--version V]

Not part of the pytest run (it downloads pg8000's sdist from PyPI and takes a few
minutes). pg8000 is a pure-Python driver with wire-protocol code of its own (the simple
protocol for statements without parameters; with parameters, one unnamed statement
parsed, described and bound across three Syncs, Parse/Flush/Sync, Describe/Sync then
Bind/Flush, Execute/Flush/Sync; named prepared statements; COPY in and out from
streams), so it meets the relay in ways libpq and asyncpg do not. PostgreSQL is the
server named by PIIGATE_TEST_PG_DSN (as for the tests), else an embedded one. ``--policy`` runs the gateway with a policy and
an audit trail (the suite's user is under an allow-all rule for role dba: every
statement is analysed, decided and audited, none is refused). ``--restricted`` puts the
suite's user under PII policy instead (_suite.RESTRICTED_POLICY: every kind of
statement allowed, but what the gateway cannot be sure about refused, as for any user
under policy), to see what such a user meets.

pg8000 is not a dependency of piigate, so the version is the runner's (``--version``;
the default is the one last run). The tests come from its sdist's ``test/``, unchanged;
they find the server through PGHOST, PGPORT and PGPASSWORD only (their conftests read
nothing else), as user ``postgres`` in database ``postgres``, which is where the runner
points them (the gateway's user is the same name). They create and drop their own
temporary objects there; what some leave behind (a role, databases for pg_hba tests)
is dropped afterwards.

Left out of the selection, and why:

- ``test/*/auth``: each needs a pg_hba.conf line of its own per database (md5, password,
  gss, scram with and without TLS) and a server with TLS: they test how PostgreSQL
  authenticates, which the gateway replaces with its own SCRAM (tests/gateway/test_startup.py).
- ``test/test_readme.py``: README.md's doctests connect to localhost:5432 with a fixed
  password, whatever the environment says: through the gateway they would still run
  directly.
- ``test/legacy/stress.py``: not a test module (no ``test_`` prefix), a manual load script.

What differs, and why (last runs, pg8000 1.31.6, 786 tests: without ``--policy`` 782
passed directly and 780 through the gateway, with it 781 and 779; none is a gateway
bug):

- ``test_bytes_password`` (native), ``test_password_bytes`` (dbapi),
  ``testBytesPassword`` (legacy), by design: the native test creates a PostgreSQL
  role and logs in as it, expecting 3D000 for a missing database; through the
  gateway the login fails first with 28P01, since the gateway's users are the ones in
  its configuration, never PostgreSQL's roles. The test then ends before its DROP ROLE,
  so the dbapi and legacy twins fail on "role already exists".
- ``test_broken_pipe_read`` (native, legacy) fails now and then in either run: after
  pg_terminate_backend the test expects pg8000's "network error", and gets a raw
  ConnectionResetError when the peer's close reaches it as a reset (PostgreSQL's or
  the gateway's alike).

With ``--restricted`` (last run: 780 passed directly, 654 through the gateway, 112
failed and 20 errors, no hang, no protocol error), every difference is a refusal by
design, each with a message naming the reason:

- the tests' tables are temporary (``CREATE TEMPORARY TABLE t1``) or created in the
  test's open transaction: the gateway resolves names against the schema it read,
  which holds neither, so a statement naming them is unknown and refused (42501,
  rule ``default:unknown``); most differences, and the failures that follow them
  (25P02, enum types never created);
- COPY ... FROM STDIN with a stream goes through pg8000's extended protocol, which a
  session under policy may not use for it (0A000: the server ignores the Sync that
  comes with it);
- ``pg_terminate_backend`` (a dangerous function) and ``pg_stat_activity`` (other
  sessions' SQL) are refused; so is a function body the analyzer cannot attribute;
- connections to databases other than the gateway's (``pg8000_md5``, the unicode
  database names, expected to fail with 3D000) are refused with 42501 first;
- a NOTIFY's payload reaches a session under policy empty (it may carry PII).

Failing in both runs alike: the hstore round trips (the ``postgres`` database has no
hstore extension, and the runner does not install one in a shared database).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tarfile
from pathlib import Path

from _suite import (WORK, PgTarget, clean_env, client_venv, direct_and_through, download_sdist,
                    own_pytest_ini, run_pytest)

VERSION = "1.31.6"
SELECTION = ["test/native", "test/dbapi", "test/legacy", "test/test_converters.py", "test/test_types.py",
             "test/test_utils.py"]
IGNORED = ["test/native/auth", "test/dbapi/auth", "test/legacy/auth"]
#: what pg8000's tests create and may leave behind in the server (dropped afterwards)
LEFTOVERS = ["DROP DATABASE IF EXISTS pg8000_scram_sha_256 WITH (FORCE)",
             "DROP DATABASE IF EXISTS pg8000_md5 WITH (FORCE)",
             'DROP ROLE IF EXISTS "Æthelred"', "DROP ROLE IF EXISTS boltzmann",
             "DROP TYPE IF EXISTS lepton", "DROP TYPE IF EXISTS duple",
             "DROP TABLE IF EXISTS booze, barflys, t2"]


def suite_env(work: Path, version: str) -> tuple[Path, Path]:
    """A venv of its own with pg8000 at ``version`` and what its tests import (pytest,
    pytest-mock, pytest-benchmark, pytz; pytest-timeout so that a hang fails one test
    instead of stalling the run), and that version's ``test/`` (from its sdist)."""
    venv = client_venv(work, "pg8000", version, [f"pg8000=={version}", "pytest", "pytest-mock",
                                                "pytest-benchmark", "pytest-timeout", "pytz"])
    tests = work / f"pg8000-{version}-tests"
    if not tests.exists():
        sdist = download_sdist(venv, work, f"pg8000=={version}")
        with tarfile.open(sdist) as tar:
            members = [m for m in tar.getmembers() if f"pg8000-{version}/test/" in m.name]
            tar.extractall(work / "sdist", members=members, filter="data")
        # the package ``test`` (its modules import ``test.utils``) in a folder of its
        # own: pytest run there puts it first on sys.path, ahead of the stdlib's ``test``
        shutil.copytree(work / "sdist" / f"pg8000-{version}" / "test", tests / "test")
        own_pytest_ini(tests)
    return venv, tests


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", action="store_true", help="policy + audit trail in the gateway")
    ap.add_argument("--restricted", action="store_true",
                    help="the suite's user under PII policy (see _suite.RESTRICTED_POLICY)")
    ap.add_argument("-k", help="pytest -k expression for the suite")
    ap.add_argument("--version", default=VERSION, help=f"pg8000's version (default {VERSION})")
    ap.add_argument("--work", default=str(WORK), help="cache for the venv and the tests")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(exist_ok=True)
    venv, tests = suite_env(work, args.version)
    extra = [*SELECTION, *(f"--ignore={p}" for p in IGNORED), "--benchmark-disable", "--timeout=60",
             *(["-k", args.k] if args.k else [])]
    pg = PgTarget.from_env()

    def run(host: str, port: int, password: str | None) -> dict[str, str]:
        env = clean_env()
        # the user (postgres) and database (its name) are fixed in pg8000's conftests;
        # a password is sent only when the server asks (trust directly, SCRAM through
        # the gateway)
        env.update(PGHOST=host, PGPORT=str(port), PGPASSWORD=password or "unused")
        try:
            return run_pytest(venv, tests, env, extra, "direct" if password is None else "gateway",
                              timeout=1200)
        finally:
            for sql in LEFTOVERS:
                pg.psql(sql)

    if pg.user != "postgres":
        print(f"pg8000's tests connect as user postgres; PIIGATE_TEST_PG_DSN names {pg.user}", file=sys.stderr)
        return 2
    try:
        return direct_and_through("pg8000", pg, args.policy, run, restricted=args.restricted)
    finally:
        pg.stop()


if __name__ == "__main__":
    sys.exit(main())
