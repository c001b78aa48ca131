"""Redact the literals in database object definitions a statement reads (pure).

``pg_get_viewdef``, ``pg_get_triggerdef``, ``pg_get_indexdef``, ``pg_get_constraintdef``,
``pg_get_expr`` and their kin return what a DBA wrote: a view ``WHERE ssn <>
'000-00-0011'``, a trigger ``WHEN (NEW.email = '...')``, a partial index, a CHECK, a
column default. Refusing them breaks every client's introspection (psql's ``\\d``,
SQLAlchemy's reflection, BI tools); passing them shows whatever literal the DBA used.
So for a principal under PII policy each call in the statement text is wrapped in an
expression that returns the same definition with every quoted literal replaced by
``'***'``: names, structure, operators and numbers stay, the column keeps its name and
type, and a predicate over the definition only ever sees the redacted text.

The definitions come from PostgreSQL's deparser (ruleutils), which writes every string
as a simple quoted literal (doubling quotes; the gateway keeps
standard_conforming_strings on for these sessions) and every name as an identifier,
double-quoted when needed. The wrapper splits the text into double-quoted
identifiers, quoted literals and the rest, in that order of preference, so a quote
inside an identifier never opens a literal. Function bodies (``pg_get_functiondef``,
``prosrc``) are free text (comments, dollar quotes) and are not handled here: they
stay refused.

``redact_definitions`` raises ``DefinitionError`` when it cannot be sure (a call it
cannot delimit, calls nested in one another, a result that is not one statement);
the gateway then refuses the statement.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from pglast import parser

from catalog.model import RelationRef

from policies.masking import definition_expression

#: functions whose text result is a deparsed definition, redacted where called
DEFINITION_FUNCTIONS = frozenset({
    "pg_get_viewdef", "pg_get_triggerdef", "pg_get_ruledef", "pg_get_indexdef",
    "pg_get_constraintdef", "pg_get_expr", "pg_get_partkeydef", "pg_get_partition_constraintdef",
    "pg_get_statisticsobjdef", "pg_get_function_arguments", "pg_get_function_arg_default",
})
QUALIFIED = frozenset(f"pg_catalog.{f}" for f in DEFINITION_FUNCTIONS)

#: system views that call definition functions inside their own definition, where no
#: wrapper around a call can reach: (the output columns that carry a definition, the
#: functions behind them). A reference to one of them in the statement is wrapped in
#: a subquery that redacts those columns (the masking rewrite, strategy
#: "definition"), so ``SELECT * FROM information_schema.columns`` keeps working.
DEFINITION_VIEWS: dict[RelationRef, tuple[tuple[str, ...], frozenset[str]]] = {
    RelationRef("information_schema", "columns"): (("column_default", "generation_expression"),
                                                   frozenset({"pg_get_expr"})),
    RelationRef("information_schema", "attributes"): (("attribute_default",), frozenset({"pg_get_expr"})),
    RelationRef("information_schema", "check_constraints"): (("check_clause",),
                                                             frozenset({"pg_get_constraintdef"})),
    RelationRef("information_schema", "parameters"): (("parameter_default",),
                                                      frozenset({"pg_get_function_arg_default"})),
    RelationRef("information_schema", "triggers"): (("action_condition", "action_statement"),
                                                    frozenset({"pg_get_triggerdef"})),
    RelationRef("information_schema", "views"): (("view_definition",), frozenset({"pg_get_viewdef"})),
    RelationRef("pg_catalog", "pg_indexes"): (("indexdef",), frozenset({"pg_get_indexdef"})),
    RelationRef("pg_catalog", "pg_policies"): (("qual", "with_check"), frozenset({"pg_get_expr"})),
    RelationRef("pg_catalog", "pg_views"): (("definition",), frozenset({"pg_get_viewdef"})),
    RelationRef("pg_catalog", "pg_matviews"): (("definition",), frozenset({"pg_get_viewdef"})),
    RelationRef("pg_catalog", "pg_rules"): (("definition",), frozenset({"pg_get_ruledef"})),
}

class DefinitionError(Exception):
    """The definitions in a statement cannot be redacted with certainty."""


@dataclass(frozen=True, slots=True)
class Redacted:
    sql: str
    functions: frozenset[str]      # qualified names of the functions wrapped


def wrap(call: str) -> str:
    """``call``'s text with its quoted literals replaced: NULL stays NULL, '' stays ''."""
    return definition_expression(call)


def _calls(node, parent_target: bool, out: list) -> None:
    """(byte location, bare name, unaliased select-list entry) of each call to a
    definition function, in the parse tree ``node``."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "ResTarget" and isinstance(value, dict):
                val = value.get("val")
                if isinstance(val, dict) and "FuncCall" in val:
                    _call(val["FuncCall"], value.get("name") is None, out)
                    _calls(val["FuncCall"], False, out)
                    for k, v in value.items():
                        if k != "val":
                            _calls(v, False, out)
                    continue
                _calls(value, False, out)
            elif key == "FuncCall" and isinstance(value, dict):
                _call(value, False, out)
                _calls(value, False, out)
            else:
                _calls(value, False, out)
    elif isinstance(node, list):
        for item in node:
            _calls(item, False, out)


def _call(fc: dict, unaliased_target: bool, out: list) -> None:
    names = [n.get("String", {}).get("sval") for n in fc.get("funcname", ())]
    if not names or names[-1] not in DEFINITION_FUNCTIONS:
        return
    if len(names) > 2 or (len(names) == 2 and names[0] != "pg_catalog"):
        return        # another schema's function of that name: the analysis decides it
    out.append((fc.get("location", -1), names[-1], unaliased_target))


def redact_definitions(sql: str) -> Redacted:
    """``sql`` (one statement) with every call to a definition function wrapped."""
    try:
        tree = json.loads(parser.parse_sql_json(sql))
    except Exception as e:  # noqa: BLE001 - the analysis parsed it; never guess
        raise DefinitionError(f"the statement does not parse: {e}") from None
    if len(tree.get("stmts", ())) != 1:
        raise DefinitionError("not exactly one statement")
    calls: list = []
    _calls(tree, False, calls)
    if not calls:
        return Redacted(sql, frozenset())
    raw = sql.encode("utf-8")
    tokens = list(parser.scan(sql))
    by_start = {t.start: i for i, t in enumerate(tokens)}
    spans = []
    for location, name, unaliased in calls:
        if location < 0:
            raise DefinitionError(f"{name}() has no position in the statement")
        char_at = len(raw[:location].decode("utf-8", "strict"))
        i = by_start.get(char_at)
        if i is None:
            raise DefinitionError(f"{name}() does not start a token")
        # the name (maybe schema-qualified), then its parenthesised arguments
        j = i
        while j < len(tokens) and tokens[j].name != "ASCII_40":
            if tokens[j].name not in ("IDENT", "ASCII_46") and tokens[j].kind == "RESERVED_KEYWORD":
                raise DefinitionError(f"{name}() is not followed by its arguments")
            j += 1
        depth = 0
        end = None
        for k in range(j, len(tokens)):
            if tokens[k].name == "ASCII_40":
                depth += 1
            elif tokens[k].name == "ASCII_41":
                depth -= 1
                if depth == 0:
                    end = tokens[k].end + 1
                    break
        if end is None:
            raise DefinitionError(f"the arguments of {name}() do not end")
        spans.append((tokens[i].start, end, name, unaliased))
    spans.sort()
    for (a0, a1, _, _), (b0, _, _, _) in zip(spans, spans[1:]):
        if b0 < a1:
            raise DefinitionError("a definition function called inside another one's arguments")
    pieces = []
    pos = 0
    for start, end, name, unaliased in spans:
        pieces.append(sql[pos:start])
        pieces.append(wrap(sql[start:end]))
        if unaliased:
            # PostgreSQL names an unaliased call's column after the function: keep it
            pieces.append(f' AS "{name}"')
        pos = end
    pieces.append(sql[pos:])
    out = "".join(pieces)
    try:
        statements = len(json.loads(parser.parse_sql_json(out)).get("stmts", ()))
    except Exception as e:  # noqa: BLE001
        raise DefinitionError(f"the redacted statement does not parse: {e}") from None
    if statements != 1:
        raise DefinitionError("the redacted statement is not one statement")
    return Redacted(out, frozenset(f"pg_catalog.{s[2]}" for s in spans))
