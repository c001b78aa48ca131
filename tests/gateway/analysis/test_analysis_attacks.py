"""Every attack in tests/data/security/attack-corpus.jsonl and
tests/data/analysis/attacks-extra.jsonl: the analyzer's facts must include every
column in ``reaches`` or be unknown. Statements in ``pre`` run first on the same
simulated session (search_path, cursors, prepared statements); FETCH/MOVE and
EXECUTE are judged by the facts of the DECLARE/PREPARE they name."""
from __future__ import annotations

import json
import pathlib

import pytest

from catalog.model import ColumnRef
from gateway.analysis import StatementKind, analyze
from gateway.analysis.facts import StatementFacts

DATA = pathlib.Path(__file__).resolve().parents[2] / "data"


def _load(path: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


CORPUS = _load(DATA / "security" / "attack-corpus.jsonl") + _load(DATA / "analysis" / "attacks-extra.jsonl")


class Session:
    """Just enough session state to follow the corpus: search_path, cursors, prepared statements."""

    def __init__(self, schema):
        self.schema = schema
        self.search_path: tuple[str, ...] = ("public",)
        self.cursors: dict[str, StatementFacts] = {}
        self.prepared: dict[str, StatementFacts] = {}

    def run(self, sql: str, extended: bool = False) -> list[StatementFacts]:
        """Analyse one message's text; returns the facts that decide what it reaches."""
        first = analyze(sql, self.schema, self.search_path, extended=extended)
        out = []
        for i, facts in enumerate(first):
            if i > 0 and facts.kind != StatementKind.UNKNOWN:
                # PostgreSQL runs the statements of a text one after the other:
                # a SET earlier in the text changes how later ones resolve
                facts = analyze(facts.sql, self.schema, self.search_path)[0]
            out.append(facts)
            if facts.kind == StatementKind.SESSION and facts.setting and facts.setting[0] == "search_path":
                value = facts.setting[1] or "public"
                self.search_path = tuple(s.strip().strip('"') for s in value.split(","))
            elif facts.kind == StatementKind.CURSOR:
                if facts.command == "DECLARE":
                    self.cursors[facts.cursor_name] = facts.inner
                elif facts.command in ("FETCH", "MOVE"):
                    out.append(self.cursors.get(facts.cursor_name)
                               or StatementFacts(StatementKind.UNKNOWN, sql, unknown="cursor not declared"))
            elif facts.kind == StatementKind.PREPARE:
                if facts.command == "PREPARE":
                    self.prepared[facts.prepared_name] = facts.inner
                elif facts.command == "EXECUTE":
                    out.append(self.prepared.get(facts.prepared_name)
                               or StatementFacts(StatementKind.UNKNOWN, sql, unknown="statement not prepared"))
        return out


def _reached(facts: list[StatementFacts]) -> set[ColumnRef]:
    cols: set[ColumnRef] = set()
    for f in facts:
        while f is not None:
            cols |= f.column_refs
            f = f.inner
    return cols


EXPECTED_UNKNOWN = dict(
    line.split("\t", 1) for line in (DATA / "analysis" / "expected-unknown.tsv").read_text().splitlines()
    if line.strip() and not line.startswith("#"))


@pytest.mark.parametrize("entry", CORPUS, ids=[e["id"] for e in CORPUS])
def test_attack_is_seen_or_unknown(entry, schema):
    """Unknown exactly where expected-unknown.tsv says (fail closed by design);
    everywhere else the facts are attributed and include every column reached."""
    session = Session(schema)
    for pre in entry.get("pre", ()):
        session.run(pre)
    facts = session.run(entry["sql"], extended=bool(entry.get("params")))
    reasons = [f.unknown for f in facts if f.is_unknown]
    expected = EXPECTED_UNKNOWN.get(entry["id"])
    if expected is not None:
        assert reasons and any(expected.strip() in r for r in reasons), (entry["id"], reasons)
        return
    assert not reasons, f"{entry['id']}: unexpectedly unknown: {reasons}"
    want = {ColumnRef.parse(c) for c in entry["reaches"]}
    missing = want - _reached(facts)
    assert not missing, (f"{entry['id']}: facts miss {sorted(map(str, missing))}: "
                         + "; ".join(f"{f.kind.value} {sorted(map(str, f.column_refs))}" for f in facts))


def test_expected_unknown_ids_exist():
    assert set(EXPECTED_UNKNOWN) <= {e["id"] for e in CORPUS}


def test_corpus_ids_are_unique():
    ids = [e["id"] for e in CORPUS]
    assert len(ids) == len(set(ids))
