"""Error and notice text for sessions under policy: values a message quotes are
scrubbed, in PostgreSQL's own messages and in translated ones."""
from __future__ import annotations

import pytest

from gateway.analysis import analyze
from gateway.analysis.facts import StatementKind
from gateway.protocol import codec
from gateway.schema import LiveSchema
from gateway.session import PolicyGate


def scrubbed(message: str, **fields) -> dict:
    body = codec.encode_error("22P02", message, **fields)[5:]
    out = PolicyGate.on_upstream_error(None, None, body)
    return codec.decode_error_fields(out[5:]).fields


@pytest.mark.parametrize("message", [
    'invalid input syntax for type integer: "000-00-0007"',
    "invalid input syntax for type integer: '000-00-0007'",
    "ungültige Eingabesyntax für Typ integer: »000-00-0007«",
    "syntaxe en entrée invalide pour le type integer : « 000-00-0007 »",
    "ungültiger Wert „000-00-0007“",
    "valor inválido “000-00-0007”",
    "値が不正です「000-00-0007」",
])
def test_quoted_values_are_scrubbed_in_any_language(message):
    fields = scrubbed(message)
    assert "000-00-0007" not in fields["M"]
    assert fields["C"] == "22P02"


def test_detail_and_position_fields_are_dropped():
    fields = scrubbed("x", detail="Key (ssn)=(000-00-0007) already exists.", hint='try "000-00-0007"')
    assert "D" not in fields
    assert "000-00-0007" not in fields["H"]


def test_lc_messages_is_a_session_setting_the_policy_decides():
    (facts,) = analyze("SET lc_messages = 'de_DE.UTF-8'", LiveSchema())
    assert facts.kind is StatementKind.SESSION
