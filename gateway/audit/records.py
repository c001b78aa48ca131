"""Audit records as plain dicts, and the redaction that keeps PII out of them. Pure.

Every builder here returns an *event*: a dict with ``type`` and the fields of that
type, ready for ``orjson.dumps``. ``AuditTrail.record`` stamps it with the common
fields (``ts``, ``instance``, ``seq``) and the chain fields (``prev``, ``hash``).

Nothing a client sent as a value ever reaches a record: statement text goes
through :func:`redact_sql` (literals become ``$n``, comments are dropped), bound
parameters are counted and never copied, and database error text goes through
:func:`scrub_message`.
"""
from __future__ import annotations

import re
import unicodedata
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any, Iterable, Mapping

import orjson
import pglast.parser

# --------------------------------------------------------------------------------------
# record types

STATEMENT_DECISION = "statement.decision"
STATEMENT_COMPLETE = "statement.complete"
#: the columns of a ``statement.complete`` record's ``statements`` rows (its ``fields``)
COMPLETION_FIELDS = ("decision_seq", "fingerprint", "status", "rows", "bytes", "duration_ms", "tx_status")
REQUEST_EVENTS = frozenset({"created", "approved", "denied", "auto_approved", "abandoned", "expired"})
GRANT_EVENTS = frozenset({"created", "consumed", "expired", "revoked"})
ADMIN_CALL = "admin.call"
SESSION_OPEN = "session.open"
SESSION_CLOSE = "session.close"
AUTH_FAILURE = "auth.failure"
SESSION_REFUSED = "session.refused"
# written by the trail itself (see chain.py / trail.py)
SEGMENT_START = "segment.start"
CHECKPOINT = "checkpoint"

#: Fields the trail adds; builders never set them.
COMMON_FIELDS = ("ts", "instance", "type", "seq")


_TS_SECOND = [-1, ""]


def utc_second(sec: int) -> str:
    """``2026-11-29T00:35:18``: the part of :func:`utc_timestamp` up to the second."""
    return datetime.fromtimestamp(sec, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


def utc_timestamp(unix_time: float) -> str:
    """ISO-8601 UTC with microseconds: ``2026-11-29T00:35:18.123456Z``. The part up to
    the second is formatted once per second: this runs for every record on the
    statement hot path. (``Chain.seal_template`` writes the same text itself.)"""
    sec = int(unix_time)
    if _TS_SECOND[0] != sec:
        _TS_SECOND[1] = utc_second(sec)
        _TS_SECOND[0] = sec
    micros = int((unix_time - sec) * 1_000_000)
    return f"{_TS_SECOND[1]}.{micros:06d}Z"


def parse_timestamp(text: str) -> datetime:
    """The inverse of :func:`utc_timestamp`; also accepts dates and ``+00:00`` offsets."""
    t = text.strip()
    if t.endswith("Z"):
        t = t[:-1] + "+00:00"
    dt = datetime.fromisoformat(t)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc)


def stamp(event: Mapping[str, Any], *, instance: str, seq: int, unix_time: float) -> dict:
    """The event with the common fields first (readable lines), then its own fields."""
    if "type" not in event:
        raise ValueError("audit event has no 'type'")
    record = {"ts": utc_timestamp(unix_time), "instance": instance, "type": event["type"], "seq": seq}
    for k, v in event.items():
        if k not in record and k not in ("prev", "hash"):
            record[k] = v
    return record


# --------------------------------------------------------------------------------------
# redaction of statement text

_CONST_TOKENS = frozenset({"SCONST", "USCONST", "ICONST", "FCONST", "BCONST", "XCONST"})
_VALUEISH = re.compile(r"[0-9@]")
_COMMENT_TOKENS = frozenset({"C_COMMENT", "SQL_COMMENT"})
_PARAM_RE = re.compile(r"\$(\d+)")


def redact_sql(sql: str) -> str:
    """Statement text that is safe to log: every literal becomes ``$n``, comments go.

    First PostgreSQL's own normaliser (``pglast.parser.normalize``, the same ``$n``
    numbering pg_stat_statements shows); it leaves literals inside some utility
    statements (DDL bodies, COPY options), so the result is then lexed and any
    remaining constant, and every comment (a comment can carry a value as easily as
    a literal), is replaced too. Text PostgreSQL's lexer cannot read falls back to a
    conservative lexer that replaces anything that could be a literal, through to
    the end of the text when a quote is unterminated. Never returns the raw text.
    """
    return _redact_cached(sql)


@lru_cache(maxsize=4096)
def _redact_cached(sql: str) -> str:
    try:
        text = pglast.parser.normalize(sql)
        tokens = pglast.parser.scan(text)
    except Exception:  # noqa: BLE001 - any parser failure means: do not trust it
        return _redact_lexically(sql)
    next_param = max((int(m) for m in _PARAM_RE.findall(text)), default=0) + 1
    out: list[str] = []
    pos = 0
    for tok in tokens:
        # a double-quoted identifier can be a value in disguise (AS "000-00-0001")
        quoted_value = (tok.name in ("IDENT", "UIDENT") and text[tok.start] in '"U'
                        and _VALUEISH.search(text, tok.start, tok.end + 1) is not None
                        and text[tok.end] == '"')
        if tok.name in _CONST_TOKENS or tok.name in _COMMENT_TOKENS or quoted_value:
            out.append(text[pos:tok.start])
            if tok.name in _CONST_TOKENS or quoted_value:
                out.append(f"${next_param}")
                next_param += 1
            else:
                out.append(" ")
            pos = tok.end + 1
    out.append(text[pos:])
    return "".join(out)


_DOLLAR_TAG = re.compile(r"\$([A-Za-z_\x80-\uffff][A-Za-z0-9_\x80-\uffff]*)?\$")


def _redact_lexically(sql: str) -> str:
    """Conservative redaction for text the real lexer rejects.

    Replaces quoted strings ('...', E'...', $tag$...$tag$), every run of digits
    (numbers, and digits inside unknown words: a value glued to a keyword is still a
    value), and comments. An unterminated quote or comment swallows the rest. Double
    quoted identifiers are kept only when they contain no digit or '@'.
    """
    out: list[str] = []
    # new placeholders number on after the statement's own $n
    i, n, k = 0, len(sql), max((int(m) for m in _PARAM_RE.findall(sql)), default=0)

    def param() -> str:
        nonlocal k
        k += 1
        return f"${k}"

    while i < n:
        c = sql[i]
        if c == "'":
            j = i + 1
            while j < n:
                if sql[j] == "'" and j + 1 < n and sql[j + 1] == "'":
                    j += 2
                    continue
                if sql[j] == "\\":       # E'' escapes; harmless for standard strings
                    j += 2
                    continue
                if sql[j] == "'":
                    break
                j += 1
            out.append(param())
            i = j + 1 if j < n else n
            continue
        if c == "$" and i + 1 < n and sql[i + 1].isdigit():
            j = i + 1                    # a parameter reference ($1) is not a value
            while j < n and sql[j].isdigit():
                j += 1
            out.append(sql[i:j])
            i = j
            continue
        if c == "$":
            m = _DOLLAR_TAG.match(sql, i)
            if m and not (i > 0 and (sql[i - 1].isalnum() or sql[i - 1] == "_")):
                end = sql.find(m.group(0), m.end())
                out.append(param())
                i = n if end < 0 else end + len(m.group(0))
                continue
        if c == "-" and sql.startswith("--", i):
            j = sql.find("\n", i)
            out.append(" ")
            i = n if j < 0 else j
            continue
        if c == "/" and sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            out.append(" ")
            i = n if j < 0 else j + 2
            continue
        if c == '"':
            j = sql.find('"', i + 1)
            ident = sql[i:] if j < 0 else sql[i:j + 1]
            if j < 0 or re.search(r"[0-9@]", ident):
                out.append(param())
            else:
                out.append(ident)
            i = n if j < 0 else j + 1
            continue
        if c.isdigit():
            j = i
            while j < n and (sql[j].isalnum() or sql[j] in "._"):
                j += 1
            out.append(param())
            i = j
            continue
        if c.isalpha() or c == "_":
            j = i
            # '@' and '.' join: user01@example.invalid is one value, not three tokens
            while j < n and (sql[j].isalnum() or sql[j] in "_$@."):
                j += 1
            word = sql[i:j]
            # A word with digits or '@' in it may be a value run into a keyword
            # (SELECT000-00-0001): replace the whole word.
            out.append(param() if re.search(r"[0-9@]", word) else word)
            i = j
            continue
        if c == "@" or c == "+":
            out.append(c)
            i += 1
            continue
        out.append(c)
        i += 1
    return "".join(out)


# --------------------------------------------------------------------------------------
# scrubbing of error text

_QUOTED = re.compile(r'"(?:[^"]|"")*"?|\'(?:[^\']|\'\')*\'?')
_KEY_VALUE = re.compile(r"\bKey \(([A-Za-z0-9_, ]*)\)=\(.*", re.S)
_TRUNCATE_AT = re.compile(
    r"(?:\bKey \(|\bDETAIL:|\bFailing row contains|\bCONTEXT:|\bLINE \d+:|\bHINT:|\bcontains \(|\bcontains:).*",
    re.S)
_VALUEISH_WORD = re.compile(r"[^\s,;()]*[0-9@][^\s,;()]*")


def scrub_message(text: str | None) -> str:
    """Error or notice text with anything that could be a value removed.

    PostgreSQL echoes values in messages (``invalid input syntax for type integer:
    "000-00-0007"``, ``Key (ssn)=(000-00-0001) already exists``, ``Failing row
    contains (...)``). Quoted fragments become ``"…"``; everything from a ``Key (``,
    ``DETAIL:``, ``Failing row contains``, ``CONTEXT:`` or ``LINE n:`` position on is
    dropped (column names of a ``Key (...)`` are kept), so is whatever follows the
    first ``": "`` (where PostgreSQL puts the offending value); any remaining word with a
    digit or ``@`` in it becomes ``?``. It errs on removing too much: the SQLSTATE is
    recorded separately and is what an auditor needs.
    """
    if not text:
        return ""
    key = _KEY_VALUE.search(text)
    keep = text
    suffix = ""
    if key:
        keep = text[:key.start()]
        suffix = f"Key ({key.group(1)})=(…)"
    cut = _TRUNCATE_AT.search(keep)
    if cut:
        keep = keep[:cut.start()] + "…"
    # PostgreSQL puts the offending value after a colon ("... type numeric: 12x")
    colon = keep.find(": ")
    if colon >= 0:
        keep = keep[:colon] + ": …"
    keep = _QUOTED.sub('"…"', keep)
    keep = _VALUEISH_WORD.sub("?", keep)
    out = (keep + suffix).strip()
    return re.sub(r"\s+", " ", out)


# --------------------------------------------------------------------------------------
# builders


def _str(x: Any) -> str:
    return "" if x is None else str(getattr(x, "value", x))


def _columns(columns: Iterable[Any]) -> list[dict]:
    """Columns touched and how, from analyzer ``ColumnUse`` or policy ``TouchedColumn``
    values, or plain ``(column, usages[, category])`` tuples."""
    out = []
    for c in columns:
        if isinstance(c, tuple):
            col, usages, *rest = c
            category = rest[0] if rest else None
        else:
            col, usages, category = c.column, c.usages, getattr(c, "category", None)
        out.append({"column": str(col), "usages": sorted(_str(u) for u in usages),
                    "category": category})
    out.sort(key=lambda d: d["column"])
    return out


def statement_decision(*, session_id: str, user: str, roles: Iterable[str] = (),
                       client_addr: str = "", application_name: str = "", database: str = "",
                       sql: str = "", fingerprint: str = "", action: Any = "",
                       relations: Iterable[Any] = (), columns: Iterable[Any] = (),
                       effect: Any = "", rule: str = "", masked_columns: Iterable[Any] = (),
                       grant_id: str | None = None, request_id: str | None = None,
                       reason: str | None = None, reasons: Iterable[str] = (),
                       param_count: int = 0, statement_kind: str = "",
                       decision: Any = None, protocol: str = "simple") -> dict:
    """The record written *before* a statement is forwarded.

    ``sql`` is the raw statement text: it is redacted here, never stored as given.
    ``decision`` (a ``policies.model.Decision``), when given, supplies effect, rule,
    action, masked columns, grant id and reasons unless they are passed explicitly.
    Bound parameters are never recorded, only ``param_count``. ``reason`` is the
    user's stated reason (SET piigate.reason); it is the user's own text, so it is
    redacted like a statement's literals would be (digits and quoted parts survive
    only as a ticket-style token, see :func:`_redact_reason`).
    """
    if decision is not None:
        effect = effect or decision.effect
        rule = rule or decision.rule
        action = action or decision.action
        grant_id = grant_id or decision.grant_id
        reasons = tuple(reasons) or tuple(decision.reasons)
        if not masked_columns and decision.mask is not None:
            masked_columns = list(decision.mask.columns)
    return {
        "type": STATEMENT_DECISION,
        "session": session_id,
        "user": user,
        "roles": sorted(roles),
        "client_addr": client_addr,
        "application_name": application_name,
        "database": database,
        "fingerprint": fingerprint,
        "sql": redact_sql(sql) if sql else "",
        "param_count": int(param_count),
        "protocol": protocol,
        "kind": _str(statement_kind),
        "action": _str(action),
        "relations": sorted(str(r) for r in relations),
        "columns": _columns(columns),
        "effect": _str(effect),
        "rule": rule,
        "masked_columns": sorted(str(c) for c in masked_columns),
        "grant_id": grant_id,
        "request_id": request_id,
        "reason": _redact_reason(reason),
        "reasons": [scrub_message(r) for r in reasons],
    }


#: a ticket id: an ASCII project key and an issue number of at most 7 digits (a
#: 9-digit SSN, a phone or card number is no ticket, whatever letters precede it)
_TICKET = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,19}-[0-9]{1,7}", re.A)
#: digits a ticket-shaped token may carry in all: "SSN123456-78" is not a ticket
_TICKET_DIGITS = 7
#: anything a value can hide in: a digit of any script, '@', or their compatibility forms
_VALUE_CHAR = re.compile(r"[\d@]")


def _redact_reason(reason: str | None) -> str | None:
    """A stated reason is free text typed by a user: keep words, drop values.

    The first ticket id (``INC-1234``, ``JIRA_X-77``) is what an auditor needs and is
    kept; any other token with a digit (of any script, full-width too) or '@' is
    replaced, quoted parts are dropped. Only one ticket id stays: a value split into
    ticket-shaped pieces (``INC-123 INC-45 INC-6789``) is not put back together.
    Invisible format characters go first, so they cannot split a value into words.
    """
    if reason is None:
        return None
    text = "".join(ch for ch in unicodedata.normalize("NFKC", reason)
                   if unicodedata.category(ch) not in ("Cf", "Cc") or ch.isspace())
    words, ticket = [], False
    for w in _QUOTED.sub('"…"', text).split():
        core = w.strip(".,;:()[]")
        if not _VALUE_CHAR.search(w):
            words.append(w)
        elif (not ticket and _TICKET.fullmatch(core)
              and sum(ch.isdigit() for ch in core) <= _TICKET_DIGITS):
            words.append(w)
            ticket = True
        else:
            words.append("?")
    return " ".join(words)


def outcomes(record: Mapping[str, Any]) -> list[dict]:
    """The statement outcomes in a ``statement.complete`` record, one dict each.
    The trail writes them as rows under the record's ``fields`` (a dict per
    outcome cost more to write than the rest of the statement's audit); a record
    without ``fields`` is one outcome of its own (``statement_complete``)."""
    fields = record.get("fields")
    if fields is None:
        return [dict(record)]
    return [dict(zip(fields, row)) for row in record.get("statements") or ()]


def statement_complete(*, session_id: str, fingerprint: str = "", status: str = "ok",
                       sqlstate: str | None = None, message: str | None = None,
                       rows: int | None = None, bytes_sent: int = 0,
                       duration_ms: float = 0.0, command_tag: str | None = None) -> dict:
    """The record written after a statement finished (or failed).

    ``status`` is ``ok``, ``error`` or ``canceled``; ``sqlstate`` and a scrubbed
    ``message`` accompany errors. ``command_tag`` keeps only its verb and counts
    (``SELECT 5``), which carry no values.
    """
    return {
        "type": STATEMENT_COMPLETE,
        "session": session_id,
        "fingerprint": fingerprint,
        "status": status,
        "sqlstate": sqlstate,
        "message": scrub_message(message) if message else None,
        "rows": rows,
        "bytes": int(bytes_sent),
        "duration_ms": round(float(duration_ms), 3),
        "command_tag": command_tag if command_tag is None else re.sub(r"[^A-Z0-9 ]", "", command_tag),
    }


def request_event(kind: str, *, request_id: str, user: str, action: Any = "",
                  columns: Iterable[Any] = (), categories: Iterable[str] = (),
                  fingerprint: str = "", sql: str = "", reason: str | None = None,
                  session_id: str | None = None, by: str | None = None,
                  rule: str | None = None, scope: str | None = None,
                  duration_s: int | None = None, uses: int | None = None,
                  comment: str | None = None, grant_id: str | None = None) -> dict:
    """``request.created|approved|denied|auto_approved|abandoned|expired``.

    ``by`` names who (or which rule/hook/token) decided; ``rule`` the auto-approve
    rule; ``comment`` is an approver's free text and is redacted like a reason.
    """
    if kind not in REQUEST_EVENTS:
        raise ValueError(f"request event {kind!r}: expected one of {sorted(REQUEST_EVENTS)}")
    return {
        "type": f"request.{kind}",
        "request_id": request_id,
        "user": user,
        "action": _str(action),
        "columns": sorted(str(c) for c in columns),
        "categories": sorted(categories),
        "fingerprint": fingerprint,
        "sql": redact_sql(sql) if sql else "",
        "reason": _redact_reason(reason),
        "session": session_id,
        "by": by,
        "rule": rule,
        "scope": scope,
        "duration_s": duration_s,
        "uses": uses,
        "comment": _redact_reason(comment),
        "grant_id": grant_id,
    }


def grant_event(kind: str, *, grant_id: str, user: str, action: Any = "",
                columns: Iterable[Any] = (), categories: Iterable[str] = (),
                fingerprint: str | None = None, request_id: str | None = None,
                by: str | None = None, expires_at: float | None = None,
                uses_left: int | None = None, session_id: str | None = None,
                reason: str | None = None) -> dict:
    """``grant.created|consumed|expired|revoked``."""
    if kind not in GRANT_EVENTS:
        raise ValueError(f"grant event {kind!r}: expected one of {sorted(GRANT_EVENTS)}")
    return {
        "type": f"grant.{kind}",
        "grant_id": grant_id,
        "user": user,
        "action": _str(action),
        "columns": sorted(str(c) for c in columns),
        "categories": sorted(categories),
        "fingerprint": fingerprint,
        "request_id": request_id,
        "by": by,
        "expires_at": None if expires_at is None else utc_timestamp(expires_at),
        "uses_left": uses_left,
        "session": session_id,
        "reason": _redact_reason(reason),
    }


def admin_call(*, caller: str, method: str, path: str, status: int,
               client_addr: str = "", target: str | None = None,
               request_id: str | None = None, grant_id: str | None = None) -> dict:
    """An admin API call that changed something. The body is never recorded (it can
    hold tokens and free text); ``path`` loses its query string."""
    return {
        "type": ADMIN_CALL,
        "caller": caller,
        "method": method.upper(),
        "path": path.split("?", 1)[0],
        "status": int(status),
        "client_addr": client_addr,
        "target": target,
        "request_id": request_id,
        "grant_id": grant_id,
    }


def session_open(*, session_id: str, user: str, roles: Iterable[str] = (),
                 client_addr: str = "", application_name: str = "", database: str = "",
                 tls: bool = False) -> dict:
    return {
        "type": SESSION_OPEN,
        "session": session_id,
        "user": user,
        "roles": sorted(roles),
        "client_addr": client_addr,
        "application_name": application_name,
        "database": database,
        "tls": bool(tls),
    }


def session_close(*, session_id: str, user: str, statements: int = 0,
                  duration_ms: float = 0.0, reason: str = "terminate") -> dict:
    """``reason``: terminate | disconnect | error | revoked | shutdown."""
    return {
        "type": SESSION_CLOSE,
        "session": session_id,
        "user": user,
        "statements": int(statements),
        "duration_ms": round(float(duration_ms), 3),
        "reason": reason,
    }


def auth_failure(*, user: str, client_addr: str = "", database: str = "",
                 method: str = "scram-sha-256", reason: str = "") -> dict:
    """An authentication failure. ``user`` is what the client claimed; the reason is
    scrubbed (never a password or a proof)."""
    return {
        "type": AUTH_FAILURE,
        "user": user,
        "client_addr": client_addr,
        "database": database,
        "method": method,
        "reason": scrub_message(reason),
    }


def session_refused(*, user: str, database: str, client_addr: str = "", sqlstate: str = "",
                    reason: str = "") -> dict:
    """An authenticated user who got no session: the database is not theirs, a startup
    option was refused, or the database could not be reached. The reason is scrubbed."""
    return {
        "type": SESSION_REFUSED,
        "user": user,
        "database": database,
        "client_addr": client_addr,
        "sqlstate": sqlstate,
        "reason": scrub_message(reason),
    }


# --------------------------------------------------------------------------------------
# the trail's last line of defence


#: free text typed by people: a requester's reason, an approver's comment, the reason
#: given for a denial (an approver's or a decision hook's) or a revocation
_FREE_TEXT = ("reason", "comment", "denial_reason")
_ERROR_TEXT = ("message", "error", "detail", "hint")
_PARAM_KEYS = ("params", "parameters", "bind_params")


class TrustedEvent(dict):
    """An event the gateway built itself in canonical shape (see the session's
    decision records): sanitize() only reduces its free-text ``reason``."""


def sanitize(event: Mapping[str, Any]) -> dict:
    """An event from any producer in the canonical shape, with nothing that could be
    PII: ``sql`` redacted, error text scrubbed, free text (reason, comment) reduced,
    bound parameters replaced by their count. The trail applies it to every event,
    so a producer that builds its own dict cannot put a value in the trail.

    Also canonicalises other modules' spellings: ``jit.request.*``/``jit.grant.*``
    types become ``request.*``/``grant.*``, ``principal`` becomes ``user``, column
    lists ``[schema, table, column]`` become ``"schema.table.column"``, ``how``
    becomes ``usages`` and ``masked`` becomes ``masked_columns``.
    """
    if type(event) is TrustedEvent:
        # built by the gateway in canonical shape: no error text, no parameters; sql is
        # PostgreSQL's normalized text, whose comments still go (cached per shape)
        out = dict(event)
        if isinstance(out.get("sql"), str) and out["sql"]:
            out["sql"] = redact_sql(out["sql"])
        if isinstance(out.get("reason"), str):
            out["reason"] = _redact_reason(out["reason"])
        return out
    out = dict(event)
    t = out.get("type")
    if isinstance(t, str) and t.startswith("jit."):
        out["type"] = t[4:]
    if "principal" in out and "user" not in out:
        out["user"] = out.pop("principal")
    if "masked" in out and "masked_columns" not in out:
        out["masked_columns"] = out.pop("masked")
    if isinstance(out.get("columns"), list):
        out["columns"] = [_canonical_column(c) for c in out["columns"]]
    if isinstance(out.get("sql"), str) and out["sql"]:
        out["sql"] = redact_sql(out["sql"])
    for k in _ERROR_TEXT:
        if isinstance(out.get(k), str):
            out[k] = scrub_message(out[k])
    for k in _FREE_TEXT:
        if isinstance(out.get(k), str):
            out[k] = _redact_reason(out[k])
    if isinstance(out.get("reasons"), list):
        out["reasons"] = [scrub_message(r) if isinstance(r, str) else r for r in out["reasons"]]
    for k in _PARAM_KEYS:
        if k in out:
            v = out.pop(k)
            out.setdefault("param_count", len(v) if isinstance(v, (list, tuple)) else 0)
    return out


def _canonical_column(c: Any) -> Any:
    if isinstance(c, (list, tuple)) and all(isinstance(x, str) for x in c):
        return ".".join(c)
    if isinstance(c, dict) and "how" in c and "usages" not in c:
        c = dict(c)
        c["usages"] = c.pop("how")
    return c


def _json_default(x: Any) -> Any:
    if isinstance(x, (set, frozenset)):
        return sorted((_json_default(v) if not isinstance(v, (str, int, float)) else v for v in x), key=str)
    if hasattr(x, "value") and isinstance(getattr(x, "value"), (str, int)):
        return x.value                      # enums
    return str(x)                           # ColumnRef, RelationRef, datetime, ...


def plain(event: Mapping[str, Any]) -> dict:
    """The event as plain JSON data (what a reader of the trail will load back), so a
    record hashes the same when sealed and when verified. Sets become sorted lists,
    enums their value, ColumnRef/RelationRef their dotted name. Raises TypeError
    naming the problem (e.g. a non-string key or an integer beyond 64 bits)."""
    try:
        return orjson.loads(orjson.dumps(event, default=_json_default,
                                         option=orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_SORT_KEYS))
    except orjson.JSONEncodeError as e:
        raise TypeError(f"audit event {event.get('type')!r} is not JSON data: {e}") from None
