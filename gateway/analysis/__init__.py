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


def __getattr__(name: str):
    if name == "AnalysisCache":
        from gateway.analysis.cache import AnalysisCache
        return AnalysisCache
    raise AttributeError(name)


__all__ = ["analyze", "AnalysisCache", "ColumnUse", "StatementFacts", "StatementKind", "Usage"]
