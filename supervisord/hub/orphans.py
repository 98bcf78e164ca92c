"""Orphans: the process trees of lost attempts, from SIGTERM to confirmed dead.

Part of the hub; owns only these records. A lost attempt's tree (its child died, went
silent, or the daemon restarted) gets SIGTERM at once and SIGKILL after the kill grace;
then the process spoke looks, off the loop, for anything left (`TreesChecked`). Only a
tree confirmed dead releases its task for another attempt (`fate.TreeDead`): two
attempts of one task never run at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: After a SIGKILL, how long until we look again at a tree that was still there.
RECHECK_S = 0.25

Attempt = tuple[str, int]  # (task id, epoch)


@dataclass(slots=True)
class Tree:
    task_id: str
    epoch: int
    pgid: int | None
    #: when to SIGKILL it (and look for what is left), monotonic
    deadline: float
    checking: bool = False

    @property
    def attempt(self) -> Attempt:
        return (self.task_id, self.epoch)


@dataclass(slots=True)
class Orphans:
    _trees: dict[Attempt, Tree] = field(default_factory=dict)

    def add(self, task_id: str, epoch: int, pgid: int | None, deadline: float) -> Tree:
        tree = self._trees.get((task_id, epoch))
        if tree is None:
            tree = self._trees[(task_id, epoch)] = Tree(task_id, epoch, pgid, deadline)
        return tree

    def due(self, now: float) -> list[Tree]:
        """Trees whose grace is over and that nobody is looking at yet: SIGKILL and check them."""
        out = [t for t in self._trees.values() if not t.checking and t.deadline <= now]
        for tree in out:
            tree.checking = True
        return out

    def checked(self, checked: frozenset[Attempt], alive: frozenset[Attempt], now: float) -> list[Tree]:
        """The spoke looked: returns the trees now confirmed dead (removed); the ones still
        alive are killed and looked at again after `RECHECK_S`."""
        dead = []
        for attempt in checked:
            tree = self._trees.get(attempt)
            if tree is None:
                continue
            if attempt in alive:
                tree.checking, tree.deadline = False, now + RECHECK_S
            else:
                dead.append(self._trees.pop(attempt))
        return dead

    def next_deadline(self) -> float | None:
        return min((t.deadline for t in self._trees.values() if not t.checking), default=None)

    def holds(self, task_id: str) -> bool:
        return any(t.task_id == task_id for t in self._trees.values())

    def __len__(self) -> int:
        return len(self._trees)
