"""Data-driven analyzer tests: tests/data/analysis/*.sql (format in select.sql's header)."""
from __future__ import annotations

import pathlib

import pytest

from catalog.model import ColumnRef, RelationRef
from gateway.analysis import analyze
from gateway.analysis.facts import StatementFacts, Usage

DATA = pathlib.Path(__file__).resolve().parents[2] / "data" / "analysis"
KEYS = {"kind", "command", "count", "unknown", "columns", "includes", "excludes", "read", "written",
        "functions", "dynamic", "setting", "cursor", "prepared", "params", "creates", "inner_columns",
        "extended"}


def _blocks():
    for path in sorted(DATA.glob("*.sql")):
        lines = path.read_text().split("\n")
        start = 0
        for i in range(len(lines) + 1):
            if i == len(lines) or not lines[i].strip():
                block = lines[start:i]
                start = i + 1
                expect, sql, title = {}, [], ""
                for ln in block:
                    if ln.startswith("-- ") and not sql:
                        key, sep, value = ln[3:].partition(":")
                        if sep and key.strip() in KEYS:
                            expect[key.strip()] = value.strip()
                        elif not title:
                            title = ln[3:].strip()
                        continue
                    sql.append(ln)
                if expect:
                    text = "\n".join(sql)
                    yield pytest.param(text, expect, id=f"{path.stem}:{start - len(block)}:{text[:40]}")


def _columns(spec: str) -> dict[ColumnRef, frozenset[Usage]]:
    out = {}
    for tok in spec.split():
        ref, _, usages = tok.partition("=")
        out[ColumnRef.parse(ref)] = frozenset(Usage(u) for u in usages.split(",") if u)
    return out


def _relations(spec: str) -> frozenset[RelationRef]:
    return frozenset(RelationRef(*t.split(".", 1)) for t in spec.split())


def _uses(f: StatementFacts) -> dict[ColumnRef, frozenset[Usage]]:
    return {u.column: u.usages for u in f.columns}


@pytest.mark.parametrize("sql,expect", list(_blocks()))
def test_fixture(sql, expect, schema):
    all_facts = analyze(sql, schema, ("public",), extended=expect.get("extended") == "yes")
    f = all_facts[-1]
    ctx = f"{f.kind.value} unknown={f.unknown!r} columns={sorted((str(c), sorted(u.value for u in us)) for c, us in _uses(f).items())}"
    if "count" in expect:
        assert len(all_facts) == int(expect["count"]), ctx
    if "kind" in expect:
        assert f.kind.value == expect["kind"], ctx
    if "command" in expect:
        assert f.command == expect["command"], ctx
    u = expect.get("unknown")
    if u == "no":
        assert f.unknown is None, ctx
    elif u == "yes":
        assert f.unknown is not None, ctx
    elif u:
        assert f.unknown is not None and u.lower() in f.unknown.lower(), ctx
    if "columns" in expect:
        assert _uses(f) == _columns(expect["columns"]), ctx
    if "includes" in expect:
        got = _uses(f)
        for col, usages in _columns(expect["includes"]).items():
            assert col in got and usages <= got[col], f"{col} {sorted(usages)}: {ctx}"
    if "excludes" in expect:
        got = _uses(f)
        for col in _columns(expect["excludes"]):
            assert col not in got, f"{col} should not be touched: {ctx}"
    if "inner_columns" in expect:
        assert f.inner is not None and _uses(f.inner) == _columns(expect["inner_columns"]), ctx
    if "read" in expect:
        assert f.relations_read == _relations(expect["read"]), ctx
    if "written" in expect:
        assert f.relations_written == _relations(expect["written"]), ctx
    for fn in expect.get("functions", "").split():
        assert fn in f.functions, f"{fn} not in {sorted(f.functions)}"
    if "dynamic" in expect:
        assert any(expect["dynamic"].lower() in d.lower() for d in f.dynamic), f.dynamic
    if "setting" in expect:
        name, _, value = expect["setting"].partition("=")
        assert f.setting == (name, None if value == "None" else value), f.setting
    if "cursor" in expect:
        assert f.cursor_name == expect["cursor"]
    if "prepared" in expect:
        assert f.prepared_name == expect["prepared"]
    if "params" in expect:
        assert f.param_count == int(expect["params"])
    if "creates" in expect:
        assert f.creates == RelationRef(*expect["creates"].split(".", 1))
