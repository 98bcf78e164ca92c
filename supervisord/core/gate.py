"""The rate-limit gate: when the API says the whole account must wait, no Claude task starts.

A Claude attempt that ends `rate_limited` with a reset time (`Outcome.resets_at`, wall
clock: the CLI's `rate_limit_event`; or `Outcome.retry_after_s`, a 429's `retry-after`
the child read from the CLI's debug log, counted from the attempt's end) closes
the gate until then: queued Claude tasks wait (none is failed by it), exec tasks still
run, and the gate opens by itself at the reset. A reset later than `max_s` from now is
capped there (a bogus header cannot park the pool for a day); a `rate_limited` without
a reset time leaves the gate alone: the breaker's backoff applies to it.

Pure: `now` (monotonic) and `wall` are arguments. Must not import asyncio, zmq, sqlite3
or any spoke.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from proto.task import ErrorKind, Outcome


class GateState(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"


@dataclass(slots=True)
class Gate:
    max_s: float = 3600.0
    state: GateState = GateState.OPEN
    #: monotonic time the gate opens again (while CLOSED)
    until: float = 0.0
    #: the same, wall clock, for people
    until_wall: float = 0.0
    #: the task whose result closed it last
    task_id: str | None = None

    def allows(self, now: float) -> bool:
        return self.state is GateState.OPEN or now >= self.until

    def ended(self, task_id: str, outcome: Outcome, now: float, wall: float) -> GateState | None:
        """A Claude attempt ended; the new state if this closed (or moved) the gate."""
        error = outcome.error
        if error is None or error.kind != ErrorKind.RATE_LIMITED:
            return None
        waits = [w for w in (outcome.retry_after_s,
                             outcome.resets_at - wall if outcome.resets_at is not None else None) if w is not None]
        if not waits:
            return None
        wait_s = min(self.max_s, max(waits))
        if wait_s <= 0 or (self.state is GateState.CLOSED and now + wait_s <= self.until):
            return None  # already past, or the gate is already closed for longer
        self.state = GateState.CLOSED  # OPEN -> CLOSED (or CLOSED for longer)
        self.until, self.until_wall, self.task_id = now + wait_s, wall + wait_s, task_id
        return self.state

    def shared(self, task_id: str | None, wait_s: float, now: float, wall: float) -> GateState | None:
        """Another host of a fleet closed the fleet's gate for `wait_s` more: the same here
        (capped at `max_s`); the new state if this closed (or moved) it."""
        wait_s = min(self.max_s, wait_s)
        if wait_s <= 0 or (self.state is GateState.CLOSED and now + wait_s <= self.until + 0.5):
            return None  # past, or already closed as long (half a second: the round trip's blur)
        self.state = GateState.CLOSED  # OPEN -> CLOSED (or CLOSED for longer)
        self.until, self.until_wall, self.task_id = now + wait_s, wall + wait_s, task_id
        return self.state

    def tick(self, now: float) -> GateState | None:
        """The gate opens at its reset time; OPEN when it just did."""
        if self.state is GateState.CLOSED and now >= self.until:
            self.state = GateState.OPEN  # CLOSED -> OPEN
            return self.state
        return None

    def next_change(self) -> float | None:
        return self.until if self.state is GateState.CLOSED else None
