"""Read the upstream database's live schema and its PII comment tags (asyncpg, I/O).

``load_live_schema(conn)`` returns a ``gateway.schema.LiveSchema``: every relation of
kind r, p, v, m, f in every schema (pg_catalog and information_schema included: the
analyzer must resolve ``\\d``-style catalog queries), their columns in attnum order,
inheritance and partition parents, view definitions, functions and the
connection's effective search_path. ``LiveSchema.version`` changes whenever DDL
changes any of that, so callers can compare versions after a refresh.

Everything is read in one read-only REPEATABLE READ transaction, so the pieces
agree with each other even while DDL runs concurrently. Inside it
``search_path`` is set to ``pg_catalog`` only (``set_config(..., true)`` = SET
LOCAL, undone at the end of the transaction): ``pg_get_viewdef`` and
``format_type`` then schema-qualify every name outside pg_catalog, so a view
definition means the same thing whatever search_path the analyzer later uses.

Relations in other sessions' temporary schemas (``pg_temp_N``, ``pg_toast_temp_N``)
are left out: they are invisible to every other session.
"""
from __future__ import annotations

import re
import time

from catalog.loader import CatalogError, tag_entry  # noqa: F401 (CatalogError: what load_comment_tags raises)
from catalog.model import CatalogEntry, ColumnRef, RelationRef
from gateway.schema import Column, Function, LiveSchema, Relation

_NOT_TEMP = r"n.nspname !~ '^pg_(toast_)?temp_' AND n.nspname <> 'pg_toast'"

_RELATIONS_SQL = f"""
SELECT c.oid, n.nspname, c.relname, c.relkind::text
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND {_NOT_TEMP}
"""

_COLUMNS_SQL = f"""
SELECT a.attrelid, a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), a.atttypid
FROM pg_catalog.pg_attribute a
JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND a.attnum > 0 AND NOT a.attisdropped
  AND {_NOT_TEMP}
ORDER BY a.attrelid, a.attnum
"""

#: generated columns and the columns of their own table their expressions read
#: (PostgreSQL records each as a dependency of the column's pg_attrdef entry)
_GENERATED_SQL = f"""
SELECT d.adrelid, a.attname, ra.attname
FROM pg_catalog.pg_attrdef d
JOIN pg_catalog.pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum AND a.attgenerated <> ''
JOIN pg_catalog.pg_class c ON c.oid = d.adrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_depend dep ON dep.classid = 'pg_catalog.pg_attrdef'::pg_catalog.regclass AND dep.objid = d.oid
     AND dep.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND dep.refobjid = d.adrelid
     AND dep.refobjsubid > 0 AND dep.refobjsubid <> d.adnum
JOIN pg_catalog.pg_attribute ra ON ra.attrelid = d.adrelid AND ra.attnum = dep.refobjsubid
WHERE {_NOT_TEMP}
"""

#: functions a write may run to fill in a column without the statement naming them:
#: SQL/PL or SECURITY DEFINER functions (not compiled system code) that a column's
#: DEFAULT or generated expression calls (directly or through an operator), and
#: those of BEFORE / INSTEAD OF row triggers on INSERT or UPDATE, which may set any
#: column of the new row. What they return is of unknown origin (a DEFAULT of
#: ssn_of(7) holds an SSN), so the catalog treats those columns as PII.
_UNTRUSTED_FN = ("(p.prosecdef OR (l.lanname NOT IN ('internal', 'c') "
                 "AND pn.nspname NOT IN ('pg_catalog', 'information_schema')))")
_SET_BY_SQL = f"""
SELECT d.adrelid, a.attname, pn.nspname || '.' || p.proname, NULL, NULL
FROM pg_catalog.pg_attrdef d
JOIN pg_catalog.pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum AND NOT a.attisdropped
JOIN pg_catalog.pg_class c ON c.oid = d.adrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_depend dep ON dep.classid = 'pg_catalog.pg_attrdef'::pg_catalog.regclass AND dep.objid = d.oid
LEFT JOIN pg_catalog.pg_operator o ON dep.refclassid = 'pg_catalog.pg_operator'::pg_catalog.regclass
     AND o.oid = dep.refobjid
JOIN pg_catalog.pg_proc p ON (dep.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND p.oid = dep.refobjid)
     OR p.oid = o.oprcode
JOIN pg_catalog.pg_namespace pn ON pn.oid = p.pronamespace
JOIN pg_catalog.pg_language l ON l.oid = p.prolang
WHERE {_NOT_TEMP} AND {_UNTRUSTED_FN}
UNION ALL
SELECT t.tgrelid, NULL, pn.nspname || '.' || p.proname, l.lanname::text, p.prosrc
FROM pg_catalog.pg_trigger t
JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid
JOIN pg_catalog.pg_namespace pn ON pn.oid = p.pronamespace
JOIN pg_catalog.pg_language l ON l.oid = p.prolang
WHERE NOT t.tgisinternal AND t.tgenabled <> 'D' AND (t.tgtype & 1) = 1 AND (t.tgtype & (2 | 64)) <> 0
  AND (t.tgtype & (4 | 16)) <> 0 AND {_NOT_TEMP} AND {_UNTRUSTED_FN}
"""

#: relations with rules on INSERT, UPDATE or DELETE: a write to one runs the rules'
#: commands (DO ALSO SELECT ssn FROM customers returns the SSNs to the writer)
_WRITE_RULES_SQL = f"""
SELECT DISTINCT r.ev_class
FROM pg_catalog.pg_rewrite r
JOIN pg_catalog.pg_class c ON c.oid = r.ev_class
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE r.ev_type <> '1' AND {_NOT_TEMP}
"""

#: partition key columns (a key with an expression: every column, conservatively)
_PARTITION_KEYS_SQL = f"""
SELECT pt.partrelid, a.attname
FROM pg_catalog.pg_partitioned_table pt
JOIN pg_catalog.pg_class c ON c.oid = pt.partrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_attribute a ON a.attrelid = pt.partrelid AND a.attnum > 0 AND NOT a.attisdropped
     AND (a.attnum = ANY (pt.partattrs::pg_catalog.int2[]) OR 0 = ANY (pt.partattrs::pg_catalog.int2[]))
WHERE {_NOT_TEMP}
"""

#: row-level security: the columns (of any table) each enabled policy's USING/WITH
#: CHECK expressions read (PostgreSQL records them as the policy's dependencies)
_ROW_FILTER_SQL = f"""
SELECT DISTINCT p.polrelid, rn.nspname, rc.relname, a.attname
FROM pg_catalog.pg_policy p
JOIN pg_catalog.pg_class c ON c.oid = p.polrelid AND c.relrowsecurity
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_policy'::pg_catalog.regclass AND d.objid = p.oid
     AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.refobjsubid > 0
JOIN pg_catalog.pg_class rc ON rc.oid = d.refobjid
JOIN pg_catalog.pg_namespace rn ON rn.oid = rc.relnamespace
JOIN pg_catalog.pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
WHERE {_NOT_TEMP}
"""

#: foreign keys, column by column: a referencing column holds the referenced values
_REFERENCES_SQL = f"""
SELECT c.conrelid, a.attname, rn.nspname, rc.relname, ra.attname
FROM pg_catalog.pg_constraint c
JOIN pg_catalog.pg_class t ON t.oid = c.conrelid
JOIN pg_catalog.pg_namespace n ON n.oid = t.relnamespace
JOIN pg_catalog.pg_class rc ON rc.oid = c.confrelid
JOIN pg_catalog.pg_namespace rn ON rn.oid = rc.relnamespace
CROSS JOIN LATERAL ROWS FROM (pg_catalog.unnest(c.conkey), pg_catalog.unnest(c.confkey)) AS k(src, dst)
JOIN pg_catalog.pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.src
JOIN pg_catalog.pg_attribute ra ON ra.attrelid = c.confrelid AND ra.attnum = k.dst
WHERE c.contype = 'f' AND {_NOT_TEMP}
"""

#: the columns each CHECK/UNIQUE/PRIMARY KEY/EXCLUDE/FOREIGN KEY constraint and each
#: unique or exclusion index compares (key columns, and the columns its expressions
#: and predicate read, which PostgreSQL records as the index's dependencies); a
#: NOT VALID CHECK constraint is marked: any UPDATE evaluates it on the row
_CONSTRAINED_SQL = f"""
SELECT DISTINCT k.rel, k.grp, a.attname, k.always
FROM (
  SELECT c.conrelid AS rel,
         CASE WHEN c.contype IN ('u', 'p', 'x') THEN 'i' || c.conindid::text ELSE 'c' || c.oid::text END AS grp,
         u.attnum, (c.contype = 'c' AND NOT c.convalidated) AS always
  FROM pg_catalog.pg_constraint c CROSS JOIN LATERAL pg_catalog.unnest(c.conkey) AS u(attnum)
  WHERE c.contype IN ('c', 'u', 'p', 'x', 'f') AND c.conrelid <> 0
  UNION ALL
  SELECT i.indrelid, 'i' || i.indexrelid::text, d.refobjsubid, false
  FROM pg_catalog.pg_index i
  JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.objid = i.indexrelid
       AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.refobjid = i.indrelid
       AND d.refobjsubid > 0
  WHERE i.indisunique OR i.indisexclusion
) k
JOIN pg_catalog.pg_class t ON t.oid = k.rel
JOIN pg_catalog.pg_namespace n ON n.oid = t.relnamespace
JOIN pg_catalog.pg_attribute a ON a.attrelid = k.rel AND a.attnum = k.attnum AND NOT a.attisdropped
WHERE k.attnum > 0 AND {_NOT_TEMP}
"""

_INHERITS_SQL = """
SELECT inhrelid, inhparent FROM pg_catalog.pg_inherits ORDER BY inhrelid, inhseqno
"""

_VIEWDEFS_SQL = f"""
SELECT c.oid, pg_catalog.pg_get_viewdef(c.oid, true)
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('v', 'm') AND {_NOT_TEMP}
"""

# Argument types as regtype text (format_type without typmod, which argument types
# never carry): they read like column types and are schema-qualified when outside
# pg_catalog (search_path is pg_catalog while this runs). Twice as fast as calling
# format_type per argument.
_FUNCTIONS_SQL = """
SELECT n.nspname, p.proname,
       p.proargtypes::pg_catalog.oid[]::pg_catalog.regtype[]::text[] AS args,
       pg_catalog.format_type(p.prorettype, NULL), p.provolatile::text,
       p.prosecdef OR coalesce(agg.secdef, false),
       p.proretset, p.prokind::text, coalesce(agg.lang, l.lanname)
FROM pg_catalog.pg_proc p
JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
JOIN pg_catalog.pg_language l ON l.oid = p.prolang
-- an aggregate's language is 'internal'; the code it runs is its support functions'
LEFT JOIN LATERAL (
  SELECT pg_catalog.bool_or(fp.prosecdef) AS secdef,
         pg_catalog.min(fl.lanname) FILTER (WHERE fl.lanname NOT IN ('internal', 'c')) AS lang
  FROM pg_catalog.pg_aggregate a
  JOIN pg_catalog.pg_proc fp ON fp.oid IN (a.aggtransfn, a.aggfinalfn, a.aggcombinefn, a.aggserialfn,
                                           a.aggdeserialfn, a.aggmtransfn, a.aggminvtransfn, a.aggmfinalfn)
  JOIN pg_catalog.pg_language fl ON fl.oid = fp.prolang
  WHERE a.aggfnoid = p.oid) agg ON p.prokind = 'a'
WHERE n.nspname !~ '^pg_(toast_)?temp_'
UNION ALL
SELECT n.nspname, 'operator ' || o.oprname,
       p.proargtypes::pg_catalog.oid[]::pg_catalog.regtype[]::text[],
       pg_catalog.format_type(p.prorettype, NULL), p.provolatile::text, p.prosecdef,
       p.proretset, p.prokind::text, l.lanname
FROM pg_catalog.pg_operator o
JOIN pg_catalog.pg_namespace n ON n.oid = o.oprnamespace
JOIN pg_catalog.pg_proc p ON p.oid = o.oprcode
JOIN pg_catalog.pg_language l ON l.oid = p.prolang
WHERE n.nspname <> 'pg_catalog' AND n.nspname !~ '^pg_(toast_)?temp_'
UNION ALL
SELECT n.nspname, 'cast ' || pg_catalog.format_type(c.casttarget, NULL),
       p.proargtypes::pg_catalog.oid[]::pg_catalog.regtype[]::text[],
       pg_catalog.format_type(p.prorettype, NULL), p.provolatile::text, p.prosecdef,
       p.proretset, p.prokind::text, l.lanname
FROM pg_catalog.pg_cast c
JOIN pg_catalog.pg_proc p ON p.oid = c.castfunc
JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
JOIN pg_catalog.pg_language l ON l.oid = p.prolang
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
"""
#: casts whose function lies outside pg_catalog are listed the same way, as
#: "cast <target type>" in the function's schema (see analysis.functions.CAST_PREFIX)
#: operators outside pg_catalog (extensions', a DBA's) are listed among the functions
#: as "operator <name>" in the operator's schema, with the attributes of the function
#: that implements them: "7 ### 0" calls that function, which the analysis must see
OPERATOR_PREFIX = "operator "

_COMMENT_TAGS_SQL = f"""
SELECT n.nspname, c.relname, a.attname, d.description
FROM pg_catalog.pg_description d
JOIN pg_catalog.pg_class c ON d.classoid = 'pg_catalog.pg_class'::pg_catalog.regclass
                           AND d.objoid = c.oid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = d.objsubid
WHERE d.objsubid > 0 AND NOT a.attisdropped AND d.description ~* '^\\s*pii:'
  AND {_NOT_TEMP}
ORDER BY 1, 2, a.attnum
"""


#: comments that are not tags but say the column holds PII ("free_text (may contain
#: PII)"): catalogued anyway, with the first category the comment names (else
#: free_text). A DBA's warning silently ignored is a column silently unprotected.
_COMMENT_MENTIONS_SQL = _COMMENT_TAGS_SQL.replace(
    "d.description ~* '^\\s*pii:'",
    "d.description !~* '^\\s*pii:' AND (d.description ~* '\\mpii\\M' "
    "OR d.description ~* '^\\s*(name|email|phone|ssn|national_id|dob|card_number|iban|address|"
    "ip_address|free_text)\\M')")


async def load_comment_mentions(conn, known: set | frozenset = frozenset()) -> list[CatalogEntry]:
    """Entries for columns whose comment mentions PII without a ``pii:`` tag."""
    import re
    from catalog.model import BUILTIN_CATEGORIES, DEFAULT_SENSITIVITY, Sensitivity
    rows = await conn.fetch(_COMMENT_MENTIONS_SQL)
    out = []
    for nsp, rel, col, text in rows:
        ref = ColumnRef(nsp, rel, col)
        if ref in known:
            continue
        words = re.findall(r"[a-z_]+", text.lower())
        category = next((w for w in words if w in BUILTIN_CATEGORIES), "free_text")
        out.append(CatalogEntry(ref, category, DEFAULT_SENSITIVITY.get(category, Sensitivity.MEDIUM),
                                description=text[:200], source=f"comment-mention:{ref}"))
    return out


async def load_live_schema(conn) -> LiveSchema:
    """Read the live schema through an asyncpg connection (any role that can read
    the system catalogs). Outside a transaction it opens its own read-only
    REPEATABLE READ one; inside the caller's transaction it uses a savepoint and
    puts the caller's search_path back before releasing it."""
    search_path = tuple(await conn.fetchval("SELECT pg_catalog.current_schemas(false)"))
    if not conn.is_in_transaction():
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            await conn.execute(_SET_PATH, "pg_catalog")
            rows = await _fetch_catalog_rows(conn)
    else:
        saved = await conn.fetchval("SELECT pg_catalog.current_setting('search_path')")
        # SET LOCAL inside a savepoint outlives RELEASE: restore it explicitly (an
        # error rolls the savepoint back, which restores it as well)
        async with conn.transaction():
            await conn.execute(_SET_PATH, "pg_catalog")
            rows = await _fetch_catalog_rows(conn)
            await conn.execute(_SET_PATH, saved)
    return build_live_schema(*rows, search_path=search_path)


_SET_PATH = "SELECT pg_catalog.set_config('search_path', $1, true)"


async def _fetch_catalog_rows(conn) -> tuple:
    return (await conn.fetch(_RELATIONS_SQL), await conn.fetch(_COLUMNS_SQL),
            await conn.fetch(_INHERITS_SQL), await conn.fetch(_VIEWDEFS_SQL),
            await conn.fetch(_FUNCTIONS_SQL), await conn.fetch(_GENERATED_SQL),
            await conn.fetch(_SET_BY_SQL), await conn.fetch(_WRITE_RULES_SQL),
            await conn.fetch(_PARTITION_KEYS_SQL), await conn.fetch(_ROW_FILTER_SQL),
            await conn.fetch(_REFERENCES_SQL), await conn.fetch(_CONSTRAINED_SQL))


def build_live_schema(rel_rows, col_rows, inh_rows, view_rows, fn_rows, gen_rows=(), set_by_rows=(),
                      rule_rows=(), key_rows=(), filter_rows=(), ref_rows=(), constrained_rows=(), search_path: tuple[str, ...] = ("public",)) -> LiveSchema:
    """Assemble a LiveSchema from the catalog rows (tuples, as the queries above
    return them). Separate from the I/O so it can be read and tested on its own."""
    refs: dict[int, tuple[RelationRef, str]] = {
        oid: (RelationRef(nsp, name), kind) for oid, nsp, name, kind in rel_rows}
    columns: dict[int, list[Column]] = {}
    for oid, name, type_name, type_oid in col_rows:
        columns.setdefault(oid, []).append(Column(name, type_name, int(type_oid)))
    parents: dict[int, list[RelationRef]] = {}
    for child, parent in inh_rows:
        # pg_inherits also links partitioned indexes: keep relations we model
        if child in refs and parent in refs:
            parents.setdefault(child, []).append(refs[parent][0])
    viewdefs = {oid: text for oid, text in view_rows}
    # a table's generated columns carry the values of the columns they are computed
    # from: their lineage (the catalog derives them as it does view columns)
    generated: dict[int, dict[str, set]] = {}
    for oid, name, source in gen_rows:
        if oid in refs:
            ref = refs[oid][0]
            generated.setdefault(oid, {}).setdefault(name, set()).add(ColumnRef(ref.schema, ref.name, source))
    # columns a write may fill with what a DBA's function returns (None: a row
    # trigger's function, which may set every column of the new row)
    set_by: dict[int, dict[str, set]] = {}
    for oid, name, fn, language, source in set_by_rows:
        if oid in refs:
            all_names = [c.name for c in columns.get(oid, ())]
            names = [name] if name is not None else trigger_columns(language, source, all_names)
            for n in names:
                set_by.setdefault(oid, {}).setdefault(n, set()).add(fn)
    ruled = {row[0] for row in rule_rows}
    filters: dict[int, set] = {}
    for oid, nsp, rel, col in filter_rows:
        filters.setdefault(oid, set()).add(ColumnRef(nsp, rel, col))
    refs_of: dict[int, dict[str, set]] = {}
    for oid, col, nsp, rel, rcol in ref_rows:
        refs_of.setdefault(oid, {}).setdefault(col, set()).add(ColumnRef(nsp, rel, rcol))
    groups: dict[tuple, set] = {}
    always: dict[int, set] = {}
    for oid, grp, name, every_update in constrained_rows:
        groups.setdefault((oid, grp), set()).add(name)
        if every_update:
            always.setdefault(oid, set()).add(name)
    constrained: dict[int, dict[str, set]] = {}
    for (oid, _grp), names in groups.items():
        for name in names:
            if len(names) > 1:
                constrained.setdefault(oid, {}).setdefault(name, set()).update(names - {name})
    for oid, names in always.items():
        constrained.setdefault(oid, {}).setdefault("", set()).update(names)
    keys: dict[int, set] = {}
    for oid, name in key_rows:
        keys.setdefault(oid, set()).add(name)
    relations = [
        Relation(ref=ref, kind=kind, columns=tuple(columns.get(oid, ())),
                 parents=tuple(parents.get(oid, ())), view_definition=viewdefs.get(oid),
                 lineage={k: frozenset(v) for k, v in generated.get(oid, {}).items()},
                 set_by={k: frozenset(v) for k, v in set_by.get(oid, {}).items()},
                 write_rules=oid in ruled, partition_key=frozenset(keys.get(oid, ())),
                 row_filter=frozenset(filters.get(oid, ())),
                 references={k: frozenset(v) for k, v in refs_of.get(oid, {}).items()},
                 constrained_with={k: frozenset(v) for k, v in constrained.get(oid, {}).items()})
        for oid, (ref, kind) in refs.items()
    ]
    functions = [
        Function(schema=nsp, name=name, arg_types=tuple(args), result_type=result,
                 volatility=vol, security_definer=secdef, returns_set=retset, kind=kind,
                 language=lang)
        for nsp, name, args, result, vol, secdef, retset, kind, lang in fn_rows
    ]
    return LiveSchema.of(relations, functions, search_path)


_NEW_FIELD = re.compile(r'(?i)\bNEW\s*\.\s*(?:"((?:[^"]|"")+)"|([a-z_][\w$]*))')
#: a PL/pgSQL trigger body that may replace the whole new row, or set its fields in
#: ways a name search does not see: every column counts
_NEW_WHOLE = re.compile(r"(?i)\bNEW\s*:?=|\bINTO\s+(STRICT\s+)?NEW\b|\bFOR\s+NEW\b|\bEXECUTE\b|"
                        r"\bALIAS\s+FOR\s+(NEW|\$)|populate_record|\bRETURN\s+(?!NEW\b|NULL\b|OLD\b)\w")


def trigger_columns(language: str | None, source: str | None, columns: list[str]) -> list[str]:
    """The columns of the new row a row trigger's function may set: for PL/pgSQL, the
    NEW fields its body names (read or written: a comparison counts too, erring on
    the safe side), unless it may replace the row as a whole; for any other language
    (or a body this cannot read), every column."""
    if language != "plpgsql" or not source or _NEW_WHOLE.search(source):
        return list(columns)
    named = set()
    for quoted, bare in _NEW_FIELD.findall(source):
        named.add(quoted.replace('""', '"') if quoted else bare.lower())
    return [c for c in columns if c in named]


async def load_comment_tags(conn, user_categories=None) -> list[CatalogEntry]:
    """Catalog entries from ``COMMENT ON COLUMN ... IS 'pii:<category>[:<sensitivity>]'``.

    Comments that do not start with ``pii:`` are not tags and are skipped (the
    filter runs in the database). A malformed tag raises CatalogError naming the
    column: someone meant to protect it. ``user_categories`` (the catalog file's
    [categories]) gives default sensitivities of user-defined categories."""
    rows = await conn.fetch(_COMMENT_TAGS_SQL)
    entries = []
    for nsp, rel, col, text in rows:
        entry = tag_entry(ColumnRef(nsp, rel, col), text, user_categories or {})
        if entry is not None:
            entries.append(entry)
    return entries


async def timed_load(conn) -> tuple[LiveSchema, float]:
    """``load_live_schema`` and how long it took in seconds (for logs and metrics)."""
    start = time.perf_counter()
    schema = await load_live_schema(conn)
    return schema, time.perf_counter() - start


async def load_catalog_and_schema(conn, catalog_file: str | None = None,
                                  comment_tags: bool = True, annotate=None):
    """Everything the gateway needs at start and after DDL, in one call:
    ``(catalog, schema, warnings)``.

    The catalog is the file (when given) merged with the database's comment tags
    (when ``comment_tags``), plus entries derived for children, partitions and
    views. ``annotate(schema) -> schema`` runs before derivation: pass the
    analyzer's view-lineage pass so views are attributed column by column (without
    it, views fall back to the conservative name-based rule). Raises CatalogError
    for a bad file or a malformed tag; ``warnings`` lists catalog entries that name
    columns the database does not have."""
    from catalog.loader import build_catalog, load_catalog_file, missing_columns

    cfile = load_catalog_file(catalog_file) if catalog_file else None
    file_entries = cfile.entries if cfile else ()
    user_categories = cfile.categories if cfile else {}
    tags = await load_comment_tags(conn, user_categories) if comment_tags else []
    if comment_tags:
        known = {e.column for e in tags} | {e.column for e in file_entries}
        tags = list(tags) + await load_comment_mentions(conn, known)
    schema = await load_live_schema(conn)
    if annotate is not None:
        schema = annotate(schema)
    catalog = build_catalog(file_entries, tags, schema)
    return catalog, schema, missing_columns(file_entries, schema)
