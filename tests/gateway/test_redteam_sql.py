"""Red-team probes of the SQL analysis and the masking rewrite, as a user under PII
policy without a grant (ann, tests/data/security sample schema plus a few objects a
DBA could have made). The property is the corpus's: no catalogued value in any byte
the client receives. Probes that found nothing stay here as cheap regression tests."""
from __future__ import annotations

import psycopg
import pytest

from .rawclient import errors
from .test_enforcement import _client, _policy_config, catalogued_values

SSN7 = b"000-00-0007"

#: objects a DBA made (as the superuser, not through the gateway)
DBA_OBJECTS = """
CREATE VIEW customer_ssn_digits AS
  SELECT id, (regexp_split_to_array('0123456789', ''))[substr(ssn, 1, 1)::int + 1]
          || (regexp_split_to_array('0123456789', ''))[substr(ssn, 2, 1)::int + 1]
          || (regexp_split_to_array('0123456789', ''))[substr(ssn, 3, 1)::int + 1] || '-'
          || (regexp_split_to_array('0123456789', ''))[substr(ssn, 5, 1)::int + 1]
          || (regexp_split_to_array('0123456789', ''))[substr(ssn, 6, 1)::int + 1] || '-'
          || (regexp_split_to_array('0123456789', ''))[substr(ssn, 8, 1)::int + 1]
          || (regexp_split_to_array('0123456789', ''))[substr(ssn, 9, 1)::int + 1]
          || (regexp_split_to_array('0123456789', ''))[substr(ssn, 10, 1)::int + 1]
          || (regexp_split_to_array('0123456789', ''))[substr(ssn, 11, 1)::int + 1] AS code,
         (ARRAY['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j'])[id % 10 + 1] AS bucket
  FROM customers;
GRANT SELECT ON customer_ssn_digits TO gw_user;
"""
XML_OBJECTS = """
CREATE VIEW customer_xml_default AS
  SELECT c.id, x.v FROM customers c,
    XMLTABLE('/r' PASSING xmlparse(document '<r/>') COLUMNS v text PATH 'missing' DEFAULT c.ssn) x;
CREATE VIEW customer_xml_path AS
  SELECT c.id, x.v FROM customers c,
    XMLTABLE('/r' PASSING xmlparse(document '<r/>') COLUMNS v text PATH 'concat("' || c.ssn || '", "")') x;
GRANT SELECT ON customer_xml_default, customer_xml_path TO gw_user;
"""


@pytest.fixture(scope="module")
def rt_gateway(pg_server, pg_info, _sample_template, tmp_path_factory):
    """One gateway and one private copy of the sample database (plus DBA_OBJECTS)
    for the module; ann has no grant, so every write is refused."""
    from gateway.config import parse_config
    from ..conftest import create_database, drop_database
    from .conftest import start_gateway
    db = create_database(pg_server, template=_sample_template.dbname, prefix="piigate_rtsql")
    try:
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute(DBA_OBJECTS)
            if pg_info.has_libxml:
                conn.execute(XML_OBJECTS)
        tmp = tmp_path_factory.mktemp("rtsql")
        text = _policy_config(pg_server, db.dbname, tmp)
        (tmp / "gw.toml").write_text(text)
        gw = start_gateway(parse_config(text, str(tmp / "gw.toml")))
        gw.dbname = db.dbname
        gw.has_libxml = pg_info.has_libxml
        try:
            yield gw
        finally:
            gw.stop()
    finally:
        drop_database(pg_server, db.dbname)


def _leaked(gw, sqls: list[str]) -> tuple[list, list[str]]:
    values = catalogued_values()
    client = _client(gw)
    msgs = []
    try:
        for sql in sqls:
            msgs.extend(client.query(sql))
        client.drain(0.1)
        received = bytes(client.received).decode("utf-8", "replace")
    finally:
        client.close()
    return msgs, sorted(v for v in values if v in received)


def _rows(msgs) -> int:
    return sum(getattr(m, "type", None) == b"D" for m in msgs)


# -- findings ------------------------------------------------------------------------

def test_a_view_column_chosen_by_a_subscript_over_pii_is_masked(rt_gateway):
    """A DBA view whose column picks array elements by digits of the SSN
    ((ARRAY['0', ..., '9'])[substr(ssn, k, 1)::int + 1], for every k) returns the
    SSN itself. The view lineage counted only the array as the element's source, not
    the subscript: the column was not masked and the SSN came back in clear. A
    subscript's sources are now part of the value's."""
    msgs, leaked = _leaked(rt_gateway, ["SELECT id, code, bucket FROM customer_ssn_digits WHERE id = 7"])
    assert not errors(msgs), errors(msgs)
    assert _rows(msgs) == 1
    assert not leaked, leaked
    # a subscript by a column that is not PII leaves the value as it was (id 7: 'h')
    (row,) = [m for m in msgs if getattr(m, "type", None) == b"D"]
    assert row.body.endswith(b"\x00\x00\x00\x01h"), row


@pytest.mark.parametrize("view", ["customer_xml_default", "customer_xml_path"])
def test_an_xmltable_column_whose_path_or_default_holds_pii_is_masked(rt_gateway, view):
    """XMLTABLE ... COLUMNS v text PATH <expr> DEFAULT <expr>: the column's value is
    the DEFAULT when the path finds nothing, and the PATH is an expression
    (PATH 'concat("' || ssn || '")' evaluates to the SSN). A DBA view over either
    had a lineage of the document only: v was not masked and returned the SSN."""
    if not rt_gateway.has_libxml:
        pytest.skip("this PostgreSQL build has no libxml")
    msgs, leaked = _leaked(rt_gateway, [f"SELECT id, v FROM {view} WHERE id = 7"])
    assert not errors(msgs), errors(msgs)
    assert _rows(msgs) == 1
    assert not leaked, leaked
