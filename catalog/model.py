"""The catalog's value types: which columns hold PII, of what kind, how sensitive.

Pure and frozen. Names are stored the way PostgreSQL stores them (already
case-folded: an unquoted ``Customers`` is ``customers``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Iterable, Mapping

#: Built-in PII categories. User-defined categories are any other lowercase word.
BUILTIN_CATEGORIES = frozenset({
    "name", "email", "phone", "ssn", "national_id", "dob", "card_number", "iban",
    "address", "ip_address", "free_text",
})


class Sensitivity(IntEnum):
    """Ordered: a rule on ``medium`` also covers ``high`` and ``critical``."""
    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4

    @classmethod
    def parse(cls, text: str) -> "Sensitivity":
        try:
            return cls[text.strip().upper()]
        except KeyError:
            raise ValueError(
                f"unknown sensitivity {text!r}; expected one of "
                + ", ".join(s.name.lower() for s in cls)) from None


#: Default sensitivity per built-in category when an entry does not say.
DEFAULT_SENSITIVITY: Mapping[str, Sensitivity] = {
    "ssn": Sensitivity.CRITICAL, "national_id": Sensitivity.CRITICAL,
    "card_number": Sensitivity.CRITICAL, "iban": Sensitivity.HIGH,
    "dob": Sensitivity.HIGH, "email": Sensitivity.MEDIUM, "phone": Sensitivity.MEDIUM,
    "name": Sensitivity.MEDIUM, "address": Sensitivity.HIGH,
    "ip_address": Sensitivity.MEDIUM, "free_text": Sensitivity.MEDIUM,
}


@dataclass(frozen=True, order=True, slots=True)
class RelationRef:
    """A schema-qualified relation (table, view, materialized view, partition)."""
    schema: str
    name: str

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass(frozen=True, order=True, slots=True)
class ColumnRef:
    """A schema-qualified column. The database is implied by the gateway's upstream."""
    schema: str
    table: str
    column: str

    @property
    def relation(self) -> RelationRef:
        return RelationRef(self.schema, self.table)

    def __str__(self) -> str:
        return f"{self.schema}.{self.table}.{self.column}"

    @classmethod
    def parse(cls, text: str, default_schema: str = "public") -> "ColumnRef":
        """``schema.table.column`` or ``table.column`` (schema defaults to public)."""
        parts = text.strip().split(".")
        if len(parts) == 2:
            return cls(default_schema, parts[0], parts[1])
        if len(parts) == 3:
            return cls(parts[0], parts[1], parts[2])
        raise ValueError(f"column reference {text!r}: expected table.column or schema.table.column")


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """One catalogued column. ``source`` says where the entry came from
    (``file:catalog.toml:12``, ``comment``, ``derived:view public.v``)."""
    column: ColumnRef
    category: str
    sensitivity: Sensitivity
    owner: str = ""
    description: str = ""
    source: str = ""


@dataclass(frozen=True)
class Catalog:
    """The merged catalog: at most one entry per column.

    ``version`` changes whenever the content changes; caches key on it.
    """
    entries: Mapping[ColumnRef, CatalogEntry] = field(default_factory=dict)
    version: str = "empty"

    @classmethod
    def of(cls, entries: Iterable[CatalogEntry]) -> "Catalog":
        import hashlib
        table = {e.column: e for e in entries}
        h = hashlib.sha256()
        for ref in sorted(table):
            e = table[ref]
            h.update(f"{ref}|{e.category}|{int(e.sensitivity)}\n".encode())
        return cls(table, h.hexdigest()[:16])

    def get(self, column: ColumnRef) -> CatalogEntry | None:
        return self.entries.get(column)

    def __contains__(self, column: object) -> bool:
        return column in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def columns_of(self, relation: RelationRef) -> dict[str, CatalogEntry]:
        return {c.column: e for c, e in self.entries.items() if c.relation == relation}

    def relations(self) -> frozenset[RelationRef]:
        return frozenset(c.relation for c in self.entries)


def read_quoted_identifier(text: str, start: int) -> tuple[str, int] | None:
    """The "quoted" identifier opening at ``text[start]`` (a ``"``), as PostgreSQL
    reads it (``""`` is a quote): the name and the index just past its closing
    quote, or None when it is not closed."""
    i, n, buf = start + 1, len(text), []
    while i < n:
        if text[i] == '"':
            if i + 1 < n and text[i + 1] == '"':
                buf.append('"')
                i += 2
                continue
            return "".join(buf), i + 1
        buf.append(text[i])
        i += 1
    return None
