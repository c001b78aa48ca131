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
CREATE TABLE digits (d text);
INSERT INTO digits SELECT generate_series(0, 9)::text;
CREATE VIEW customer_ssn_join AS
  SELECT c.city, d1.d || d2.d || d3.d || d4.d AS last4 FROM customers c
  JOIN digits d1 ON d1.d = substr(c.ssn, 8, 1) JOIN digits d2 ON d2.d = substr(c.ssn, 9, 1)
  JOIN digits d3 ON d3.d = substr(c.ssn, 10, 1) JOIN digits d4 ON d4.d = substr(c.ssn, 11, 1)
  WHERE c.id = 7;
CREATE VIEW customer_ssn_filter AS
  SELECT g::text AS n FROM customers c, generate_series(0, 9999) g
  WHERE c.id = 7 AND lpad(g::text, 4, '0') = substr(c.ssn, 8);
GRANT SELECT ON digits, customer_ssn_join, customer_ssn_filter TO gw_user;
CREATE FUNCTION ssn_of_definer(p_id int, p_dummy int) RETURNS text LANGUAGE sql STABLE SECURITY DEFINER
  AS $f$ SELECT ssn FROM public.customers WHERE id = p_id $f$;
CREATE FUNCTION ssn_of(p_id int, p_dummy text) RETURNS text LANGUAGE sql STABLE
  AS $f$ SELECT ssn FROM public.customers WHERE id = p_id $f$;
CREATE OPERATOR public.### (LEFTARG = int, RIGHTARG = int, FUNCTION = ssn_of_definer);
CREATE OPERATOR public.#> (LEFTARG = int, RIGHTARG = text, FUNCTION = ssn_of);
GRANT EXECUTE ON FUNCTION ssn_of_definer(int, int), ssn_of(int, text) TO gw_user;
CREATE FUNCTION ssn_acc(state text, p_id int) RETURNS text LANGUAGE sql STABLE
  AS $f$ SELECT coalesce(state, '') || (SELECT ssn FROM public.customers WHERE id = p_id) $f$;
CREATE AGGREGATE ssn_agg(int) (SFUNC = ssn_acc, STYPE = text);
GRANT EXECUTE ON FUNCTION ssn_acc(text, int), ssn_agg(int) TO gw_user;
CREATE VIEW ssn_candidates AS
  SELECT '000-00-' || lpad(g::text, 4, '0') AS v, '000-00-' || lpad(g::text, 4, '0') AS cand, 1 AS k
  FROM generate_series(0, 99) g
  UNION ALL SELECT ssn, 'customer ' || id, 0 FROM customers;
CREATE VIEW rt_window_lead AS SELECT cand, lead(cand) OVER (ORDER BY v, k) AS nxt FROM ssn_candidates;
CREATE VIEW rt_window_named AS SELECT cand, lead(cand) OVER w AS nxt FROM ssn_candidates WINDOW w AS (ORDER BY v, k);
CREATE VIEW rt_window_partition AS SELECT cand, count(*) OVER (PARTITION BY v) AS n FROM ssn_candidates;
CREATE VIEW rt_rank AS SELECT id, rank() OVER (ORDER BY ssn) AS rk FROM customers;
CREATE VIEW rt_group AS SELECT min(cand) AS cand, count(*) AS n FROM ssn_candidates GROUP BY v;
CREATE VIEW rt_distinct_on AS SELECT DISTINCT ON (v) cand, k FROM ssn_candidates ORDER BY v, k DESC;
CREATE VIEW rt_order AS SELECT cand FROM ssn_candidates ORDER BY v, k;
CREATE VIEW rt_agg_order AS SELECT string_agg(cand, ',' ORDER BY v, k) AS s FROM ssn_candidates;
CREATE VIEW rt_limit AS SELECT g FROM generate_series(1, 100) g
  LIMIT (SELECT substr(ssn, 10, 2)::int FROM customers WHERE id = 7);
CREATE VIEW rt_count AS SELECT g FROM customers c, generate_series(1, 100) g
  WHERE c.id = 7 AND g <= substr(c.ssn, 10, 2)::int;
CREATE VIEW rt_nested AS SELECT g FROM rt_count;
CREATE VIEW rt_intersect AS SELECT '000-00-' || lpad(g::text, 4, '0') AS v FROM generate_series(0, 99) g
  INTERSECT SELECT ssn FROM customers;
CREATE VIEW rt_frame AS SELECT g, sum(g) OVER (ORDER BY g ROWS BETWEEN
  (SELECT substr(ssn, 10, 2)::int FROM customers WHERE id = 7) PRECEDING AND CURRENT ROW) AS s
  FROM generate_series(1, 100) g;
CREATE VIEW rt_by_city AS SELECT id, email, city FROM customers ORDER BY city, id;
CREATE VIEW rt_handles AS SELECT id, '@' || email AS handle, reverse(email) AS rev, email,
  split_part(email, '@', 2) || '@' || split_part(email, '@', 1) AS swapped FROM customers;
CREATE VIEW rt_handles_of_view AS SELECT h.id, h.email, h.rev FROM rt_handles h;
CREATE VIEW rt_srf_from AS SELECT g FROM customers c, generate_series(1, substr(c.ssn, 10, 2)::int) g
  WHERE c.id = 7;
CREATE VIEW rt_srf_tlist AS SELECT id, generate_series(1, substr(ssn, 10, 2)::int) AS g FROM customers;
CREATE VIEW rt_srf_unnest AS SELECT c.id, u.x FROM customers c, unnest(string_to_array(c.ssn, '0')) u(x);
CREATE VIEW rt_srf_json AS SELECT c.id, j.k FROM customers c,
  jsonb_object_keys(jsonb_build_object(substr(c.ssn, 10, 1), 1, substr(c.ssn, 11, 1), 2)) j(k);
GRANT SELECT ON ssn_candidates, rt_window_lead, rt_window_named, rt_window_partition, rt_rank, rt_group,
  rt_distinct_on, rt_order, rt_agg_order, rt_limit, rt_count, rt_nested, rt_intersect, rt_frame, rt_by_city,
  rt_srf_from, rt_srf_tlist, rt_srf_unnest, rt_srf_json, rt_handles, rt_handles_of_view TO gw_user;
CREATE TABLE public.t (id int, v text);
INSERT INTO public.t SELECT i, 'plain-' || i FROM generate_series(1, 10) i;
CREATE SCHEMA s2;
CREATE VIEW s2.t AS SELECT id, ssn AS v FROM public.customers;
GRANT USAGE ON SCHEMA s2 TO gw_user;
GRANT SELECT ON public.t, s2.t TO gw_user;
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


@pytest.mark.parametrize("sql", ["SELECT city, last4 FROM customer_ssn_join", "SELECT n FROM customer_ssn_filter"])
def test_a_view_column_a_join_or_filter_pins_to_pii_is_masked(rt_gateway, sql):
    """A view's lineage counted only what a column's value is computed from: a row of
    a lookup table (or of generate_series) kept where it equals substr(ssn, k, 1) was
    attributed to the lookup table alone, so the view column spelling the SSN's last
    four digits (0007 for customer 7) was not masked. The columns a view's joins and
    filters compare now count for all its columns; and since which rows such a view
    yields (how many) was decided over the clear SSN, which no mask of its columns
    hides (see test_a_view_that_chooses_counts_or_orders_its_rows_by_pii_is_refused),
    it is now refused for a user who sees the SSN masked."""
    msgs, leaked = _leaked(rt_gateway, [sql])
    assert [e.sqlstate for e in errors(msgs)] == ["42501"], msgs
    received = b"".join(m.body for m in msgs if getattr(m, "type", None) == b"D")
    assert b"0007" not in received and b"\x00\x00\x00\x017" not in received, received
    assert not leaked, leaked


VIEWS_CHOOSING_ROWS_BY_PII = [
    # window ORDER BY / PARTITION BY: the candidate next to a customer's row is the SSN
    "SELECT nxt FROM rt_window_lead WHERE cand = 'customer 7'",
    "SELECT nxt FROM rt_window_named WHERE cand = 'customer 7'",
    "SELECT cand FROM rt_window_partition WHERE n = 2 AND cand LIKE '000%'",
    "SELECT rk FROM rt_rank WHERE id = 7",
    # GROUP BY / DISTINCT ON the SSN: the candidate grouped with a customer is the SSN
    "SELECT cand FROM rt_group WHERE n = 2",
    "SELECT cand FROM rt_distinct_on WHERE k = 1",
    # ORDER BY (of the view, of an aggregate): the row after 'customer 7' is its SSN
    "SELECT cand FROM rt_order", "SELECT s FROM rt_agg_order",
    # LIMIT, a filter, a frame, INTERSECT by the SSN: the number of rows is a digit of it
    "SELECT count(*) FROM rt_limit", "SELECT count(*) FROM rt_count", "SELECT count(*) FROM rt_nested",
    "SELECT count(*) FROM rt_intersect", "SELECT s FROM rt_frame WHERE g = 100",
    "SELECT * FROM customer_contacts c JOIN rt_count r ON r.g = c.id",
]


@pytest.mark.parametrize("sql", VIEWS_CHOOSING_ROWS_BY_PII)
def test_a_view_that_chooses_counts_or_orders_its_rows_by_pii_is_refused(rt_gateway, sql):
    """DBA views whose rows, their number or their order (or a window function's
    pick) are decided by a catalogued column: lead(cand) OVER (ORDER BY v) over the
    SSNs and candidates 000-00-0000..0099 returned customer 7's SSN in clear from a
    column whose lineage was the candidates alone; count(*) OVER (PARTITION BY v),
    GROUP BY v, DISTINCT ON (v) and ORDER BY v named the SSNs likewise; rank() OVER
    (ORDER BY ssn), a LIMIT, a window frame or a WHERE computed from a digit of the
    SSN gave it as a number (count(*) = 7), and masking the view's columns (done for
    joins and filters) hid none of that. The analysis now records ORDER BY/GROUP BY/
    DISTINCT/windows/set operations/LIMIT as deciding the view's rows (its row
    lineage), and the masker refuses a view whose row lineage holds a masked column."""
    msgs, leaked = _leaked(rt_gateway, [sql])
    assert [e.sqlstate for e in errors(msgs)] == ["42501"], msgs
    assert not leaked, leaked
    assert _rows(msgs) == 0


@pytest.mark.parametrize("sql", ["SELECT count(*) FROM rt_srf_from", "SELECT count(*) FROM rt_srf_tlist WHERE id = 7",
                                 "SELECT count(*) FROM rt_srf_unnest WHERE id = 7",
                                 "SELECT count(*) FROM rt_srf_json WHERE id = 7"])
def test_a_view_whose_set_returning_function_counts_by_pii_is_refused(rt_gateway, sql):
    """A set-returning function yields as many rows as its arguments say: a DBA view
    over generate_series(1, substr(ssn, 10, 2)::int) (in FROM or in its select list),
    unnest(string_to_array(ssn, '0')) or jsonb_object_keys of SSN digits had its
    columns masked, yet count(*) of customer 7's rows was 7, the SSN's last digits.
    The arguments of a set-returning function (and a JSON_TABLE/XMLTABLE document)
    are now part of the view's row lineage, so the view is refused like one that
    filters by the SSN."""
    msgs, leaked = _leaked(rt_gateway, [sql])
    assert [e.sqlstate for e in errors(msgs)] == ["42501"], msgs
    assert not leaked, leaked


def test_a_partial_mask_is_kept_only_for_a_view_column_that_is_the_value_itself(rt_gateway):
    """email is masked partially (partial_email: ***@ and the domain). A DBA view's
    column computed from it was masked with the same strategy, which then showed a
    different part: '@' || email gave ***@user07 (the local part), reverse(email)
    ***@70resu, the swapped address ***@user07 (found by red-teaming; with the example
    policy's last4 for phones, reverse(phone) would show its first digits). A
    strategy that shows part of a value (partial, year, round, bucket) is now used
    only for a view column that is a base column unchanged; any other is redacted."""
    msgs, leaked = _leaked(rt_gateway, ["SELECT handle, rev, swapped, email FROM rt_handles WHERE id = 7",
                                        "SELECT rev, email FROM rt_handles_of_view WHERE id = 7"])
    assert not errors(msgs), errors(msgs)
    assert not leaked, leaked
    rows = [m.body for m in msgs if getattr(m, "type", None) == b"D"]
    assert len(rows) == 2
    for row, computed in zip(rows, (3, 1)):
        assert b"user07" not in row and b"70resu" not in row, row
        assert row.count(b"[redacted]") == computed and row.endswith(b"***@example.invalid"), row


def test_a_view_ordered_by_columns_that_are_not_pii_is_masked_as_before(rt_gateway):
    msgs, leaked = _leaked(rt_gateway, ["SELECT id, email, city FROM rt_by_city LIMIT 3",
                                        "SELECT * FROM customer_contacts WHERE id = 7",
                                        "SELECT order_id, amount FROM order_report WHERE order_id = 1"])
    assert not errors(msgs), errors(msgs)
    assert _rows(msgs) == 5
    assert not leaked, leaked
    rows = [m.body for m in msgs if getattr(m, "type", None) == b"D"]
    assert b"***@example.invalid" in rows[0] and b"Dummyford" in rows[0], rows


@pytest.mark.parametrize("sql", ["SELECT 7 ### 0", "SELECT 7 #> 'x'", "SELECT 1 WHERE 7 #> 'x' IS NOT NULL",
                                 "SELECT id, id ### 0 FROM orders WHERE id = 1",
                                 "SELECT 7 OPERATOR(public.###) 0"])
def test_an_operator_outside_pg_catalog_is_a_call_of_its_function(rt_gateway, sql):
    """Operators were not in the live schema: "7 ### 0", an operator a DBA made over a
    SQL function (SECURITY DEFINER or not) that reads customers.ssn, read as an
    expression of constants, was allowed and returned the SSN. An operator outside
    pg_catalog is now judged as a call of the function implementing it (PostgreSQL
    picks by argument types, so every candidate of the name on the path counts)."""
    msgs, leaked = _leaked(rt_gateway, [sql])
    assert [e.sqlstate for e in errors(msgs)] == ["42501"], msgs
    assert not leaked, leaked


@pytest.mark.parametrize("sql", ["SELECT ssn_agg(7)", "SELECT ssn_agg(customer_id) FROM orders WHERE id = 1",
                                 "SELECT ssn_agg(7) OVER ()"])
def test_an_aggregate_is_judged_by_the_code_it_runs(rt_gateway, sql):
    """PostgreSQL lists every aggregate as language 'internal'; what runs is its
    transition and final functions. A DBA's aggregate over a SQL transition function
    reading customers.ssn passed as built-in code and returned the SSN in clear.
    An aggregate now carries its support functions' language and SECURITY DEFINER."""
    msgs, leaked = _leaked(rt_gateway, [sql])
    assert [e.sqlstate for e in errors(msgs)] == ["42501"], msgs
    assert not leaked, leaked


def test_extension_operators_in_c_still_work(rt_gateway):
    msgs, _ = _leaked(rt_gateway, ["SELECT hstore('a', 'b') -> 'a', 1 WHERE 2 BETWEEN 1 AND 3 AND 'a' = ANY ('{a}')"])
    assert not errors(msgs), errors(msgs)
    assert _rows(msgs) == 1


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


@pytest.mark.parametrize("name", ['"SEARCH_PATH"', '"Search_Path"', 'SCHEMA'])
def test_a_quoted_setting_name_in_other_case_is_the_same_setting(rt_gateway, name):
    """PostgreSQL compares setting names without regard to case, quoted or not:
    SET "SEARCH_PATH" = s2, public changes the search_path. The gateway compared
    the name as written, took it for an ordinary setting, let it pass and went on
    resolving "t" as public.t while PostgreSQL read s2.t (a view over
    customers.ssn): the SSN came back in clear. The name is now folded as
    PostgreSQL folds it, so the change is followed (and "t" masked)."""
    client = _client(rt_gateway)
    try:
        value = "'s2', 'public'" if name == "SCHEMA" else "s2, public"
        if name == "SCHEMA":
            msgs = client.query("SET SCHEMA 's2'")          # PostgreSQL's own spelling of search_path
        else:
            msgs = client.query(f"SET {name} = {value}")
        assert not errors(msgs), errors(msgs)
        client.received.clear()
        msgs = client.query("SELECT v FROM t WHERE id = 7")
        assert SSN7 not in client.received
        assert not errors(msgs), errors(msgs)
        assert _rows(msgs) == 1 and b"plain-7" not in client.received
    finally:
        client.close()


def test_set_search_path_from_current_keeps_the_path(rt_gateway):
    """SET search_path FROM CURRENT keeps the current value in PostgreSQL. The gateway
    read "FROM CURRENT" as no path at all and went back to the default (public): "t"
    was then public.t to the gateway and s2.t (a view over customers.ssn) to
    PostgreSQL, and the SSN came back in clear."""
    client = _client(rt_gateway)
    try:
        assert not errors(client.query("SET search_path = s2, public"))
        msgs = client.query("SET search_path FROM CURRENT")
        client.received.clear()
        msgs = client.query("SELECT v FROM t WHERE id = 7")
        assert SSN7 not in client.received
        assert not errors(msgs), errors(msgs)
        assert _rows(msgs) == 1 and b"plain-7" not in client.received
        # a value the gateway cannot read ('' is no schema at all to PostgreSQL) is refused
        assert [e.sqlstate for e in errors(client.query("SET search_path = ''"))] == ["42501"]
    finally:
        client.close()


@pytest.mark.parametrize("sql", ['SET "ROLE" = gw_admin', 'SET "Session_Authorization" = postgres',
                                 'SET "STANDARD_CONFORMING_STRINGS" = off', "SET \"Client_Encoding\" = 'SJIS'",
                                 'SET LOCAL "ROW_SECURITY" = off', 'RESET "SEARCH_PATH"'])
def test_session_settings_are_recognised_in_any_case(rt_gateway, sql):
    """SET "ROLE" = gw_admin made the session's statements run as gw_admin, and
    SET "STANDARD_CONFORMING_STRINGS" = off changed how the server reads string
    literals behind the analyser's back: both passed as ordinary settings. They are
    the settings the gateway controls, in whatever case they are written."""
    client = _client(rt_gateway)
    try:
        msgs = client.query(sql)
        if sql.startswith("RESET"):
            assert not errors(msgs), errors(msgs)       # back to the start path: followed, allowed
        else:
            assert [e.sqlstate for e in errors(msgs)] == ["42501"], msgs
        msgs = client.query("SELECT current_user, current_setting('standard_conforming_strings'), "
                            "current_setting('client_encoding')")
        (row,) = [m for m in msgs if getattr(m, "type", None) == b"D"]
        assert b"gw_user" in row.body and b"on" in row.body and b"UTF8" in row.body, row
    finally:
        client.close()


def test_plan_dumps_are_not_a_way_around_masking(rt_gateway):
    """The sample trigger on customers runs pg_notify(..., row_to_json(NEW)::text).
    With SET debug_print_plan = on and client_min_messages = log, PostgreSQL sends
    the trigger's custom plan as a LOG notice whose DETAIL holds NEW's column values
    as constant bytes (seen directly against PostgreSQL: SSN, card number, ...), on
    an UPDATE of city that is allowed. Through the gateway the notice's DETAIL was
    already dropped by the error scrubber, so nothing leaked; settings that dump
    plans, parse trees or trace output (debug_*, trace_*, plpgsql.*) are now also
    refused under policy, as they already were in the startup packet, so the
    scrubber is not the only thing between them and the client."""
    client = _client(rt_gateway)
    try:
        client.query("SET client_min_messages = log")
        for sql in ("SET debug_print_plan = on", "SET debug_print_rewritten TO on", 'SET "DEBUG_PRINT_PLAN" = on',
                    "SET LOCAL trace_notify = on", "SET plpgsql.print_strict_params = on",
                    "SET SESSION debug_print_parse = true"):
            assert [e.sqlstate for e in errors(client.query(sql))] == ["42501"], sql
        client.received.clear()
        msgs = client.query("BEGIN; UPDATE customers SET city = city WHERE id = 7; ROLLBACK")
        assert not errors(msgs), errors(msgs)
        received = bytes(client.received)
        assert b":constvalue" not in received
        # the bytes PostgreSQL prints for a constant: ' 48 48 48 45 48 48 45 ...' for the SSN
        assert " ".join(str(b) for b in SSN7).encode() not in received
        assert SSN7 not in received
    finally:
        client.close()


# -- probes that found nothing (kept: each is one short session) ---------------------

PROBES = {
    # functions that run SQL given as text, and XPath over what they return
    "query_to_xml": ["SELECT xpath('//ssn/text()', query_to_xml('SELECT ssn FROM customers', true, false, ''))"],
    "table_to_xml": ["SELECT table_to_xml('customers'::regclass, true, false, '')"],
    "schema_to_xml": ["SELECT schema_to_xml('public', true, false, '')"],
    "cursor_to_xml": ["BEGIN", "DECLARE c CURSOR FOR SELECT ssn FROM customers",
                      "SELECT cursor_to_xml('c', 10, true, false, '')", "ROLLBACK"],
    "ts_stat": ["SELECT * FROM ts_stat('SELECT to_tsvector(''simple'', ssn) FROM customers')"],
    "ts_rewrite": ["SELECT ts_rewrite('a'::tsquery, 'SELECT to_tsquery(''simple'', replace(ssn, ''-'', '''')), "
                   "''a''::tsquery FROM customers')"],
    "dblink": ["SELECT * FROM dblink('dbname=' || current_database(), 'SELECT ssn FROM customers') AS t(s text)"],
    "dblink_open": ["SELECT dblink_connect('c', 'dbname=' || current_database())",
                    "SELECT dblink_open('c', 'cur', 'SELECT ssn FROM customers')",
                    "SELECT * FROM dblink_fetch('c', 'cur', 50) AS t(s text)"],
    "do_block": ["DO $$BEGIN RAISE NOTICE '%', (SELECT string_agg(ssn, ',') FROM customers); END$$"],
    "create_function": ["CREATE FUNCTION scratch.f() RETURNS text LANGUAGE sql AS "
                        "$f$ SELECT string_agg(ssn, ',') FROM customers $f$", "SELECT scratch.f()"],
    "call_procedure": ["CREATE PROCEDURE scratch.p() LANGUAGE sql AS $p$ SELECT 1 $p$", "CALL scratch.p()"],
    "security_definer_srf": ["SELECT ssn FROM customer_lookup(7)", "SELECT (customer_lookup(7)).ssn",
                             "SELECT x.* FROM ROWS FROM (customer_lookup(7)) x"],
    # EXPLAIN shows constants, filters and (ANALYZE) runs
    "explain_verbose_json": ["EXPLAIN (VERBOSE, FORMAT JSON) SELECT ssn FROM customers WHERE id = 7",
                             "EXPLAIN (ANALYZE, VERBOSE, FORMAT JSON) SELECT id FROM customers WHERE ssn = '000-00-0007'",
                             "EXPLAIN (ANALYZE, COSTS OFF) SELECT * FROM customer_contacts",
                             "EXPLAIN ANALYZE CREATE TABLE scratch.x AS SELECT ssn FROM customers",
                             "EXPLAIN (ANALYZE) EXECUTE nope"],
    # system views and functions holding values or query text
    "pg_get_functions": ["SELECT pg_get_functiondef('customer_lookup'::regproc)",
                         "SELECT pg_get_viewdef('customer_contacts'::regclass)",
                         "SELECT pg_get_expr(adbin, adrelid) FROM pg_attrdef"],
    "pg_stats_views": ["SELECT most_common_vals::text FROM pg_stats WHERE tablename = 'customers'",
                       "SELECT * FROM pg_catalog.pg_stats_ext",
                       "SELECT query FROM pg_stat_activity",
                       "SELECT pg_stat_get_backend_activity(s) FROM pg_stat_get_backend_idset() s"],
    "prepared_and_cursors_views": ["PREPARE q AS SELECT ssn FROM customers WHERE id = 7",
                                   "EXECUTE q", "SELECT statement FROM pg_prepared_statements",
                                   "BEGIN", "DECLARE k CURSOR WITH HOLD FOR SELECT ssn FROM customers",
                                   "COMMIT", "SELECT statement FROM pg_cursors", "FETCH ALL FROM k"],
    "large_objects": ["SELECT lo_from_bytea(0, convert_to((SELECT string_agg(ssn, ',') FROM customers), 'UTF8'))",
                      "SELECT lo_get(oid) FROM pg_largeobject_metadata",
                      "SELECT loid, data FROM pg_largeobject"],
    # set-returning functions, LATERAL, ROWS FROM, recursive CTEs over rows
    "srf_rows": ["SELECT j.* FROM customers c, json_each_text(row_to_json(c)) j WHERE c.id = 7",
                 "SELECT (jsonb_populate_record(NULL::customers, to_jsonb(c))).ssn FROM customers c WHERE id = 7",
                 "SELECT unnest(ARRAY[c.ssn, c.email]) FROM customers c WHERE id = 7",
                 "SELECT ARRAY(SELECT c FROM customers c WHERE id = 7)",
                 "SELECT * FROM ROWS FROM (unnest(ARRAY(SELECT ssn FROM customers)), generate_series(1, 3)) x",
                 "SELECT g, (SELECT ssn FROM customers WHERE id = g) FROM generate_series(7, 8) g",
                 "SELECT s FROM generate_series(1, 1) g, LATERAL (SELECT ssn FROM customers WHERE id = 7) l(s)",
                 "WITH RECURSIVE r(n, s) AS (SELECT 1, ''::text UNION ALL SELECT n + 1, "
                 "(SELECT ssn FROM customers WHERE id = 7) FROM r WHERE n < 2) SELECT s FROM r"],
    "aggregates": ["SELECT string_agg(ssn, ','), array_agg(email)::text, json_agg(c)::text FROM customers c",
                   "SELECT min(ssn), max(card_number), mode() WITHIN GROUP (ORDER BY phone) FROM customers",
                   "SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY ssn) FROM customers",
                   "SELECT city, ssn, count(*) FROM customers GROUP BY GROUPING SETS ((city), (ssn)) ",
                   "SELECT ssn FROM customers GROUP BY CUBE (ssn, city)",
                   "SELECT DISTINCT ON (ssn) ssn FROM customers"],
    "sampling_and_only": ["SELECT ssn FROM customers TABLESAMPLE SYSTEM (100)",
                          "SELECT ssn FROM ONLY customers WHERE id = 7", "SELECT ssn FROM customers_archive",
                          "SELECT * FROM customers_part_testville", "SELECT ssn FROM ONLY (customers) c",
                          "SELECT * FROM customer_city_mv", "TABLE customers", "TABLE ONLY customers"],
    "composite_casts": ["SELECT c::text, ROW(c.*)::text, (c).ssn FROM customers c WHERE id = 7",
                        "SELECT CAST(ROW(ssn) AS record)::text FROM customers WHERE id = 7",
                        "SELECT (ssn, email)::text FROM customers WHERE id = 7",
                        "SELECT ssn(c), email(customers) FROM customers, customers c WHERE c.id = 7 LIMIT 1"],
    "writes_returning": ["UPDATE customers SET city = city WHERE id = 7 RETURNING ssn",
                         "DELETE FROM orders WHERE false RETURNING (SELECT ssn FROM customers WHERE id = 7)",
                         "UPDATE orders SET amount = amount FROM customers c WHERE c.id = 7 RETURNING c.ssn",
                         "INSERT INTO customers (id, city) VALUES (7, 'x') ON CONFLICT (id) DO UPDATE "
                         "SET city = customers.city RETURNING ssn",
                         "MERGE INTO orders o USING customers c ON o.customer_id = c.id WHEN MATCHED THEN "
                         "UPDATE SET note = c.ssn",
                         "WITH d AS (DELETE FROM orders WHERE false RETURNING 1) SELECT ssn FROM customers WHERE id = 7"],
    "persist": ["CREATE TABLE scratch.t AS SELECT ssn FROM customers",
                "SELECT ssn INTO scratch.t2 FROM customers",
                "CREATE TEMP TABLE t3 AS SELECT * FROM customers",
                "CREATE MATERIALIZED VIEW scratch.mv AS SELECT ssn FROM customers",
                "SELECT setval('orders_id_seq', (SELECT substr(ssn, 8)::int FROM customers WHERE id = 7))",
                "SELECT currval('orders_id_seq')",
                "INSERT INTO orders (amount) SELECT substr(ssn, 8)::int FROM customers WHERE id = 7",
                "SELECT max(amount) FROM orders"],
    "lexical": ["SELECT U&\"s\\0073n\" FROM U&\"customers\" WHERE id = 7",
                "SELECT $q$x$q$ || ssn FROM customers WHERE id = 7",
                "SELECT E'\\x41' || ssn FROM customers WHERE id = 7",
                "SELECT /* a /* nested */ comment */ ssn FROM customers WHERE id = 7",
                "SELECT SSN FROM CUSTOMERS WHERE ID = 7", "SELECT \"ssn\" FROM \"customers\" WHERE id = 7",
                "SELECT ssn FROM public . customers WHERE id = 7",
                "SELECT ssn FROM \"public\".\"customers\" WHERE id = 7"],
    "shadowing": ["CREATE TEMP TABLE customers (id int, ssn text)", "SELECT ssn FROM customers",
                  "SELECT ssn FROM pg_temp.customers", "SELECT ssn FROM public.customers WHERE id = 7"],
    "search_path_games": ["SET search_path = scratch, public, pg_catalog",
                          "SELECT ssn FROM customers WHERE id = 7",
                          "SET search_path = public, pg_catalog", "SELECT lower(ssn) FROM customers WHERE id = 7",
                          "SELECT ssn FROM customers WHERE id = 7 AND ssn OPERATOR(public.=) ssn"],
    "settings": ["SET client_min_messages = debug5", "SET debug_print_plan = on", "SET debug_print_parse = on",
                 "SET trace_sort = on", "SELECT id FROM customers ORDER BY city LIMIT 1",
                 "SELECT ssn FROM customers ORDER BY ssn LIMIT 1"],
    "views_by_dba": ["SELECT * FROM customer_contacts", "SELECT * FROM order_report",
                     "SELECT customer_email FROM order_report o WHERE o.order_id = 1",
                     "SELECT c FROM customer_contacts c", "SELECT * FROM customer_ssn_digits WHERE id = 7"],
}


@pytest.mark.parametrize("name", sorted(PROBES))
def test_probe_leaks_nothing(rt_gateway, name):
    _, leaked = _leaked(rt_gateway, PROBES[name])
    assert not leaked, f"{name} leaked {leaked[:5]}"


def test_a_cast_implemented_by_a_sql_function_fails_closed(gateway_factory, pg_server, sample_db_fresh, tmp_path):
    """CREATE CAST (int AS text) WITH FUNCTION f, f a SQL function reading
    customers.ssn: PostgreSQL then runs f for 7::text and, implicitly, for
    'x' || 7 (anytextcat casts its argument), statements of constants the gateway
    allowed: the SSN came back in clear. The analyzer does not know types, so it
    cannot tell where such a cast applies: while one exists, statements that
    evaluate expressions are refused for users under policy (others are untouched)."""
    with psycopg.connect(sample_db_fresh, autocommit=True) as conn:
        conn.execute("CREATE FUNCTION ssn_cast(p_id int) RETURNS text LANGUAGE sql STABLE "
                     "AS $f$ SELECT ssn FROM public.customers WHERE id = p_id $f$; "
                     "GRANT EXECUTE ON FUNCTION ssn_cast(int) TO gw_user; "
                     "CREATE CAST (int AS text) WITH FUNCTION ssn_cast(int)")
    gw = gateway_factory(config_text=_policy_config(pg_server, sample_db_fresh.dbname, tmp_path))
    gw.dbname = sample_db_fresh.dbname
    for sql in ("SELECT 7::text", "SELECT 'x' || 7", "SELECT concat('x', 7)"):
        msgs, leaked = _leaked(gw, [sql])
        assert [e.sqlstate for e in errors(msgs)] == ["42501"], (sql, msgs)
        assert not leaked, (sql, leaked)
    msgs, _ = _leaked(gw, ["BEGIN", "SHOW search_path", "COMMIT"])
    assert not errors(msgs), errors(msgs)
    dba = _client(gw, "dba")
    try:
        dba.query("SELECT 'x' || 7")
        assert SSN7 in dba.received                    # unrestricted: as PostgreSQL answers
    finally:
        dba.close()


def test_messages_raised_by_database_code_are_withheld(gateway_factory, pg_server, sample_db_fresh, tmp_path):
    """A DBA's audit trigger on customers says RAISE NOTICE 'customer % updated (ssn
    %)', NEW.id, NEW.ssn (and a HINT). An UPDATE of city touches no PII and is
    allowed; the notice's text carried the SSN unquoted, and the scrubber only
    removes quoted values, so it reached the client in clear. Messages raised
    inside database code (they carry a CONTEXT) are now withheld whole under
    policy, their SQLSTATE kept; unrestricted users see them as sent."""
    with psycopg.connect(sample_db_fresh, autocommit=True) as conn:
        conn.execute("""CREATE FUNCTION audit_customer() RETURNS trigger LANGUAGE plpgsql AS $f$
            BEGIN
              RAISE NOTICE 'customer % updated (ssn %)', NEW.id, NEW.ssn USING HINT = NEW.card_number;
              IF NEW.city = 'boom' THEN RAISE EXCEPTION 'bad city for %', NEW.email; END IF;
              RETURN NEW;
            END $f$;
            CREATE TRIGGER customers_audit AFTER UPDATE ON customers FOR EACH ROW EXECUTE FUNCTION audit_customer()""")
    gw = gateway_factory(config_text=_policy_config(pg_server, sample_db_fresh.dbname, tmp_path))
    gw.dbname = sample_db_fresh.dbname
    msgs, leaked = _leaked(gw, ["UPDATE customers SET city = city WHERE id = 7"])
    assert not errors(msgs), errors(msgs)
    notices = [m for m in msgs if getattr(m, "notice", False)]
    assert notices and "withheld" in notices[0].message, notices
    assert not leaked, leaked
    msgs, leaked = _leaked(gw, ["UPDATE customers SET city = 'boom' WHERE id = 7"])
    assert [e.sqlstate for e in errors(msgs)] == ["P0001"], msgs
    assert not leaked, leaked
    dba = _client(gw, "dba")
    try:
        dba.query("BEGIN; UPDATE customers SET city = city WHERE id = 7; ROLLBACK")
        assert SSN7 in dba.received
    finally:
        dba.close()


def test_a_generated_column_over_pii_is_masked(gateway_factory, pg_server, sample_db_fresh, tmp_path):
    """customers.ssn_norm GENERATED ALWAYS AS (replace(ssn, '-', '')) STORED holds the
    SSN without dashes. Nothing catalogued it (the catalog derived children and view
    columns, not generated ones), so SELECT ssn_norm was allowed unchanged and returned
    000000007 for customer 7 (found by red-teaming). The live schema now reads which
    columns a generated column is computed from (pg_attrdef's dependencies), the
    catalog derives it like a view column, and the masker masks it in the wrapper."""
    with psycopg.connect(sample_db_fresh, autocommit=True) as conn:
        conn.execute("ALTER TABLE customers ADD COLUMN ssn_norm text "
                     "GENERATED ALWAYS AS (replace(ssn, '-', '')) STORED, "
                     "ADD COLUMN email_rev text GENERATED ALWAYS AS (reverse(email)) STORED")
    gw = gateway_factory(config_text=_policy_config(pg_server, sample_db_fresh.dbname, tmp_path))
    gw.dbname = sample_db_fresh.dbname
    msgs, _ = _leaked(gw, ["SELECT ssn_norm FROM customers WHERE id = 7"])
    received = b"".join(m.body for m in msgs if getattr(m, "type", None) == b"D")
    assert b"000000007" not in received, received
    # email is masked partially (***@domain); a generated reverse(email) masked the same
    # way showed ***@70resu, the local part reversed: a computed column is redacted
    msgs, _ = _leaked(gw, ["SELECT email, email_rev FROM customers WHERE id = 7"])
    received = b"".join(m.body for m in msgs if getattr(m, "type", None) == b"D")
    assert b"70resu" not in received and b"***@example.invalid" in received, received


SET_BY_OBJECTS = """
CREATE FUNCTION ssn_for_default(p_id int) RETURNS text LANGUAGE sql STABLE
  AS $f$ SELECT ssn FROM public.customers WHERE id = p_id $f$;
CREATE TABLE tickets (id serial PRIMARY KEY, customer_id int, ref text DEFAULT ssn_for_default(7));
CREATE TABLE contact_log (id serial PRIMARY KEY, customer_id int, body text, touched_at timestamptz);
CREATE FUNCTION contact_log_fill() RETURNS trigger LANGUAGE plpgsql AS $f$
  BEGIN
    NEW.body := (SELECT email FROM public.customers WHERE id = NEW.customer_id);
    RETURN NEW;
  END $f$;
CREATE TRIGGER contact_log_fill BEFORE INSERT ON contact_log FOR EACH ROW EXECUTE FUNCTION contact_log_fill();
CREATE TABLE visits (id serial PRIMARY KEY, city text, seen_at timestamptz);
CREATE FUNCTION visits_touch() RETURNS trigger LANGUAGE plpgsql AS $f$
  BEGIN NEW.seen_at := now(); RETURN NEW; END $f$;
CREATE TRIGGER visits_touch BEFORE INSERT OR UPDATE ON visits FOR EACH ROW EXECUTE FUNCTION visits_touch();
CREATE TABLE inbox (id serial PRIMARY KEY, customer_id int, note text);
CREATE VIEW inbox_v AS SELECT id, customer_id, note FROM inbox;
CREATE FUNCTION inbox_ins() RETURNS trigger LANGUAGE plpgsql AS $f$
  BEGIN
    INSERT INTO inbox (customer_id, note) VALUES (NEW.customer_id, NEW.note);
    NEW.note := (SELECT ssn FROM public.customers WHERE id = NEW.customer_id);
    RETURN NEW;
  END $f$;
CREATE TRIGGER inbox_v_ins INSTEAD OF INSERT ON inbox_v FOR EACH ROW EXECUTE FUNCTION inbox_ins();
GRANT SELECT, INSERT ON inbox, inbox_v TO gw_user;
INSERT INTO tickets (customer_id) VALUES (7);
INSERT INTO contact_log (customer_id) VALUES (7);
INSERT INTO visits (city) VALUES ('Sampleton');
GRANT SELECT, INSERT ON tickets, contact_log, visits TO gw_user;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO gw_user;
GRANT EXECUTE ON FUNCTION ssn_for_default(int) TO gw_user;
"""


def test_a_column_a_dbas_function_fills_in_on_a_write_is_masked(gateway_factory, pg_server, sample_db_fresh,
                                                                 tmp_path):
    """A DBA's column DEFAULT calling a SQL function that reads customers.ssn
    (tickets.ref DEFAULT ssn_for_default(7)), and a BEFORE INSERT trigger in PL/pgSQL
    setting NEW.body from customers.email: an INSERT naming neither column is allowed,
    and INSERT ... RETURNING ref (or a later SELECT ref) returned the SSN and the
    e-mail address in clear; nothing catalogued those columns (found by red-teaming).
    The live schema now lists the columns a SQL/PL or SECURITY DEFINER function may
    fill in on a write (defaults and generated expressions calling one, the NEW
    fields a PL/pgSQL row trigger names; every column for another language), and the
    catalog treats them like its most sensitive column. A trigger that only stamps
    a time masks that column alone. Likewise a view's INSTEAD OF INSERT trigger
    setting NEW.note from customers.ssn: INSERT INTO inbox_v ... RETURNING note gave
    back the SSN."""
    with psycopg.connect(sample_db_fresh, autocommit=True) as conn:
        conn.execute(SET_BY_OBJECTS)
    gw = gateway_factory(config_text=_policy_config(pg_server, sample_db_fresh.dbname, tmp_path))
    gw.dbname = sample_db_fresh.dbname
    for sql in ("INSERT INTO tickets (customer_id) VALUES (8) RETURNING ref",
                "INSERT INTO contact_log (customer_id) VALUES (8) RETURNING body",
                "INSERT INTO inbox_v (customer_id, note) VALUES (7, 'hi') RETURNING note"):
        msgs, leaked = _leaked(gw, [sql])
        assert [e.sqlstate for e in errors(msgs)] == ["42501"], (sql, msgs)
        assert not leaked, (sql, leaked)
    msgs, leaked = _leaked(gw, ["SELECT id, ref FROM tickets", "SELECT id, body FROM contact_log",
                                "SELECT t FROM tickets t"])
    assert not errors(msgs), errors(msgs)
    assert _rows(msgs) == 3
    assert not leaked, leaked
    # the timestamp a trigger sets is masked, the other columns are as PostgreSQL returns them
    msgs, _ = _leaked(gw, ["SELECT id, city, seen_at IS NULL FROM visits"])
    (row,) = [m for m in msgs if getattr(m, "type", None) == b"D"]
    assert b"Sampleton" in row.body and row.body.endswith(b"\x00\x00\x00\x01t"), row
    # the sample's AFTER trigger on customers (pg_notify) changes nothing: customers is as before
    msgs, _ = _leaked(gw, ["UPDATE customers SET city = city WHERE id = 7", "SELECT id, city FROM customers WHERE id = 7"])
    assert not errors(msgs), errors(msgs)
    assert b"Mockburg" in b"".join(m.body for m in msgs if getattr(m, "type", None) == b"D")
    dba = _client(gw, "dba")
    try:
        dba.query("SELECT ref FROM tickets")
        assert SSN7 in dba.received                    # unrestricted: as PostgreSQL answers
    finally:
        dba.close()


RULE_OBJECTS = """
CREATE TABLE feedback (id serial PRIMARY KEY, msg text);
CREATE RULE feedback_echo AS ON INSERT TO feedback DO ALSO SELECT ssn FROM public.customers WHERE id = 7;
CREATE TABLE feedback_log (id serial PRIMARY KEY, msg text);
INSERT INTO feedback_log (msg) VALUES ('x');
CREATE RULE feedback_log_upd AS ON UPDATE TO feedback_log DO INSTEAD
  SELECT email, ssn FROM public.customers WHERE id = 7;
CREATE RULE feedback_log_del AS ON DELETE TO feedback_log DO ALSO
  SELECT card_number FROM public.customers WHERE id = 7;
CREATE TABLE feedback_child () INHERITS (feedback_log);
GRANT SELECT, INSERT, UPDATE, DELETE ON feedback, feedback_log, feedback_child TO gw_user;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO gw_user;
"""


@pytest.mark.parametrize("sql", ["INSERT INTO feedback (msg) VALUES ('hi')", "UPDATE feedback_log SET msg = 'y'",
                                 "DELETE FROM feedback_log", "WITH d AS (DELETE FROM feedback_log RETURNING id) SELECT 1",
                                 "INSERT INTO feedback SELECT 2, 'x' RETURNING id"])
def test_a_write_to_a_relation_with_rules_fails_closed(gateway_factory, pg_server, sample_db_fresh, tmp_path, sql):
    """A DBA's rule ON INSERT TO feedback DO ALSO SELECT ssn FROM customers (or DO
    INSTEAD SELECT email, ssn on UPDATE, DO ALSO SELECT card_number on DELETE) runs,
    and returns to the writer, commands the statement does not say: an INSERT into a
    table without PII was allowed and the SSN came back in clear (found by
    red-teaming). The live schema marks relations with INSERT/UPDATE/DELETE rules,
    and a write to one is unknown for users under policy."""
    with psycopg.connect(sample_db_fresh, autocommit=True) as conn:
        conn.execute(RULE_OBJECTS)
    gw = gateway_factory(config_text=_policy_config(pg_server, sample_db_fresh.dbname, tmp_path))
    gw.dbname = sample_db_fresh.dbname
    msgs, leaked = _leaked(gw, [sql])
    assert [e.sqlstate for e in errors(msgs)] == ["42501"], msgs
    assert not leaked, leaked
    msgs, _ = _leaked(gw, ["SELECT id, msg FROM feedback_log", "INSERT INTO orders (customer_id, amount) VALUES (1, 2)"])
    assert not errors(msgs), errors(msgs)                 # reads, and writes elsewhere, as before
    dba = _client(gw, "dba")
    try:
        dba.query("INSERT INTO feedback (msg) VALUES ('hi')")
        assert SSN7 in dba.received                    # unrestricted: as PostgreSQL answers
    finally:
        dba.close()


PARTITION_OBJECTS = """
CREATE TABLE cust_by_dob (id int, city text, dob date) PARTITION BY RANGE (dob);
CREATE TABLE cust_by_dob_1960s PARTITION OF cust_by_dob FOR VALUES FROM ('1960-01-01') TO ('1970-01-01');
CREATE TABLE cust_by_dob_rest PARTITION OF cust_by_dob DEFAULT;
CREATE TABLE cust_by_ssn (id int, ssn text) PARTITION BY LIST (right(ssn, 1));
CREATE TABLE cust_by_ssn_7 PARTITION OF cust_by_ssn FOR VALUES IN ('7');
CREATE TABLE cust_by_ssn_rest PARTITION OF cust_by_ssn DEFAULT;
INSERT INTO cust_by_dob SELECT id, city, dob FROM customers;
INSERT INTO cust_by_ssn SELECT id, ssn FROM customers;
COMMENT ON COLUMN cust_by_dob.dob IS 'pii:dob';
COMMENT ON COLUMN cust_by_ssn.ssn IS 'pii:ssn';
GRANT SELECT ON cust_by_dob, cust_by_dob_1960s, cust_by_dob_rest, cust_by_ssn, cust_by_ssn_7, cust_by_ssn_rest
  TO gw_user;
"""


def test_a_partition_by_a_pii_key_is_refused(gateway_factory, pg_server, sample_db_fresh, tmp_path):
    """A partition holds the rows whose partition key lies in its bound: with a DBA's
    cust_by_dob partitioned by RANGE (dob), SELECT id FROM cust_by_dob_1960s touched
    no catalogued column, was allowed, and listed the customers born in the 1960s;
    with LIST (right(ssn, 1)), cust_by_ssn_7 listed those whose SSN ends in 7 (found
    by red-teaming). Reading a partition now counts as a predicate on its ancestors'
    key columns, and the masker refuses a partition whose key is masked; the
    partitioned table itself is masked as before, and the sample's customers_part
    (by city) is untouched."""
    with psycopg.connect(sample_db_fresh, autocommit=True) as conn:
        conn.execute(PARTITION_OBJECTS)
    gw = gateway_factory(config_text=_policy_config(pg_server, sample_db_fresh.dbname, tmp_path))
    gw.dbname = sample_db_fresh.dbname
    for sql in ("SELECT id FROM cust_by_dob_1960s", "SELECT count(*) FROM cust_by_ssn_7",
                "SELECT id FROM ONLY cust_by_ssn_rest", "SELECT o.id FROM orders o JOIN cust_by_ssn_7 c ON c.id = o.customer_id"):
        msgs, leaked = _leaked(gw, [sql])
        assert [e.sqlstate for e in errors(msgs)] == ["42501"], (sql, msgs)
        assert not leaked, leaked
    msgs, leaked = _leaked(gw, ["SELECT id, dob FROM cust_by_dob WHERE id = 7", "SELECT ssn FROM cust_by_ssn WHERE id = 7",
                                "SELECT id, city FROM customers_part_testville WHERE id = 5"])
    assert not errors(msgs), errors(msgs)
    assert _rows(msgs) == 3 and not leaked, leaked


RLS_OBJECTS = """
CREATE TABLE vip_orders (id int, customer_id int, amount numeric);
INSERT INTO vip_orders SELECT id, customer_id, amount FROM orders;
ALTER TABLE vip_orders ENABLE ROW LEVEL SECURITY;
CREATE POLICY vip_pol ON vip_orders
  USING (customer_id IN (SELECT id FROM public.customers WHERE ssn LIKE current_setting('app.q', true)));
CREATE TABLE tenant_orders (id int, tenant int, amount numeric);
INSERT INTO tenant_orders VALUES (1, 1, 10), (2, 2, 20);
ALTER TABLE tenant_orders ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_pol ON tenant_orders USING (tenant = current_setting('app.tenant', true)::int);
GRANT SELECT ON vip_orders, tenant_orders TO gw_user;
"""


def test_row_level_security_over_pii_is_refused(gateway_factory, pg_server, sample_db_fresh, tmp_path):
    """A DBA's row-level security policy on vip_orders keeps the orders of customers
    whose SSN is LIKE current_setting('app.q'): after SET app.q = '000-00-0036',
    SELECT customer_id FROM vip_orders (no catalogued column) was allowed and named
    the customer with that SSN, an oracle for any pattern (found by red-teaming).
    The live schema reads the columns each policy's expressions depend on; reading a
    table whose policies read a masked column counts as a predicate on it and is
    refused. A policy over columns that are not PII (a tenant id) changes nothing."""
    with psycopg.connect(sample_db_fresh, autocommit=True) as conn:
        conn.execute(RLS_OBJECTS)
    gw = gateway_factory(config_text=_policy_config(pg_server, sample_db_fresh.dbname, tmp_path))
    gw.dbname = sample_db_fresh.dbname
    msgs, leaked = _leaked(gw, ["SET app.q = '000-00-0036'", "SELECT customer_id FROM vip_orders",
                                "SELECT count(*) FROM vip_orders"])
    assert [e.sqlstate for e in errors(msgs)] == ["42501", "42501"], msgs
    assert _rows(msgs) == 0 and not leaked, leaked
    msgs, _ = _leaked(gw, ["SET app.tenant = '2'", "SELECT id, amount FROM tenant_orders"])
    assert not errors(msgs), errors(msgs)
    (row,) = [m for m in msgs if getattr(m, "type", None) == b"D"]
    assert row.body.endswith(b"\x00\x00\x00\x0220"), row


def test_a_foreign_key_column_referencing_pii_is_catalogued(gateway_factory, pg_server, sample_db_fresh, tmp_path):
    """newsletter.customer_email REFERENCES customers(email) holds e-mail addresses,
    yet nothing catalogued it: SELECT customer_email FROM newsletter returned them in
    clear, and INSERT of a guessed address was an existence oracle (the foreign key
    refuses one that no customer has) (found by red-teaming). The live schema reads
    foreign keys column by column and the catalog derives a referencing column from
    the catalogued column it references."""
    with psycopg.connect(sample_db_fresh, autocommit=True) as conn:
        conn.execute("ALTER TABLE customers ADD CONSTRAINT customers_email_key UNIQUE (email); "
                     "CREATE TABLE newsletter (id serial, customer_email text REFERENCES customers (email)); "
                     "INSERT INTO newsletter (customer_email) SELECT email FROM customers WHERE id <= 7; "
                     "GRANT SELECT, INSERT ON newsletter TO gw_user; "
                     "GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO gw_user")
    gw = gateway_factory(config_text=_policy_config(pg_server, sample_db_fresh.dbname, tmp_path))
    gw.dbname = sample_db_fresh.dbname
    msgs, leaked = _leaked(gw, ["SELECT id, customer_email FROM newsletter"])
    assert not errors(msgs), errors(msgs)
    assert _rows(msgs) == 7 and not leaked, leaked
    assert b"***@example.invalid" in b"".join(m.body for m in msgs if getattr(m, "type", None) == b"D")
    msgs, leaked = _leaked(gw, ["INSERT INTO newsletter (customer_email) VALUES ('user09@example.invalid')"])
    assert [e.sqlstate for e in errors(msgs)] == ["42501"], msgs


def test_a_column_of_a_catalogued_row_type_is_catalogued(gateway_factory, pg_server, sample_db_fresh, tmp_path):
    """snapshots.c customers (and cs customers[]) holds whole customer rows: nothing
    catalogued the column, so SELECT (c).ssn, cs FROM snapshots returned the SSN and
    every other value in clear (found by red-teaming). The catalog derives a column
    whose type is a catalogued relation's row type, or an array of it, from that
    relation's most sensitive column."""
    with psycopg.connect(sample_db_fresh, autocommit=True) as conn:
        conn.execute("CREATE TABLE snapshots (id int, c customers, cs customers[]); "
                     "INSERT INTO snapshots SELECT id, c, ARRAY[c] FROM customers c WHERE id <= 7; "
                     "GRANT SELECT ON snapshots TO gw_user")
    gw = gateway_factory(config_text=_policy_config(pg_server, sample_db_fresh.dbname, tmp_path))
    gw.dbname = sample_db_fresh.dbname
    msgs, leaked = _leaked(gw, ["SELECT (c).ssn, cs FROM snapshots WHERE id = 7", "SELECT s FROM snapshots s",
                                "SELECT id FROM snapshots WHERE id = 7"])
    assert not errors(msgs), errors(msgs)
    assert _rows(msgs) == 9 and not leaked, leaked
