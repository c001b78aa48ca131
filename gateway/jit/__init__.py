"""Just-in-time approval: access requests, time-boxed grants in Redis, wake-ups.

The session asks ``JitService`` (gateway.jit.store) for a covering grant, creates
an access request when there is none, and waits for the decision; the admin API
(gateway.admin) and the CLI (gateway.jit.cli) approve, deny and revoke. The rules
themselves (state transitions, approval validation, grant scope) are pure values in
gateway.jit.model.
"""
from gateway.jit.config import ConfigError, JitConfig
from gateway.jit.model import (
    AccessRequest, Approval, ApprovalOutcome, ApprovalRefused, Grant, IllegalTransition,
    RequestState,
)
from gateway.jit.store import (
    Conflict, JitNotConfigured, JitService, JitUnavailable, NotFound, ReasonRequired,
)
from gateway.jit.tokens import TokenRejected

__all__ = [
    "AccessRequest", "Approval", "ApprovalOutcome", "ApprovalRefused", "ConfigError", "Conflict",
    "Grant", "IllegalTransition", "JitConfig", "JitNotConfigured", "JitService", "JitUnavailable",
    "NotFound", "ReasonRequired", "RequestState", "TokenRejected",
]
