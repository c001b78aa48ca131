"""SQL text -> StatementFacts, one per statement (pure).

The front end is pglast (libpg_query: PostgreSQL's own lexer and grammar), so
statement splitting, identifier case folding, ``U&"..."`` escapes, comments,
dollar quotes and ``OPERATOR()`` syntax are read exactly as the server reads them.
Each statement node type is dispatched explicitly; a type not listed here is
``StatementKind.UNKNOWN``. Query-level analysis lives in ``queries.py``.

Known limits, by design fail-closed or documented:
- Temporary relations: PostgreSQL searches ``pg_temp`` first. The analyzer does
  the same for relations the caller puts into the LiveSchema under schema
  ``pg_temp``; ``StatementFacts.creates`` names every temp relation a statement
  creates so the session can add it (a relation with no known columns makes
  every column reference to it unknown).
- Operators: one qualified with a schema other than pg_catalog is unknown; an
  unqualified one is judged as a call of every operator function of that name
  outside pg_catalog on the path (``functions.operator_candidates``).
- DDL bodies other than views, CREATE TABLE AS and SELECT INTO (index
  expressions, policies, defaults) are not walked: DDL is its own action.
"""
from __future__ import annotations

import dataclasses
import logging
import re

import orjson
from pglast import parser

from catalog.model import RelationRef
from gateway.analysis.facts import ColumnUse, StatementFacts, StatementKind as K
from gateway.analysis.queries import RETURNED, OTHER, PREDICATE, WRITTEN, Scope, Walk, _names
from gateway.analysis.scope import SENSITIVE_COLUMN_RELATIONS, SENSITIVE_SYSTEM_COLUMNS
from gateway.schema import LiveSchema

#: settings that change how SQL is read or resolved, or who runs it
SESSION_SETTINGS = frozenset({
    "role", "session_authorization", "search_path", "standard_conforming_strings",
    "backslash_quote", "client_encoding", "session_replication_role", "row_security",
    "session_preload_libraries", "local_preload_libraries", "default_transaction_read_only",
    "lc_messages",      # translated errors quote values differently (the scrubber knows the common quotes)
})
#: settings whose output shows values no masking reaches: plan and parse-tree dumps
#: (debug_print_plan prints a trigger's custom plan, NEW's column values included as
#: constants), trace output, PL/pgSQL printing function parameters in errors
REVEALING_SETTING_PREFIXES = ("debug_", "trace_", "plpgsql.")
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def setting_name(name: str) -> str:
    """A setting's name as PostgreSQL looks it up: without regard to ASCII case,
    quoted or not (SET "SEARCH_PATH" = ... is search_path)."""
    return name.translate(_ASCII_LOWER)

_TRANSACTION_COMMANDS = {
    "TRANS_STMT_BEGIN": "BEGIN", "TRANS_STMT_START": "START TRANSACTION",
    "TRANS_STMT_COMMIT": "COMMIT", "TRANS_STMT_ROLLBACK": "ROLLBACK",
    "TRANS_STMT_SAVEPOINT": "SAVEPOINT", "TRANS_STMT_RELEASE": "RELEASE",
    "TRANS_STMT_ROLLBACK_TO": "ROLLBACK TO SAVEPOINT", "TRANS_STMT_PREPARE": "PREPARE TRANSACTION",
    "TRANS_STMT_COMMIT_PREPARED": "COMMIT PREPARED", "TRANS_STMT_ROLLBACK_PREPARED": "ROLLBACK PREPARED",
}

_UTILITY = {
    "LockStmt": "LOCK", "CheckPointStmt": "CHECKPOINT", "LoadStmt": "LOAD",
    "ClusterStmt": "CLUSTER", "ReindexStmt": "REINDEX", "ConstraintsSetStmt": "SET CONSTRAINTS",
}

_DDL_NAMES = {
    "CreateStmt": "CREATE TABLE", "IndexStmt": "CREATE INDEX", "ViewStmt": "CREATE VIEW",
    "CommentStmt": "COMMENT", "TruncateStmt": "TRUNCATE", "RuleStmt": "CREATE RULE",
    "RefreshMatViewStmt": "REFRESH MATERIALIZED VIEW", "CreateTrigStmt": "CREATE TRIGGER",
    "CompositeTypeStmt": "CREATE TYPE", "CreateSchemaStmt": "CREATE SCHEMA",
    "CreatePolicyStmt": "CREATE POLICY", "AlterRoleSetStmt": "ALTER ROLE SET",
    "AlterDatabaseSetStmt": "ALTER DATABASE SET", "AlterSystemStmt": "ALTER SYSTEM",
    "SecLabelStmt": "SECURITY LABEL", "CreatedbStmt": "CREATE DATABASE", "DropdbStmt": "DROP DATABASE",
    "ReassignOwnedStmt": "REASSIGN OWNED", "ImportForeignSchemaStmt": "IMPORT FOREIGN SCHEMA",
    "RenameStmt": "RENAME", "CreateSeqStmt": "CREATE SEQUENCE",
}
_DDL_PREFIXES = ("Create", "Alter", "Drop", "Define", "Grant", "Reassign", "Import", "Rename")

#: kinds whose relations the analysis tracks completely (sqlglot cross-check applies)
_CROSSCHECKED = frozenset({K.SELECT, K.INSERT, K.UPDATE, K.DELETE, K.MERGE, K.COPY_TO, K.COPY_FROM})
_CROSSCHECKED_DDL = frozenset({"CREATE VIEW", "CREATE TABLE AS", "CREATE MATERIALIZED VIEW", "SELECT INTO"})
#: kinds that evaluate expressions (where a cast may run); wrappers carry their inner's
_WITH_EXPRESSIONS = _CROSSCHECKED | frozenset({K.CALL, K.PREPARE})

logging.getLogger("sqlglot").setLevel(logging.CRITICAL)


@dataclasses.dataclass(slots=True)
class Analysed:
    """Facts plus what the cache must know about how they were obtained."""
    facts: StatementFacts
    literal_dependent: bool
    prefix: int = 0     # characters of the full text before this statement
    suffix: int = 0     # characters after it


def analyze_text(sql: str, schema: LiveSchema, search_path: tuple[str, ...],
                 extended: bool) -> list[Analysed]:
    search_path = tuple(search_path)
    if "\x00" in sql:
        # libpg_query (a C string) and the server's Query message both stop at
        # the first NUL; whatever follows must never be forwarded or trusted
        return [Analysed(StatementFacts(K.UNKNOWN, sql, unknown="the text contains a NUL character"), False)]
    try:
        tree = orjson.loads(parser.parse_sql_json(sql))
    except Exception as e:  # noqa: BLE001 - pglast.parser.ParseError and friends
        return [Analysed(StatementFacts(K.UNKNOWN, sql, unknown=f"parse error: {_error_text(e)}",
                                        redacted_sql=_safe_normalize(sql)), False)]
    stmts = tree.get("stmts", [])
    if not stmts:
        return [Analysed(StatementFacts(K.EMPTY, sql), False)]
    if extended and len(stmts) > 1:
        return [Analysed(StatementFacts(
            K.UNKNOWN, sql, redacted_sql=_safe_normalize(sql),
            unknown=f"an extended-protocol Parse carries {len(stmts)} statements; PostgreSQL accepts one"), False)]
    raw = sql.encode("utf-8")
    out = []
    for st in stmts:
        loc = st.get("stmt_location", 0)
        ln = st.get("stmt_len", 0)
        piece = raw[loc:loc + ln] if ln else raw[loc:]
        text_full = piece.decode("utf-8", errors="replace")
        text = text_full.strip()
        before = len(raw[:loc].decode("utf-8", errors="replace")) + (len(text_full) - len(text_full.lstrip()))
        after = len(sql) - before - len(text)
        node = st.get("stmt")
        if not node:
            out.append(Analysed(StatementFacts(K.EMPTY, text), False, before, after))
            continue
        facts, lit = statement_facts(node, text, schema, search_path, extended)
        out.append(Analysed(facts, lit, before, after))
    return out


def _error_text(e: Exception) -> str:
    """The parser's message without the offending token: the token may be a
    literal (a guessed SSN) and reasons end up in audit records."""
    args = getattr(e, "args", ())
    msg = str(args[0]) if args else type(e).__name__
    msg = re.sub(r'at or near ".*"$', "", msg, flags=re.S).strip()
    if len(args) > 1 and isinstance(args[1], int):
        msg += f" at character {args[1] + 1}"
    return msg


def _safe_normalize(text: str) -> str:
    try:
        return parser.normalize(text)
    except Exception:  # noqa: BLE001 - unparsable text: log nothing of it
        return ""


def _fingerprint(text: str) -> str:
    try:
        return parser.fingerprint(text)
    except Exception:  # noqa: BLE001
        return ""


def statement_facts(node: dict, text: str, schema: LiveSchema, search_path: tuple[str, ...],
                    extended: bool) -> tuple[StatementFacts, bool]:
    """Facts for one parsed statement node (``{"SelectStmt": {...}}``)."""
    walk = Walk(schema, search_path)
    (kind_name, body), = node.items()
    extra: dict = {}
    try:
        kind, command = _dispatch(kind_name, body, walk, text, schema, search_path, extended, extra)
        if kind in (K.DDL, K.UTILITY):
            _objects(kind, kind_name, body, walk)
    except RecursionError:
        kind, command = K.UNKNOWN, kind_name
        walk.fail("statement nests too deeply to analyse")
    if (kind in _CROSSCHECKED or command in _CROSSCHECKED_DDL) and not walk.reasons:
        created = extra.get("creates")
        missing = crosscheck(text, walk.names_seen | ({created.name} if created else set()))
        if missing:
            walk.fail("analyzers disagree: sqlglot reads relation(s) "
                      + ", ".join(sorted(missing)) + " that the PostgreSQL parse did not resolve")
    if kind in _WITH_EXPRESSIONS or command in _CROSSCHECKED_DDL:
        from gateway.analysis.functions import opaque_casts
        for f in opaque_casts(schema):
            walk.functions.add(f"{f.schema}.{f.name}")
            walk.fail(f"the database has a cast to {f.name[len('cast '):]} whose function (schema {f.schema}) "
                      "the analyzer cannot see into, and PostgreSQL may apply it to any value, implicitly too")
    if walk.read and not SENSITIVE_COLUMN_RELATIONS.isdisjoint(walk.read):
        for c in sorted(SENSITIVE_SYSTEM_COLUMNS.intersection(walk.uses), key=str):
            walk.fail(f"reads {c}, the source of database code (which can hold any value its author wrote "
                      "into it)")
    if kind == K.UNKNOWN and not walk.reasons:
        walk.fail(f"statement type {kind_name} is not modelled")
    inner: StatementFacts | None = extra.pop("inner", None)
    inner_lit = extra.pop("_lit", False)
    facts = StatementFacts(
        kind=kind, sql=text, fingerprint=_fingerprint(text), redacted_sql=_safe_normalize(text),
        relations_read=frozenset(walk.read), relations_written=frozenset(walk.written),
        columns=tuple(ColumnUse(c, frozenset(u)) for c, u in sorted(walk.uses.items())),
        functions=frozenset(walk.functions),
        unknown="; ".join(walk.reasons) if walk.reasons else None,
        command=command, param_count=walk.param_max, dynamic=tuple(walk.dynamic), **extra)
    if inner is not None:
        facts = _with_inner(facts, inner)
        if facts.prepared_name is None and inner.prepared_name is not None:   # EXPLAIN EXECUTE p
            facts = dataclasses.replace(facts, prepared_name=inner.prepared_name)
    return facts, walk.literal_dependent or inner_lit


def _with_inner(outer: StatementFacts, inner: StatementFacts) -> StatementFacts:
    """An outer statement (DECLARE, PREPARE, EXPLAIN) carries its inner
    statement's facts and also reports them itself, so a policy that only looks
    at the outer facts still sees every column."""
    uses: dict = {u.column: set(u.usages) for u in outer.columns}
    for u in inner.columns:
        uses.setdefault(u.column, set()).update(u.usages)
    reasons = [r for r in (outer.unknown, inner.unknown) if r]
    return dataclasses.replace(
        outer, inner=inner,
        relations_read=outer.relations_read | inner.relations_read,
        relations_written=outer.relations_written | inner.relations_written,
        columns=tuple(ColumnUse(c, frozenset(u)) for c, u in sorted(uses.items())),
        functions=outer.functions | inner.functions,
        unknown="; ".join(reasons) if reasons else None,
        dynamic=tuple(dict.fromkeys(outer.dynamic + inner.dynamic)),
        param_count=max(outer.param_count, inner.param_count))


def _inner(node: dict, text: str, schema, search_path, extended, extra) -> StatementFacts:
    facts, lit = statement_facts(node, text, schema, search_path, extended)
    extra["inner"] = facts
    if lit:
        extra["_lit"] = True
    return facts


def _created(rv: dict, search_path: tuple[str, ...]) -> RelationRef:
    if rv.get("relpersistence") == "t":
        return RelationRef("pg_temp", rv.get("relname", ""))
    sch = rv.get("schemaname") or next((s for s in search_path if s != "pg_temp"), "public")
    return RelationRef(sch, rv.get("relname", ""))


def _dispatch(kind_name: str, b: dict, walk: Walk, text: str, schema, search_path,
              extended: bool, extra: dict) -> tuple[K, str]:
    if kind_name == "SelectStmt":
        walk.select(b, None, RETURNED)
        into = b.get("intoClause")
        if into:
            extra["creates"] = _created(into.get("rel", {}), search_path)
            return K.DDL, "SELECT INTO"
        return K.SELECT, "SELECT"
    if kind_name in ("InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"):
        walk.modify(kind_name, b, None, RETURNED)
        return {"InsertStmt": K.INSERT, "UpdateStmt": K.UPDATE, "DeleteStmt": K.DELETE,
                "MergeStmt": K.MERGE}[kind_name], kind_name[:-4].upper()
    if kind_name == "CopyStmt":
        return _copy(b, walk)
    if kind_name == "ExplainStmt":
        analyze = any(o.get("DefElem", {}).get("defname") == "analyze"
                      and _truthy(o["DefElem"].get("arg")) for o in b.get("options", ()))
        _inner(b.get("query", {}), text, schema, search_path, extended, extra)
        return K.EXPLAIN, "EXPLAIN ANALYZE" if analyze else "EXPLAIN"
    if kind_name == "DeclareCursorStmt":
        extra["cursor_name"] = b.get("portalname")
        _inner(b.get("query", {}), text, schema, search_path, extended, extra)
        return K.CURSOR, "DECLARE"
    if kind_name == "FetchStmt":
        extra["cursor_name"] = b.get("portalname")
        return K.CURSOR, "MOVE" if b.get("ismove") else "FETCH"
    if kind_name == "ClosePortalStmt":
        extra["cursor_name"] = b.get("portalname")     # None: CLOSE ALL
        return K.CURSOR, "CLOSE"
    if kind_name == "PrepareStmt":
        extra["prepared_name"] = b.get("name")
        _inner(b.get("query", {}), text, schema, search_path, True, extra)
        return K.PREPARE, "PREPARE"
    if kind_name == "ExecuteStmt":
        extra["prepared_name"] = b.get("name")
        for p in b.get("params", ()):
            walk.expr(p, Scope([]), OTHER)
        return K.PREPARE, "EXECUTE"
    if kind_name == "DeallocateStmt":
        extra["prepared_name"] = b.get("name")        # None: DEALLOCATE ALL
        return K.PREPARE, "DEALLOCATE"
    if kind_name == "VariableSetStmt":
        return _set(b, extra)
    if kind_name == "VariableShowStmt":
        extra["setting"] = (setting_name(b.get("name", "")), None)
        return K.SET, "SHOW"
    if kind_name == "DiscardStmt":
        return K.SESSION, "DISCARD " + b.get("target", "DISCARD_ALL").replace("DISCARD_", "")
    if kind_name == "TransactionStmt":
        return K.TRANSACTION, _TRANSACTION_COMMANDS.get(b.get("kind", "TRANS_STMT_BEGIN"), "TRANSACTION")
    if kind_name in ("ListenStmt", "UnlistenStmt", "NotifyStmt"):
        return K.LISTEN, kind_name[:-4].upper()
    if kind_name == "DoStmt":
        walk.fail("DO runs a procedural block whose reads the analyzer cannot attribute")
        return K.DO, "DO"
    if kind_name == "CallStmt":
        if b.get("funccall"):
            walk.expr({"FuncCall": b["funccall"]}, Scope([]), OTHER)
        return K.CALL, "CALL"
    if kind_name == "VacuumStmt":
        return K.UTILITY, "VACUUM" if b.get("is_vacuumcmd") else "ANALYZE"
    if kind_name in _UTILITY:
        if kind_name == "LoadStmt":
            walk.add_dynamic("LOAD loads a shared library into the server")
        return K.UTILITY, _UTILITY[kind_name]
    if kind_name == "CreateTableAsStmt":
        q = b.get("query", {})
        matview = b.get("objtype") == "OBJECT_MATVIEW"
        extra["creates"] = _created(b.get("into", {}).get("rel", {}), search_path)
        if "SelectStmt" in q:
            walk.select(q["SelectStmt"], None, RETURNED)
        else:
            walk.fail("CREATE TABLE AS EXECUTE: the prepared statement's facts belong to the session")
        return K.DDL, "CREATE MATERIALIZED VIEW" if matview else "CREATE TABLE AS"
    if kind_name == "ViewStmt":
        extra["creates"] = _created(b.get("view", {}), search_path)
        q = b.get("query", {})
        if "SelectStmt" in q:
            walk.select(q["SelectStmt"], None, RETURNED)
        else:
            walk.fail("view body is not a SELECT")
        return K.DDL, "CREATE VIEW"
    if kind_name == "CreateStmt":
        extra["creates"] = _created(b.get("relation", {}), search_path)
        return K.DDL, "CREATE TABLE"
    if kind_name == "CreateFunctionStmt":
        walk.fail("creates a function whose body the analyzer does not attribute")
        return K.DDL, "CREATE PROCEDURE" if b.get("is_procedure") else "CREATE FUNCTION"
    if kind_name == "RuleStmt":
        walk.fail("creates a rule whose actions the analyzer does not attribute")
        return K.DDL, "CREATE RULE"
    if kind_name == "TruncateStmt":
        for r in b.get("relations", ()):
            rel = walk.resolve_relation(r.get("RangeVar", {}))
            if rel is not None:
                walk.written.add(rel.ref)
        return K.DDL, "TRUNCATE"
    if kind_name == "DropStmt":
        return K.DDL, "DROP " + b.get("removeType", "OBJECT_").replace("OBJECT_", "").replace("_", " ")
    if kind_name == "GrantStmt":
        return K.DDL, "GRANT" if b.get("is_grant") else "REVOKE"
    if kind_name == "GrantRoleStmt":
        return K.DDL, "GRANT ROLE" if b.get("is_grant") else "REVOKE ROLE"
    if kind_name == "AlterRoleSetStmt":
        vs = b.get("setstmt", {})
        extra["setting"] = (setting_name(vs.get("name", "")), _set_value(vs))
        return K.DDL, "ALTER ROLE SET"
    if kind_name == "DefineStmt":     # CREATE AGGREGATE / OPERATOR / TYPE / COLLATION / TEXT SEARCH ...
        return K.DDL, "CREATE " + b.get("kind", "OBJECT_").replace("OBJECT_", "").replace("_", " ")
    if kind_name in _DDL_NAMES:
        return K.DDL, _DDL_NAMES[kind_name]
    if kind_name.startswith(_DDL_PREFIXES):
        return K.DDL, _camel_words(kind_name)
    return K.UNKNOWN, _camel_words(kind_name)


_QUERY_KEYS = frozenset({"query", "intoClause", "into"})


def _objects(kind: K, kind_name: str, b: dict, walk: Walk) -> None:
    """DDL and utility statements: the relations they name (written for DDL,
    read for VACUUM/ANALYZE/LOCK/...) and, where a clause reads a table's
    columns (index expressions, policy quals, statistics, column comments,
    ANALYZE column lists, ALTER TABLE expressions), those columns with OTHER.
    Failures inside these clauses do not make the statement unknown: DDL is an
    action of its own; what is reported is an over-approximation for audit."""
    named: list = []
    _find_relations(b, walk, named)
    target = walk.written if kind == K.DDL else walk.read
    for rel, _ in named:
        target.add(rel.ref)
    if kind_name in ("CreateTableAsStmt", "ViewStmt") or (kind_name == "SelectStmt"):
        return
    sub = Walk(walk.schema, walk.search_path, walk.depth)
    if kind_name == "CommentStmt" and b.get("objtype") == "OBJECT_COLUMN":
        names = _names(b.get("object", {}).get("List", {}).get("items"))
        if len(names) >= 2:
            rel = walk.schema.resolve(names[-2], names[-3] if len(names) >= 3 else None, walk.search_path)
            if rel is not None:
                walk.written.add(rel.ref)
                item = sub.relation_item(rel, False, None)
                sub.use(item.lookup(names[-1]) or frozenset(), OTHER)
    elif named:
        scope = Scope([sub.relation_item(rel, False, None) for rel, _ in named])
        for key, value in _expression_fields(b):
            if key in ("name", "va_cols"):
                for n in ([value] if isinstance(value, str) else _names(value)):
                    sub.use(scope.items[0].lookup(n) or frozenset(), OTHER)
            else:
                sub.expr(value, scope, PREDICATE if key in ("qual", "with_check", "whereClause") else OTHER)
    for c, us in sub.uses.items():
        walk.use(frozenset((c,)), frozenset(us))
    walk.functions |= sub.functions


def _find_relations(node, walk: Walk, out: list) -> None:
    if isinstance(node, dict):
        if isinstance(node.get("relname"), str):
            rel = walk.resolve_relation(node)
            if rel is not None:
                out.append((rel, node))
            return
        for k, v in node.items():
            if k not in _QUERY_KEYS:
                _find_relations(v, walk, out)
    elif isinstance(node, list):
        for v in node:
            _find_relations(v, walk, out)


#: DDL clauses that hold expressions over the target table's columns
_EXPR_KEYS = frozenset({"expr", "whereClause", "qual", "with_check", "raw_expr", "raw_default",
                        "transform", "whenClause"})


def _expression_fields(node, parent_key: str = ""):
    """(key, value) for every expression clause and column-name list in a DDL node."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k in _EXPR_KEYS and isinstance(v, dict):
                yield k, v
            elif k == "va_cols" or (k == "name" and parent_key in ("IndexElem", "StatsElem") and isinstance(v, str)):
                yield ("va_cols" if k == "va_cols" else "name"), v
            elif k not in _QUERY_KEYS:
                yield from _expression_fields(v, k)
    elif isinstance(node, list):
        for v in node:
            yield from _expression_fields(v, parent_key)


def _camel_words(kind_name: str) -> str:
    import re
    words = re.findall(r"[A-Z][a-z]*", kind_name.removesuffix("Stmt"))
    return " ".join(w.upper() for w in words)


def _truthy(arg) -> bool:
    if not arg:
        return True          # EXPLAIN (ANALYZE) with no value means true
    c = arg.get("A_Const", {})
    if "boolval" in c:
        return bool(c["boolval"].get("boolval", False))
    s = arg.get("String", {}).get("sval") or c.get("sval", {}).get("sval")
    if s is not None:
        return s.lower() not in ("false", "off", "0", "no")
    if "ival" in c:
        return c["ival"].get("ival", 0) != 0
    return True


_PLAIN_NAME = re.compile(r"[a-z_][a-z0-9_]*\Z")


def _quote_name(name: str) -> str:
    """A list element as PostgreSQL writes it for a GUC_LIST_QUOTE setting."""
    if _PLAIN_NAME.match(name) and name != "default":
        return name
    return '"' + name.replace('"', '""') + '"'


def _set_value(b: dict, names: bool = False) -> str | None:
    """The value of a SET. ``names``: a list of names (search_path), where each element,
    written as an identifier or as a string, is one name: 'a,b' is the single schema
    "a,b" to PostgreSQL, not two. Elements are then quoted as PostgreSQL quotes them,
    to be read back with protocol.startup.split_identifier_list."""
    k = b.get("kind", "VAR_SET_VALUE")
    if k in ("VAR_RESET", "VAR_RESET_ALL"):
        return None
    if k == "VAR_SET_DEFAULT":
        return "DEFAULT"
    if k == "VAR_SET_CURRENT":
        return "FROM CURRENT"
    vals = []
    for a in b.get("args", ()):
        c = a.get("A_Const") or a.get("TypeCast", {}).get("arg", {}).get("A_Const") or {}
        if "sval" in c:
            vals.append(_quote_name(c["sval"].get("sval", "")) if names else c["sval"].get("sval", ""))
        elif "ival" in c:
            vals.append(str(c["ival"].get("ival", 0)))
        elif "fval" in c:
            vals.append(c["fval"].get("fval", ""))
        elif "boolval" in c:
            vals.append("true" if c["boolval"].get("boolval") else "false")
        else:
            vals.append("?")
    return ", ".join(vals)


def _set(b: dict, extra: dict) -> tuple[K, str]:
    k = b.get("kind", "VAR_SET_VALUE")
    name = setting_name(b.get("name", ""))
    if k == "VAR_RESET_ALL":
        extra["setting"] = ("all", None)
        return K.SESSION, "RESET ALL"
    if k == "VAR_SET_MULTI":
        extra["setting"] = (name.lower(), None)
        if name.upper().startswith("TRANSACTION"):
            return K.TRANSACTION, "SET " + name.upper()
        return K.SET, "SET " + name.upper()
    extra["setting"] = (name, _set_value(b, names=name == "search_path"))
    shown = {"role": "ROLE", "session_authorization": "SESSION AUTHORIZATION"}.get(name, name)
    verb = "RESET" if k == "VAR_RESET" else ("SET LOCAL" if b.get("is_local") else "SET")
    session = name in SESSION_SETTINGS or name.startswith(REVEALING_SETTING_PREFIXES)
    return (K.SESSION if session else K.SET), f"{verb} {shown}"


def _copy(b: dict, walk: Walk) -> tuple[K, str]:
    is_from = b.get("is_from", False)
    if b.get("filename") or b.get("is_program"):
        walk.add_dynamic("COPY PROGRAM runs a server command" if b.get("is_program")
                         else "COPY reads or writes a server file")
        # the server reads (or writes) a file or a command's output: the server log
        # (other sessions' statements and key values), a data file, an export a
        # DBA left behind. What comes in cannot be attributed to any column, and
        # COPY t FROM it followed by SELECT * FROM t returns it unmasked
        walk.fail("COPY PROGRAM runs a server command" if b.get("is_program")
                  else "COPY reads or writes a server file")
    q = b.get("query")
    if q:
        (qk, qb), = q.items()
        if qk == "SelectStmt":
            walk.select(qb, None, RETURNED)
        elif qk in ("InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"):
            walk.modify(qk, qb, None, RETURNED)
        else:
            walk.fail(f"COPY of {qk} is not modelled")
        return K.COPY_TO, "COPY TO"
    rv = b.get("relation", {})
    if is_from:
        item = walk.target_item(rv, Scope([]), inh=False)
    else:
        walk.names_seen.add(rv.get("relname", ""))
        rel = walk.resolve_relation(rv)
        if rel is None:
            walk.fail(f"relation {rv.get('relname')} is not in the live schema")
            return (K.COPY_FROM if is_from else K.COPY_TO), ("COPY FROM" if is_from else "COPY TO")
        item = walk.relation_item(rel, False, None)
    names = _names(b.get("attlist")) or [c.name for c in item.cols]
    for n in names:
        src = item.lookup(n)
        if src is None:
            walk.fail(f"COPY column {n} not found")
            continue
        walk.use(src, WRITTEN if is_from else RETURNED)
    if b.get("whereClause"):
        walk.expr(b["whereClause"], Scope([item]), PREDICATE)
    return (K.COPY_FROM, "COPY FROM") if is_from else (K.COPY_TO, "COPY TO")


def crosscheck(text: str, names_seen: set[str]) -> frozenset[str]:
    """Relation names sqlglot reads in ``text`` that the pglast analysis did not
    see. sqlglot failing to parse is not a disagreement."""
    try:
        import sqlglot
        from sqlglot import exp
        trees = sqlglot.parse(text, read="postgres")
    except Exception:  # noqa: BLE001 - sqlglot parse errors are expected
        return frozenset()
    seen = set()
    for t in trees:
        if t is None:
            continue
        for tbl in t.find_all(exp.Table):
            ident = tbl.this
            if isinstance(ident, exp.Identifier):
                seen.add(ident.name if ident.quoted else ident.name.lower())
    return frozenset(seen - names_seen)
