"""The task half of the pure core: records, the run queue, retries and the circuit breaker.

No I/O, no clock, no randomness of its own: `now` (monotonic seconds) and a `rand`
in [0, 1) are arguments, so every decision is a table test. The hub owns the one
`Scheduler` and applies what it returns. Must not import asyncio, zmq, sqlite3 or
any other spoke.
"""

from __future__ import annotations

import enum
import heapq
import itertools
from dataclasses import dataclass, field

from proto.task import ErrorKind, Outcome, TaskError, TaskSpec, TaskState

#: The only legal transitions; `Task.move` checks every change against this table.
TRANSITIONS: dict[TaskState, frozenset[TaskState]] = {
    TaskState.QUEUED: frozenset({TaskState.RUNNING, TaskState.CANCELLED, TaskState.FAILED}),
    TaskState.RUNNING: frozenset(
        {TaskState.SUCCEEDED, TaskState.FAILED, TaskState.TIMED_OUT, TaskState.CANCELLED, TaskState.QUEUED}
    ),
}


class TransitionError(Exception):
    pass


@dataclass(slots=True)
class Task:
    """One accepted task. Wall-clock times are for people; `not_before` is monotonic."""

    id: str
    spec: TaskSpec
    submitted_at: float
    seq: int = 0
    state: TaskState = TaskState.QUEUED
    attempts: int = 0
    retries: int = 0
    not_before: float = 0.0
    child: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    outcome: Outcome | None = None
    trace_id: str | None = None
    span_id: str | None = None
    parent_span_id: str | None = None
    tracestate: str | None = None
    cancel_requested: bool = False

    def move(self, to: TaskState) -> TaskState:
        """Change state through the table; returns the state left."""
        if to not in TRANSITIONS.get(self.state, frozenset()):
            raise TransitionError(f"task {self.id}: {self.state.value} -> {to.value} is not allowed")
        old, self.state = self.state, to
        return old

    @property
    def error(self) -> TaskError | None:
        return self.outcome.error if self.outcome else None


def retry_delay_s(attempt: int, base_s: float, max_s: float, rand: float) -> float:
    """Exponential backoff with full jitter: uniform(0, min(max, base * 2**(attempt-1)))."""
    ceiling = min(max_s, base_s * (2.0 ** max(0, attempt - 1)))
    return ceiling * rand


def should_retry(task: Task, outcome: Outcome) -> bool:
    """Retry only failure classes that a new attempt can fix, within the task's budget."""
    if task.cancel_requested or outcome.error is None or task.attempts > task.retries:
        return False
    kind = outcome.error.kind
    return kind in ErrorKind.RETRYABLE or (kind == ErrorKind.EXIT and task.spec.retry_on_exit)


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


@dataclass(slots=True)
class Scheduler:
    """Tasks not yet final, and the order they run in: priority first, then arrival."""

    max_queued: int = 100_000
    tasks: dict[str, Task] = field(default_factory=dict)
    _ready: dict[str, list[tuple[int, int, str]]] = field(
        default_factory=lambda: {"claude": [], "exec": []}
    )
    _delayed: list[tuple[float, int, str]] = field(default_factory=list)
    _seq: itertools.count[int] = field(default_factory=itertools.count)
    queued: int = 0

    def has_room(self, n: int) -> bool:
        return self.queued + n <= self.max_queued

    def add(self, task: Task, now: float) -> None:
        """A new task, or one coming back after a restart (state QUEUED)."""
        task.seq = next(self._seq)
        self.tasks[task.id] = task
        self._enqueue(task, now)

    def _enqueue(self, task: Task, now: float) -> None:
        self.queued += 1
        if task.not_before > now:
            heapq.heappush(self._delayed, (task.not_before, task.seq, task.id))
        else:
            heapq.heappush(self._ready[task.spec.kind], (-task.spec.priority, task.seq, task.id))

    def _promote(self, now: float) -> None:
        while self._delayed and self._delayed[0][0] <= now:
            _, _, tid = heapq.heappop(self._delayed)
            task = self.tasks.get(tid)
            if task is not None and task.state is TaskState.QUEUED:
                heapq.heappush(self._ready[task.spec.kind], (-task.spec.priority, task.seq, tid))

    def _head(self, kind: str) -> tuple[int, int, str] | None:
        heap = self._ready[kind]
        while heap:
            task = self.tasks.get(heap[0][2])
            if task is not None and task.state is TaskState.QUEUED:
                return heap[0]
            heapq.heappop(heap)  # cancelled or already gone: drop the stale entry
        return None

    def take(self, now: float, claude_allowed: bool) -> Task | None:
        """The next task to dispatch (removed from the queue), or None."""
        self._promote(now)
        heads = [(h, k) for k in ("claude", "exec") if (h := self._head(k)) is not None]
        heads = [(h, k) for h, k in heads if k != "claude" or claude_allowed]
        if not heads:
            return None
        _, kind = min(heads)
        _, _, tid = heapq.heappop(self._ready[kind])
        self.queued -= 1
        return self.tasks[tid]

    def start(self, task: Task, child: str, now_wall: float) -> None:
        task.move(TaskState.RUNNING)  # QUEUED -> RUNNING
        task.attempts += 1
        task.child, task.started_at = child, now_wall

    def finish(self, task: Task, state: TaskState, outcome: Outcome, now: float, now_wall: float,
               retry: tuple[float, float, float] | None = None) -> bool:
        """An attempt ended. `retry` is (base_s, max_s, rand). Returns True if re-queued."""
        task.outcome = outcome
        if state is not TaskState.SUCCEEDED and retry is not None and should_retry(task, outcome):
            task.move(TaskState.QUEUED)  # RUNNING -> QUEUED (retry)
            task.child = None
            task.not_before = now + retry_delay_s(task.attempts, *retry)
            self._enqueue(task, now)
            return True
        task.move(state)  # RUNNING -> final
        task.finished_at = now_wall
        del self.tasks[task.id]
        return False

    def requeue(self, task: Task, now: float) -> None:
        """Put a running task back in the queue as it was (the daemon is stopping, or it
        recovered the task after a crash). The attempt stays counted."""
        task.move(TaskState.QUEUED)  # RUNNING -> QUEUED (not a failure)
        task.child, task.not_before = None, 0.0
        self._enqueue(task, now)

    def cancel_queued(self, task: Task, now_wall: float, reason: str = "cancelled by request") -> None:
        if task.state is not TaskState.QUEUED:  # RUNNING -> CANCELLED is legal, but not here:
            raise TransitionError(f"task {task.id}: {task.state.value} is not queued")  # `queued` would drift
        task.move(TaskState.CANCELLED)  # QUEUED -> CANCELLED
        task.outcome = Outcome(error=TaskError(kind=ErrorKind.CANCELLED, message=reason))
        task.finished_at = now_wall
        self.queued -= 1
        del self.tasks[task.id]

    def next_due(self) -> float | None:
        """When a delayed retry becomes runnable (monotonic), if any."""
        return self._delayed[0][0] if self._delayed else None

    def running(self) -> list[Task]:
        return [t for t in self.tasks.values() if t.state is TaskState.RUNNING]
