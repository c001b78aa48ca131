"""Red-team round 2 of the JIT approval flow, the admin API / console and the audit
trail: a hostile requester, a hostile approver with limited rights, an
unauthenticated peer on loopback."""
from __future__ import annotations

import asyncio
import hashlib
import json
import time

import aiohttp
import psycopg
import pytest

from catalog.model import ColumnRef
from gateway.jit import JitConfig, JitService
from gateway.jit.store import connect_redis
from policies.model import Action, ApprovalRequirement

from .test_jit_flow import APPROVER_TOKEN, _config, _pending, _post, _run_in_thread  # noqa: F401

EMAIL = ColumnRef("public", "customers", "email")
TOKEN_KEY = "a-test-token-key-of-enough-length"
SALES_TOKEN = "sales-approver-token-for-tests"


@pytest.fixture
def jit_gateway_r2(gateway_factory, pg_server, sample_db, tmp_path, redis_url, redis_prefix):
    """The test_jit_flow gateway (lee approves for group "leads") plus sally, an
    approver of group "sales" only, and a token key."""
    def make(**kw):
        kw.setdefault("jit_extra", f'token_key = "{TOKEN_KEY}"')
        text = _config(pg_server, sample_db.dbname, tmp_path, redis_url, redis_prefix, **kw)
        text += f"""
[[admin.approvers]]
name = "sally"
token_sha256 = "{hashlib.sha256(SALES_TOKEN.encode()).hexdigest()}"
groups = ["sales"]
"""
        gw = gateway_factory(config_text=text)
        gw.dbname = sample_db.dbname
        gw.admin = f"http://127.0.0.1:{gw.runtime.admin_port}"
        return gw
    return make


async def _post_as(admin: str, token: str, path: str, body) -> tuple[int, dict]:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
        async with http.post(f"{admin}{path}", json=body) as r:
            return r.status, await r.json()


# ---------------------------------------------------------------- grants beyond the rule


@pytest.mark.parametrize("issuer, duration", [("sally", "5m"),     # not in the rule's approver groups
                                              ("lee", "30d")])     # longer than the rule's 30m
async def test_a_token_does_not_lift_an_approval_its_issuer_could_not_give(jit_gateway_r2, issuer, duration):
    """A one-time token is issued for a user and columns, not for a rule: any approver
    (token_issuer_groups unset) could mint one, and its grant lifted every approve it
    covered. sally, approver for "sales" only, gave sam reads of customers.email,
    which only "leads" may approve; lee gave 30 days where the rule allows 30 minutes
    (found by red-teaming). A grant now lifts an approve only when its approvers, their
    number, TOTP and its duration meet that approve's requirement."""
    gw = jit_gateway_r2(hold=1)
    token = {"sally": SALES_TOKEN, "lee": APPROVER_TOKEN}[issuer]
    status, body = await _post_as(gw.admin, token, "/api/v1/tokens",
                                  {"user": "sam", "action": "read", "scope": "columns",
                                   "categories": ["email"], "ttl": "5m",
                                   "duration": duration, "uses": None})
    assert status == 201, body
    with psycopg.connect(gw.dsn(gw.dbname, user="sam"), autocommit=True) as conn:
        conn.execute(f"SET piigate.grant_token = '{body['token']}'")
        conn.execute("SET piigate.reason = 'TICKET-201'")
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as e:
            conn.execute("SELECT email FROM customers WHERE id = 9").fetchone()
        assert "not approved within" in str(e.value)          # held for a real approval instead
    # the same token from an approver the rule accepts, within its duration, works
    status, body = await _post_as(gw.admin, APPROVER_TOKEN, "/api/v1/tokens",
                                  {"user": "sam", "action": "read", "scope": "columns",
                                   "categories": ["email"], "ttl": "5m", "duration": "30m"})
    assert status == 201, body
    with psycopg.connect(gw.dsn(gw.dbname, user="sam"), autocommit=True) as conn:
        conn.execute(f"SET piigate.grant_token = '{body['token']}'")
        conn.execute("SET piigate.reason = 'TICKET-202'")
        assert conn.execute("SELECT email FROM customers WHERE id = 9").fetchone() == ("user09@example.invalid",)


@pytest.fixture
async def jit_r2(redis_url, redis_prefix):
    service = JitService(connect_redis(redis_url),
                         JitConfig(redis_prefix=redis_prefix, token_key=b"k" * 32), owns_redis=True)
    yield service
    await service.close()


async def test_a_grant_approved_under_one_rule_does_not_lift_a_stricter_one(jit_r2):
    """The same class without tokens: a columns grant approved by a "leads" approver
    for a rule that "leads" may approve covered every later statement on those
    columns, also one a stricter rule holds (other approver groups, a quorum of two,
    approver TOTP, a shorter longest duration, no self-service)."""
    from policies.model import grant_meets
    loose = ApprovalRequirement(approver_groups=frozenset({"leads"}), max_duration_s=3600)
    req = await jit_r2.create_request("sam", Action.READ, requirement=loose, columns={EMAIL},
                                      categories={"email"}, statement_key="sk1:x")
    out = await jit_r2.approve(req.id, "lee", {"leads", "oncall"}, 1800, scope="columns")
    grant = out.grant
    assert grant.approver_groups == (frozenset({"leads", "oncall"}),)
    assert grant_meets(grant.terms(), loose)
    for stricter in (ApprovalRequirement(approver_groups=frozenset({"privacy"})),
                     ApprovalRequirement(approver_groups=frozenset({"leads"}), approvals=2),
                     ApprovalRequirement(approver_groups=frozenset({"leads"}), approver_totp=True),
                     ApprovalRequirement(approver_groups=frozenset({"leads"}), max_duration_s=600)):
        assert not grant_meets(grant.terms(), stricter), stricter
        assert await jit_r2.find_covering_grant("sam", Action.READ, {EMAIL}, {"email"},
                                                requirement=stricter) is None
    assert grant_meets(grant.terms(), ApprovalRequirement(approver_groups=frozenset({"oncall"})))
    found = await jit_r2.find_covering_grant("sam", Action.READ, {EMAIL}, {"email"}, requirement=loose)
    assert found is not None and found.id == grant.id
    # a self-service TOTP grant lifts only approves that allow self-service
    import dataclasses
    totp_terms = dataclasses.replace(grant, how="totp", approved_by=("totp:sam",)).terms()
    assert not grant_meets(totp_terms, loose)
    assert grant_meets(totp_terms, dataclasses.replace(loose, self_service_totp=True))
    # a grant stored before approver groups were kept counts as approved by no group
    old = dataclasses.replace(grant, approver_groups=None)
    assert not grant_meets(old.terms(), loose)
    assert grant_meets(old.terms(), ApprovalRequirement())


def test_a_token_carries_its_issuers_groups_signed():
    from gateway.jit import tokens
    service = JitService.__new__(JitService)
    service.config = JitConfig(token_key=b"k" * 32)
    service.clock = time.time
    token, claims = service.issue_token("sam", Action.READ, "columns", issued_by="sally", ttl_s=60,
                                        duration_s=60, categories={"email"}, issuer_groups={"sales"})
    assert tokens.open_token(token, b"k" * 32).issuer_groups == {"sales"}
    grant = JitService._grant_from_claims(claims, time.time())
    assert grant.terms().approver_groups == (frozenset({"sales"}),) and grant.how == "token"
    # the groups are signed: a token edited to claim another group is refused
    head, payload, sig = token.split(".")
    body = json.loads(tokens._unb64(payload))
    body["issuer_groups"] = ["leads"]
    forged = ".".join([head, tokens._b64(json.dumps(body).encode()), sig])
    with pytest.raises(tokens.TokenRejected):
        tokens.open_token(forged, b"k" * 32)


# ---------------------------------------------------------------- one person, many spellings


@pytest.mark.parametrize("spelling, bob", [("Sam", "Bob"), ("sam ", "bob "), ("SAM", "BOB"),
                                           ("ｓａｍ", "ｂｏｂ"), ("s\u200bam", "b\u200bob"),
                                           ("\u202asam", "\u202abob")])
async def test_a_requester_cannot_approve_under_another_spelling_of_their_name(jit_r2, spelling, bob):
    """Self-approval and quorum compared names byte for byte: an approver entry
    "Sam" (or "ｓａｍ", or with a zero-width space) approved sam's own request, and
    "bob" plus "BOB" made a quorum of two (found by red-teaming)."""
    req = await jit_r2.create_request("sam", Action.READ, columns={EMAIL}, categories={"email"},
                                      statement_key="sk1:x",
                                      requirement=ApprovalRequirement(approvals=2))
    from gateway.jit.model import ApprovalRefused
    with pytest.raises(ApprovalRefused) as e:
        await jit_r2.approve(req.id, spelling, {"leads"}, 60)
    assert e.value.code == "self_approval"
    await jit_r2.approve(req.id, "bob", {"leads"}, 60)
    with pytest.raises(ApprovalRefused) as e:
        await jit_r2.approve(req.id, bob, {"leads"}, 60)
    assert e.value.code == "duplicate"
    assert (await jit_r2.get_request(req.id)).state.value == "pending"
    with pytest.raises(ApprovalRefused):
        jit_r2.issue_token("sam", Action.READ, "columns", issued_by=spelling, ttl_s=60,
                           duration_s=60, categories={"email"})


@pytest.mark.parametrize("names", [("bob", "Bob"), ("bob", "ｂｏｂ"), ("bob", "bo\u200bb"),
                                   ("bob", "bob "), ("bob", "\tbob")])
def test_one_approver_cannot_be_configured_twice_under_two_spellings(names):
    from gateway.admin import AdminConfig
    from gateway.jit import ConfigError
    table = {"approvers": [{"name": n, "token_sha256": c * 64} for n, c in zip(names, "ab")]}
    with pytest.raises(ConfigError) as e:
        AdminConfig.from_table(table, "gw.toml")
    assert "#2.name" in str(e.value)


# ---------------------------------------------------------------- free text in the trail


@pytest.mark.parametrize("reason, kept", [
    ("INC-123456789", "?"),                                  # an SSN as a "ticket number"
    ("SSN123456789-1 refund", "? refund"),                   # ... or as its project key
    ("INC-123 INC-45 INC-6789", "INC-123 ? ?"),              # ... or in ticket-shaped pieces
    ("ＳＳＮ １２３-４５-６７８９", "SSN ?"),                  # full-width digits
    ("١٢٣-٤٥-٦٧٨٩", "?"),                                    # Arabic-Indic digits
    ("mail user＠example.invalid", "mail ?"),                 # a full-width at sign
    ("1\u200b2\u200b3-45-6789", "?"),                        # zero-width spaces between digits
    ("JIRA-4711 refund for customer", "JIRA-4711 refund for customer"),
])
def test_a_reason_cannot_carry_a_value_into_the_trail(reason, kept):
    """A reason is free text the requester types; the trail kept ticket-shaped
    tokens whole (INC-123456789 is an SSN) and only looked for ASCII digits and '@'
    (found by red-teaming)."""
    from gateway.audit.records import sanitize
    assert sanitize({"type": "jit.request.created", "reason": reason})["reason"] == kept


async def test_denial_and_revocation_reasons_reach_the_trail_redacted(jit_r2, audit_trail_events):
    """An approver's denial reason went into the trail as typed ("customer ssn
    123-45-6789 not needed"), and the reason given for a revocation through the API
    was read and dropped."""
    from gateway.audit.records import sanitize
    jit_r2.audit = audit_trail_events
    req = await jit_r2.create_request("sam", Action.READ, columns={EMAIL}, categories={"email"},
                                      statement_key="sk1:x")
    await jit_r2.deny(req.id, "lee", "customer ssn 123-45-6789 is not needed for INC-77")
    req = await jit_r2.create_request("sam", Action.READ, columns={EMAIL}, categories={"email"},
                                      statement_key="sk1:y")
    grant = (await jit_r2.approve(req.id, "lee", {"leads"}, 60, scope="columns")).grant
    await jit_r2.revoke(grant.id, "lee", reason="INC-78 leaked to 555-123-4567")
    trail = [sanitize(e) for e in audit_trail_events.events]
    denied = next(e for e in trail if e["type"] == "request.denied")
    assert denied["denial_reason"] == "customer ssn ? is not needed for INC-77"
    revoked = next(e for e in trail if e["type"] == "grant.revoked")
    assert revoked["reason"] == "INC-78 leaked to ?" and revoked["by"] == "lee"
    assert "123-45-6789" not in json.dumps(trail) and "4567" not in json.dumps(trail)


@pytest.fixture
def audit_trail_events():
    events: list[dict] = []

    async def audit(event: dict) -> None:
        events.append(event)

    audit.events = events
    return audit


# ---------------------------------------------------------------- admin API and console

from .admin.test_admin_api import auth, env, error_of, pending  # noqa: E402,F401


async def test_the_console_cannot_be_framed_or_sniffed(env):
    """The console had a CSP without frame-ancestors: any page (another origin on
    loopback) could frame it and lead an approver's clicks onto Approve. API
    answers said nothing against content sniffing."""
    client, *_ = env
    resp = await client.get("/")
    assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]
    assert resp.headers["X-Frame-Options"] == "DENY"
    for path in ("/", "/api/v1/health", "/api/v1/requests"):
        resp = await client.get(path)
        assert resp.headers.get("X-Content-Type-Options") == "nosniff", path
        assert "Access-Control-Allow-Origin" not in resp.headers, path     # no CORS at all


async def test_state_changes_need_the_bearer_header_whatever_else_is_sent(env):
    """Cross-site requests (a form post from another origin, a cookie, a token in
    the query string or the body, a method-override header) change nothing: only
    Authorization: Bearer authenticates, and the approver is the token's, never the body's."""
    client, service, *_ = env
    req = await pending(service)
    form = await client.post(f"/api/v1/requests/{req.id}/approve", data={"duration": "60"},
                             headers={"Origin": "http://127.0.0.1:9999", "Cookie": "token=tok-bob"})
    await error_of(form, 401)
    await error_of(await client.post(f"/api/v1/requests/{req.id}/approve?token=tok-bob",
                                     json={"duration": 60}), 401)
    await error_of(await client.post(f"/api/v1/requests/{req.id}/approve",
                                     json={"duration": 60, "approver": "bob"}), 401)
    e = await error_of(await client.post(f"/api/v1/requests/{req.id}/approve",
                                         json={"duration": 60, "approver": "carol"},
                                         headers=auth("bob")), 400)
    assert "approver" in e["message"]
    await error_of(await client.get(f"/api/v1/requests/{req.id}/approve",
                                    headers={**auth("bob"), "X-HTTP-Method-Override": "POST"}), 405)
    # duplicate keys, huge numbers, lists for strings: 4xx, nothing recorded
    for raw in (b'{"duration": 60, "duration": 999999999}', b'{"duration": 1e400}',
                b'{"duration": ["60"]}', b'{"duration": 60, "uses": 99999999999999999999999999}',
                b'{"duration": 60, "comment": {"x": 1}}', b'{"duration": "9' + b"9" * 5000 + b'"}'):
        resp = await client.post(f"/api/v1/requests/{req.id}/approve", data=raw,
                                 headers={**auth("bob"), "Content-Type": "application/json"})
        assert 400 <= resp.status < 500, (raw[:40], resp.status)
    assert (await service.get_request(req.id)).state.value == "pending"
    resp = await client.post(f"/api/v1/requests/{req.id}/approve", json={"duration": 60},
                             headers=auth("bob"))
    assert resp.status == 201 and (await resp.json())["grant"]["approved_by"] == ["bob"]


@pytest.mark.parametrize("rid", ["..%2F..%2Fgrant%3Ax", "req-1%00", "%2A", "req:*", "x" * 3000])
async def test_odd_ids_are_just_unknown_ids(env, rid):
    client, *_ = env
    resp = await client.post(f"/api/v1/requests/{rid}/approve", json={"duration": 60}, headers=auth("bob"))
    assert resp.status in (400, 404, 414), resp.status
    resp = await client.post(f"/api/v1/grants/{rid}/revoke", headers=auth("bob"))
    assert resp.status in (400, 404, 414), resp.status


@pytest.mark.parametrize("first", ["deny", "abandon", "expire", "approve"])
async def test_no_approval_after_a_request_is_decided(env, first, redis_prefix):
    client, service, *_ = env
    req = await pending(service)
    if first == "deny":
        await service.deny(req.id, "carol", "no")
    elif first == "abandon":
        await service.abandon(req.id)
    elif first == "expire":
        await service.sweep(now=time.time() + service.config.request_ttl_s + 1)
    else:
        await service.approve(req.id, "carol", {"dba"}, 60)
    e = await error_of(await client.post(f"/api/v1/requests/{req.id}/approve", json={"duration": 60},
                                         headers=auth("bob")), 409)
    assert "already" in e["message"]
    assert len(await service.list_grants(principal="alice")) == (first == "approve")


async def test_a_count_of_uses_beyond_64_bits_is_refused_everywhere(jit_r2, audit_trail_events):
    """uses = 10**26 was accepted: Redis cannot count it (the grant failed at first
    use) and the trail cannot hold it, so the approval and grant records were not
    written while the request stood approved (found by red-teaming). It is refused
    by the API (400), the approval rules, token issue and the decision hook alike."""
    from gateway.audit.records import plain
    from gateway.jit.hook import parse_answer
    from gateway.jit.model import MAX_USES, ApprovalRefused
    huge = 10**26
    req = await jit_r2.create_request("sam", Action.READ, columns={EMAIL}, categories={"email"},
                                      statement_key="sk1:x")
    with pytest.raises(ApprovalRefused) as e:
        await jit_r2.approve(req.id, "lee", {"leads"}, 60, uses=huge)
    assert e.value.code == "uses"
    with pytest.raises(ValueError):
        jit_r2.issue_token("ci", Action.READ, "columns", issued_by="lee", ttl_s=60, duration_s=60,
                           categories={"email"}, uses=huge)
    assert parse_answer(json.dumps({"decision": "approve", "uses": huge}).encode()).decision == "none"
    jit_r2.audit = audit_trail_events
    grant = (await jit_r2.approve(req.id, "lee", {"leads"}, 60, scope="columns", uses=MAX_USES)).grant
    assert {e["type"] for e in audit_trail_events.events} >= {"jit.request.approval_recorded",
                                                             "jit.grant.created"}
    for event in audit_trail_events.events:
        plain(event)                                   # every record can be written
    assert (await jit_r2.find_covering_grant("sam", Action.READ, {EMAIL}, {"email"})).uses_left == MAX_USES - 1
    assert grant.uses_left == MAX_USES


# ---------------------------------------------------------------- held statements


async def test_statements_pipelined_behind_a_held_one_wait_for_it(jit_gateway_r2):
    """A client that pipelines more messages while its statement is held: none of
    them runs ahead (an UPDATE queued behind a held SELECT must not commit first),
    and after the hold ends they run in order."""
    from gateway.protocol import codec
    from .conftest import PASSWORD
    from .rawclient import RawClient, errors
    gw = jit_gateway_r2(hold=2)
    raw = RawClient("127.0.0.1", gw.port, "sam", PASSWORD, gw.dbname, timeout=15)
    try:
        assert not errors(raw.query("SET piigate.reason = 'TICKET-301'"))
        raw.received.clear()
        raw.sock.sendall(codec.frame(b"Q", b"SELECT email FROM customers WHERE id = 3\x00")
                         + codec.frame(b"Q", b"SELECT 'second'\x00"))
        req = await _pending(gw.admin)
        await asyncio.sleep(0.5)
        assert b"second" not in raw.received               # still behind the held one
        first = raw._until_ready()
        assert [e for e in errors(first) if "not approved within" in e.message], first
        second = raw._until_ready()
        assert not errors(second) and b"second" in raw.received
        # approval after the hold timed out: the retry goes straight through, once
        status, body = await _post(gw.admin, f"/api/v1/requests/{req['id']}/approve",
                                   {"duration": "5m", "scope": "statement", "uses": 1})
        assert status == 201, body
        assert not errors(raw.query("SELECT email FROM customers WHERE id = 3"))
    finally:
        raw.close()
