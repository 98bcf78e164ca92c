"""The Claude circuit breaker: consecutive infrastructure failures open it.

Pure: `now` is an argument. Must not import asyncio, zmq, sqlite3 or any spoke.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from proto.task import ErrorKind

#: Failure classes that say nothing about the Claude backend's health.
NEUTRAL = frozenset({ErrorKind.CANCELLED, ErrorKind.SHUTDOWN, ErrorKind.WORKER_LOST, ErrorKind.WORKER_BUSY, ErrorKind.SPAWN,
                     ErrorKind.TIMEOUT})


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(slots=True)
class Breaker:
    """Claude circuit breaker: `threshold` consecutive infrastructure failures open it for
    `open_s`; then one probe task half-opens it; the probe's outcome closes or re-opens it."""

    threshold: int = 3
    open_s: float = 30.0
    state: BreakerState = BreakerState.CLOSED
    failures: int = 0
    opened_at: float = 0.0
    probe_out: bool = False

    def allows(self, now: float) -> bool:
        """May a Claude task start now? (Does not change state; see `started`.)"""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN:
            return now >= self.opened_at + self.open_s
        return not self.probe_out

    def started(self, now: float) -> BreakerState | None:
        """A Claude task was dispatched; returns the new state if it changed."""
        if self.state is BreakerState.OPEN and now >= self.opened_at + self.open_s:
            self.state, self.probe_out = BreakerState.HALF_OPEN, True  # OPEN -> HALF_OPEN
            return self.state
        if self.state is BreakerState.HALF_OPEN:
            self.probe_out = True
        return None

    def record(self, error_kind: str | None, now: float) -> BreakerState | None:
        """A Claude attempt ended; returns the new state if it changed.

        Outcomes that say nothing about the backend (cancelled, shutdown, worker lost, spawn
        failure, wall timeout) neither count nor reset; they only free the probe slot. Any
        answer from the backend that is not an infrastructure failure (success, auth, bad
        request, max turns) breaks the run of consecutive failures and closes the breaker."""
        old = self.state
        if error_kind in NEUTRAL:
            self.probe_out = False  # HALF_OPEN: another probe may go
            return None
        if error_kind not in ErrorKind.INFRASTRUCTURE:
            self.failures, self.probe_out = 0, False
            self.state = BreakerState.CLOSED  # * -> CLOSED on an answer from a healthy backend
            return self.state if self.state is not old else None
        self.failures += 1
        if self.state is BreakerState.HALF_OPEN or self.failures >= self.threshold:
            self.state, self.opened_at, self.probe_out = BreakerState.OPEN, now, False  # -> OPEN
        return self.state if self.state is not old else None

    def next_change(self) -> float | None:
        return self.opened_at + self.open_s if self.state is BreakerState.OPEN else None


