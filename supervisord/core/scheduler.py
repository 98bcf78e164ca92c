"""The run queue: every task not yet final, and the order queued ones run in.

Priority first, then arrival; a retry waits until its `not_before`; a task whose exclusive
key is full waits, in the same order, parked under its key until a holder releases it
(`release_key`): never refused, never failed. The scheduler only
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
from supervisord.core.keys import Keys
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
    keys: Keys = field(default_factory=Keys)
    #: queued tasks whose key was full when they came up, by key: (-priority, seq, id)
    _parked: dict[str, list[tuple[int, int, str]]] = field(default_factory=dict)

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
        """The next task to start (it leaves the queue and holds its key; the caller starts
        it), or None. Heads whose key is full are parked under it on the way."""
        self._promote(now)
        while True:
            heads = [(h, k) for k in KINDS if (k != "claude" or claude_allowed) and (h := self._head(k)) is not None]
            if not heads:
                return None
            _, kind = min(heads)
            entry = heapq.heappop(self._ready[kind])
            task = self.tasks[entry[2]]
            key = task.spec.key
            if key is not None and self.keys.full(key):
                heapq.heappush(self._parked.setdefault(key, []), entry)  # waits for a holder to end
                continue
            if key is not None:
                self.keys.hold(task.id, key)
            self._unqueue(task.id)
            return task

    def release_key(self, task_id: str) -> str | None:
        """`task_id`'s attempt is over and its tree dead: its key (if it held one) is free, and
        the best waiters for it go back to the ready queue. Idempotent."""
        key = self.keys.release(task_id)
        if key is None:
            return None
        parked = self._parked.get(key, [])
        room = self.keys.free(key)
        while parked and room > 0:
            entry = heapq.heappop(parked)
            task = self.tasks.get(entry[2])
            if task is None or entry[2] not in self._queued or task.state is not TaskState.QUEUED:
                continue  # cancelled or gone while it waited
            heapq.heappush(self._ready[task.spec.kind], entry)
            room -= 1
        if not parked:
            self._parked.pop(key, None)
        return key

    def hold_key(self, task: Task) -> None:
        """A recovered attempt whose tree is still alive holds its key until it is dead."""
        if task.spec.key is not None:
            self.keys.hold(task.id, task.spec.key)

    def key_waiters(self) -> dict[str, int]:
        """Queued tasks per key that are not holding it (for `status`)."""
        waiting: dict[str, int] = {}
        for tid in self._queued:
            task = self.tasks.get(tid)
            if task is not None and task.spec.key is not None and tid not in self.keys.holder:
                waiting[task.spec.key] = waiting.get(task.spec.key, 0) + 1
        return waiting

    def next_due(self) -> float | None:
        """When a delayed retry becomes runnable (monotonic), if any."""
        while self._delayed and self._delayed[0][2] not in self._queued:
            heapq.heappop(self._delayed)
        return self._delayed[0][0] if self._delayed else None

    def running(self) -> list[Task]:
        return [t for t in self.tasks.values() if t.state is TaskState.RUNNING]

    def count(self, state: TaskState) -> int:
        return sum(1 for t in self.tasks.values() if t.state is state)
