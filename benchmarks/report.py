"""Summaries, ratios and the results table (pure: values in, text out)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from .pgbench import RunResult

# The target: the gateway at >= 0.85 x pgbouncer TPS with 8 clients.
TARGET_RATIO_VS_PGBOUNCER = 0.85
TARGET_CLIENTS = 8


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


def _num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"


def markdown_table(cells: list[dict], targets: list[str]) -> str:
    """One row per (mode, clients): TPS, ratios, mean latency and proxy CPU per txn."""
    proxies = [t for t in targets if t != "direct"]
    header = (
        ["mode", "clients"]
        + [f"{t} TPS" for t in targets]
        + ["gateway/direct", "gateway/pgbouncer"]
        + [f"{t} latency ms" for t in targets]
        + [f"{t} CPU µs/txn" for t in proxies]
    )
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for cell in cells:
        med = cell["median"]
        row = [cell["mode"], str(cell["clients"])]
        row += [_num(med[t]["tps"] if med.get(t) else None) for t in targets]
        row += [
            _num(cell["ratios"].get("gateway/direct"), 2),
            _num(cell["ratios"].get("gateway/pgbouncer"), 2),
        ]
        row += [_num(med[t]["latency_ms"] if med.get(t) else None, 3) for t in targets]
        row += [_num(med[t]["cpu_us_per_txn"] if med.get(t) else None, 1) for t in proxies]
        rows.append("| " + " | ".join(row) + " |")
    return "\n".join(rows)


def target_verdicts(cells: list[dict]) -> list[str]:
    """One line per mode: does the gateway reach 0.85 x pgbouncer with 8 clients?"""
    lines = []
    for cell in cells:
        if cell["clients"] != TARGET_CLIENTS:
            continue
        value = cell["ratios"].get("gateway/pgbouncer")
        if value is None:
            lines.append(f"- {cell['mode']}, {TARGET_CLIENTS} clients: not measured")
        else:
            verdict = "meets" if value >= TARGET_RATIO_VS_PGBOUNCER else "below"
            lines.append(
                f"- {cell['mode']}, {TARGET_CLIENTS} clients: gateway/pgbouncer = {value:.2f} "
                f"({verdict} the {TARGET_RATIO_VS_PGBOUNCER:.2f} target)"
            )
    return lines


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
    verdicts = target_verdicts(results["cells"])
    if verdicts:
        lines += [
            f"## Target: gateway >= {TARGET_RATIO_VS_PGBOUNCER} x pgbouncer at {TARGET_CLIENTS} clients",
            "",
            *verdicts,
            "",
        ]
    errors = results.get("errors") or []
    if errors:
        lines += ["## Failed runs", "", *[f"- {e}" for e in errors], ""]
    return "\n".join(lines)
