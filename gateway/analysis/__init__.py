"""SQL -> StatementFacts (pure; pglast = PostgreSQL's own parser) and the
literal-insensitive analysis cache.

``analyze(sql, schema, search_path=("public",), *, extended=False)`` never
raises: one ``StatementFacts`` per statement in the text (an empty text gives
one EMPTY); anything it cannot attribute sets ``unknown``.
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
