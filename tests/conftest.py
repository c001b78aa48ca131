"""Shared pytest fixtures: real PostgreSQL and Redis servers.

Environment variables (both optional):

- ``PIIGATE_TEST_PG_DSN``: a *superuser* DSN in URL form of a running PostgreSQL,
  e.g. ``postgresql://postgres@127.0.0.1:5432/postgres``. Unset: an embedded
  PostgreSQL (gateway/embedded.py) is started on a free port for the session.
- ``PIIGATE_TEST_REDIS_URL``: a Redis URL, e.g. ``redis://127.0.0.1:6379/0``.
  Unset: an embedded Redis is started for the session.

Fixtures:

- ``pg_server`` (session): ``PgServer`` with ``.host``, ``.port``, ``.user``,
  ``.password`` (``None`` for trust) and ``.dsn(dbname="postgres")``.
- ``fresh_db`` (function): a ``DatabaseDsn`` of a new, empty, uniquely named
  database, dropped afterwards. ``create_database(pg_server)`` /
  ``drop_database(pg_server, name)`` do the same by hand (e.g. in your own fixtures).
- ``sample_db`` (session): a ``DatabaseDsn`` of a uniquely named database loaded
  with tests/data/security/schema.sql then fixtures.sql. Shared by every test of the
  session: treat it as read-only. ``sample_db_fresh`` (function): a private copy
  (made from a template, ~0.1 s) for tests that write.
- ``pg_info`` (session): ``PgInfo`` with ``.version_num`` (e.g. 150020),
  ``.version`` and ``.has_libxml`` (the embedded PostgreSQL is built without libxml:
  XML functions raise "unsupported XML feature" there; skip or adapt on it).
- ``redis_server`` (session): ``RedisServer`` with ``.host``, ``.port``, ``.url``.
- ``redis_url`` (function): the Redis URL (a plain ``str``).
- ``redis_prefix`` (function): a unique key prefix (``"piigate-test:<hex>:"``);
  every key under it is deleted after the test. Use it for every key you create:
  the Redis may be shared with other test runs.

``DatabaseDsn`` *is a* ``str`` (the DSN, usable directly with asyncpg.connect,
psycopg.connect, psql) that also carries ``.dsn``, ``.dbname``, ``.host``,
``.port`` and ``.user``.

All fixtures are synchronous and do their async work on a private event loop in a
worker thread, so they can be used from sync tests, async tests and async fixtures
alike (pytest-asyncio auto mode with a session-scoped loop).
"""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

import asyncpg
import pytest

from gateway import embedded

T = TypeVar("T")

TESTS_DIR = Path(__file__).resolve().parent
SECURITY_DATA = TESTS_DIR / "data" / "security"
SAMPLE_SQL_FILES = (SECURITY_DATA / "schema.sql", SECURITY_DATA / "fixtures.sql")

PG_DSN_ENV = "PIIGATE_TEST_PG_DSN"
REDIS_URL_ENV = "PIIGATE_TEST_REDIS_URL"


# ------------------------------------------------------------------------ helpers


def run_async(factory: Callable[[], Awaitable[T]]) -> T:
    """Run ``factory()`` to completion on a fresh event loop in a worker thread.

    A thread of its own, because the caller may itself be running inside an event loop
    (an async test or fixture), where ``asyncio.run`` is refused.
    """
    box: dict[str, Any] = {}

    def worker() -> None:
        try:
            box["value"] = asyncio.run(factory())
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=worker, name="piigate-fixture-loop")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def unique_name(prefix: str = "piigate_test") -> str:
    """A database-safe unique name (lowercase, < 63 bytes)."""
    return f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:10]}"


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class PgServer:
    """A PostgreSQL server the tests may create and drop their own databases on."""

    host: str
    port: int
    user: str
    password: str | None
    # URL with the database name left out; dsn() fills it in.
    _scheme: str = "postgresql"
    _query: str = ""
    embedded: bool = False

    def dsn(self, dbname: str = "postgres") -> str:
        auth = self.user if self.password is None else f"{self.user}:{self.password}"
        return urlunsplit((self._scheme, f"{auth}@{self.host}:{self.port}", f"/{dbname}", self._query, ""))

    @classmethod
    def from_dsn(cls, dsn: str) -> PgServer:
        parts = urlsplit(dsn)
        if parts.scheme not in ("postgres", "postgresql") or not parts.hostname:
            raise pytest.UsageError(
                f"{PG_DSN_ENV} must be a URL like postgresql://postgres@127.0.0.1:5432/postgres, got {dsn!r}"
            )
        return cls(
            host=parts.hostname,
            port=parts.port or 5432,
            user=unquote(parts.username) if parts.username else "postgres",
            password=unquote(parts.password) if parts.password is not None else None,
            _scheme=parts.scheme,
            _query=parts.query,
        )


class DatabaseDsn(str):
    """A DSN string naming one test database, with its parts as attributes."""

    dbname: str
    host: str
    port: int
    user: str

    def __new__(cls, server: PgServer, dbname: str) -> DatabaseDsn:
        self = super().__new__(cls, server.dsn(dbname))
        object.__setattr__(self, "dbname", dbname)
        object.__setattr__(self, "host", server.host)
        object.__setattr__(self, "port", server.port)
        object.__setattr__(self, "user", server.user)
        return self

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"DatabaseDsn is immutable (tried to set {name})")

    @property
    def dsn(self) -> str:
        return str(self)


@dataclass(frozen=True)
class RedisServer:
    host: str
    port: int
    url: str


# Errors two concurrent loaders of the cluster-wide roles in fixtures.sql can hit
# (several test runs may share one server): retrying the load is the cure.
_CONCURRENT_LOAD_ERRORS = (
    asyncpg.exceptions.UniqueViolationError,
    asyncpg.exceptions.DuplicateObjectError,
    asyncpg.exceptions.InternalServerError,  # "tuple concurrently updated"
)


def create_database(
    server: PgServer,
    sql_files: tuple[Path, ...] = (),
    *,
    template: str | None = None,
    prefix: str = "piigate_test",
    is_template: bool = False,
) -> DatabaseDsn:
    """Create a new uniquely named database, optionally from ``template``, then run
    each of ``sql_files`` in it (as the superuser). Returns its DSN."""
    name = unique_name(prefix)

    async def create() -> None:
        admin = await asyncpg.connect(server.dsn("postgres"))
        try:
            clause = f" TEMPLATE {_quote_ident(template)}" if template else ""
            await admin.execute(f"CREATE DATABASE {_quote_ident(name)}{clause}")
        finally:
            await admin.close()
        if sql_files:
            conn = await asyncpg.connect(server.dsn(name))
            try:
                for path in sql_files:
                    for attempt in range(5):
                        try:
                            async with conn.transaction():
                                await conn.execute(path.read_text())
                            break
                        except _CONCURRENT_LOAD_ERRORS:
                            if attempt == 4:
                                raise
                            await asyncio.sleep(0.1 * (attempt + 1))
            finally:
                await conn.close()
        if is_template:
            admin = await asyncpg.connect(server.dsn("postgres"))
            try:
                await admin.execute(f"ALTER DATABASE {_quote_ident(name)} WITH IS_TEMPLATE true")
            finally:
                await admin.close()

    try:
        run_async(create)
    except BaseException:
        try:
            drop_database(server, name)
        except Exception:  # the original error is the one worth seeing
            pass
        raise
    return DatabaseDsn(server, name)


def drop_database(server: PgServer, name: str) -> None:
    """Drop a database this test run created (terminating its sessions); no error if gone."""

    async def drop() -> None:
        admin = await asyncpg.connect(server.dsn("postgres"))
        try:
            await admin.execute(f"ALTER DATABASE {_quote_ident(name)} WITH IS_TEMPLATE false")
        except asyncpg.exceptions.InvalidCatalogNameError:
            await admin.close()
            return
        try:
            await admin.execute(f"DROP DATABASE IF EXISTS {_quote_ident(name)} WITH (FORCE)")
        finally:
            await admin.close()

    run_async(drop)


# ----------------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """The PostgreSQL server for the session: $PIIGATE_TEST_PG_DSN, else embedded."""
    dsn = os.environ.get(PG_DSN_ENV)
    if dsn:
        yield PgServer.from_dsn(dsn)
        return
    server = embedded.start_postgres()
    try:
        yield PgServer(host=server.host, port=server.port, user=server.user, password=None, embedded=True)
    finally:
        server.stop()


@dataclass(frozen=True)
class PgInfo:
    """What the session's server can do (builds differ: the embedded one has no libxml)."""

    version_num: int
    version: str
    has_libxml: bool


@pytest.fixture(scope="session")
def pg_info(pg_server: PgServer) -> PgInfo:
    async def probe() -> PgInfo:
        conn = await asyncpg.connect(pg_server.dsn("postgres"))
        try:
            num = int(await conn.fetchval("SHOW server_version_num"))
            version = await conn.fetchval("SELECT version()")
            try:
                await conn.fetchval("SELECT xmlelement(name probe)::text")
                xml = True
            except asyncpg.exceptions.FeatureNotSupportedError:
                xml = False
            return PgInfo(num, version, xml)
        finally:
            await conn.close()

    return run_async(probe)


@pytest.fixture
def fresh_db(pg_server: PgServer) -> Iterator[DatabaseDsn]:
    """A new empty database for this test, dropped afterwards."""
    db = create_database(pg_server)
    try:
        yield db
    finally:
        drop_database(pg_server, db.dbname)


@pytest.fixture(scope="session")
def _sample_template(pg_server: PgServer) -> Iterator[DatabaseDsn]:
    """The security sample database, loaded once, used as a template for copies."""
    db = create_database(pg_server, SAMPLE_SQL_FILES, prefix="piigate_tmpl", is_template=True)
    try:
        yield db
    finally:
        drop_database(pg_server, db.dbname)


@pytest.fixture(scope="session")
def sample_db(pg_server: PgServer, _sample_template: DatabaseDsn) -> Iterator[DatabaseDsn]:
    """The security sample database (schema.sql + fixtures.sql), shared by the session.

    Read-only by convention; use ``sample_db_fresh`` to write.
    """
    db = create_database(pg_server, template=_sample_template.dbname, prefix="piigate_sample")
    try:
        yield db
    finally:
        drop_database(pg_server, db.dbname)


@pytest.fixture
def sample_db_fresh(pg_server: PgServer, _sample_template: DatabaseDsn) -> Iterator[DatabaseDsn]:
    """A private copy of the security sample database for one test, dropped afterwards."""
    db = create_database(pg_server, template=_sample_template.dbname, prefix="piigate_sample")
    try:
        yield db
    finally:
        drop_database(pg_server, db.dbname)


# ---------------------------------------------------------------------------- Redis


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """The Redis server for the session: $PIIGATE_TEST_REDIS_URL, else embedded."""
    url = os.environ.get(REDIS_URL_ENV)
    if url:
        parts = urlsplit(url)
        yield RedisServer(host=parts.hostname or "127.0.0.1", port=parts.port or 6379, url=url)
        return
    server = embedded.start_redis()
    try:
        yield RedisServer(host=server.host, port=server.port, url=server.url)
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture
def redis_prefix(redis_server: RedisServer) -> Iterator[str]:
    """A unique key prefix for this test; its keys are deleted afterwards."""
    import redis  # sync client: cleanup must not depend on the test's event loop

    prefix = f"piigate-test:{uuid.uuid4().hex}:"
    yield prefix
    client = redis.Redis.from_url(redis_server.url)
    try:
        keys = list(client.scan_iter(match=prefix.replace("[", "\\[") + "*", count=500))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
    finally:
        client.close()
