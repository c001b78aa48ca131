"""Function resolution against the LiveSchema, and the functions the analyzer
cannot see through (pure).

PostgreSQL resolves an unqualified function name by searching pg_catalog first
(unless the path names it) and then the session's search_path; overloads are
chosen by argument types, which the analyzer does not know. So every candidate
of that name on the path counts: if any of them is opaque, the call is opaque.
"""
from __future__ import annotations

from gateway.schema import Function, LiveSchema

#: Built-in functions that run SQL given as a string, read files, other
#: databases, large objects, WAL or other sessions' statements. The analyzer cannot
#: attribute what they read: a call is ``unknown`` (the policy can still list them).
_OPAQUE_NAMES = frozenset({
    "query_to_xml", "query_to_xml_and_xmlschema", "query_to_xmlschema",
    "cursor_to_xml", "cursor_to_xmlschema",
    "table_to_xml", "table_to_xml_and_xmlschema", "table_to_xmlschema",
    "schema_to_xml", "schema_to_xml_and_xmlschema", "schema_to_xmlschema",
    "database_to_xml", "database_to_xml_and_xmlschema", "database_to_xmlschema",
    "ts_stat", "ts_rewrite",  # run the query text they are given
    "pg_stat_file", "pg_stat_get_activity", "pg_stat_get_backend_activity",
    "pg_stat_statements", "pg_get_wal_record_info", "pg_get_wal_records_info",
    "pg_get_wal_block_info", "pg_logical_emit_message", "pg_current_logfile",
    # pageinspect: raw heap/index pages hold every column's values
    "get_raw_page", "heap_page_items", "heap_page_item_attrs", "tuple_data_split",
    "bt_page_items", "bt_multi_page_stats", "brin_page_items", "gin_leafpage_items",
    "gist_page_items", "gist_page_items_bytea", "hash_page_items",
    # extensions whose functions run SQL text: tablefunc, xml2, pg_background
    "crosstab", "crosstab2", "crosstab3", "crosstab4", "connectby", "xpath_table",
    "pg_background_launch",
})
#: extension schemas whose every function schedules or runs SQL text (pg_cron)
_OPAQUE_SCHEMAS = frozenset({"cron"})
_OPAQUE_PREFIXES = ("pg_read_", "pg_ls_", "pg_file_", "lo_", "dblink", "pg_get_wal_",
                    "pg_logical_slot_", "pg_replication_slot_", "loread", "lowrite", "pg_logdir_")

#: Calls that change how later statements are read (search_path, role, ...)
#: or name objects in strings: reported as ``dynamic`` reasons for the policy.
SETTING_FUNCTIONS = frozenset({"set_config"})

#: argument types whose string literals name database objects (implicit casts)
REG_TYPES = frozenset({
    "regclass", "regproc", "regprocedure", "regoper", "regoperator", "regtype",
    "regnamespace", "regrole", "regconfig", "regdictionary", "regcollation",
})

#: schemas whose SQL-language functions ship with PostgreSQL
_SYSTEM_SCHEMAS = frozenset({"pg_catalog", "information_schema"})
#: languages whose bodies are compiled code shipped with PostgreSQL or an extension
_TRANSPARENT_LANGUAGES = frozenset({"internal", "c"})


def function_path(search_path: tuple[str, ...]) -> tuple[str, ...]:
    """The schemas PostgreSQL searches for an unqualified function (never pg_temp)."""
    if "pg_catalog" in search_path:
        return tuple(s for s in search_path if s != "pg_temp")
    return ("pg_catalog",) + tuple(s for s in search_path if s != "pg_temp")


def candidates(schema: LiveSchema, names: list[str],
               search_path: tuple[str, ...]) -> tuple[Function, ...]:
    """Every function the name could resolve to (all overloads, all schemas on the path)."""
    name = names[-1]
    found = schema.functions_named(name)
    if len(names) >= 2:
        return tuple(f for f in found if f.schema == names[-2])
    path = function_path(search_path)
    return tuple(f for f in found if f.schema in path)


def opaque_reason(fn: Function) -> str | None:
    """Why a call to ``fn`` cannot be attributed, or None when it can."""
    qual = f"{fn.schema}.{fn.name}"
    if fn.name in _OPAQUE_NAMES or fn.name.startswith(_OPAQUE_PREFIXES) or fn.schema in _OPAQUE_SCHEMAS:
        return f"calls {qual}, which reads data the analyzer cannot attribute (SQL text, files, other servers)"
    if fn.security_definer:
        return f"calls {qual}, a SECURITY DEFINER function whose body the analyzer cannot see"
    if fn.language not in _TRANSPARENT_LANGUAGES and fn.schema not in _SYSTEM_SCHEMAS:
        return f"calls {qual}, a {fn.language} function whose body the analyzer cannot see"
    return None


#: how gateway.introspect lists an operator outside pg_catalog among the functions
OPERATOR_PREFIX = "operator "


def operator_candidates(schema: LiveSchema, names: list[str],
                        search_path: tuple[str, ...]) -> tuple[Function, ...]:
    """The implementing functions of every operator outside pg_catalog the name could
    resolve to (PostgreSQL chooses by argument types, which the analyzer does not
    know). Operators in pg_catalog are built in and not listed."""
    if not names:
        return ()
    found = schema.functions_named(OPERATOR_PREFIX + names[-1])
    if len(names) >= 2:
        return tuple(f for f in found if f.schema == names[-2])
    path = function_path(search_path)
    return tuple(f for f in found if f.schema in path)


#: how gateway.introspect lists a cast whose function lies outside pg_catalog
CAST_PREFIX = "cast "


def opaque_casts(schema: LiveSchema) -> tuple[Function, ...]:
    """Casts implemented by functions the analyzer cannot see into (a DBA's SQL or
    SECURITY DEFINER function). PostgreSQL applies a cast wherever a value of its
    source type must become its target type, often implicitly (anytextcat turns
    'x' || 7 into 'x' || 7::text): the analyzer, which does not know types, cannot
    tell where, so they make every statement with expressions unknown. Computed once
    per schema version."""
    hit = _OPAQUE_CASTS.get(schema.version)
    if hit is None or hit[0] is not schema:
        found = tuple(f for name, fs in schema.functions.items() if name.startswith(CAST_PREFIX)
                      for f in fs if opaque_reason(f))
        if len(_OPAQUE_CASTS) > 8:
            _OPAQUE_CASTS.clear()
        hit = _OPAQUE_CASTS[schema.version] = (schema, found)
    return hit[1]


_OPAQUE_CASTS: dict = {}


def is_aggregate_or_window(fns: tuple[Function, ...]) -> bool:
    return any(f.kind in ("a", "w") for f in fns)
