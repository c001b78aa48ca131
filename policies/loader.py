"""The policy file (TOML, kept in version control), validated at load.

Every problem raises ``PolicyError`` naming the file, the line and what is wrong.
``tomllib`` keeps no positions, so the line of an offending rule or key is found
by scanning the text: the n-th ``[[rule]]`` header, then ``key =`` below it.

Layout (see examples/policy.toml for a commented example)::

    [defaults]            # effects when no rule matches
    pii_read = "mask"     # write_pii, delete_pii, export, unknown, ddl, call, session,
                          # dangerous_functions, non_pii; extra_dangerous_functions = [...]
    [masking]             # per-category default strategy names, and `default`
    email = "partial_email"
    [masking.strategies.last4]      # named strategies with parameters
    kind = "partial"
    keep = 4
    [[rule]]              # name, principals/roles, actions, on-selectors, effect, ...
    [[auto_approve]]      # name, roles, actions, categories, reason_pattern, when, ...

An *unrestricted* principal (not under PII policy, e.g. a DBA role) is a rule
with ``effect = "allow"``, ``actions = ["*"]`` and ``categories = ["*"]``.
"""
from __future__ import annotations

import hashlib
import ipaddress
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from catalog.model import ColumnRef, RelationRef, Sensitivity
from policies.masking import BUILTIN_STRATEGIES, STRATEGY_KINDS, validate_strategy
from policies.model import (ANY, Action, ApprovalRequirement, AutoApproveRule, Conditions,
                            Defaults, Effect, MaskingConfig, MaskStrategy, Policy, Rule,
                            TimeWindow)


class PolicyError(ValueError):
    """A policy file problem: ``file:line: problem``."""

    def __init__(self, path: str, line: int, problem: str):
        self.path, self.line, self.problem = path, line, problem
        super().__init__(f"{path}:{line}: {problem}" if line else f"{path}: {problem}")


ACTIONS = frozenset(a.value for a in Action) | {ANY}
WEEKDAYS = {"mon": 0, "tue": 1, "wed": 2, "thu": 3, "fri": 4, "sat": 5, "sun": 6}

#: category defaults when the file's [masking] does not say (safe by default: dates of birth
#: are redacted, since "year" maps a 1 January birthday onto itself;
#: identifiers that are short or low-entropy are redacted, never partially shown)
DEFAULT_CATEGORY_STRATEGIES = {
    "email": "partial_email", "ssn": "redact", "national_id": "redact",
    "card_number": "redact", "iban": "redact", "dob": "redact", "name": "hash",
    "phone": "redact", "address": "redact", "ip_address": "redact", "free_text": "redact",
}

_RULE_KEYS = {"name", "principals", "roles", "actions", "on", "categories", "sensitivity",
              "columns", "tables", "effect", "mask", "approval", "when", "row_budget"}
_ON_KEYS = {"categories", "sensitivity", "columns", "tables"}
_APPROVAL_KEYS = {"approver_groups", "approvals", "max_duration", "reason_required",
                  "reason_pattern", "scopes", "self_service_totp", "approver_totp"}
_WHEN_KEYS = {"time", "weekdays", "client_cidrs", "application_name"}
_AUTO_KEYS = {"name", "roles", "principals", "actions", "categories", "reason_pattern",
              "when", "max_rows", "duration"}
_DEFAULT_KEYS = {"pii_read", "write_pii", "delete_pii", "export", "unknown", "ddl", "call",
                 "session", "dangerous_functions", "non_pii", "extra_dangerous_functions"}
_TOP_KEYS = {"version", "defaults", "masking", "rule", "auto_approve"}


@dataclass
class _Lines:
    """Finds lines in the raw text for error messages."""
    text: str

    def __post_init__(self) -> None:
        self.lines = self.text.splitlines()

    def header(self, name: str, index: int = 0) -> int:
        """Line (1-based) of the index-th ``[name]`` / ``[[name]]`` header, or 0."""
        pat = re.compile(r"^\s*\[\[?\s*" + re.escape(name) + r"\s*\]\]?\s*(#.*)?$")
        seen = 0
        for i, line in enumerate(self.lines):
            if pat.match(line):
                if seen == index:
                    return i + 1
                seen += 1
        return 0

    def key(self, key: str, start: int = 0) -> int:
        """First line at or after ``start`` where ``key =`` (or ``key.`` / inline) appears
        before the next array-of-tables header; falls back to ``start``."""
        pat = re.compile(r"(^|[\s{,.\[])" + re.escape(key) + r"\s*(=|\]|\.)")
        for i in range(max(start - 1, 0), len(self.lines)):
            line = self.lines[i]
            if i >= start and re.match(r"^\s*\[\[", line):
                break
            if pat.search(line.split("#", 1)[0]):
                return i + 1
        return start


def default_policy() -> Policy:
    """The policy without a file: the safe defaults and the category strategies."""
    return parse_policy("", "<default policy>")


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file; raises ``PolicyError``."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise PolicyError(str(p), 0, f"cannot read the policy file: {e.strerror or e}") from None
    return parse_policy(text, str(p))


def parse_policy(text: str, source: str = "<policy>") -> Policy:
    """Validate policy text; ``source`` names it in errors."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"line (\d+)", str(e))
        raise PolicyError(source, int(m.group(1)) if m else 0, f"invalid TOML: {e}") from None
    return _Builder(text, source).build(data)


class _Builder:
    def __init__(self, text: str, source: str):
        self.lines = _Lines(text)
        self.source = source
        self.text = text

    def fail(self, line: int, problem: str) -> PolicyError:
        return PolicyError(self.source, line, problem)

    # --- top level -------------------------------------------------------------
    def build(self, data: dict) -> Policy:
        for k in data:
            if k not in _TOP_KEYS:
                raise self.fail(self.lines.key(k), f"unknown top-level key {k!r}; expected one of "
                                + ", ".join(sorted(_TOP_KEYS)))
        defaults = self.defaults(data.get("defaults", {}))
        strategies, masking = self.masking(data.get("masking", {}))
        rules_data = data.get("rule", [])
        if not isinstance(rules_data, list):
            raise self.fail(self.lines.key("rule"), "`rule` must be an array of tables: [[rule]]")
        rules = tuple(self.rule(i, r, strategies) for i, r in enumerate(rules_data))
        seen: dict[str, int] = {}
        for r in rules:
            if r.name in seen:
                raise self.fail(r.line, f"rule name {r.name!r} used twice (first at line {seen[r.name]}); "
                                "rule names must be unique: decisions and audit records name them")
            seen[r.name] = r.line
        autos_data = data.get("auto_approve", [])
        if not isinstance(autos_data, list):
            raise self.fail(self.lines.key("auto_approve"), "`auto_approve` must be [[auto_approve]] tables")
        autos = tuple(self.auto(i, a) for i, a in enumerate(autos_data))
        version = hashlib.sha256(self.text.encode()).hexdigest()[:16]
        return Policy(rules, defaults, masking, autos, version, self.source)

    def defaults(self, d: Any) -> Defaults:
        start = self.lines.header("defaults")
        if not isinstance(d, dict):
            raise self.fail(start, "[defaults] must be a table")
        kw: dict[str, Any] = {}
        for k, v in d.items():
            line = self.lines.key(k, start)
            if k not in _DEFAULT_KEYS:
                raise self.fail(line, f"unknown key {k!r} in [defaults]; expected one of "
                                + ", ".join(sorted(_DEFAULT_KEYS)))
            if k == "extra_dangerous_functions":
                kw[k] = tuple(self.str_list(v, line, k))
            else:
                kw[k] = self.effect(v, line, f"[defaults] {k}")
        return Defaults(**kw)

    def masking(self, d: Any) -> tuple[dict[str, MaskStrategy], MaskingConfig]:
        start = self.lines.header("masking")
        if not isinstance(d, dict):
            raise self.fail(start, "[masking] must be a table")
        strategies = dict(BUILTIN_STRATEGIES)
        for name, spec in (d.get("strategies") or {}).items():
            line = self.lines.header(f"masking.strategies.{name}") or self.lines.key(name, start)
            if not isinstance(spec, dict) or "kind" not in spec:
                raise self.fail(line, f"strategy {name!r} needs `kind = ` one of "
                                + ", ".join(sorted(STRATEGY_KINDS)))
            params = {k: v for k, v in spec.items() if k != "kind"}
            strat = MaskStrategy(str(spec["kind"]), params)
            problem = validate_strategy(strat)
            if problem:
                raise self.fail(line, f"strategy {name!r}: {problem}")
            strategies[name] = strat
        by_cat = {c: strategies[s] for c, s in DEFAULT_CATEGORY_STRATEGIES.items()}
        default = strategies["redact"]
        for k, v in d.items():
            if k == "strategies":
                continue
            line = self.lines.key(k, start)
            if not isinstance(v, str) or v not in strategies:
                raise self.fail(line, f"[masking] {k} = {v!r}: not a strategy; use one of "
                                + ", ".join(sorted(strategies)) + " or define [masking.strategies.<name>]")
            if k == "default":
                default = strategies[v]
            else:
                by_cat[k] = strategies[v]
        return strategies, MaskingConfig(by_cat, default)

    # --- rules -----------------------------------------------------------------
    def rule(self, i: int, r: Any, strategies: dict[str, MaskStrategy]) -> Rule:
        start = self.lines.header("rule", i)
        where = f"rule #{i + 1}"
        if not isinstance(r, dict):
            raise self.fail(start, f"{where} must be a table")
        for k in r:
            if k not in _RULE_KEYS:
                raise self.fail(self.lines.key(k, start), f"{where}: unknown key {k!r}; expected one of "
                                + ", ".join(sorted(_RULE_KEYS)))
        name = r.get("name")
        if not isinstance(name, str) or not name.strip():
            raise self.fail(start, f"{where} needs a `name` (decisions and audit records name the rule)")
        where = f"rule {name!r}"
        if "effect" not in r:
            raise self.fail(start, f"{where} needs an `effect`: allow, mask, approve or deny")
        effect = self.effect(r["effect"], self.lines.key("effect", start), where)
        principals = frozenset(self.str_list(r.get("principals", []), self.lines.key("principals", start), "principals"))
        roles = frozenset(self.str_list(r.get("roles", []), self.lines.key("roles", start), "roles"))
        if not principals and not roles:
            raise self.fail(start, f"{where} matches nobody: give `principals` (user names) or `roles`"
                            " (use [\"*\"] for everyone)")
        actions = self.actions(r.get("actions", [ANY]), self.lines.key("actions", start), where)
        on = dict(r.get("on", {}))
        if not isinstance(r.get("on", {}), dict):
            raise self.fail(self.lines.key("on", start), f"{where}: `on` must be a table")
        for k in _ON_KEYS:
            if k in r:
                on[k] = r[k]
        for k in on:
            if k not in _ON_KEYS:
                raise self.fail(self.lines.key(k, start), f"{where}: unknown key {k!r} in `on`")
        categories = frozenset(self.str_list(on.get("categories", []), self.lines.key("categories", start), "categories"))
        sens = None
        if "sensitivity" in on:
            try:
                sens = int(Sensitivity.parse(str(on["sensitivity"])))
            except ValueError as e:
                raise self.fail(self.lines.key("sensitivity", start), f"{where}: {e}") from None
        columns = frozenset(self.column(c, self.lines.key("columns", start), where)
                            for c in self.str_list(on.get("columns", []), self.lines.key("columns", start), "columns"))
        tables = frozenset(self.table(t, self.lines.key("tables", start), where)
                           for t in self.str_list(on.get("tables", []), self.lines.key("tables", start), "tables"))
        mask = None
        if "mask" in r:
            line = self.lines.key("mask", start)
            if effect is not Effect.MASK:
                raise self.fail(line, f"{where}: `mask` only makes sense with effect = \"mask\"")
            if r["mask"] not in strategies:
                raise self.fail(line, f"{where}: mask = {r['mask']!r} is not a strategy; use one of "
                                + ", ".join(sorted(strategies)))
            mask = strategies[r["mask"]]
        approval = None
        if "approval" in r:
            if effect is not Effect.APPROVE:
                raise self.fail(self.lines.key("approval", start),
                                f"{where}: an approval block only makes sense with effect = \"approve\"")
            approval = self.approval(r["approval"], start, where)
        elif effect is Effect.APPROVE:
            approval = ApprovalRequirement()
        when = self.when(r["when"], start, where) if "when" in r else None
        budget = None
        if "row_budget" in r:
            budget = self.positive_int(r["row_budget"], self.lines.key("row_budget", start), f"{where}: row_budget")
        rule = Rule(name=name, effect=effect, principals=principals, roles=roles, actions=actions,
                    categories=categories, min_sensitivity=sens, columns=columns, tables=tables,
                    mask=mask, approval=approval, when=when, row_budget=budget, line=start)
        if ANY in categories and effect is not Effect.ALLOW and len(categories) > 1:
            raise self.fail(self.lines.key("categories", start),
                            f"{where}: categories mixes \"*\" with named categories; use one or the other")
        return rule

    def approval(self, a: Any, start: int, where: str) -> ApprovalRequirement:
        if not isinstance(a, dict):
            raise self.fail(self.lines.key("approval", start), f"{where}: approval must be a table")
        for k in a:
            if k not in _APPROVAL_KEYS:
                raise self.fail(self.lines.key(k, start), f"{where}: unknown approval key {k!r}; expected one of "
                                + ", ".join(sorted(_APPROVAL_KEYS)))
        kw: dict[str, Any] = {}
        if "approver_groups" in a:
            kw["approver_groups"] = frozenset(self.str_list(a["approver_groups"], self.lines.key("approver_groups", start), "approver_groups"))
        if "approvals" in a:
            kw["approvals"] = self.positive_int(a["approvals"], self.lines.key("approvals", start), f"{where}: approvals")
        if "max_duration" in a:
            kw["max_duration_s"] = self.duration(a["max_duration"], self.lines.key("max_duration", start), where)
        for flag in ("reason_required", "self_service_totp", "approver_totp"):
            if flag in a:
                if not isinstance(a[flag], bool):
                    raise self.fail(self.lines.key(flag, start), f"{where}: {flag} must be true or false")
                kw[flag] = a[flag]
        if "reason_pattern" in a:
            kw["reason_pattern"] = self.regex(a["reason_pattern"], self.lines.key("reason_pattern", start), where)
            kw.setdefault("reason_required", True)
        if "scopes" in a:
            scopes = frozenset(self.str_list(a["scopes"], self.lines.key("scopes", start), "scopes"))
            bad = scopes - {"statement", "columns", "categories"}
            if bad or not scopes:
                raise self.fail(self.lines.key("scopes", start),
                                f"{where}: scopes {sorted(bad) or '[]'} invalid; use statement, columns, categories")
            kw["scopes"] = scopes
        return ApprovalRequirement(**kw)

    def when(self, w: Any, start: int, where: str) -> Conditions:
        if not isinstance(w, dict):
            raise self.fail(self.lines.key("when", start), f"{where}: `when` must be a table")
        for k in w:
            if k not in _WHEN_KEYS:
                raise self.fail(self.lines.key(k, start), f"{where}: unknown condition {k!r}; expected one of "
                                + ", ".join(sorted(_WHEN_KEYS)))
        window = None
        if "time" in w:
            line = self.lines.key("time", start)
            m = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*", str(w["time"]))
            if not m or int(m[1]) > 24 or int(m[3]) > 24 or int(m[2]) > 59 or int(m[4]) > 59:
                raise self.fail(line, f"{where}: time {w['time']!r} must look like \"08:00-18:00\" (UTC)")
            window = TimeWindow(int(m[1]) * 60 + int(m[2]), int(m[3]) * 60 + int(m[4]))
        days: set[int] = set()
        for d in self.str_list(w.get("weekdays", []), self.lines.key("weekdays", start), "weekdays"):
            if d.lower()[:3] not in WEEKDAYS:
                raise self.fail(self.lines.key("weekdays", start), f"{where}: weekday {d!r}; use mon..sun")
            days.add(WEEKDAYS[d.lower()[:3]])
        cidrs = self.str_list(w.get("client_cidrs", []), self.lines.key("client_cidrs", start), "client_cidrs")
        for c in cidrs:
            try:
                ipaddress.ip_network(c, strict=False)
            except ValueError:
                raise self.fail(self.lines.key("client_cidrs", start), f"{where}: {c!r} is not a CIDR") from None
        apps = w.get("application_name", [])
        if isinstance(apps, str):
            apps = [apps]
        apps = self.str_list(apps, self.lines.key("application_name", start), "application_name")
        return Conditions(window, frozenset(days), tuple(cidrs), tuple(apps))

    def auto(self, i: int, a: Any) -> AutoApproveRule:
        start = self.lines.header("auto_approve", i)
        where = f"auto_approve #{i + 1}"
        if not isinstance(a, dict):
            raise self.fail(start, f"{where} must be a table")
        for k in a:
            if k not in _AUTO_KEYS:
                raise self.fail(self.lines.key(k, start), f"{where}: unknown key {k!r}; expected one of "
                                + ", ".join(sorted(_AUTO_KEYS)))
        name = a.get("name")
        if not isinstance(name, str) or not name:
            raise self.fail(start, f"{where} needs a `name`")
        where = f"auto_approve {name!r}"
        roles = frozenset(self.str_list(a.get("roles", []), self.lines.key("roles", start), "roles"))
        principals = frozenset(self.str_list(a.get("principals", []), self.lines.key("principals", start), "principals"))
        if not roles and not principals:
            raise self.fail(start, f"{where} matches nobody: give `roles` or `principals`")
        kw: dict[str, Any] = dict(name=name, roles=roles, principals=principals, line=start)
        if "actions" in a:
            kw["actions"] = self.actions(a["actions"], self.lines.key("actions", start), where)
        if "categories" in a:
            kw["categories"] = frozenset(self.str_list(a["categories"], self.lines.key("categories", start), "categories"))
        if "reason_pattern" in a:
            kw["reason_pattern"] = self.regex(a["reason_pattern"], self.lines.key("reason_pattern", start), where)
        if "when" in a:
            kw["when"] = self.when(a["when"], start, where)
        if "max_rows" in a:
            kw["max_rows"] = self.positive_int(a["max_rows"], self.lines.key("max_rows", start), f"{where}: max_rows")
        if "duration" in a:
            kw["duration_s"] = self.duration(a["duration"], self.lines.key("duration", start), where)
        return AutoApproveRule(**kw)

    # --- scalars ---------------------------------------------------------------
    def effect(self, v: Any, line: int, where: str) -> Effect:
        try:
            return Effect(str(v).lower())
        except ValueError:
            raise self.fail(line, f"{where}: effect {v!r}; expected allow, mask, approve or deny") from None

    def actions(self, v: Any, line: int, where: str) -> frozenset[str]:
        acts = self.str_list(v, line, "actions")
        bad = [a for a in acts if a not in ACTIONS]
        if bad or not acts:
            raise self.fail(line, f"{where}: unknown action(s) {bad or '[]'}; expected some of "
                            + ", ".join(sorted(ACTIONS)))
        return frozenset(acts)

    def str_list(self, v: Any, line: int, key: str) -> list[str]:
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise self.fail(line, f"`{key}` must be a list of strings, e.g. [\"a\", \"b\"]")
        return list(v)

    def positive_int(self, v: Any, line: int, where: str) -> int:
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise self.fail(line, f"{where} must be a positive integer, got {v!r}")
        return v

    def duration(self, v: Any, line: int, where: str) -> int:
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
        m = re.fullmatch(r"\s*(\d+)\s*([smhd])\s*", str(v))
        if not m or int(m[1]) == 0:
            raise self.fail(line, f"{where}: duration {v!r}; use seconds or \"30s\", \"15m\", \"8h\", \"1d\"")
        return int(m[1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m[2]]

    def regex(self, v: Any, line: int, where: str) -> str:
        try:
            re.compile(str(v))
        except re.error as e:
            raise self.fail(line, f"{where}: reason_pattern {v!r} is not a valid regex: {e}") from None
        return str(v)

    def column(self, text: str, line: int, where: str) -> ColumnRef:
        try:
            return ColumnRef.parse(text)
        except ValueError as e:
            raise self.fail(line, f"{where}: {e}") from None

    def table(self, text: str, line: int, where: str) -> RelationRef:
        parts = text.split(".")
        if len(parts) == 1:
            return RelationRef("public", parts[0])
        if len(parts) == 2:
            return RelationRef(parts[0], parts[1])
        raise self.fail(line, f"{where}: table {text!r}: expected table or schema.table")
