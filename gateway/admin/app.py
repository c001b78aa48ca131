"""The admin HTTP API (aiohttp), the approval console and /metrics.

Every route is declared once in ``ROUTES``; the router and the OpenAPI document
are both built from it, so the document cannot forget a route.

Errors are JSON ``{"error": {"code": ..., "message": ...}}``: 400 malformed input,
401 no or unknown bearer token, 403 not allowed (self-approval, wrong group, TOTP),
404 unknown id, 409 already decided, 422 terms the policy does not allow (duration,
scope, uses), 503 Redis unavailable.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any, Awaitable, Callable, Mapping

from aiohttp import web

from catalog.model import ColumnRef
from gateway.admin.config import AdminConfig, Approver
from gateway.admin.metrics import Metrics
from gateway.jit.model import MAX_USES, ApprovalRefused, RequestState
from gateway.jit.store import (
    Conflict, JitNotConfigured, JitService, JitUnavailable, NotFound,
)
from policies.model import Action

log = logging.getLogger("piigate.admin")

HealthProbe = Callable[[], Awaitable[Mapping[str, Any]]]

SERVICE = web.AppKey("service", JitService)
CONFIG = web.AppKey("config", AdminConfig)
METRICS = web.AppKey("metrics", Metrics)
PROBE = web.AppKey("probe", object)
APPROVER = web.RequestKey("approver", Approver)

_REFUSAL_STATUS = {"self_approval": 403, "not_approver": 403, "totp_required": 403,
                   "totp_invalid": 403, "totp_not_allowed": 403, "duplicate": 409,
                   "not_pending": 409, "duration": 422, "scope": 422, "uses": 422}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str):
        self.status, self.code, self.message = status, code, message
        super().__init__(message)


def error_response(status: int, code: str, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status,
                             headers=headers or None)


# ---------------------------------------------------------------- input helpers

_DURATION = re.compile(r"^\s*(\d+)\s*(s|m|h|d)?\s*$")
_UNIT = {None: 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: Any, field: str) -> int:
    """Seconds from 900, "900", "15m", "2h" or "1d"."""
    if isinstance(value, bool):
        raise ApiError(400, "bad_input", f"{field}: expected seconds or a duration like '15m'")
    if isinstance(value, int):
        seconds = value
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = int(m.group(1)) * _UNIT[m.group(2)]
    else:
        raise ApiError(400, "bad_input", f"{field}: expected seconds or a duration like '15m', "
                                         f"got {value!r}")
    if seconds <= 0:
        raise ApiError(400, "bad_input", f"{field}: must be positive")
    return seconds


async def read_body(request: web.Request, allowed: set[str], required: set[str] = frozenset()
                    ) -> dict[str, Any]:
    if not request.can_read_body:
        body: Any = {}
    else:
        try:
            body = json.loads(await request.read() or b"{}")
        except ValueError as e:
            raise ApiError(400, "bad_json", f"request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "bad_input", "request body must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ApiError(400, "bad_input", f"unknown field(s) {', '.join(unknown)}; "
                                         f"expected some of {', '.join(sorted(allowed))}")
    missing = sorted(f for f in required if f not in body)
    if missing:
        raise ApiError(400, "bad_input", f"missing field(s) {', '.join(missing)}")
    return body


def _opt_str(body: Mapping[str, Any], key: str, limit: int = 2000) -> str | None:
    v = body.get(key)
    if v is None:
        return None
    if not isinstance(v, str):
        raise ApiError(400, "bad_input", f"{key}: expected a string")
    if len(v) > limit:
        raise ApiError(400, "bad_input", f"{key}: longer than {limit} characters")
    return v


def _uses(body: Mapping[str, Any]) -> int | None:
    v = body.get("uses")
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_USES:
        raise ApiError(400, "bad_input", f"uses: expected an integer from 1 to {MAX_USES} or null (unlimited)")
    return v


def _scope(body: Mapping[str, Any], default: str) -> str:
    v = body.get("scope", default)
    if v not in ("statement", "columns"):
        raise ApiError(400, "bad_input", f"scope: expected 'statement' or 'columns', got {v!r}")
    return v


def approver_of(request: web.Request) -> Approver:
    return request[APPROVER]


# ---------------------------------------------------------------- handlers


async def console(request: web.Request) -> web.Response:
    html = resources.files("gateway.admin").joinpath("console.html").read_text()
    return web.Response(text=html, content_type="text/html",
                        headers={"Content-Security-Policy": "default-src 'self'; "
                                 "script-src 'unsafe-inline' 'self'; style-src 'unsafe-inline'; "
                                 # no other page may frame the console and steer an
                                 # approver's clicks onto Approve (clickjacking)
                                 "frame-ancestors 'none'"})


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    checks: dict[str, Any] = {}
    try:
        checks["redis"] = await request.app[SERVICE].ping()
    except JitUnavailable:
        checks["redis"] = False
    probe = request.app[PROBE]
    if probe is not None:
        try:
            checks.update(await probe())
        except Exception as e:      # a broken probe means not ready, and says why
            checks[f"probe_error:{type(e).__name__}"] = False
    ok = all(_healthy(v) for v in checks.values())
    return web.json_response({"ready": ok, "checks": checks}, status=200 if ok else 503)


def _healthy(value: Any) -> bool:
    """Probe values: booleans and "ok" judge; other strings are failures ("failing: ...");
    numbers are information (a session count) and never fail readiness."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return value == "ok"
    return True


async def metrics(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    try:
        pending, up = await service.count_pending(), True
    except JitUnavailable:
        pending, up = None, False
    text = request.app[METRICS].render(requests_pending=pending, redis_up=up)
    return web.Response(body=text.encode(),
                        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


async def whoami(request: web.Request) -> web.Response:
    a = approver_of(request)
    return web.json_response({"name": a.name, "groups": sorted(a.groups),
                              "totp_enrolled": a.totp_secret is not None})


async def list_requests(request: web.Request) -> web.Response:
    state = request.query.get("state")
    if state is not None and state not in {s.value for s in RequestState}:
        raise ApiError(400, "bad_input", f"state: expected one of "
                                         f"{', '.join(s.value for s in RequestState)}, got {state!r}")
    user = request.query.get("user") or None
    limit_text = request.query.get("limit", "500")
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= 10_000:
        raise ApiError(400, "bad_input", "limit: expected an integer from 1 to 10000")
    found = await request.app[SERVICE].list_requests(state=state, user=user, limit=int(limit_text))
    return web.json_response({"requests": [r.to_dict() for r in found]})


async def get_request(request: web.Request) -> web.Response:
    found = await request.app[SERVICE].get_request(request.match_info["id"])
    return web.json_response(found.to_dict())


async def approve(request: web.Request) -> web.Response:
    body = await read_body(request, {"duration", "scope", "uses", "comment", "totp"}, {"duration"})
    service, who = request.app[SERVICE], approver_of(request)
    rid = request.match_info["id"]
    outcome = await service.approve(
        rid, who.name, who.groups, parse_duration(body["duration"], "duration"),
        _scope(body, "statement"), _uses(body), _opt_str(body, "comment") or "",
        totp_code=_opt_str(body, "totp", 16))
    req = outcome.request
    need = req.approval_requirement.approvals
    return web.json_response({
        "request": req.to_dict(), "grant": outcome.grant.to_dict() if outcome.grant else None,
        "quorum": {"needed": need, "have": len({a.approver for a in req.approvals})}},
        status=201 if outcome.grant else 202)


async def deny(request: web.Request) -> web.Response:
    body = await read_body(request, {"reason"}, {"reason"})
    reason = _opt_str(body, "reason")
    if not reason or not reason.strip():
        raise ApiError(400, "bad_input", "reason: the requester is told why; it must not be empty")
    who = approver_of(request)
    denied = await request.app[SERVICE].deny(request.match_info["id"], who.name, reason,
                                             approver_groups=who.groups)
    return web.json_response(denied.to_dict())


async def list_grants(request: web.Request) -> web.Response:
    user = request.query.get("user") or None
    grants = await request.app[SERVICE].list_grants(principal=user)
    return web.json_response({"grants": [g.to_dict() for g in grants]})


async def revoke(request: web.Request) -> web.Response:
    body = await read_body(request, {"reason"})
    # (the reason was read and dropped: the audit record now has it, redacted)
    grant = await request.app[SERVICE].revoke(request.match_info["id"], approver_of(request).name,
                                              reason=_opt_str(body, "reason"))
    return web.json_response({"revoked": grant.to_dict()})


async def issue_token(request: web.Request) -> web.Response:
    body = await read_body(request, {"user", "action", "scope", "columns", "categories",
                                     "statement_key", "fingerprint", "ttl", "duration", "uses"},
                           {"user", "action", "scope", "ttl", "duration"})
    who, cfg = approver_of(request), request.app[CONFIG]
    if cfg.token_issuer_groups and not (who.groups & cfg.token_issuer_groups):
        raise ApiError(403, "not_issuer", f"{who.name} is not in any of the token issuer groups "
                                          f"{sorted(cfg.token_issuer_groups)}")
    user = _opt_str(body, "user", 200)
    if not user:
        raise ApiError(400, "bad_input", "user: expected the gateway user the token is for")
    try:
        action = Action(body["action"])
    except ValueError:
        raise ApiError(400, "bad_input", f"action: expected one of "
                                         f"{', '.join(a.value for a in Action)}") from None
    columns_raw, cats = body.get("columns", []), body.get("categories", [])
    if not isinstance(columns_raw, list) or not all(isinstance(c, str) for c in columns_raw):
        raise ApiError(400, "bad_input", "columns: expected a list of 'schema.table.column'")
    if not isinstance(cats, list) or not all(isinstance(c, str) for c in cats):
        raise ApiError(400, "bad_input", "categories: expected a list of category names")
    try:
        columns = [ColumnRef.parse(c) for c in columns_raw]
    except ValueError as e:
        raise ApiError(400, "bad_input", f"columns: {e}") from None
    uses = _uses(body) if "uses" in body else 1
    service = request.app[SERVICE]
    try:
        token, claims = service.issue_token(
            user, action, _scope(body, "statement"), issued_by=who.name,
            ttl_s=parse_duration(body["ttl"], "ttl"),
            duration_s=parse_duration(body["duration"], "duration"), columns=columns,
            categories=cats, fingerprint=_opt_str(body, "fingerprint", 200),
            statement_key=_opt_str(body, "statement_key", 200), uses=uses,
            issuer_groups=who.groups)
    except ValueError as e:
        raise ApiError(422, "bad_terms", str(e)) from None
    await service.record_token_issued(claims)
    return web.json_response({"token": token, "jti": claims.jti, "user": claims.sub,
                              "expires_at": claims.exp, "scope": claims.scope,
                              "how_to_use": f"SET piigate.grant_token = '{token}';"}, status=201)


# ---------------------------------------------------------------- route table


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    summary: str
    auth: bool = True
    body: Mapping[str, Any] | None = None            # JSON schema of the request body
    #: query parameters: name -> JSON schema of the value
    query: Mapping[str, Mapping[str, Any]] | None = None
    statuses: tuple[int, ...] = (200,)


API = "/api/v1"
#: what parse_duration accepts: positive seconds, or a positive count of s/m/h/d
_DUR = {"oneOf": [{"type": "integer", "minimum": 1},
                  {"type": "string", "pattern": r"^\s*0*[1-9]\d*\s*[smhd]?\s*$"}]}

ROUTES: tuple[Route, ...] = (
    Route("GET", "/", console, "The approval console (HTML).", auth=False),
    Route("GET", f"{API}/health", health, "Liveness: the admin server answers.", auth=False),
    Route("GET", f"{API}/ready", ready, "Readiness: Redis and the gateway's own probes.",
          auth=False, statuses=(200, 503)),
    Route("GET", f"{API}/metrics", metrics, "Prometheus metrics (text format 0.0.4).", auth=False),
    Route("GET", f"{API}/openapi.json", openapi, "This document.", auth=False),
    Route("GET", f"{API}/whoami", whoami, "The approver the bearer token belongs to."),
    Route("GET", f"{API}/requests", list_requests, "List access requests, newest first.",
          query={"state": {"enum": [st.value for st in RequestState]}, "user": {"type": "string"},
                 "limit": {"type": "string", "pattern": r"^0*([1-9]\d{0,3}|10000)$"}},
          statuses=(200, 400)),
    Route("GET", f"{API}/requests/{{id}}", get_request, "One access request.", statuses=(200, 404)),
    Route("POST", f"{API}/requests/{{id}}/approve", approve,
          "Approve (201 with the grant when the quorum is met, 202 while more approvals are needed).",
          body={"type": "object", "required": ["duration"], "additionalProperties": False,
                "properties": {"duration": _DUR, "scope": {"enum": ["statement", "columns"]},
                               "uses": {"type": ["integer", "null"], "minimum": 1, "maximum": MAX_USES},
                               "comment": {"type": "string", "maxLength": 2000},
                               "totp": {"type": "string", "maxLength": 16}}},
          statuses=(201, 202, 400, 403, 404, 409, 422)),
    Route("POST", f"{API}/requests/{{id}}/deny", deny, "Deny with a reason the requester sees.",
          body={"type": "object", "required": ["reason"], "additionalProperties": False,
                "properties": {"reason": {"type": "string", "minLength": 1, "maxLength": 2000}}},
          statuses=(200, 400, 403, 404, 409)),
    Route("GET", f"{API}/grants", list_grants, "Live grants, soonest expiry first.",
          query={"user": {"type": "string"}}),
    Route("POST", f"{API}/grants/{{id}}/revoke", revoke, "Revoke a grant on every instance at once.",
          body={"type": "object", "additionalProperties": False,
                "properties": {"reason": {"type": "string", "maxLength": 2000}}}, statuses=(200, 400, 404)),
    Route("POST", f"{API}/tokens", issue_token,
          "Issue a signed single-use grant token for another user (SET piigate.grant_token).",
          body={"type": "object", "required": ["user", "action", "scope", "ttl", "duration"],
                "additionalProperties": False,
                "properties": {"user": {"type": "string", "minLength": 1, "maxLength": 200},
                               "action": {"enum": [a.value for a in Action]},
                               "scope": {"enum": ["statement", "columns"]},
                               "columns": {"type": "array", "items": {"type": "string"}},
                               "categories": {"type": "array", "items": {"type": "string"}},
                               "statement_key": {"type": "string", "maxLength": 200},
                               "fingerprint": {"type": "string", "maxLength": 200}, "ttl": _DUR,
                               "duration": _DUR,
                               "uses": {"type": ["integer", "null"], "minimum": 1, "maximum": MAX_USES}}},
          statuses=(201, 400, 403, 422, 501)),
)

_PUBLIC = {(r.method, r.path) for r in ROUTES if not r.auth}


def openapi_document() -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    error = {"$ref": "#/components/schemas/Error"}
    for r in ROUTES:
        op: dict[str, Any] = {"summary": r.summary, "operationId": r.handler.__name__, "responses": {}}
        for status in sorted(set(r.statuses) | ({401} if r.auth else set())):
            content = {"application/json": {"schema": error}} if status >= 400 else {}
            op["responses"][str(status)] = {"description": _STATUS_TEXT.get(status, "OK"),
                                            **({"content": content} if content else {})}
        if r.auth:
            op["security"] = [{"bearer": []}]
        else:
            op["security"] = []
        params = [{"name": q, "in": "query", "required": False, "schema": dict(schema)}
                  for q, schema in (r.query or {}).items()]
        if "{id}" in r.path:
            params.append({"name": "id", "in": "path", "required": True, "schema": {"type": "string"}})
        if params:
            op["parameters"] = params
        if r.body is not None:
            op["requestBody"] = {"required": bool(r.body.get("required")),
                                 "content": {"application/json": {"schema": r.body}}}
        paths.setdefault(r.path, {})[r.method.lower()] = op
    return {
        "openapi": "3.0.3",
        "info": {"title": "piigate admin API", "version": "1",
                 "description": "Just-in-time approval of held statements: access requests, "
                                "grants, one-time tokens, health and metrics."},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": {"type": "object", "required": ["error"], "properties": {
                "error": {"type": "object", "required": ["code", "message"], "properties": {
                    "code": {"type": "string"}, "message": {"type": "string"}}}}}},
        },
    }


_STATUS_TEXT = {200: "OK", 201: "Created", 202: "Accepted (more approvals needed)",
                400: "Malformed input", 401: "No or unknown bearer token",
                403: "Not allowed", 404: "Unknown id", 409: "Already decided",
                422: "Terms the policy does not allow", 501: "Not configured on this gateway",
                503: "Not ready"}


# ---------------------------------------------------------------- middleware and app


@web.middleware
async def errors_and_auth(request: web.Request, handler: Callable) -> web.StreamResponse:
    try:
        route = request.match_info.route
        key = (request.method, getattr(route.resource, "canonical", request.path))
        if key not in _PUBLIC and request.path.startswith(API) and route.resource is not None:
            request[APPROVER] = _authenticate(request)
        return await handler(request)
    except ApiError as e:
        headers = {"WWW-Authenticate": 'Bearer realm="piigate"'} if e.status == 401 else {}
        return error_response(e.status, e.code, e.message, **headers)
    except ApprovalRefused as e:
        return error_response(_REFUSAL_STATUS.get(e.code, 403), e.code, str(e))
    except NotFound as e:
        return error_response(404, "not_found", str(e))
    except Conflict as e:
        return error_response(409, "conflict", str(e))
    except JitUnavailable as e:
        return error_response(503, "unavailable", str(e))
    except JitNotConfigured as e:
        return error_response(501, "not_configured", str(e))
    except web.HTTPException as e:
        if request.path.startswith(API) and e.status >= 400:
            # (a 405 must say which methods the resource takes)
            keep = {k: e.headers[k] for k in ("Allow",) if k in e.headers}
            return error_response(e.status, "http", f"{e.reason}: {request.method} {request.path}", **keep)
        raise
    except ValueError as e:
        return error_response(400, "bad_input", str(e))


def _authenticate(request: web.Request) -> Approver:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthenticated", "send Authorization: Bearer <your approver token>")
    approver = request.app[CONFIG].approver_for_token(token.strip())
    if approver is None:
        raise ApiError(401, "unauthenticated", "unknown bearer token")
    return approver


def create_app(service: JitService, config: AdminConfig, metrics: Metrics | None = None,
               health_probe: HealthProbe | None = None) -> web.Application:
    """The admin application. ``health_probe`` (async, returns {name: ok}) feeds /ready."""
    app = web.Application(middlewares=[errors_and_auth], client_max_size=64 * 1024)
    app[SERVICE] = service
    app[CONFIG] = config
    app[METRICS] = metrics or Metrics()
    app[PROBE] = health_probe
    for a in config.approvers:
        if a.totp_secret is not None:
            service.enroll_totp(a.name, a.totp_secret)
    for r in ROUTES:
        app.router.add_route(r.method, r.path, r.handler)
    app.on_response_prepare.append(_safety_headers)
    return app


async def _safety_headers(request: web.Request, response: web.StreamResponse) -> None:
    """On every answer, errors too: no content sniffing (a JSON body holding an
    attacker's reason is never read as HTML) and no framing (older browsers that
    ignore CSP frame-ancestors)."""
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")


async def start_admin(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Serve ``app`` on host:port; call ``await runner.cleanup()`` to stop."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
