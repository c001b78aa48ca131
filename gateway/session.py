"""The statement gate: analyse, decide, audit, then forward, rewrite, refuse or hold.

For each Query/Parse the gate:

1. analyses the SQL (``gateway.analysis``; cached under a literal-insensitive key),
2. asks ``policies.decide`` for every statement (with the principal's live grants
   when approval is needed),
3. writes the audit decision record (before anything is forwarded),
4. returns a ``Verdict``: the original bytes (allow), a rewritten statement (mask),
   or a *refusal*.

A refusal is forwarded, not answered locally: the refused statement is replaced by
``SELECT pg_catalog.piigate_refused_<nonce>()``, which fails upstream exactly where
the real statement would have run, and that error is rewritten on its way back into
our ErrorResponse (42501 ...). Responses therefore stay in order in pipelines, and
the usual aborted-transaction semantics hold, because the upstream saw an error too.
"""
from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from catalog.model import Catalog
from policies.decide import decide
from policies.model import (
    Action, Decision, Effect, GrantView, Policy, Principal, RequestContext,
)

from .analysis.cache import simple_key
from .analysis.facts import StatementFacts, StatementKind
from .rewrite.definitions import QUALIFIED as DEFINITION_QUALIFIED
from .audit.records import TrustedEvent
from .protocol import codec
from .protocol.startup import catalog_not_first, split_identifier_list
from .schema import LiveSchema
from .server import Gate, Relay, Verdict, failing_verdict

log = logging.getLogger("piigate.session")



#: unrestricted users' statements longer than this are passed without analysis (it is
#: only for the audit record then, and a multi-megabyte INSERT would stall the session)
_UNRESTRICTED_ANALYSIS_LIMIT = 256 * 1024
#: statements that may change the schema: a cheap check on undecoded SQL for sessions
#: that are not analysed (the keywords are ASCII in every client encoding PostgreSQL
#: accepts). TRUNCATE, REFRESH MATERIALIZED VIEW, REINDEX and CLUSTER change data or
#: storage, never what a name means: no schema read, no hold
_DDL_START_BYTES = re.compile(rb"(?is)^(?:\s|--[^\n]*\n|/\*.*?\*/)*(?:create|alter|drop|comment|"
                              rb"grant|revoke|security|import)\b|"
                              rb".*;\s*(?:create|alter|drop|comment)\b")
#: CREATE TEMP TABLE/VIEW/SEQUENCE alone: other sessions never see temporary objects,
#: so it needs no schema read (nor a hold of the sessions under policy)
_TEMP_ONLY_BYTES = re.compile(rb"(?is)^(?:\s|--[^\n]*\n|/\*.*?\*/)*create\s+(?:or\s+replace\s+)?(?:global\s+|local\s+)?"
                              rb"(?:temp|temporary)\s+(?:table|view|sequence)\b[^;]*;?\s*$")
#: first keywords of statements that never change the schema
_NOT_DDL = (b"select", b"insert", b"update", b"delete", b"with", b"values", b"table ", b"begin", b"commit",
            b"end", b"rollback", b"abort", b"start", b"savepoint", b"release", b"set ", b"show", b"reset",
            b"fetch", b"move", b"close", b"declare", b"listen", b"notify", b"unlisten", b"lock", b"copy")
#: one statement (at most trailing semicolons after it) that starts with one of those
#: keywords: never DDL, let go without a second look (a semicolon anywhere else, even
#: in a literal, sends the text through _schema_ddl)
_NEVER_DDL = re.compile(rb"\s*(?i:" + b"|".join(re.escape(k) for k in _NOT_DDL) + rb")[^;\x00]*(?:;[\s;]*)?")
_CACHEABLE_KINDS = frozenset({StatementKind.SELECT, StatementKind.INSERT, StatementKind.UPDATE,
                              StatementKind.DELETE, StatementKind.MERGE})
_UNRESTRICTED = Decision(Effect.ALLOW, "unrestricted", ("principal is not under PII policy",),
                         action=Action.UNKNOWN)
#: how long statements under policy wait for the schema to be read after DDL
_SCHEMA_HOLD_S = 5.0
_REASON_COMMENT = re.compile(r"/\*\s*piigate:reason\s*=\s*(.*?)\s*\*/", re.S)
#: quoted text in error messages, with the quotes of translated messages too
#: (German „…“ and »…«, French « … », ‘…’, “…”, 「…」): the values a message echoes
_SCRUB_QUOTED = re.compile(r'"[^"]*"|\'[^\']*\'|„[^“”]*[“”]|“[^”]*”|‘[^’]*’|«[^»]*»|»[^«]*«|「[^」]*」|『[^』]*』')
#: client encodings (Python codecs) that can write the "…" of a scrubbed value
_ELLIPSIS_ENCODINGS = frozenset(c for c in set(codec.CLIENT_ENCODINGS.values())
                                if "…".encode(c, "replace") == "…".encode(c, "ignore"))
_SCRUB_DETAIL_FIELDS = ("D", "W", "q", "P", "p", "F", "L", "R")
_WITHHELD = "piigate: the text of a message raised inside database code is withheld for users under PII policy"
#: DECLARE ... WITH HOLD: the cursor outlives its transaction (read loosely: a false
#: match only keeps a cursor watched longer)
_WITH_HOLD = re.compile(r"(?is)\bwith\s+hold\b")


@dataclass
class SessionState:
    principal: Principal
    under_policy: bool
    search_path: tuple[str, ...]
    context: RequestContext
    #: the search_path the client gave at startup: what RESET and DEFAULT go back to
    startup_path: tuple[str, ...] | None = None
    reason: str | None = None
    grants: list = field(default_factory=list)          # Grant objects redeemed from tokens
    cursors: dict = field(default_factory=dict)         # SQL cursor name -> grant id or None
    #: names in ``cursors`` that end with their transaction (protocol portals, cursors
    #: without WITH HOLD): forgotten when the session is idle again
    transient: set = field(default_factory=set)
    prepared: dict = field(default_factory=dict)        # SQL-level PREPARE name -> grant id or None
    #: SQL-level PREPARE name -> (inner facts, decision, context decided in)
    prepared_meaning: dict = field(default_factory=dict)
    #: protocol-level prepared statements: name -> (facts, decision, first Bind still
    #: to come, context decided in); the context is what a statement's meaning depends
    #: on besides its text (PolicyGate._context)
    statements: dict = field(default_factory=dict)
    grant_expiry: dict = field(default_factory=dict)    # grant id -> expires_at (unix time)
    #: grants with a limited number of uses: a statement prepared (or a cursor declared)
    #: under one used it once; executing it again needs it prepared again
    counted_grants: set = field(default_factory=set)
    #: SQL-level prepared statements executed once already (for counted grants)
    executed: set = field(default_factory=set)
    #: grants used since the session was last idle (inside the open transaction)
    open_grants: set = field(default_factory=set)
    #: portals (protocol Bind, the unnamed one included) and cursors decided under a
    #: grant that may still be open: ("portal"|"cursor", name) -> (grant id, WITH HOLD).
    #: A protocol Execute reads a portal or cursor without the gateway seeing it, so
    #: when such a grant lapses while one is open the session is ended (_grant_ended)
    readers: dict = field(default_factory=dict)
    #: grant ids whose expiry this session watches (for ``readers``)
    lapse_watched: set = field(default_factory=set)
    totp_code: str | None = None                        # SET piigate.totp: self-service step-up
    statements_total: int = 0
    #: prepared decision records of this session: key -> (decision, RecordTemplate)
    templates: dict = field(default_factory=dict)
    #: protocol-level statement name -> (decision, reason, request, RecordTemplate)
    bind_templates: dict = field(default_factory=dict)
    #: a small integer standing for (principal, client address, application_name)
    #: in decision-cache keys (hashing the principal on every statement costs more)
    context_id: int = 0
    #: statements under policy seen before in this session, decided as ALLOW by a
    #: decision that depends on nothing but the statement's literal-free shape (see
    #: PolicyGate._memo_put): simple Query shape key / Parse text -> _MemoEntry
    memo_q: dict = field(default_factory=dict)
    memo_p: dict = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _MemoEntry:
    """A statement decided before in this session (PolicyGate._memo_run): valid while
    the session's search_path, reason and the engine's schema, catalog and policy
    are these very objects."""
    search_path: tuple
    schema: Any
    catalog: Any
    policy: Any
    reason: str | None
    facts: StatementFacts
    decision: Decision
    template: Any          # the decision record's RecordTemplate (None: no audit trail)
    context: tuple         # PolicyGate._context, for prepared statements


@dataclass(frozen=True)
class Refusal:
    sqlstate: str
    message: str
    hint: str | None = None
    detail: str | None = None


class Engine:
    """Everything a decision needs that changes at run time (schema, catalog, policy)
    plus the I/O services (audit, JIT). Swapped atomically on refresh."""

    def __init__(self, *, schema: LiveSchema, catalog: Catalog, policy: Policy, cache,
                 audit=None, jit=None, metrics=None, instance: str = "",
                 hold_timeout_s: float = 300.0, admin_url: str = "",
                 pseudonym_installed: bool = False, on_ddl: Callable[[], None] | None = None,
                 db_user: str = "", database: str = ""):
        self.schema = schema
        #: the database whose schema and catalog were read: the only one whose names
        #: the gateway can resolve ("" when not known: no check)
        self.database = database
        #: the role sessions run as upstream: what "$user" in a search_path names
        self.db_user = db_user
        self.catalog = catalog
        self.policy = policy
        self.cache = cache
        self.audit = audit
        self.jit = jit
        self.metrics = metrics
        self.instance = instance
        self.hold_timeout_s = hold_timeout_s
        self.admin_url = admin_url
        self.pseudonym_installed = pseudonym_installed
        self.on_ddl = on_ddl
        #: set from the end of a transaction with DDL in it until the schema has been
        #: read again: statements under policy wait for it, since a name in them may
        #: mean another relation now (ddl_committed, schema_read)
        self.schema_hold: asyncio.Future | None = None
        self.ddl_generation = 0
        self._hold_generation = 0
        #: sessions (relay keys) whose transaction forwarded DDL and has not ended
        self.ddl_sessions: set = set()
        #: statements under policy waiting for the schema hold: while there are none,
        #: the schema reader lets a burst of DDL finish before it reads
        self.hold_waiters = 0
        #: False while the schema has never been read (the database was unreachable at
        #: start): sessions under policy are refused until it is
        self.schema_ready = True
        self._unrestricted_cache: dict = {}
        self.decisions: dict = {}
        self._context_ids: dict = {}
        self.event_parts: dict = {}
        #: rules with a time window or weekdays make decisions depend on the clock
        self.policy_static = _policy_static(policy)

    def set_policy(self, policy: Policy) -> None:
        """A reloaded policy: every decision from now on is made under it (the
        decision caches and the session memos key on the policy)."""
        self.policy = policy
        self.policy_static = _policy_static(policy)
        self.decisions.clear()
        self._unrestricted_cache.clear()

    def context_id(self, context: tuple) -> int:
        """A stable small integer for a (principal, client address, application_name)."""
        ids = self._context_ids
        found = ids.get(context)
        if found is None:
            found = ids[context] = len(ids) + 1
        return found

    def ddl_started(self, session) -> None:
        """A session forwarded DDL. Until its transaction ends and the schema has been
        read again, statements under policy wait: one forwarded meanwhile could block
        on the DDL's lock and, once it commits, have its names resolved by PostgreSQL
        against the new objects, not the ones the gateway decided on."""
        if self.on_ddl is None:
            return
        self.ddl_sessions.add(session)
        self._hold()

    def ddl_committed(self, session=None) -> None:
        """That session's transaction ended (committed or not): read the schema again
        at once; the hold ends when it has been read (and no other DDL is in flight)."""
        if self.on_ddl is None:
            return
        self.ddl_sessions.discard(session)
        self.ddl_generation += 1
        self._hold()
        self._hold_generation = self.ddl_generation
        self.on_ddl()

    def schema_read(self, generation: int) -> None:
        """A schema read that started when ``ddl_generation`` was ``generation`` is
        over (read or failed): statements held for earlier DDL go on, unless more DDL
        is still in flight."""
        if generation >= self._hold_generation and not self.ddl_sessions:
            self.release_hold()

    def _hold(self) -> None:
        if self.schema_hold is None or self.schema_hold.done():
            self.schema_hold = asyncio.get_running_loop().create_future()

    def release_hold(self) -> None:
        hold, self.schema_hold = self.schema_hold, None
        if hold is not None and not hold.done():
            hold.set_result(None)

    def under_policy(self, principal: Principal) -> bool:
        key = (principal.name, principal.roles, self.policy.version)
        hit = self._unrestricted_cache.get(key)
        if hit is None:
            hit = not any(r.unrestricted and r.when is None and
                          ("*" in r.principals or principal.name in r.principals or
                           bool(r.roles & principal.roles) or "*" in r.roles)
                          for r in self.policy.rules)
            self._unrestricted_cache[key] = hit
        return hit


def _restores_reading(facts_list, sql: str) -> bool:
    """The one statement a session the gateway cannot read (an unsupported
    client_encoding, standard_conforming_strings off) may send: a SET that puts back
    a way of reading text the gateway follows, as the refusal's hint says. Only in
    plain ASCII without a backslash, which every client encoding and both string
    syntaxes read alike; the gateway's own rules for such a SET still apply after."""
    if len(facts_list) != 1 or not sql.isascii() or "\\" in sql:
        return False
    f = facts_list[0]
    if f.kind not in (StatementKind.SET, StatementKind.SESSION) or not f.setting or f.setting[1] is None:
        return False
    name, value = f.setting[0].lower(), f.setting[1]
    if name == "client_encoding":
        return codec.CLIENT_ENCODINGS.get(value.upper().replace("-", "_")) is not None
    if name == "standard_conforming_strings":
        return value.lower() in ("on", "true", "yes", "1")
    return False


def _policy_static(policy: Policy) -> bool:
    return not any(r.when is not None and (r.when.time_window is not None or r.when.weekdays)
                   for r in (*policy.rules, *policy.auto_approve))


class PolicyGate(Gate):
    def __init__(self, engine: Engine):
        self.engine = engine
        # every execution of a prepared statement is audited, its grant re-checked, and
        # its meaning re-checked when the search_path or the schema changed
        self.watches_binds = True
        self.plain_statement_skip = _NEVER_DDL

    # -- session lifecycle ------------------------------------------------------------------
    def session_started(self, relay: Relay) -> None:
        info = relay.info
        principal = Principal(info.user.name, info.user.roles)
        eng = self.engine
        startup_path = _parse_guc_search_path(info.search_path, eng.db_user)
        relay.state["s"] = SessionState(
            principal=principal, under_policy=eng.under_policy(principal),
            search_path=startup_path or _default_search_path(eng.schema, principal),
            startup_path=startup_path,
            context=RequestContext(client_addr=info.client_addr, application_name=info.application_name,
                                   database=info.database),
            context_id=eng.context_id((principal, info.client_addr, info.application_name)))
        self._audit_nowait(relay, {"type": "session.open", "session": info.session_id, "user": info.user.name,
                                   "roles": sorted(info.user.roles), "client_addr": info.client_addr,
                                   "application_name": info.application_name, "database": info.database,
                                   "tls": info.tls})

    def session_ended(self, relay: Relay) -> None:
        s: SessionState = relay.state.get("s")
        self._audit_nowait(relay, {"type": "session.close", "session": relay.info.session_id,
                                   "user": relay.info.user.name,
                                   "statements": s.statements_total if s else 0})

    def restricted(self, user) -> bool:
        return self.engine.under_policy(Principal(user.name, user.roles))

    def database_refusal(self, user, database: str):
        """Names resolve against the schema the gateway read from its upstream
        database; in any other database the same names can mean other relations
        (a "customers" with more columns than the one read), so a user under policy
        may not open a session there."""
        eng = self.engine
        if eng.database and database != eng.database and self.restricted(user):
            return (f"piigate: database \"{database}\" is not the one this gateway checks statements "
                    f"against (\"{eng.database}\"), so users under PII policy may not connect to it",
                    f"connect to \"{eng.database}\", or ask an administrator for a gateway for \"{database}\"")
        return None

    def plain(self, relay: Relay) -> bool:
        """An unrestricted principal with no audit trail configured: nothing to decide
        or record, so the relay forwards in bulk and only DDL is noticed."""
        s: SessionState = relay.state.get("s")
        return s is not None and not s.under_policy and self.engine.audit is None

    def on_plain_statement(self, relay: Relay, sql: bytes) -> bool:
        """Plain sessions: DDL by an unrestricted user still refreshes the live
        schema, for the sessions that are under policy. A single statement that
        starts with a keyword that is never DDL is let go at once (what an
        application sends all day); anything else goes through the pattern."""
        eng = self.engine
        if eng.on_ddl is None or _NEVER_DDL.fullmatch(sql) is not None:
            return True                   # the same text needs no second look
        if _schema_ddl(sql):
            self._ddl_forwarded(relay)
            return False                  # DDL: run again, it may change the schema again
        return True

    def scrubs_errors(self, relay: Relay) -> bool:
        s: SessionState = relay.state.get("s")
        return bool(s and s.under_policy)

    under_policy = scrubs_errors

    def on_upstream_error(self, relay: Relay, body: bytes) -> bytes | None:
        """Error and notice text can echo values (a failed cast shows the value):
        for sessions under PII policy only the SQLSTATE and a scrubbed message pass."""
        notice = body[:1] == b"N"
        if notice:
            body = body[1:]
        # in the session's encoding: read as UTF-8, a LATIN1 session's German
        # »value« (BB ... AB) was two replacement characters and the value between
        # them was not scrubbed
        encoding = getattr(relay, "encoding", "utf-8")
        err = codec.decode_error_fields(body, notice, encoding)
        fields = dict(err.fields)
        if "W" in fields:
            # raised inside a function, trigger or rule (RAISE NOTICE 'ssn %', NEW.ssn in
            # a DBA's trigger on an allowed UPDATE of city): the text is made from values
            # no analysis saw and need not quote them, so none of it passes
            fields["M"] = _WITHHELD
            fields.pop("H", None)
        for k in _SCRUB_DETAIL_FIELDS:
            fields.pop(k, None)
        mark = '"…"' if encoding in _ELLIPSIS_ENCODINGS else '"..."'
        if "M" in fields:
            fields["M"] = _SCRUB_QUOTED.sub(mark, fields["M"])
        if "H" in fields:
            fields["H"] = _SCRUB_QUOTED.sub(mark, fields["H"])
        return codec.encode_error_fields(fields, notice=notice, encoding=encoding)

    # -- statements -------------------------------------------------------------------------
    def on_query(self, relay: Relay, frame: bytes, sql: str):
        s: SessionState = relay.state["s"]
        if s.memo_q:
            key = simple_key(sql)
            if key is not None:
                entry = s.memo_q.get(key)
                if entry is not None:
                    verdict = self._memo_run(relay, s, frame, entry, False, "")
                    if verdict is not None:
                        return verdict
        return self._handle(relay, frame, sql, extended=False, name="")

    def on_parse(self, relay: Relay, frame: bytes, name: str, sql: str):
        relay.state["parse_name"] = name
        s: SessionState = relay.state["s"]
        entry = s.memo_p.get(sql) if s.memo_p else None
        if entry is not None:
            verdict = self._memo_run(relay, s, frame, entry, True, name)
            if verdict is not None:
                return verdict
        return self._handle(relay, frame, sql, extended=True, name=name)

    # -- the memo: a statement decided before, in the same context --------------------------
    def _memo_run(self, relay, s: SessionState, frame: bytes, entry: "_MemoEntry", extended: bool,
                  name: str) -> Verdict | None:
        """What ``_handle`` would do for a statement of the memo (one statement, of
        a literal-free shape, ALLOW by a decision that depends on nothing but the
        shape, the session's principal and context, the search_path, the schema,
        catalog and policy, no grant involved): its decision record written, its
        outcome tracked, the frame passed. None: the context is not the entry's (or
        something needs a look the memo cannot give): decide the ordinary way."""
        eng = self.engine
        state = relay.state
        if (entry.search_path is not s.search_path or entry.schema is not eng.schema
                or entry.catalog is not eng.catalog or entry.policy is not eng.policy
                or entry.reason != s.reason or s.grants or eng.schema_hold is not None
                or not eng.schema_ready or "path_check" in state or "last_request" in state
                or not relay.standard_strings or not relay.encoding_supported
                or (not extended and relay.inflight <= 1
                    and relay.errors_seen != state.get("errors_at_ready", 0))):
            return None
        audit = eng.audit
        if audit is not None and not audit.inline:
            return None
        t0 = time.perf_counter()
        s.statements_total += 1
        facts = entry.facts
        if audit is not None:
            try:
                seq = audit.append_template(entry.template, required=True)
            except Exception as e:
                refusal = self._audit_refusal(e, True)
                self._observe(((facts, entry.decision),), t0)
                return self._refuse_parse(relay, name, refusal) if extended else \
                    self._refuse_simple(relay, refusal, prefix=[])
        m = eng.metrics
        if m is not None:
            m.allowed(time.perf_counter() - t0)
        if audit is not None:
            _track_forwarded(relay, ((seq, facts.fingerprint),), t0)
        if extended and self.watches_binds:
            s.statements[name] = (facts, entry.decision, True, entry.context)
            if name:
                _created(relay, "statement", name, extended)
        return Verdict(frame)

    def _memo_put(self, relay, s: SessionState, sql: str, extended: bool, facts_list, plans,
                  reason, had_request: bool, verdict) -> None:
        """Remember a statement ``_handle`` just passed unchanged, when a repetition
        of it (a Parse of the same text, or a Query of the same literal-free shape)
        in the same context is sure to be decided, recorded and passed the same way."""
        eng = self.engine
        if (had_request or len(plans) != 1 or len(plans[0]) != 2 or type(verdict) is not Verdict
                or verdict.upstream[:1] != (b"P" if extended else b"Q") or verdict.client
                or verdict.rewrites or verdict.close or reason != s.reason or s.grants
                or not eng.policy_static):
            return
        facts, decision = plans[0]
        if (decision.effect is not Effect.ALLOW or decision.grant_id is not None
                or facts.kind not in _CACHEABLE_KINDS or facts.inner is not None or facts.dynamic
                or not facts.redacted_sql or facts_list[0] is not facts):
            return
        if extended:
            key, memo = sql, s.memo_p
        else:
            # the shape key is the analysis cache's: only shapes whose facts hold for
            # every text of that shape (not literal-dependent) are under it
            key, memo = simple_key(sql), s.memo_q
            if key is None or not eng.cache.shape_known(key, s.search_path, eng.schema.version, False):
                return
        template = None
        if eng.audit is not None:
            template = self._decision_template(relay, s, facts, decision, reason)
            if template._tail is None:
                return
        if len(memo) >= 512:
            memo.clear()
        memo[key] = _MemoEntry(s.search_path, eng.schema, eng.catalog, eng.policy, reason, facts, decision,
                               template, self._context(s))

    def on_bind(self, relay: Relay, frame: bytes, held: bool = False):
        """Each execution of a protocol-level prepared statement: the Parse was decided
        (and audited) once; later executions get their own record, and one made under
        a grant that has since expired or been used up is refused."""
        s: SessionState = relay.state["s"]
        if self.engine.schema_hold is not None and s.under_policy and not held and not relay.ddl_pending:
            return self._after_schema_read(relay, lambda: self.on_bind(relay, frame, held=True) or Verdict(frame))
        body = frame[5:]
        p = body.find(b"\x00")
        q = body.find(b"\x00", p + 1)
        name = body[p + 1:q].decode(relay.encoding, "replace")
        entry = s.statements.get(name)
        if entry is None:
            if not s.under_policy:
                return None
            meaning = s.prepared_meaning.get(name)
            if meaning is None:
                # not prepared through this session's gateway: nothing decided it
                return self._refuse_bind(relay, Refusal(
                    "26000", f"piigate: prepared statement {name!r} was not prepared through the gateway in "
                    "this session", "prepare it again"))
            # a SQL-level PREPARE bound at protocol level: checked as EXECUTE would be
            # (its first execution is the one a counted grant's use paid for)
            first = name not in s.executed
            s.executed.add(name)
            entry = (meaning[0], meaning[1], first and meaning[1].grant_id in s.counted_grants, meaning[2])
        facts, decision, first_pending, ctx = entry
        eng = self.engine
        if s.under_policy:
            if "path_check" in relay.state:
                return self._refuse_bind(relay, _PATH_PENDING)
            # (_same_context, written out: this runs for every execution)
            if not (ctx[0] is s.search_path and ctx[1] is eng.schema and ctx[2] is eng.catalog
                    and ctx[3] is eng.policy):
                refusal = self._recheck_prepared(relay, s, name, facts, decision)
                if refusal is not None:
                    return self._refuse_bind(relay, refusal)
        grant_id = decision.grant_id
        if p > 0:
            # a named portal is a cursor to SQL too (asyncpg's cursor.forward() sends
            # MOVE on it): FETCH/MOVE/CLOSE on it read what this statement was decided as
            portal = body[:p].decode(relay.encoding, "replace")
            s.cursors[portal] = grant_id
            s.transient.add(portal)
        if grant_id is not None:
            lapsed = self._grant_lapsed(s, grant_id)
            if lapsed is not None:
                return self._refuse_bind(relay, lapsed)
            self._reader_opened(relay, s, ("portal", body[:p].decode(relay.encoding, "replace")),
                                grant_id, False)
        elif s.readers:
            s.readers.pop(("portal", body[:p].decode(relay.encoding, "replace")), None)   # replaced
        if first_pending:
            if name in s.statements:
                s.statements[name] = (facts, decision, False, ctx)   # the Parse's own record covers it
                return None
        elif grant_id is not None and grant_id in s.counted_grants:
            return self._refuse_bind(relay, _used_up(grant_id))
        audit = eng.audit
        if audit is None:
            return None
        if not audit.inline:
            # fsync="always": the record must be on disk before the execution goes on
            return self._bind_audited(relay, s, frame, facts, decision)
        # the hot path of prepared statements: the record's template is kept per
        # statement name (it depends on the statement's facts and decision, the
        # stated reason and the access request, nothing else)
        reason = s.reason
        request = relay.state.get("last_request")
        cached = s.bind_templates.get(name)
        if cached is not None and cached[0] is decision and cached[1] == reason and cached[2] == request:
            template = cached[3]
        else:
            template = self._decision_template(relay, s, facts, decision, reason)
            if len(s.bind_templates) >= 1024:
                s.bind_templates.clear()
            s.bind_templates[name] = (decision, reason, request, template)
        try:
            seq = audit.append_template(template, required=s.under_policy)
        except Exception as e:
            refusal = self._audit_refusal(e, s.under_policy)
            if refusal is not None:
                return self._refuse_bind(relay, refusal)
            seq = None
        # forwarded: on_ready hands its outcome to the audit trail
        inflight = relay.state.get("inflight")
        if inflight is None:
            inflight = relay.state["inflight"] = []
        inflight.append((((seq, facts.fingerprint),), time.perf_counter()))
        relay.track = True
        return None

    async def _after_schema_read(self, relay, again):
        """Wait (a bounded time) for the schema read that committed DDL asked for,
        then decide the statement as if it had just arrived. A cancel from the client
        ends the wait: the statement is answered with 57014 and never runs."""
        eng = self.engine
        hold = eng.schema_hold
        if hold is not None:
            eng.hold_waiters += 1         # the schema reader reads at once (Runtime._ddl_settles)
            cancel = relay.state["cancel"] = asyncio.Event()
            try:
                if await _first_of(_bounded(hold, _SCHEMA_HOLD_S), cancel) == ("cancelled", None):
                    return relay.cancelled_verdict()
            except asyncio.TimeoutError:
                log.warning("the schema was not read again within %.1f s after DDL; deciding with the "
                            "one read before", _SCHEMA_HOLD_S)
                # release everyone: a read (or a commit) that does not come must not
                # cost every later statement another wait; DDL in flight now is taken
                # as done (a long migration stalls statements once, not throughout)
                eng.ddl_sessions.clear()
                eng.release_hold()
            finally:
                eng.hold_waiters -= 1
                relay.state.pop("cancel", None)
        verdict = again()
        if verdict is not None and not isinstance(verdict, Verdict):
            verdict = await verdict
        return verdict

    def on_ddl_committed(self, relay: Relay) -> None:
        self.engine.ddl_committed(relay.key)

    def _ddl_forwarded(self, relay: Relay) -> None:
        if not relay.ddl_pending:
            relay.ddl_pending = True      # the schema is read again when its transaction ends
            self.engine.ddl_started(relay.key)

    async def _bind_audited(self, relay, s: SessionState, frame: bytes, facts, decision) -> Verdict:
        refusal = await self._audit_decisions_async(relay, s, [(facts, decision)], s.reason)
        if refusal is not None:
            return self._refuse_bind(relay, refusal)
        self._inflight(relay, [(facts, decision)])
        return Verdict(frame)

    def _refuse_bind(self, relay, refusal: Refusal) -> Verdict:
        return failing_verdict(b"B", _error(refusal), relay.encoding)

    def on_function_call(self, relay: Relay, frame: bytes):
        s: SessionState = relay.state["s"]
        if not s.under_policy:
            return Verdict(frame)
        return self._refuse_simple(relay, Refusal(
            "42501", "piigate: the FunctionCall protocol message is not allowed for users under PII policy",
            "call the function with SELECT so the gateway can check it"))

    def _handle(self, relay: Relay, frame: bytes, sql: str, *, extended: bool, name: str, held: bool = False):
        eng = self.engine
        s: SessionState = relay.state["s"]
        if eng.schema_hold is not None and s.under_policy and not held and not relay.ddl_pending:
            return self._after_schema_read(
                relay, lambda: self._handle(relay, frame, sql, extended=extended, name=name, held=True))
        if "path_check" in relay.state and s.under_policy:
            refusal = _PATH_PENDING
            return self._refuse_parse(relay, name, refusal) if extended else self._refuse_simple(relay, refusal)
        if (not extended and s.under_policy and relay.inflight <= 1
                and relay.errors_seen != relay.state.get("errors_at_ready", 0)):
            # an error came after the last ReadyForQuery with nothing else outstanding:
            # an extended-protocol message failed and no Sync followed, so PostgreSQL
            # skips this Query unanswered; what the gateway decided for it (a new
            # search_path, a cursor) would not have happened
            return Verdict(b"", client=codec.encode_error(
                "08P01", "piigate: a simple Query was sent after a failed extended-protocol message and before "
                "its Sync; PostgreSQL skips it, so the gateway can no longer follow this session and has "
                "closed it", severity="FATAL", hint="send Sync after an extended-protocol error before a Query"),
                close=True)
        t0 = time.perf_counter()
        if not s.under_policy and eng.audit is None:
            # nothing to enforce and nothing to record: a plain relay (DDL still
            # triggers a schema refresh for the sessions that are under policy)
            if eng.on_ddl is not None and _schema_ddl(sql.encode(relay.encoding, "replace")):
                self._ddl_forwarded(relay)
            if extended:
                relay.state["parse_name"] = name
            return Verdict(frame)
        if not s.under_policy and len(sql) > _UNRESTRICTED_ANALYSIS_LIMIT:
            # a bulk load by an unrestricted user: passed as is, recorded without its text
            facts_list = (StatementFacts(StatementKind.UNKNOWN, sql, unknown="not analysed: statement of "
                                         f"{len(sql)} characters from an unrestricted user"),)
        else:
            facts_list = eng.cache.analyze(sql, eng.schema, s.search_path, extended=extended)
        s.statements_total += len(facts_list)
        if not s.under_policy:
            return self._unrestricted(relay, s, frame, facts_list, extended, name, t0)
        if not eng.schema_ready:
            if eng.on_ddl is not None:
                eng.on_ddl()              # the database answers now: read the schema at once
            refusal = Refusal("57P03", "piigate: the gateway has not read the database schema yet (the database "
                              "was unreachable when it started), so it cannot check statements under PII "
                              "policy", "try again in a few seconds; the gateway retries every second")
            return self._refuse_parse(relay, name, refusal) if extended else self._refuse_simple(relay, refusal)
        restores = (not relay.standard_strings or not relay.encoding_supported) and _restores_reading(facts_list, sql)
        if not relay.standard_strings and not restores:
            refusal = Refusal("22023", "piigate: standard_conforming_strings is off in this session; the gateway "
                              "reads string literals as PostgreSQL does with it on, so it cannot check statements "
                              "under PII policy", "SET standard_conforming_strings = on")
            return self._refuse_parse(relay, name, refusal) if extended else self._refuse_simple(relay, refusal)
        if not relay.encoding_supported and not restores:
            refusal = Refusal("22021", f"piigate: client_encoding {relay.client_encoding} is not supported for "
                              "users under PII policy (a multibyte encoding can hide quotes from analysis)",
                              "SET client_encoding = 'UTF8' (or a single-byte encoding such as LATIN1)")
            return self._refuse_parse(relay, name, refusal) if extended else self._refuse_simple(relay, refusal)
        copies = sum(1 for f in facts_list if f.kind is StatementKind.COPY_FROM)
        if copies:
            if extended:
                refusal = Refusal("0A000", "piigate: COPY ... FROM STDIN through the extended query protocol is not "
                                  "supported for users under PII policy (the server ignores the Sync sent with it, "
                                  "which the gateway cannot follow)",
                                  "send the COPY as a simple Query (psql's \\copy, psycopg's cursor.copy() and "
                                  "asyncpg's copy_to_table do)")
                return self._refuse_parse(relay, name, refusal)
            # the relay lets only CopyData/CopyDone/CopyFail through until this
            # Query's ReadyForQuery (it counted the Query already)
            relay.copy_until = relay.ready_count + relay.inflight
            relay.copies_pending = copies
        reason = _comment_reason(sql) or s.reason
        plans = []
        needs_async = eng.audit is not None and not eng.audit.inline
        multi = len(facts_list) > 1
        # the last statement of a simple Query is as final as one on its own: those
        # before it run (and were decided) before it, none after it can fail and roll
        # it back (asyncpg's pool ends its reset script with RESET ALL), unless one
        # before it opens a transaction block ("BEGIN; SET search_path = ...")
        last = facts_list[-1] if multi and not any(
            f.kind is StatementKind.TRANSACTION for f in facts_list) else None
        for facts in facts_list:
            intercepted = self._intercept_setting(s, facts)
            if intercepted is None:
                intercepted = self._session_statement(relay, s, facts, extended or (multi and facts is not last),
                                                      after_others=multi)
            if intercepted is not None:
                plans.append(intercepted)
                continue
            if facts.kind is StatementKind.SET and (facts.setting or ("", ""))[0] == "piigate.grant_token":
                plans.append((facts, Decision(Effect.APPROVE, "piigate-setting", action=Action.SESSION)))
                needs_async = True
                continue
            decision = self._cached_decision(relay, s, facts, sql, reason)
            if decision.effect is Effect.APPROVE:
                needs_async = True
            plans.append((facts, decision))
        if needs_async:
            return self._handle_async(relay, s, frame, sql, facts_list, plans, extended, name, reason, t0)
        had_request = "last_request" in relay.state
        verdict = self._finish(relay, s, frame, plans, extended, name, reason, t0)
        if verdict.upstream is frame:
            self._memo_put(relay, s, sql, extended, facts_list, plans, reason, had_request, verdict)
        return verdict

    def _unrestricted(self, relay, s: SessionState, frame, facts_list, extended, name, t0):
        # Unrestricted principals (DBAs, applications without PII policy) pass; their
        # statements are still analysed (for the record) and audited.
        plans = []
        for facts in facts_list:
            if facts.kind is StatementKind.SESSION and facts.setting and facts.setting[0] in ("search_path", "all"):
                s.search_path = (_parse_search_path(facts.setting[1], self.engine.db_user)
                                 or self.engine_default_path(s))
            elif facts.kind is StatementKind.DDL and not _leaves_names_alone(facts):
                self._ddl_forwarded(relay)
            plans.append((facts, _UNRESTRICTED))
        if self.engine.audit is not None and not self.engine.audit.inline:
            return self._audit_then(relay, s, plans, None, lambda: self._pass(relay, s, frame, plans, t0))
        refusal = self._audit_decisions(relay, s, plans, None, fail_closed=False)
        if refusal is not None:
            return self._refuse_parse(relay, name, refusal) if extended else self._refuse_simple(relay, refusal)
        return self._pass(relay, s, frame, plans, t0)

    def _pass(self, relay, s, frame, plans, t0) -> Verdict:
        self._observe(plans, t0)
        self._inflight(relay, plans)
        if frame[:1] == b"P" and plans and self.watches_binds:
            s.statements[relay.state.get("parse_name", "")] = (plans[0][0], plans[0][1], True, self._context(s))
        return Verdict(frame)

    async def _audit_then(self, relay, s, plans, reason, then):
        """A trail that fsyncs every record (fsync="always"): wait for it, then go on."""
        refusal = await self._audit_decisions_async(relay, s, plans, reason)
        if refusal is not None:
            return self._refuse_simple(relay, refusal)
        return then()

    def engine_default_path(self, s: SessionState) -> tuple[str, ...]:
        """What RESET ALL, DISCARD ALL and search_path = DEFAULT go back to: as in
        PostgreSQL, the session's start value (a startup setting wins over the role's
        and the server's)."""
        return s.startup_path or _default_search_path(self.engine.schema, s.principal)

    def _session_statement(self, relay, s: SessionState, facts: StatementFacts, batched: bool,
                           after_others: bool = False):
        """Session statements that poolers and drivers send, handled by the gateway so
        that what it analyses stays what PostgreSQL resolves:

        - ``SET search_path`` / ``RESET search_path``: allowed alone in a simple Query
          (or as its last statement) outside a transaction block, with nothing sent
          before it still running (where it cannot be rolled back behind our back);
          the gateway then analyses with the new path.
        - ``RESET ALL`` / ``DISCARD ALL``: the path goes back to the default (and DISCARD
          ALL forgets the session's cursors and prepared statements).
        - ``UNLISTEN``, ``CLOSE ALL``, ``DEALLOCATE ALL``: harmless.
        Everything else (SET ROLE, SESSION AUTHORIZATION, standard_conforming_strings,
        LISTEN ...) goes to the policy, which denies it by default."""
        kind = facts.kind
        if kind is StatementKind.LISTEN and facts.command.upper().startswith("UNLISTEN"):
            return (facts, Decision(Effect.ALLOW, "session:unlisten", action=Action.SESSION))
        if kind is not StatementKind.SESSION:
            return None
        command = facts.command.upper()
        name = (facts.setting or ("", None))[0]
        if command == "DISCARD ALL" or name == "all":
            if relay.tx_status != "I" or batched or relay.inflight > 1:
                return (facts, _deny("session:in-transaction", f"piigate: {command} is only allowed on its own, "
                                     "outside a transaction block, for users under PII policy",
                                     hint="send it as a statement of its own once the ones before it have "
                                          "completed"))
            s.search_path = self.engine_default_path(s)
            self._path_changed(relay, after_others)
            if command == "DISCARD ALL":
                for table in (s.cursors, s.prepared, s.prepared_meaning, s.statements, s.bind_templates,
                              s.readers):
                    table.clear()
            return (facts, Decision(Effect.ALLOW, "session:reset", action=Action.SESSION))
        if command.startswith("DISCARD"):
            return (facts, Decision(Effect.ALLOW, "session:discard", action=Action.SESSION))
        if name == "search_path":
            # relay.inflight > 1: statements sent before it are still running (a
            # pipelined BEGIN would make it roll back behind the gateway's back)
            if command.startswith("SET LOCAL") or relay.tx_status != "I" or batched or relay.inflight > 1:
                return (facts, _deny("session:search-path", "piigate: search_path may only be changed by a "
                                     "statement of its own outside a transaction block",
                                     hint="send SET search_path = ... as a separate statement once the ones "
                                          "before it have completed, not in BEGIN ... COMMIT, not with SET LOCAL"))
            value = facts.setting[1]
            if value == "FROM CURRENT":
                # PostgreSQL keeps the value it has (the gateway took it for DEFAULT and
                # resolved names with the start path while PostgreSQL kept s2, public)
                return (facts, Decision(Effect.ALLOW, "session:search-path",
                                        (f"search_path stays {s.search_path}",), action=Action.SESSION))
            new = _parse_search_path(value, self.engine.db_user)
            if new is None and value is not None and value.upper() != "DEFAULT":
                return (facts, _deny("session:search-path", "piigate: the gateway cannot read this search_path "
                                     "value, so it is not allowed for users under PII policy",
                                     hint="name the schemas, e.g. SET search_path = myschema, public"))
            if new is not None and catalog_not_first(list(new)):
                return (facts, _deny("session:search-path", "piigate: a search_path that puts pg_catalog after "
                                     "another schema is not allowed for users under PII policy (functions and "
                                     "operators there could shadow the built-in ones)",
                                     hint="leave pg_catalog out of search_path (PostgreSQL searches it first) "
                                          "or put it first"))
            s.search_path = new or self.engine_default_path(s)
            self._path_changed(relay, after_others)
            return (facts, Decision(Effect.ALLOW, "session:search-path", (f"search_path is now {s.search_path}",),
                                    action=Action.SESSION))
        if name in ("role", "session_authorization") and (facts.setting[1] or "default").lower() in ("none", "default"):
            # back to the login role: a session under policy cannot have left it
            return (facts, Decision(Effect.ALLOW, "session:login-role", action=Action.SESSION))
        if name == "standard_conforming_strings" and (facts.setting[1] or "").lower() in ("on", "true", "yes", "1"):
            return (facts, Decision(Effect.ALLOW, "session:standard-strings", action=Action.SESSION))
        if name in ("client_encoding", "standard_conforming_strings"):
            return self._reading_setting(relay, facts, command, name, facts.setting[1], batched)
        return None

    def _reading_setting(self, relay, facts: StatementFacts, command: str, name: str, value: str | None,
                         batched: bool):
        """A change of how the gateway reads the client's bytes (client_encoding,
        standard_conforming_strings). The gateway learns the new value only from the
        server's ParameterStatus, with the statement's ReadyForQuery, while PostgreSQL
        reads the very next message with it: a Query pipelined behind SET client_encoding
        = 'SJIS' was analysed as UTF-8, where the bytes C3 81 hide the backslash after
        them from PostgreSQL. So, as for search_path: a change only alone, outside a
        transaction block (whose end would undo it), and statements pipelined behind it
        are refused until its ReadyForQuery; a value the gateway cannot read in is
        refused whatever the policy says. A statement that keeps the value changes
        nothing."""
        current = _encoding_key(relay.client_encoding) if name == "client_encoding" else \
            ("on" if relay.standard_strings else "off")
        wanted = value
        if value is not None and value.upper() not in ("DEFAULT", "FROM CURRENT"):
            wanted = _encoding_key(value) if name == "client_encoding" else \
                ("on" if value.lower() in ("on", "true", "yes", "1") else "off")
        if wanted == current or (value or "").upper() == "FROM CURRENT":
            return (facts, Decision(Effect.ALLOW, "session:reading-unchanged", action=Action.SESSION))
        readable = wanted is None or wanted.upper() == "DEFAULT" or (
            wanted in _READABLE_ENCODINGS if name == "client_encoding" else wanted == "on")
        if not readable:
            why = ("a multibyte encoding can hide quotes and backslashes from analysis" if name == "client_encoding"
                   else "it reads string literals as PostgreSQL does with it on")
            return (facts, _deny("session:unreadable", f"piigate: {name} = {value} is not allowed for users "
                                 f"under PII policy: the gateway cannot read statements that way ({why})",
                                 hint="use client_encoding UTF8 (or a single-byte encoding such as LATIN1) and "
                                      "standard_conforming_strings on"))
        if command.startswith("SET LOCAL") or relay.tx_status != "I" or batched or relay.inflight > 1:
            return (facts, _deny("session:reading", f"piigate: {name} may only be changed by a statement of its "
                                 "own outside a transaction block",
                                 hint=f"send SET {name} = ... as a separate simple query once the ones before "
                                      "it have completed, not in BEGIN ... COMMIT, not with SET LOCAL"))
        # statements pipelined behind it are refused until its ReadyForQuery (which
        # comes after the server's ParameterStatus); an error changes nothing here
        relay.state.setdefault("path_check", None)
        if wanted == ("utf8" if name == "client_encoding" else "on"):
            return (facts, Decision(Effect.ALLOW, "session:" + name.replace("_", "-"), action=Action.SESSION))
        return None

    @staticmethod
    def _path_changed(relay, after_others: bool) -> None:
        """The search_path change is taken as done when decided. It runs only if
        nothing before it fails: as the last statement of a Query, every statement
        before it must succeed; alone, PostgreSQL still skips it unanswered when an
        extended-protocol message sent before it (without a Sync) failed. on_ready
        ends the session if the server reported an error before its ReadyForQuery
        (the gateway could no longer tell which search_path is in effect), and
        statements pipelined behind it are refused until then."""
        relay.state["path_check"] = relay.errors_seen

    def _cached_decision(self, relay, s: SessionState, facts: StatementFacts, sql: str, reason) -> Decision:
        """decide() is pure; for statements whose facts depend on nothing but their
        literal-free shape, the decision is kept per (shape, principal, versions)."""
        eng = self.engine
        cacheable = (facts.kind in _CACHEABLE_KINDS and facts.inner is None and not facts.dynamic
                     and not s.grants and eng.policy_static and facts.redacted_sql)
        if cacheable:
            key = (facts.redacted_sql, sql.count("$"), s.context_id, s.search_path,
                   eng.schema.version, eng.catalog.version, eng.policy.version)
            hit = eng.decisions.get(key)
            if hit is not None:
                return hit
        decision = self._decide(s, facts, reason, grants=s.grants)
        if facts.kind is StatementKind.EXPLAIN and decision.effect is Effect.MASK:
            # a plan shows the statement's literals, row counts and the masking itself:
            # nothing in it can be masked, so EXPLAIN of statements that read PII is refused
            decision = _deny("explain-pii", "piigate: EXPLAIN of a statement that reads catalogued PII is "
                             "not allowed for users under PII policy",
                             hint="EXPLAIN the statement without the PII columns, or ask an administrator")
        if cacheable and decision.effect is not Effect.APPROVE:
            if len(eng.decisions) >= 20000:
                eng.decisions.clear()
            eng.decisions[key] = decision
        return decision

    # -- deciding ----------------------------------------------------------------------------
    def _decide(self, s: SessionState, facts: StatementFacts, reason: str | None, grants=()) -> Decision:
        from .decisions import build_request
        eng = self.engine
        ctx = RequestContext(s.context.client_addr, s.context.application_name, s.context.database,
                             time.time(), reason)
        views = tuple(g.view() if hasattr(g, "view") else g for g in grants)
        req = build_request(facts, eng.catalog, s.principal, ctx, views, schema=eng.schema)
        decision = decide(req, eng.policy)
        # cursors and SQL-level prepared statements were decided when declared/prepared
        if facts.kind in (StatementKind.CURSOR, StatementKind.PREPARE) and facts.inner is None:
            decision = self._decide_reference(s, facts, decision)
        return decision

    def _decide_reference(self, s: SessionState, facts: StatementFacts, decision: Decision) -> Decision:
        """FETCH/MOVE/CLOSE/EXECUTE/DEALLOCATE name no table: they are safe when the
        cursor or statement was declared through this gateway (and so decided and, where
        needed, masked then)."""
        name = facts.cursor_name if facts.kind is StatementKind.CURSOR else facts.prepared_name
        table = s.cursors if facts.kind is StatementKind.CURSOR else s.prepared
        if name is None:
            if facts.command.upper().startswith(("CLOSE", "DEALLOCATE")):
                return Decision(Effect.ALLOW, "cursor-close", action=Action.READ)
            return decision
        if name not in table and facts.kind is StatementKind.PREPARE and name in s.statements \
                and facts.command.upper().startswith("DEALLOCATE"):
            # a protocol-level prepared statement (Parse) shares PREPARE's names
            return Decision(Effect.ALLOW, "deallocate", action=Action.READ)
        if name not in table:
            return Decision(Effect.DENY, "default:undeclared-reference",
                            (f"{name!r} was not declared through this gateway session",),
                            action=Action.UNKNOWN,
                            message=f"piigate: {name!r} is not a cursor or prepared statement declared in "
                                    "this session through the gateway")
        if not facts.command.upper().startswith(("CLOSE", "DEALLOCATE")):
            lapsed = self._grant_lapsed(s, table[name])
            if lapsed is not None:
                return Decision(Effect.DENY, "grant-lapsed", (lapsed.message,), action=Action.UNKNOWN,
                                message=lapsed.message)
            if facts.kind is StatementKind.PREPARE and table[name] in s.counted_grants:
                if name in s.executed:
                    used = _used_up(table[name])
                    return Decision(Effect.DENY, "grant-used", (used.message,), action=Action.UNKNOWN,
                                    message=used.message)
                s.executed.add(name)
        meaning = s.prepared_meaning.get(name) if facts.kind is StatementKind.PREPARE else None
        if meaning is not None and not self._same_context(s, meaning[2]):
            refusal = self._recheck_prepared(None, s, name, meaning[0], meaning[1])
            if refusal is not None:
                return Decision(Effect.DENY, "prepared-meaning-changed", (refusal.message,),
                                action=Action.UNKNOWN, message=refusal.message)
        return Decision(Effect.ALLOW, "declared-through-gateway",
                        (f"{name!r} was decided when it was declared",), action=Action.READ)

    @staticmethod
    def _forget_unmade(relay, created: dict) -> None:
        """The sync group that this ReadyForQuery ends created prepared statements and
        cursors (as the gateway decided them). If the server reported an error in it,
        some may not exist, or an older one of the same name still does (PostgreSQL
        refuses a duplicate name, and skips everything after an error until Sync): the
        gateway forgets them all, so they are refused rather than run as something the
        gateway did not decide (prepare them again)."""
        done = relay.ready_count
        errored = relay.errors_seen != relay.state.get("errors_at_ready", 0)
        s: SessionState = relay.state["s"]
        for gid in [g for g in created if g <= done]:
            entries = created.pop(gid)
            if errored and gid == done:
                for kind, name in entries:
                    tables = {"cursor": (s.cursors,),
                              "prepared": (s.prepared, s.prepared_meaning, s.bind_templates),
                              "statement": (s.statements, s.bind_templates)}[kind]
                    for table in tables:
                        table.pop(name, None)

    @staticmethod
    def _grant_lapsed(s: SessionState, grant_id) -> Refusal | None:
        """A prepared statement or cursor decided under a grant that has since expired
        or been revoked (revoked() sets its expiry to 0) is not used again."""
        if grant_id is None:
            return None
        expires = s.grant_expiry.get(grant_id)
        if expires is not None and time.time() >= expires:
            return Refusal("42501", f"piigate: grant {grant_id} has expired or been revoked; this prepared "
                           "statement or cursor was decided under it", "run the statement again to request access")
        return None

    def _context(self, s: SessionState) -> tuple:
        """What a prepared statement's meaning depends on besides its text. PostgreSQL
        re-analyses a prepared statement from its text when the search_path or an
        object it uses changed, so the names in it can come to mean other relations."""
        eng = self.engine
        return (s.search_path, eng.schema, eng.catalog, eng.policy)

    def _same_context(self, s: SessionState, ctx: tuple) -> bool:
        eng = self.engine
        return (ctx[0] is s.search_path and ctx[1] is eng.schema and ctx[2] is eng.catalog
                and ctx[3] is eng.policy)

    def _recheck_prepared(self, relay, s: SessionState, name: str, facts: StatementFacts,
                          decision: Decision) -> Refusal | None:
        """The search_path, schema, catalog or policy changed since the prepared
        statement ``name`` was decided: analyse and decide its text again, as
        PostgreSQL will re-analyse it. The same relations, columns and functions
        under the same decision: it may run (and is not checked again until the next
        change). Anything else: refused, since the text PostgreSQL holds cannot be
        rewritten now; preparing it again gets it decided afresh."""
        eng = self.engine
        try:
            now = eng.cache.analyze(facts.sql, eng.schema, s.search_path, extended=True)
            again = self._cached_decision(relay, s, now[0], facts.sql, s.reason) if len(now) == 1 else None
        except Exception as e:  # noqa: BLE001 - fail closed: the refusal says what to do
            log.warning("re-checking prepared statement %r failed: %s", name, e)
            again = None
        if (again is not None and _meaning(now[0]) == _meaning(facts)
                and (again.effect, again.rule, again.mask) == (decision.effect, decision.rule, decision.mask)):
            ctx = self._context(s)
            entry = s.statements.get(name)
            if entry is not None and entry[0] is facts:
                s.statements[name] = (*entry[:3], ctx)
            meaning = s.prepared_meaning.get(name)
            if meaning is not None and meaning[0] is facts:
                s.prepared_meaning[name] = (facts, decision, ctx)
            return None
        return Refusal("42501", f"piigate: prepared statement {name!r} would now read differently than when "
                       "it was checked (the search_path or the database schema changed since), so it may not "
                       "run as prepared", "prepare the statement again (DEALLOCATE it, or reconnect) so the "
                       "gateway can check it as it reads now")

    def _intercept_setting(self, s: SessionState, facts: StatementFacts):
        """``SET piigate.reason = '...'`` stays in the gateway; the upstream sees a
        placeholder value so the client still gets its ordinary SET response."""
        if facts.kind is not StatementKind.SET or not facts.setting:
            return None
        name, value = facts.setting
        if name == "piigate.reason":
            s.reason = (value or "").strip() or None
            return (facts, Decision(Effect.ALLOW, "piigate-setting", ("reason recorded by the gateway",),
                                    action=Action.SESSION), "SET piigate.reason = 'recorded'")
        if name == "piigate.totp":
            s.totp_code = (value or "").strip() or None
            return (facts, Decision(Effect.ALLOW, "piigate-setting", ("TOTP code kept for the next request",),
                                    action=Action.SESSION), "SET piigate.totp = 'recorded'")
        if name == "piigate.grant_token":
            return None                       # redeemed asynchronously (see _handle_async)
        if name.startswith("piigate."):
            return (facts, _deny("piigate-setting", f"piigate: unknown gateway setting {name}",
                                 hint="the gateway knows piigate.reason, piigate.totp and piigate.grant_token"))
        return None

    async def _handle_async(self, relay, s: SessionState, frame, sql, facts_list, plans, extended, name,
                            reason, t0) -> Verdict:
        eng = self.engine
        final = []
        for item in plans:
            if len(item) == 3:
                final.append(item)
                continue
            facts, decision = item
            if facts.kind is StatementKind.SET and facts.setting and facts.setting[0] == "piigate.grant_token":
                final.append(await self._redeem_token(relay, s, facts))
                continue
            if decision.effect is not Effect.APPROVE:
                final.append(item)
                continue
            decision = await self._obtain_grant(relay, s, facts, decision, reason)
            final.append((facts, decision))
        audited = False
        if eng.audit is not None and not eng.audit.inline:
            refusal = await self._audit_decisions_async(relay, s, final, reason)
            if refusal is not None:
                return self._refuse_parse(relay, name, refusal) if extended else self._refuse_simple(relay, refusal)
            audited = True
        return self._finish(relay, s, frame, final, extended, name, reason, t0, audited)

    async def _redeem_token(self, relay, s: SessionState, facts: StatementFacts):
        eng = self.engine
        token = (facts.setting[1] or "").strip()
        if eng.jit is None:
            return (facts, _deny("jit-unavailable", "piigate: one-time tokens need the approval service, "
                                 "which is not configured"))
        try:
            grant = await eng.jit.redeem_token(token, s.principal.name, now=time.time())
        except Exception as e:   # invalid, used, expired, wrong user, Redis down
            return (facts, _deny("grant-token", f"piigate: grant token refused: {e}"))
        s.grants.append(grant)
        if getattr(grant, "expires_at", None):
            s.grant_expiry[grant.id] = grant.expires_at
        return (facts, Decision(Effect.ALLOW, "piigate-setting", (f"grant token redeemed as {grant.id}",),
                                action=Action.SESSION, grant_id=grant.id), "SET piigate.grant_token = 'redeemed'")

    async def _obtain_grant(self, relay, s: SessionState, facts, decision: Decision, reason) -> Decision:
        """APPROVE: use a covering grant, or record a request, tell the client, and hold
        the statement until it is approved, denied, times out or is cancelled."""
        eng = self.engine
        if eng.jit is None:
            return _deny("jit-unavailable", "piigate: this statement needs approval, but the approval "
                         "service (Redis) is not configured on this gateway")
        from .decisions import build_request
        pii_cols = frozenset(decision.columns)
        categories = frozenset(c for c in (eng.catalog.get(col) for col in pii_cols) if c) 
        cats = frozenset(e.category for e in categories)
        colcats = {e.column: e.category for e in categories}
        action = decision.action
        try:
            # a statement grant covers the exact text under the search_path it was decided
            # under (not the fingerprint: it ignores constants, IN-list lengths and aliases)
            key = await eng.jit.statement_key(facts.sql, s.search_path) if facts.sql else ""
            grant = await eng.jit.find_covering_grant(s.principal.name, action, pii_cols, cats,
                                                      key, now=time.time(),
                                                      column_categories=colcats,
                                                      requirement=decision.approval)
            if grant is not None:
                return self._redecide_with(s, facts, reason, grant, decision)
            auto = decision.auto_approved_by
            req = await eng.jit.create_request(
                s.principal.name, action, requirement=decision.approval, roles=s.principal.roles,
                columns=pii_cols, categories=cats, fingerprint=facts.fingerprint,
                redacted_sql=facts.redacted_sql or "", statement_key=key, reason=reason,
                session_id=relay.info.session_id,
                auto_approved_by=auto, duration_s=decision.auto_approve_duration_s)
        except Exception as e:
            kind = type(e).__name__
            if kind == "ReasonRequired":
                return _deny("reason-required", f"piigate: {e}",
                              hint="give a reason first: SET piigate.reason = 'TICKET-123: why', or start "
                                   "the statement with /* piigate:reason=TICKET-123 why */")
            log.warning("approval service unavailable: %s", e)
            return _deny("jit-unavailable", "piigate: this statement needs approval, but the approval "
                         f"service is unavailable ({kind}); statements that need no approval keep working",
                         hint="try again in a moment; an administrator should check Redis")
        if req.state.value == "approved":
            grant = await self._grant_for(req)
            if grant is not None:
                return self._redecide_with(s, facts, reason, grant, decision)
        if s.totp_code and decision.approval is not None and decision.approval.self_service_totp:
            code, s.totp_code = s.totp_code, None          # a code is good for one request
            try:
                grant = await eng.jit.grant_with_totp(req.id, s.principal.name, code)
            except Exception as e:
                return _deny("totp-refused", f"piigate: TOTP confirmation of request {req.id} refused: {e}",
                             hint="SET piigate.totp = '<current code>' and run the statement again")
            return self._redecide_with(s, facts, reason, grant, decision)
        where = eng.admin_url.rstrip("/") + f"/#/requests/{req.id}" if eng.admin_url else "the approval console"
        cols = ", ".join(str(c) for c in sorted(pii_cols)) or "(see the request)"
        notice = codec.encode_notice(
            f"piigate: approval needed for {action.value} of {cols}: request {req.id} is waiting",
            detail=f"rule {decision.rule}; approvers: {', '.join(sorted(decision.approval.approver_groups)) if decision.approval else 'any'}",
            hint=f"an approver can run: piigate requests approve {req.id} --duration 15m  (or use {where}); "
                 f"this statement waits up to {eng.hold_timeout_s:g} s; press Ctrl-C to give up")
        relay.send_client(notice)
        if eng.metrics:
            eng.metrics.hold_started()
        relay.state["holding"] = req.id
        relay.state["last_request"] = req.id
        cancel = relay.state["cancel"] = asyncio.Event()
        try:
            outcome, value = await _first_of(eng.jit.wait_for_decision(req.id, eng.hold_timeout_s), cancel)
            if outcome == "cancelled":
                await _quietly(eng.jit.abandon(req.id))
        except asyncio.CancelledError:
            await _quietly(eng.jit.abandon(req.id))
            raise
        except Exception as e:
            return _deny("jit-unavailable", f"piigate: the approval service failed while waiting ({type(e).__name__}); "
                         f"request {req.id} stays pending", hint="retry the statement once it is approved")
        finally:
            relay.state.pop("holding", None)
            relay.state.pop("cancel", None)
            if eng.metrics:
                eng.metrics.hold_ended()
        if outcome == "approved":
            grant = await eng.jit.find_covering_grant(s.principal.name, action, pii_cols, cats,
                                                      key, now=time.time(),
                                                      column_categories=colcats,
                                                      requirement=decision.approval)
            if grant is not None:
                return self._redecide_with(s, facts, reason, grant, decision)
            return _deny("grant-not-usable", f"piigate: request {req.id} was approved but the grant no longer "
                         "covers this statement (used up, expired or revoked)")
        if outcome == "denied":
            return _deny("request-denied", f"piigate: request {req.id} was denied: {value}")
        if outcome == "cancelled":
            return Decision(Effect.DENY, "cancelled", sqlstate="57014", message="canceling statement due to user request")
        return _deny("hold-timeout", f"piigate: request {req.id} was not approved within {eng.hold_timeout_s:g} s",
                     hint=f"it stays pending: once approved, run the statement again and it goes straight through")

    async def _grant_for(self, req):
        eng = self.engine
        try:
            grants = await eng.jit.list_grants(req.principal)
        except Exception:
            return None
        for g in grants:
            if getattr(g, "request_id", None) == req.id:
                return g
        return None

    def _redecide_with(self, s, facts, reason, grant, first: Decision) -> Decision:
        """Decide again with ``grant``, which the JIT layer found to cover this statement
        (for a statement grant: its exact text under this search_path). decide() compares
        fingerprints only, so it gets a view of the grant for this statement alone."""
        if getattr(grant, "expires_at", None):
            s.grant_expiry[grant.id] = grant.expires_at
        if getattr(grant, "uses_left", None) is not None:
            s.counted_grants.add(grant.id)
        view = grant.view_for(facts.fingerprint) if hasattr(grant, "view_for") else grant
        decision = self._decide(s, facts, reason, grants=[view, *s.grants])
        if decision.effect is Effect.APPROVE:
            return _deny("grant-not-covering", f"piigate: grant {grant.id} does not cover this statement")
        if decision.grant_id is None and decision.effect in (Effect.ALLOW, Effect.MASK):
            decision = Decision(decision.effect, decision.rule, decision.reasons, decision.action, decision.mask,
                                decision.approval, decision.sqlstate, decision.message, grant.id,
                                decision.columns)
        return decision

    # -- building the verdict ------------------------------------------------------------------
    def _finish(self, relay, s: SessionState, frame, plans, extended, name, reason, t0,
                audited: bool = False) -> Verdict:
        eng = self.engine
        texts: list[str] = []
        changed = False
        refusal: Refusal | None = None
        for item in plans:
            facts, decision = item[0], item[1]
            if len(item) == 3:
                texts.append(item[2])
                changed = True
                continue
            if decision.effect is Effect.DENY:
                refusal = Refusal(decision.sqlstate or "42501", decision.message or
                                  f"piigate: statement refused by rule {decision.rule}",
                                  _hint_for(decision))
                break
            text = facts.sql
            if decision.effect is Effect.MASK and decision.mask is not None and decision.mask.columns:
                try:
                    from .rewrite import mask_statement
                    text = mask_statement(facts.sql, decision.mask, eng.schema, s.search_path,
                                          pseudonym_installed=eng.pseudonym_installed)
                    changed = True
                except Exception as e:
                    refusal = Refusal("42501", f"piigate: this statement reads catalogued PII and cannot be "
                                      f"masked safely ({e}); it was refused", "select the columns you need "
                                      "from the table directly, or request access")
                    plans = [(p[0], _deny("mask-failed", refusal.message)) if p is item else p for p in plans]
                    break
            if s.under_policy and not facts.functions.isdisjoint(DEFINITION_QUALIFIED):
                redacted, refusal = _redact_definitions(text, facts, eng, s.search_path)
                if refusal is not None:
                    plans = [(p[0], _deny("definition-redaction", refusal.message)) if p is item else p
                             for p in plans]
                    break
                if redacted != text:
                    text = redacted
                    changed = True
            texts.append(text)
            self._remember(relay, s, facts, decision, extended)
        if not audited:
            audit_refusal = self._audit_decisions(relay, s, plans, reason, fail_closed=True)
        relay.state.pop("last_request", None)
        if not audited:
            if audit_refusal is not None:
                refusal = audit_refusal
                texts = []
                changed = True
        self._observe(plans, t0)
        if refusal is None:
            self._inflight(relay, plans)
            if extended and plans and self.watches_binds:
                name = relay.state.get("parse_name", "")
                s.statements[name] = (plans[0][0], plans[0][1], True, self._context(s))
                if name:
                    _created(relay, "statement", name, extended)
        if refusal is not None:
            if extended:
                return self._refuse_parse(relay, name, refusal)
            return self._refuse_simple(relay, refusal, prefix=texts)
        if not changed:
            return Verdict(frame)
        if extended:
            return Verdict(_reencode_parse(frame, texts[0], relay.encoding))
        return Verdict(codec.encode_query(";\n".join(texts), relay.encoding))

    def revoked(self, relay: Relay, grant_id: str, end_sessions: bool) -> None:
        """A grant was revoked (on any instance): never use it again in this session,
        and with ``end_sessions`` end the session when a transaction or cursor opened
        under it is still open."""
        s: SessionState = relay.state.get("s")
        if s is None:
            return
        s.grant_expiry[grant_id] = 0.0
        s.grants = [g for g in s.grants if getattr(g, "id", None) != grant_id]
        if self._grant_ended(relay, grant_id):
            return
        if end_sessions and (grant_id in s.open_grants or grant_id in s.cursors.values()
                             or grant_id in s.prepared.values()):
            relay.fatal("42501", f"piigate: grant {grant_id} was revoked; this session had a transaction or "
                        "cursor open under it and has been ended", "reconnect; request access again if needed")

    def _reader_opened(self, relay, s: SessionState, key: tuple, grant_id: str, hold: bool) -> None:
        """A portal or cursor was opened under ``grant_id``: watch for the grant's end."""
        s.readers[key] = (grant_id, hold or s.readers.get(key, (None, False))[1])
        expires = s.grant_expiry.get(grant_id)
        if expires is None or grant_id in s.lapse_watched:
            return
        s.lapse_watched.add(grant_id)
        asyncio.get_running_loop().call_later(max(0.0, expires - time.time()) + 0.05,
                                              self._grant_ended, relay, grant_id)

    def _grant_ended(self, relay, grant_id: str) -> bool:
        """``grant_id`` expired or was revoked. A protocol Execute reads an open portal
        or cursor without a message the gateway checks, so when one decided under it
        may still be open, the session ends (True)."""
        s: SessionState = relay.state.get("s")
        if s is None or relay.closed:
            return False
        expires = s.grant_expiry.get(grant_id)
        if expires is not None and time.time() < expires:
            # prolonged meanwhile (a later grant of the same id cannot be): look again then
            asyncio.get_running_loop().call_later(expires - time.time() + 0.05, self._grant_ended,
                                                  relay, grant_id)
            return False
        s.lapse_watched.discard(grant_id)
        if not any(v[0] == grant_id for v in s.readers.values()):
            return False
        relay.fatal("42501", f"piigate: grant {grant_id} has expired or been revoked while a cursor or portal "
                    "opened under it was still open; the session has been ended so that nothing more is read "
                    "from it", "reconnect; request access again if needed")
        return True

    def _remember(self, relay, s: SessionState, facts: StatementFacts, decision: Decision,
                  extended: bool = False) -> None:
        if decision.grant_id is not None:
            s.open_grants.add(decision.grant_id)
        if facts.kind is StatementKind.DDL and not _leaves_names_alone(facts):
            self._ddl_forwarded(relay)    # re-read the schema once its transaction ends
        if facts.kind is StatementKind.CURSOR and facts.inner is not None and facts.cursor_name:
            s.cursors[facts.cursor_name] = decision.grant_id
            _created(relay, "cursor", facts.cursor_name, extended)
            hold = _WITH_HOLD.search(facts.sql) is not None
            if hold:
                s.transient.discard(facts.cursor_name)
            else:
                s.transient.add(facts.cursor_name)
            if decision.grant_id is not None:
                self._reader_opened(relay, s, ("cursor", facts.cursor_name), decision.grant_id, hold)
        elif facts.kind is StatementKind.CURSOR and facts.command.upper().startswith("CLOSE"):
            # (a name the gateway still knew after PostgreSQL closed it would vouch for
            # whatever is opened under it next without the gateway seeing it)
            if facts.cursor_name is None:           # CLOSE ALL: every portal
                s.readers.clear()
                s.cursors.clear()
            else:
                s.readers.pop(("cursor", facts.cursor_name), None)
                s.readers.pop(("portal", facts.cursor_name), None)
                s.cursors.pop(facts.cursor_name, None)
        elif facts.kind is StatementKind.PREPARE and facts.inner is not None and facts.prepared_name:
            s.prepared[facts.prepared_name] = decision.grant_id
            s.prepared_meaning[facts.prepared_name] = (facts.inner, decision, self._context(s))
            # protocol-level and SQL-level prepared statements share their names: a
            # protocol one of this name is gone, or this PREPARE fails
            s.statements.pop(facts.prepared_name, None)
            s.bind_templates.pop(facts.prepared_name, None)
            _created(relay, "prepared", facts.prepared_name, extended)
        elif facts.kind is StatementKind.PREPARE and facts.command.upper().startswith("DEALLOCATE"):
            if facts.prepared_name is None:         # DEALLOCATE ALL: protocol-level ones too
                for table in (s.prepared, s.prepared_meaning, s.statements, s.bind_templates):
                    table.clear()
            else:
                for table in (s.prepared, s.prepared_meaning, s.statements, s.bind_templates):
                    table.pop(facts.prepared_name, None)

    def on_close(self, relay: Relay, body: bytes) -> None:
        """A protocol Close: PostgreSQL forgets the prepared statement (protocol- or
        SQL-level: they share names) or portal (a cursor to SQL), so the gateway does
        too. Kept, a closed statement's entry decided a Bind of whatever PREPARE made
        under its name next: Close S s1, PREPARE s1 AS SELECT v FROM t, a search_path
        change that makes t the view over customers.ssn, and Bind s1 was re-checked as
        the closed statement's text and returned the SSN in clear. (A Close PostgreSQL
        skips after an error only makes the gateway refuse the name: fail closed.)"""
        s: SessionState = relay.state.get("s")
        end = body.find(b"\x00", 1)
        if s is None or end < 0:
            return                                  # malformed: PostgreSQL refuses it
        name = body[1:end].decode(relay.encoding, "replace")
        if body[:1] == b"S":
            for table in (s.statements, s.bind_templates, s.prepared, s.prepared_meaning):
                table.pop(name, None)
        elif body[:1] == b"P":
            s.cursors.pop(name, None)

    def _refuse_simple(self, relay, refusal: Refusal, prefix: list[str] | None = None) -> Verdict:
        return failing_verdict(b"Q", _error(refusal), relay.encoding, before=tuple(prefix or ()))

    def _refuse_parse(self, relay, name: str, refusal: Refusal) -> Verdict:
        return failing_verdict(b"P", _error(refusal), relay.encoding, name=name)

    # -- audit and metrics --------------------------------------------------------------------
    def _audit_decisions(self, relay, s: SessionState, plans, reason, *, fail_closed: bool) -> Refusal | None:
        """Write the decision records *now* (before anything is forwarded)."""
        audit = self.engine.audit
        if audit is None:
            return None
        required = fail_closed or s.under_policy
        # (decision seq, fingerprint) per statement: for the completion records (_inflight)
        tracked = relay.state["decision_seqs"] = []
        try:
            for item in plans:
                facts = item[0]
                tracked.append((audit.append_template(self._decision_template(relay, s, facts, item[1], reason),
                                                      required=required), facts.fingerprint))
        except Exception as e:
            return self._audit_refusal(e, required)
        return None

    def _decision_template(self, relay, s: SessionState, facts: StatementFacts, decision: Decision, reason):
        """The decision record, prepared once per statement shape and decision in this
        session (the same shape under the same decision, search_path and schema
        gives the same record but for the chain's own fields)."""
        eng = self.engine
        request = relay.state.get("last_request")
        key = None
        if facts.redacted_sql:
            key = (facts.redacted_sql, facts.fingerprint, facts.kind, facts.param_count, facts.unknown,
                   s.search_path, eng.schema.version, reason, request, id(decision))
            hit = s.templates.get(key)
            # the entry holds the decision, so its id cannot have been reused
            if hit is not None and hit[0] is decision:
                return hit[1]
        template = eng.audit.template(self._decision_event(relay, s, facts, decision, reason))
        if key is not None:
            if len(s.templates) >= 512:
                s.templates.clear()
            s.templates[key] = (decision, template)
        return template

    async def _audit_decisions_async(self, relay, s: SessionState, plans, reason) -> Refusal | None:
        audit = self.engine.audit
        tracked = relay.state["decision_seqs"] = []
        try:
            for item in plans:
                rec = await audit.record(self._decision_event(relay, s, item[0], item[1], reason),
                                         required=s.under_policy)
                tracked.append((rec.get("seq") if rec else None, item[0].fingerprint))
        except Exception as e:
            return self._audit_refusal(e, s.under_policy)
        return None

    def _audit_refusal(self, e: Exception, required: bool) -> Refusal | None:
        log.error("audit trail unavailable: %s", e, exc_info=True)
        if not required:
            return None
        return Refusal("58030", "piigate: the audit trail cannot be written, so this statement was not run",
                       "an administrator must check the audit sinks (see the admin API's /health); "
                       "statements resume by themselves once the trail recovers")

    def _audit_nowait(self, relay, event: dict) -> None:
        audit = self.engine.audit
        if audit is None:
            return
        try:
            if audit.inline:
                audit.append(event, required=False)
            else:
                audit.emit(event)
        except Exception as e:
            log.error("audit trail unavailable: %s", e)

    def _decision_event(self, relay, s: SessionState, facts: StatementFacts, decision: Decision, reason) -> dict:
        """The decision record, already in the audit trail's canonical shape (the
        trail still sanitises it: ``sql`` is PostgreSQL's normalized text, literals
        replaced by $n; parameters are only counted)."""
        info = relay.info
        static = self._event_static(facts, decision)
        event = TrustedEvent({
            "type": "statement.decision", "session": info.session_id, "user": info.user.name,
            "roles": sorted(info.user.roles), "client_addr": info.client_addr,
            "application_name": info.application_name, "database": info.database,
            "fingerprint": facts.fingerprint, "sql": facts.redacted_sql or "<unparsed statement>",
            "kind": facts.kind.value, "action": decision.action.value,
            "relations": static[0], "columns": static[1], "effect": decision.effect.value,
            "rule": decision.rule, "masked_columns": static[2],
            "grant_id": decision.grant_id, "request_id": relay.state.get("last_request"),
            "param_count": facts.param_count,
        })
        if decision.effect is not Effect.ALLOW:
            event["reasons"] = list(decision.reasons[:3])
        if reason:
            event["reason"] = reason
        if facts.unknown:
            event["unknown"] = facts.unknown
        return event

    def _event_static(self, facts: StatementFacts, decision: Decision):
        """relations, columns (with categories) and masked columns of a record: the same
        for every statement of one shape, so computed once per shape and decision."""
        eng = self.engine
        key = (facts.redacted_sql, facts.kind, facts.fingerprint, decision.effect, decision.rule,
               facts.relations_read, facts.relations_written, facts.columns,
               tuple(decision.mask.columns) if decision.mask else None,
               eng.catalog.version, eng.policy.version)
        hit = eng.event_parts.get(key) if facts.redacted_sql else None
        if hit is not None:
            return hit
        cols = []
        for u in facts.columns:
            entry = eng.catalog.get(u.column)
            cols.append({"column": str(u.column), "category": entry.category if entry else None,
                         "usages": sorted(x.value for x in u.usages)})
        parts = (sorted(str(r) for r in facts.relations_read | facts.relations_written), cols,
                 sorted(str(c) for c in decision.mask.columns) if decision.mask else [])
        if facts.redacted_sql:
            if len(eng.event_parts) >= 20000:
                eng.event_parts.clear()
            eng.event_parts[key] = parts
        return parts

    def _inflight(self, relay, plans) -> None:
        """Remember what was forwarded; on_ready writes its completion record."""
        if self.engine.audit is None:
            return
        tracked = relay.state.pop("decision_seqs", None)
        if tracked is None or len(tracked) != len(plans):
            # a record that was not written (not required) has no seq
            seqs = [t[0] for t in tracked or ()]
            tracked = [(seqs[i] if i < len(seqs) else None, p[0].fingerprint) for i, p in enumerate(plans)]
        _track_forwarded(relay, tracked, time.perf_counter())

    def on_ready(self, relay: Relay, status: str) -> None:
        created = relay.state.get("created")
        if created:
            self._forget_unmade(relay, created)
        relay.state["errors_at_ready"] = relay.errors_seen
        if "path_check" in relay.state and relay.state.pop("path_check") not in (None, relay.errors_seen):
            # after the server's own error and ReadyForQuery have reached the client,
            # before anything else the client sends is read
            asyncio.get_running_loop().call_soon(
                relay.fatal, "42501", "piigate: a statement before the search_path change failed, so the change "
                        "may not have happened; the gateway can no longer tell how names resolve in this "
                        "session and has closed it", "reconnect; change search_path in a query of its own, "
                        "after a Sync")
            return
        s: SessionState = relay.state.get("s")
        if s is not None and status == "I" and s.open_grants:
            s.open_grants.clear()
        if s is not None and status == "I" and s.readers:
            # portals and cursors without WITH HOLD end with their transaction
            for key in [k for k, v in s.readers.items() if not v[1]]:
                del s.readers[key]
        if s is not None and status == "I" and s.transient:
            # so do their names (kept, a client binding portals of new names in a
            # loop grew the gateway's memory without end, and a stale name vouched
            # for a cursor opened under it later without the gateway seeing it)
            for name in s.transient:
                s.cursors.pop(name, None)
            s.transient.clear()
        inflight = relay.state.get("inflight")
        if not inflight:
            if relay.track:
                relay.take_outcome()      # a refused statement's outcome belongs to no later one
            return
        error, rows, nbytes = relay.take_outcome()
        try:
            self.engine.audit.completed_many(relay.info.session_id, inflight, time.perf_counter(),
                                             error or "ok", rows, nbytes, status)
        except Exception as e:
            log.error("audit: completion records lost: %s", e)
        inflight.clear()

    def _observe(self, plans, t0: float) -> None:
        m = self.engine.metrics
        if m is None:
            return
        for item in plans:
            m.decision(item[1].effect.value)
        m.observe_statement(time.perf_counter() - t0)


#: a statement pipelined behind a Query whose last statement changes search_path: that
#: change happens only if the statements before it succeed, so until its ReadyForQuery
#: the gateway cannot know how names in this statement resolve
_PATH_PENDING = Refusal("42501", "piigate: this statement was sent before the query that changes search_path "
                        "(or client_encoding) had completed, so the gateway cannot tell how its names resolve",
                        "send it once that query's result has arrived")


def _encoding_key(name: str) -> str:
    """An encoding name as PostgreSQL matches it (clean_encoding_name: letters and
    digits, lower case), with UTF8's alias."""
    key = re.sub(r"[^0-9a-z]", "", name.lower())
    return "utf8" if key == "unicode" else key


#: client encodings the gateway reads statements in (codec.CLIENT_ENCODINGS), as keys
_READABLE_ENCODINGS = frozenset(_encoding_key(n) for n in codec.CLIENT_ENCODINGS)


def _track_forwarded(relay, tracked, started: float) -> None:
    """A forwarded statement's decision records ((seq, fingerprint) each) and start:
    on_ready writes their completion record; the relay records outcomes from now."""
    inflight = relay.state.get("inflight")
    if inflight is None:
        inflight = relay.state["inflight"] = []
    inflight.append((tracked, started))
    relay.track = True


def _created(relay, kind: str, name: str, extended: bool) -> None:
    """Note a prepared statement or cursor made by what is being forwarded, under the
    ReadyForQuery that will end its sync group (a Query is its own; a Parse's is the
    next Sync's), for PolicyGate._forget_unmade."""
    group = relay.ready_count + relay.inflight + (1 if extended else 0)
    created = relay.state.get("created")
    if created is None:
        created = relay.state["created"] = {}
    created.setdefault(group, []).append((kind, name))


def _used_up(grant_id: str) -> Refusal:
    return Refusal("42501", f"piigate: grant {grant_id} allows a limited number of uses, and this prepared "
                   "statement has had its use", "prepare the statement again (that uses the grant once more)")


#: definition functions PostgreSQL may call inside a view the statement reads (where
#: no wrapper can reach): passed only where the statement itself calls them
_DEFINITIONS_IN_TEXT_ONLY = frozenset({"pg_catalog.pg_get_viewdef", "pg_catalog.pg_get_triggerdef",
                                       "pg_catalog.pg_get_ruledef"})


def _redact_definitions(text: str, facts: StatementFacts, eng, search_path) -> tuple[str, Refusal | None]:
    """The statement with the literals of the object definitions it reads redacted
    (gateway.rewrite.definitions): each call in its text wrapped, each system view
    that calls one inside (information_schema.columns, pg_views, ...) wrapped in a
    subquery that redacts those columns. A refusal when that cannot be done with
    certainty, or when a view, trigger or rule definition is read where no wrapper
    reaches (inside a view of a DBA's)."""
    from .rewrite import RewriteError, rewrite
    from .rewrite.definitions import DEFINITION_VIEWS, DefinitionError, redact_definitions
    from catalog.model import ColumnRef
    from policies.model import MaskPlan, MaskStrategy
    hint = ("call pg_get_viewdef() and the like in your own SELECT (e.g. SELECT pg_get_viewdef('v'::regclass)), "
            "where their literals come back redacted")
    try:
        out = redact_definitions(text)
    except DefinitionError as e:
        return text, Refusal("42501", f"piigate: this statement reads database object definitions and the gateway "
                             f"cannot redact the literals in them ({e}); it was refused", hint)
    sql, explained = out.sql, set(out.functions)
    views = [r for r in facts.relations_read if r in DEFINITION_VIEWS]
    if views:
        strategy = MaskStrategy("definition")
        plan = MaskPlan({ColumnRef(v.schema, v.name, c): strategy for v in views for c in DEFINITION_VIEWS[v][0]})
        try:
            result = rewrite(sql, plan, eng.schema, search_path, pseudonym_installed=eng.pseudonym_installed)
        except RewriteError as e:
            return text, Refusal("42501", f"piigate: this statement reads database object definitions through "
                                 f"a system view and the gateway cannot redact the literals in them ({e}); "
                                 "it was refused", hint)
        sql = result.sql
        explained |= {f"pg_catalog.{f}" for v in result.wrapped if v in DEFINITION_VIEWS
                      for f in DEFINITION_VIEWS[v][1]}
    unreached = (facts.functions & _DEFINITIONS_IN_TEXT_ONLY) - explained
    if unreached:
        return text, Refusal("42501", "piigate: this statement reads database object definitions through a view ("
                             + ", ".join(sorted(unreached)) + "), where the gateway cannot redact the literals a "
                             "DBA wrote into them; it was refused", hint)
    return sql, None


def _error(refusal: Refusal) -> bytes:
    return codec.encode_error(refusal.sqlstate, refusal.message, hint=refusal.hint, detail=refusal.detail)


def _deny(rule: str, message: str, hint: str | None = None) -> Decision:
    return Decision(Effect.DENY, rule, (message,) + ((hint,) if hint else ()),
                    action=Action.UNKNOWN, message=message)


def _hint_for(decision: Decision) -> str | None:
    if len(decision.reasons) > 1 and decision.rule in ("reason-required", "jit-unavailable", "hold-timeout"):
        return decision.reasons[-1]
    if decision.effect is Effect.DENY and decision.rule.startswith("default:"):
        return ("if you need this, ask an administrator for a policy rule or request access "
                "through the approval console")
    return None


def _decision_event(info, s: SessionState, facts: StatementFacts, decision: Decision, reason) -> dict:
    cols = []
    for u in facts.columns:
        cols.append({"column": str(u.column), "how": sorted(x.value for x in u.usages)})
    masked = sorted(str(c) for c in decision.mask.columns) if decision.mask else []
    return {
        "type": "statement.decision", "session": info.session_id, "user": info.user.name,
        "roles": sorted(info.user.roles), "client_addr": info.client_addr,
        "application_name": info.application_name, "database": info.database,
        "fingerprint": facts.fingerprint, "sql": facts.redacted_sql or "<unparsed statement>",
        "kind": facts.kind.value, "action": decision.action.value,
        "relations": sorted(str(r) for r in facts.relations_read | facts.relations_written),
        "columns": cols, "effect": decision.effect.value, "rule": decision.rule,
        "reasons": list(decision.reasons[:3]), "masked": masked, "grant_id": decision.grant_id,
        "reason": reason, "unknown": facts.unknown,
    }


def _comment_reason(sql: str) -> str | None:
    if "piigate:reason" not in sql:
        return None
    m = _REASON_COMMENT.search(sql)
    return m.group(1).strip() if m else None


def _schema_ddl(sql: bytes) -> bool:
    """Unanalysed SQL that may change what names mean to other sessions."""
    return _DDL_START_BYTES.match(sql) is not None and _TEMP_ONLY_BYTES.match(sql) is None


_DATA_ONLY_DDL = ("TRUNCATE", "REFRESH MATERIALIZED VIEW", "REINDEX", "CLUSTER")


def _leaves_names_alone(facts: StatementFacts) -> bool:
    """DDL that cannot change what a name means to another session: it only creates a
    temporary object, or only changes data or storage."""
    return ((facts.creates is not None and facts.creates.schema == "pg_temp")
            or facts.command.upper().startswith(_DATA_ONLY_DDL))


def _meaning(facts: StatementFacts) -> tuple:
    """What a statement touches, for comparing two analyses of one text (facts from
    the analysis cache may be of a twin class, so not compared with ==)."""
    return (facts.kind, facts.relations_read, facts.relations_written, facts.columns, facts.functions,
            facts.unknown, facts.dynamic)


def _default_search_path(schema: LiveSchema, principal: Principal) -> tuple[str, ...]:
    return tuple(p for p in schema.search_path if p != "$user") or ("public",)


def _parse_guc_search_path(value: str | None, db_user: str) -> tuple[str, ...] | None:
    """A search_path as PostgreSQL writes the list (a startup parameter, or a SET as the
    analyser reports it, quoted where needed: SET search_path = 'a,b' names the one
    schema "a,b"). "$user" is the role the session runs as upstream: PostgreSQL
    searches a schema of that name first when there is one, so dropping it would let
    such a schema shadow what the gateway resolves."""
    names = split_identifier_list(value) if value else None
    return _user_path(names, db_user) if names else None


def _parse_search_path(value: str | None, db_user: str) -> tuple[str, ...] | None:
    """The value of a SET search_path; None for DEFAULT (the session's start value)."""
    if not value or value.upper() == "DEFAULT":
        return None
    return _parse_guc_search_path(value, db_user)


def _user_path(names: list[str], db_user: str) -> tuple[str, ...] | None:
    return tuple(db_user if p == "$user" else p for p in names if p and (p != "$user" or db_user)) or None


def _reencode_parse(frame: bytes, sql: str, encoding: str) -> bytes:
    msg = codec.decode_frontend(b"P", frame[5:], encoding)
    return codec.encode_parse(msg.name, sql, msg.param_types, encoding)


async def _bounded(future: asyncio.Future, seconds: float):
    """Wait for ``future`` (not cancelling it: others wait for it too) at most ``seconds``."""
    await asyncio.wait_for(asyncio.shield(future), seconds)


async def _first_of(waiting: Awaitable, cancel: asyncio.Event):
    """The approval outcome, or ("cancelled", None) when the client cancels first."""
    wait_task = asyncio.ensure_future(waiting)
    cancel_task = asyncio.ensure_future(cancel.wait())
    try:
        done, _ = await asyncio.wait({wait_task, cancel_task}, return_when=asyncio.FIRST_COMPLETED)
        if wait_task in done:
            return wait_task.result()
        return ("cancelled", None)
    finally:
        for t in (wait_task, cancel_task):
            if not t.done():
                t.cancel()


async def _quietly(aw: Awaitable) -> None:
    try:
        await aw
    except Exception:
        pass
