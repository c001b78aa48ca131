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
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from benchmarks.processes import free_port, start_service  # noqa: E402
from gateway import embedded  # noqa: E402
from gateway.protocol.scram import make_verifier  # noqa: E402

PASSWORD = "suite-only-password"
OUTCOME = re.compile(r"^(apgtests/\S+::\S+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)", re.M)


def suite_env(work: Path) -> Path:
    """A venv of its own with the installed asyncpg's version, pytest and distro, and
    that version's tests (from its sdist)."""
    import asyncpg
    version = asyncpg.__version__
    venv = work / f"venv-asyncpg-{version}"
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", f"asyncpg=={version}", "pytest", "distro",
                        "uvloop"], check=True)
    tests = work / f"asyncpg-{version}-tests"
    if not tests.exists():
        subprocess.run([str(venv / "bin" / "pip"), "download", "-q", "--no-deps", "--no-binary", ":all:",
                        "-d", str(work), f"asyncpg=={version}"], check=True)
        with tarfile.open(work / f"asyncpg-{version}.tar.gz") as tar:
            members = [m for m in tar.getmembers() if f"asyncpg-{version}/tests/" in m.name]
            tar.extractall(work / "sdist", members=members, filter="data")
        shutil.copytree(work / "sdist" / f"asyncpg-{version}" / "tests", tests / "apgtests")
    return venv, tests


def run_suite(venv: Path, tests: Path, host: str, port: int, user: str, password: str | None,
              extra: list[str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(PGHOST=host, PGPORT=str(port), PGUSER=user, PGDATABASE="postgres")
    if password:
        env["PGPASSWORD"] = password
    out = subprocess.run([str(venv / "bin" / "python"), "-m", "pytest", "-rA", "-q", "-p", "no:cacheprovider",
                          "apgtests", "--deselect", "apgtests/test__sourcecode.py", *extra],
                         cwd=tests, env=env, capture_output=True, text=True, timeout=3600)
    results = {}
    for line in out.stdout.splitlines():
        m = re.match(r"^(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS) (apgtests/\S+)", line)
        if m:
            results[m.group(2)] = m.group(1)
    summary = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr[-500:]
    print(f"  {summary}")
    return results


def gateway_config(host: str, port: int, user: str, listen: int, work: Path, policy: bool) -> str:
    lines = ["[server]", f'listen = "127.0.0.1:{listen}"', "", "[upstream]", f'host = "{host}"',
             f"port = {port}", f'user = "{user}"', 'database = "postgres"', ""]
    if policy:
        (work / "policy.toml").write_text(
            '[defaults]\npii_read = "mask"\nunknown = "deny"\n[[rule]]\nname = "dba-unrestricted"\n'
            'roles = ["dba"]\nactions = ["*"]\ncategories = ["*"]\neffect = "allow"\n')
        lines += ["[policy]", f'file = "{work / "policy.toml"}"', "", "[audit]", 'sinks = ["file"]',
                  f'file = "{work / "audit" / "audit.jsonl"}"', 'fsync = "group"', ""]
    lines += [f"[users.{user}]", f'password_verifier = "{make_verifier(PASSWORD)}"', 'roles = ["dba"]', ""]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", action="store_true", help="policy + audit trail in the gateway")
    ap.add_argument("-k", help="pytest -k expression for the suite")
    ap.add_argument("--work", default=str(REPO / ".client-suites"), help="cache for the venv and the tests")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(exist_ok=True)
    venv, tests = suite_env(work)
    extra = ["-k", args.k] if args.k else []

    server = None
    dsn = os.environ.get("PIIGATE_TEST_PG_DSN")
    if dsn:
        parts = urlsplit(dsn)
        host, port, user = parts.hostname, parts.port or 5432, parts.username or "postgres"
    else:
        server = embedded.start_postgres()
        host, port, user = server.host, server.port, server.user
    run_dir = Path(tempfile.mkdtemp(prefix="asyncpg-suite-"))
    service = None
    try:
        print(f"asyncpg's suite, directly against {host}:{port} ...")
        direct = run_suite(venv, tests, host, port, user, None, extra)
        listen = free_port()
        config = run_dir / "gateway.toml"
        config.write_text(gateway_config(host, port, user, listen, run_dir, args.policy))
        service = start_service("gateway", [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)],
                                port=listen, log_path=run_dir / "gateway.log", cwd=REPO)
        print(f"asyncpg's suite, through the gateway ({'policy + audit' if args.policy else 'no policy'}) ...")
        t0 = time.monotonic()
        through = run_suite(venv, tests, "127.0.0.1", listen, user, PASSWORD, extra)
        print(f"  ({time.monotonic() - t0:.0f} s)")
    finally:
        if service is not None:
            service.stop()
        if server is not None:
            server.stop()
    differ = sorted(t for t in set(direct) | set(through) if direct.get(t) != through.get(t))
    for t in differ:
        print(f"  {direct.get(t, '-'):8} direct, {through.get(t, '-'):8} through the gateway: {t}")
    print(f"{len(differ)} test(s) differ; gateway log: {run_dir / 'gateway.log'}")
    return 1 if any(through.get(t) in ("FAILED", "ERROR") for t in differ) else 0


if __name__ == "__main__":
    sys.exit(main())
