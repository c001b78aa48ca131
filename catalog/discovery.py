"""Discovery: propose catalog entries from a column's name, type and sampled values.

Pure: ``propose(table, column, type_name, samples)`` takes values and returns a
``Proposal`` (or ``None``); sampling the database is ``gateway.catalog_scan``.

Two kinds of evidence are combined:

- the column name (``email``, ``phone``, ``ssn``, ``dob``, ``card_number``,
  ``full_name`` ...), only when the column's type can hold that kind of value;
- value detectors with real validation: Luhn and an issued prefix for card numbers,
  ISO 13616 mod-97 for IBANs, SSN area/group/serial rules, an e-mail address
  grammar, ``phonenumbers`` for phone numbers, ``ipaddress`` for IP addresses, a
  plausible age for dates of birth; and for free text, PII found *inside* values.

A value that has the right shape but fails validation (the sample data's
``000-00-0001`` SSNs, ``0000-...`` card numbers, ``555-01xx`` phone numbers) still
counts when the name agrees, with a lower confidence and evidence saying so:
synthetic and test data is exactly what sits in a staging copy of production.
A shape match with no name to support it is not proposed for ambiguous shapes
(nine or sixteen digits are also order numbers).

Proposals never carry raw values: ``masked_examples`` keep at most two characters
of a value (``mask_value``), evidence only counts (``48/50 sampled values ...``).
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from datetime import date, datetime
from typing import Iterable, Sequence

from catalog.model import DEFAULT_SENSITIVITY, ColumnRef, RelationRef, Sensitivity

try:  # a declared dependency; discovery still works (shape-only) without it
    import phonenumbers
except ImportError:  # pragma: no cover
    phonenumbers = None

#: share of sampled non-null values a detector must match to speak for the column
MAJORITY = 0.7
MAX_EXAMPLES = 3


@dataclass(frozen=True, slots=True)
class Proposal:
    """A proposed catalog entry, for a person to review."""
    column: ColumnRef
    category: str
    confidence: float                 # 0..1
    evidence: tuple[str, ...]
    masked_examples: tuple[str, ...]
    sensitivity: Sensitivity = Sensitivity.MEDIUM
    type_name: str = ""


# ---------------------------------------------------------------- validators


def luhn_valid(number: str) -> bool:
    """The Luhn checksum over the digits of ``number`` (separators ignored)."""
    digits = [int(c) for c in number if c.isdigit()]
    if len(digits) < 2:
        return False
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


_CARD_SHAPE = re.compile(r"\d{13,19}|\d{4}([ -])\d{4}\1\d{4}\1\d{1,7}|\d{4}([ -])\d{6}\2\d{5}")


def card_shape(value: str) -> bool:
    """13-19 digits, bare or in the groups cards are printed in (4-4-4-4, 4-6-5)."""
    return _CARD_SHAPE.fullmatch(value.strip()) is not None


def card_valid(value: str) -> bool:
    """A card number that could have been issued: card shape, Luhn, and a major
    industry identifier other than 0 (ISO/IEC 7812: 0 is not issued to card
    networks, which is why test data uses it)."""
    digits = re.sub(r"\D", "", value)
    return card_shape(value) and digits[0] != "0" and luhn_valid(digits)


# ISO 13616 IBAN lengths per country (the SEPA area and the common others).
IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22,
    "BH": 22, "BR": 29, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18,
    "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22,
    "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22,
    "IL": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LI": 21,
    "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27,
    "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25,
    "QA": 29, "RO": 24, "RS": 22, "SA": 24, "SE": 24, "SI": 19, "SK": 24, "SM": 27,
    "TN": 24, "TR": 26, "UA": 29, "VG": 24, "XK": 20,
}
_IBAN_SHAPE = re.compile(r"[A-Z]{2}\d{2}[A-Z0-9]{11,30}")


def iban_shape(value: str) -> bool:
    return _IBAN_SHAPE.fullmatch(re.sub(r"\s", "", value).upper()) is not None


def iban_valid(value: str) -> bool:
    """ISO 13616: known country length and (rearranged, letters as 10..35) mod 97 == 1."""
    s = re.sub(r"\s", "", value).upper()
    if not _IBAN_SHAPE.fullmatch(s):
        return False
    expected = IBAN_LENGTHS.get(s[:2])
    if expected is not None and len(s) != expected:
        return False
    rearranged = s[4:] + s[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


_SSN_SHAPE = re.compile(r"(\d{3})-(\d{2})-(\d{4})|(\d{3}) (\d{2}) (\d{4})|(\d{9})")


def ssn_parts(value: str) -> tuple[str, str, str] | None:
    """(area, group, serial) if ``value`` has an SSN shape (AAA-GG-SSSS or 9 digits)."""
    m = _SSN_SHAPE.fullmatch(value.strip())
    if m is None:
        return None
    if m.group(7):
        d = m.group(7)
        return d[:3], d[3:5], d[5:]
    g = [x for x in m.groups() if x is not None]
    return g[0], g[1], g[2]


def ssn_problem(area: str, group: str, serial: str) -> str | None:
    """Why an SSN could never have been issued, or None if it could
    (SSA rules: area 000, 666 and 900-999, group 00 and serial 0000 are never issued)."""
    if area == "000":
        return "area 000 is never issued"
    if area == "666":
        return "area 666 is never issued"
    if area[0] == "9":
        return "area 900-999 is never issued"
    if group == "00":
        return "group 00 is never issued"
    if serial == "0000":
        return "serial 0000 is never issued"
    return None


_EMAIL = re.compile(
    r"(?P<local>[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*)"
    r"@(?P<domain>(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63})")


def email_valid(value: str) -> bool:
    """An addr-spec with a dot-atom local part and a DNS domain (RFC 5321 lengths)."""
    v = value.strip()
    m = _EMAIL.fullmatch(v)
    return m is not None and len(m.group("local")) <= 64 and len(v) <= 254


_PHONE_SHAPE = re.compile(r"\+?[\d][\d\s().-]{5,22}\d|\(\d{3}\)\s?\d{3}[\s.-]?\d{4}")


def phone_check(value: str, region: str = "US") -> tuple[bool, bool]:
    """(shape, valid): shape = 7-15 digits written like a phone number (the
    number ``phonenumbers`` deems possible, at least as a local number); valid =
    ``phonenumbers.is_valid_number`` (an assigned range of a real numbering plan)."""
    v = value.strip()
    digits = re.sub(r"\D", "", v)
    if not (7 <= len(digits) <= 15) or _PHONE_SHAPE.fullmatch(v) is None:
        return False, False
    if phonenumbers is None:
        return True, False
    try:
        num = phonenumbers.parse(v, region)
    except phonenumbers.NumberParseException:
        return False, False
    reason = phonenumbers.is_possible_number_with_reason(num)
    possible = reason in (phonenumbers.ValidationResult.IS_POSSIBLE,
                          phonenumbers.ValidationResult.IS_POSSIBLE_LOCAL_ONLY)
    return possible, possible and phonenumbers.is_valid_number(num)


def ip_valid(value: str) -> bool:
    try:
        ipaddress.ip_interface(value.strip())
        return True
    except ValueError:
        return False


def parse_date(value: object) -> date | None:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    m = re.match(r"(\d{4})-(\d{2})-(\d{2})", str(value).strip())
    if m is None:
        return None
    try:
        return date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
    except ValueError:
        return None


def plausible_birth_date(d: date, today: date) -> bool:
    """Someone alive, aged 0 to 120."""
    age = (today - d).days / 365.25
    return 0 <= age <= 120


_NAME_WORD = re.compile(r"[A-ZÀ-ÖØ-Þ][\w'’.-]*")


def looks_like_person_name(value: str) -> bool:
    """Two to five words, each capitalised (Ada Lovelace, Jean-Luc Picard, O'Neil)."""
    words = value.split()
    return 2 <= len(words) <= 5 and all(_NAME_WORD.fullmatch(w) for w in words)


# ----------------------------------------------------------------- masking


def mask_value(value: object, keep: str = "first") -> str:
    """A masked example: the value's shape with at most two characters of it.

    Letters and digits become ``*``; separators (``-``, ``@``, ``.``, space ...) stay
    so a reviewer sees the format. ``keep="first"`` keeps the first letter or digit
    (e-mail: also the first of the domain), ``"last"`` the last one, ``"none"``
    nothing. Long values are cut at 24 characters."""
    s = str(value)
    cut = len(s) > 24
    s = s[:24]
    out = ["*" if c.isalnum() else c for c in s]
    alnum = [i for i, c in enumerate(s) if c.isalnum()]
    if len(alnum) >= 4 and keep != "none":
        if keep == "last":
            out[alnum[-1]] = s[alnum[-1]]
        else:
            out[alnum[0]] = s[alnum[0]]
            at = s.find("@")
            after = [i for i in alnum if i > at] if at >= 0 else []
            if after:
                out[after[0]] = s[after[0]]
    return "".join(out) + ("…" if cut else "")


# ----------------------------------------------------------- column names


def name_tokens(column: str) -> list[str]:
    """``customerEmailAddress`` / ``customer_email_address`` -> [customer, email, address]."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", column)
    return [t for t in re.split(r"[^A-Za-z0-9]+", spaced.lower()) if t]


_PERSON_TABLES = {"customer", "customers", "user", "users", "person", "persons", "people",
                  "employee", "employees", "patient", "patients", "contact", "contacts",
                  "member", "members", "client", "clients", "student", "students", "staff",
                  "account_holders", "applicants", "applicant", "guests", "guest"}
_NAME_QUALIFIERS = {"full", "first", "last", "given", "family", "middle", "maiden", "sur",
                    "customer", "contact", "person", "patient", "employee", "holder",
                    "cardholder", "legal", "display", "billing", "shipping", "recipient"}


def name_category(table: str, column: str) -> str | None:
    """The category a column name suggests, or None."""
    t = name_tokens(column)
    joined = "".join(t)
    s = set(t)
    if s & {"email", "mail"} or "email" in joined:
        return "email"
    if s & {"ip", "ipaddr", "ipv4", "ipv6"} or joined in {"ipaddress", "clientaddr", "remoteaddr"}:
        return "ip_address"
    if s & {"iban"}:
        return "iban"
    if s & {"ssn", "socialsecurity"} or "socialsecurity" in joined:
        return "ssn"
    if s & {"passport", "nin", "nino"} or joined in {"nationalid", "taxid", "tin", "nationalidnumber"}:
        return "national_id"
    if s & {"dob", "birth", "birthday", "birthdate", "born"} or "dateofbirth" in joined:
        return "dob"
    if s & {"pan", "cc", "ccnum", "creditcard"} or "creditcard" in joined or \
            ("card" in s and s & {"number", "no", "num", "nr"}) or joined == "card":
        return "card_number"
    if s & {"phone", "mobile", "telephone", "tel", "cell", "fax", "msisdn", "cellphone"} \
            or "phone" in joined:
        return "phone"
    if joined in {"fullname", "firstname", "lastname", "surname", "givenname", "familyname",
                  "middlename", "maidenname", "forename", "cardholder", "cardholdername"}:
        return "name"
    if "name" in s and (s & _NAME_QUALIFIERS):
        return "name"
    if t == ["name"] and name_tokens(table)[-1:] and "_".join(name_tokens(table)) in _PERSON_TABLES:
        return "name"
    if s & {"street", "address", "addr"} or joined.startswith("addressline"):
        return "address"
    return None


# ----------------------------------------------------------- column types

_TEXT_TYPES = ("text", "character varying", "character", "varchar", "char", "citext", "bpchar",
               "name", "json", "jsonb")
_INT_TYPES = ("bigint", "integer", "numeric", "smallint")


def type_family(type_name: str) -> str:
    t = type_name.lower().split("(")[0].strip()
    t = t.rsplit(".", 1)[-1]
    if t.endswith("[]"):
        return "other"
    if t in _TEXT_TYPES or t.startswith("character"):
        return "text"
    if t in ("inet", "cidr"):
        return "inet"
    if t == "date":
        return "date"
    if t.startswith("timestamp"):
        return "timestamp"
    if t in _INT_TYPES:
        return "int"
    return "other"


#: which type families can hold each category as whole values
_FAMILIES = {
    "email": {"text"}, "phone": {"text", "int"}, "ssn": {"text", "int"},
    "national_id": {"text", "int"}, "card_number": {"text", "int"}, "iban": {"text"},
    "ip_address": {"text", "inet"}, "dob": {"date", "timestamp", "text"},
    "name": {"text"}, "address": {"text"},
}


# ----------------------------------------------------------- detectors

@dataclass(frozen=True, slots=True)
class _Score:
    category: str
    confidence: float
    evidence: tuple[str, ...]
    keep: str = "first"


def _frac(n: int, total: int) -> float:
    return n / total if total else 0.0


def _count(values: Sequence[str], pred) -> int:
    return sum(1 for v in values if pred(v))


def _whole_value(category: str, values: Sequence[str], named: bool, name_ev: str,
                 today: date) -> _Score | None:
    """Score ``category`` for a column whose values should each *be* one such value."""
    n = len(values)
    ev = [name_ev] if named else []

    def result(strong: int, shape: int, what_strong: str, what_shape: str, why_weak: str,
               ambiguous: bool, keep: str = "first") -> _Score | None:
        if _frac(strong, n) >= MAJORITY:
            return _Score(category, 0.95 if named else 0.85,
                          tuple(ev + [f"{strong}/{n} sampled values {what_strong}"]), keep)
        if _frac(shape, n) >= MAJORITY and (named or not ambiguous):
            conf = 0.7 if named else 0.5
            return _Score(category, conf, tuple(ev + [
                f"{shape}/{n} sampled values {what_shape}",
                f"{strong}/{n} {what_strong}" + (f" ({why_weak})" if why_weak else "")]), keep)
        return None

    if category == "email":
        ok = _count(values, email_valid)
        return result(ok, ok, "pass e-mail address validation", "", "", False)
    if category == "card_number":
        shape = _count(values, card_shape)
        strong = _count(values, card_valid)
        luhn = _count(values, lambda v: card_shape(v) and luhn_valid(v))
        zero = _count(values, lambda v: card_shape(v) and v.strip()[0] == "0")
        why = []
        if luhn > strong or luhn < shape:
            why.append(f"{luhn}/{n} pass the Luhn check")
        if zero:
            why.append(f"{zero}/{n} start with 0, a prefix never issued to card networks")
        return result(strong, shape, "are issuable card numbers (Luhn and prefix)",
                      "have a card-number shape (13-19 digits)", "; ".join(why), True, "last")
    if category == "iban":
        shape = _count(values, iban_shape)
        strong = _count(values, iban_valid)
        return result(strong, shape, "pass the IBAN mod-97 check", "have an IBAN shape",
                      "", True)
    if category in ("ssn", "national_id"):
        parts = [ssn_parts(v) for v in values]
        shape = sum(1 for p in parts if p)
        problems = [ssn_problem(*p) for p in parts if p]
        strong = sum(1 for p in problems if p is None)
        common = max(set(x for x in problems if x), key=problems.count, default="")
        dashed = _count(values, lambda v: re.fullmatch(r"\d{3}-\d{2}-\d{4}", v.strip()) is not None)
        return result(strong, shape, "are SSNs that could have been issued",
                      "have the SSN shape (AAA-GG-SSSS)",
                      f"{common}: the values are test data, the column holds SSNs" if common else "",
                      ambiguous=dashed < shape * MAJORITY, keep="last")
    if category == "phone":
        checks = [phone_check(v) for v in values]
        shape = sum(1 for s, _ in checks if s)
        strong = sum(1 for _, ok in checks if ok)
        return result(strong, shape, "are valid phone numbers (phonenumbers)",
                      "are possible phone numbers", "not in an assigned range, e.g. 555-01xx",
                      True, "last")
    if category == "ip_address":
        ok = _count(values, ip_valid)
        return result(ok, ok, "parse as IP addresses", "", "", False)
    if category == "dob":
        dates = [parse_date(v) for v in values]
        shape = sum(1 for d in dates if d)
        ok = sum(1 for d in dates if d and plausible_birth_date(d, today))
        if not named:
            return None  # a date alone is not a date of birth
        return result(ok, shape, "are dates giving an age between 0 and 120", "are dates",
                      "", True)
    if category == "name":
        if not named:
            return None  # capitalised words are also cities and products
        ok = _count(values, looks_like_person_name)
        s = result(ok, ok, "look like personal names (2-5 capitalised words)", "", "", True)
        if s is None and n:
            return _Score("name", 0.5, tuple(ev + [f"{ok}/{n} sampled values look like "
                                                   "personal names"]))
        return s
    if category == "address":
        if not named:
            return None
        ok = _count(values, lambda v: re.search(r"\d", v) is not None and len(v.split()) >= 2)
        return result(ok, ok, "look like street addresses (a number and words)", "", "", True)
    return None


_NAME_EVIDENCE = {
    "email": "an e-mail address", "phone": "a phone number", "ssn": "a social security number",
    "national_id": "a national identifier", "card_number": "a card number", "iban": "an IBAN",
    "ip_address": "an IP address", "dob": "a date of birth", "name": "a personal name",
    "address": "a postal address",
}

def _embedded_card(text: str) -> bool:
    """A card number inside text: printed in groups (4-4-4-4 ...), or a bare digit
    run that is an issuable card number (bare 16-digit runs are also order ids)."""
    return card_shape(text) and (not text.isdigit() or card_valid(text))


# PII *inside* free text: (kind, pattern, validator), most specific first; a later
# kind never re-reads characters an earlier one matched (an IBAN's digit groups
# are not a card number).
_EMBEDDED = (
    ("IBAN", re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b"), iban_valid),
    ("e-mail address", re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"), email_valid),
    ("card number", re.compile(r"(?<![\d-])(?:\d{4}[ -]){3}\d{1,7}(?![\d-])|(?<!\d)\d{13,19}(?!\d)"),
     _embedded_card),
    ("SSN", re.compile(r"(?<![\d-])\d{3}-\d{2}-\d{4}(?![\d-])"), lambda v: ssn_parts(v) is not None),
    ("IP address", re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])"), ip_valid),
    ("phone number", re.compile(r"(?<![\w+-])(?:\+\d[\d .()-]{5,20}\d|\(\d{3}\) ?\d{3}[ .-]\d{4}"
                                r"|\d{3}[ .-]\d{3}[ .-]\d{4}|\d{3}-\d{4})(?![\w-])"),
     lambda v: phone_check(v)[0]),
)


def embedded_pii(value: str) -> list[tuple[str, str]]:
    """(kind, matched text) for each piece of PII found inside a text value."""
    found: list[tuple[str, str]] = []
    taken: list[tuple[int, int]] = []
    for kind, pattern, check in _EMBEDDED:
        for m in pattern.finditer(value):
            a, b = m.span()
            if any(x < b and a < y for x, y in taken) or not check(m.group(0)):
                continue
            found.append((kind, m.group(0)))
            taken.append((a, b))
    return found


_FREE_TEXT_NAMES = {"note", "notes", "comment", "comments", "description", "remark", "remarks",
                    "message", "body", "text", "memo", "details", "feedback", "reason"}


def _free_text(values: Sequence[str], column: str) -> tuple[_Score, list[str]] | None:
    # A value that *is* one PII-shaped token was judged by the whole-value
    # detectors above (and rejected): PII inside free text has words around it.
    hits_per_value = [[h for h in embedded_pii(v) if h[1] != v] for v in values]
    with_pii = sum(1 for h in hits_per_value if h)
    if not with_pii:
        return None
    kinds: dict[str, int] = {}
    for h in hits_per_value:
        for kind in {k for k, _ in h}:
            kinds[kind] = kinds.get(kind, 0) + 1
    n = len(values)
    ev = [f"{with_pii}/{n} sampled values contain PII inside free text"]
    ev += [f"{c}/{n} contain a {k}" for k, c in sorted(kinds.items())]
    named = bool(set(name_tokens(column)) & _FREE_TEXT_NAMES)
    if named:
        ev.append(f"column name {column!r} suggests free text")
    conf = min(0.9, 0.5 + 0.4 * _frac(with_pii, n) + (0.1 if named else 0.0))
    examples = [f"{kind}: {mask_value(text, 'last')}" for h in hits_per_value for kind, text in h]
    return _Score("free_text", round(conf, 2), tuple(ev)), examples


# ----------------------------------------------------------- propose


def _as_text(value: object) -> str:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def comment_category(comment: str | None) -> str | None:
    """The built-in category a (non-tag) column comment names, e.g. orders.note's
    'free_text (may contain PII)' -> free_text; None when it names none."""
    if not comment:
        return None
    words = set(re.findall(r"[a-z_]+", comment.lower()))
    found = sorted(c for c in _COMMENT_WORDS if c in words)
    return _COMMENT_WORDS[found[0]] if found else None


_COMMENT_WORDS = {"free_text": "free_text", "email": "email", "phone": "phone", "ssn": "ssn",
                  "dob": "dob", "card_number": "card_number", "iban": "iban",
                  "ip_address": "ip_address", "national_id": "national_id"}


def propose(table: RelationRef | str, column: str, type_name: str, samples: Iterable[object],
            today: date | None = None, comment: str | None = None) -> Proposal | None:
    """Propose a catalog entry for one column, or None when nothing suggests PII.

    ``table``: a RelationRef or ``schema.table`` / ``table`` text; ``samples``: the
    sampled values (None = NULL, skipped); ``today`` anchors the age check of dates of
    birth (default: the current date); ``comment``: the column's comment, if any (a
    comment naming a category is evidence, never the only reason unless nothing in
    the values contradicts it)."""
    proposal = _propose(table, column, type_name, samples, today or date.today())
    hinted = comment_category(comment)
    if hinted is None:
        return proposal
    note = f"column comment mentions {hinted}"
    if proposal is None:
        ref = _column_ref(table, column)
        return _proposal(ref, type_name, _Score(hinted, 0.45, (note, "the sampled values do not "
                                                               "confirm it")), [])
    if proposal.category != hinted:
        return proposal
    return Proposal(proposal.column, proposal.category, round(min(1.0, proposal.confidence + 0.05), 2),
                    proposal.evidence + (note,), proposal.masked_examples, proposal.sensitivity,
                    proposal.type_name)


def _column_ref(table: RelationRef | str, column: str) -> ColumnRef:
    if isinstance(table, str):
        schema, _, name = table.rpartition(".")
        table = RelationRef(schema or "public", name)
    return ColumnRef(table.schema, table.name, column)


def _propose(table: RelationRef | str, column: str, type_name: str, samples: Iterable[object],
             today: date) -> Proposal | None:
    ref = _column_ref(table, column)
    table = ref.relation
    family = type_family(type_name)
    values = [v for v in samples if v is not None]
    texts = [_as_text(v).strip() for v in values]
    texts_nonempty = [t for t in texts if t]

    named_cat = name_category(table.name, column)
    candidates: list[tuple[_Score, list[object]]] = []
    if family == "inet":
        ev = ("column type is " + type_name,) + ((f"{len(values)}/{len(values)} sampled values "
                                                  "are IP addresses",) if values else ())
        candidates.append((_Score("ip_address", 0.95, ev, "first"), texts_nonempty))
    for category, families in _FAMILIES.items():
        if family not in families:
            continue
        named = named_cat == category
        if family == "int" and not named:
            continue  # integers are ids, counts and amounts unless the name says otherwise
        if family in ("date", "timestamp") and category != "dob":
            continue
        name_ev = f"column name {column!r} suggests {_NAME_EVIDENCE[category]}"
        if not texts_nonempty:
            if named:
                candidates.append((_Score(category, 0.4, (name_ev, "no non-null values sampled "
                                                          "to confirm it")), []))
            continue
        score = _whole_value(category, texts_nonempty, named, name_ev, today)
        if score is not None:
            candidates.append((score, texts_nonempty))

    best = max(candidates, key=lambda c: c[0].confidence, default=None)
    if best is None and family == "text" and texts_nonempty:
        ft = _free_text(texts_nonempty, column)
        if ft is not None:
            score, examples = ft
            return _proposal(ref, type_name, score, examples)
    if best is None:
        return None
    score, vals = best
    keep = "none" if score.category == "dob" else score.keep
    examples = [mask_value(v, keep) for v in vals]
    return _proposal(ref, type_name, score, examples)


def _proposal(ref: ColumnRef, type_name: str, score: _Score, examples: list[str]) -> Proposal:
    unique: list[str] = []
    for e in examples:
        if e not in unique:
            unique.append(e)
        if len(unique) == MAX_EXAMPLES:
            break
    return Proposal(
        column=ref, category=score.category, confidence=round(score.confidence, 2),
        evidence=score.evidence, masked_examples=tuple(unique),
        sensitivity=DEFAULT_SENSITIVITY.get(score.category, Sensitivity.MEDIUM),
        type_name=type_name)


# ----------------------------------------------------------- proposal file


def _toml_string(text: str) -> str:
    """A TOML basic string (JSON's escaping is a subset TOML accepts)."""
    import json
    return json.dumps(text, ensure_ascii=True)


def _comment(text: str) -> str:
    return " ".join(str(text).split())


def proposals_to_toml(proposals: Iterable[Proposal], header: str = "") -> str:
    """The proposal file: catalog-file TOML (``[[column]]`` entries that
    ``catalog.loader`` reads), each preceded by comments giving its confidence,
    evidence and masked examples, for a person to review and merge."""
    from catalog.loader import format_column_ref  # same package, no cycle at import time
    items = sorted(proposals, key=lambda p: (p.column, p.category))
    lines = [
        f"# piigate catalog proposals: {len(items)} column(s).",
        "# Review each entry: keep the right ones, fix category or sensitivity where",
        "# needed, then copy them into your catalog file. Sampled values are never",
        "# shown: evidence counts values, examples are masked.",
    ]
    if header:
        lines += ["# " + _comment(h) for h in header.splitlines()]
    for p in items:
        lines += [
            "",
            f"# {p.column} ({_comment(p.type_name)})" if p.type_name else f"# {p.column}",
            f"# confidence: {p.confidence:.2f}",
            *[f"# evidence: {_comment(e)}" for e in p.evidence],
        ]
        if p.masked_examples:
            lines.append("# masked examples: " + ", ".join(_comment(e) for e in p.masked_examples))
        lines += [
            "[[column]]",
            f"column = {_toml_string(format_column_ref(p.column))}",
            f"category = {_toml_string(p.category)}",
            f"sensitivity = {_toml_string(p.sensitivity.name.lower())}",
            f"description = {_toml_string(f'proposed by discovery, confidence {p.confidence:.2f}')}",
        ]
    return "\n".join(lines) + "\n"
