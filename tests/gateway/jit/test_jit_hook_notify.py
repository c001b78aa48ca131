"""External decision hook and webhooks, against real aiohttp servers on loopback."""
from __future__ import annotations

import asyncio
import json
import time

import pytest
from aiohttp import web

from catalog.model import ColumnRef
from gateway.jit import JitConfig, RequestState
from gateway.jit.hook import SIGNATURE_HEADER, signature, signature_ok
from gateway.jit.notify import Notifier, slack_text
from policies.model import Action, ApprovalRequirement

EMAIL = ColumnRef("public", "customers", "email")
SECRET = b"hook-shared-secret"


async def serve(handler, path="/hook"):
    app = web.Application()
    app.router.add_post(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    return runner, f"http://127.0.0.1:{port}{path}"


def hook_handler(answer: dict | None, *, key=SECRET, delay=0.0, seen=None):
    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        if seen is not None:
            seen.append((body, request.headers.get(SIGNATURE_HEADER)))
        await asyncio.sleep(delay)
        out = json.dumps(answer).encode()
        return web.Response(body=out, content_type="application/json",
                            headers={SIGNATURE_HEADER: signature(key, out)})
    return handle


async def hook_jit(make_jit, redis_prefix, url, timeout=2.0):
    return make_jit(config=JitConfig(redis_prefix=redis_prefix, hook_url=url, hook_secret=SECRET,
                                     hook_timeout_s=timeout))


async def create(jit, **req):
    return await jit.create_request("alice", Action.READ, columns={EMAIL}, categories={"email"},
                                    fingerprint="fp", requirement=ApprovalRequirement(**req),
                                    redacted_sql="SELECT email FROM customers")


async def test_hook_signed_approve(make_jit, redis_prefix):
    seen = []
    runner, url = await serve(hook_handler({"decision": "approve", "duration_s": 99999,
                                            "reason": "on-call OK"}, seen=seen))
    try:
        jit = await hook_jit(make_jit, redis_prefix, url)
        req = await create(jit, max_duration_s=600)
        kind, grant = await jit.wait_for_decision(req.id, timeout=5)    # create_request consulted it
        assert kind == "approved" and grant.how == "hook" and grant.duration_s == 600
        assert (await jit.get_request(req.id)).decided_by == "hook"
        body, sig = seen[0]
        assert signature_ok(SECRET, body, sig)                  # we sign what we send
        assert json.loads(body)["request"]["id"] == req.id
    finally:
        await runner.cleanup()


async def test_hook_signed_deny(make_jit, redis_prefix):
    runner, url = await serve(hook_handler({"decision": "deny", "reason": "no ticket"}))
    try:
        jit = await hook_jit(make_jit, redis_prefix, url)
        req = await create(jit)
        assert await jit.wait_for_decision(req.id, timeout=5) == ("denied", "no ticket")
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("handler_kw, why", [
    ({"key": b"wrong-secret"}, "signature"),
    ({"delay": 1.5}, "did not answer"),
])
async def test_hook_bad_signature_or_timeout_is_not_approval(make_jit, redis_prefix, audit_log,
                                                             handler_kw, why):
    runner, url = await serve(hook_handler({"decision": "approve"}, **handler_kw))
    try:
        jit = await hook_jit(make_jit, redis_prefix, url, timeout=0.5)
        req = await create(jit)
        t0 = time.perf_counter()
        after = await jit.consult_hook(req.id)
        assert after.state is RequestState.PENDING
        assert time.perf_counter() - t0 < 1.4
        undecided = [e for e in audit_log.events if e["type"] == "jit.request.hook_undecided"]
        assert undecided and why in undecided[-1]["detail"]
        assert await jit.find_covering_grant("alice", Action.READ, {EMAIL}, {"email"}, "fp") is None
    finally:
        await runner.cleanup()


async def test_webhooks_retry_with_backoff_and_never_block(make_jit, redis_prefix):
    hits: list[tuple[float, dict]] = []
    slack: list[dict] = []

    async def flaky(request):
        hits.append((time.perf_counter(), await request.json()))
        return web.Response(status=503 if len(hits) < 3 else 200)

    async def slack_hook(request):
        slack.append(await request.json())
        return web.Response(text="ok")

    r1, url = await serve(flaky, "/generic")
    r2, slack_url = await serve(slack_hook, "/slack")
    try:
        notifier = Notifier([url, "http://127.0.0.1:9/unreachable"], [slack_url],
                            retries=3, backoff_s=0.1)
        jit = make_jit(config=JitConfig(redis_prefix=redis_prefix), notifier=notifier)
        t0 = time.perf_counter()
        req = await create(jit)
        assert time.perf_counter() - t0 < 0.5          # delivery happens elsewhere
        await notifier.drain(5)
        assert [h[1]["type"] for h in hits] == ["jit.request.created"] * 3
        gaps = [b[0] - a[0] for a, b in zip(hits, hits[1:])]
        assert gaps[0] >= 0.1 and gaps[1] >= 0.2 and gaps[1] > gaps[0] * 1.3   # exponential backoff
        assert notifier.delivered == 2 and notifier.failed == 1    # the unreachable one gave up
        assert req.id in slack[0]["text"] and "alice" in slack[0]["text"]
    finally:
        await r1.cleanup()
        await r2.cleanup()


def test_slack_text_names_what_matters():
    text = slack_text({"type": "jit.request.denied", "principal": "alice", "request_id": "req-1",
                       "by": "bob", "columns": [["public", "customers", "email"]]})
    assert "request.denied" in text and "public.customers.email" in text and "by bob" in text
