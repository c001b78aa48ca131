"""pgJDBC, the JDBC driver, through the gateway: a Java program (tests/data/clients/
JdbcProbe.java) prints what it gets, and the run through the gateway must print
exactly what the run straight to PostgreSQL prints. JDBC prepares server-side named
statements after ``prepareThreshold`` executions and then asks for binary results,
and it caches each statement's column types: under policy, masked columns must keep
their types across those executions.

Needs a JDK (java, javac) and the driver's jar: ``apt-get install default-jdk-headless
libpostgresql-jdbc-java`` on Debian, or PIIGATE_TEST_PGJDBC_JAR naming a jar; the
tests are skipped, saying so, where either is missing."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from gateway.protocol.scram import make_verifier

from ..conftest import _VERIFIER, PASSWORD, gateway_toml
from ..test_enforcement import _policy_config, catalogued_values

PROBE = Path(__file__).resolve().parents[2] / "data" / "clients" / "JdbcProbe.java"
JARS = ("/usr/share/java/postgresql.jar",)


def with_jdbc_verifiers(config_text: str) -> str:
    """The test gateways' users have 64-iteration verifiers (fast); pgJDBC's SCRAM
    client refuses fewer than 4096 iterations (the count ``piigate`` writes)."""
    assert _VERIFIER in config_text
    return config_text.replace(_VERIFIER, make_verifier(PASSWORD))


def _jar() -> str | None:
    for candidate in (os.environ.get("PIIGATE_TEST_PGJDBC_JAR"), *JARS):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    """The compiled probe and the classpath to run it with."""
    jar = _jar()
    if not (shutil.which("java") and shutil.which("javac")) or jar is None:
        pytest.skip("needs a JDK and pgJDBC: apt-get install default-jdk-headless libpostgresql-jdbc-java "
                    "(or set PIIGATE_TEST_PGJDBC_JAR)")
    out = tmp_path_factory.mktemp("jdbc")
    shutil.copy(PROBE, out / PROBE.name)
    subprocess.run(["javac", "-cp", jar, "-d", str(out), str(out / PROBE.name)], check=True,
                   capture_output=True, timeout=120)
    return f"{jar}{os.pathsep}{out}"


def run_probe(classpath: str, host: str, port: int, dbname: str, user: str, password: str, mode: str) -> str:
    done = subprocess.run(["java", "-cp", classpath, "JdbcProbe", f"jdbc:postgresql://{host}:{port}/{dbname}",
                           user, password, mode], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_jdbc_gets_through_the_gateway_what_it_gets_directly(probe, pg_server, gateway_factory, sample_db):
    gateway = gateway_factory(config_text=with_jdbc_verifiers(gateway_toml(pg_server)))
    direct = run_probe(probe, pg_server.host, pg_server.port, sample_db.dbname, pg_server.user,
                       pg_server.password or "", "general")
    through = run_probe(probe, "127.0.0.1", gateway.port, sample_db.dbname, "alice", PASSWORD, "general")
    assert through == direct
    assert "batch 20" in direct and "error 22012" in direct and "call ABC" in direct


def test_jdbc_under_policy_and_audit(probe, gateway_factory, pg_server, sample_db_fresh, tmp_path):
    """As a user under PII policy, with an audit trail: the same results where no PII
    is read, and masked PII, with the types PostgreSQL reports for the columns,
    through statements JDBC has prepared server-side and reads in binary."""
    (tmp_path / "audit").mkdir()
    config = _policy_config(pg_server, sample_db_fresh.dbname, tmp_path) + f"""
[audit]
sinks = ["file"]
file = "{tmp_path / 'audit' / 'audit.jsonl'}"
"""
    gw = gateway_factory(config_text=with_jdbc_verifiers(config))
    db = sample_db_fresh.dbname
    direct = run_probe(probe, pg_server.host, pg_server.port, db, pg_server.user, pg_server.password or "", "pii")
    through = run_probe(probe, "127.0.0.1", gw.port, db, "ann", PASSWORD, "pii")
    direct_rows, through_rows = direct.splitlines(), through.splitlines()
    assert len(through_rows) == len(direct_rows) == 6
    leaked = {v for v in catalogued_values() if v in through}
    assert not leaked, leaked
    for d, t in zip(direct_rows, through_rows):
        d_cols, t_cols = d.rstrip("|").split("|"), t.rstrip("|").split("|")
        # names and types as PostgreSQL reports them; id and city (not PII) unchanged
        assert [c.split("=")[0] for c in t_cols] == [c.split("=")[0] for c in d_cols]
        assert t_cols[:2] == d_cols[:2]
        assert t_cols[2] != d_cols[2] and t_cols[2].endswith("@example.invalid")   # e-mail keeps its domain
    assert any(p.name.endswith(".jsonl") for p in (tmp_path / "audit").iterdir())
