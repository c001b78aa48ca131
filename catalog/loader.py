"""Loading the catalog: the catalog file, ``COMMENT ON COLUMN`` tags, merging, and
deriving entries for children, partitions and views. Pure: values in, values out
(the only I/O is ``load_catalog_file`` reading the file it is given).

The catalog file (TOML, kept in version control)::

    [categories]                 # optional: user-defined categories
    loyalty_id = "high"          # name = default sensitivity
    badge = { sensitivity = "low", description = "building badge number" }

    [[column]]
    column = "public.customers.email"   # or "customers.email" (schema public)
    category = "email"
    sensitivity = "medium"              # optional: the category's default otherwise
    owner = "crm-team"                  # optional
    description = "contact address"     # optional

Errors are ``CatalogError`` values naming the file, the line and what is wrong.
"""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from catalog.model import (
    BUILTIN_CATEGORIES, DEFAULT_SENSITIVITY, Catalog, CatalogEntry, ColumnRef, RelationRef,
    Sensitivity, read_quoted_identifier,
)

#: sensitivity for a user-defined category that does not declare one
USER_CATEGORY_DEFAULT = Sensitivity.MEDIUM

_CATEGORY_RE = re.compile(r"[a-z][a-z0-9_]*\Z")
_UNQUOTED_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*\Z")
_ENTRY_KEYS = ("column", "category", "sensitivity", "owner", "description")
_TOP_KEYS = ("column", "categories")


class CatalogError(Exception):
    """A catalog source is wrong. ``file`` and ``line`` say where (line is 1-based,
    ``None`` when the source has no lines, e.g. a database comment)."""

    def __init__(self, file: str, line: int | None, message: str) -> None:
        self.file = file
        self.line = line
        self.message = message
        where = f"{file}:{line}" if line is not None else file
        super().__init__(f"{where}: {message}")


# --------------------------------------------------------------------------- parts


def parse_column_ref(text: str, default_schema: str = "public") -> ColumnRef:
    """``schema.table.column`` or ``table.column``, as PostgreSQL reads identifiers:
    unquoted parts are case-folded to lower case, ``"Quoted"`` parts are kept as
    written (``""`` inside quotes is a literal quote). Raises ValueError."""
    parts: list[str] = []
    i = 0
    s = text.strip()
    n = len(s)
    while True:
        if i < n and s[i] == '"':
            quoted = read_quoted_identifier(s, i)
            if quoted is None:
                raise ValueError(f"column reference {text!r}: unterminated quoted identifier")
            if not quoted[0]:
                raise ValueError(f"column reference {text!r}: empty quoted identifier")
            parts.append(quoted[0])
            i = quoted[1]
        else:
            j = s.find(".", i)
            j = n if j < 0 else j
            word = s[i:j]
            if not _UNQUOTED_IDENT_RE.match(word):
                what = "an empty part" if not word else f"{word!r} is not a valid identifier (quote it)"
                raise ValueError(f"column reference {text!r}: {what}")
            parts.append(word.lower())
            i = j
        if i >= n:
            break
        if s[i] != ".":
            raise ValueError(f"column reference {text!r}: expected '.' after a quoted identifier")
        i += 1
        if i >= n:
            raise ValueError(f"column reference {text!r}: ends with '.'")
    if len(parts) == 2:
        return ColumnRef(default_schema, parts[0], parts[1])
    if len(parts) == 3:
        return ColumnRef(parts[0], parts[1], parts[2])
    raise ValueError(
        f"column reference {text!r}: expected table.column or schema.table.column, "
        f"got {len(parts)} part(s)")


def format_column_ref(ref: ColumnRef) -> str:
    """The inverse of ``parse_column_ref``: quotes the parts that need it."""
    def q(part: str) -> str:
        if _UNQUOTED_IDENT_RE.match(part) and part == part.lower():
            return part
        return '"' + part.replace('"', '""') + '"'
    return f"{q(ref.schema)}.{q(ref.table)}.{q(ref.column)}"


def default_sensitivity(category: str, user_categories: Mapping[str, Sensitivity] = {}) -> Sensitivity:
    if category in user_categories:
        return user_categories[category]
    return DEFAULT_SENSITIVITY.get(category, USER_CATEGORY_DEFAULT)


# ---------------------------------------------------------------------- line index


class _LineIndex:
    """Where things are in a TOML text, since tomllib gives no positions.

    Only what error messages need: the line of the n-th ``[[column]]`` header, of a
    key inside a table, and of a table header."""

    _ARRAY_HEADER = re.compile(r"^\s*\[\[\s*([A-Za-z0-9_\-\"'. ]+?)\s*\]\]")
    _TABLE_HEADER = re.compile(r"^\s*\[\s*([A-Za-z0-9_\-\"'. ]+?)\s*\]")

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        # (line number, header name, is_array) for every table header, in order
        self.headers: list[tuple[int, str, bool]] = []
        for no, line in enumerate(self.lines, 1):
            m = self._ARRAY_HEADER.match(line)
            if m:
                self.headers.append((no, m.group(1).strip().strip("\"'"), True))
                continue
            m = self._TABLE_HEADER.match(line)
            if m:
                self.headers.append((no, m.group(1).strip().strip("\"'"), False))

    def array_item(self, name: str, index: int) -> int | None:
        items = [no for no, h, arr in self.headers if arr and h == name]
        return items[index] if index < len(items) else None

    def table(self, name: str, array: bool | None = False) -> int | None:
        """The first header ``[name]`` (``array=True``: ``[[name]]``; None: either)."""
        for no, h, arr in self.headers:
            if h == name and (array is None or arr == array):
                return no
        return None

    def key_in_section(self, start: int | None, key: str) -> int | None:
        """The line of ``key = ...`` in the section whose header is at line ``start``
        (``None``: the top level, before any header); ``start`` when not found."""
        first = start + 1 if start else 1
        header_lines = {no for no, _, _ in self.headers}
        pattern = re.compile(r"^\s*[\"']?" + re.escape(key) + r"[\"']?\s*=")
        for no in range(first, len(self.lines) + 1):
            if no in header_lines:
                break
            if pattern.match(self.lines[no - 1]):
                return no
        return start


# ---------------------------------------------------------------- the catalog file


@dataclass(frozen=True)
class CatalogFile:
    """A parsed catalog file: its entries in file order and its user categories."""
    path: str
    entries: tuple[CatalogEntry, ...]
    categories: Mapping[str, Sensitivity]


def load_catalog_file(path: str | Path) -> CatalogFile:
    """Read and validate a catalog file. Raises CatalogError."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise CatalogError(str(p), None, f"cannot read the catalog file: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise CatalogError(str(p), None, f"the catalog file is not UTF-8: {exc}") from None
    return parse_catalog_text(text, str(p))


def parse_catalog_text(text: str, filename: str = "<catalog>") -> CatalogFile:
    """Validate catalog-file TOML text. ``filename`` is used in sources and errors
    (its base name in ``source``: ``file:catalog.toml:12``). Raises CatalogError."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"\(at line (\d+), column \d+\)", str(exc))
        line = int(m.group(1)) if m else None
        msg = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc))
        raise CatalogError(filename, line, f"not valid TOML: {msg}") from None
    index = _LineIndex(text)

    for key in doc:
        if key not in _TOP_KEYS:
            raise CatalogError(filename, index.table(key, None) or index.key_in_section(None, key),
                               f"unknown top-level key {key!r}; expected [[column]] tables "
                               "and an optional [categories] table")

    categories = _parse_categories(doc.get("categories", {}), filename, index)

    raw_entries = doc.get("column", [])
    if not isinstance(raw_entries, list):
        raise CatalogError(filename, index.key_in_section(None, "column"),
                           "'column' must be written as [[column]] tables")
    short = Path(filename).name
    entries: list[CatalogEntry] = []
    seen: dict[ColumnRef, int | None] = {}
    for i, raw in enumerate(raw_entries):
        line = index.array_item("column", i)
        entry = _parse_entry(raw, i, line, filename, short, categories, index)
        if entry.column in seen:
            first = seen[entry.column]
            raise CatalogError(filename, line,
                               f"duplicate entry for {entry.column} (first defined at line {first}); "
                               "keep one entry per column")
        seen[entry.column] = line
        entries.append(entry)
    return CatalogFile(filename, tuple(entries), categories)


def _parse_categories(raw: object, filename: str, index: _LineIndex) -> dict[str, Sensitivity]:
    section = index.table("categories")
    if not isinstance(raw, dict):
        raise CatalogError(filename, index.key_in_section(None, "categories"),
                           "'categories' must be a table: [categories] name = \"sensitivity\"")
    out: dict[str, Sensitivity] = {}
    for name, value in raw.items():
        line = index.key_in_section(section, name)
        if not _CATEGORY_RE.match(name):
            raise CatalogError(filename, line,
                               f"category name {name!r} must be a lowercase word (a-z, 0-9, _)")
        if name in BUILTIN_CATEGORIES:
            raise CatalogError(filename, line,
                               f"category {name!r} is built in; remove it from [categories]")
        if isinstance(value, dict):
            unknown = set(value) - {"sensitivity", "description"}
            if unknown:
                raise CatalogError(filename, line,
                                   f"category {name!r}: unknown key(s) {', '.join(sorted(unknown))}; "
                                   "expected sensitivity, description")
            value = value.get("sensitivity", USER_CATEGORY_DEFAULT.name.lower())
        if not isinstance(value, str):
            raise CatalogError(filename, line,
                               f"category {name!r}: expected a sensitivity string such as \"high\"")
        try:
            out[name] = Sensitivity.parse(value)
        except ValueError as exc:
            raise CatalogError(filename, line, f"category {name!r}: {exc}") from None
    return out


def _parse_entry(raw: object, i: int, line: int | None, filename: str, short: str,
                 categories: Mapping[str, Sensitivity], index: _LineIndex) -> CatalogEntry:
    what = f"[[column]] entry #{i + 1}"
    if not isinstance(raw, dict):
        raise CatalogError(filename, line, f"{what} must be a table")

    def key_line(key: str) -> int | None:
        return index.key_in_section(line, key) if line is not None else None

    for key in raw:
        if key not in _ENTRY_KEYS:
            raise CatalogError(filename, key_line(key),
                               f"{what}: unknown key {key!r}; expected one of {', '.join(_ENTRY_KEYS)}")
    for key in ("column", "category"):
        if key not in raw:
            raise CatalogError(filename, line, f"{what}: missing required key {key!r}")
    for key in _ENTRY_KEYS:
        if key in raw and not isinstance(raw[key], str):
            raise CatalogError(filename, key_line(key), f"{what}: {key!r} must be a string")

    try:
        ref = parse_column_ref(raw["column"])
    except ValueError as exc:
        raise CatalogError(filename, key_line("column"), f"{what}: {exc}") from None

    category = raw["category"].strip()
    if category not in BUILTIN_CATEGORIES and category not in categories:
        raise CatalogError(
            filename, key_line("category"),
            f"{ref}: unknown category {category!r}; use one of "
            f"{', '.join(sorted(BUILTIN_CATEGORIES))} or declare it in a [categories] table")

    if "sensitivity" in raw:
        try:
            sensitivity = Sensitivity.parse(raw["sensitivity"])
        except ValueError as exc:
            raise CatalogError(filename, key_line("sensitivity"), f"{ref}: {exc}") from None
    else:
        sensitivity = default_sensitivity(category, categories)

    return CatalogEntry(
        column=ref, category=category, sensitivity=sensitivity,
        owner=raw.get("owner", ""), description=raw.get("description", ""),
        source=f"file:{short}:{line}" if line is not None else f"file:{short}",
    )


# -------------------------------------------------------------------- comment tags


_TAG_RE = re.compile(r"\s*pii:(?P<body>\S*)(?:\s|\Z)", re.IGNORECASE | re.DOTALL)


def parse_comment_tag(comment: str | None) -> tuple[str, Sensitivity | None] | None:
    """Read a ``COMMENT ON COLUMN`` text as a catalog tag.

    ``pii:<category>`` or ``pii:<category>:<sensitivity>``, optionally followed by
    free text after whitespace (``pii:email primary contact``). Returns ``None``
    when the comment is not a tag (it does not start with ``pii:``; a comment that
    merely mentions a category is not a tag). Raises ValueError for a comment that
    starts with ``pii:`` but is malformed: someone meant to tag the column, and a
    tag silently ignored is a column silently unprotected.
    """
    if not comment:
        return None
    m = _TAG_RE.match(comment)
    if m is None:
        return None
    body = m.group("body").lower()
    parts = body.split(":")
    if len(parts) > 2 or not parts[0]:
        raise ValueError(f"malformed PII tag {comment.strip()!r}: expected pii:<category> "
                         "or pii:<category>:<sensitivity>")
    category = parts[0]
    if not _CATEGORY_RE.match(category):
        raise ValueError(f"malformed PII tag {comment.strip()!r}: the category must be a "
                         "lowercase word (a-z, 0-9, _)")
    sensitivity = None
    if len(parts) == 2:
        try:
            sensitivity = Sensitivity.parse(parts[1])
        except ValueError as exc:
            raise ValueError(f"malformed PII tag {comment.strip()!r}: {exc}") from None
    return category, sensitivity


def tag_entry(column: ColumnRef, comment: str,
              user_categories: Mapping[str, Sensitivity] = {}) -> CatalogEntry | None:
    """The catalog entry a column comment declares, or None if it is not a tag.
    Raises CatalogError (naming the column) for a malformed tag."""
    try:
        tag = parse_comment_tag(comment)
    except ValueError as exc:
        raise CatalogError(f"COMMENT ON COLUMN {column}", None, str(exc)) from None
    if tag is None:
        return None
    category, sensitivity = tag
    return CatalogEntry(
        column=column, category=category,
        sensitivity=sensitivity or default_sensitivity(category, user_categories),
        source=f"comment:{column}",
    )


# --------------------------------------------------------------------------- merge


def merge_catalogs(file_entries: Iterable[CatalogEntry],
                   tag_entries: Iterable[CatalogEntry]) -> Catalog:
    """One entry per column: the catalog file wins over database tags (the file is
    reviewed in version control; a comment can be set by anyone with the right to
    COMMENT). Each entry keeps its ``source``."""
    merged: dict[ColumnRef, CatalogEntry] = {}
    for e in tag_entries:
        merged[e.column] = e
    for e in file_entries:
        merged[e.column] = e
    return Catalog.of(merged.values())


# -------------------------------------------------------------------------- derive


def derive_catalog(catalog: Catalog, schema) -> Catalog:
    """Add entries for relations that expose catalogued columns without being
    catalogued themselves.

    - Inheritance children and partitions (any depth): a column with the same name
      as a catalogued column of a parent. Source ``derived:child of public.customers``.
    - Views and materialized views with ``Relation.lineage``: an output column whose
      base columns include a catalogued one (the most sensitive wins). Source
      ``derived:view of public.customers.email``. Likewise a table's generated column
      computed from a catalogued one (``derived:generated from ...``).
    - A column whose type is a catalogued relation's row type, or an array of it
      (``snapshots.c customers``). Source ``derived:row of public.customers``.
    - A foreign key column referencing a catalogued column (it holds its values).
      Source ``derived:references public.customers.email``.
    - A table's column that a SQL/PL or SECURITY DEFINER function fills in on a
      write (``Relation.set_by``: its DEFAULT calls one, or a BEFORE row trigger runs
      one): like the most sensitive explicit entry. Source ``derived:set by f``.
    - Views without lineage (nothing attributed them): conservatively, when the
      view depends on a catalogued relation (its ``parents``, or a schema-qualified
      name in its definition), every output column whose select-list expression
      names a catalogued column or a whole row of it, or that has a catalogued
      column's name; every column when the definition cannot be split.
      Source ``derived:view depends on public.customers``.

    Explicit entries (file, tags) are never replaced. ``schema`` is a
    ``gateway.schema.LiveSchema`` (duck-typed: catalog imports nothing of ours).
    """
    state = _DeriveState(catalog.entries)
    relations = list(schema.relations.values())
    for entry in _structural_copies(relations, state):
        state.add(entry)
    # Fixpoint: a view of a partition of a child of a catalogued table is reached
    # after a few rounds; each round only adds, so it terminates.
    for _ in range(len(relations) + 1):
        added = False
        for rel in relations:
            for entry in _derive_for(rel, state):
                added |= state.add(entry)
        if not added:
            break
    return Catalog.of(state.entries.values())


_TABLE_KINDS = ("r", "p", "f", "m")


def _structural_copies(relations: list, state: "_DeriveState") -> list[CatalogEntry]:
    """Tables made with ``CREATE TABLE ... (LIKE t)`` or ``AS SELECT * FROM t`` carry
    t's PII without inheriting from it: a table that has every catalogued column of a
    catalogued table (same names and types) and most of its other columns is treated
    as a copy. A false positive only means masking; a miss means a leak.
    Source ``derived:same columns as public.customers``."""
    by_ref = {r.ref: r for r in relations}
    sources = []
    for ref, cols in list(state.by_relation.items()):
        rel = by_ref.get(ref)
        if rel is None or rel.kind not in _TABLE_KINDS or not cols:
            continue
        sources.append((rel, cols))
    out = []
    for rel in relations:
        if rel.kind not in _TABLE_KINDS or state.columns_of(rel.ref) or rel.parents:
            continue
        mine = {c.name: c.type_name for c in rel.columns}
        for src, cols in sources:
            if src.ref == rel.ref:
                continue
            theirs = {c.name: c.type_name for c in src.columns}
            if not all(mine.get(name) == theirs.get(name) for name in cols):
                continue
            shared = sum(1 for name, t in theirs.items() if mine.get(name) == t)
            if shared < max(2, int(0.8 * len(theirs))):
                continue
            for name, base in cols.items():
                out.append(_derived(rel.ref, name, base, f"derived:same columns as {src.ref}"))
            break
    return out


class _DeriveState:
    """The entries so far, indexed by relation, plus per-view caches (the system
    catalogs hold ~150 views whose definitions need reading only once)."""

    def __init__(self, entries: Mapping[ColumnRef, CatalogEntry]) -> None:
        self.entries: dict[ColumnRef, CatalogEntry] = dict(entries)
        self.by_relation: dict[RelationRef, dict[str, CatalogEntry]] = {}
        for c, e in self.entries.items():
            self.by_relation.setdefault(c.relation, {})[c.column] = e
        self.items: dict[RelationRef, list[list[str]] | None] = {}
        self.mentions: dict[tuple[RelationRef, RelationRef], bool] = {}
        #: the most sensitive of the file's and the tags' entries
        self.explicit_worst = _most_sensitive(self.entries.values())

    def add(self, entry: CatalogEntry) -> bool:
        if entry.column in self.entries:
            return False
        self.entries[entry.column] = entry
        self.by_relation.setdefault(entry.column.relation, {})[entry.column.column] = entry
        return True

    def columns_of(self, rel: RelationRef) -> dict[str, CatalogEntry]:
        return self.by_relation.get(rel, {})

    def select_items(self, rel) -> list[list[str]] | None:
        if rel.ref not in self.items:
            self.items[rel.ref] = view_select_items(rel.view_definition or "", len(rel.columns))
        return self.items[rel.ref]

    def view_dependencies(self, rel) -> list[RelationRef]:
        deps = list(rel.parents)
        text = rel.view_definition or ""
        for target in self.by_relation:
            if target == rel.ref or target in deps:
                continue
            key = (rel.ref, target)
            if key not in self.mentions:
                self.mentions[key] = target.name in text and _mentions(text, target)
            if self.mentions[key]:
                deps.append(target)
        return deps


def _derived(ref: RelationRef, column: str, base: CatalogEntry, source: str) -> CatalogEntry:
    return CatalogEntry(ColumnRef(ref.schema, ref.name, column), base.category, base.sensitivity,
                        base.owner, base.description, source)


def _most_sensitive(candidates: Iterable[CatalogEntry]) -> CatalogEntry | None:
    best = None
    for e in candidates:
        if best is None or (e.sensitivity, e.category) > (best.sensitivity, best.category):
            best = e
    return best


def _derive_for(rel, state: _DeriveState) -> Iterable[CatalogEntry]:
    is_view = rel.kind in ("v", "m")
    if not is_view:
        for parent in rel.parents:
            for name, base in state.columns_of(parent).items():
                if rel.column(name) is not None:
                    yield _derived(rel.ref, name, base, f"derived:child of {parent}")
        # a table's lineage is that of its generated columns (ssn_norm GENERATED
        # ALWAYS AS (replace(ssn, '-', '')) holds the SSN)
        for out, bases in (rel.lineage or {}).items():
            base = _most_sensitive(state.entries[b] for b in bases if b in state.entries)
            if base is not None and rel.column(out) is not None:
                yield _derived(rel.ref, out, base, f"derived:generated from {base.column}")
        # a foreign key column holds the values it references (customer_email
        # REFERENCES customers(email) is an e-mail address)
        for out, targets in (getattr(rel, "references", None) or {}).items():
            base = _most_sensitive(state.entries[b] for b in targets if b in state.entries)
            if base is not None and rel.column(out) is not None:
                yield _derived(rel.ref, out, base, f"derived:references {base.column}")
        yield from _set_by(rel, state)
        yield from _row_typed(rel, state)
        return
    # an INSTEAD OF row trigger's NEW is what INSERT/UPDATE ... RETURNING gives back
    yield from _set_by(rel, state)
    if rel.lineage:
        for out, bases in rel.lineage.items():
            base = _most_sensitive(state.entries[b] for b in bases if b in state.entries)
            if base is not None and rel.column(out) is not None:
                yield _derived(rel.ref, out, base, f"derived:view of {base.column}")
        if all(name in rel.lineage for name in rel.column_names):
            return
    # no lineage, or some output columns missing from it: those are read the
    # conservative way (a column nobody attributed is not a column without PII)
    for entry in _derive_unattributed_view(rel, state):
        if entry.column.column not in rel.lineage:
            yield entry


def _row_typed(rel, state: _DeriveState) -> Iterable[CatalogEntry]:
    """A column whose type is a catalogued relation's row type (or an array of it):
    ``snapshots.c customers`` holds whole customer rows, SSN included."""
    for col in rel.columns:
        name = col.type_name.strip()
        while name.endswith("[]"):
            name = name[:-2].strip()
        schema, _, bare = name.rpartition(".")
        unq = lambda part: part[1:-1].replace('""', '"') if part.startswith('"') else part  # noqa: E731
        target = RelationRef(unq(schema) if schema else "pg_catalog", unq(bare))
        if not schema:
            # format_type() leaves a type on the search_path (pg_catalog while the
            # schema is read) unqualified: a relation's row type is never one of those
            continue
        cols = state.columns_of(target)
        base = _most_sensitive(cols.values()) if target != rel.ref else None
        if base is not None:
            yield _derived(rel.ref, col.name, base, f"derived:row of {target}")


def _set_by(rel, state: _DeriveState) -> Iterable[CatalogEntry]:
    """A column a DBA's function fills in on a write (DEFAULT ssn_of(7), a BEFORE or
    INSTEAD OF trigger setting NEW.body from customers.ssn): its origin is unknown,
    so it is treated like the most sensitive column the catalog knows."""
    set_by = getattr(rel, "set_by", None) or {}
    if set_by and state.explicit_worst is not None:
        for out, fns in set_by.items():
            if rel.column(out) is not None:
                yield _derived(rel.ref, out, state.explicit_worst, "derived:set by " + ", ".join(sorted(fns)))


def _derive_unattributed_view(rel, state: _DeriveState) -> Iterable[CatalogEntry]:
    """A view nobody attributed column by column (no lineage). For each catalogued
    relation it depends on, an output column is sensitive when its select-list
    expression (in any branch of a set operation) names a catalogued column of it
    or a whole row (``c.*``), or when the output has a catalogued column's name.
    A definition this cannot split (a WITH query, VALUES ...) marks every output
    column: unknown is never "touches nothing"."""
    for dep in state.view_dependencies(rel):
        catalogued = state.columns_of(dep)
        if not catalogued:
            continue
        source = f"derived:view depends on {dep}"
        items = state.select_items(rel)
        if items is None:
            worst = _most_sensitive(catalogued.values())
            for col in rel.columns:
                yield _derived(rel.ref, col.name, worst, source + " (definition not attributed)")
            continue
        for col, exprs in zip(rel.columns, items):
            hits = [catalogued[col.name]] if col.name in catalogued else []
            for expr in exprs:
                words = set(re.findall(r'[A-Za-z_][\w$]*|"(?:[^"]|"")+"', _strip_literals(expr)))
                words = {w[1:-1].replace('""', '"') if w.startswith('"') else w.lower() for w in words}
                hits += [e for name, e in catalogued.items() if name in words]
                if ".*" in expr.replace(" ", ""):
                    hits += list(catalogued.values())
            worst = _most_sensitive(hits)
            if worst is not None:
                yield _derived(rel.ref, col.name, worst, source)


def _strip_literals(sql: str) -> str:
    return re.sub(r"'(?:[^']|'')*'", "''", sql)


def view_select_items(definition: str, ncolumns: int) -> list[list[str]] | None:
    """The select-list expressions of a view definition, per output column (one per
    branch of a UNION/INTERSECT/EXCEPT), as ``pg_get_viewdef`` prints them. None
    when the definition is not a plain SELECT (WITH, VALUES, TABLE) or the item
    count does not match ``ncolumns``."""
    text = definition.strip().rstrip(";")
    tokens = _top_level_tokens(text)
    if tokens is None:
        return None
    branches: list[list[str]] = []
    current: list[str] | None = None
    i = 0
    in_list = False
    buf: list[str] = []
    while i < len(tokens):
        kind, tok = tokens[i]
        word = tok.upper() if kind == "word" else ""
        if word in ("WITH", "VALUES", "TABLE") and not in_list:
            return None
        if word == "SELECT":
            current, buf, in_list = [], [], True
            # DISTINCT [ON (...)] / ALL belong to the SELECT, not to the first item
            j = _skip_space(tokens, i + 1)
            if j < len(tokens) and tokens[j][0] == "word" and tokens[j][1].upper() in ("DISTINCT", "ALL"):
                i = j
                j = _skip_space(tokens, i + 1)
                if j < len(tokens) and tokens[j][0] == "word" and tokens[j][1].upper() == "ON":
                    j = _skip_space(tokens, j + 1)
                    i = j if j < len(tokens) and tokens[j][0] == "group" else i
            i += 1
            continue
        if in_list and word in ("FROM", "WHERE", "GROUP", "HAVING", "WINDOW", "ORDER", "LIMIT",
                                "OFFSET", "FETCH", "FOR", "UNION", "INTERSECT", "EXCEPT"):
            current.append("".join(buf).strip())
            branches.append(current)
            in_list = False
        elif in_list and kind == "comma":
            current.append("".join(buf).strip())
            buf = []
        elif in_list:
            buf.append(tok)
        i += 1
    if in_list:
        current.append("".join(buf).strip())
        branches.append(current)
    if not branches or any(len(b) != ncolumns for b in branches):
        return None
    return [[b[k] for b in branches] for k in range(ncolumns)]


def _skip_space(tokens: list[tuple[str, str]], i: int) -> int:
    while i < len(tokens) and tokens[i][0] == "space":
        i += 1
    return i


def _top_level_tokens(text: str) -> list[tuple[str, str]] | None:
    """Split SQL into top-level pieces: ("word", w), ("comma", ","), ("space", c),
    ("group", "(...)")
    for a whole parenthesised group, ("other", text) for the rest (string literals,
    quoted identifiers and dollar quotes kept whole). None when unbalanced.
    Parenthesised set-operation branches come back as one group each, so their
    definition has no top-level SELECT and is not attributed (-> every column)."""
    out: list[tuple[str, str]] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "(":
            depth, j = 0, i
            while j < n:
                ch = text[j]
                if ch in "'\"":
                    k = text.find(ch, j + 1)
                    while k != -1 and k + 1 < n and text[k + 1] == ch:
                        k = text.find(ch, k + 2)
                    if k == -1:
                        return None
                    j = k
                elif ch == "(":
                    depth += 1
                elif ch == ")":
                    depth -= 1
                    if depth == 0:
                        break
                j += 1
            if j >= n:
                return None
            out.append(("group", text[i:j + 1]))
            i = j + 1
        elif c in "'\"":
            k = text.find(c, i + 1)
            while k != -1 and k + 1 < n and text[k + 1] == c:
                k = text.find(c, k + 2)
            if k == -1:
                return None
            out.append(("other", text[i:k + 1]))
            i = k + 1
        elif c == "$":
            m = re.match(r"\$([A-Za-z_]\w*)?\$", text[i:])
            if m:
                end = text.find(m.group(0), i + len(m.group(0)))
                if end == -1:
                    return None
                out.append(("other", text[i:end + len(m.group(0))]))
                i = end + len(m.group(0))
            else:
                out.append(("other", c))
                i += 1
        elif c == ",":
            out.append(("comma", c))
            i += 1
        elif c == ")":
            return None
        elif c.isspace():
            out.append(("space", c))
            i += 1
        elif c.isalpha() or c == "_":
            m = re.match(r"[A-Za-z_][\w$]*", text[i:])
            out.append(("word", m.group(0)))
            i += len(m.group(0))
        else:
            out.append(("other", c))
            i += 1
    return out


def _mentions(text: str, ref: RelationRef) -> bool:
    """Does a view definition (read with search_path = pg_catalog, so names outside
    pg_catalog are schema-qualified) name ``ref``? Both quoted and bare forms."""
    def forms(part: str) -> list[str]:
        quoted = '"' + part.replace('"', '""') + '"'
        return [re.escape(part), re.escape(quoted)] if _UNQUOTED_IDENT_RE.match(part) else [re.escape(quoted)]
    pattern = (r"(?<![\w$\"])(?:" + "|".join(forms(ref.schema)) + r")\s*\.\s*(?:"
               + "|".join(forms(ref.name)) + r")(?![\w$])")
    if re.search(pattern, text):
        return True
    # pg_catalog relations appear unqualified in such a definition
    if ref.schema == "pg_catalog":
        return re.search(r"(?<![\w$.\"])" + re.escape(ref.name) + r"(?![\w$])", text) is not None
    return False




# ------------------------------------------------------------------- all together


def build_catalog(file_entries: Iterable[CatalogEntry], tag_entries: Iterable[CatalogEntry],
                  schema=None) -> Catalog:
    """The catalog the gateway enforces: file + tags merged (file wins), then
    derived entries for children, partitions and views when ``schema`` is given."""
    merged = merge_catalogs(file_entries, tag_entries)
    return derive_catalog(merged, schema) if schema is not None else merged


def missing_columns(entries: Iterable[CatalogEntry], schema) -> list[str]:
    """Warnings for entries that name a relation or column the live schema lacks
    (a typo in the catalog file protects nothing). Sources are included so the user
    finds the line."""
    out = []
    for e in entries:
        rel = schema.relation(e.column.relation)
        if rel is None:
            out.append(f"{e.source}: {e.column}: relation {e.column.relation} does not exist "
                       "in the database (check the name, or the schema: default is public)")
        elif rel.column(e.column.column) is None:
            out.append(f"{e.source}: {e.column}: {e.column.relation} has no column "
                       f"{e.column.column!r} (columns: {', '.join(rel.column_names)})")
    return out


def overridden_tags(file_entries: Iterable[CatalogEntry],
                    tag_entries: Iterable[CatalogEntry]) -> list[str]:
    """Notes for tags the catalog file overrides with a different category or
    sensitivity (the file wins; a disagreement is worth a look)."""
    tags = {e.column: e for e in tag_entries}
    out = []
    for e in file_entries:
        t = tags.get(e.column)
        if t is not None and (t.category, t.sensitivity) != (e.category, e.sensitivity):
            out.append(f"{e.source}: {e.column} is {e.category}/{e.sensitivity.name.lower()} in the "
                       f"file but tagged {t.category}/{t.sensitivity.name.lower()} in the database "
                       "(the file wins)")
    return out
