"""Which statements make the gateway read the schema again (and hold the sessions
under policy until it has): DDL, but not the creation of a temporary object, which
no other session can see."""
from __future__ import annotations

import pytest

from gateway.analysis import analyze
from gateway.schema import LiveSchema
from gateway.session import _DDL_START_BYTES, _TEMP_ONLY_BYTES, _temporary


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
])
def test_plain_sessions(sql, reads_schema):
    assert (bool(_DDL_START_BYTES.match(sql)) and not _TEMP_ONLY_BYTES.match(sql)) is reads_schema


@pytest.mark.parametrize("sql,temporary", [
    ("CREATE TEMP TABLE x (a int)", True),
    ("CREATE TABLE x (a int)", False),
    ("CREATE VIEW v AS SELECT 1", False),
])
def test_analysed_sessions(sql, temporary):
    (facts,) = analyze(sql, LiveSchema())
    assert _temporary(facts) is temporary
