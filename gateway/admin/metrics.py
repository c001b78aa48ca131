"""Prometheus metrics the gateway increments and /api/v1/metrics renders (text 0.0.4).

The gateway calls ``hold_started()`` / ``hold_ended()`` around a held statement,
``decision(effect)`` for every policy decision and ``observe_statement(seconds)``
when a statement completes. Pending requests are read from Redis at scrape time,
so every instance reports the same shared number.
"""
from __future__ import annotations

import bisect
from typing import Iterable

DEFAULT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0, 30.0, 60.0)
EFFECTS = ("allow", "mask", "approve", "deny")


class Metrics:
    def __init__(self, buckets: Iterable[float] = DEFAULT_BUCKETS):
        self.buckets = tuple(sorted(buckets))
        self.holds_active = 0
        self.holds_total = 0
        self.decisions: dict[str, int] = {e: 0 for e in EFFECTS}
        self._bucket_counts = [0] * (len(self.buckets) + 1)      # last: +Inf only
        self.latency_sum = 0.0
        self.latency_count = 0

    def hold_started(self) -> None:
        self.holds_active += 1
        self.holds_total += 1

    def hold_ended(self) -> None:
        self.holds_active = max(0, self.holds_active - 1)

    def decision(self, effect: str) -> None:
        key = getattr(effect, "value", effect)
        self.decisions[key] = self.decisions.get(key, 0) + 1

    def observe_statement(self, seconds: float) -> None:
        self._bucket_counts[bisect.bisect_left(self.buckets, seconds)] += 1
        self.latency_sum += seconds
        self.latency_count += 1

    observe_latency = observe_statement      # the name the session uses

    def allowed(self, seconds: float) -> None:
        """``decision("allow")`` and ``observe_statement(seconds)`` in one call: what
        every statement passed from a session's memo costs the metrics."""
        self.decisions["allow"] += 1
        self._bucket_counts[bisect.bisect_left(self.buckets, seconds)] += 1
        self.latency_sum += seconds
        self.latency_count += 1

    def render(self, requests_pending: int | None = None, redis_up: bool | None = None) -> str:
        out: list[str] = []

        def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")
            out.extend(f"{name}{labels} {_num(v)}" for labels, v in samples)

        if requests_pending is not None:
            metric("piigate_requests_pending", "gauge",
                   "Access requests waiting for a decision (all instances).",
                   [("", requests_pending)])
        if redis_up is not None:
            metric("piigate_jit_redis_up", "gauge", "1 when the grant store answers.",
                   [("", 1 if redis_up else 0)])
        metric("piigate_holds_active", "gauge", "Statements held on this instance right now.",
               [("", self.holds_active)])
        metric("piigate_holds_total", "counter", "Statements held on this instance.",
               [("", self.holds_total)])
        metric("piigate_decisions_total", "counter", "Policy decisions by effect.",
               [(f'{{effect="{_esc(e)}"}}', n) for e, n in sorted(self.decisions.items())])
        name = "piigate_statement_duration_seconds"
        out.append(f"# HELP {name} Statement latency through the gateway.")
        out.append(f"# TYPE {name} histogram")
        running = 0
        for bound, count in zip(self.buckets, self._bucket_counts):
            running += count
            out.append(f'{name}_bucket{{le="{_num(bound)}"}} {running}')
        out.append(f'{name}_bucket{{le="+Inf"}} {self.latency_count}')
        out.append(f"{name}_sum {_num(self.latency_sum)}")
        out.append(f"{name}_count {self.latency_count}")
        return "\n".join(out) + "\n"


def _num(v: float) -> str:
    if isinstance(v, int) or float(v).is_integer():
        return str(int(v))
    return repr(float(v))


def _esc(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
