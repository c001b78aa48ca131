"""Run asyncpg's own test suite directly against PostgreSQL and through the gateway,
and print the tests whose outcome differs (what the gateway breaks for asyncpg).

    .venv/bin/python tests/client_suites/run_asyncpg_suite.py [--policy] [-k EXPR]

Not part of the pytest run (it downloads asyncpg's sdist from PyPI and takes a few
minutes). PostgreSQL is the server named by PIIGATE_TEST_PG_DSN (as for the tests),
else an embedded one. ``--policy`` runs the gateway with a policy and an audit trail
(the suite's user is under an allow-all rule for role dba: every statement is
analysed, decided and audited, none is refused). asyncpg's tests that manage their
own clusters (standby targets, HBA changes) error or skip in both runs alike.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tarfile
from pathlib import Path

from _suite import (WORK, PgTarget, clean_env, client_venv, direct_and_through, download_sdist,
                    own_pytest_ini, run_pytest)


def suite_env(work: Path) -> tuple[Path, Path]:
    """A venv of its own with the installed asyncpg's version, pytest and distro, and
    that version's tests (from its sdist)."""
    import asyncpg
    version = asyncpg.__version__
    venv = client_venv(work, "asyncpg", version, [f"asyncpg=={version}", "pytest", "distro", "uvloop"])
    tests = work / f"asyncpg-{version}-tests"
    if not tests.exists():
        sdist = download_sdist(venv, work, f"asyncpg=={version}")
        with tarfile.open(sdist) as tar:
            members = [m for m in tar.getmembers() if f"asyncpg-{version}/tests/" in m.name]
            tar.extractall(work / "sdist", members=members, filter="data")
        shutil.copytree(work / "sdist" / f"asyncpg-{version}" / "tests", tests / "apgtests")
    own_pytest_ini(tests)
    return venv, tests


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", action="store_true", help="policy + audit trail in the gateway")
    ap.add_argument("-k", help="pytest -k expression for the suite")
    ap.add_argument("--work", default=str(WORK), help="cache for the venv and the tests")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(exist_ok=True)
    venv, tests = suite_env(work)
    extra = ["-k", args.k] if args.k else []
    pg = PgTarget.from_env()

    def run(host: str, port: int, password: str | None) -> dict[str, str]:
        env = clean_env()
        env.update(PGHOST=host, PGPORT=str(port), PGUSER=pg.user, PGDATABASE="postgres")
        if password:
            env["PGPASSWORD"] = password
        return run_pytest(venv, tests, env, ["apgtests", "--deselect", "apgtests/test__sourcecode.py", *extra],
                          "direct" if password is None else "gateway")

    try:
        return direct_and_through("asyncpg", pg, args.policy, run)
    finally:
        pg.stop()


if __name__ == "__main__":
    sys.exit(main())
