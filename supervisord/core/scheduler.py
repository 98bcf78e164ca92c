"""The run queue: tasks not yet final, and the order they run in.

No I/O, no clock, no randomness of its own: `now` (monotonic seconds) and a `rand`
in [0, 1) are arguments, so every decision is a table test. The hub owns the one
`Scheduler` and applies what it returns. Must not import asyncio, zmq, sqlite3 or
any other spoke.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field

from proto.task import ErrorKind, Outcome, TaskError, TaskState
from supervisord.core.task import Task, TransitionError, retry_delay_s, should_retry


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
        task.epoch += 1  # a new attempt: writes about the previous one are fenced off
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
