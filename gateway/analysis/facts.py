"""What the analyzer says about one SQL statement. Pure values.

The analyzer (``gateway.analysis.analyze``) turns SQL text into a tuple of
``StatementFacts``, one per statement. ``unknown`` set means "could not be sure":
the policy layer treats that as touching everything (fail closed).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from catalog.model import ColumnRef, RelationRef


class StatementKind(str, Enum):
    SELECT = "select"
    INSERT = "insert"
    UPDATE = "update"
    DELETE = "delete"
    MERGE = "merge"
    COPY_TO = "copy_to"          # COPY ... TO (export)
    COPY_FROM = "copy_from"      # COPY ... FROM (write)
    DDL = "ddl"                  # CREATE/ALTER/DROP/GRANT/COMMENT/TRUNCATE/...
    SET = "set"                  # SET/RESET/SHOW of ordinary settings
    SESSION = "session"          # SET ROLE / SESSION AUTHORIZATION / DISCARD / search_path changes
    TRANSACTION = "transaction"  # BEGIN/START/COMMIT/ROLLBACK/SAVEPOINT/...
    CURSOR = "cursor"            # DECLARE / FETCH / MOVE / CLOSE
    PREPARE = "prepare"          # SQL-level PREPARE / EXECUTE / DEALLOCATE
    EXPLAIN = "explain"
    CALL = "call"
    DO = "do"
    LISTEN = "listen"            # LISTEN / UNLISTEN / NOTIFY
    UTILITY = "utility"          # VACUUM/ANALYZE/CHECKPOINT/LOCK/LOAD/... 
    EMPTY = "empty"              # an empty query string
    UNKNOWN = "unknown"


class Usage(str, Enum):
    """How a statement uses a column."""
    RETURNED = "returned"        # appears in the output (select list, RETURNING, COPY TO)
    PREDICATE = "predicate"      # WHERE / HAVING / ON / CASE condition
    JOIN = "join"                # join condition
    GROUP_ORDER = "group_order"  # GROUP BY / ORDER BY / DISTINCT ON / window PARTITION/ORDER
    AGGREGATE = "aggregate"      # argument of an aggregate or window function
    WRITTEN = "written"          # target of INSERT/UPDATE/MERGE/COPY FROM
    WHOLE_ROW = "whole_row"      # reached through a whole-row reference (t, t.*, row_to_json(t))
    OTHER = "other"              # anything else (function argument, LIMIT expression, ...)


@dataclass(frozen=True, slots=True)
class ColumnUse:
    column: ColumnRef
    usages: frozenset[Usage]


@dataclass(frozen=True, slots=True)
class StatementFacts:
    """Facts about one statement.

    ``columns`` lists every *base-table* column the statement reads or writes,
    after resolving aliases, stars, CTEs, subqueries and views down to base
    tables; it is not filtered by the catalog (the policy layer does that).
    ``relations_read`` holds every relation named or reached (views and the base
    tables under them), ``relations_written`` the targets of writes.
    """
    kind: StatementKind
    sql: str                                         # the statement's own text
    fingerprint: str = ""                            # literal-insensitive key (pg_query)
    redacted_sql: str = ""                           # literals replaced by $n: safe to log
    relations_read: frozenset[RelationRef] = frozenset()
    relations_written: frozenset[RelationRef] = frozenset()
    columns: tuple[ColumnUse, ...] = ()
    functions: frozenset[str] = frozenset()          # schema-qualified when resolvable: 'pg_catalog.upper'
    unknown: str | None = None                       # reason, when the analyzer cannot be sure
    # extra detail for kinds that need it
    command: str = ""                                # e.g. 'CREATE VIEW', 'SET ROLE', 'FETCH'
    cursor_name: str | None = None                   # DECLARE/FETCH/MOVE/CLOSE
    prepared_name: str | None = None                 # PREPARE/EXECUTE/DEALLOCATE
    setting: tuple[str, str | None] | None = None    # SET name = value (value None for RESET)
    inner: "StatementFacts | None" = None            # DECLARE ... FOR <query>, PREPARE ... AS <stmt>, EXPLAIN <stmt>
    param_count: int = 0                             # highest $n referenced
    #: why the statement's effect depends on strings or settings the analyzer
    #: does not follow: 'string literal cast to regclass names an object',
    #: 'set_config() changes a setting', 'COPY reads or writes a server file', ...
    dynamic: tuple[str, ...] = ()
    #: the relation a CREATE TABLE/VIEW/TABLE AS/SELECT INTO creates; schema
    #: 'pg_temp' for temporary ones (the session adds them to its LiveSchema,
    #: where they shadow same-named relations as in PostgreSQL)
    creates: RelationRef | None = None

    @property
    def is_unknown(self) -> bool:
        return self.unknown is not None

    def columns_with(self, usage: Usage) -> frozenset[ColumnRef]:
        return frozenset(u.column for u in self.columns if usage in u.usages)

    @property
    def column_refs(self) -> frozenset[ColumnRef]:
        return frozenset(u.column for u in self.columns)
