"""Counters and a latency histogram of finished tasks. Pure: no I/O, no clock.

Owns the numbers `supctl stats` and `health` report. The hub records into it; the
optional Prometheus exporter reads it. Imports the stdlib only.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from dataclasses import dataclass, field

#: Histogram bucket upper bounds, seconds (Prometheus-style, cumulative on export).
BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
             1800.0, 3600.0, float("inf"))


@dataclass(slots=True)
class Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * len(BUCKETS_S))
    total: int = 0
    sum_s: float = 0.0
    recent: list[float] = field(default_factory=list)
    recent_cap: int = 4096

    def observe(self, value_s: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS_S, value_s)] += 1
        self.total += 1
        self.sum_s += value_s
        self.recent.append(value_s)
        if len(self.recent) > self.recent_cap:
            del self.recent[: self.recent_cap // 2]

    def quantile(self, q: float) -> float | None:
        """Exact quantile over the most recent observations."""
        if not self.recent:
            return None
        ordered = sorted(self.recent)
        rank = max(1, math.ceil(q * len(ordered)))  # nearest-rank
        return ordered[rank - 1]


@dataclass(slots=True)
class Metrics:
    received: Counter[str] = field(default_factory=Counter)  # by kind
    finished: Counter[tuple[str, str]] = field(default_factory=Counter)  # (kind, state)
    errors: Counter[tuple[str, str]] = field(default_factory=Counter)  # (kind, error kind)
    retries: int = 0
    child_restarts: int = 0
    child_fatal: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    duration: Histogram = field(default_factory=Histogram)

    def finish(self, kind: str, state: str, error_kind: str | None, duration_s: float | None,
               input_tokens: int = 0, output_tokens: int = 0, cost_usd: float = 0.0) -> None:
        self.finished[(kind, state)] += 1
        if error_kind:
            self.errors[(kind, error_kind)] += 1
        if duration_s is not None:
            self.duration.observe(duration_s)
        self.input_tokens += input_tokens
        self.output_tokens += output_tokens
        self.cost_usd += cost_usd

    def failed_total(self) -> int:
        return sum(n for (_, state), n in self.finished.items() if state != "succeeded")

    def success_rate(self) -> float | None:
        done = sum(self.finished.values())
        ok = sum(n for (_, state), n in self.finished.items() if state == "succeeded")
        return ok / done if done else None

    def by_kind(self) -> dict[str, dict[str, object]]:
        """Per task kind: received, succeeded, failed, and failures by error class."""
        kinds = sorted({*self.received, *(k for k, _ in self.finished)})
        return {kind: {
            "received": self.received.get(kind, 0),
            "succeeded": self.finished.get((kind, "succeeded"), 0),
            "failed": sum(n for (k, s), n in self.finished.items() if k == kind and s != "succeeded"),
            "errors": {e: n for (k, e), n in sorted(self.errors.items()) if k == kind},
        } for kind in kinds}

    def snapshot(self) -> dict[str, object]:
        return {
            "tasks_received": dict(self.received),
            "tasks_finished": {f"{k}/{s}": n for (k, s), n in sorted(self.finished.items())},
            "tasks_succeeded": sum(n for (_, s), n in self.finished.items() if s == "succeeded"),
            "tasks_failed": self.failed_total(),
            "errors": {f"{k}/{e}": n for (k, e), n in sorted(self.errors.items())},
            "by_kind": self.by_kind(),
            "retries": self.retries,
            "child_restarts": self.child_restarts,
            "child_fatal": self.child_fatal,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": round(self.cost_usd, 6),
            "duration_s": {
                "count": self.duration.total,
                "sum": round(self.duration.sum_s, 6),
                "p50": self.duration.quantile(0.50),
                "p95": self.duration.quantile(0.95),
                "p99": self.duration.quantile(0.99),
            },
            "success_rate": self.success_rate(),
        }
