"""The group of writes a backend holds between commits, and how reads see through it.

Both backends (SQLite, PostgreSQL) note each claim and record here and write the group at
`commit`; until then a read answers from the group first, so clients see the truth.
Imports the core's records (and proto's `Line`) only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from proto.task import Line, Outcome
from supervisord.core.task import Task

#: The states of a task not yet final, as stored.
UNFINISHED = ("queued", "blocked", "running")
#: the same, as an SQL list (both stores' queries)
UNFINISHED_SQL = "(" + ", ".join(f"'{state}'" for state in UNFINISHED) + ")"

#: task id -> (its latest state, the epoch the row must still have when the group is written)
Pending = dict[str, tuple[Task, int]]


def note(pending: Pending, task: Task, fence: int) -> None:
    """The group's first write of a task fixes its fence: the row is as it was then. Later
    writes of the group (a claim, then the attempt's end) only make the task's latest state
    the one written."""
    held = pending.get(task.id)
    pending[task.id] = (task, fence if held is None else held[1])


def unfinished(rows: Iterable[Any], pending: Pending, decode: Callable[[Any], Task]) -> list[Task]:
    """Stored unfinished rows (id first), each replaced by its pending state, which may be final."""
    out = []
    for r in rows:
        held = pending.get(r[0])
        if held is None:
            out.append(decode(r))
        elif held[0].state.value in UNFINISHED:
            out.append(held[0])
    return out


def transcript_page(chunks: Iterable[tuple[int, list[Line]]], after: int,
                    budget_bytes: int) -> tuple[list[Line], int]:
    """From a transcript's chunks (first line number, lines; stored and noted ones, in any
    order): lines `after`.., stopping past `budget_bytes` of text (at least one chunk), and
    the number of the line after the last one returned."""
    out: list[Line] = []
    size, nxt = 0, after
    for first, lines in sorted(chunks, key=lambda c: c[0]):
        if first + len(lines) <= nxt:
            continue
        if out and size > budget_bytes:
            break
        take = lines[max(0, nxt - first):]
        out += take
        size += sum(len(x.text) + 32 for x in take)
        nxt = first + len(lines)
    return out, nxt


def approx_bytes(t: Task) -> int:
    """A noted task's size in a reply, without encoding it (both stores' `list` budgets)."""
    o, s = t.outcome or Outcome(), t.spec
    return len(o.result or "") + len(o.stderr or "") + len(s.prompt or "") + len(s.input or "")
