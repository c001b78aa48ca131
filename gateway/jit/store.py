"""Access requests and grants in Redis, and ``JitService``: what the session and the
admin API call.

Redis layout (``P`` is the configured prefix, e.g. ``piigate:``)::

    P req:<id>              string  AccessRequest JSON (kept request_ttl_s + 7 days)
    P reqs:state:<state>    set     request ids by state
    P reqs:user:<user>      set     request ids by requester
    P reqs:all              zset    request ids by created_at
    P grant:<id>            hash    json (Grant), expires_at, uses_left ("" = unlimited);
                                    Redis TTL = the grant's duration
    P grants:user:<user>    set     grant ids by principal (stale ids pruned on read)
    P grants:all            zset    grant ids by expires_at
    P revoked:<grant id>    string  revocation marker (outlives the grant)
    P token-used:<jti>      string  a redeemed one-time token
    P totp-used:<user>:<n>  string  a TOTP time step already used by that user
    P statement-key-secret  string  the HMAC key of statement keys (shared by every
                                    instance on this Redis; made once, never expires)
    P events                channel {"type": approved|denied|abandoned|expired|revoked, ...}

Rules kept here:

- Expiry is checked against the *reader's* clock on every use (the Lua consume
  script gets ``now`` from the caller), and the Redis TTL deletes the key too: a
  grant ends at whichever comes first, so neither clock skew nor a longer TTL
  extends it.
- Counted grants are consumed by one Lua script (check revoked, expiry, uses_left,
  then decrement): two sessions can never both use a one-time grant.
- Request changes are computed by the pure rules in ``gateway.jit.model`` inside a
  WATCH/MULTI transaction, so concurrent approvers and deniers cannot both win.
- Redis unreachable: every method raises ``JitUnavailable`` (the gateway then
  refuses statements that need a grant). redis-py reconnects by itself; the pub/sub
  listener re-subscribes with backoff, and one shared task re-reads the state of
  every waited-for request every ``recheck_s`` seconds (one MGET per 500), so a
  missed message costs at most that.
"""
from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import math
import secrets
import time
from typing import Any, Awaitable, Callable, Iterable, Mapping

import redis.asyncio as aioredis
from redis import exceptions as rexc

from catalog.model import ColumnRef
from gateway.jit import tokens as tokens_mod
from gateway.jit import totp as totp_mod
from gateway.jit.config import JitConfig
from gateway.jit.hook import DecisionHook
from gateway.jit.model import (
    AccessRequest, Approval, ApprovalOutcome, ApprovalRefused, Grant, IllegalTransition,
    MAX_USES, RequestState, SCOPES, apply_approval, identity, check_approval, check_reason, make_grant, requirement_from_dict,
    requirement_to_dict, statement_key as _statement_key, STATEMENT_KEY_VERSION,
)
from gateway.jit.notify import Notifier
from policies.model import Action, ApprovalRequirement, GrantView, grant_meets

log = logging.getLogger("piigate.jit")

Audit = Callable[[dict], Awaitable[None]]

REQUEST_RETENTION_S = 7 * 86400
REVOCATION_MARGIN_S = 3600


class JitUnavailable(Exception):
    """Redis (the grant store) cannot be reached. Statements that need a grant are
    refused until it returns; nothing else is affected."""


class NotFound(KeyError):
    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "not found"


class Conflict(Exception):
    """The request was already decided (HTTP 409)."""


class ReasonRequired(ValueError):
    """The requirement needs a (matching) reason the request does not carry."""


class JitNotConfigured(Exception):
    """A feature was used that the [jit] configuration does not enable."""


_REDIS_DOWN = (rexc.ConnectionError, rexc.TimeoutError, rexc.BusyLoadingError, OSError,
               asyncio.TimeoutError)


def _guard(fn):
    """Turn 'Redis is unreachable' into JitUnavailable with a message that says what to do."""
    @functools.wraps(fn)
    async def wrapper(self, *args, **kwargs):
        try:
            return await fn(self, *args, **kwargs)
        except _REDIS_DOWN as e:
            raise JitUnavailable(
                f"the grant store (Redis at {self.redis_url}) is unavailable ({e}); statements "
                "that need approval are refused until it is back") from e
    return wrapper


async def _no_audit(event: dict) -> None:
    return None


_CONSUME = """
if redis.call('EXISTS', KEYS[2]) == 1 then return -2 end
local v = redis.call('HMGET', KEYS[1], 'expires_at', 'uses_left')
if not v[1] then return -1 end
if tonumber(v[1]) <= tonumber(ARGV[1]) then return -3 end
if v[2] == '' then return -4 end
local n = tonumber(v[2])
if n == nil or n <= 0 then return -5 end
return redis.call('HINCRBY', KEYS[1], 'uses_left', -1)
"""
# Results: >= 0 consumed (uses left afterwards); -4 unlimited, nothing to consume;
# -1 gone (expired by TTL or revoked), -2 revoked, -3 expired by the reader's clock,
# -5 used up.


def connect_redis(url: str, max_connections: int = 64) -> aioredis.Redis:
    """A client whose pool makes callers *wait* for a free connection (thousands of
    held sessions re-check at once) instead of failing with "Too many connections"."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=5.0, socket_connect_timeout=5.0,
        socket_timeout=5.0, health_check_interval=10)
    return aioredis.Redis.from_pool(pool)


def _new_id(kind: str) -> str:
    return f"{kind}-{secrets.token_hex(8)}"


def _dumps(d: Mapping[str, Any]) -> str:
    return json.dumps(d, separators=(",", ":"), sort_keys=True)


class JitService:
    """The JIT facade. One per gateway process; safe to share between sessions."""

    def __init__(self, redis: aioredis.Redis, config: JitConfig | None = None, *,
                 audit: Audit | None = None, instance: str = "",
                 clock: Callable[[], float] = time.time, notifier: Notifier | None = None,
                 hook: DecisionHook | None = None, recheck_s: float = 1.0,
                 owns_redis: bool = False):
        self.redis = redis
        self.config = config or JitConfig()
        self.audit = audit or _no_audit
        self.instance = instance
        self.clock = clock
        self.recheck_s = recheck_s
        self.p = self.config.redis_prefix
        self.channel = f"{self.p}events"
        self.notifier = notifier if notifier is not None else Notifier(
            self.config.webhook_urls, self.config.slack_webhook_urls,
            self.config.webhook_retries, self.config.webhook_backoff_s)
        if hook is None and self.config.hook_url and self.config.hook_secret:
            hook = DecisionHook(self.config.hook_url, self.config.hook_secret,
                                self.config.hook_timeout_s)
        self.hook = hook
        self.totp_secrets: dict[str, bytes] = dict(self.config.totp_secrets)
        self._owns_redis = owns_redis
        self._consume = redis.register_script(_CONSUME)
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._revocation_callbacks: list[Callable[[str], None]] = []
        self._listener: asyncio.Task | None = None
        self._rechecker: asyncio.Task | None = None
        self._listening = asyncio.Event()
        self._sweeper: asyncio.Task | None = None
        self._background: set[asyncio.Task] = set()
        self._closed = False

    @classmethod
    def from_config(cls, config: JitConfig, **kwargs: Any) -> "JitService":
        return cls(connect_redis(config.redis_url), config, owns_redis=True, **kwargs)

    @property
    def redis_url(self) -> str:
        kw = self.redis.connection_pool.connection_kwargs
        return f"{kw.get('host', '?')}:{kw.get('port', '?')}"

    # ------------------------------------------------------------------ life cycle

    async def start(self) -> None:
        """Start the background sweeper (expiry events); optional for tests."""
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep_loop(), name="piigate-jit-sweep")

    async def close(self) -> None:
        self._closed = True
        tasks = [t for t in (self._listener, self._rechecker, self._sweeper, *self._background)
                 if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
        self._listener = self._rechecker = self._sweeper = None
        await self.notifier.close()
        if self._owns_redis:
            await self.redis.aclose()

    async def __aenter__(self) -> "JitService":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def enroll_totp(self, user: str, secret: bytes) -> None:
        """Register a TOTP secret (the admin app enrols approvers from its config)."""
        self.totp_secrets[user] = secret

    @_guard
    async def ping(self) -> bool:
        return bool(await self.redis.ping())

    @_guard
    async def statement_key(self, sql: str, search_path: Iterable[str]) -> str:
        """The key a statement-scoped grant for ``sql`` under ``search_path`` is bound
        to (``gateway.jit.model.statement_key``). The HMAC secret lives in Redis, made
        once by whichever instance needs it first, so every instance computes the same
        keys and audit records (which carry the key, never the text) cannot be checked
        against guessed literals without it. It is read every time (one GET, on the
        approval path only): an instance never keeps a secret Redis has lost."""
        name = f"{self.p}statement-key-secret"
        raw = await self.redis.get(name)
        if raw is None:
            await self.redis.set(name, secrets.token_hex(32), nx=True)
            raw = await self.redis.get(name)
        if not raw:
            raise JitUnavailable("the statement key secret could not be read from Redis")
        return _statement_key(sql, search_path, bytes(raw))

    # ------------------------------------------------------------------ keys

    def _k_req(self, rid: str) -> str:
        return f"{self.p}req:{rid}"

    def _k_state(self, state: RequestState | str) -> str:
        return f"{self.p}reqs:state:{RequestState(state).value}"

    def _k_user(self, user: str) -> str:
        return f"{self.p}reqs:user:{user}"

    def _k_grant(self, gid: str) -> str:
        return f"{self.p}grant:{gid}"

    def _k_user_grants(self, user: str) -> str:
        return f"{self.p}grants:user:{user}"

    def _k_revoked(self, gid: str) -> str:
        return f"{self.p}revoked:{gid}"

    # ------------------------------------------------------------------ events

    async def _record(self, event: dict[str, Any]) -> None:
        """Audit then notify. An audit failure is logged, never undoes a committed change."""
        event.setdefault("instance", self.instance)
        try:
            await self.audit(event)
        except Exception:
            log.exception("audit of %s failed", event.get("type"))
        self.notifier.notify(event)

    def _request_event(self, kind: str, req: AccessRequest, now: float, **extra: Any) -> dict:
        return {"type": f"jit.request.{kind}", "at": now, "request_id": req.id,
                "principal": req.principal, "action": req.action.value,
                "columns": [[c.schema, c.table, c.column] for c in sorted(req.columns)],
                "categories": sorted(req.categories), "fingerprint": req.fingerprint,
                "statement_key": req.statement_key or None,
                "reason": req.reason, "session_id": req.session_id,
                "approve_url": self.config.approve_url or None, **extra}

    @staticmethod
    def _grant_event(kind: str, grant: Grant, now: float, **extra: Any) -> dict:
        return {"type": f"jit.grant.{kind}", "at": now, "grant_id": grant.id,
                "request_id": grant.request_id, "principal": grant.principal,
                "action": grant.action.value, "scope": grant.scope,
                "statement_key": grant.statement_key,
                "expires_at": grant.expires_at, "uses": grant.uses_left,
                "approved_by": list(grant.approved_by), "how": grant.how, **extra}

    async def _publish(self, kind: str, request_id: str | None, grant_id: str | None = None) -> None:
        try:
            await self.redis.publish(self.channel, _dumps(
                {"type": kind, "request_id": request_id, "grant_id": grant_id}))
        except _REDIS_DOWN:
            # The change is committed; waiters re-check on their own within recheck_s.
            log.warning("could not publish %s for %s", kind, request_id)

    # ------------------------------------------------------------------ grants

    def _put_grant(self, pipe: Any, grant: Grant, now: float) -> None:
        key = self._k_grant(grant.id)
        pipe.hset(key, mapping={"json": _dumps(grant.to_dict()), "expires_at": repr(grant.expires_at),
                                "uses_left": "" if grant.uses_left is None else str(grant.uses_left)})
        # The TTL counts from Redis's clock, expires_at from ours: the earlier one wins.
        pipe.expire(key, max(1, math.ceil(grant.expires_at - now)))
        pipe.sadd(self._k_user_grants(grant.principal), grant.id)
        pipe.zadd(f"{self.p}grants:all", {grant.id: grant.expires_at})

    @staticmethod
    def _grant_from_hash(h: Mapping[bytes, bytes]) -> Grant | None:
        if not h or b"json" not in h:
            return None
        grant = Grant.from_dict(json.loads(h[b"json"]))
        left = h.get(b"uses_left", b"")
        return dataclasses.replace(grant, uses_left=int(left) if left else None)

    async def _load_grants(self, ids: list[str]) -> list[tuple[str, Grant | None, bool]]:
        if not ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for gid in ids:
                pipe.hgetall(self._k_grant(gid))
                pipe.exists(self._k_revoked(gid))
            raw = await pipe.execute()
        return [(gid, self._grant_from_hash(raw[2 * i]), bool(raw[2 * i + 1]))
                for i, gid in enumerate(ids)]

    async def _live_grants(self, principal: str, now: float) -> list[Grant]:
        ids = sorted(m.decode() for m in await self.redis.smembers(self._k_user_grants(principal)))
        live, stale = [], []
        for gid, grant, revoked in await self._load_grants(ids):
            if grant is None:
                stale.append(gid)
            elif not revoked and grant.live(now):
                live.append(grant)
        if stale:
            await self.redis.srem(self._k_user_grants(principal), *stale)
        return live

    @_guard
    async def find_grants(self, principal: str, action: Action | None = None,
                          now: float | None = None) -> tuple[GrantView, ...]:
        """Live grants of ``principal`` (for ``action`` when given) as GrantViews for
        ``DecisionRequest.grants``. Does not consume: to *use* a counted grant, call
        ``find_covering_grant``."""
        now = self.clock() if now is None else now
        return tuple(g.view() for g in await self._live_grants(principal, now)
                     if action is None or g.action == action)

    @_guard
    async def find_covering_grant(self, principal: str, action: Action,
                                  columns: Iterable[ColumnRef] = frozenset(),
                                  categories: Iterable[str] = frozenset(),
                                  statement_key: str | None = None, now: float | None = None,
                                  column_categories: Mapping[ColumnRef, str] | None = None,
                                  requirement: ApprovalRequirement | None = None,
                                  ) -> Grant | None:
        """A live grant covering this statement, with one use consumed atomically when
        it is counted; None when there is none. Unlimited grants are preferred (they
        cost nothing), then the one expiring first. ``statement_key`` is the
        statement's ``statement_key()`` (a fingerprint matches no statement grant).
        With ``requirement`` (the approve's), only grants made on terms it accepts
        count (``policies.model.grant_meets``): no use of another is consumed."""
        now = self.clock() if now is None else now
        cols, cats = frozenset(columns), frozenset(categories)
        candidates = [g for g in await self._live_grants(principal, now)
                      if g.covers(action, cols, cats, statement_key, column_categories)
                      and (requirement is None or grant_meets(g.terms(), requirement))]
        candidates.sort(key=lambda g: (g.uses_left is not None, g.expires_at))
        for grant in candidates:
            result = int(await self._consume(keys=[self._k_grant(grant.id), self._k_revoked(grant.id)],
                                             args=[repr(now)]))
            if result == -4:
                return grant
            if result >= 0:
                used = dataclasses.replace(grant, uses_left=result)
                await self._record(self._grant_event("consumed", used, now))
                return used
        return None

    @_guard
    async def get_grant(self, grant_id: str) -> Grant:
        h = await self.redis.hgetall(self._k_grant(grant_id))
        grant = self._grant_from_hash(h)
        if grant is None:
            raise NotFound(f"no live grant {grant_id} (unknown, expired or revoked)")
        return grant

    @_guard
    async def list_grants(self, principal: str | None = None, now: float | None = None) -> list[Grant]:
        """Live grants (of ``principal`` when given), soonest expiry first."""
        now = self.clock() if now is None else now
        if principal is not None:
            grants = await self._live_grants(principal, now)
        else:
            ids = [m.decode() for m in await self.redis.zrangebyscore(
                f"{self.p}grants:all", f"({now!r}", "+inf")]
            grants = [g for _, g, revoked in await self._load_grants(ids)
                      if g is not None and not revoked and g.live(now)]
        return sorted(grants, key=lambda g: (g.expires_at, g.id))

    @_guard
    async def revoke(self, grant_id: str, by: str, now: float | None = None,
                     reason: str | None = None) -> Grant:
        """Delete the grant and leave a revocation marker; every instance sees it at once
        (the next ``find_covering_grant`` reads Redis). ``reason`` goes to the audit
        record (redacted there like every free text). Raises NotFound."""
        now = self.clock() if now is None else now
        grant = self._grant_from_hash(await self.redis.hgetall(self._k_grant(grant_id)))
        if grant is None:
            raise NotFound(f"no live grant {grant_id} (unknown, expired or already revoked)")
        ttl = max(1, math.ceil(grant.expires_at - now)) + REVOCATION_MARGIN_S
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self._k_revoked(grant_id), _dumps({"by": by, "at": now}), ex=ttl)
            pipe.delete(self._k_grant(grant_id))
            pipe.srem(self._k_user_grants(grant.principal), grant_id)
            pipe.zrem(f"{self.p}grants:all", grant_id)
            deleted = (await pipe.execute())[1]
        if not deleted:
            raise NotFound(f"grant {grant_id} expired or was revoked meanwhile")
        await self._publish("revoked", grant.request_id, grant_id)
        extra = {"reason": reason} if reason and reason.strip() else {}
        await self._record(self._grant_event("revoked", grant, now, by=by, **extra))
        return grant

    # ------------------------------------------------------------------ requests

    @_guard
    async def get_request(self, request_id: str) -> AccessRequest:
        raw = await self.redis.get(self._k_req(request_id))
        if raw is None:
            raise NotFound(f"no access request {request_id}")
        return AccessRequest.from_dict(json.loads(raw))

    @_guard
    async def list_requests(self, state: RequestState | str | None = None,
                            user: str | None = None, limit: int = 500) -> list[AccessRequest]:
        """Requests, newest first, filtered by state and/or requester."""
        if state is not None and user is not None:
            ids = await self.redis.sinter(self._k_state(state), self._k_user(user))
        elif state is not None:
            ids = await self.redis.smembers(self._k_state(state))
        elif user is not None:
            ids = await self.redis.smembers(self._k_user(user))
        else:
            ids = await self.redis.zrevrange(f"{self.p}reqs:all", 0, limit - 1)
        ids = [i.decode() for i in ids]
        raws = await self.redis.mget([self._k_req(i) for i in ids]) if ids else []
        found = [AccessRequest.from_dict(json.loads(r)) for r in raws if r is not None]
        gone = [i for i, r in zip(ids, raws) if r is None]
        if gone:    # requests past their retention: drop them from the indexes too
            async with self.redis.pipeline(transaction=False) as pipe:
                for st in RequestState:
                    pipe.srem(self._k_state(st), *gone)
                if user is not None:
                    pipe.srem(self._k_user(user), *gone)
                pipe.zrem(f"{self.p}reqs:all", *gone)
                await pipe.execute()
        found.sort(key=lambda r: (-r.created_at, r.id))
        return found[:limit]

    @_guard
    async def count_pending(self) -> int:
        return int(await self.redis.scard(self._k_state(RequestState.PENDING)))

    @_guard
    async def create_request(self, principal: str, action: Action, *,
                             requirement: ApprovalRequirement | Mapping[str, Any] = ApprovalRequirement(),
                             roles: Iterable[str] = (), columns: Iterable[ColumnRef] = (),
                             categories: Iterable[str] = (), fingerprint: str = "",
                             redacted_sql: str = "", statement_key: str = "", reason: str | None = None,
                             session_id: str = "", instance: str | None = None,
                             auto_approved_by: str | None = None, duration_s: int | None = None,
                             scope: str | None = None, uses: int | None = None,
                             now: float | None = None) -> AccessRequest:
        """Record a pending request (or, with ``auto_approved_by``, an approved one
        and its grant at once). Raises ReasonRequired when the requirement wants a
        reason it lacks, ValueError for an auto rule the requirement does not list."""
        now = self.clock() if now is None else now
        if isinstance(requirement, ApprovalRequirement):
            req_obj, req_dict = requirement, requirement_to_dict(requirement)
        else:
            req_obj, req_dict = requirement_from_dict(requirement), dict(requirement)
        problem = check_reason(req_obj, reason)
        if problem:
            raise ReasonRequired(problem)
        request = AccessRequest(
            id=_new_id("req"), principal=principal, action=Action(action), created_at=now,
            requirement=req_dict, roles=frozenset(roles), columns=frozenset(columns),
            categories=frozenset(categories), fingerprint=fingerprint, redacted_sql=redacted_sql,
            statement_key=statement_key, reason=reason, session_id=session_id,
            instance=self.instance if instance is None else instance)
        grant = None
        if auto_approved_by is not None:
            request, grant = self._auto_approve(request, req_obj, auto_approved_by, duration_s,
                                                scope, uses, now)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self._k_req(request.id), _dumps(request.to_dict()),
                     ex=int(self.config.request_ttl_s + REQUEST_RETENTION_S))
            pipe.sadd(self._k_state(request.state), request.id)
            pipe.sadd(self._k_user(principal), request.id)
            pipe.zadd(f"{self.p}reqs:all", {request.id: now})
            if grant is not None:
                self._put_grant(pipe, grant, now)
            await pipe.execute()
        await self._record(self._request_event("created", request, now))
        if grant is not None:
            await self._publish("approved", request.id, grant.id)
            await self._record(self._request_event("approved", request, now, by=request.decided_by,
                                                   grant_id=grant.id))
            await self._record(self._grant_event("created", grant, now))
        elif self.hook is not None:
            self._spawn(self.consult_hook(request.id))
        return request

    def _auto_approve(self, request: AccessRequest, req: ApprovalRequirement, rule: str,
                      duration_s: int | None, scope: str | None, uses: int | None,
                      now: float) -> tuple[AccessRequest, Grant]:
        if rule not in req.auto_approve:
            raise ValueError(f"auto-approve rule {rule!r} is not one this requirement allows "
                             f"({list(req.auto_approve) or 'none'})")
        duration = min(duration_s or req.max_duration_s, req.max_duration_s)
        scope = scope or self._default_scope(request, req)
        if scope not in req.scopes or scope not in SCOPES:
            raise ValueError(f"auto-approve scope {scope!r} is not allowed ({sorted(req.scopes)})")
        who = f"auto:{rule}"
        grant = make_grant(request, _new_id("grant"), now, duration, scope, uses, (who,), who)
        approved = dataclasses.replace(
            request, approvals=(Approval(who, now, "", duration, scope, uses),)
        ).moved_to(RequestState.APPROVED, now, decided_by=who, grant_id=grant.id)
        return approved, grant

    @staticmethod
    def _default_scope(request: AccessRequest, req: ApprovalRequirement) -> str:
        if request.statement_key and "statement" in req.scopes:
            return "statement"
        return "columns"

    async def _update_request(self, request_id: str,
                              change: Callable[[AccessRequest], tuple[AccessRequest, Grant | None]],
                              now: float) -> tuple[AccessRequest, AccessRequest, Grant | None]:
        """Apply ``change`` (pure; may raise) under WATCH; retry when another writer won."""
        key = self._k_req(request_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    raw = await pipe.get(key)
                    if raw is None:
                        raise NotFound(f"no access request {request_id}")
                    before = AccessRequest.from_dict(json.loads(raw))
                    after, grant = change(before)
                    pipe.multi()
                    pipe.set(key, _dumps(after.to_dict()), keepttl=True)
                    if after.state is not before.state:
                        pipe.srem(self._k_state(before.state), request_id)
                        pipe.sadd(self._k_state(after.state), request_id)
                    if grant is not None:
                        self._put_grant(pipe, grant, now)
                    await pipe.execute()
                    return before, after, grant
                except rexc.WatchError:
                    continue

    def _check_totp(self, user: str, code: str | None, now: float, what: str) -> int:
        secret = self.totp_secrets.get(user)
        if secret is None:
            raise ApprovalRefused("totp_required", f"{what} needs a TOTP code but {user} has no "
                                                   "TOTP enrolment; ask an administrator to enrol one")
        if not code:
            raise ApprovalRefused("totp_required", f"{what} needs {user}'s current TOTP code")
        step = totp_mod.verify(secret, code, now)
        if step is None:
            raise ApprovalRefused("totp_invalid", f"the TOTP code for {user} is wrong or too old")
        return step

    async def _burn_totp(self, user: str, step: int) -> None:
        # A code is good for one use: a replayed code (shoulder-surfed, logged) is refused.
        fresh = await self.redis.set(f"{self.p}totp-used:{user}:{step}", "1", nx=True, ex=300)
        if not fresh:
            raise ApprovalRefused("totp_invalid", f"that TOTP code for {user} was already used; "
                                                  "wait for the next one")

    @_guard
    async def approve(self, request_id: str, approver: str, approver_groups: Iterable[str],
                      duration_s: int, scope: str = "statement", uses: int | None = None,
                      comment: str = "", totp_code: str | None = None,
                      now: float | None = None) -> ApprovalOutcome:
        """Record ``approver``'s approval. The grant exists only once the quorum of
        distinct approvers is met (``outcome.grant``). Raises ApprovalRefused (the
        requirement forbids it), Conflict (already decided), NotFound."""
        now = self.clock() if now is None else now
        groups = frozenset(approver_groups)
        current = await self.get_request(request_id)
        if current.state is not RequestState.PENDING:
            raise Conflict(f"access request {request_id} is already {current.state.value}")
        if current.approval_requirement.approver_totp:
            step = self._check_totp(approver, totp_code, now, "approving this request")
        else:
            step = None
        vote = Approval(approver, now, comment, duration_s, scope, uses, groups)
        grant_id = _new_id("grant")

        def change(req: AccessRequest) -> tuple[AccessRequest, Grant | None]:
            if req.state is not RequestState.PENDING:
                raise Conflict(f"access request {request_id} is already {req.state.value}")
            outcome = apply_approval(req, vote, groups, grant_id)
            return outcome.request, outcome.grant

        if step is not None:
            # Validate first so a refused approval does not burn the approver's code.
            check_approval(current, approver, groups, duration_s, scope, uses)
            await self._burn_totp(approver, step)
        _, after, grant = await self._update_request(request_id, change, now)
        await self._record(self._request_event(
            "approval_recorded", after, now, by=approver, comment=comment, duration_s=duration_s,
            scope=scope, uses=uses, approvals=len(after.approvals)))
        if grant is not None:
            await self._publish("approved", request_id, grant.id)
            await self._record(self._request_event("approved", after, now, by=after.decided_by,
                                                   grant_id=grant.id))
            await self._record(self._grant_event("created", grant, now))
        return ApprovalOutcome(after, grant)

    @_guard
    async def deny(self, request_id: str, approver: str, reason: str,
                   approver_groups: Iterable[str] | None = None,
                   now: float | None = None) -> AccessRequest:
        """Deny a pending request. With ``approver_groups`` given (the admin API), the
        approver must be in one of the requirement's groups. Raises Conflict, NotFound."""
        now = self.clock() if now is None else now
        if not reason or not reason.strip():
            raise ValueError("a denial needs a reason the requester will see")

        def change(req: AccessRequest) -> tuple[AccessRequest, None]:
            need = req.approval_requirement.approver_groups
            if approver_groups is not None and need and not (frozenset(approver_groups) & need):
                raise ApprovalRefused("not_approver", f"{approver} is not in any of the approver "
                                                      f"groups {sorted(need)} this request needs")
            if req.state is not RequestState.PENDING:
                raise Conflict(f"access request {request_id} is already {req.state.value}")
            return req.moved_to(RequestState.DENIED, now, decided_by=approver,
                                denial_reason=reason.strip()), None

        _, after, _ = await self._update_request(request_id, change, now)
        await self._publish("denied", request_id)
        await self._record(self._request_event("denied", after, now, by=approver,
                                               denial_reason=after.denial_reason))
        return after

    @_guard
    async def abandon(self, request_id: str, now: float | None = None) -> AccessRequest:
        """The client cancelled or disconnected while held. A request decided
        meanwhile is left as it is (idempotent)."""
        now = self.clock() if now is None else now

        def change(req: AccessRequest) -> tuple[AccessRequest, None]:
            return req.moved_to(RequestState.ABANDONED, now), None

        try:
            _, after, _ = await self._update_request(request_id, change, now)
        except IllegalTransition:
            return await self.get_request(request_id)
        await self._publish("abandoned", request_id)
        await self._record(self._request_event("abandoned", after, now))
        return after

    # ------------------------------------------------------------------ waiting

    @_guard
    async def wait_for_decision(self, request_id: str, timeout: float
                                ) -> tuple[str, Grant | str | None]:
        """Wait until the request is decided: ("approved", grant), ("denied", reason)
        or ("timeout", None). The request stays pending after a timeout, so a retry
        after a late approval goes straight through. Woken by pub/sub; a shared
        re-check every ``recheck_s`` catches lost messages. Raises JitUnavailable if
        Redis goes away."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        event = asyncio.Event()
        self._waiters.setdefault(request_id, set()).add(event)
        try:
            await self._ensure_listener()
            while True:
                event.clear()   # before the check: a message after it sets the event again
                outcome = await self._outcome(request_id)
                if outcome is not None:
                    return outcome
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return ("timeout", None)
                # Woken by pub/sub, by the shared re-check (one MGET for all waiters
                # every recheck_s, for missed messages) or when Redis goes away.
                try:
                    await asyncio.wait_for(event.wait(), remaining)
                except asyncio.TimeoutError:
                    pass
        finally:
            waiters = self._waiters.get(request_id)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiters[request_id]

    async def _outcome(self, request_id: str) -> tuple[str, Grant | str | None] | None:
        raw = await self.redis.get(self._k_req(request_id))
        if raw is None:
            raise NotFound(f"no access request {request_id}")
        req = AccessRequest.from_dict(json.loads(raw))
        if req.state is RequestState.PENDING:
            return None
        if req.state is RequestState.APPROVED:
            h = await self.redis.hgetall(self._k_grant(req.grant_id or ""))
            grant = self._grant_from_hash(h)
            if grant is None:
                return ("denied", f"the grant for access request {request_id} was revoked or has expired")
            return ("approved", grant)
        if req.state is RequestState.DENIED:
            return ("denied", req.denial_reason or "denied")
        return ("denied", f"access request {request_id} is {req.state.value}")

    async def _ensure_listener(self) -> None:
        if self._rechecker is None or self._rechecker.done():
            self._rechecker = asyncio.create_task(self._recheck_loop(), name="piigate-jit-recheck")
        if self._listener is None or self._listener.done():
            self._listening.clear()
            self._listener = asyncio.create_task(self._listen(), name="piigate-jit-events")
        if not self._listening.is_set():
            # Subscribing first keeps the first wake-up fast; recheck covers the rest.
            try:
                await asyncio.wait_for(asyncio.shield(self._listening.wait()), 1.0)
            except asyncio.TimeoutError:
                pass

    async def _listen(self) -> None:
        backoff = 0.05
        while not self._closed:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                self._listening.set()
                backoff = 0.05
                while True:
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if msg is not None and msg.get("type") == "message":
                        self._dispatch(msg["data"])
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self._listening.clear()
                log.warning("JIT event subscription lost (%s); retrying in %.2fs", e, backoff)
                self._wake_all()   # waiters re-check now: they see Redis is down, or the news
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                try:
                    await pubsub.aclose()
                except Exception:
                    pass

    async def _recheck_loop(self) -> None:
        """Every recheck_s: one MGET over every waited-for request; wake the decided.
        This is the safety net for lost pub/sub messages, and costs one round trip per
        batch of 500 held statements instead of one per statement."""
        while True:
            await asyncio.sleep(self.recheck_s)
            ids = list(self._waiters)
            try:
                for start in range(0, len(ids), 500):
                    chunk = ids[start:start + 500]
                    raws = await self.redis.mget([self._k_req(i) for i in chunk])
                    for rid, raw in zip(chunk, raws):
                        if raw is None or b'"state":"pending"' not in raw:
                            for event in self._waiters.get(rid, ()):
                                event.set()
            except _REDIS_DOWN:
                self._wake_all()        # each waiter's own read then reports JitUnavailable
            except Exception:
                log.exception("JIT re-check failed")

    def _dispatch(self, data: bytes) -> None:
        try:
            message = json.loads(data)
        except ValueError:
            return
        for event in self._waiters.get(message.get("request_id") or "", ()):
            event.set()
        if message.get("type") == "revoked" and message.get("grant_id"):
            for callback in self._revocation_callbacks:
                try:
                    callback(message["grant_id"])
                except Exception:
                    log.exception("revocation callback failed")

    async def on_revocation(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(grant_id)`` whenever any instance revokes a grant, so the
        server can end sessions inside a transaction or cursor opened under it."""
        self._revocation_callbacks.append(callback)
        await self._ensure_listener()

    def _wake_all(self) -> None:
        for events in self._waiters.values():
            for event in events:
                event.set()

    # ------------------------------------------------------------------ programmatic approval

    @_guard
    async def grant_with_totp(self, request_id: str, principal: str, code: str,
                              now: float | None = None) -> Grant:
        """Self-service: the requester confirms with their own TOTP code where the
        requirement allows it, and gets a short grant (``totp_grant_s`` at most)."""
        now = self.clock() if now is None else now
        current = await self.get_request(request_id)
        req = current.approval_requirement
        if current.principal != principal:
            raise ApprovalRefused("self_approval", "only the requester can confirm a request with TOTP")
        if not req.self_service_totp:
            raise ApprovalRefused("totp_not_allowed", f"access request {request_id} needs an "
                                                      "approver; TOTP self-service is not allowed")
        if current.state is not RequestState.PENDING:
            raise Conflict(f"access request {request_id} is already {current.state.value}")
        step = self._check_totp(principal, code, now, "self-service access")
        await self._burn_totp(principal, step)
        duration = min(self.config.totp_grant_s, req.max_duration_s)
        scope = self._default_scope(current, req)
        grant_id = _new_id("grant")
        who = f"totp:{principal}"

        def change(r: AccessRequest) -> tuple[AccessRequest, Grant]:
            if r.state is not RequestState.PENDING:
                raise Conflict(f"access request {request_id} is already {r.state.value}")
            grant = make_grant(r, grant_id, now, duration, scope, None, (who,), "totp")
            return dataclasses.replace(r, approvals=r.approvals + (
                Approval(principal, now, "totp self-service", duration, scope),)).moved_to(
                RequestState.APPROVED, now, decided_by=who, grant_id=grant_id), grant

        _, after, grant = await self._update_request(request_id, change, now)
        assert grant is not None
        await self._publish("approved", request_id, grant.id)
        await self._record(self._request_event("approved", after, now, by=who, grant_id=grant.id))
        await self._record(self._grant_event("created", grant, now))
        return grant

    @_guard
    async def consult_hook(self, request_id: str, now: float | None = None) -> AccessRequest:
        """Ask the external decision hook and apply a signed approve/deny; anything
        else leaves the request pending for a human. Returns the request afterwards."""
        if self.hook is None:
            raise JitNotConfigured("no decision hook configured ([jit].hook_url)")
        request = await self.get_request(request_id)
        answer = await self.hook.ask(request)
        now = self.clock() if now is None else now
        req = request.approval_requirement
        if answer.decision == "none":
            await self._record(self._request_event("hook_undecided", request, now, detail=answer.reason))
            return request
        try:
            if answer.decision == "deny":
                return await self.deny(request_id, "hook", answer.reason or "denied by the decision hook",
                                       now=now)
            duration = min(answer.duration_s or req.max_duration_s, req.max_duration_s)
            scope = answer.scope or self._default_scope(request, req)
            if scope not in req.scopes:
                await self._record(self._request_event("hook_undecided", request, now,
                                                       detail=f"hook asked for scope {scope!r}"))
                return request
            grant_id = _new_id("grant")

            def change(r: AccessRequest) -> tuple[AccessRequest, Grant]:
                grant = make_grant(r, grant_id, now, duration, scope, answer.uses, ("hook",), "hook")
                return dataclasses.replace(r, approvals=r.approvals + (
                    Approval("hook", now, answer.reason, duration, scope, answer.uses),)).moved_to(
                    RequestState.APPROVED, now, decided_by="hook", grant_id=grant_id), grant

            _, after, grant = await self._update_request(request_id, change, now)
        except (IllegalTransition, Conflict):
            return await self.get_request(request_id)     # a human was faster
        except ValueError as e:                            # e.g. columns scope, no columns
            await self._record(self._request_event("hook_undecided", request, now,
                                                   detail=f"hook answer unusable: {e}"))
            return request
        assert grant is not None
        await self._publish("approved", request_id, grant.id)
        await self._record(self._request_event("approved", after, now, by="hook", grant_id=grant.id))
        await self._record(self._grant_event("created", grant, now))
        return after

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)

        def done(t: asyncio.Task) -> None:
            self._background.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.warning("background JIT task failed: %s", t.exception())
        task.add_done_callback(done)

    # ------------------------------------------------------------------ one-time tokens

    def issue_token(self, principal: str, action: Action, scope: str, *, issued_by: str,
                    ttl_s: float, duration_s: int, columns: Iterable[ColumnRef] = (),
                    categories: Iterable[str] = (), fingerprint: str | None = None,
                    uses: int | None = 1, now: float | None = None,
                    statement_key: str | None = None,
                    issuer_groups: Iterable[str] = ()) -> tuple[str, tokens_mod.TokenClaims]:
        """Sign a single-use token binding ``principal`` to a scope; (token, claims).
        Raises JitNotConfigured without [jit].token_key, ApprovalRefused / ValueError
        for bad terms (nobody issues a token to themselves).

        A statement-scoped token is bound to a statement key (an access request's
        ``statement_key``); a pg_query fingerprint is refused (it matches statements
        with other constants and aliases). ``fingerprint`` may carry the key (the
        admin API and CLI pass it there).

        ``issuer_groups`` are the issuer's approver groups: the grant lifts only an
        approve those groups may approve, with one approval, no approver TOTP and
        within its longest duration (``policies.model.grant_meets``)."""
        if not self.config.token_key:
            raise JitNotConfigured("one-time tokens need [jit].token_key (or token_key_env)")
        now = self.clock() if now is None else now
        if identity(issued_by) == identity(principal):
            raise ApprovalRefused("self_approval", f"{issued_by} cannot issue a grant token to themselves")
        if not (0 < ttl_s <= self.config.token_max_ttl_s):
            raise ValueError(f"ttl_s must be in (0, {self.config.token_max_ttl_s:g}]")
        if isinstance(duration_s, bool) or not isinstance(duration_s, int) or duration_s <= 0:
            raise ValueError("duration_s must be a positive integer")
        if uses is not None and (isinstance(uses, bool) or not isinstance(uses, int)
                                 or not 1 <= uses <= MAX_USES):
            raise ValueError(f"uses must be an integer from 1 to {MAX_USES} or null (unlimited)")
        if statement_key is None and fingerprint and fingerprint.startswith(f"{STATEMENT_KEY_VERSION}:"):
            statement_key, fingerprint = fingerprint, None
        if scope == "statement" and not (statement_key or "").startswith(f"{STATEMENT_KEY_VERSION}:"):
            raise ValueError("a statement-scoped token needs the statement key of the access request "
                             f"it is for ({STATEMENT_KEY_VERSION}:..., shown as statement_key); a "
                             "fingerprint would also match statements with other constants or aliases")
        claims = tokens_mod.TokenClaims(
            jti=secrets.token_hex(12), sub=principal, action=Action(action), scope=scope,
            exp=now + ttl_s, duration_s=duration_s, issued_by=issued_by, issued_at=now,
            fingerprint=fingerprint, columns=frozenset(columns),
            categories=frozenset(categories), uses=uses, statement_key=statement_key,
            issuer_groups=frozenset(issuer_groups))
        # Building the grant it would give validates the scope now, not at redemption.
        self._grant_from_claims(claims, now)
        token = tokens_mod.sign(claims, self.config.token_key)
        return token, claims

    async def record_token_issued(self, claims: tokens_mod.TokenClaims) -> None:
        await self._record({"type": "jit.token.issued", "at": claims.issued_at, "jti": claims.jti,
                            "principal": claims.sub, "action": claims.action.value,
                            "scope": claims.scope, "exp": claims.exp, "by": claims.issued_by})

    @staticmethod
    def _grant_from_claims(claims: tokens_mod.TokenClaims, now: float) -> Grant:
        return Grant(id=_new_id("grant"), principal=claims.sub, action=claims.action,
                     scope=claims.scope, created_at=now, expires_at=now + claims.duration_s,
                     fingerprint=claims.fingerprint if claims.scope == "statement" else None,
                     columns=claims.columns, categories=claims.categories, uses_left=claims.uses,
                     approved_by=(claims.issued_by,), how="token",
                     statement_key=claims.statement_key if claims.scope == "statement" else None,
                     approver_groups=(claims.issuer_groups,))

    @_guard
    async def redeem_token(self, token: str, principal: str, now: float | None = None) -> Grant:
        """Turn a one-time token into a grant for ``principal``. Works once (SET NX in
        Redis), only for its user, never at or after its expiry. Raises TokenRejected."""
        if not self.config.token_key:
            raise JitNotConfigured("one-time tokens need [jit].token_key (or token_key_env)")
        now = self.clock() if now is None else now
        claims = tokens_mod.open_token(token, self.config.token_key)
        tokens_mod.check_claims(claims, principal, now)
        first = await self.redis.set(f"{self.p}token-used:{claims.jti}", _dumps(
            {"by": principal, "at": now}), nx=True, ex=max(1, math.ceil(claims.exp - now)) + 3600)
        if not first:
            raise tokens_mod.TokenRejected("this grant token was already used")
        grant = self._grant_from_claims(claims, now)
        async with self.redis.pipeline(transaction=True) as pipe:
            self._put_grant(pipe, grant, now)
            await pipe.execute()
        await self._record(self._grant_event("created", grant, now, jti=claims.jti))
        return grant

    # ------------------------------------------------------------------ expiry

    @_guard
    async def sweep(self, now: float | None = None) -> tuple[list[str], list[str]]:
        """Expire pending requests older than request_ttl_s and report grants past
        their expiry (each reported once across all instances). Returns the ids."""
        now = self.clock() if now is None else now
        expired_requests: list[str] = []
        for req in await self.list_requests(state=RequestState.PENDING, limit=10_000):
            if req.created_at + self.config.request_ttl_s > now:
                continue
            try:
                _, after, _ = await self._update_request(
                    req.id, lambda r: (r.moved_to(RequestState.EXPIRED, now), None), now)
            except (IllegalTransition, NotFound):
                continue
            expired_requests.append(req.id)
            await self._publish("expired", req.id)
            await self._record(self._request_event("expired", after, now))
        expired_grants: list[str] = []
        ids = [m.decode() for m in await self.redis.zrangebyscore(f"{self.p}grants:all", "-inf", repr(now))]
        for gid, grant, _ in await self._load_grants(ids):
            if not await self.redis.zrem(f"{self.p}grants:all", gid):
                continue            # another instance reported it
            expired_grants.append(gid)
            await self.redis.delete(self._k_grant(gid))   # never let a longer TTL outlive it
            if grant is not None:
                await self.redis.srem(self._k_user_grants(grant.principal), gid)
                await self._record(self._grant_event("expired", grant, now))
            else:
                await self._record({"type": "jit.grant.expired", "at": now, "grant_id": gid})
        return expired_requests, expired_grants

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.sweep_interval_s)
            try:
                await self.sweep()
            except JitUnavailable as e:
                log.warning("JIT sweep skipped: %s", e)
            except Exception:
                log.exception("JIT sweep failed")
