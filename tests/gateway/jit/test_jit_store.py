"""JitService against a real Redis: requests, grants, wake-ups, consumption, expiry."""
from __future__ import annotations

import asyncio
import time

import pytest

from catalog.model import ColumnRef
from gateway.jit import (
    ApprovalRefused, Conflict, JitConfig, NotFound, ReasonRequired, RequestState, TokenRejected,
)
from gateway.jit import totp
from gateway.jit.model import statement_key
from policies.model import Action, ApprovalRequirement


EMAIL = ColumnRef("public", "customers", "email")
SSN = ColumnRef("public", "customers", "ssn")
#: what the session computes for the held statement (gateway.jit.model.statement_key)
SK_EMAIL = statement_key("SELECT email FROM customers WHERE id = 1", ("public",), b"test-secret")
REQ = ApprovalRequirement(approver_groups=frozenset({"dba"}), max_duration_s=3600)


async def new_request(jit, principal="alice", requirement=REQ, **kw):
    kw.setdefault("columns", {EMAIL})
    kw.setdefault("categories", {"email"})
    kw.setdefault("fingerprint", "fp-email")
    kw.setdefault("statement_key", SK_EMAIL)
    return await jit.create_request(principal, Action.READ, requirement=requirement,
                                    redacted_sql="SELECT email FROM customers WHERE id = $1",
                                    session_id="s1", **kw)


async def test_create_approve_wakes_waiter_fast(jit, audit_log):
    req = await new_request(jit)
    assert req.state is RequestState.PENDING
    assert (await jit.get_request(req.id)) == req
    waiter = asyncio.create_task(jit.wait_for_decision(req.id, timeout=10))
    await asyncio.sleep(0.2)                       # the waiter is subscribed and idle
    t0 = time.perf_counter()
    outcome = await jit.approve(req.id, "bob", {"dba"}, 600, "statement", comment="INC-1")
    kind, grant = await waiter
    latency_ms = (time.perf_counter() - t0) * 1000
    print(f"\napprove -> waiter woke: {latency_ms:.2f} ms (includes the approve round trips)")
    assert kind == "approved" and grant.id == outcome.grant.id
    assert latency_ms < 100
    assert grant.approved_by == ("bob",) and grant.how == "manual"
    assert abs(grant.expires_at - grant.created_at - 600) < 1e-6
    assert (await jit.get_request(req.id)).state is RequestState.APPROVED
    types = [e["type"] for e in audit_log.events]
    assert types[:1] == ["jit.request.created"] and "jit.grant.created" in types
    # The grant lifts the same statement, and only it.
    assert (await jit.find_covering_grant("alice", Action.READ, {EMAIL}, {"email"}, SK_EMAIL)).id == grant.id
    assert await jit.find_covering_grant("alice", Action.READ, {EMAIL}, {"email"}, "sk1:other") is None
    assert await jit.find_covering_grant("mallory", Action.READ, {EMAIL}, {"email"}, SK_EMAIL) is None
    views = await jit.find_grants("alice", Action.READ)
    assert [v.grant_id for v in views] == [grant.id] and views[0].fingerprint == SK_EMAIL
    # a fingerprint, what statement grants were keyed on, matches nothing
    assert await jit.find_covering_grant("alice", Action.READ, {EMAIL}, {"email"}, "fp-email") is None
    # the key binds the exact text and the search_path
    k = await jit.statement_key("SELECT email FROM customers WHERE id = 1", ("public",))
    assert k.startswith("sk1:") and k == await jit.statement_key("SELECT email FROM customers WHERE id = 1",
                                                                 ["public"])
    assert k != await jit.statement_key("SELECT email FROM customers WHERE id = 2", ("public",))
    assert k != await jit.statement_key("SELECT email FROM customers WHERE id = 1", ("other", "public"))


async def test_wait_times_out_and_request_stays_pending(jit):
    req = await new_request(jit)
    t0 = time.perf_counter()
    assert await jit.wait_for_decision(req.id, timeout=0.3) == ("timeout", None)
    assert 0.25 < time.perf_counter() - t0 < 1.5
    assert (await jit.get_request(req.id)).state is RequestState.PENDING


async def test_deny_wakes_with_reason_and_second_decision_conflicts(jit):
    req = await new_request(jit)
    waiter = asyncio.create_task(jit.wait_for_decision(req.id, timeout=5))
    await asyncio.sleep(0.05)
    denied = await jit.deny(req.id, "bob", "use the reporting replica", approver_groups={"dba"})
    assert denied.state is RequestState.DENIED and denied.decided_by == "bob"
    assert await waiter == ("denied", "use the reporting replica")
    with pytest.raises(Conflict):
        await jit.approve(req.id, "bob", {"dba"}, 60)
    with pytest.raises(Conflict):
        await jit.deny(req.id, "carol", "again")


async def test_abandon_is_final_and_idempotent(jit):
    req = await new_request(jit)
    assert (await jit.abandon(req.id)).state is RequestState.ABANDONED
    assert (await jit.abandon(req.id)).state is RequestState.ABANDONED
    with pytest.raises(Conflict):
        await jit.approve(req.id, "bob", {"dba"}, 60)
    assert [r.id for r in await jit.list_requests(state="abandoned")] == [req.id]
    assert await jit.list_requests(state="pending") == []


async def test_unknown_ids(jit):
    with pytest.raises(NotFound):
        await jit.get_request("req-nope")
    with pytest.raises(NotFound):
        await jit.approve("req-nope", "bob", {"dba"}, 60)
    with pytest.raises(NotFound):
        await jit.revoke("grant-nope", "bob")


async def test_self_approval_and_wrong_group_refused(jit):
    req = await new_request(jit)
    with pytest.raises(ApprovalRefused) as e:
        await jit.approve(req.id, "alice", {"dba"}, 60)
    assert e.value.code == "self_approval"
    with pytest.raises(ApprovalRefused) as e:
        await jit.approve(req.id, "bob", {"sales"}, 60)
    assert e.value.code == "not_approver"
    with pytest.raises(ApprovalRefused) as e:
        await jit.approve(req.id, "bob", {"dba"}, 7200)
    assert e.value.code == "duration"
    assert (await jit.get_request(req.id)).approvals == ()


async def test_quorum_of_two(jit):
    req = await new_request(jit, requirement=ApprovalRequirement(approvals=2))
    first = await jit.approve(req.id, "bob", (), 600, "columns")
    assert first.grant is None and first.request.state is RequestState.PENDING
    assert await jit.find_covering_grant("alice", Action.READ, {EMAIL}, {"email"}, SK_EMAIL) is None
    with pytest.raises(ApprovalRefused):
        await jit.approve(req.id, "bob", (), 600, "columns")
    second = await jit.approve(req.id, "carol", (), 300, "columns")
    assert second.grant is not None and second.grant.approved_by == ("bob", "carol")
    assert second.grant.scope == "columns" and second.grant.duration_s == 300
    assert (await jit.find_covering_grant("alice", Action.READ, {EMAIL}, {"email"}, "sk1:x")).id == second.grant.id


async def test_concurrent_approvers_make_one_grant(jit):
    req = await new_request(jit, requirement=ApprovalRequirement(approvals=2))
    results = await asyncio.gather(*(jit.approve(req.id, f"approver{i}", (), 60) for i in range(6)),
                                   return_exceptions=True)
    grants = [r.grant for r in results if not isinstance(r, Exception) and r.grant is not None]
    assert len(grants) == 1
    assert all(isinstance(r, Conflict) for r in results if isinstance(r, Exception))


async def test_one_time_grant_used_exactly_once_by_50_sessions(jit):
    req = await new_request(jit)
    outcome = await jit.approve(req.id, "bob", {"dba"}, 600, "statement", uses=1)
    assert outcome.grant.uses_left == 1
    results = await asyncio.gather(*(
        jit.find_covering_grant("alice", Action.READ, {EMAIL}, {"email"}, SK_EMAIL)
        for _ in range(50)))
    used = [g for g in results if g is not None]
    assert len(used) == 1 and used[0].uses_left == 0


async def test_counted_grant_three_uses(jit):
    req = await new_request(jit)
    await jit.approve(req.id, "bob", {"dba"}, 600, "statement", uses=3)
    lefts = [await jit.find_covering_grant("alice", Action.READ, {EMAIL}, {"email"}, SK_EMAIL)
             for _ in range(4)]
    assert [g.uses_left if g else None for g in lefts] == [2, 1, 0, None]


async def test_expiry_by_reader_clock_despite_longer_ttl(jit):
    """Instance A (clock ahead) approves; B's Redis TTL would keep it, B's clock does not."""
    req = await new_request(jit)
    approved_at = time.time() - 3000            # a writer whose clock is far behind
    outcome = await jit.approve(req.id, "bob", {"dba"}, 3600, "statement", now=approved_at)
    key = jit._k_grant(outcome.grant.id)
    await jit.redis.expire(key, 7200)           # and a TTL longer than the grant
    now = time.time()
    assert await jit.find_covering_grant("alice", Action.READ, {EMAIL}, {"email"}, SK_EMAIL, now=now)
    later = approved_at + 3600
    assert await jit.find_covering_grant("alice", Action.READ, {EMAIL}, {"email"}, SK_EMAIL,
                                         now=later) is None
    assert await jit.find_grants("alice", now=later) == ()
    assert await jit.redis.exists(key)          # Redis still has it: the clock check decided
    _, expired = await jit.sweep(now=later)
    assert expired == [outcome.grant.id] and not await jit.redis.exists(key)


async def test_redis_ttl_equals_duration(jit):
    req = await new_request(jit)
    outcome = await jit.approve(req.id, "bob", {"dba"}, 120, "statement")
    ttl = await jit.redis.ttl(jit._k_grant(outcome.grant.id))
    assert 118 <= ttl <= 120


async def test_revoke_is_visible_at_once_on_another_instance(jit, make_jit):
    other = make_jit(instance="gw-2")
    req = await new_request(jit)
    outcome = await jit.approve(req.id, "bob", {"dba"}, 600, "columns")
    assert await other.find_covering_grant("alice", Action.READ, {EMAIL}, {"email"}, None)
    revoked = await other.revoke(outcome.grant.id, "carol")
    assert revoked.id == outcome.grant.id
    assert await jit.find_covering_grant("alice", Action.READ, {EMAIL}, {"email"}, None) is None
    assert await jit.list_grants() == []
    with pytest.raises(NotFound):
        await jit.revoke(outcome.grant.id, "carol")


async def test_two_instances_wait_on_one_approve_through_other(make_jit):
    gw1, gw2 = make_jit(instance="gw-1"), make_jit(instance="gw-2")
    req = await new_request(gw1)
    waiter = asyncio.create_task(gw1.wait_for_decision(req.id, timeout=10))
    await asyncio.sleep(0.2)
    t0 = time.perf_counter()
    await gw2.approve(req.id, "bob", {"dba"}, 60)
    kind, grant = await waiter
    ms = (time.perf_counter() - t0) * 1000
    print(f"\ncross-instance approve -> wake: {ms:.2f} ms")
    assert kind == "approved" and ms < 100


async def test_many_waiters_one_listener(jit):
    reqs = [await new_request(jit, fingerprint=f"fp{i}") for i in range(200)]
    waiters = [asyncio.create_task(jit.wait_for_decision(r.id, timeout=10)) for r in reqs]
    await asyncio.sleep(0.2)
    for r in reqs[:100]:
        await jit.approve(r.id, "bob", {"dba"}, 60)
    done = await asyncio.gather(*waiters[:100])
    assert all(k == "approved" for k, _ in done)
    assert all(not w.done() for w in waiters[100:])
    for w in waiters[100:]:
        w.cancel()
    await asyncio.gather(*waiters[100:], return_exceptions=True)
    assert jit._waiters == {}


async def test_missed_message_still_seen_by_recheck(jit):
    req = await new_request(jit)
    waiter = asyncio.create_task(jit.wait_for_decision(req.id, timeout=5))
    await asyncio.sleep(0.1)
    # Decide behind the service's back (no publish), as if the message was lost.
    raw = await jit.get_request(req.id)
    await jit._update_request(req.id, lambda r: (r.moved_to(RequestState.DENIED, 1.0, denial_reason="x"), None), 1.0)
    t0 = time.perf_counter()
    assert await waiter == ("denied", "x")
    assert time.perf_counter() - t0 < 1.5
    assert raw.state is RequestState.PENDING


async def test_auto_approve_creates_grant_at_once(jit, audit_log):
    req_rule = ApprovalRequirement(auto_approve=("oncall-readonly",), max_duration_s=900)
    req = await new_request(jit, requirement=req_rule, auto_approved_by="oncall-readonly",
                            duration_s=5000)
    assert req.state is RequestState.APPROVED and req.decided_by == "auto:oncall-readonly"
    grant = await jit.get_grant(req.grant_id)
    assert grant.how == "auto:oncall-readonly" and grant.duration_s == 900
    assert await jit.wait_for_decision(req.id, timeout=1) == ("approved", grant)
    with pytest.raises(ValueError, match="not one this requirement allows"):
        await new_request(jit, requirement=req_rule, auto_approved_by="something-else")


async def test_reason_required(jit):
    rule = ApprovalRequirement(reason_required=True, reason_pattern=r"INC-\d+")
    with pytest.raises(ReasonRequired, match="piigate.reason"):
        await new_request(jit, requirement=rule)
    with pytest.raises(ReasonRequired, match="must match"):
        await new_request(jit, requirement=rule, reason="curious")
    assert (await new_request(jit, requirement=rule, reason="INC-42")).reason == "INC-42"


async def test_list_requests_filters(jit):
    a = await new_request(jit, principal="alice")
    b = await new_request(jit, principal="bob")
    await jit.deny(b.id, "carol", "no")
    assert {r.id for r in await jit.list_requests()} >= {a.id, b.id}
    assert [r.id for r in await jit.list_requests(user="bob")] == [b.id]
    assert [r.id for r in await jit.list_requests(state="pending", user="alice")] == [a.id]
    assert await jit.list_requests(state="denied", user="alice") == []
    assert await jit.count_pending() == 1


async def test_request_expiry_by_sweep(make_jit, redis_prefix, clock):
    jit = make_jit(config=JitConfig(redis_prefix=redis_prefix, request_ttl_s=60), clock=clock)
    req = await new_request(jit)
    assert await jit.sweep() == ([], [])
    clock.now += 61
    expired, _ = await jit.sweep()
    assert expired == [req.id]
    assert (await jit.get_request(req.id)).state is RequestState.EXPIRED
    assert (await jit.wait_for_decision(req.id, 1))[0] == "denied"


TOKEN_KEY = "k" * 32


async def test_one_time_token(make_jit, redis_prefix):
    jit = make_jit(config=JitConfig(redis_prefix=redis_prefix, token_key=TOKEN_KEY.encode()))
    token, claims = jit.issue_token("ci-bot", Action.READ, "columns", issued_by="bob", ttl_s=300,
                                    duration_s=60, categories={"email"})
    with pytest.raises(ApprovalRefused):
        jit.issue_token("bob", Action.READ, "columns", issued_by="bob", ttl_s=300, duration_s=60,
                        categories={"email"})
    with pytest.raises(TokenRejected, match="another user"):
        await jit.redeem_token(token, "alice")
    results = await asyncio.gather(*(jit.redeem_token(token, "ci-bot") for _ in range(20)),
                                   return_exceptions=True)
    grants = [r for r in results if not isinstance(r, Exception)]
    assert len(grants) == 1 and grants[0].how == "token" and grants[0].uses_left == 1
    assert all("already used" in str(r) for r in results if isinstance(r, Exception))
    assert await jit.find_covering_grant("ci-bot", Action.READ, {EMAIL}, {"email"}, None)
    assert await jit.find_covering_grant("ci-bot", Action.READ, {EMAIL}, {"email"}, None) is None
    # Expired tokens never work, even unused.
    late, claims2 = jit.issue_token("ci-bot", Action.READ, "statement", issued_by="bob", ttl_s=10,
                                    duration_s=60, fingerprint=SK_EMAIL)
    with pytest.raises(TokenRejected, match="expired"):
        await jit.redeem_token(late, "ci-bot", now=claims2.exp)
    assert (await jit.redeem_token(late, "ci-bot", now=claims2.exp - 1)).statement_key == SK_EMAIL
    # statement tokens are bound to a statement key, never a fingerprint
    with pytest.raises(ValueError, match="statement key"):
        jit.issue_token("ci-bot", Action.READ, "statement", issued_by="bob", ttl_s=10, duration_s=60,
                        fingerprint="fp")


SECRET_B32 = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"


async def test_totp_self_service_and_approver_totp(make_jit, redis_prefix):
    cfg = JitConfig.from_table({"redis_prefix": redis_prefix, "totp_grant_s": 300,
                                "totp": {"alice": SECRET_B32, "bob": SECRET_B32}}, "test.toml")
    jit = make_jit(config=cfg)
    secret = cfg.totp_secrets["alice"]
    now = time.time()
    self_service = ApprovalRequirement(self_service_totp=True, max_duration_s=3600)
    req = await new_request(jit, requirement=self_service)
    with pytest.raises(ApprovalRefused) as e:
        await jit.grant_with_totp(req.id, "alice", "000000" if totp.totp(secret, now) != "000000" else "111111", now=now)
    assert e.value.code == "totp_invalid"
    grant = await jit.grant_with_totp(req.id, "alice", totp.totp(secret, now), now=now)
    assert grant.how == "totp" and grant.duration_s == 300
    # Not allowed where the requirement does not say so.
    plain = await new_request(jit)
    with pytest.raises(ApprovalRefused) as e:
        await jit.grant_with_totp(plain.id, "alice", totp.totp(secret, now), now=now)
    assert e.value.code == "totp_not_allowed"
    # Approvers confirming with their own code; a code works once.
    strict = await new_request(jit, requirement=ApprovalRequirement(approver_totp=True))
    with pytest.raises(ApprovalRefused) as e:
        await jit.approve(strict.id, "bob", (), 60, now=now)
    assert e.value.code == "totp_required"
    with pytest.raises(ApprovalRefused) as e:
        await jit.approve(strict.id, "carol", (), 60, totp_code="123456", now=now)
    assert "no TOTP enrolment" in str(e.value)
    t2 = now + 60
    code = totp.totp(secret, t2)
    ok = await jit.approve(strict.id, "bob", (), 60, totp_code=code, now=t2)
    assert ok.grant is not None
    again = await new_request(jit, requirement=ApprovalRequirement(approver_totp=True))
    with pytest.raises(ApprovalRefused, match="already used"):
        await jit.approve(again.id, "bob", (), 60, totp_code=code, now=t2)


async def test_grants_survive_a_new_service_instance(make_jit):
    first = make_jit()
    req = await new_request(first)
    outcome = await first.approve(req.id, "bob", {"dba"}, 600, "columns")
    await first.close()
    restarted = make_jit()
    assert (await restarted.find_covering_grant("alice", Action.READ, {EMAIL}, {"email"}, None)).id \
        == outcome.grant.id


async def test_revocation_callback_on_another_instance(jit, make_jit):
    other = make_jit(instance="gw-2")
    seen: list[str] = []
    got = asyncio.Event()

    def on_revoked(grant_id: str) -> None:
        seen.append(grant_id)
        got.set()

    await other.on_revocation(on_revoked)
    req = await new_request(jit)
    outcome = await jit.approve(req.id, "bob", {"dba"}, 600)
    await jit.revoke(outcome.grant.id, "carol")
    await asyncio.wait_for(got.wait(), 2)
    assert seen == [outcome.grant.id]


async def test_index_entries_of_vanished_requests_are_pruned(jit):
    req = await new_request(jit)
    await jit.redis.delete(jit._k_req(req.id))         # as if its retention ran out
    assert await jit.list_requests(state="pending") == []
    assert not await jit.redis.sismember(jit._k_state("pending"), req.id)
    assert await jit.count_pending() == 0
