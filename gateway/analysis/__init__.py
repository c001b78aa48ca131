"""SQL -> StatementFacts (pure; pglast = PostgreSQL's own parser) and the
literal-insensitive analysis cache.

``analyze(sql, schema, search_path=("public",), *, extended=False)`` never
raises: one ``StatementFacts`` per statement in the text (an empty text gives
one EMPTY); anything it cannot attribute sets ``unknown``.

Modules, one pass each:
- ``statements``: splitting (byte offsets), statement kinds, SET/cursor/PREPARE/
  EXPLAIN/COPY/DDL details, the sqlglot cross-check;
- ``queries``: scopes, FROM items, column resolution, expressions, views,
  inheritance, CTEs, DML targets;
- ``functions``: function resolution and the functions that are opaque;
- ``cache``: ``AnalysisCache`` (exact text, then ``pglast.parser.normalize``).

What the facts mean for the caller:
- ``columns``: every base column touched, with how. Views are expanded (the
  view's own columns are listed too), a parent table read without ONLY includes
  its children's same-named columns, and a child's column is also reported as
  its ancestors' (``customers_archive.ssn`` -> ``customers.ssn``). Columns a
  subquery, CTE or view selects but the outer query drops are still listed
  (usage OTHER): over-approximation by design.
- ``unknown``: set whenever anything cannot be attributed (parse error, node
  type not modelled, relation/column/function not in the LiveSchema, opaque
  functions: SQL in strings, files, dblink, SECURITY DEFINER or PL/SQL bodies,
  planner statistics, DO, CREATE FUNCTION/RULE, NUL characters, ...).
- ``dynamic``: reasons the effect depends on strings or settings (regclass
  literals, set_config, COPY to files/programs, LOAD, WHERE CURRENT OF).
- Wrappers (DECLARE, PREPARE, EXPLAIN) carry ``inner`` and also report the
  inner statement's columns/relations/unknown themselves. FETCH/MOVE/CLOSE/
  EXECUTE/DEALLOCATE only name the cursor/statement: the session maps them.
- ``creates``: the relation a CREATE/SELECT INTO makes (``pg_temp`` for
  temporary ones): pass those to ``with_temp_relations`` so shadowed names fail
  closed.
- A SELECT with a data-modifying CTE has ``relations_written``.

Assumptions the session must uphold: standard_conforming_strings is on (the
lexer's reading of backslashes), client_encoding is UTF8, search_path has no
``$user`` and keeps pg_catalog first. Operators and casts outside pg_catalog are
in the LiveSchema as pseudo-functions (``operator <name>``, ``cast <type>``, see
gateway.introspect): an operator is judged as a call of its function; a cast
whose function is opaque makes every statement with expressions unknown, since
where PostgreSQL applies it depends on types the analyzer does not know.
"""
from __future__ import annotations

from gateway.analysis.facts import ColumnUse, StatementFacts, StatementKind, Usage
from gateway.schema import LiveSchema


def analyze(sql: str, schema: LiveSchema, search_path: tuple[str, ...] = ("public",), *,
            extended: bool = False) -> tuple[StatementFacts, ...]:
    from gateway.analysis.statements import analyze_text
    try:
        return tuple(a.facts for a in analyze_text(sql, schema, tuple(search_path), extended))
    except Exception as e:  # noqa: BLE001 - the contract: never raise, fail closed
        return (StatementFacts(StatementKind.UNKNOWN, sql,
                               unknown=f"analyzer error: {type(e).__name__}: {e}"),)


def with_temp_relations(schema: LiveSchema, created) -> LiveSchema:
    """``schema`` plus a placeholder for each temporary relation a session created
    (``StatementFacts.creates`` with schema ``pg_temp``). PostgreSQL searches
    pg_temp first, so a temporary relation shadows a same-named table; the
    placeholder is a view without a definition, so every statement that names it
    unqualified is unknown (fail closed) rather than attributed to the table it
    shadows. Pure; returns a new LiveSchema with a new version."""
    from gateway.schema import VIEW, Relation
    extra = [Relation(ref, VIEW, (), view_definition=None) for ref in created
             if ref.schema == "pg_temp" and ref not in schema.relations]
    if not extra:
        return schema
    funcs = [f for fs in schema.functions.values() for f in fs]
    return LiveSchema.of(list(schema.relations.values()) + extra, funcs, schema.search_path)


def __getattr__(name: str):
    if name == "AnalysisCache":
        from gateway.analysis.cache import AnalysisCache
        return AnalysisCache
    raise AttributeError(name)


__all__ = ["analyze", "with_temp_relations", "AnalysisCache", "ColumnUse", "StatementFacts", "StatementKind", "Usage"]
