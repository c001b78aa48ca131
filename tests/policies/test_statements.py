"""Statements through the whole pure pipeline: analyze -> build_request -> decide
(-> rewrite for MASK), for tests/data/policies/statements.jsonl against
tests/data/policies/policy.toml and the hand-built sample schema and catalog."""
from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest

from gateway.analysis import analyze
from gateway.decisions import build_request
from gateway.rewrite import RewriteError, rewrite
from policies import decide
from policies.loader import load_policy
from policies.model import Effect, Principal, RequestContext
from tests.gateway.rewrite.sample_schema import security_catalog, security_schema

DATA = Path(__file__).resolve().parents[1] / "data" / "policies"
POLICY = load_policy(DATA / "policy.toml")
SCHEMA = security_schema()      # the frozen introspection of schema.sql + fixtures.sql
CATALOG = security_catalog(SCHEMA)
CASES = [json.loads(line) for line in (DATA / "statements.jsonl").read_text().splitlines() if line.strip()]
NOON = datetime.fromisoformat("2026-11-25T12:00:00+00:00").timestamp()


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_statement_fixture(case):
    (facts,) = analyze(case["sql"], SCHEMA, ("public",))
    req = build_request(facts, CATALOG, Principal(case["user"], frozenset(case["roles"])),
                        RequestContext(client_addr="10.0.0.5", application_name="psql", now=NOON),
                        schema=SCHEMA)
    d = decide(req, POLICY)
    assert d.effect.value == case["expect"], (d.rule, d.reasons, facts.unknown)
    if "rule" in case:
        assert d.rule == case["rule"], d.reasons
    if d.effect is Effect.MASK and case.get("rewrite") == "refused":
        with pytest.raises(RewriteError):
            rewrite(facts.sql, d.mask, SCHEMA, ("public",))
    elif d.effect is Effect.MASK:
        out = rewrite(facts.sql, d.mask, SCHEMA, ("public",))
        assert out.wrapped, "a MASK decision must wrap at least one relation"


def test_corpus_without_grant_is_never_allowed_raw():
    """Every corpus statement that reaches PII, for a principal with no grant and no
    rule: mask (and the rewriter can do it), approve or deny. Never a raw allow."""
    corpus = Path(__file__).resolve().parents[1] / "data" / "security" / "attack-corpus.jsonl"
    for line in corpus.read_text().splitlines():
        case = json.loads(line)
        if case.get("pre"):
            continue   # needs session state (cursors, prepared statements): covered by the gateway tests
        for facts in analyze(case["sql"], SCHEMA, ("public",)):
            req = build_request(facts, CATALOG, Principal("eve"), RequestContext(now=NOON), schema=SCHEMA)
            d = decide(req, POLICY)
            if d.effect is Effect.MASK:
                try:
                    rewrite(facts.sql, d.mask, SCHEMA, ("public",))
                except RewriteError:
                    continue   # the gateway denies: fine
            touches_pii = bool(req.pii) or facts.unknown is not None
            assert not (d.effect is Effect.ALLOW and touches_pii), (case["id"], facts.sql, d)
