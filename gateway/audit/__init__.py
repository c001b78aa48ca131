"""The audit trail: records free of PII, a signed hash chain, durable sinks.

Public API::

    from gateway.audit import AuditConfig, AuditTrail, AuditUnavailable, records
    trail = await AuditTrail(AuditConfig.from_table(cfg["audit"], "piigate.toml")).start()
    rec = await trail.record(records.statement_decision(...), required=True)

See records.py (what is recorded), chain.py (hash chain, checkpoints, verify),
sinks.py (file / Redis stream / stdout), trail.py (the writer), query.py and
cli.py (`piigate audit verify|search|report`).
"""
from gateway.audit import records
from gateway.audit.chain import VerifyResult, verify
from gateway.audit.config import AuditConfig
from gateway.audit.records import redact_sql, scrub_message
from gateway.audit.trail import AuditTrail, AuditUnavailable

__all__ = ["AuditConfig", "AuditTrail", "AuditUnavailable", "VerifyResult", "records",
           "redact_sql", "scrub_message", "verify"]
