"""Waiters: `Wait` requests not yet answered, indexed by the tasks they wait for.

Part of the hub; owns nothing but the waiters. A final task wakes only the waiters that
name it (a dict lookup, not a scan of every waiter). A waiter given room keeps the
answers of its tasks as they become final, up to that many bytes, so that its reply
need not read them back from the store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True, eq=False)
class Waiter:
    """A `Wait` request: answered when `pending` empties or at `deadline` (monotonic)."""

    envelope: tuple[bytes, ...]
    ids: list[str]
    pending: set[str]
    deadline: float
    #: bytes of answers it may still keep (`held`: task id -> answer)
    room: int = 0
    held: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Waiters:
    _all: list[Waiter] = field(default_factory=list)
    _by_task: dict[str, list[Waiter]] = field(default_factory=dict)

    def add(self, waiter: Waiter) -> None:
        self._all.append(waiter)
        for tid in waiter.pending:
            self._by_task.setdefault(tid, []).append(waiter)

    def waits_for(self, task_id: str) -> bool:
        return task_id in self._by_task

    def task_final(self, task_id: str, answer: object = None, cost: int = 0) -> list[Waiter]:
        """`task_id` is final (its `answer` costs `cost` bytes, kept by each waiter with the
        room): the waiters that now have every task they asked for (removed)."""
        done = []
        for waiter in self._by_task.pop(task_id, []):
            waiter.pending.discard(task_id)
            if answer is not None and cost <= waiter.room:
                waiter.held[task_id] = answer
                waiter.room -= cost
            if not waiter.pending:
                self._drop(waiter)
                done.append(waiter)
        return done

    def due(self, now: float) -> list[Waiter]:
        """Waiters whose deadline passed (removed), answered with what is final so far."""
        late = [w for w in self._all if w.deadline <= now]
        for waiter in late:
            self._drop(waiter)
        return late

    def next_deadline(self) -> float | None:
        return min((w.deadline for w in self._all), default=None)

    def _drop(self, waiter: Waiter) -> None:
        self._all.remove(waiter)
        for tid in waiter.pending:
            others = self._by_task.get(tid)
            if others and waiter in others:
                others.remove(waiter)
                if not others:
                    del self._by_task[tid]

    def __len__(self) -> int:
        return len(self._all)
