"""catalog.discovery: validators, proposals, masking, the proposal file (pure)."""
from __future__ import annotations

import random
from datetime import date
from decimal import Decimal

import pytest

from catalog.discovery import (
    card_shape, card_valid, email_valid, embedded_pii, iban_valid, ip_valid, luhn_valid,
    mask_value, name_category, parse_date, phone_check, plausible_birth_date, propose,
    proposals_to_toml, ssn_parts, ssn_problem,
)
from catalog.loader import parse_catalog_text
from catalog.model import ColumnRef, RelationRef, Sensitivity

TODAY = date(2026, 1, 1)
T = RelationRef("public", "t")


# ------------------------------------------------------------ validators

@pytest.mark.parametrize("number, ok", [
    ("79927398713", True), ("4111 1111 1111 1111", True), ("4111-1111-1111-1111", True),
    ("5500005555555559", True), ("4111111111111112", False), ("79927398710", False),
    ("0000-0000-0000-0001", False), ("0000-0000-0000-0018", True), ("1", False), ("", False),
])
def test_luhn(number, ok):
    assert luhn_valid(number) is ok


@pytest.mark.parametrize("value, shape, valid", [
    ("4111 1111 1111 1111", True, True),
    ("4111111111111111", True, True),
    ("378282246310005", True, True),            # Amex, 15 digits
    ("3782 822463 10005", True, True),          # Amex print groups 4-6-5
    ("4111111111111112", True, False),          # Luhn fails
    ("0000-0000-0000-0018", True, False),       # Luhn passes, prefix 0 never issued
    ("0000-0000-0000-0001", True, False),
    ("4111-1111 1111-1111", False, False),      # mixed separators
    ("411111111111", False, False),             # 12 digits
    ("12345678901234567890", False, False),     # 20 digits
])
def test_card_shape_and_validity(value, shape, valid):
    assert card_shape(value) is shape
    assert card_valid(value) is valid


@pytest.mark.parametrize("value, ok", [
    ("GB82 WEST 1234 5698 7654 32", True), ("DE89370400440532013000", True),
    ("NL91ABNA0417164300", True), ("fr1420041010050500013m02606", True),
    ("GB82 WEST 1234 5698 7654 33", False),     # check digits
    ("DE8937040044053201300", False),           # wrong length for DE
    ("GB82-WEST", False), ("", False),
])
def test_iban_mod97(value, ok):
    assert iban_valid(value) is ok


@pytest.mark.parametrize("value, problem", [
    ("123-45-6789", None), ("123456789", None), ("078 05 1120", None),
    ("000-12-3456", "area 000 is never issued"), ("666-12-3456", "area 666 is never issued"),
    ("912-34-5678", "area 900-999 is never issued"), ("123-00-4567", "group 00 is never issued"),
    ("123-45-0000", "serial 0000 is never issued"),
])
def test_ssn_structure(value, problem):
    assert ssn_problem(*ssn_parts(value)) == problem


@pytest.mark.parametrize("value", ["12-345-6789", "1234-56-789", "123-45-678", "abc-de-fghi", "1234567890"])
def test_ssn_shape_rejects(value):
    assert ssn_parts(value) is None


@pytest.mark.parametrize("value, ok", [
    ("user01@example.invalid", True), ("a.b+tag@sub.example.co.uk", True), ("x@y.io", True),
    ("a@b", False), ("a..b@example.com", False), ("@example.com", False),
    ("a@-example.com", False), ("plainaddress", False), ("a b@example.com", False),
    ("a@example.c", False), ("x" * 65 + "@example.com", False),
])
def test_email(value, ok):
    assert email_valid(value) is ok


@pytest.mark.parametrize("value, shape, valid", [
    ("+1 202-555-0101", True, True), ("(212) 555-0136", True, True), ("+44 20 7946 0958", True, True),
    ("+1-555-0101", True, False),          # a possible local number, not an assigned range
    ("12345", False, False), ("1967-06-12", False, False), ("hello", False, False),
    ("+1 202-555-0101 ext", False, False),
])
def test_phone(value, shape, valid):
    assert phone_check(value) == (shape, valid)


@pytest.mark.parametrize("value, ok", [
    ("192.0.2.1", True), ("2001:db8::1", True), ("10.0.0.0/8", True),
    ("256.1.1.1", False), ("1.2.3", False), ("abc", False),
])
def test_ip(value, ok):
    assert ip_valid(value) is ok


@pytest.mark.parametrize("value, ok", [
    ("1967-06-12", True), ("2025-12-31", True), ("1890-01-01", False), ("2030-01-01", False),
])
def test_birth_date_age_range(value, ok):
    assert plausible_birth_date(parse_date(value), TODAY) is ok


def test_parse_date_rejects_impossible_dates():
    assert parse_date("2023-02-30") is None and parse_date("yesterday") is None
    assert parse_date(date(2000, 1, 2)) == date(2000, 1, 2)


@pytest.mark.parametrize("table, column, category", [
    ("customers", "email", "email"), ("users", "emailAddress", "email"),
    ("customers", "phone", "phone"), ("t", "mobile_number", "phone"),
    ("t", "ssn", "ssn"), ("t", "social_security_number", "ssn"),
    ("t", "dob", "dob"), ("t", "date_of_birth", "dob"), ("t", "birth_date", "dob"),
    ("t", "card_number", "card_number"), ("t", "credit_card", "card_number"), ("t", "pan", "card_number"),
    ("t", "iban", "iban"), ("t", "client_ip", "ip_address"), ("t", "ip_address", "ip_address"),
    ("t", "full_name", "name"), ("t", "lastName", "name"), ("customers", "name", "name"),
    ("t", "street_address", "address"), ("t", "passport_number", "national_id"),
    ("products", "name", None), ("t", "file_name", None), ("t", "city", None),
    ("t", "amount", None), ("t", "id", None), ("t", "created_at", None), ("t", "customer_id", None),
    ("t", "card_type", None), ("t", "hotel_name", None), ("t", "note", None),
])
def test_name_heuristics(table, column, category):
    assert name_category(table, column) == category


# ------------------------------------------------------------- propose

def test_valid_cards_without_a_name_are_cards():
    cards = ["4111 1111 1111 1111", "5500 0055 5555 5559", "3782 822463 10005"] * 10
    p = propose(T, "col7", "text", cards, today=TODAY)
    assert (p.category, p.confidence) == ("card_number", 0.85)
    assert any("30/30 sampled values are issuable card numbers" in e for e in p.evidence)


def test_test_cards_with_a_name_are_cards_with_lower_confidence():
    cards = [f"0000-0000-0000-{i:04d}" for i in range(1, 41)]
    p = propose(T, "card_number", "text", cards, today=TODAY)
    assert p.category == "card_number" and p.confidence < 0.85
    assert any("start with 0" in e for e in p.evidence)


def test_luhn_invalid_digit_strings_without_a_name_are_not_cards():
    rng = random.Random(7)
    numbers = []
    while len(numbers) < 40:
        n = "".join(rng.choice("0123456789") for _ in range(16))
        if not luhn_valid(n):
            numbers.append(n)     # order numbers, tracking codes ...
    assert propose(T, "tracking_code", "text", numbers, today=TODAY) is None


def test_test_ssns_with_a_name_say_why_they_fail_validation():
    p = propose(T, "ssn", "text", [f"000-00-{i:04d}" for i in range(1, 51)], today=TODAY)
    assert (p.category, p.confidence) == ("ssn", 0.7)
    assert any("area 000 is never issued" in e for e in p.evidence)


def test_issuable_ssns_without_a_name():
    p = propose(T, "c", "character varying(11)", ["123-45-6789", "078-05-1120", "219-09-9999"] * 5,
                today=TODAY)
    assert (p.category, p.confidence) == ("ssn", 0.85)


def test_ibans():
    p = propose(T, "account", "text", ["GB82 WEST 1234 5698 7654 32", "DE89370400440532013000"] * 5,
                today=TODAY)
    assert (p.category, p.confidence) == ("iban", 0.85)
    assert propose(T, "iban", "text", ["GB82 WEST 1234 5698 7654 33"] * 5, today=TODAY).confidence == 0.7


def test_emails_phones_ips():
    assert propose(T, "contact", "text", [f"person{i}@example.org" for i in range(20)],
                   today=TODAY).category == "email"
    p = propose(T, "phone", "text", ["+1 202-555-0101", "(212) 555-0136"] * 5, today=TODAY)
    assert (p.category, p.confidence) == ("phone", 0.95)
    assert propose(T, "addr", "inet", ["192.0.2.1", "2001:db8::1"], today=TODAY).category == "ip_address"
    assert propose(T, "client_ip", "text", ["192.0.2.1", "198.51.100.7"], today=TODAY).category == "ip_address"


def test_dates_are_birth_dates_only_when_named_so():
    dates = [date(1960 + i, 1 + i % 12, 1 + i) for i in range(25)]
    p = propose(T, "dob", "date", dates, today=TODAY)
    assert (p.category, p.confidence) == ("dob", 0.95)
    assert propose(T, "shipped_on", "date", dates, today=TODAY) is None
    future = [date(2090, 1, 1)] * 10
    assert propose(T, "birth_date", "date", future, today=TODAY).confidence < 0.95


def test_names_only_when_the_column_name_says_so():
    people = ["Ada Lovelace", "Jean-Luc Picard", "Grace Hopper", "Alan Turing"] * 5
    assert propose(T, "full_name", "text", people, today=TODAY).category == "name"
    assert propose(T, "city", "text", ["Sampleton", "Mockburg", "New York"] * 5, today=TODAY) is None
    assert propose(RelationRef("public", "products"), "name", "text", people, today=TODAY) is None


def test_free_text_with_embedded_pii():
    notes = ["standard delivery"] * 20 + ["call back on +1-555-0136", "refund to card 0000-0000-0000-0050",
                                          "mail jo@example.org please"]
    p = propose(T, "note", "text", notes, today=TODAY)
    assert p.category == "free_text"
    assert "3/23 sampled values contain PII inside free text" in p.evidence
    assert propose(T, "note", "text", ["standard delivery", "leave at door", "order 12 of 2024-01-02"] * 5,
                   today=TODAY) is None


@pytest.mark.parametrize("text, kinds", [
    ("call +1-555-0136 now", ["phone number"]),
    ("card 4111 1111 1111 1111.", ["card number"]),
    ("ssn 123-45-6789", ["SSN"]),
    ("from 192.0.2.1", ["IP address"]),
    ("pay to GB82 WEST 1234 5698 7654 32", ["IBAN"]),
    ("write to a.b@example.org", ["e-mail address"]),
    ("delivered 2024-01-02, 3 boxes", []),
    ("version 1.2.3", []),
])
def test_embedded_pii(text, kinds):
    assert [k for k, _ in embedded_pii(text)] == kinds


def test_nothing_for_ids_amounts_timestamps_and_plain_text():
    assert propose(T, "id", "integer", list(range(1, 60)), today=TODAY) is None
    assert propose(T, "customer_id", "integer", list(range(1, 60)), today=TODAY) is None
    assert propose(T, "amount", "numeric", [Decimal("13.99"), Decimal("8.99")] * 10, today=TODAY) is None
    assert propose(T, "created_at", "timestamp with time zone",
                   ["2026-01-01 10:00:00+00"] * 10, today=TODAY) is None
    assert propose(T, "status", "text", ["shipped", "pending", "cancelled"] * 10, today=TODAY) is None


def test_a_named_column_without_values_is_proposed_with_low_confidence():
    p = propose(T, "email", "text", [None, None], today=TODAY)
    assert (p.category, p.confidence) == ("email", 0.4) and p.masked_examples == ()


def test_integer_ssn_column_when_named():
    assert propose(T, "ssn", "bigint", [123456789, 219099999] * 5, today=TODAY).category == "ssn"


# ------------------------------------------------------------- masking

VALUES = ["user01@example.invalid", "+1-555-0101", "000-00-0001", "0000-0000-0000-0001",
          "Alice Example-01", "1967-06-12", "GB82 WEST 1234 5698 7654 32", "192.0.2.1",
          "a much longer free text value that goes on and on"]


@pytest.mark.parametrize("value", VALUES)
@pytest.mark.parametrize("keep", ["first", "last", "none"])
def test_mask_keeps_at_most_two_characters(value, keep):
    masked = mask_value(value, keep)
    kept = [c for c in masked if c.isalnum()]
    assert len(kept) <= 2
    assert value not in masked


def test_proposal_examples_never_carry_raw_values():
    samples = {"email": [f"user{i:02d}@example.invalid" for i in range(50)],
               "ssn": [f"000-00-{i:04d}" for i in range(50)],
               "note": [f"call back on +1-555-01{i:02d}" for i in range(50)]}
    for column, values in samples.items():
        p = propose(T, column, "text", values, today=TODAY)
        text = " ".join(p.evidence + p.masked_examples)
        for v in values:
            assert v not in text
            assert v.split()[-1] not in text


# ------------------------------------------------------------- the file

def test_proposal_file_is_a_catalog_file():
    proposals = [
        propose(T, "email", "text", ["a@example.org"] * 3, today=TODAY),
        propose(RelationRef("crm", "Members"), "SSN", "text", ["123-45-6789"] * 3, today=TODAY),
    ]
    text = proposals_to_toml(proposals, header="scanned db\nsecond line")
    cf = parse_catalog_text(text, "proposals.toml")
    assert {(e.column, e.category, e.sensitivity) for e in cf.entries} == {
        (ColumnRef("public", "t", "email"), "email", Sensitivity.MEDIUM),
        (ColumnRef("crm", "Members", "SSN"), "ssn", Sensitivity.CRITICAL),
    }
    assert "# confidence: 0.95" in text and "# evidence: " in text and "# second line" in text
    assert "a@example.org" not in text and "123-45-6789" not in text


# ------------------------------------------------------------- comments

def test_a_comment_naming_a_category_is_evidence():
    notes = ["standard delivery"] * 5 + ["call back on +1-555-0136"]
    p = propose(T, "note", "text", notes, today=TODAY, comment="free_text (may contain PII)")
    plain = propose(T, "note", "text", notes, today=TODAY)
    assert p.category == "free_text" and p.confidence == round(plain.confidence + 0.05, 2)
    assert p.evidence[-1] == "column comment mentions free_text"
    # values that show nothing: a weak proposal, saying the values do not confirm it
    weak = propose(T, "remarks", "text", ["ok", "fine"], today=TODAY, comment="free_text, may hold PII")
    assert (weak.category, weak.confidence) == ("free_text", 0.45)
    # a comment that names no category changes nothing
    assert propose(T, "city", "text", ["Sampleton"], today=TODAY, comment="where they live") is None
