"""Reading a trail back: files in chain order, search filters, the access report.

``read_trail`` is the only I/O here (reading files); ``search`` and ``report``
work on any iterable of record dicts.
"""
from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import orjson

from gateway.audit.chain import Line
from gateway.audit.records import STATEMENT_DECISION, parse_timestamp, utc_timestamp


# --------------------------------------------------------------------------------------
# reading


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given; a directory stands for the ``*.jsonl`` files in it."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(q for q in p.iterdir() if q.suffix == ".jsonl"))
        else:
            out.append(p)
    return out


def read_trail(paths: Iterable[str | Path]) -> Iterator[Line]:
    """The lines of the given files, as a stream, files ordered by chain position:
    grouped by instance, then by the seq of their first record (so a shell glob in
    any order verifies the same). Every file is opened here, so a missing or
    unreadable one raises OSError (naming it) before anything is yielded."""
    files = []
    for i, p in enumerate(expand_paths(paths)):
        inst, seq = _first_key(p)
        files.append(((inst, seq, i), p))
    files.sort(key=lambda x: x[0])
    return _stream([p for _, p in files])


def _first_key(path: Path) -> tuple[str, int]:
    with open(path, "rb") as f:
        for raw in f:
            try:
                rec = orjson.loads(raw)
                return str(rec.get("instance", "")), int(rec.get("seq", 0))
            except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
                continue
    return "", 0


def _stream(paths: list[Path]) -> Iterator[Line]:
    for p in paths:
        with open(p, "rb") as f:
            pending: bytes | None = None
            n = 0
            for raw in f:
                if pending is not None:
                    yield Line(str(p), n, pending[:-1], False, True)
                n += 1
                pending = raw
            if pending is not None:
                terminated = pending.endswith(b"\n")
                yield Line(str(p), n, pending[:-1] if terminated else pending, True, terminated)


def iter_records(lines: Iterable[Line]) -> Iterator[dict]:
    """Parsed records, skipping lines that are not JSON objects (a torn tail)."""
    for ln in lines:
        try:
            rec = orjson.loads(ln.raw)
        except orjson.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            yield rec


# --------------------------------------------------------------------------------------
# time arguments

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_when(text: str, now: datetime | None = None) -> datetime:
    """An ISO-8601 time or date (UTC unless it says otherwise), or a duration ago:
    ``30m``, ``24h``, ``7d``."""
    m = _RELATIVE.match(text.strip())
    if m:
        now = now or datetime.now(timezone.utc)
        return now - timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])
    try:
        return parse_timestamp(text)
    except ValueError:
        raise ValueError(f"time {text!r}: expected ISO-8601 (2026-11-29 or "
                         f"2026-11-29T10:00:00Z) or a duration ago (30m, 24h, 7d)") from None


def _ts_key(dt: datetime) -> str:
    return utc_timestamp(dt.timestamp())


# --------------------------------------------------------------------------------------
# search


@dataclass(frozen=True)
class Filter:
    """What an auditor asks for. Every field given must match."""
    user: str | None = None
    column: str | None = None          # 'ssn', 'customers.ssn' or 'public.customers.ssn'
    category: str | None = None        # a PII category: 'ssn', 'email', ...
    table: str | None = None           # 'customers' or 'public.customers'
    since: datetime | None = None
    until: datetime | None = None
    request_id: str | None = None
    grant_id: str | None = None
    types: tuple[str, ...] = ()        # record types or prefixes: 'statement', 'grant.created'
    session: str | None = None

    def matches(self, rec: Mapping[str, Any]) -> bool:
        ts = rec.get("ts", "")
        if self.since is not None and ts < _ts_key(self.since):
            return False
        if self.until is not None and ts >= _ts_key(self.until):
            return False
        if self.types and not any(rec.get("type", "") == t or rec.get("type", "").startswith(t + ".")
                                  for t in self.types):
            return False
        if self.user is not None and rec.get("user") != self.user:
            return False
        if self.session is not None and rec.get("session") != self.session:
            return False
        if self.request_id is not None and rec.get("request_id") != self.request_id:
            return False
        if self.grant_id is not None and rec.get("grant_id") != self.grant_id:
            return False
        if self.column is not None and not any(_name_matches(c, self.column) for c in _columns_of(rec)):
            return False
        if self.category is not None and self.category not in _categories_of(rec):
            return False
        if self.table is not None and not any(_name_matches(r, self.table) for r in _tables_of(rec)):
            return False
        return True


def _name_matches(full: str, wanted: str) -> bool:
    """'public.customers.ssn' matches 'ssn', 'customers.ssn' and itself."""
    return full == wanted or full.endswith("." + wanted)


def _columns_of(rec: Mapping[str, Any]) -> list[str]:
    cols = rec.get("columns") or []
    out = [c["column"] if isinstance(c, dict) else str(c) for c in cols]
    out.extend(rec.get("masked_columns") or [])
    return out


def _categories_of(rec: Mapping[str, Any]) -> set[str]:
    cats = set(rec.get("categories") or [])
    for c in rec.get("columns") or []:
        if isinstance(c, dict) and c.get("category"):
            cats.add(c["category"])
    return cats


def _tables_of(rec: Mapping[str, Any]) -> list[str]:
    out = list(rec.get("relations") or [])
    for c in _columns_of(rec):
        out.append(c.rsplit(".", 1)[0])
    return out


def search(records: Iterable[Mapping[str, Any]], flt: Filter, limit: int | None = None) -> list[dict]:
    out = []
    for rec in records:
        if flt.matches(rec):
            out.append(dict(rec))
            if limit is not None and len(out) >= limit:
                break
    return out


def format_record(rec: Mapping[str, Any]) -> str:
    """One line an auditor can read."""
    t = rec.get("type", "?")
    head = f"{rec.get('ts', '')} {rec.get('instance', '')} #{rec.get('seq', '')} {t}"
    if t == STATEMENT_DECISION:
        cols = ",".join(f"{c['column']}({c.get('category') or '-'}:{'/'.join(c.get('usages', []))})"
                        for c in rec.get("columns", []) if c.get("category"))
        extra = f" grant={rec['grant_id']}" if rec.get("grant_id") else ""
        extra += f" request={rec['request_id']}" if rec.get("request_id") else ""
        extra += f" reason={rec['reason']!r}" if rec.get("reason") else ""
        return (f"{head} user={rec.get('user')} session={rec.get('session')} "
                f"{rec.get('action')} -> {rec.get('effect')} [{rec.get('rule')}] "
                f"pii={cols or '-'}{extra} sql={rec.get('sql')!r}")
    keys = [k for k in ("user", "session", "request_id", "grant_id", "by", "status", "sqlstate",
                        "rows", "duration_ms", "caller", "method", "path", "reason", "scope")
            if rec.get(k) not in (None, "", [])]
    return head + " " + " ".join(f"{k}={rec[k]}" for k in keys)


# --------------------------------------------------------------------------------------
# report


@dataclass
class ReportRow:
    """Who touched which PII category, how often, under which grants and reasons."""
    user: str
    category: str
    statements: int = 0
    effects: Counter = field(default_factory=Counter)
    actions: Counter = field(default_factory=Counter)
    columns: set = field(default_factory=set)
    grants: set = field(default_factory=set)
    reasons: set = field(default_factory=set)
    rules: set = field(default_factory=set)
    sessions: set = field(default_factory=set)
    first: str = ""
    last: str = ""

    def as_dict(self) -> dict:
        return {"user": self.user, "category": self.category, "statements": self.statements,
                "effects": dict(self.effects), "actions": dict(self.actions),
                "columns": sorted(self.columns), "grants": sorted(self.grants),
                "reasons": sorted(self.reasons), "rules": sorted(self.rules),
                "sessions": len(self.sessions), "first": self.first, "last": self.last}


def report(records: Iterable[Mapping[str, Any]], since: datetime | None = None,
           until: datetime | None = None) -> list[ReportRow]:
    """One row per (user, PII category) from the statement decisions in
    ``[since, until)``. Denied statements are counted too (under their effect):
    an attempt is part of the answer."""
    flt = Filter(since=since, until=until, types=(STATEMENT_DECISION,))
    rows: dict[tuple[str, str], ReportRow] = {}
    for rec in records:
        if not flt.matches(rec):
            continue
        cats: dict[str, set[str]] = defaultdict(set)
        for c in rec.get("columns") or []:
            if isinstance(c, dict) and c.get("category"):
                cats[c["category"]].add(c["column"])
        for cat, cols in cats.items():
            key = (rec.get("user", ""), cat)
            row = rows.get(key)
            if row is None:
                row = rows[key] = ReportRow(*key, first=rec.get("ts", ""))
            row.statements += 1
            row.effects[rec.get("effect", "")] += 1
            row.actions[rec.get("action", "")] += 1
            row.columns |= cols
            if rec.get("grant_id"):
                row.grants.add(rec["grant_id"])
            if rec.get("reason"):
                row.reasons.add(rec["reason"])
            if rec.get("rule"):
                row.rules.add(rec["rule"])
            row.sessions.add(rec.get("session"))
            row.last = rec.get("ts", "")
    return sorted(rows.values(), key=lambda r: (r.user, r.category))


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    out = [fmt(cells[0]), "  ".join("-" * w for w in widths)]
    out.extend(fmt(r) for r in cells[1:])
    return "\n".join(out)


def format_report(rows: Sequence[ReportRow]) -> str:
    def counts(c: Counter) -> str:
        return ",".join(f"{k}:{v}" for k, v in sorted(c.items()))
    return format_table(
        ["user", "category", "stmts", "effects", "actions", "sessions", "grants", "reasons",
         "first", "last"],
        [[r.user, r.category, r.statements, counts(r.effects), counts(r.actions), len(r.sessions),
          ",".join(sorted(r.grants)) or "-", "; ".join(sorted(r.reasons)) or "-",
          r.first[:19], r.last[:19]] for r in rows])
