"""Policy enforcement through the real gateway, with a raw client that keeps every byte.

The property that matters (issue 4): sent through the gateway by a principal without
a grant, no catalogued value from the sample schema appears in any byte the client
receives — rows, COPY data, NOTICE, NOTIFY payloads or error text.
"""
from __future__ import annotations

import json
import re
import shutil
import struct
from pathlib import Path

import asyncpg
import pytest

from gateway.protocol import codec

from .conftest import PASSWORD
from .rawclient import RawClient, errors

ROOT = Path(__file__).resolve().parents[2]
SECURITY = ROOT / "tests" / "data" / "security"
CORPUS = [json.loads(line) for line in (SECURITY / "attack-corpus.jsonl").read_text().splitlines() if line.strip()]
#: attacks of the same classes beyond the public corpus (the analyzer's regression file)
EXTRA = [json.loads(line) for line in (ROOT / "tests" / "data" / "analysis" / "attacks-extra.jsonl")
         .read_text().splitlines() if line.strip()]

POLICY = """
[defaults]
pii_read = "mask"
write_pii = "approve"
export = "deny"
unknown = "deny"
ddl = "deny"

[masking]
email = "partial_email"
phone = "redact"
ssn = "redact"
card_number = "redact"
dob = "redact"          # "year" would map 1950-01-01 onto itself
name = "redact"
free_text = "redact"

[[rule]]
name = "dba-unrestricted"
roles = ["dba"]
actions = ["*"]
categories = ["*"]
effect = "allow"

[[rule]]
name = "analyst-identifiers-need-approval"
roles = ["analyst"]
actions = ["read"]
categories = ["ssn", "card_number"]
effect = "mask"
"""


def catalogued_values() -> set[str]:
    """Every value of a catalogued column in schema.sql and fixtures.sql."""
    text = (SECURITY / "schema.sql").read_text() + (SECURITY / "fixtures.sql").read_text()
    values = set()
    for row in re.findall(r"\('([^']*)','([^']*)','([^']*)','([^']*)','([^']*)','([^']*)','[^']*'\)", text):
        values.update(row)
    assert len(values) >= 6 * 51, "the sample data did not parse"
    return values


def _policy_config(pg_server, dbname: str, tmp_path, catalog_file: bool = True) -> str:
    (tmp_path / "policy.toml").write_text(POLICY)
    shutil.copy(ROOT / "examples" / "catalog.toml", tmp_path / "catalog.toml")
    extra = f"""
[policy]
file = "{tmp_path / 'policy.toml'}"
"""
    if catalog_file:
        extra += f"""[catalog]
file = "{tmp_path / 'catalog.toml'}"
"""
    from .conftest import gateway_toml
    text = gateway_toml(pg_server, users={"ann": ["analyst"], "dba": ["dba"]}, extra=extra, database=dbname)
    return text.replace(f'user = "{pg_server.user}"', 'user = "gw_user"', 1)


@pytest.fixture
def policy_gateway(gateway_factory, pg_server, sample_db_fresh, tmp_path):
    gw = gateway_factory(config_text=_policy_config(pg_server, sample_db_fresh.dbname, tmp_path))
    gw.dbname = sample_db_fresh.dbname
    return gw


@pytest.fixture(scope="module", params=["catalog-file", "comment-tags-only"])
def corpus_gateway(request, pg_server, _sample_template, tmp_path_factory):
    """One gateway and one private copy of the sample database for the whole corpus
    (the statements run as a user without a grant; writes are refused)."""
    from gateway.config import parse_config
    from ..conftest import create_database, drop_database
    from .conftest import start_gateway
    db = create_database(pg_server, template=_sample_template.dbname, prefix="piigate_corpus")
    tmp = tmp_path_factory.mktemp("corpus")
    # with the reviewed catalog file, and with nothing but what the database says
    # (pii: tags, comments that mention PII, tables with the same columns as a tagged one)
    text = _policy_config(pg_server, db.dbname, tmp, catalog_file=request.param == "catalog-file")
    (tmp / "gw.toml").write_text(text)
    gw = start_gateway(parse_config(text, str(tmp / "gw.toml")))
    gw.dbname = db.dbname
    try:
        yield gw
    finally:
        gw.stop()
        drop_database(pg_server, db.dbname)


def _client(gw, user="ann") -> RawClient:
    return RawClient("127.0.0.1", gw.port, user, PASSWORD, gw.dbname)


UNTAGGED = [{"id": f"UT{i:02d}", "sql": q} for i, q in enumerate([
    "SELECT note FROM orders", "SELECT * FROM orders", "SELECT * FROM order_report",
    "SELECT * FROM customers_part", "SELECT ssn, email FROM customers_part_testville",
    "SELECT to_jsonb(p) FROM customers_part p", "SELECT string_agg(note, ',') FROM orders",
])]


@pytest.mark.parametrize("case", CORPUS + EXTRA + UNTAGGED, ids=[c["id"] for c in CORPUS + EXTRA + UNTAGGED])
def test_attack_corpus_leaks_nothing(corpus_gateway, case):
    values = catalogued_values()
    client = _client(corpus_gateway)
    try:
        for pre in case.get("pre") or []:
            client.query(pre)
        if case.get("params") is not None:
            client.extended(case["sql"], case["params"])
        else:
            client.query(case["sql"])
        client.drain(0.2)
        received = bytes(client.received).decode("utf-8", "replace")
    finally:
        client.close()
    leaked = sorted(v for v in values if v in received)
    assert not leaked, f"{case['id']} leaked {leaked[:5]} ({len(leaked)} values)"


def test_unrestricted_user_sees_clear_values(policy_gateway):
    client = _client(policy_gateway, "dba")
    try:
        msgs = client.query("SELECT ssn FROM customers WHERE id = 7")
        assert not errors(msgs)
        assert b"000-00-0007" in client.received
    finally:
        client.close()


@pytest.mark.parametrize("protocol", ["simple", "extended", "after-a-select", "after-a-comment"])
def test_ddl_by_an_unrestricted_user_is_seen_by_restricted_sessions(policy_gateway, protocol):
    """The dba's session is relayed in bulk (nothing to decide or record), but its DDL
    still refreshes the live schema: a view the dba creates over customers.ssn is
    masked for ann at once, not refused as an unknown relation until the next
    periodic refresh."""
    import time
    view = f"v_ssn_{protocol}".replace("-", "_")
    dba = _client(policy_gateway, "dba")
    try:
        sql = f"CREATE VIEW {view.replace('-', '_')} AS SELECT id, ssn FROM customers"
        if protocol == "after-a-select":
            sql = "SELECT 1; " + sql
        elif protocol == "after-a-comment":
            sql = "/* migration 42 */\n  " + sql
        msgs = dba.extended(sql) if protocol == "extended" else dba.query(sql)
        assert not errors(msgs)
    finally:
        dba.close()
    deadline = time.monotonic() + 5
    while True:
        ann = _client(policy_gateway)
        try:
            msgs = ann.query(f"SELECT ssn FROM {view} WHERE id = 7")
            received = bytes(ann.received)
        finally:
            ann.close()
        if not errors(msgs) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert not errors(msgs), errors(msgs)
    assert b"000-00-0007" not in received


def test_a_restricted_users_startup_search_path_is_how_names_resolve(gateway_factory, pg_server,
                                                                    sample_db_fresh, tmp_path):
    """A search_path sent at startup (PGOPTIONS, server_settings) reaches PostgreSQL
    and the gateway resolves names with it: "orders" below is the view s2.orders
    over customers.ssn, not public.orders, so the SSN comes back masked. A gateway
    that kept resolving against the default path would pass it in clear."""
    import psycopg
    import time
    with psycopg.connect(sample_db_fresh, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA s2; CREATE VIEW s2.orders AS SELECT id, ssn FROM public.customers; "
                     "GRANT USAGE ON SCHEMA s2 TO gw_user; GRANT SELECT ON s2.orders TO gw_user")
    policy_gateway = gateway_factory(config_text=_policy_config(pg_server, sample_db_fresh.dbname, tmp_path))
    policy_gateway.dbname = sample_db_fresh.dbname
    for params in ({"options": r"-c search_path=s2,\ public"}, {"search_path": "s2, public"}):
        deadline = time.monotonic() + 5
        while True:
            ann = RawClient("127.0.0.1", policy_gateway.port, "ann", PASSWORD, policy_gateway.dbname,
                            params=params)
            try:
                msgs = ann.query("SELECT ssn FROM orders WHERE id = 7")
                received = bytes(ann.received)
            finally:
                ann.close()
            if not errors(msgs) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert not errors(msgs), (params, errors(msgs))
        assert sum(getattr(m, "type", None) == b"D" for m in msgs) == 1, msgs
        assert b"000-00-0007" not in received


@pytest.fixture
def shadow_gateway(gateway_factory, pg_server, sample_db_fresh, tmp_path):
    """public.t holds nothing catalogued; s2.t, a view over customers.ssn, has the
    same shape. Which one "t" means depends on the search_path."""
    import psycopg
    with psycopg.connect(sample_db_fresh, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.t (id int, v text); "
                     "INSERT INTO public.t SELECT i, 'plain-' || i FROM generate_series(1, 10) i; "
                     "CREATE SCHEMA s2; CREATE VIEW s2.t AS SELECT id, ssn AS v FROM public.customers; "
                     "GRANT USAGE ON SCHEMA s2 TO gw_user; GRANT SELECT ON public.t, s2.t TO gw_user")
    gw = gateway_factory(config_text=_policy_config(pg_server, sample_db_fresh.dbname, tmp_path))
    gw.dbname = sample_db_fresh.dbname
    return gw


@pytest.mark.parametrize("reset", ["RESET ALL", "RESET search_path", "SET search_path TO DEFAULT",
                                   "DISCARD ALL"])
def test_reset_goes_back_to_the_startup_search_path_as_postgres_does(shadow_gateway, reset):
    """PostgreSQL resets search_path to the session's start value, and a startup
    setting is that value: after RESET "t" is still s2.t (over customers.ssn). The
    gateway went back to the server's default (public.t) and passed it unmasked
    (found by red-teaming; no leak with the sample schema, one with this one)."""
    ann = RawClient("127.0.0.1", shadow_gateway.port, "ann", PASSWORD, shadow_gateway.dbname,
                    params={"options": r"-c search_path=s2,\ public"})
    try:
        assert not errors(ann.query(reset))
        ann.received.clear()
        msgs = ann.query("SELECT v FROM t WHERE id = 7")
        _assert_one_masked_row(ann, msgs)
    finally:
        ann.close()


def test_notification_payloads_are_withheld_under_policy_even_where_listen_is_allowed(
        gateway_factory, pg_server, sample_db_fresh, tmp_path):
    """The sample trigger sends row_to_json(NEW) of a customer on every update. Where
    a policy lets analysts LISTEN, the notification reaches them with its channel and
    sender but without the payload (nothing in it is masked); users not under policy
    get it whole."""
    import time
    text = _policy_config(pg_server, sample_db_fresh.dbname, tmp_path)
    (tmp_path / "policy.toml").write_text(POLICY + """
[[rule]]
name = "analysts-may-listen"
roles = ["analyst"]
actions = ["session"]
effect = "allow"
""")
    gw = gateway_factory(config_text=text)
    ann = RawClient("127.0.0.1", gw.port, "ann", PASSWORD, sample_db_fresh.dbname)
    dba = RawClient("127.0.0.1", gw.port, "dba", PASSWORD, sample_db_fresh.dbname)
    try:
        for c in (ann, dba):
            assert not errors(c.query("LISTEN customer_events")), c
        dba.received.clear()
        assert not errors(dba.query("UPDATE customers SET city = city WHERE id = 7"))
        assert b"000-00-0007" in dba.received                         # unrestricted: whole
        time.sleep(0.3)
        ann.received.clear()
        assert not errors(ann.query("SELECT 1"))
        assert b"customer_events" in ann.received                     # it arrived
        assert b"000-00-0007" not in ann.received and b'"ssn"' not in ann.received
    finally:
        ann.close()
        dba.close()


def _bind_execute(name: str) -> bytes:
    return (codec.frame(b"B", b"\x00" + name.encode() + b"\x00" + struct.pack("!hhh", 0, 0, 0))
            + codec.frame(b"E", b"\x00" + struct.pack("!i", 0)) + codec.frame(b"S"))


@pytest.mark.parametrize("how", ["protocol", "sql"])
def test_a_duplicate_prepare_does_not_replace_what_the_gateway_knows(shadow_gateway, how):
    """PostgreSQL refuses a second statement of the same name (42P05) and keeps the
    first. The gateway had taken the second as the statement's text, so after a
    search_path change it re-checked "SELECT 1" and let the first (now s2.t, over
    customers.ssn) run in clear. Now what the failed group made is forgotten, and
    executing the name is refused until it is prepared again."""
    ann = _client(shadow_gateway)
    try:
        assert not errors(ann.query("SET search_path = public, s2"))
        if how == "protocol":
            first = ann.prepare("s1", "SELECT v FROM t WHERE id = 7")
            second = ann.prepare("s1", "SELECT 1")
        else:
            first = ann.query("PREPARE s1 AS SELECT v FROM t WHERE id = 7")
            second = ann.query("PREPARE s1 AS SELECT 1")
        assert not errors(first)
        assert [e.sqlstate for e in errors(second)] == ["42P05"]
        assert not errors(ann.query("SET search_path = s2, public"))
        ann.received.clear()
        if how == "protocol":
            ann.sock.sendall(_bind_execute("s1"))
            msgs = ann._until_ready()
        else:
            msgs = ann.query("EXECUTE s1")
        assert errors(msgs), msgs
        assert b"000-00-0007" not in ann.received
    finally:
        ann.close()


def test_a_sql_prepare_bound_at_protocol_level_is_checked_after_a_search_path_change(shadow_gateway):
    """PREPARE p decided as public.t; after SET search_path = s2, public PostgreSQL
    re-plans it as s2.t. EXECUTE p was refused, but a protocol Bind of "p" skipped
    every check and returned the SSN in clear."""
    ann = _client(shadow_gateway)
    try:
        assert not errors(ann.query("SET search_path = public, s2"))
        assert not errors(ann.query("PREPARE p AS SELECT v FROM t WHERE id = 7"))
        assert not errors(ann.query("SET search_path = s2, public"))
        ann.received.clear()
        ann.sock.sendall(_bind_execute("p"))
        msgs = ann._until_ready()
        assert [e.sqlstate for e in errors(msgs)] == ["42501"], msgs
        assert b"000-00-0007" not in ann.received
    finally:
        ann.close()


def _rows(msgs) -> int:
    return sum(getattr(m, "type", None) == b"D" for m in msgs)


def _assert_one_masked_row(client, msgs) -> None:
    """One row of "t" (or a view like it) came back, as neither the SSN nor the plain
    table's value: s2.t, masked."""
    assert not errors(msgs), errors(msgs)
    assert _rows(msgs) == 1, msgs
    assert b"000-00-0007" not in client.received and b"plain-7" not in client.received


def test_a_prepared_statement_is_not_run_after_the_search_path_changed_its_meaning(shadow_gateway):
    """PostgreSQL re-analyses a prepared statement from its text when the
    search_path changes: "t" would then be s2.t, the view over customers.ssn. The
    gateway decided it as public.t, so it refuses the execution and asks for a new
    prepare, which is decided (and masked) as it now reads."""
    ann = _client(shadow_gateway)
    try:
        assert not errors(ann.prepare("q", "SELECT v FROM t WHERE id = 7"))
        msgs = ann.execute("q")
        assert not errors(msgs) and b"plain-7" in ann.received
        assert not errors(ann.query("SET search_path = s2, public"))
        ann.received.clear()
        msgs = ann.execute("q")
        (err,) = errors(msgs)
        assert err.sqlstate == "42501" and "prepared statement 'q' would now read differently" in err.message
        assert "prepare the statement again" in err.fields["H"]
        assert b"000-00-0007" not in ann.received
        # prepared again, it is decided as it reads now: masked
        assert not errors(ann.query("DEALLOCATE q"))
        assert not errors(ann.prepare("q", "SELECT v FROM t WHERE id = 7"))
        ann.received.clear()
        msgs = ann.execute("q")
        _assert_one_masked_row(ann, msgs)
    finally:
        ann.close()


def test_a_prepared_statement_runs_on_after_a_search_path_change_that_changes_nothing(shadow_gateway):
    ann = _client(shadow_gateway)
    try:
        assert not errors(ann.prepare("q", "SELECT v FROM t WHERE id = 7"))
        assert not errors(ann.query("SET search_path = public, s3"))
        ann.received.clear()
        msgs = ann.execute("q")
        assert not errors(msgs), errors(msgs)
        assert b"plain-7" in ann.received
    finally:
        ann.close()


@pytest.mark.parametrize("how", ["query", "extended"])
def test_a_statement_passed_before_is_decided_again_after_a_search_path_change(shadow_gateway, how):
    """The session's memo of statements passed unchanged (the same literal-free
    shape of a Query, the same text of a Parse) holds only under the search_path it
    was decided under: "t" read as public.t several times passes in clear, then as
    s2.t (over customers.ssn) it is masked, and back under public it is plain again."""
    ann = _client(shadow_gateway)
    run = ann.query if how == "query" else ann.extended
    try:
        for i in (3, 4, 7):
            ann.received.clear()
            msgs = run(f"SELECT v FROM t WHERE id = {i}")
            assert not errors(msgs), errors(msgs)
            assert f"plain-{i}".encode() in ann.received
        assert not errors(ann.query("SET search_path = s2, public"))
        for _ in range(2):
            ann.received.clear()
            _assert_one_masked_row(ann, run("SELECT v FROM t WHERE id = 7"))
        assert not errors(ann.query("SET search_path = public"))
        ann.received.clear()
        msgs = run("SELECT v FROM t WHERE id = 7")
        assert not errors(msgs), errors(msgs)
        assert b"plain-7" in ann.received
    finally:
        ann.close()


def test_a_prepared_statement_between_its_parse_and_first_bind(shadow_gateway):
    ann = _client(shadow_gateway)
    try:
        assert not errors(ann.prepare("q", "SELECT v FROM t WHERE id = 7"))
        assert not errors(ann.query("SET search_path = s2, public"))
        msgs = ann.execute("q")
        assert [e.sqlstate for e in errors(msgs)] == ["42501"]
        assert b"000-00-0007" not in ann.received
    finally:
        ann.close()


def test_a_prepared_statement_is_not_run_after_ddl_changed_what_its_names_mean(shadow_gateway):
    """The dba swaps the table t2 for a view over customers.ssn with the same shape;
    PostgreSQL would re-analyse ann's prepared statement against the view. Once the
    gateway has read the new schema, the execution is refused."""
    import time
    dba = _client(shadow_gateway, "dba")
    ann = _client(shadow_gateway)
    try:
        assert not errors(dba.query("CREATE TABLE t2 (id int, v text); "
                                    "INSERT INTO t2 SELECT i, 'plain-' || i FROM generate_series(1, 10) i"))
        deadline = time.monotonic() + 5
        while errors(ann.prepare("q", "SELECT v FROM t2 WHERE id = 7")) and time.monotonic() < deadline:
            time.sleep(0.1)                           # until the gateway has read t2
        msgs = ann.execute("q")
        assert not errors(msgs) and b"plain-7" in ann.received
        assert not errors(dba.query("ALTER TABLE t2 RENAME TO t2_old; "
                                    "CREATE VIEW t2 AS SELECT id, ssn AS v FROM customers"))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:            # until the gateway has read the view
            probe = _client(shadow_gateway)
            try:
                if not errors(probe.query("SELECT v FROM t2 WHERE id = 7")) and b"000-00-0007" not in probe.received:
                    break                             # masked: the gateway knows t2 is the view now
            finally:
                probe.close()
            time.sleep(0.1)
        ann.received.clear()
        msgs = ann.execute("q")
        assert [e.sqlstate for e in errors(msgs)] == ["42501"]
        assert b"000-00-0007" not in ann.received
    finally:
        ann.close()
        dba.close()


@pytest.mark.parametrize("how", ["autocommit", "transaction-block", "extended"])
def test_ddl_committed_in_another_session_is_seen_by_the_very_next_statement(shadow_gateway, how):
    """No window between another session's committed DDL and the gateway reading the
    schema: statements under policy that arrive in it wait for the read. Here the
    dba swaps table t3 for a view over customers.ssn, and ann's next statement is
    masked at once (before, it was decided against the old table until the
    refresh, and PostgreSQL ran it against the view)."""
    dba = _client(shadow_gateway, "dba")
    ann = _client(shadow_gateway)
    try:
        assert not errors(dba.query("CREATE TABLE t3 (id int, v text); "
                                    "INSERT INTO t3 SELECT i, 'plain-' || i FROM generate_series(1, 10) i"))
        msgs = ann.query("SELECT v FROM t3 WHERE id = 7")           # no polling: t3 is known
        assert not errors(msgs), errors(msgs)
        assert b"plain-7" in ann.received
        swap = ["ALTER TABLE t3 RENAME TO t3_old", "CREATE VIEW t3 AS SELECT id, ssn AS v FROM customers"]
        if how == "autocommit":
            assert not errors(dba.query("; ".join(swap)))
        elif how == "transaction-block":
            for sql in ["BEGIN", *swap, "COMMIT"]:
                assert not errors(dba.query(sql))
        else:
            for sql in swap:
                assert not errors(dba.extended(sql))
        ann.received.clear()
        msgs = ann.query("SELECT v FROM t3 WHERE id = 7")
        _assert_one_masked_row(ann, msgs)
    finally:
        ann.close()
        dba.close()


def test_a_burst_of_ddl_costs_a_few_schema_reads_not_one_each(shadow_gateway):
    """A migration's DDL, statement after statement, with nobody under policy waiting:
    the gateway lets the burst finish before it reads the schema (a read of a large
    schema blocks the event loop for tenths of a second; asyncpg's own test suite
    creates 1,000 tables in a row). A statement under policy that comes meanwhile
    asks for the read at once and sees the DDL before it."""
    runtime = shadow_gateway.runtime
    dba = _client(shadow_gateway, "dba")
    ann = _client(shadow_gateway)
    try:
        before = runtime.schema_reads
        for i in range(100):
            assert not errors(dba.query(f"CREATE TABLE burst_{i} (id int, v text)"))
        assert runtime.schema_reads - before <= 1, runtime.schema_reads - before
        assert not errors(dba.query("CREATE VIEW burst_v AS SELECT id, ssn AS v FROM customers"))
        msgs = ann.query("SELECT v FROM burst_v WHERE id = 7")
        assert not errors(msgs), errors(msgs)
        assert _rows(msgs) == 1 and b"000-00-0007" not in ann.received
    finally:
        ann.close()
        dba.close()


@pytest.mark.parametrize("how", ["set", "startup"])
def test_a_schema_named_after_the_upstream_role_is_searched_as_postgres_does(
        gateway_factory, pg_server, sample_db_fresh, tmp_path, how):
    """search_path = "$user", public (PostgreSQL's own default) searches a schema
    named after the role the session runs as first. The gateway must too: here
    gw_user.t, a view over customers.ssn, shadows the harmless public.t."""
    import psycopg
    with psycopg.connect(sample_db_fresh, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.t (id int, v text); "
                     "INSERT INTO public.t SELECT i, 'plain-' || i FROM generate_series(1, 10) i; "
                     "CREATE SCHEMA gw_user; CREATE VIEW gw_user.t AS SELECT id, ssn AS v FROM public.customers; "
                     "GRANT USAGE ON SCHEMA gw_user TO gw_user; GRANT SELECT ON public.t, gw_user.t TO gw_user")
    gw = gateway_factory(config_text=_policy_config(pg_server, sample_db_fresh.dbname, tmp_path))
    params = {"search_path": '"$user", public'} if how == "startup" else None
    ann = RawClient("127.0.0.1", gw.port, "ann", PASSWORD, sample_db_fresh.dbname, params=params)
    try:
        if how == "set":
            assert not errors(ann.query('SET search_path = "$user", public'))
        msgs = ann.query("SELECT v FROM t WHERE id = 7")
        assert not errors(msgs), errors(msgs)
        assert _rows(msgs) == 1
        assert b"000-00-0007" not in ann.received and b"plain-7" not in ann.received   # gw_user.t, masked
    finally:
        ann.close()


def test_sessions_under_policy_read_strings_as_the_gateway_does(gateway_factory, pg_server, sample_db_fresh,
                                                                tmp_path):
    """A database whose default is standard_conforming_strings = off would make
    PostgreSQL read backslashes in literals differently from the analyser; the
    gateway starts sessions under policy with it on, and unrestricted ones as the
    database says."""
    import psycopg
    with psycopg.connect(sample_db_fresh, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{sample_db_fresh.dbname}" SET standard_conforming_strings = off')
    gw = gateway_factory(config_text=_policy_config(pg_server, sample_db_fresh.dbname, tmp_path))
    for user, expected in (("ann", b"on"), ("dba", b"off")):
        c = RawClient("127.0.0.1", gw.port, user, PASSWORD, sample_db_fresh.dbname)
        try:
            msgs = c.query("SELECT current_setting('standard_conforming_strings') AS scs")
            assert not errors(msgs), errors(msgs)
            (row,) = [m for m in msgs if getattr(m, "type", None) == b"D"]
            assert row.body.endswith(expected), (user, row.body)
            if user == "ann":
                msgs = c.query("RESET ALL")               # back to the session's start: still on
                assert not errors(msgs)
                c.received.clear()
                c.query("SELECT current_setting('standard_conforming_strings')")
                assert b"on" in c.received
        finally:
            c.close()


@pytest.mark.parametrize("sql", ["RESET ROLE", "SET ROLE NONE", "SET SESSION AUTHORIZATION DEFAULT",
                                 "RESET SESSION AUTHORIZATION", "SET standard_conforming_strings = on"])
def test_session_statements_that_change_nothing_are_allowed(policy_gateway, sql):
    ann = _client(policy_gateway)
    try:
        assert not errors(ann.query(sql))
    finally:
        ann.close()


@pytest.mark.parametrize("sql", ["SET ROLE postgres", "SET SESSION AUTHORIZATION postgres",
                                 "SET standard_conforming_strings = off", "RESET standard_conforming_strings"])
def test_session_statements_that_change_reading_or_rights_are_denied(policy_gateway, sql):
    ann = _client(policy_gateway)
    try:
        assert [e.sqlstate for e in errors(ann.query(sql))] == ["42501"]
    finally:
        ann.close()


@pytest.mark.parametrize("how", ["set", "startup"])
def test_pg_catalog_cannot_be_put_after_a_schema_that_shadows_builtins(gateway_factory, pg_server,
                                                                       sample_db_fresh, tmp_path, how):
    """public.lower(text) returns an SSN; with search_path = public, pg_catalog it
    would be what lower('x') calls, while the analyser reads the built-in."""
    import psycopg
    with psycopg.connect(sample_db_fresh, autocommit=True) as conn:
        conn.execute("CREATE FUNCTION public.lower(text) RETURNS text LANGUAGE sql SECURITY DEFINER "
                     "AS $$ SELECT ssn FROM public.customers WHERE id = 7 $$; "
                     "GRANT EXECUTE ON FUNCTION public.lower(text) TO gw_user")
    gw = gateway_factory(config_text=_policy_config(pg_server, sample_db_fresh.dbname, tmp_path))
    path = "public, pg_catalog"
    if how == "startup":
        with pytest.raises(ConnectionError) as exc:
            RawClient("127.0.0.1", gw.port, "ann", PASSWORD, sample_db_fresh.dbname,
                      params={"options": f"-c search_path={path.replace(' ', '')}"})
        assert str(exc.value).startswith("42501: ") and "pg_catalog after another schema" in str(exc.value)
        return
    ann = RawClient("127.0.0.1", gw.port, "ann", PASSWORD, sample_db_fresh.dbname)
    try:
        (err,) = errors(ann.query(f"SET search_path = {path}"))
        assert err.sqlstate == "42501" and "pg_catalog after" in err.message
        ann.query("SELECT lower('X')")           # denied or the built-in: never public.lower
        msgs = ann.query("SELECT upper('x')")
        assert not errors(msgs)
        assert b"000-00-0007" not in ann.received and b"X" in ann.received
        assert not errors(ann.query("SET search_path = pg_catalog, public"))     # first: fine
    finally:
        ann.close()


@pytest.mark.parametrize("change", ["SET search_path = public", "RESET ALL", "DISCARD ALL"])
def test_a_search_path_change_pipelined_behind_begin_cannot_be_rolled_back_behind_the_gateway(
        shadow_gateway, change):
    """BEGIN and the change sent in one write: the gateway sees the change while the
    BEGIN is still running (the last ReadyForQuery said idle), so it would take it
    as final; a ROLLBACK then restores "s2, public" in PostgreSQL while the gateway
    resolved with the changed path, and "t" (s2.t, over customers.ssn) passed in
    clear. The change is refused instead."""
    ann = _client(shadow_gateway)
    try:
        assert not errors(ann.query("SET search_path = s2, public"))
        ann.sock.sendall(codec.encode_query("BEGIN") + codec.encode_query(change))
        first, second = ann._until_ready(), ann._until_ready()
        assert not errors(first)
        assert [e.sqlstate for e in errors(second)] == ["42501"]
        assert not errors(ann.query("ROLLBACK"))
        ann.received.clear()
        msgs = ann.query("SELECT v FROM t WHERE id = 7")
        assert not errors(msgs), errors(msgs)
        assert b"000-00-0007" not in ann.received
    finally:
        ann.close()


def test_reset_all_ending_a_query_is_allowed_but_not_after_begin(shadow_gateway):
    """asyncpg's pool resets a connection with one Query ending in RESET ALL: as the
    last statement it is final, and the path goes back to the session's start. After
    a BEGIN in the same Query a ROLLBACK could undo it behind the gateway's back, so
    it is refused there (and "t" still means s2.t, masked)."""
    ann = _client(shadow_gateway)
    try:
        assert not errors(ann.query("SET search_path = s2, public"))
        msgs = ann.query("SELECT pg_catalog.pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL")
        assert not errors(msgs), errors(msgs)
        ann.received.clear()
        assert not errors(ann.query("SELECT v FROM t WHERE id = 7")) and b"plain-7" in ann.received
        for sql in ("SET search_path = s2, public; BEGIN; RESET ALL", "BEGIN; SET search_path = public"):
            assert not errors(ann.query("SET search_path = s2, public"))
            assert [e.sqlstate for e in errors(ann.query(sql))] == ["42501"], sql
            ann.query("ROLLBACK")
            ann.received.clear()
            msgs = ann.query("SELECT v FROM t WHERE id = 7")
            _assert_one_masked_row(ann, msgs)
    finally:
        ann.close()


def test_reset_all_after_a_failing_statement_in_the_same_query_ends_the_session(shadow_gateway):
    """"SELECT 1/0; RESET ALL": the error skips RESET ALL, so the path PostgreSQL
    keeps (s2 first: "t" is the view over customers.ssn) is not the one the gateway
    took; it cannot go on deciding for this session and closes it."""
    ann = _client(shadow_gateway)
    try:
        assert not errors(ann.query("SET search_path = s2, public"))
        ann.sock.sendall(codec.encode_query("SELECT 1/0; RESET ALL"))
        msgs = []
        with pytest.raises(ConnectionError):
            while True:
                msgs.append(ann._next())
        assert [e.sqlstate for e in errors(msgs)] == ["22012", "42501"], msgs
        assert b"000-00-0007" not in ann.received
    finally:
        ann.close()
    # pipelined right behind it, a statement cannot be decided until the change is known
    ann = _client(shadow_gateway)
    try:
        assert not errors(ann.query("SET search_path = s2, public"))
        ann.sock.sendall(codec.encode_query("SELECT 1/0; RESET ALL") + codec.encode_query("SELECT v FROM t"))
        msgs = []
        with pytest.raises(ConnectionError):
            while True:
                msgs.append(ann._next())
        codes = [e.sqlstate for e in errors(msgs)]
        assert codes[0] == "22012" and set(codes[1:]) == {"42501"}, msgs   # refused, or ended first
        assert errors(msgs)[-1].fields["S"] == "FATAL"
        assert b"000-00-0007" not in ann.received and b"plain-7" not in ann.received
    finally:
        ann.close()


def test_a_refusal_pipelined_behind_other_queries_keeps_its_message(policy_gateway):
    """Three Queries in one write, the last refused: its error arrives after two
    ReadyForQuery messages and is still the gateway's 42501, not the marker's 42883."""
    ann = _client(policy_gateway)
    try:
        ann.sock.sendall(codec.encode_query("SELECT 1") + codec.encode_query("SELECT 2")
                         + codec.encode_query("SET ROLE postgres"))
        answers = [ann._until_ready() for _ in range(3)]
        assert not errors(answers[0]) and not errors(answers[1])
        (err,) = errors(answers[2])
        assert err.sqlstate == "42501" and err.message.startswith("p"), err.fields
        assert "piigate_refused" not in err.message
        assert not errors(ann.query("SELECT 3"))
    finally:
        ann.close()


def test_a_statement_sent_while_another_sessions_ddl_is_open_waits_for_it(shadow_gateway):
    """The dba swaps t4 for a view over customers.ssn inside an open transaction.
    Forwarded at once, ann's statement would block on the DDL's lock and, after the
    COMMIT, PostgreSQL would resolve "t4" to the view: decided as the old table, it
    came back in clear. The gateway holds it until the DDL's transaction has ended
    and the schema is read, then decides it against the view (masked)."""
    import threading
    import time
    dba = _client(shadow_gateway, "dba")
    ann = _client(shadow_gateway)
    try:
        assert not errors(dba.query("CREATE TABLE t4 (id int, v text); "
                                    "INSERT INTO t4 SELECT i, 'plain-' || i FROM generate_series(1, 10) i"))
        assert not errors(ann.query("SELECT v FROM t4 WHERE id = 7"))
        for sql in ("BEGIN", "ALTER TABLE t4 RENAME TO t4_old",
                    "CREATE VIEW t4 AS SELECT id, ssn AS v FROM customers"):
            assert not errors(dba.query(sql))
        ann.received.clear()
        answer: list = []
        asking = threading.Thread(target=lambda: answer.append(ann.query("SELECT v FROM t4 WHERE id = 7")))
        asking.start()
        time.sleep(0.5)
        assert not answer                                   # held (or blocked on the lock)
        assert not errors(dba.query("COMMIT"))
        asking.join(10)
        (msgs,) = answer
        assert not errors(msgs), errors(msgs)
        assert b"000-00-0007" not in ann.received and b"plain-7" not in ann.received
    finally:
        ann.close()
        dba.close()


def test_a_statement_held_for_a_schema_read_can_be_cancelled(shadow_gateway):
    """Ctrl-C while a statement waits for another session's DDL to end: the wait ends
    at once with 57014, the statement never runs, and the session goes on."""
    import socket
    import threading
    import time
    dba = _client(shadow_gateway, "dba")
    ann = _client(shadow_gateway)
    try:
        assert not errors(dba.query("CREATE TABLE t5 (id int, v text)"))
        assert not errors(dba.query("BEGIN"))
        assert not errors(dba.query("ALTER TABLE t5 ADD COLUMN w text"))
        answer: list = []
        asking = threading.Thread(target=lambda: answer.append(ann.query("SELECT v FROM t5")))
        asking.start()
        time.sleep(0.3)
        assert not answer                                   # held: the DDL's transaction is open
        t0 = time.monotonic()
        with socket.create_connection(("127.0.0.1", shadow_gateway.port), timeout=5) as k:
            k.sendall(codec.encode_cancel(ann.key.pid, ann.key.secret))
            assert k.recv(1) == b""                         # no answer, as PostgreSQL does
        asking.join(10)
        (msgs,) = answer
        assert [e.sqlstate for e in errors(msgs)] == ["57014"], msgs
        assert time.monotonic() - t0 < 2                    # not the 5 s bound of the hold
        assert not errors(dba.query("COMMIT"))
        assert not errors(ann.query("SELECT v FROM t5"))
    finally:
        ann.close()
        dba.close()


def test_a_refused_parse_pipelined_behind_another_sync_keeps_its_message(policy_gateway):
    """The extended protocol: two Parse/Bind/Execute/Sync groups in one write, the
    second refused; its error comes after the first ReadyForQuery and is still ours."""
    import struct
    ann = _client(policy_gateway)

    def group(sql: str) -> bytes:
        return (codec.encode_parse("", sql) + codec.frame(b"B", b"\x00\x00" + struct.pack("!hhh", 0, 0, 0))
                + codec.frame(b"E", b"\x00" + struct.pack("!i", 0)) + codec.frame(b"S"))

    try:
        ann.sock.sendall(group("SELECT 1") + group("SET ROLE postgres"))
        first, second = ann._until_ready(), ann._until_ready()
        assert not errors(first)
        (err,) = errors(second)
        assert err.sqlstate == "42501" and "piigate_refused" not in err.message, err.fields
    finally:
        ann.close()


def test_sql_prepare_execute_after_the_search_path_changed_its_meaning(shadow_gateway):
    ann = _client(shadow_gateway)
    try:
        assert not errors(ann.query("PREPARE p AS SELECT v FROM t WHERE id = 7"))
        msgs = ann.query("EXECUTE p")
        assert not errors(msgs) and b"plain-7" in ann.received
        assert not errors(ann.query("SET search_path = s2, public"))
        ann.received.clear()
        msgs = ann.query("EXECUTE p")
        (err,) = errors(msgs)
        assert err.sqlstate == "42501" and "would now read differently" in err.message
        assert b"000-00-0007" not in ann.received
    finally:
        ann.close()


@pytest.mark.parametrize("params,words", [
    ({"options": "-c role=postgres"}, "changes the database role"),
    ({"options": "-c standard_conforming_strings=off"}, "changes how string literals are read"),
    ({"session_authorization": "postgres"}, "changes the database role"),
    ({"options": "-c log_statement=none"}, '"log_statement" is not allowed'),
])
def test_a_restricted_user_cannot_change_reading_or_rights_at_startup(policy_gateway, params, words):
    with pytest.raises(ConnectionError) as exc:
        RawClient("127.0.0.1", policy_gateway.port, "ann", PASSWORD, policy_gateway.dbname, params=params)
    assert str(exc.value).startswith("42501: ")
    assert words in str(exc.value)


def test_an_unrestricted_users_startup_settings_are_their_own_business(policy_gateway):
    dba = RawClient("127.0.0.1", policy_gateway.port, "dba", PASSWORD, policy_gateway.dbname,
                    params={"options": "-c standard_conforming_strings=off"})
    try:
        assert not errors(dba.query("SELECT current_setting('standard_conforming_strings')"))
        assert b"off" in dba.received
    finally:
        dba.close()


def test_a_restricted_user_keeps_harmless_startup_settings(policy_gateway):
    ann = RawClient("127.0.0.1", policy_gateway.port, "ann", PASSWORD, policy_gateway.dbname,
                    params={"options": "-c DateStyle=German --statement-timeout=7s"})
    try:
        msgs = ann.query("SELECT current_setting('DateStyle'), current_setting('statement_timeout'), "
                         "DATE '2026-11-29'")
        assert not errors(msgs), errors(msgs)
        assert b"German, DMY" in ann.received and b"7s" in ann.received and b"29.11.2026" in ann.received
    finally:
        ann.close()


async def test_masked_results_keep_names_order_and_types(policy_gateway, sample_db_fresh):
    sql = "SELECT * FROM customers ORDER BY id LIMIT 5"
    direct = await asyncpg.connect(sample_db_fresh.dsn)
    masked = await asyncpg.connect(policy_gateway.dsn(policy_gateway.dbname, user="ann"))
    try:
        d_stmt = await direct.prepare(sql)
        m_stmt = await masked.prepare(sql)
        assert [(a.name, a.type.name) for a in d_stmt.get_attributes()] == \
               [(a.name, a.type.name) for a in m_stmt.get_attributes()]
        d_rows, m_rows = await d_stmt.fetch(), await m_stmt.fetch()
        assert [r["id"] for r in d_rows] == [r["id"] for r in m_rows]
        assert [r["city"] for r in d_rows] == [r["city"] for r in m_rows]
        for d, m in zip(d_rows, m_rows):
            assert m["ssn"] != d["ssn"]
            assert m["email"].endswith("@example.invalid") and m["email"] != d["email"]
            assert m["dob"] != d["dob"]
    finally:
        await direct.close()
        await masked.close()


async def test_a_protocol_level_portal_is_a_cursor_to_sql_too(policy_gateway, sample_db_fresh):
    """asyncpg's cursor binds a named portal and moves it with SQL (MOVE FORWARD n
    <portal>): the gateway knows the portal from the Bind, decided (and masked) as
    its statement was, so MOVE and FETCH on it pass and still read masked rows."""
    direct = await asyncpg.connect(sample_db_fresh.dsn)
    gw = await asyncpg.connect(policy_gateway.dsn(policy_gateway.dbname, user="ann"))
    try:
        sql = "SELECT id, city, ssn FROM customers ORDER BY id"
        async with gw.transaction():
            cur = await gw.cursor(sql)
            await cur.forward(2)
            row = await cur.fetchrow()
        expected = (await direct.fetch(sql))[2]
        assert (row["id"], row["city"]) == (expected["id"], expected["city"])
        assert row["ssn"] != expected["ssn"]
        with pytest.raises(asyncpg.PostgresError) as refused:       # a portal it never bound
            async with gw.transaction():
                await gw.execute("MOVE FORWARD 1 not_bound_here")
        assert refused.value.sqlstate == "42501"
    finally:
        await direct.close()
        await gw.close()


async def test_non_pii_statements_return_exactly_what_postgres_returns(policy_gateway, sample_db_fresh):
    queries = ["SELECT id, customer_id, amount FROM orders ORDER BY id",
               "SELECT city, count(*) FROM customers GROUP BY city ORDER BY city",
               "SELECT sum(amount), avg(amount) FROM orders",
               "SELECT now() IS NOT NULL, version() IS NOT NULL"]
    direct = await asyncpg.connect(sample_db_fresh.dsn)
    gw = await asyncpg.connect(policy_gateway.dsn(policy_gateway.dbname, user="ann"))
    try:
        for q in queries:
            assert [tuple(r) for r in await gw.fetch(q)] == [tuple(r) for r in await direct.fetch(q)], q
    finally:
        await direct.close()
        await gw.close()


def test_denial_names_rule_and_session_continues(policy_gateway):
    client = _client(policy_gateway)
    try:
        msgs = client.query("COPY customers TO STDOUT")
        errs = errors(msgs)
        assert errs and errs[0].sqlstate == "42501"
        assert "rule" in errs[0].message or "default" in errs[0].message
        msgs = client.query("SELECT count(*) FROM orders")
        assert not errors(msgs)
        # in a transaction: the usual aborted-transaction semantics
        client.query("BEGIN")
        errs = errors(client.query("COPY customers TO STDOUT"))
        assert errs[0].sqlstate == "42501"
        errs = errors(client.query("SELECT 1"))
        assert errs and errs[0].sqlstate == "25P02"
        client.query("ROLLBACK")
        assert not errors(client.query("SELECT 1"))
    finally:
        client.close()


def test_refusal_in_the_middle_of_a_multi_statement_query(policy_gateway):
    client = _client(policy_gateway)
    try:
        msgs = client.query("SELECT 1; COPY customers TO STDOUT; SELECT 2")
        errs = errors(msgs)
        assert len(errs) == 1 and errs[0].sqlstate == "42501"
        # PostgreSQL runs the statements before the failing one and none after it
        assert b"\x00\x00\x00\x011" in bytes(client.received) or b"1" in bytes(client.received)
    finally:
        client.close()


@pytest.mark.parametrize("body, sqlstate", [
    (b"SELECT ssn FROM customers", "08P01"),                        # no terminator
    (b"SELECT 1\x00SELECT ssn FROM customers\x00", "08P01"),         # a NUL inside
    (b"SELECT '\xff\xfe' FROM customers\x00", "22021"),             # not UTF-8
])
def test_a_malformed_query_under_policy_closes_only_that_session(policy_gateway, body, sqlstate):
    from gateway.protocol import codec
    client = _client(policy_gateway)
    try:
        client.sock.sendall(codec.frame(b"Q", body))
        with pytest.raises(ConnectionError):
            while True:
                client._next()
        assert sqlstate.encode() in bytes(client.received)
        assert b"000-00-" not in bytes(client.received)
    finally:
        client.close()
    other = _client(policy_gateway)
    try:
        assert not errors(other.query("SELECT id FROM customers WHERE id = 1"))
    finally:
        other.close()


@pytest.mark.parametrize("payload", [
    b"SELECT ssn FROM customers WHERE id = 7 /* \xff\xfe */",            # not UTF-8
    b"SELECT 1\x00SELECT ssn FROM customers WHERE id = 7",              # a NUL inside the text
    b"SELECT ssn FROM customers WHERE id = 7 -- \xc3",                  # a cut multibyte character
])
def test_malformed_query_text_never_reaches_postgres_in_clear(policy_gateway, payload):
    """Query bytes the gateway cannot read as the session's encoding, or with a NUL
    inside: refused (or the connection closed as a protocol violation), never
    forwarded for PostgreSQL to read its own way."""
    ann = _client(policy_gateway)
    try:
        ann.sock.sendall(b"Q" + struct.pack("!i", len(payload) + 5) + payload + b"\x00")
        try:
            msgs = ann._until_ready()
        except ConnectionError:
            msgs = None                                      # 08P01: this connection closed
        if msgs is not None:
            assert errors(msgs), msgs
        assert b"000-00-0007" not in ann.received
    finally:
        ann.close()


def test_a_masked_portal_read_in_pieces_stays_masked(policy_gateway):
    """Execute with a row limit (PortalSuspended) and again: every piece comes from
    the rewritten statement."""
    ann = _client(policy_gateway)
    try:
        ann.sock.sendall(codec.encode_parse("", "SELECT id, ssn FROM customers ORDER BY id")
                         + codec.frame(b"B", b"\x00\x00" + struct.pack("!hhh", 0, 0, 0))
                         + codec.frame(b"E", b"\x00" + struct.pack("!i", 3))
                         + codec.frame(b"E", b"\x00" + struct.pack("!i", 3))
                         + codec.frame(b"S"))
        msgs = ann._until_ready()
        assert not errors(msgs), errors(msgs)
        assert sum(getattr(m, "type", None) == b"s" for m in msgs) == 2     # PortalSuspended twice
        assert _rows(msgs) == 6
        assert b"000-00-000" not in ann.received
    finally:
        ann.close()
