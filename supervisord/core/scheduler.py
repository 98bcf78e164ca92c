"""The run queue: every task not yet final, and the order queued ones run in.

Priority first, then arrival; a retry waits until its `not_before`. The scheduler only
indexes: a task's state changes in `supervisord.core.fate`, and the hub tells the
scheduler what the fate was (`enqueue` a task back in the queue, `forget` a final one).

No I/O, no clock: `now` (monotonic seconds) is an argument. Must not import asyncio,
zmq, sqlite3 or any spoke.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field

from proto.task import TaskState
from supervisord.core.task import Task

KINDS = ("claude", "exec")


def spec_bytes(task: Task) -> int:
    """What a queued task costs in memory, roughly: the text it carries."""
    s = task.spec
    return (len(s.prompt or "") + len(s.input or "") + sum(len(a) for a in s.argv or ())
            + sum(len(k) + len(v) for k, v in s.env.items()) + 512)


@dataclass(slots=True)
class Scheduler:
    max_queued: int = 100_000
    max_queued_bytes: int = 0  # 0: no byte limit
    #: every task not yet final: queued, blocked or running
    tasks: dict[str, Task] = field(default_factory=dict)
    _ready: dict[str, list[tuple[int, int, str]]] = field(default_factory=lambda: {k: [] for k in KINDS})
    _delayed: list[tuple[float, int, str]] = field(default_factory=list)
    _queued: dict[str, int] = field(default_factory=dict)  # id -> bytes
    _queued_bytes: int = 0
    _seq: itertools.count[int] = field(default_factory=itertools.count)

    @property
    def queued(self) -> int:
        return len(self._queued)

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    def room_problem(self, new: list[Task]) -> str | None:
        """Why `new` would overfill the queue, or None."""
        if self.queued + len(new) > self.max_queued:
            return (f"queue is full: {self.queued} queued + {len(new)} new exceeds daemon.max_queued="
                    f"{self.max_queued}")
        if self.max_queued_bytes:
            size = sum(spec_bytes(t) for t in new)
            if self._queued_bytes + size > self.max_queued_bytes:
                return (f"queue is full: {self._queued_bytes} bytes queued + {size} new exceeds "
                        f"daemon.max_queued_bytes={self.max_queued_bytes}")
        return None

    def add(self, task: Task, now: float) -> None:
        """A task the scheduler does not know yet (accepted, or recovered after a restart)."""
        task.seq = next(self._seq)
        self.tasks[task.id] = task
        if task.state is TaskState.QUEUED:
            self.enqueue(task, now)

    def adopt(self, task: Task) -> None:
        """A task a shared store picked for this host (a fleet's claim): indexed, never queued
        here; the caller starts it now."""
        task.seq = next(self._seq)
        self.tasks[task.id] = task

    def enqueue(self, task: Task, now: float) -> None:
        """`task` is QUEUED (new, a retry at `not_before`, or its lost tree died)."""
        if task.id in self._queued:
            return
        size = spec_bytes(task)
        self._queued[task.id] = size
        self._queued_bytes += size
        if task.not_before > now:
            heapq.heappush(self._delayed, (task.not_before, task.seq, task.id))
        else:
            heapq.heappush(self._ready[task.spec.kind], (-task.spec.priority, task.seq, task.id))

    def forget(self, task: Task) -> None:
        """`task` is final: it leaves the scheduler (stale heap entries are skipped later)."""
        self._unqueue(task.id)
        self.tasks.pop(task.id, None)

    def _unqueue(self, task_id: str) -> None:
        size = self._queued.pop(task_id, None)
        if size is not None:
            self._queued_bytes -= size

    def _promote(self, now: float) -> None:
        while self._delayed and self._delayed[0][0] <= now:
            _, _, tid = heapq.heappop(self._delayed)
            task = self.tasks.get(tid)
            if task is not None and tid in self._queued:
                heapq.heappush(self._ready[task.spec.kind], (-task.spec.priority, task.seq, tid))

    def _head(self, kind: str) -> tuple[int, int, str] | None:
        heap = self._ready[kind]
        while heap:
            tid = heap[0][2]
            task = self.tasks.get(tid)
            if task is not None and tid in self._queued and task.state is TaskState.QUEUED:
                return heap[0]
            heapq.heappop(heap)  # cancelled, started or gone: drop the stale entry
        return None

    def take(self, now: float, claude_allowed: bool) -> Task | None:
        """The next task to start (it leaves the queue; the caller starts it), or None."""
        self._promote(now)
        heads = [(h, k) for k in KINDS if (k != "claude" or claude_allowed) and (h := self._head(k)) is not None]
        if not heads:
            return None
        _, kind = min(heads)
        _, _, tid = heapq.heappop(self._ready[kind])
        self._unqueue(tid)
        return self.tasks[tid]

    def next_due(self) -> float | None:
        """When a delayed retry becomes runnable (monotonic), if any."""
        while self._delayed and self._delayed[0][2] not in self._queued:
            heapq.heappop(self._delayed)
        return self._delayed[0][0] if self._delayed else None

    def running(self) -> list[Task]:
        return [t for t in self.tasks.values() if t.state is TaskState.RUNNING]

    def count(self, state: TaskState) -> int:
        return sum(1 for t in self.tasks.values() if t.state is state)
