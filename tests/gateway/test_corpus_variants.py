"""The attack corpus again, each statement rewritten in ways that mean the same to
PostgreSQL but read differently: identifiers quoted, identifiers spelled as Unicode
escapes, keywords in odd case with comments between every token, and the whole thing
sent as an extended-protocol Parse. A gateway that recognised attacks by their text
would pass some of these; the property is the corpus's own: no catalogued value in
any byte the client receives."""
from __future__ import annotations

import pglast.parser
import pytest

from .test_enforcement import CORPUS, EXTRA, _client, catalogued_values, corpus_gateway  # noqa: F401

_KEYWORDS = ("RESERVED_KEYWORD", "UNRESERVED_KEYWORD", "COL_NAME_KEYWORD", "TYPE_FUNC_NAME_KEYWORD")


def _tokens(sql: str):
    try:
        return list(pglast.parser.scan(sql))
    except Exception:  # noqa: BLE001 - text the scanner refuses is sent as is elsewhere
        return None


def _rebuild(sql: str, tokens, render, between: str = " ") -> str:
    """The statement with each token replaced by ``render(token, text)``, tokens joined
    by ``between`` (a token boundary never changes meaning; comments end at newline)."""
    parts = []
    last = 0
    for tok in tokens:
        gap = sql[last:tok.start]
        parts.append(gap if gap.strip() or not parts else between)
        parts.append(render(tok, sql[tok.start:tok.end + 1]))
        last = tok.end + 1
    parts.append(sql[last:])
    return "".join(parts)


def _plain_ident(tok, text: str) -> bool:
    return tok.name == "IDENT" and not text.startswith('"') and not text.upper().startswith('U&"')


def quoted(sql: str, tokens) -> str:
    """``customers.ssn`` -> ``"customers"."ssn"`` (an unquoted name is folded to lower case)."""
    return _rebuild(sql, tokens, lambda t, s: f'"{s.lower()}"' if _plain_ident(t, s) else s)


def unicode_escaped(sql: str, tokens) -> str:
    """``ssn`` -> ``U&"\\0073\\0073\\006e"``."""
    def render(t, s):
        if not _plain_ident(t, s):
            return s
        return 'U&"' + "".join(f"\\{ord(c):04x}" for c in s.lower()) + '"'
    return _rebuild(sql, tokens, render)


def odd_case_with_comments(sql: str, tokens) -> str:
    """``SELECT ssn FROM`` -> ``sElEcT/* */ssn--\\n fRoM``."""
    def render(t, s):
        if t.kind in _KEYWORDS and s.isalpha():
            return "".join(c.upper() if i % 2 else c.lower() for i, c in enumerate(s))
        return s
    return _rebuild(sql, tokens, render, between="/* piigate */ --\n ")


VARIANTS = {"quoted": quoted, "unicode": unicode_escaped, "comments": odd_case_with_comments}


def _cases():
    out = []
    for case in CORPUS + EXTRA:
        if _tokens(case["sql"]) is not None:
            out.append(case)
    return out


CASES = _cases()


# against the gateway with the reviewed catalog file only: the corpus itself runs
# against both (test_enforcement.py), and this is four times its statements
@pytest.mark.parametrize("corpus_gateway", ["catalog-file"], indirect=True)
@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_attack_corpus_variants_leak_nothing(corpus_gateway, case):  # noqa: F811
    values = catalogued_values()
    tokens = _tokens(case["sql"])
    sent = []
    for name, make in VARIANTS.items():
        sent.append((name, make(case["sql"], tokens), case.get("params")))
    if case.get("params") is None and ";" not in case["sql"].rstrip().rstrip(";"):
        sent.append(("extended", case["sql"], []))
    for name, sql, params in sent:
        client = _client(corpus_gateway)
        try:
            for pre in case.get("pre") or []:
                client.query(pre)
            if params is not None:
                client.extended(sql, params)
            else:
                client.query(sql)
            client.drain(0.05)
            received = bytes(client.received).decode("utf-8", "replace")
        finally:
            client.close()
        leaked = sorted(v for v in values if v in received)
        assert not leaked, f"{case['id']} as {name} leaked {leaked[:5]} ({len(leaked)} values): {sql}"
