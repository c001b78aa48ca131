"""Which statements make the gateway read the schema again (and hold the sessions
under policy until it has): DDL, but not the creation of a temporary object (no
other session can see it) nor DDL that only changes data or storage (TRUNCATE,
REFRESH MATERIALIZED VIEW, REINDEX, CLUSTER)."""
from __future__ import annotations

import pytest

from gateway.analysis import analyze
from gateway.schema import LiveSchema
from gateway.session import _DDL_START_BYTES, _NEVER_DDL, _TEMP_ONLY_BYTES, _leaves_names_alone


@pytest.mark.parametrize("sql,reads_schema", [
    (b"CREATE TABLE t (a int)", True),
    (b"ALTER TABLE t RENAME TO u", True),
    (b"/* m */ CREATE VIEW v AS SELECT 1", True),
    (b"CREATE TEMP TABLE x (a int)", False),
    (b"create temporary table x as select 1;", False),
    (b"CREATE LOCAL TEMPORARY VIEW v AS SELECT 1", False),
    (b"CREATE TEMP TABLE x (a int); CREATE VIEW v AS SELECT 1", True),      # not only temporary
    (b"CREATE TEMP TABLE x (a text DEFAULT ';')", True),                     # unsure: read it
    (b"SELECT 1", False),
    (b"TRUNCATE staging", False),                    # data, not what names mean
    (b"REFRESH MATERIALIZED VIEW m", False),
    (b"GRANT SELECT ON t TO someone", True),
    (b"COMMENT ON COLUMN t.a IS 'pii:email'", True),   # the catalog changes
])
def test_plain_sessions(sql, reads_schema):
    assert (bool(_DDL_START_BYTES.match(sql)) and not _TEMP_ONLY_BYTES.match(sql)) is reads_schema


@pytest.mark.parametrize("sql,let_go", [
    (b"SELECT abalance FROM pgbench_accounts WHERE aid = 7;", True),
    (b"  select 1 ;; ", True),
    (b"\n\tUPDATE t SET a = 1", True),
    (b"BEGIN", True),
    (b"SELECT 1; DROP TABLE t", False),              # a second statement: looked at
    (b"SELECT 1; CREATE VIEW v AS SELECT 1", False),
    (b"SELECT ';' ; ALTER TABLE t RENAME TO u", False),
    (b"SELECT 'a;b'", False),                        # unsure where a literal ends: looked at
    (b"CREATE TABLE t (a int)", False),
    (b"-- c\nCREATE TABLE t (a int)", False),
    (b"/* select */ ALTER TABLE t RENAME TO u", False),
    (b"SELECT 1\x00CREATE TABLE t (a int)", False),  # never across a NUL
])
def test_plain_statements_let_go_without_a_second_look(sql, let_go):
    """The relay forwards a plain session's Query that fullmatches _NEVER_DDL without
    calling the gate: nothing that may be DDL may match."""
    assert (_NEVER_DDL.fullmatch(sql) is not None) is let_go
    if let_go:
        assert not _DDL_START_BYTES.match(sql)


@pytest.mark.parametrize("sql,leaves_names_alone", [
    ("CREATE TEMP TABLE x (a int)", True),
    ("CREATE TABLE x (a int)", False),
    ("CREATE VIEW v AS SELECT 1", False),
    ("TRUNCATE customers", True),
    ("REFRESH MATERIALIZED VIEW m", True),
])
def test_analysed_sessions(sql, leaves_names_alone):
    (facts,) = analyze(sql, LiveSchema())
    assert _leaves_names_alone(facts) is leaves_names_alone


async def test_a_schema_read_that_never_comes_holds_statements_once(monkeypatch):
    """The hold after committed DDL is bounded: when the read does not come (the
    refresh failed in a way that never reports), the first statement waits the
    bound, and the hold is released for everyone after it."""
    import asyncio
    import time

    from catalog.model import Catalog
    from gateway import session as session_mod
    from gateway.analysis import AnalysisCache
    from gateway.server import Verdict
    from gateway.session import Engine, PolicyGate
    from policies.model import Policy

    monkeypatch.setattr(session_mod, "_SCHEMA_HOLD_S", 0.2)
    engine = Engine(schema=LiveSchema(), catalog=Catalog(), policy=Policy(rules=()), cache=AnalysisCache(),
                    on_ddl=lambda: None)
    gate = PolicyGate(engine)
    engine.ddl_committed()
    assert engine.schema_hold is not None
    t0 = time.monotonic()
    verdict = Verdict(b"decided")
    from types import SimpleNamespace
    session = SimpleNamespace(state={})              # what the hold uses of a Relay
    assert await gate._after_schema_read(session, lambda: verdict) is verdict
    assert "cancel" not in session.state
    assert 0.15 < time.monotonic() - t0 < 2
    assert engine.schema_hold is None                # the next statement does not wait
    engine.ddl_committed()
    engine.schema_read(engine.ddl_generation - 1)    # a read that began before this DDL
    assert engine.schema_hold is not None
    engine.schema_read(engine.ddl_generation)
    assert engine.schema_hold is None
    await asyncio.sleep(0)


async def test_ddl_in_flight_holds_until_its_transaction_ends_and_the_schema_is_read():
    from catalog.model import Catalog
    from gateway.analysis import AnalysisCache
    from gateway.session import Engine
    from policies.model import Policy

    reads = []
    engine = Engine(schema=LiveSchema(), catalog=Catalog(), policy=Policy(rules=()), cache=AnalysisCache(),
                    on_ddl=lambda: reads.append(engine.ddl_generation))
    engine.ddl_started("dba")
    hold = engine.schema_hold
    assert hold is not None and not reads               # nothing to read before it commits
    engine.schema_read(engine.ddl_generation)           # a periodic read meanwhile
    assert engine.schema_hold is hold and not hold.done()
    engine.ddl_started("other")
    engine.ddl_committed("dba")
    assert reads == [1]
    engine.schema_read(1)
    assert not hold.done()                              # "other" is still in its transaction
    engine.ddl_committed("other")
    engine.schema_read(2)
    assert hold.done() and engine.schema_hold is None
