"""The admin API against a real Redis-backed JitService, through aiohttp's test client."""
from __future__ import annotations

import asyncio
import json
import re
import time

import pytest
from aiohttp.test_utils import TestClient, TestServer

from catalog.model import ColumnRef
from gateway.admin import AdminConfig, Metrics, ROUTES, create_app, hash_token
from gateway.jit import JitConfig, JitService, RequestState
from gateway.jit import totp
from gateway.jit.store import connect_redis
from policies.model import Action, ApprovalRequirement

EMAIL = ColumnRef("public", "customers", "email")
TOTP_B32 = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"
TOKENS = {"bob": "tok-bob", "carol": "tok-carol", "alice": "tok-alice", "sales": "tok-sales"}


def admin_config() -> AdminConfig:
    return AdminConfig.from_table({"approvers": [
        {"name": "bob", "token_sha256": hash_token(TOKENS["bob"]), "groups": ["dba"],
         "totp_secret": TOTP_B32},
        {"name": "carol", "token_sha256": hash_token(TOKENS["carol"]), "groups": ["dba"]},
        {"name": "alice", "token_sha256": hash_token(TOKENS["alice"]), "groups": ["dba"]},
        {"name": "sam", "token_sha256": hash_token(TOKENS["sales"]), "groups": ["sales"]},
    ]}, "test.toml")


@pytest.fixture
async def env(redis_url, redis_prefix):
    service = JitService(connect_redis(redis_url),
                         JitConfig(redis_prefix=redis_prefix, token_key=b"t" * 32), owns_redis=True)
    metrics = Metrics()
    probe_state = {"upstream": True}

    async def probe():
        return dict(probe_state)

    client = TestClient(TestServer(create_app(service, admin_config(), metrics, probe)))
    await client.start_server()
    yield client, service, metrics, probe_state
    await client.close()
    await service.close()


def auth(who: str) -> dict:
    return {"Authorization": f"Bearer {TOKENS[who]}"}


async def pending(service, principal="alice", **req):
    req.setdefault("approver_groups", frozenset({"dba"}))
    return await service.create_request(principal, Action.READ, columns={EMAIL}, categories={"email"},
                                        fingerprint="fp", statement_key="sk1:fp",
                                        requirement=ApprovalRequirement(**req),
                                        redacted_sql="SELECT email FROM customers WHERE id = $1")


async def error_of(resp, status):
    assert resp.status == status, await resp.text()
    body = await resp.json()
    assert set(body["error"]) == {"code", "message"} and body["error"]["message"]
    return body["error"]


async def test_auth_401_and_403(env):
    client, service, *_ = env
    req = await pending(service)
    e = await error_of(await client.get("/api/v1/requests"), 401)
    assert "Bearer" in e["message"]
    await error_of(await client.get("/api/v1/requests", headers={"Authorization": "Bearer nope"}), 401)
    await error_of(await client.get("/api/v1/requests", headers={"Authorization": "Basic eDp5"}), 401)
    await error_of(await client.post(f"/api/v1/requests/{req.id}/approve", json={"duration": 60}), 401)
    e = await error_of(await client.post(f"/api/v1/requests/{req.id}/approve", json={"duration": 60},
                                         headers=auth("alice")), 403)
    assert e["code"] == "self_approval"
    e = await error_of(await client.post(f"/api/v1/requests/{req.id}/approve", json={"duration": 60},
                                         headers=auth("sales")), 403)
    assert e["code"] == "not_approver"
    e = await error_of(await client.post(f"/api/v1/requests/{req.id}/deny", json={"reason": "x"},
                                         headers=auth("sales")), 403)
    me = await (await client.get("/api/v1/whoami", headers=auth("bob"))).json()
    assert me == {"name": "bob", "groups": ["dba"], "totp_enrolled": True}
    for public in ("/api/v1/health", "/api/v1/metrics", "/api/v1/openapi.json", "/"):
        assert (await client.get(public)).status == 200, public


@pytest.mark.parametrize("path_kind, body, status, needle", [
    ("approve", "not json", 400, "not valid JSON"),
    ("approve", [1, 2], 400, "JSON object"),
    ("approve", {}, 400, "missing field(s) duration"),
    ("approve", {"duration": "soon"}, 400, "duration"),
    ("approve", {"duration": -5}, 400, "positive"),
    ("approve", {"duration": 60, "durration": 1}, 400, "unknown field(s) durration"),
    ("approve", {"duration": 60, "scope": "table"}, 400, "scope"),
    ("approve", {"duration": 60, "uses": 0}, 400, "uses"),
    ("approve", {"duration": 60, "uses": True}, 400, "uses"),
    ("approve", {"duration": 60, "comment": 5}, 400, "comment"),
    ("approve", {"duration": "2h"}, 422, "longer than"),
    ("approve", {"duration": 60, "scope": "columns"}, 422, "not allowed"),
    ("deny", {}, 400, "missing field(s) reason"),
    ("deny", {"reason": "   "}, 400, "must not be empty"),
    ("deny", {"reason": 3}, 400, "reason"),
])
async def test_bad_input_gets_json_4xx(env, path_kind, body, status, needle):
    client, service, *_ = env
    req = await pending(service, max_duration_s=3600, scopes=frozenset({"statement"}))
    data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    resp = await client.post(f"/api/v1/requests/{req.id}/{path_kind}", data=data,
                             headers={**auth("bob"), "Content-Type": "application/json"})
    e = await error_of(resp, status)
    assert needle in e["message"]
    assert (await service.get_request(req.id)).state is RequestState.PENDING


async def test_query_and_id_errors(env):
    client, *_ = env
    e = await error_of(await client.get("/api/v1/requests?state=maybe", headers=auth("bob")), 400)
    assert "state" in e["message"]
    await error_of(await client.get("/api/v1/requests?limit=x", headers=auth("bob")), 400)
    await error_of(await client.get("/api/v1/requests/req-missing", headers=auth("bob")), 404)
    await error_of(await client.post("/api/v1/requests/req-missing/approve", json={"duration": 60},
                                     headers=auth("bob")), 404)
    await error_of(await client.post("/api/v1/grants/grant-missing/revoke", headers=auth("bob")), 404)
    await error_of(await client.get("/api/v1/nothing-here", headers=auth("bob")), 404)
    resp = await client.delete("/api/v1/requests", headers=auth("bob"))
    await error_of(resp, 405)
    assert "GET" in resp.headers["Allow"]              # a 405 says which methods there are


async def test_approve_wakes_holder_then_revoke(env):
    client, service, *_ = env
    req = await pending(service)
    waiter = asyncio.create_task(service.wait_for_decision(req.id, timeout=10))
    await asyncio.sleep(0.1)
    listed = await (await client.get("/api/v1/requests?state=pending&user=alice", headers=auth("bob"))).json()
    assert [r["id"] for r in listed["requests"]] == [req.id]
    got = await (await client.get(f"/api/v1/requests/{req.id}", headers=auth("bob"))).json()
    assert got["redacted_sql"].endswith("$1") and got["columns"] == [["public", "customers", "email"]]
    t0 = time.perf_counter()
    resp = await client.post(f"/api/v1/requests/{req.id}/approve",
                             json={"duration": "15m", "scope": "statement", "uses": 2, "comment": "INC-7"},
                             headers=auth("bob"))
    assert resp.status == 201
    out = await resp.json()
    kind, grant = await waiter
    print(f"\nHTTP approve -> held statement woke: {(time.perf_counter() - t0) * 1000:.1f} ms")
    assert kind == "approved" and grant.id == out["grant"]["id"] and grant.duration_s == 900
    assert out["quorum"] == {"needed": 1, "have": 1}
    e = await error_of(await client.post(f"/api/v1/requests/{req.id}/deny", json={"reason": "late"},
                                         headers=auth("carol")), 409)
    assert "already approved" in e["message"]
    grants = await (await client.get("/api/v1/grants?user=alice", headers=auth("carol"))).json()
    assert [g["id"] for g in grants["grants"]] == [grant.id]
    resp = await client.post(f"/api/v1/grants/{grant.id}/revoke", headers=auth("carol"))
    assert resp.status == 200 and (await resp.json())["revoked"]["id"] == grant.id
    assert await service.find_covering_grant("alice", Action.READ, {EMAIL}, {"email"}, "sk1:fp") is None
    await error_of(await client.post(f"/api/v1/grants/{grant.id}/revoke", headers=auth("carol")), 404)


async def test_deny_flow_and_quorum_202(env):
    client, service, *_ = env
    req = await pending(service)
    resp = await client.post(f"/api/v1/requests/{req.id}/deny", json={"reason": "use the replica"},
                             headers=auth("bob"))
    assert resp.status == 200 and (await resp.json())["state"] == "denied"
    assert await service.wait_for_decision(req.id, 1) == ("denied", "use the replica")
    two = await pending(service, approvals=2)
    r1 = await client.post(f"/api/v1/requests/{two.id}/approve", json={"duration": 60}, headers=auth("bob"))
    assert r1.status == 202 and (await r1.json())["grant"] is None
    e = await error_of(await client.post(f"/api/v1/requests/{two.id}/approve", json={"duration": 60},
                                         headers=auth("bob")), 409)
    assert e["code"] == "duplicate"
    r2 = await client.post(f"/api/v1/requests/{two.id}/approve", json={"duration": 60}, headers=auth("carol"))
    assert r2.status == 201 and (await r2.json())["grant"]["approved_by"] == ["bob", "carol"]


async def test_approver_totp_through_api(env):
    client, service, *_ = env
    req = await pending(service, approver_totp=True)
    e = await error_of(await client.post(f"/api/v1/requests/{req.id}/approve", json={"duration": 60},
                                         headers=auth("bob")), 403)
    assert e["code"] == "totp_required"
    code = totp.totp(totp.decode_secret(TOTP_B32), time.time())
    resp = await client.post(f"/api/v1/requests/{req.id}/approve", json={"duration": 60, "totp": code},
                             headers=auth("bob"))
    assert resp.status == 201


async def test_tokens(env):
    client, service, *_ = env
    body = {"user": "ci-bot", "action": "read", "scope": "columns",
            "columns": ["public.customers.email"], "ttl": "10m", "duration": 60}
    resp = await client.post("/api/v1/tokens", json=body, headers=auth("bob"))
    assert resp.status == 201, await resp.text()
    out = await resp.json()
    assert out["how_to_use"].startswith("SET piigate.grant_token")
    grant = await service.redeem_token(out["token"], "ci-bot")
    assert grant.columns == {EMAIL} and grant.uses_left == 1
    e = await error_of(await client.post("/api/v1/tokens", json={**body, "user": "bob"},
                                         headers=auth("bob")), 403)
    assert e["code"] == "self_approval"
    await error_of(await client.post("/api/v1/tokens", json={**body, "action": "peek"}, headers=auth("bob")), 400)
    await error_of(await client.post("/api/v1/tokens", json={**body, "columns": ["x"]}, headers=auth("bob")), 400)
    await error_of(await client.post("/api/v1/tokens", json={**body, "ttl": "30d"}, headers=auth("bob")), 422)
    await error_of(await client.post("/api/v1/tokens", json={**body, "scope": "statement"},
                                     headers=auth("bob")), 422)     # no statement key to bind
    await error_of(await client.post("/api/v1/tokens", json={**body, "scope": "statement",
                                                             "statement_key": "0e57eee906669488"},
                                     headers=auth("bob")), 422)     # a fingerprint is not a key
    key = "sk1:" + "ab" * 32
    resp = await client.post("/api/v1/tokens", json={**body, "scope": "statement", "statement_key": key},
                             headers=auth("bob"))
    assert resp.status == 201, await resp.text()
    grant = await service.redeem_token((await resp.json())["token"], "ci-bot")
    assert grant.scope == "statement" and grant.statement_key == key


async def test_metrics_format(env):
    client, service, metrics, _ = env
    await pending(service)
    metrics.decision("mask")
    metrics.decision("allow")
    metrics.decision("allow")
    metrics.hold_started()
    for s in (0.0003, 0.004, 0.2, 100.0):
        metrics.observe_statement(s)
    resp = await client.get("/api/v1/metrics")
    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = await resp.text()
    sample = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[a-zA-Z_][a-zA-Z0-9_]*="[^"]*"(,[a-zA-Z_][a-zA-Z0-9_]*="[^"]*")*\})? -?[0-9.e+Inf]+$')
    for line in text.strip().splitlines():
        assert line.startswith("# HELP ") or line.startswith("# TYPE ") or sample.match(line), line
    assert "piigate_requests_pending 1\n" in text
    assert "piigate_holds_active 1\n" in text
    assert 'piigate_decisions_total{effect="allow"} 2\n' in text
    assert 'piigate_decisions_total{effect="deny"} 0\n' in text
    assert 'piigate_statement_duration_seconds_bucket{le="0.0005"} 1\n' in text
    assert 'piigate_statement_duration_seconds_bucket{le="0.25"} 3\n' in text
    assert 'piigate_statement_duration_seconds_bucket{le="+Inf"} 4\n' in text
    assert "piigate_statement_duration_seconds_count 4\n" in text
    assert "# TYPE piigate_statement_duration_seconds histogram" in text


async def test_ready_reflects_probe(env):
    client, _, _, probe_state = env
    assert (await (await client.get("/api/v1/ready")).json()) == {
        "ready": True, "checks": {"redis": True, "upstream": True}}
    probe_state["upstream"] = False
    resp = await client.get("/api/v1/ready")
    assert resp.status == 503 and (await resp.json())["checks"]["upstream"] is False
    # The gateway's probe speaks strings and counts: "ok" passes, anything else fails.
    probe_state.update(upstream=True, audit="failing: disk full", sessions=12)
    assert (await client.get("/api/v1/ready")).status == 503
    probe_state["audit"] = "ok"
    assert (await client.get("/api/v1/ready")).status == 200


async def test_openapi_names_every_route(env):
    client, *_ = env
    resp = await client.get("/api/v1/openapi.json")
    doc = json.loads(await resp.text())
    assert doc["openapi"].startswith("3.")
    for r in ROUTES:
        assert r.method.lower() in doc["paths"][r.path], r.path
    for resource in client.app.router.resources():
        assert resource.canonical in doc["paths"], resource.canonical
    approve = doc["paths"]["/api/v1/requests/{id}/approve"]["post"]
    assert approve["requestBody"]["content"]["application/json"]["schema"]["required"] == ["duration"]
    assert "401" in approve["responses"] and approve["security"] == [{"bearer": []}]


@pytest.mark.parametrize("value", [1, 900, "1", "15m", " 2h ", "01d", "0", 0, -5, "", "0m", "15x", "1.5h",
                                   True, None])
def test_the_documented_duration_is_what_the_api_accepts(value):
    """Clients (and fuzzers) generate requests from the OpenAPI document: a duration
    it calls valid must be accepted, one it calls invalid refused (found by
    schemathesis: "0" was documented as valid and refused)."""
    import re
    from gateway.admin.app import ApiError, _DUR, parse_duration
    integer, text = _DUR["oneOf"]
    documented = ((type(value) is int and value >= integer["minimum"])
                  or (isinstance(value, str) and re.search(text["pattern"], value) is not None))
    try:
        parse_duration(value, "duration")
        accepted = True
    except ApiError:
        accepted = False
    assert accepted == documented


@pytest.mark.parametrize("limit", ["1", "10000", "0500", "0", "10001", "", "x", "-1"])
async def test_the_documented_limit_is_what_the_api_accepts(env, limit):
    import re
    client, *_ = env
    schema = next(r for r in ROUTES if r.path == "/api/v1/requests").query["limit"]
    resp = await client.get(f"/api/v1/requests?limit={limit}", headers=auth("bob"))
    assert (resp.status == 200) == (re.search(schema["pattern"], limit) is not None)


def test_every_route_with_a_body_documents_400():
    """A body that is not JSON, or not the object asked for, is a 400 everywhere."""
    for r in ROUTES:
        if r.body is not None:
            assert 400 in r.statuses, r.path


async def test_console_page_is_plain_html(env):
    client, *_ = env
    resp = await client.get("/")
    text = await resp.text()
    assert resp.content_type == "text/html" and "api/v1" in text and "textContent" in text
    assert "innerHTML" not in text


@pytest.mark.parametrize("table, needle", [
    ({"listen": "8080"}, "[admin].listen"),
    ({"approvers": [{"name": "x", "token_sha256": "abc"}]}, "#1.token_sha256: expected 64 hex"),
    ({"approvers": [{"token_sha256": "a" * 64}]}, "#1.name"),
    ({"approvers": [{"name": "x", "token_sha256": "a" * 64, "groups": "dba"}]}, "#1.groups"),
    ({"approvers": [{"name": "x", "token_sha256": "a" * 64, "totp_secret": "??"}]}, "#1.totp_secret"),
    ({"approvers": [{"name": "x", "token_sha256": "a" * 64},
                    {"name": "x", "token_sha256": "b" * 64}]}, "appears twice"),
    ({"aprovers": []}, "unknown key(s) aprovers"),
])
def test_admin_config_errors_name_the_key(table, needle):
    from gateway.jit import ConfigError
    with pytest.raises(ConfigError) as e:
        AdminConfig.from_table(table, "gw.toml")
    assert needle in str(e.value) and str(e.value).startswith("gw.toml")
