"""Masking strategies as SQL expression text (pure).

Each expression keeps the column's TYPE: it ends in a cast to the column's
``format_type()`` name, so a masked result has the same name, position and type
as the unmasked one and drivers with typed result caches (asyncpg, JDBC) keep
working. Every function and operator is schema-qualified (``pg_catalog.…``,
``OPERATOR(pg_catalog.=)``, ``piigate.…``) so a ``search_path`` trick cannot swap
one in. (Type names are ``format_type()`` output; the gateway pins search_path.)

Strategies (``MaskStrategy.name`` and its ``params``):

- ``redact``: a fixed placeholder (``params.text``, default ``'[redacted]'``) for
  text types, ``NULL::type`` for every other type.
- ``partial``: keep the last ``keep`` characters (default 4) behind ``***``; values
  not longer than ``keep + 4`` are fully redacted so a short value never shows
  whole. ``email = true``: keep only the domain (``***@example.org``). Text
  types only; other types are redacted.
- ``null``: ``NULL::type``.
- ``hash``: a keyed deterministic pseudonym (``piigate.pseudonym(text)``, see
  gateway/rewrite/masking_functions.sql) that still joins and groups; the key
  never appears in query text. When the function is not installed, or the type is
  not text, it falls back to redact and says so.
- ``year``: date/timestamp generalised to January 1st of its year (same type).
- ``round``: numeric rounded to ``digits`` (built-in ``round``: -2, to hundreds;
  on integer types a non-negative ``digits`` would change nothing, so -1 is used).
- ``bucket``: numeric floored to a multiple of ``width`` (default 10).
- ``definition`` (the gateway's own, not for policy files): a deparsed object
  definition (a view's, a default's, a CHECK's) with every quoted literal replaced
  by ``'***'`` (``definition_expression``; see gateway.rewrite.definitions).

Note: ``hash`` of a low-entropy value (an SSN) can be reversed by anyone who may
call ``piigate.pseudonym`` on guesses; the gateway treats ``piigate.*`` calls as
dangerous functions, and the safe defaults redact ssn/card_number anyway.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from policies.model import MaskStrategy

STRATEGY_KINDS = frozenset({"redact", "partial", "null", "hash", "year", "round", "bucket"})

BUILTIN_STRATEGIES: dict[str, MaskStrategy] = {
    "redact": MaskStrategy("redact"),
    "partial": MaskStrategy("partial", {"keep": 4}),
    "partial_email": MaskStrategy("partial", {"email": True}),
    "null": MaskStrategy("null"),
    "hash": MaskStrategy("hash"),
    "year": MaskStrategy("year"),
    "round": MaskStrategy("round", {"digits": -2}),
    "bucket": MaskStrategy("bucket", {"width": 10}),
}

PLACEHOLDER = "[redacted]"
PSEUDONYM_FUNCTION = "piigate.pseudonym"

_PARAMS = {"redact": {"text"}, "partial": {"keep", "email"}, "null": set(), "hash": set(),
           "year": set(), "round": {"digits"}, "bucket": {"width"}}


def validate_strategy(s: MaskStrategy) -> str | None:
    """A problem with the strategy, or None."""
    if s.name not in STRATEGY_KINDS:
        return f"unknown kind {s.name!r}; expected one of " + ", ".join(sorted(STRATEGY_KINDS))
    extra = set(s.params) - _PARAMS[s.name]
    if extra:
        return f"unknown parameter(s) {sorted(extra)} for kind {s.name!r}"
    p = s.params
    if "keep" in p and (not isinstance(p["keep"], int) or isinstance(p["keep"], bool) or not 1 <= p["keep"] <= 16):
        return "keep must be an integer between 1 and 16"
    if "email" in p and not isinstance(p["email"], bool):
        return "email must be true or false"
    if "digits" in p and (not isinstance(p["digits"], int) or isinstance(p["digits"], bool) or not -9 <= p["digits"] <= 9):
        return "digits must be an integer between -9 and 9"
    if "width" in p and (isinstance(p["width"], bool) or not isinstance(p["width"], (int, float)) or p["width"] <= 0):
        return "width must be a positive number"
    if "text" in p and (not isinstance(p["text"], str) or len(p["text"]) > 64):
        return "text must be a string of at most 64 characters"
    return None


@dataclass(frozen=True, slots=True)
class MaskedExpression:
    sql: str                  # the expression, ending in a cast to the column type
    strategy: str             # the strategy actually applied (after fallbacks)
    note: str = ""            # why a fallback happened, for explain / audit


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    # standard_conforming_strings is pinned on by the gateway; E'' is never used.
    return "'" + text.replace("'", "''") + "'"


_TEXT_TYPES = re.compile(r"^(text|name|citext|\"char\"|bpchar|character varying(\(\d+\))?|varchar(\(\d+\))?|"
                         r"character(\(\d+\))?|char(\(\d+\))?)$")
_NUMERIC_TYPES = re.compile(r"^(smallint|integer|bigint|numeric(\(\d+(,\d+)?\))?|real|double precision|money)$")
_DATE_TYPES = re.compile(r"^(date|timestamp(\(\d\))? with(out)? time zone|timestamp(\(\d\))?)$")


def is_text_type(type_name: str) -> bool:
    return bool(_TEXT_TYPES.match(type_name.strip()))


#: what a literal becomes in a redacted definition (an SQL literal itself, so the
#: definition still reads as SQL)
DEFINITION_PLACEHOLDER = "'***'"
# identifiers first: a quote inside "it's" does not start a literal
_DEFINITION_TOKENS = """$piigate$"(?:[^"]|"")*"|'(?:[^']|'')*'|[^"']+|["']$piigate$"""


def definition_expression(expr: str) -> str:
    """``expr`` (a deparsed definition) with its quoted literals replaced by
    ``'***'``, as a text expression: the text is split into double-quoted
    identifiers, quoted literals and the rest, and put together again. NULL stays
    NULL, '' stays ''. PostgreSQL's deparser writes every string as a simple quoted
    literal (standard_conforming_strings is pinned on), so this finds them all."""
    quote = quote_literal("'")
    return ("(SELECT CASE WHEN piigate_def.v IS NULL THEN NULL ELSE COALESCE(("
            "SELECT pg_catalog.string_agg(CASE WHEN pg_catalog.left(piigate_tok.m[1], 1) "
            f"OPERATOR(pg_catalog.=) {quote} THEN {quote_literal(DEFINITION_PLACEHOLDER)}::pg_catalog.text "
            "ELSE piigate_tok.m[1] END, '' ORDER BY piigate_tok.n) "
            f"FROM pg_catalog.regexp_matches(piigate_def.v, {_DEFINITION_TOKENS}, 'g') "
            "WITH ORDINALITY AS piigate_tok(m, n)), '') END "
            f"FROM (SELECT CAST(({expr}) AS pg_catalog.text) AS v) AS piigate_def)")


def _cast(expr: str, type_name: str) -> str:
    # format_type() output is already a valid, quoted-as-needed type name
    return f"CAST({expr} AS {type_name})"


def mask_expression(column_sql: str, type_name: str, strategy: MaskStrategy,
                    *, pseudonym_installed: bool = False) -> MaskedExpression:
    """The SQL expression that masks ``column_sql`` (an identifier expression of type
    ``type_name``) with ``strategy``. Never returns an expression that yields the
    original value of a text column."""
    t = type_name.strip()
    kind = strategy.name
    p = strategy.params
    text = is_text_type(t)
    v = f"CAST({column_sql} AS pg_catalog.text)"

    def redact(note: str = "") -> MaskedExpression:
        if text:
            lit = quote_literal(str(p.get("text", PLACEHOLDER)) if kind == "redact" else PLACEHOLDER)
            # NULL stays NULL: whether a value exists is not the value
            return MaskedExpression(_cast(f"CASE WHEN {column_sql} IS NULL THEN NULL ELSE {lit} END", t),
                                    "redact", note)
        return MaskedExpression(_cast("NULL", t), "redact", note)

    if kind == "redact":
        return redact()
    if kind == "definition":
        return MaskedExpression(_cast(definition_expression(column_sql), t), "definition")
    if kind == "null":
        return MaskedExpression(_cast("NULL", t), "null")
    if kind == "partial":
        if not text:
            return redact(f"partial needs a text type, {t} is redacted")
        if p.get("email"):
            domain = f"pg_catalog.split_part({v}, '@', 2)"
            e = (f"CASE WHEN {column_sql} IS NULL THEN NULL WHEN pg_catalog.strpos({v}, '@') OPERATOR(pg_catalog.=) 0 "
                 f"THEN '***' ELSE pg_catalog.concat('***@', {domain}) END")
            return MaskedExpression(_cast(e, t), "partial")
        keep = int(p.get("keep", 4))
        e = (f"CASE WHEN {column_sql} IS NULL THEN NULL WHEN pg_catalog.length({v}) OPERATOR(pg_catalog.<=) {keep + 4} "
             f"THEN '***' ELSE pg_catalog.concat('***', pg_catalog.\"right\"({v}, {keep})) END")
        return MaskedExpression(_cast(e, t), "partial")
    if kind == "hash":
        if not pseudonym_installed:
            return redact("hash needs piigate.pseudonym (gateway/rewrite/masking_functions.sql); redacted instead")
        if not text:
            return redact(f"hash keeps the type only for text columns; {t} is redacted")
        return MaskedExpression(_cast(f"{PSEUDONYM_FUNCTION}({v})", t), "hash")
    if kind == "year":
        if not _DATE_TYPES.match(t):
            return redact(f"year needs a date/timestamp type, {t} is redacted")
        src = f"CAST({column_sql} AS pg_catalog.timestamp)" if t == "date" else column_sql
        return MaskedExpression(_cast(f"pg_catalog.date_trunc('year', {src})", t), "year")
    if kind in ("round", "bucket"):
        if not _NUMERIC_TYPES.match(t):
            return redact(f"{kind} needs a numeric type, {t} is redacted")
        n = f"CAST({column_sql} AS pg_catalog.numeric)"
        if kind == "round":
            digits = int(p.get("digits", -2))
            note = ""
            if digits >= 0 and t in ("smallint", "integer", "bigint"):
                digits, note = -1, f"round to {p.get('digits')} digits leaves {t} unchanged; rounded to tens"
            e = f"pg_catalog.round({n}, {digits})"
            return MaskedExpression(_cast(e, t), kind, note)
        else:
            w = f"CAST({p.get('width', 10)!r} AS pg_catalog.numeric)"
            e = f"pg_catalog.floor({n} OPERATOR(pg_catalog./) {w}) OPERATOR(pg_catalog.*) {w}"
        return MaskedExpression(_cast(e, t), kind)
    return redact(f"unknown strategy {kind!r}; redacted")
