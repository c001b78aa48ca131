"""`piigate requests|grants|tokens` against a live admin API (real port, real Redis)."""
from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import sys
from pathlib import Path

import pytest

from catalog.model import ColumnRef
from gateway.admin import AdminConfig, create_app, hash_token, start_admin
from gateway.jit import JitConfig, JitService, RequestState, cli
from gateway.jit.store import connect_redis
from policies.model import Action, ApprovalRequirement

ROOT = Path(__file__).resolve().parents[3]
EMAIL = ColumnRef("public", "customers", "email")


@pytest.fixture
async def api(redis_url, redis_prefix):
    service = JitService(connect_redis(redis_url), JitConfig(redis_prefix=redis_prefix,
                                                             token_key=b"c" * 32), owns_redis=True)
    config = AdminConfig.from_table({"approvers": [
        {"name": "bob", "token_sha256": hash_token("cli-bob"), "groups": ["dba"]}]}, "t.toml")
    runner = await start_admin(create_app(service, config), "127.0.0.1", 0)
    port = runner.addresses[0][1]
    yield service, f"http://127.0.0.1:{port}"
    await runner.cleanup()
    await service.close()


async def piigate(url: str, *argv: str, token: str | None = "cli-bob") -> tuple[int, str, str]:
    """Run the CLI in a thread (it is synchronous urllib) with --url/--token flags."""
    flags = ["--url", url] + (["--token", token] if token else [])

    def run() -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        saved = os.environ.pop("PIIGATE_ADMIN_TOKEN", None)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = cli.main([*argv, *flags])
        finally:
            if saved is not None:
                os.environ["PIIGATE_ADMIN_TOKEN"] = saved
        return code, out.getvalue(), err.getvalue()

    return await asyncio.to_thread(run)


async def test_module_entry_point_reads_environment(api):
    """`python -m gateway.jit.cli` with PIIGATE_ADMIN_URL / PIIGATE_ADMIN_TOKEN."""
    service, url = api
    req = await new_request(service)
    env = {**os.environ, "PIIGATE_ADMIN_URL": url, "PIIGATE_ADMIN_TOKEN": "cli-bob"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.jit.cli", "requests", "list", "--json", cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err
    assert [r["id"] for r in json.loads(out)["requests"]] == [req.id]


async def new_request(service):
    return await service.create_request(
        "alice", Action.READ, columns={EMAIL}, categories={"email"}, fingerprint="fp",
        statement_key="sk1:" + "ab" * 32,
        requirement=ApprovalRequirement(approver_groups=frozenset({"dba"})),
        redacted_sql="SELECT email FROM customers WHERE id = $1", reason="INC-9 refund")


async def test_list_show_approve_revoke(api):
    service, url = api
    req = await new_request(service)
    code, out, err = await piigate(url, "requests", "list", "--state", "pending")
    assert code == 0, err
    assert req.id in out and "alice" in out and "public.customers.email" in out and "0/1" in out
    code, out, _ = await piigate(url, "requests", "show", req.id)
    assert code == 0 and "INC-9 refund" in out and "SELECT email FROM customers" in out
    assert "key       sk1:" + "ab" * 32 in out
    waiter = asyncio.create_task(service.wait_for_decision(req.id, timeout=20))
    code, out, err = await piigate(url, "requests", "approve", req.id, "--duration", "15m",
                                   "--uses", "1", "--comment", "ok")
    assert code == 0, err
    assert f"approved {req.id}" in out and "uses 1" in out
    kind, grant = await waiter
    assert kind == "approved" and grant.uses_left == 1 and grant.duration_s == 900
    code, out, _ = await piigate(url, "grants", "list", "--json")
    assert code == 0 and [g["id"] for g in json.loads(out)["grants"]] == [grant.id]
    code, out, _ = await piigate(url, "grants", "list")
    assert grant.id in out and "statement SELECT email FROM customers WHERE id = $1 [sk1:abababab...]" in out
    code, out, _ = await piigate(url, "grants", "revoke", grant.id)
    assert code == 0 and f"revoked {grant.id}" in out
    code, out, err = await piigate(url, "grants", "revoke", grant.id)
    assert code == 1 and "HTTP 404" in err


async def test_deny_and_errors(api):
    service, url = api
    req = await new_request(service)
    code, out, err = await piigate(url, "requests", "deny", req.id, "--reason", "use the replica")
    assert code == 0 and "use the replica" in out
    assert (await service.get_request(req.id)).state is RequestState.DENIED
    code, _, err = await piigate(url, "requests", "approve", req.id, "--duration", "60")
    assert code == 1 and "already denied" in err and "HTTP 409" in err
    code, _, err = await piigate(url, "requests", "list", token=None)
    assert code == 1 and "PIIGATE_ADMIN_TOKEN" in err
    code, _, err = await piigate(url, "requests", "list", token="wrong")
    assert code == 1 and "HTTP 401" in err
    code, _, err = await piigate("http://127.0.0.1:9", "requests", "list")
    assert code == 1 and "cannot reach the admin API" in err


async def test_tokens_issue(api):
    service, url = api
    code, out, err = await piigate(url, "tokens", "issue", "--user", "ci-bot", "--action", "read",
                                   "--scope", "columns", "--column", "public.customers.email",
                                   "--ttl", "1h", "--duration", "10m", "--json")
    assert code == 0, err
    token = json.loads(out)["token"]
    grant = await service.redeem_token(token, "ci-bot")
    assert grant.columns == {EMAIL} and grant.how == "token"
