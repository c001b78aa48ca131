"""Summaries, ratios and the results table (pure: values in, text out)."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass

from .pgbench import RunResult

GATEWAY_PREFIX = "gateway-"  # gateway targets are named gateway-<mode>
FULL = "gateway-full"
NOAUDIT = "gateway-noaudit"
AUDIT_RATIO = f"{FULL}/{NOAUDIT}"

# The project's targets are checked at 8 clients, the representative middle.
TARGET_CLIENTS = 8


@dataclass(frozen=True)
class Check:
    """One target of an issue: ``numerator/denominator >= threshold`` or, for the
    audit cost, ``1 - numerator/denominator < threshold``."""

    issue: int
    what: str
    numerator: str
    denominator: str
    threshold: float
    audit_cost: bool = False

    @property
    def key(self) -> str:
        return f"{self.numerator}/{self.denominator}"


CHECKS = (
    Check(2, "transparent relay", "gateway-transparent", "pgbouncer", 0.85),
    Check(4, "policy, decision and audit of every statement", FULL, "pgbouncer", 0.80),
    Check(6, "group-commit audit trail", FULL, NOAUDIT, 0.10, audit_cost=True),
)


@dataclass(frozen=True)
class Measurement:
    """One pgbench run against one target, with the proxy's CPU use during it."""

    result: RunResult | None
    error: str | None = None
    proxy_cpu_s: float | None = None

    @property
    def cpu_us_per_txn(self) -> float | None:
        if self.result is None or self.proxy_cpu_s is None or self.result.transactions == 0:
            return None
        return self.proxy_cpu_s * 1e6 / self.result.transactions


@dataclass(frozen=True)
class Summary:
    """The median over repetitions for one target in one (mode, clients) cell."""

    tps: float
    latency_ms: float
    cpu_us_per_txn: float | None
    runs: int


def summarize(measurements: list[Measurement]) -> Summary | None:
    ok = [m for m in measurements if m.result is not None]
    if not ok:
        return None
    cpu = [m.cpu_us_per_txn for m in ok if m.cpu_us_per_txn is not None]
    return Summary(
        tps=statistics.median(m.result.tps for m in ok),
        latency_ms=statistics.median(m.result.latency_ms for m in ok),
        cpu_us_per_txn=statistics.median(cpu) if cpu else None,
        runs=len(ok),
    )


def ratio(numerator: Summary | None, denominator: Summary | None) -> float | None:
    if numerator is None or denominator is None or denominator.tps == 0:
        return None
    return numerator.tps / denominator.tps


def gateway_targets(names: list[str]) -> list[str]:
    return [n for n in names if n.startswith(GATEWAY_PREFIX)]


def cell_ratios(medians: dict[str, Summary | None], names: list[str]) -> tuple[dict[str, float | None], float | None]:
    """TPS ratios of one cell: every gateway target against direct and pgbouncer,
    pgbouncer/direct, and gateway-full/gateway-noaudit when both are targets; plus
    the audit cost ``1 - gateway-full/gateway-noaudit`` (None when not measured)."""
    ratios: dict[str, float | None] = {}
    for g in gateway_targets(names):
        ratios[f"{g}/direct"] = ratio(medians.get(g), medians.get("direct"))
        ratios[f"{g}/pgbouncer"] = ratio(medians.get(g), medians.get("pgbouncer"))
    ratios["pgbouncer/direct"] = ratio(medians.get("pgbouncer"), medians.get("direct"))
    audit_cost = None
    if FULL in names and NOAUDIT in names:
        ratios[AUDIT_RATIO] = ratio(medians.get(FULL), medians.get(NOAUDIT))
        if ratios[AUDIT_RATIO] is not None:
            audit_cost = 1.0 - ratios[AUDIT_RATIO]
    return ratios, audit_cost


def build_cell(mode: str, clients: int, runs: dict[str, list[Measurement]], names: list[str]) -> dict:
    """A (mode, clients) cell as stored in the results: every run, the medians,
    the ratios and the audit cost."""
    medians = {name: summarize(runs.get(name, [])) for name in names}
    ratios, audit_cost = cell_ratios(medians, names)
    return {
        "mode": mode,
        "clients": clients,
        "runs": {
            name: [
                {
                    **(asdict(m.result) if m.result else {}),
                    "error": m.error,
                    "proxy_cpu_s": m.proxy_cpu_s,
                    "cpu_us_per_txn": m.cpu_us_per_txn,
                }
                for m in runs.get(name, [])
            ]
            for name in names
        },
        "median": {name: (asdict(s) if s else None) for name, s in medians.items()},
        "ratios": ratios,
        "audit_cost": audit_cost,
    }


def _num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"


def _percent(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value * 100:.1f} %"


def markdown_table(cells: list[dict], targets: list[str]) -> str:
    """One row per (mode, clients): TPS of every target, each gateway's ratio to
    pgbouncer and to direct, the audit cost (when gateway-full and gateway-noaudit
    are both targets), mean latency and proxy CPU per transaction."""
    proxies = [t for t in targets if t != "direct"]
    ratio_cols = [f"{g}/{base}" for g in gateway_targets(targets)
                  for base in ("pgbouncer", "direct") if base in targets]
    with_audit_cost = FULL in targets and NOAUDIT in targets
    header = (
        ["mode", "clients"]
        + [f"{t} TPS" for t in targets]
        + ratio_cols
        + (["audit cost"] if with_audit_cost else [])
        + [f"{t} latency ms" for t in targets]
        + [f"{t} CPU µs/txn" for t in proxies]
    )
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for cell in cells:
        med = cell["median"]
        ratios = cell.get("ratios", {})
        row = [cell["mode"], str(cell["clients"])]
        row += [_num(med[t]["tps"] if med.get(t) else None) for t in targets]
        row += [_num(ratios.get(col), 2) for col in ratio_cols]
        if with_audit_cost:
            row.append(_percent(cell.get("audit_cost")))
        row += [_num(med[t]["latency_ms"] if med.get(t) else None, 3) for t in targets]
        row += [_num(med[t]["cpu_us_per_txn"] if med.get(t) else None, 1) for t in proxies]
        rows.append("| " + " | ".join(row) + " |")
    return "\n".join(rows)


def verdict(check: Check, cell: dict) -> str:
    """One line: the check's measured value in this cell and whether it meets the target."""
    where = f"- issue {check.issue} ({check.what}), {cell['mode']}, {cell['clients']} clients: "
    missing = [t for t in (check.numerator, check.denominator) if not cell["median"].get(t)]
    value = cell.get("ratios", {}).get(check.key)
    if missing or value is None:
        return where + f"not measured (no {' or '.join(missing) or check.key} result)"
    if check.audit_cost:
        cost = 1.0 - value
        met = cost < check.threshold
        return (where + f"audit cost 1 - {check.key} = {_percent(cost)}, "
                f"{'meets' if met else 'above'} the < {check.threshold * 100:.0f} % target")
    met = value >= check.threshold
    return (where + f"{check.key} = {value:.2f}, "
            f"{'meets' if met else 'below'} the >= {check.threshold:.2f} target")


def target_verdicts(cells: list[dict]) -> list[str]:
    """One line per check and mode at 8 clients (CHECKS: issues 2, 4 and 6)."""
    at_target = [c for c in cells if c["clients"] == TARGET_CLIENTS]
    if not at_target:
        return [f"- not checked: the targets are checked at {TARGET_CLIENTS} clients, and this run has no such cell"]
    return [verdict(check, cell) for check in CHECKS for cell in at_target]


def markdown_report(results: dict) -> str:
    s = results["settings"]
    v = results["versions"]
    m = results["machine"]
    lines = [
        f"# piigate benchmark, {results['started_utc']}",
        "",
        f"`{results['command']}`",
        "",
        f"pgbench select-only (`-S -n -T {s['seconds']} -c C -j min(C,2) -M mode`), scale {s['scale']}, "
        f"median of {s['reps']} run(s) per cell; targets interleaved within each cell.",
        f"Gateway modes: {', '.join(s.get('gateway_modes') or []) or 'none'}.",
        "",
        "## Machine and versions",
        "",
        f"- host: {m['host']}; {m['nproc']} CPUs ({m['cpu_model']}); {m['memory']}; {m['platform']}",
        f"- python: {v['python']}",
        f"- PostgreSQL: {v['postgresql']}; server: {results['postgres_source']}",
        f"- pgbench: {v['pgbench']}",
        f"- pgbouncer: {v['pgbouncer']}",
        f"- piigate: {v['piigate']}",
        "",
        "## Results",
        "",
        markdown_table(results["cells"], results["target_order"]),
        "",
    ]
    notes = [f"- {name}: {t['reason']}" for name, t in results["targets"].items() if t["status"] != "ok"]
    if notes:
        lines += ["## Targets not measured", "", *notes, ""]
    lines += [f"## Targets at {TARGET_CLIENTS} clients", "", *target_verdicts(results["cells"]), ""]
    errors = results.get("errors") or []
    if errors:
        lines += ["## Failed runs", "", *[f"- {e}" for e in errors], ""]
    return "\n".join(lines)
