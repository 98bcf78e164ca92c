"""The dashboard's last hour: finished tasks in one-minute buckets. Pure: no I/O, no clock.

Owns the time series the web overview draws (throughput, p50/p95 latency, tokens, cost).
The web spoke records each `task/<id>/finished` event it hears, with the event's own wall
time; `window(now)` reads the last `BUCKETS` minutes, oldest first, empty minutes
included. Memory is bounded: `BUCKETS` buckets, each keeping at most `SAMPLES` durations
(a bucket past that keeps every other one, so its percentiles stay representative).
Imports the stdlib only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

#: One bucket per minute, an hour of them.
BUCKET_S = 60.0
BUCKETS = 60
#: Durations a bucket keeps for its percentiles.
SAMPLES = 512


@dataclass(slots=True)
class Bucket:
    start: float
    finished: int = 0
    failed: int = 0
    tokens: int = 0
    cost_usd: float = 0.0
    durations: list[float] = field(default_factory=list)
    #: durations seen / kept, so thinning can keep every other one
    seen: int = 0


def quantile(values: list[float], q: float) -> float | None:
    """Nearest-rank quantile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


@dataclass(slots=True)
class Series:
    buckets: dict[int, Bucket] = field(default_factory=dict)

    def record(self, wall_s: float, *, ok: bool, duration_s: float | None = None, tokens: int = 0,
               cost_usd: float = 0.0) -> None:
        index = int(wall_s // BUCKET_S)
        b = self.buckets.get(index)
        if b is None:
            b = self.buckets[index] = Bucket(start=index * BUCKET_S)
            self._trim(index)
        b.finished += 1
        b.failed += 0 if ok else 1
        b.tokens += max(0, tokens)
        b.cost_usd += max(0.0, cost_usd)
        if duration_s is not None and duration_s >= 0 and math.isfinite(duration_s):
            b.seen += 1
            if len(b.durations) < SAMPLES:
                b.durations.append(duration_s)
            elif b.seen % 2 == 0:  # full: replace in turn, so late minutes are not ignored
                b.durations[(b.seen // 2) % SAMPLES] = duration_s

    def _trim(self, newest: int) -> None:
        for index in [i for i in self.buckets if i <= newest - BUCKETS]:
            del self.buckets[index]

    def window(self, now_wall_s: float) -> list[dict[str, float | int | None]]:
        """The last `BUCKETS` minutes up to `now`, oldest first; an empty minute is zeros."""
        last = int(now_wall_s // BUCKET_S)
        out: list[dict[str, float | int | None]] = []
        for index in range(last - BUCKETS + 1, last + 1):
            b = self.buckets.get(index)
            if b is None:
                out.append({"t": index * BUCKET_S, "finished": 0, "failed": 0, "tokens": 0, "cost_usd": 0.0,
                            "p50_s": None, "p95_s": None})
            else:
                out.append({"t": b.start, "finished": b.finished, "failed": b.failed, "tokens": b.tokens,
                            "cost_usd": round(b.cost_usd, 6), "p50_s": quantile(b.durations, 0.5),
                            "p95_s": quantile(b.durations, 0.95)})
        return out

    def hour(self, now_wall_s: float) -> dict[str, float | int | None]:
        """Totals over the window: finished, failed, tokens, cost, and p50/p95 of all kept durations."""
        last = int(now_wall_s // BUCKET_S)
        kept = [b for i, b in self.buckets.items() if last - BUCKETS < i <= last]
        durations = [d for b in kept for d in b.durations]
        return {"finished": sum(b.finished for b in kept), "failed": sum(b.failed for b in kept),
                "tokens": sum(b.tokens for b in kept), "cost_usd": round(sum(b.cost_usd for b in kept), 6),
                "p50_s": quantile(durations, 0.5), "p95_s": quantile(durations, 0.95)}
