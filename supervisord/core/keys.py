"""Exclusive keys: which attempts hold which key, and how many each key lets run at once.

A task with `spec.key = NAME` may start only while fewer than `limit(NAME)` attempts hold
NAME (`[keys] NAME = N`, default 1). An attempt takes its key when it starts
(`Scheduler.take`) and holds it until its whole process tree is dead: at its `Result` (a
child reports only once the tree is reaped), or at `TreeDead` for an attempt that was
lost (its tree may outlive its child, and must not overlap the next holder). `release`
is idempotent, so a key is released exactly once whichever of those comes first.

Pure: no I/O, no clock. Must not import asyncio, zmq, sqlite3 or any spoke.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

#: the number of holders a key not named in `[keys]` allows
DEFAULT_LIMIT = 1


@dataclass(slots=True)
class Keys:
    limits: Mapping[str, int] = field(default_factory=dict)
    #: key -> the task ids whose attempt (running, or lost with its tree alive) holds it
    held: dict[str, set[str]] = field(default_factory=dict)
    #: task id -> the key it holds
    holder: dict[str, str] = field(default_factory=dict)

    def limit(self, key: str) -> int:
        return self.limits.get(key, DEFAULT_LIMIT)

    def full(self, key: str) -> bool:
        return len(self.held.get(key, ())) >= self.limit(key)

    def free(self, key: str) -> int:
        return max(0, self.limit(key) - len(self.held.get(key, ())))

    def hold(self, task_id: str, key: str) -> None:
        """`task_id`'s attempt takes `key` (the caller checked `full`; a recovered attempt
        whose tree is still alive holds its key whatever the limit now says)."""
        self.held.setdefault(key, set()).add(task_id)
        self.holder[task_id] = key

    def release(self, task_id: str) -> str | None:
        """The key `task_id` held, now free; None if it held none (already released)."""
        key = self.holder.pop(task_id, None)
        if key is not None:
            holders = self.held.get(key)
            if holders is not None:
                holders.discard(task_id)
                if not holders:
                    del self.held[key]
        return key
