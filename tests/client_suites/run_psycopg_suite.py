"""Run psycopg 3's own test suite directly against PostgreSQL and through the gateway,
and print the tests whose outcome differs (what the gateway breaks for psycopg).

    .venv/bin/python tests/client_suites/run_psycopg_suite.py [--policy] [-k EXPR]
        [--tests PATH] [--sync-only]

Not part of the pytest run. PostgreSQL is the server named by PIIGATE_TEST_PG_DSN (as
for the tests), else an embedded one; the suite runs in a scratch database
(``piigate_psycopg_suite``, dropped afterwards) named by PSYCOPG_TEST_DSN. ``--policy``
runs the gateway with a policy and an audit trail (the suite's user is under an
allow-all rule for role dba: every statement is analysed, decided and audited, none is
refused).

Where the tests come from: psycopg's tests are not in its sdists (the sdist is built
from the repository's ``psycopg/`` folder; ``tests/`` sits beside it), so the runner
takes them, for exactly the installed version, from the first of: ``--tests PATH``
(a psycopg source tree or a tarball of one, e.g. a clone at tag ``3.3.9``), an earlier
run's copy in ``.client-suites/``, the PyPI sdist should it ever carry ``tests/``, and
the repository's tag archive. Only ``tests/`` and the root's pytest configuration are
copied: run from the source tree itself, ``import psycopg`` would find the
repository's ``psycopg/`` folder instead of the installed package.

The client runs in a venv of its own: psycopg[binary] at the installed version (the
bundled libpq is the one the gateway meets in practice), psycopg-pool (the suite's
conftest loads the pool fixtures), pytest, pytest-timeout (``--timeout`` per test, so a
hang fails one test instead of stalling the run), anyio, pproxy (the ``proxy`` fixture
that cuts connections) and numpy (the numpy adapters' tests). Not installed:
pytest-randomly (both runs must see the same order) and mypy.

Left out of the selection, and why:

- ``tests/pool``: psycopg_pool's own suite; mostly timing of pool workers, it sends
  nothing the core tests do not, and takes minutes.
- ``tests/crdb``: CockroachDB only (skipped against PostgreSQL anyway).
- ``tests/test_typing.py`` (runs mypy), ``tests/scripts``, ``tests/benchmarks``:
  type checking and tools, no database.
- ``tests/test_dns*.py``: DNS resolution (dnspython, SRV records), no server involved.
- ``tests/types/test_shapely.py``: needs PostGIS in the server.

psycopg's tests that need what an existing server lacks (max_prepared_transactions
for two-phase commit, a second host, replication) skip or fail in both runs alike, so
they are not differences.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

from _suite import WORK, PgTarget, clean_env, client_venv, direct_and_through, download_sdist, run_pytest

DATABASE = "piigate_psycopg_suite"
TAG_ARCHIVE = "https://github.com/psycopg/psycopg/archive/refs/tags/{version}.tar.gz"
IGNORED = ["tests/pool", "tests/crdb", "tests/scripts", "tests/benchmarks", "tests/test_typing.py",
           "tests/test_dns.py", "tests/test_dns_srv.py", "tests/test_dns_srv_async.py",
           "tests/types/test_shapely.py"]
ROOT_CONFIG = ("pyproject.toml", "pytest.ini", "setup.cfg", "tox.ini")


class NoTests(RuntimeError):
    """psycopg's tests for this version could not be found anywhere."""


def _copy_tests(tree: Path, dest: Path) -> None:
    """``tree/tests`` and the root's pytest configuration into ``dest``."""
    if not (tree / "tests" / "conftest.py").exists():
        raise NoTests(f"{tree} has no tests/conftest.py: not a psycopg source tree")
    staging = Path(tempfile.mkdtemp(prefix="psycopg-tests-", dir=dest.parent))
    shutil.copytree(tree / "tests", staging / "tests")
    for name in ROOT_CONFIG:
        if (tree / name).is_file():
            shutil.copy(tree / name, staging / name)
    staging.rename(dest)


def _tree_from_tarball(tarball: Path, into: Path) -> Path:
    """Extract a source tarball's tests/ and root files; return the tree's root."""
    with tarfile.open(tarball) as tar:
        members = [m for m in tar.getmembers()
                   if m.name.count("/") == 1 or "/tests/" in m.name or m.name.endswith("/tests")]
        tar.extractall(into, members=members, filter="data")
    roots = [p for p in into.iterdir() if p.is_dir()]
    if len(roots) != 1:
        raise NoTests(f"{tarball} is not one source tree")
    return roots[0]


def suite_tests(work: Path, venv: Path, version: str, source: str | None) -> Path:
    """A folder holding psycopg's ``tests/`` for ``version`` (see the module docstring)."""
    dest = work / f"psycopg-{version}-tests"
    if source:
        if dest.exists():
            shutil.rmtree(dest)
        path = Path(source)
        if path.is_dir():
            _copy_tests(path, dest)
        else:
            with tempfile.TemporaryDirectory(dir=work) as tmp:
                _copy_tests(_tree_from_tarball(path, Path(tmp)), dest)
        return dest
    if dest.exists():
        return dest
    tried = []
    sdist = download_sdist(venv, work, f"psycopg=={version}")
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        tree = _tree_from_tarball(sdist, Path(tmp))
        if (tree / "tests" / "conftest.py").exists():
            _copy_tests(tree, dest)
            return dest
    tried.append(f"{sdist.name} (PyPI) has no tests/")
    url = TAG_ARCHIVE.format(version=version)
    archive = work / f"psycopg-{version}-source.tar.gz"
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, open(archive, "wb") as out:
            shutil.copyfileobj(resp, out)
        with tempfile.TemporaryDirectory(dir=work) as tmp:
            _copy_tests(_tree_from_tarball(archive, Path(tmp)), dest)
        return dest
    except (OSError, NoTests) as exc:
        archive.unlink(missing_ok=True)
        tried.append(f"{url}: {exc}")
    raise NoTests("psycopg's tests for version " + version + " not found:\n  " + "\n  ".join(tried) +
                  f"\ngive a psycopg source tree at tag {version} (or its tarball) with --tests PATH")


def pytest_args(sync_only: bool, tests: Path, k: str | None) -> list[str]:
    args = ["tests", "--timeout=90", "-o", "addopts=", "-W", "ignore::DeprecationWarning"]
    args += [f"--ignore={p}" for p in IGNORED]
    if sync_only:
        args += [f"--ignore={p.relative_to(tests)}" for p in sorted((tests / "tests").rglob("*_async.py"))]
    return args + (["-k", k] if k else [])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", action="store_true", help="policy + audit trail in the gateway")
    ap.add_argument("-k", help="pytest -k expression for the suite")
    ap.add_argument("--tests", help="a psycopg source tree (or its tarball) at the installed version's tag")
    ap.add_argument("--sync-only", action="store_true",
                    help="leave out the *_async.py twins (same messages on the wire, half the time)")
    ap.add_argument("--work", default=str(WORK), help="cache for the venv and the tests")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(exist_ok=True)
    import psycopg
    version = psycopg.__version__
    venv = client_venv(work, "psycopg", version, [f"psycopg[binary]=={version}", "psycopg-pool", "pytest",
                                                 "pytest-timeout", "anyio", "pproxy", "numpy"])
    try:
        tests = suite_tests(work, venv, version, args.tests)
    except NoTests as exc:
        print(exc, file=sys.stderr)
        return 2
    extra = pytest_args(args.sync_only, tests, args.k)
    pg = PgTarget.from_env()

    def run(host: str, port: int, password: str | None) -> dict[str, str]:
        env = clean_env()
        dsn = f"host={host} port={port} user={pg.user} dbname={DATABASE} sslmode=disable"
        env.update(PSYCOPG_TEST_DSN=dsn + (f" password={password}" if password else ""), PSYCOPG_IMPL="binary")
        return run_pytest(venv, tests, env, extra, "direct" if password is None else "gateway", timeout=1800)

    try:
        pg.psql(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        pg.psql(f"CREATE DATABASE {DATABASE}")
        return direct_and_through("psycopg", pg, args.policy, run)
    finally:
        try:
            pg.psql(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        finally:
            pg.stop()


if __name__ == "__main__":
    sys.exit(main())
