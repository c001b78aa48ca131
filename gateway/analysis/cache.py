"""The analysis cache: exact text first, then a literal-insensitive key (pure).

The literal-insensitive key is ``pglast.parser.normalize(sql)``: PostgreSQL's own
lexer replaces each constant with ``$n`` and keeps every other byte of the text
(identifiers, aliases, comments, whitespace). Two texts with the same normalized
form differ only in constant values. ``fingerprint`` is *not* safe as a key: it
ignores output aliases (``SELECT id AS ssn ... ORDER BY ssn`` and ``SELECT id AS
x ... ORDER BY ssn`` share a fingerprint but sort on different columns) and the
length of IN lists.

What goes under the literal-insensitive key:
- only single-statement texts of kinds whose facts cannot depend on a constant
  (SELECT, INSERT, UPDATE, DELETE, MERGE); never SET, SESSION, DDL, DO, COPY,
  EXPLAIN, cursors or PREPARE (their bodies or values are constants);
- never a statement whose analysis read a constant (``'customers'::regclass``,
  ``ORDER BY 2``, an object-name argument);
- the key also holds the number of ``$`` in the original text, so a text that
  already had ``$1`` never shares an entry with one whose constant became ``$1``,
  plus ``extended``, the search_path and ``schema.version``.

Facts depend on the schema and search_path only; the catalog and policy
versions belong in the key of whatever caches *decisions*.
"""
from __future__ import annotations

import dataclasses

import re

from pglast import parser

from gateway.analysis.facts import StatementFacts, StatementKind as K
from gateway.analysis.statements import analyze_text
from gateway.schema import LiveSchema

_FIELDS = tuple(f.name for f in dataclasses.fields(StatementFacts))


def _make_clone():
    """``_clone(values, sql)``: a StatementFacts with the cached field values and
    this text's sql (it runs on every literal-insensitive hit).

    StatementFacts is frozen, so filling one field by field costs an
    ``object.__setattr__`` call per field. Instead the fields are stored on an
    instance of a mutable twin with the very same ``__slots__`` (plain slot stores)
    and the instance then becomes a StatementFacts by ``__class__`` assignment,
    which Python allows between classes of identical layout: about 5x cheaper,
    and the result is an ordinary, frozen StatementFacts."""
    twin = type("_FactsUnderConstruction", (object,), {"__slots__": StatementFacts.__slots__})
    lines = ["def _clone(v, sql):", "    f = _twin()"]
    for i, name in enumerate(_FIELDS):
        value = "sql" if name == "sql" else f"v[{i}]"
        lines.append(f"    f.{name} = {value}")
    lines.append("    f.__class__ = StatementFacts")
    lines.append("    return f")
    env = {"_twin": twin, "StatementFacts": StatementFacts}
    exec("\n".join(lines), env)  # noqa: S102 - generated from the dataclass's own field names
    return env["_clone"]


_clone = _make_clone()
_LITERAL_FREE_KINDS = frozenset({K.SELECT, K.INSERT, K.UPDATE, K.DELETE, K.MERGE})


#: a string prefix (E'', N'', B'', X''): a letter that starts a token, right before a quote
_PREFIXED_STRING = re.compile(r"(?<![\w'])[a-zA-Z]'")
#: what PostgreSQL's lexer reads as constants in the texts simple_key accepts: standard
#: single-quoted strings ('' inside) and unsigned decimal numbers at token boundaries
#: (numbers: a digit not preceded by a word character or '.', the lookbehind placed after
#: the first digit so the pattern starts with a character set, which the regex engine
#: scans for in C: about 2.5x faster than a leading \b)
_NUMBER = r"[0-9](?<![\w.][0-9])[0-9]*(?:\.[0-9]+)?(?![\w.'])"
_SIMPLE_LITERAL = re.compile(r"'[^']*(?:''[^']*)*'|" + _NUMBER)
_SIMPLE_NUMBER = re.compile(_NUMBER)      # the same, for texts without quotes


def simple_key(sql: str) -> str | None:
    """A literal-insensitive key for the common, simply lexed statement, cheaper than
    ``normalize``: constants become ``$``, a character such texts cannot contain, so
    the key is unambiguous. None (use PostgreSQL's lexer) for anything whose lexing
    this does not emulate: dollar quotes and parameters, backslashes, quoted or
    Unicode identifiers, comments, prefixed strings, non-ASCII, NUL. Two texts share
    a key only if they differ in constants alone, as with ``normalize``; a constant
    the pattern does not recognise (1e5, 0x1F, 1_000) only makes the key narrower."""
    if ("$" in sql or "\\" in sql or '"' in sql or "&" in sql or "--" in sql or "/*" in sql
            or "\x00" in sql or not sql.isascii()):
        return None
    if "'" not in sql:
        return _SIMPLE_NUMBER.sub("$", sql)
    if _PREFIXED_STRING.search(sql):
        return None
    return _SIMPLE_LITERAL.sub("$", sql)


def simple_literals(sql: str) -> list[tuple[int, int]]:
    """The (start, end) of each constant ``simple_key`` turns into ``$`` (only for texts
    it gives a key): two texts of one key differ exactly there."""
    pattern = _SIMPLE_NUMBER if "'" not in sql else _SIMPLE_LITERAL
    return [m.span() for m in pattern.finditer(sql)]


class AnalysisCache:
    """``analyze()`` with memory. Bounded; evicts the oldest entries first."""

    def __init__(self, maxsize: int = 10000):
        self.maxsize = maxsize
        self._exact: dict = {}
        self._shape: dict = {}
        self._simple: dict = {}
        self.hits_exact = 0
        self.hits_shape = 0
        self.misses = 0

    def analyze(self, sql: str, schema: LiveSchema, search_path: tuple[str, ...] = ("public",), *,
                extended: bool = False) -> tuple[StatementFacts, ...]:
        if type(search_path) is not tuple:
            search_path = tuple(search_path)
        ctx = (search_path, schema.version, extended)
        exact_key = (sql, ctx)
        hit = self._exact.get(exact_key)
        if hit is not None:
            self.hits_exact += 1
            return hit
        simple = simple_key(sql)
        if simple is not None:
            entry = self._simple.get((simple, ctx))
            if entry is not None:
                values, prefix, suffix = entry
                self.hits_shape += 1
                return (_clone(values, sql[prefix:len(sql) - suffix]),)
        try:
            # (a NUL ends the C string normalize reads: such texts skip this cache)
            normalized = parser.normalize(sql) if "\x00" not in sql else None
        except Exception:  # noqa: BLE001 - unparsable: analysis reports it
            normalized = None
        if normalized is not None:
            shape_key = (normalized, sql.count("$"), ctx)
            entry = self._shape.get(shape_key)
            if entry is not None:
                values, prefix, suffix = entry
                self.hits_shape += 1
                return (_clone(values, sql[prefix:len(sql) - suffix]),)
        self.misses += 1
        try:
            analysed = analyze_text(sql, schema, tuple(search_path), extended)
        except Exception as e:  # noqa: BLE001 - analyze never raises
            return (StatementFacts(K.UNKNOWN, sql, unknown=f"analyzer error: {type(e).__name__}: {e}"),)
        result = tuple(a.facts for a in analysed)
        self._put(self._exact, exact_key, result)
        if (normalized is not None and len(analysed) == 1
                and analysed[0].facts.kind in _LITERAL_FREE_KINDS
                and not analysed[0].literal_dependent):
            a = analysed[0]
            values = tuple(getattr(a.facts, n) for n in _FIELDS)
            self._put(self._shape, shape_key, (values, a.prefix, a.suffix))
            if simple is not None:
                self._put(self._simple, (simple, ctx), (values, a.prefix, a.suffix))
        return result

    def shape_known(self, simple: str, search_path: tuple, schema_version, extended: bool) -> bool:
        """Whether texts of this ``simple_key`` are analysed by shape (their facts hold
        for every text of the shape: the analysis read no constant)."""
        return (simple, (search_path, schema_version, extended)) in self._simple

    def _put(self, d: dict, key, value) -> None:
        if len(d) >= self.maxsize:
            del d[next(iter(d))]
        d[key] = value

    def clear(self) -> None:
        self._exact.clear()
        self._shape.clear()
        self._simple.clear()
