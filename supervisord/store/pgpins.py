"""Host pins in the shared PostgreSQL journal: the column the claim filters on, and the
reason a pinned task waits.

- `tasks.pin` is the spec's `pin` (`supervisord.core.pin`), written with the task's row at
  insert and never changed (a retry is a new task with the same pin). The claim takes a
  pinned task only for its host (`pgrules` candidates: `t.pin IS NULL OR t.pin = host`);
  a rescue re-queues a pinned attempt with its pin, so only its host runs it again.
- `annotate` fills `TaskView.waiting` of queued pinned tasks whose host is not live (the
  `hosts` table: never beat, stopped, or silent for longer than a lease); `waiting_counts`
  is the same per host for `status`.

Imports the stdlib, psycopg, proto and `supervisord.core` only; called by `PgStore`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import psycopg

from proto.task import TaskView
from supervisord.core import pin

#: 4 -> 5: a task's host pin (appended to `pgschema.MIGRATIONS`).
MIGRATION = (
    "ALTER TABLE tasks ADD COLUMN pin TEXT",
    "CREATE INDEX tasks_pinned ON tasks (pin) WHERE state = 'queued' AND pin IS NOT NULL",
)


def _hosts(db: psycopg.Connection[Any], names: list[str]) -> dict[str, tuple[float, str]]:
    """Heartbeat age (seconds, the database's clock) and phase of each of `names` that has a row."""
    rows = db.execute("SELECT host, EXTRACT(EPOCH FROM now() - heartbeat_at), phase FROM hosts WHERE host = ANY(%s)",
                      (names,)).fetchall()
    return {str(r[0]): (float(r[1]), str(r[2])) for r in rows}


def _reason(seen: dict[str, tuple[float, str]], host: str, live_s: float) -> str | None:
    age, phase = seen.get(host, (None, None))
    return pin.waiting(host, age, phase, live_s)


def annotate(db: psycopg.Connection[Any], views: Iterable[TaskView], live_s: float) -> None:
    """Set `waiting` on the queued pinned ones of `views` whose host is not live (one query,
    only when there are such views)."""
    pinned = [v for v in views if v.state == "queued" and v.pin is not None]
    if not pinned:
        return
    seen = _hosts(db, sorted({v.pin for v in pinned if v.pin is not None}))
    for v in pinned:
        assert v.pin is not None
        v.waiting = _reason(seen, v.pin, live_s)


def waiting_counts(db: psycopg.Connection[Any], live_s: float) -> dict[str, int]:
    """Queued tasks pinned to a host that is not live, by that host."""
    counts = {str(p): int(n) for p, n in db.execute(
        "SELECT pin, COUNT(*) FROM tasks WHERE state = 'queued' AND pin IS NOT NULL GROUP BY pin")}
    if not counts:
        return {}
    seen = _hosts(db, sorted(counts))
    return {host: n for host, n in counts.items() if _reason(seen, host, live_s) is not None}
