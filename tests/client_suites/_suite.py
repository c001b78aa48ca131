"""What the client-suite runners share: the PostgreSQL they test against, a venv of the
client's own at the installed version, the gateway they start (with or without a policy
and an audit trail), running a pytest suite and reading each test's outcome, and the
list of tests whose outcome differs between the direct run and the run through the
gateway.

Not part of the pytest run; used by the ``run_*_suite.py`` runners beside it.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.processes import free_port, start_service  # noqa: E402
from gateway import embedded  # noqa: E402
from gateway.protocol.scram import make_verifier  # noqa: E402

PASSWORD = "suite-only-password"
WORK = REPO / ".client-suites"
BAD = ("FAILED", "ERROR")


def client_venv(work: Path, name: str, version: str, packages: list[str]) -> Path:
    """A venv of its own (``work/venv-NAME-VERSION``) with ``packages`` installed once."""
    venv = work / f"venv-{name}-{version}"
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *packages], check=True)
    return venv


def download_sdist(venv: Path, work: Path, requirement: str) -> Path:
    """The sdist of ``requirement`` (``name==version``), fetched once with pip into ``work``."""
    name, version = requirement.split("==")
    stem = f"{name.replace('-', '_')}-{version}"
    for candidate in (work / f"{name}-{version}.tar.gz", work / f"{stem}.tar.gz"):
        if candidate.exists():
            return candidate
    subprocess.run([str(venv / "bin" / "pip"), "download", "-q", "--no-deps", "--no-binary", ":all:",
                    "-d", str(work), requirement], check=True)
    for candidate in (work / f"{name}-{version}.tar.gz", work / f"{stem}.tar.gz"):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"pip downloaded no {name}-{version}.tar.gz into {work}")


@dataclass
class PgTarget:
    """The PostgreSQL the suites run against: PIIGATE_TEST_PG_DSN's server, else an
    embedded one (stopped by ``stop``)."""
    host: str
    port: int
    user: str
    _server: object = field(default=None, repr=False)

    @classmethod
    def from_env(cls) -> "PgTarget":
        dsn = os.environ.get("PIIGATE_TEST_PG_DSN")
        if dsn:
            parts = urlsplit(dsn)
            return cls(parts.hostname or "127.0.0.1", parts.port or 5432, parts.username or "postgres")
        server = embedded.start_postgres()
        return cls(server.host, server.port, server.user, server)

    def psql(self, sql: str, dbname: str = "postgres") -> None:
        """Run one statement as the superuser in database ``dbname`` (via psycopg)."""
        import psycopg
        with psycopg.connect(host=self.host, port=self.port, user=self.user, dbname=dbname,
                             autocommit=True) as conn:
            conn.execute(sql)

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()


#: the policy of a run with ``policy``: one rule lets role dba do everything, so the
#: suite's user is not under PII policy (every statement analysed, decided and
#: audited, none refused)
UNRESTRICTED_POLICY = ('[defaults]\npii_read = "mask"\nunknown = "deny"\n[[rule]]\nname = "dba-unrestricted"\n'
                       'roles = ["dba"]\nactions = ["*"]\ncategories = ["*"]\neffect = "allow"\n')
#: the policy of a run with ``restricted``: no rule, so the suite's user is under PII
#: policy, with defaults that allow every kind of statement an application sends (the
#: database has no catalogued column) except what the gateway cannot be sure about
#: (unknown) and dangerous functions: what is refused then is what a user under policy
#: meets, by design or by mistake
RESTRICTED_POLICY = ('[defaults]\npii_read = "mask"\nwrite_pii = "allow"\ndelete_pii = "allow"\n'
                     'export = "allow"\nunknown = "deny"\nddl = "allow"\ncall = "allow"\nsession = "allow"\n'
                     'dangerous_functions = "deny"\nnon_pii = "allow"\n')


def gateway_config(pg: PgTarget, listen: int, run_dir: Path, policy: bool, database: str = "postgres",
                   restricted: bool = False) -> str:
    """The gateway's config: ``pg.user`` as a gateway user of role dba; with ``policy``
    UNRESTRICTED_POLICY (or with ``restricted`` too, RESTRICTED_POLICY) and a file
    audit trail. ``database`` is the upstream database, whose schema the gateway
    reads: the only one a user under policy may open sessions on."""
    lines = ["[server]", f'listen = "127.0.0.1:{listen}"', "", "[upstream]", f'host = "{pg.host}"',
             f"port = {pg.port}", f'user = "{pg.user}"', f'database = "{database}"', ""]
    if policy:
        (run_dir / "audit").mkdir(exist_ok=True)     # the file sink does not create its folder
        (run_dir / "policy.toml").write_text(RESTRICTED_POLICY if restricted else UNRESTRICTED_POLICY)
        lines += ["[policy]", f'file = "{run_dir / "policy.toml"}"', "", "[audit]", 'sinks = ["file"]',
                  f'file = "{run_dir / "audit" / "audit.jsonl"}"', 'fsync = "group"', ""]
    lines += [f"[users.{pg.user}]", f'password_verifier = "{make_verifier(PASSWORD)}"', 'roles = ["dba"]', ""]
    return "\n".join(lines)


def own_pytest_ini(tests: Path) -> None:
    """Give the client's suite a pytest configuration of its own (none): without it
    pytest would take the nearest one above, piigate's pyproject.toml, and its options
    for piigate's tests."""
    if not (tests / "pytest.ini").exists():
        (tests / "pytest.ini").write_text("[pytest]\n")


def run_pytest(venv: Path, cwd: Path, env: dict[str, str], args: list[str], name: str,
               timeout: float = 3600) -> dict[str, str]:
    """Run pytest in ``venv`` and return {test id: PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS},
    read from its JUnit XML (which, unlike -rA, names every skipped test). Prints
    pytest's closing line."""
    report = Path(tempfile.mkdtemp(prefix="suite-junit-")) / f"{name}.xml"
    cmd = [str(venv / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider",
           f"--junitxml={report}", "-o", "junit_family=xunit1", *args]
    try:
        out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
        stdout, stderr = out.stdout, out.stderr
    except subprocess.TimeoutExpired as exc:
        stdout = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        stderr = f"pytest did not finish within {timeout:.0f} s"
    (report.parent / f"{name}.out").write_text(stdout + "\n--- stderr ---\n" + (stderr or ""))
    lines = [ln for ln in stdout.strip().splitlines() if ln.strip()]
    print(f"  {lines[-1] if lines else (stderr or '')[-500:]}")
    print(f"  (pytest output: {report.parent / f'{name}.out'})")
    return junit_outcomes(report) if report.exists() else {}


def junit_outcomes(path: Path) -> dict[str, str]:
    results: dict[str, str] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        test_id = _test_id(case.get("file") or "", case.get("classname") or "", case.get("name") or "")
        tags = {child.tag: child for child in case}
        if "failure" in tags:
            outcome = "XPASS" if "xpass" in (tags["failure"].get("message") or "").lower() else "FAILED"
        elif "error" in tags:
            outcome = "ERROR"
        elif "skipped" in tags:
            outcome = "XFAIL" if tags["skipped"].get("type") == "pytest.xfail" else "SKIPPED"
        else:
            outcome = "PASSED"
        # a test failing in teardown after passing has two entries: the worse one counts
        if results.get(test_id) not in BAD:
            results[test_id] = outcome
    return results


def _test_id(file: str, classname: str, name: str) -> str:
    """pytest's node id from JUnit's file, classname (module.Class) and name."""
    module = file[:-3].replace("/", ".") if file.endswith(".py") else ""
    if module and classname.startswith(module + "."):
        return f"{file}::{classname[len(module) + 1:].replace('.', '::')}::{name}"
    return f"{file or classname}::{name}"


def compare(direct: dict[str, str], through: dict[str, str], run_dir: Path,
            expected: dict[str, str] | None = None) -> int:
    """Print the tests whose outcome differs; 1 if any fails only through the gateway.
    ``expected`` maps test-id prefixes to the documented reason they differ (by
    design, or the environment): those are printed with their reason and do not
    count for the exit status."""
    differ = sorted(t for t in set(direct) | set(through) if direct.get(t) != through.get(t))
    unexplained = []
    for t in differ:
        why = next((r for prefix, r in (expected or {}).items() if t.startswith(prefix)), None)
        note = f"  [expected: {why}]" if why else ""
        print(f"  {direct.get(t, '-'):8} direct, {through.get(t, '-'):8} through the gateway: {t}{note}")
        if why is None:
            unexplained.append(t)
    explained = f" ({len(differ) - len(unexplained)} expected)" if expected else ""
    print(f"{len(differ)} test(s) differ{explained}; gateway log: {run_dir / 'gateway.log'}")
    return 1 if any(through.get(t) in BAD for t in unexplained) else 0


def direct_and_through(client: str, pg: PgTarget, policy: bool,
                       run: Callable[[str, int, str | None], dict[str, str]], database: str = "postgres",
                       restricted: bool = False, expected: dict[str, str] | None = None) -> int:
    """``run(host, port, password)`` directly against ``pg``, then through a gateway
    started here (and stopped afterwards) whose upstream database is ``database``;
    print what differs (``expected``: see ``compare``)."""
    run_dir = Path(tempfile.mkdtemp(prefix=f"{client}-suite-"))
    service = None
    try:
        print(f"{client}'s suite, directly against {pg.host}:{pg.port} ...")
        direct = run(pg.host, pg.port, None)
        listen = free_port()
        config = run_dir / "gateway.toml"
        config.write_text(gateway_config(pg, listen, run_dir, policy or restricted, database, restricted))
        service = start_service("gateway", [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)],
                                port=listen, log_path=run_dir / "gateway.log", cwd=REPO)
        mode = "under PII policy + audit" if restricted else "policy + audit" if policy else "no policy"
        print(f"{client}'s suite, through the gateway ({mode}) ...")
        t0 = time.monotonic()
        through = run("127.0.0.1", listen, PASSWORD)
        print(f"  ({time.monotonic() - t0:.0f} s)")
    finally:
        if service is not None:
            service.stop()
    return compare(direct, through, run_dir, expected)


def clean_env() -> dict[str, str]:
    """The environment without libpq's PG* variables (each runner sets its own)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}
