"""The external decision hook: ask a ticketing / on-call system to approve or deny.

The gateway POSTs the access request as JSON to the configured URL, signed with
``X-Piigate-Signature: sha256=<hex HMAC-SHA256 of the body>`` so the receiver can
check it came from us. The answer must be JSON ``{"decision": "approve"|"deny",
"reason": ..., "duration_s": ..., "scope": ..., "uses": ...}`` carrying the same
header computed over *its* body with the shared secret. Anything else (no answer
in time, an HTTP error, a bad or missing signature, unreadable JSON) means "no
decision": the request stays pending for a human, never approved.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any

import aiohttp

from gateway.jit.model import MAX_USES, AccessRequest

SIGNATURE_HEADER = "X-Piigate-Signature"


def signature(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def signature_ok(secret: bytes, body: bytes, header: str | None) -> bool:
    return bool(header) and hmac.compare_digest(signature(secret, body), header.strip())


@dataclass(frozen=True, slots=True)
class HookAnswer:
    decision: str                                    # approve | deny | none
    reason: str = ""
    duration_s: int | None = None
    scope: str | None = None
    uses: int | None = None


class DecisionHook:
    def __init__(self, url: str, secret: bytes, timeout_s: float = 5.0):
        self.url, self.secret, self.timeout_s = url, secret, timeout_s

    async def ask(self, request: AccessRequest) -> HookAnswer:
        body = json.dumps({"type": "piigate.access_request", "request": request.to_dict()},
                          separators=(",", ":"), sort_keys=True).encode()
        headers = {"Content-Type": "application/json",
                   SIGNATURE_HEADER: signature(self.secret, body)}
        try:
            timeout = aiohttp.ClientTimeout(total=self.timeout_s)
            async with aiohttp.ClientSession(timeout=timeout) as http:
                async with http.post(self.url, data=body, headers=headers) as resp:
                    answer = await resp.read()
                    if resp.status != 200:
                        return HookAnswer("none", f"decision hook answered HTTP {resp.status}")
                    if not signature_ok(self.secret, answer, resp.headers.get(SIGNATURE_HEADER)):
                        return HookAnswer("none", "decision hook answer has a missing or bad signature")
        except (asyncio.TimeoutError, TimeoutError):
            return HookAnswer("none", f"decision hook did not answer within {self.timeout_s}s")
        except aiohttp.ClientError as e:
            return HookAnswer("none", f"decision hook unreachable: {e}")
        return parse_answer(answer)


def parse_answer(body: bytes) -> HookAnswer:
    try:
        d: Any = json.loads(body)
    except ValueError:
        return HookAnswer("none", "decision hook answer is not JSON")
    if not isinstance(d, dict) or d.get("decision") not in ("approve", "deny"):
        return HookAnswer("none", "decision hook answer lacks decision: approve|deny")
    duration, uses, scope = d.get("duration_s"), d.get("uses"), d.get("scope")
    if duration is not None and (not isinstance(duration, int) or isinstance(duration, bool) or duration <= 0):
        return HookAnswer("none", "decision hook answer has an invalid duration_s")
    if uses is not None and (not isinstance(uses, int) or isinstance(uses, bool) or not 1 <= uses <= MAX_USES):
        return HookAnswer("none", "decision hook answer has an invalid uses")
    if scope is not None and scope not in ("statement", "columns"):
        return HookAnswer("none", "decision hook answer has an invalid scope")
    return HookAnswer(d["decision"], str(d.get("reason") or ""), duration, scope, uses)
